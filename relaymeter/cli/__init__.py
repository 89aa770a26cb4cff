"""The `relaymeter` command: a Typer app whose commands are thin wrappers over services."""

from __future__ import annotations

from typing import Annotated

import typer

from relaymeter import __version__
from relaymeter.cli import common
from relaymeter.cli.accounts_cmd import app as accounts_app
from relaymeter.cli.collect_cmd import collect
from relaymeter.cli.config_cmd import app as config_app
from relaymeter.cli.cpa_cmd import app as cpa_app
from relaymeter.cli.db_cmd import app as db_app
from relaymeter.cli.init_cmd import init
from relaymeter.cli.io_cmd import export_cmd, import_cmd
from relaymeter.cli.keys_cmd import app as keys_app
from relaymeter.cli.prices_cmd import app as prices_app
from relaymeter.cli.quota_cmd import accounts_check, quota
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
app.command()(quota)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(prices_app, name="prices")
app.command()(collect)
app.command("import")(import_cmd)
app.command("export")(export_cmd)
app.add_typer(cpa_app, name="cpa")
accounts_app.command("check")(accounts_check)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")


def main() -> None:
    app()
