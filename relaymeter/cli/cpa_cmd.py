"""`relaymeter cpa add|edit|list|remove|test|publishing`: manage CLIProxyAPI connections."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from relaymeter.cli import common

app = typer.Typer(help="CLIProxyAPI (CPA) connections the collector consumes.", no_args_is_help=True)

KeyOpt = Annotated[
    str | None,
    typer.Option("--key", help="management key; '-' reads it from stdin (default: prompt without echo)"),
]
KeyFileOpt = Annotated[Path | None, typer.Option("--key-file", help="read the management key from this file")]


def _read_key(key: str | None, key_file: Path | None, *, required: bool) -> str | None:
    if key and key_file:
        common.fail("give either --key or --key-file, not both")
    if key_file is not None:
        try:
            value = key_file.read_text().strip()
        except OSError as exc:
            common.fail(f"cannot read {key_file}: {exc.strerror or exc}")
        if not value:
            common.fail(f"{key_file} is empty")
        return value
    if key == "-":
        value = sys.stdin.readline().strip()
        if not value:
            common.fail("no management key on stdin")
        return value
    if key:
        return key
    if not required:
        return None
    if not sys.stdin.isatty():
        common.fail("give the management key with --key, --key-file or on stdin (--key -)")
    return str(typer.prompt("CPA management key", hide_input=True)).strip()


def _poll_ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _print_check(result: dict[str, Any]) -> None:
    yes_no = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("CPA", result["base_url"])
    table.add_row("version", result.get("cpa_version") or "-")
    table.add_row("usage publishing", yes_no[result.get("publishing_enabled")])
    table.add_row("queue retention", f"{result['retention_s']} s" if result.get("retention_s") else "-")
    table.add_row("poll interval safe", yes_no[result.get("poll_interval_ok")])
    table.add_row("HTTP usage queue", yes_no[result.get("http_queue")])
    table.add_row("RESP login", yes_no[result.get("resp_ok")])
    table.add_row("collector transport", result.get("transport") or "-")
    table.add_row("auth files", "-" if result.get("auth_files") is None else str(result["auth_files"]))
    common.console.print(table)
    for warning in result.get("warnings") or []:
        common.err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if result.get("error"):
        common.err_console.print(f"[bold red]error:[/] {result['error']}", highlight=False)


def _offer_publishing(name: str, result: dict[str, Any], enable: bool | None, yes: bool) -> bool:
    """Whether to turn CPA's usage publishing on (asked when it is off and no flag decided)."""
    if result.get("publishing_enabled") is not False:
        return False
    if enable is not None:
        return enable
    if yes:
        return True
    if not sys.stdin.isatty():
        common.err_console.print(
            f"[yellow]warning:[/] CPA usage publishing is off, so CPA queues no records. Turn it on with "
            f"`relaymeter cpa publishing {name} on`",
            highlight=False,
        )
        return False
    return bool(
        typer.confirm(
            "CPA usage publishing is off, so CPA queues no usage records. Turn it on now?", default=True
        )
    )


