"""The `relaymeter` command: a Typer app whose commands are thin wrappers over services."""

from __future__ import annotations

from typing import Annotated

import typer

from relaymeter import __version__
from relaymeter.cli import common
from relaymeter.cli.config_cmd import app as config_app
from relaymeter.cli.db_cmd import app as db_app
from relaymeter.cli.init_cmd import init
from relaymeter.cli.report import report
from relaymeter.cli.serve import serve

app = typer.Typer(
    name="relaymeter",
    help="Self-hosted LLM gateway and usage console.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="TOML config file (default: user config dir)")
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    common.set_config_path(config)


app.command()(serve)
app.command()(init)
app.command()(report)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")


def main() -> None:
    app()
