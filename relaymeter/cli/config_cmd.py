"""`relaymeter config show`: the effective settings, where each came from, secrets masked."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from relaymeter.cli import common

app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)


@app.command("show")
def show(json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Print every setting with its value and origin (env, file, default)."""
    from relaymeter.config import describe

    cfg = common.settings()
    rows = describe(cfg)
    if json_out:
        common.print_json({k: {"value": v, "origin": o} for k, v, o in rows})
        return
    table = Table(title=f"relaymeter settings (config file: {cfg.__dict__.get('_config_path')})")
    table.add_column("key")
    table.add_column("value")
    table.add_column("origin", style="dim")
    for key, value, origin in rows:
        table.add_row(key, value, origin)
    common.console.print(table)