@app.command("add")
def add_cmd(
    name: Annotated[str, typer.Argument(help="connection name; events get the source cpa:<name>")],
    url: Annotated[str, typer.Argument(help="CPA API URL, e.g. http://127.0.0.1:8317")],
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    mode: Annotated[str, typer.Option(help="auto (HTTP queue, RESP fallback), http or resp")] = "auto",
    batch_size: Annotated[int, typer.Option(help="records per pop")] = 1000,
    poll_interval: Annotated[float, typer.Option(help="seconds between polls when the queue is empty")] = 2.0,
    disabled: Annotated[bool, typer.Option("--disabled", help="save without collecting yet")] = False,
    check: Annotated[bool, typer.Option(help="check URL, key and retention against CPA first")] = True,
    enable_publishing: Annotated[
        bool | None,
        typer.Option(
            "--enable-publishing/--no-enable-publishing",
            help="turn CPA's usage publishing on when it is off (default: ask)",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="answer yes to questions")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Add a CPA connection (checked against CPA before it is saved)."""
    from relaymeter.ingest.cliproxy import connections as conn_admin
    from relaymeter.ingest.cliproxy.checks import check_cpa
    from relaymeter.ingest.cliproxy.management import CPAError, ManagementClient

    secret = _read_key(key, key_file, required=True)
    values = {
        "name": name,
        "base_url": url,
        "management_key": secret,
        "mode": mode,
        "batch_size": batch_size,
        "poll_interval_ms": _poll_ms(poll_interval),
        "enabled": not disabled,
    }
    try:
        clean = conn_admin.validate(values)
    except conn_admin.ConnectionInvalid as exc:
        common.fail(str(exc))
    check_out: dict[str, Any] | None = None
    turn_on = bool(enable_publishing)
    if check:
        result = common.run(
            check_cpa(
                clean["base_url"],
                clean["management_key"],
                mode=clean.get("mode", "auto"),
                poll_interval_ms=clean.get("poll_interval_ms"),
            )
        ).to_dict()
        if not result["ok"]:
            if not json_out:
                _print_check(result)
            common.fail(f"not saved: {result['error']} (use --no-check to save anyway)")
        turn_on = _offer_publishing(clean["name"], result, enable_publishing, yes)
        check_out = result

    async def go() -> dict[str, Any]:
        async with common.open_app_state(start_writer=False) as state:
            try:
                row, _ = await conn_admin.add_connection(state, clean, check=False)
            except (
                conn_admin.ConnectionExists,
                conn_admin.ConnectionConflict,
                conn_admin.ConnectionInvalid,
            ) as exc:
                common.fail(f"{exc} (change it with `relaymeter cpa edit`)")
        out = row.public()
        out["check"] = check_out
        if turn_on:
            try:
                async with ManagementClient(clean["base_url"], clean["management_key"]) as cpa:
                    await cpa.set_usage_statistics_enabled(True)
                    enabled = await cpa.usage_statistics_enabled()
            except CPAError as exc:
                common.err_console.print(
                    f"[yellow]warning:[/] could not turn publishing on: {exc}", highlight=False
                )
            else:
                if check_out is not None:
                    check_out["publishing_enabled"] = enabled
                    check_out["publishing_changed"] = enabled
                    check_out["warnings"] = [w for w in check_out["warnings"] if "publishing is off" not in w]
        return out

    out = common.run(go())
    if json_out:
        common.print_json(out)
        return
    if out["check"]:
        _print_check(out["check"])
    common.console.print(
        f"added CPA connection [bold]{out['name']}[/] -> {out['base_url']} "
        f"(mode {out['mode']}, batch {out['batch_size']}, poll {out['poll_interval_ms'] / 1000:g} s"
        f"{', disabled' if not out['enabled'] else ''}); the key is stored encrypted",
        highlight=False,
    )
    common.console.print("collect with `relaymeter collect`, or it runs inside `relaymeter serve`")


@app.command("edit")
def edit_cmd(
    name: Annotated[str, typer.Argument(help="connection to change")],
    url: Annotated[str | None, typer.Option("--url", help="new CPA API URL")] = None,
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    new_name: Annotated[str | None, typer.Option("--name", help="rename the connection")] = None,
    mode: Annotated[str | None, typer.Option(help="auto, http or resp")] = None,
    batch_size: Annotated[int | None, typer.Option(help="records per pop")] = None,
    poll_interval: Annotated[float | None, typer.Option(help="seconds between polls")] = None,
    enable: Annotated[bool | None, typer.Option("--enable/--disable", help="collect or pause")] = None,
    check: Annotated[bool, typer.Option(help="check against CPA when URL, key, mode or poll change")] = True,
) -> None:
    """Change a connection (a running collector restarts it; also retries a refused key)."""
    from relaymeter.ingest.cliproxy import connections as conn_admin
    from relaymeter.store import collector as store

    secret = _read_key(key, key_file, required=False)
    values = {
        "name": new_name,
        "base_url": url,
        "management_key": secret,
        "mode": mode,
        "batch_size": batch_size,
        "poll_interval_ms": _poll_ms(poll_interval),
        "enabled": enable,
    }

    async def go() -> dict[str, Any]:
        async with common.open_app_state(start_writer=False) as state:
            row = await store.get_connection(state.db, name=name)
            if row is None:
                common.fail(f"no CPA connection named {name!r} (see `relaymeter cpa list`)")
            try:
                updated, _result = await conn_admin.edit_connection(
                    state, row.id, {k: v for k, v in values.items() if v is not None}, check=check
                )
            except (
                conn_admin.ConnectionExists,
                conn_admin.ConnectionConflict,
                conn_admin.ConnectionInvalid,
            ) as exc:
                common.fail(str(exc))
            except conn_admin.CheckFailed as exc:
                common.fail(f"not saved: {exc} (use --no-check to save anyway)")
            return updated.public()

    out = common.run(go())
    common.console.print(f"updated CPA connection [bold]{out['name']}[/]", highlight=False)


@app.command("list")
def list_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Connections with pending spooled records, dead letters and who is collecting them."""
    import time

    from relaymeter.ingest.cliproxy.runner import lease_name
    from relaymeter.store import collector as store
    from relaymeter.store import events as store_events

    async def go() -> list[dict[str, Any]]:
        async with common.open_app_state(start_writer=False) as state:
            spool = await store.spool_counts(state.db)
            out = []
            for row in await store.list_connections(state.db):
                lease = await store.get_lease(state.db, lease_name(row.base_url))
                held = lease is not None and lease.expires_ms > time.time_ns() // 1_000_000
                out.append(
                    {
                        **row.public(),
                        "spooled_batches": spool.get(row.name, 0),
                        "dead_letters": await store_events.count_dead_letters(state.db, f"cpa:{row.name}"),
                        "collected_by": lease.holder if held and lease else None,
                    }
                )
            return out

    rows = common.run(go())
    if json_out:
        common.print_json(rows)
        return
    if not rows:
        common.console.print("no CPA connections; add one with `relaymeter cpa add NAME URL`")
        return
    table = Table(title="CPA connections", title_justify="left")
    for col in ("name", "url", "mode", "batch", "poll", "enabled", "spooled", "dead letters", "collected by"):
        table.add_column(
            col, justify="right" if col in ("batch", "poll", "spooled", "dead letters") else "left"
        )
    for r in rows:
        table.add_row(
            r["name"],
            r["base_url"],
            r["mode"],
            str(r["batch_size"]),
            f"{r['poll_interval_ms'] / 1000:g} s",
            "yes" if r["enabled"] else "[yellow]no[/]",
            str(r["spooled_batches"]),
            str(r["dead_letters"]),
            r["collected_by"] or "-",
        )
    common.console.print(table)


@app.command("remove")
def remove_cmd(
    name: Annotated[str, typer.Argument(help="connection to remove")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Remove a connection (its collected usage stays; spooled records are stored first)."""
    from relaymeter.ingest.cliproxy import connections as conn_admin
    from relaymeter.store import collector as store

    if (
        not yes
        and sys.stdin.isatty()
        and not typer.confirm(f"Remove CPA connection {name!r}?", default=False)
    ):
        raise typer.Exit(1)

    async def go() -> int:
        async with common.open_app_state() as state:
            row = await store.get_connection(state.db, name=name)
            if row is None:
                common.fail(f"no CPA connection named {name!r} (see `relaymeter cpa list`)")
            _row, replayed = await conn_admin.remove_connection(state, row.id)
            return replayed

    replayed = common.run(go())
    extra = f"; stored {replayed} spooled records first" if replayed else ""
    common.console.print(f"removed CPA connection [bold]{name}[/]{extra}", highlight=False)


@app.command("test")
def test_cmd(
    name: Annotated[str | None, typer.Argument(help="saved connection to test")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="test this CPA URL instead of a saved connection")
    ] = None,
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    mode: Annotated[str | None, typer.Option(help="auto, http or resp")] = None,
    poll_interval: Annotated[float | None, typer.Option(help="poll interval to validate (seconds)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Check URL, key, retention vs poll interval and the queue transport (pops nothing)."""
    from relaymeter.ingest.cliproxy.checks import check_cpa
    from relaymeter.store import collector as store

    if (name is None) == (url is None):
        common.fail("give a saved connection NAME or --url (with --key)")

    async def go() -> dict[str, Any]:
        if url is not None:
            secret = _read_key(key, key_file, required=True)
            assert secret is not None
            result = await check_cpa(
                url, secret, mode=mode or "auto", poll_interval_ms=_poll_ms(poll_interval)
            )
            return result.to_dict()
        async with common.open_app_state(start_writer=False) as state:
            row = await store.get_connection(state.db, name=str(name))
            if row is None:
                common.fail(f"no CPA connection named {name!r} (see `relaymeter cpa list`)")
            try:
                secret_saved = state.box.decrypt(row.management_key_enc)
            except ValueError as exc:
                common.fail(f"{exc}; save the key again with `relaymeter cpa edit {row.name} --key -`")
            result = await check_cpa(
                row.base_url,
                secret_saved,
                mode=mode or row.mode,
                poll_interval_ms=_poll_ms(poll_interval) or row.poll_interval_ms,
            )
            return result.to_dict()

    out = common.run(go())
    if json_out:
        common.print_json(out)
    else:
        _print_check(out)
    if not out["ok"]:
        raise typer.Exit(1)
    if not json_out:
        common.console.print("[green]ok[/]")


@app.command("publishing")
def publishing_cmd(
    name: Annotated[str, typer.Argument(help="saved connection")],
    state_arg: Annotated[
        str | None, typer.Argument(metavar="[on|off]", help="omit to show the current value")
    ] = None,
) -> None:
    """Show or set CPA's usage publishing (usage-statistics-enabled; CPA's default is off)."""
    from relaymeter.ingest.cliproxy.management import CPAError, ManagementClient
    from relaymeter.store import collector as store

    if state_arg is not None and state_arg.lower() not in ("on", "off"):
        common.fail("use on or off")

    async def go() -> bool:
        async with common.open_app_state(start_writer=False) as state:
            row = await store.get_connection(state.db, name=name)
            if row is None:
                common.fail(f"no CPA connection named {name!r} (see `relaymeter cpa list`)")
            try:
                secret = state.box.decrypt(row.management_key_enc)
            except ValueError as exc:
                common.fail(f"{exc}; save the key again with `relaymeter cpa edit {row.name} --key -`")
        try:
            async with ManagementClient(row.base_url, secret) as cpa:
                if state_arg is not None:
                    await cpa.set_usage_statistics_enabled(state_arg.lower() == "on")
                return await cpa.usage_statistics_enabled()
        except CPAError as exc:
            common.fail(str(exc))

    enabled = common.run(go())
    common.console.print(
        f"CPA usage publishing for {name}: [bold]{'on' if enabled else 'off'}[/]", highlight=False
    )
