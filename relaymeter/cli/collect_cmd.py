"""`relaymeter collect`: run the CPA collector in the foreground (no web server)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from relaymeter.cli import common

FAILED_STATES = ("auth_failed", "banned", "config_error", "lease_wait", "failed")
STATUS_EVERY_S = 60.0


def _summary_table(items: list[dict[str, Any]]) -> Table:
    table = Table(title="CPA collector", title_justify="left")
    for col in (
        "connection",
        "state",
        "transport",
        "consumed",
        "replayed",
        "new",
        "duplicates",
        "dead letters",
        "error",
    ):
        table.add_column(
            col,
            justify="right"
            if col in ("consumed", "replayed", "new", "duplicates", "dead letters")
            else "left",
        )
    for s in items:
        state = s["state"]
        color = "red" if state in FAILED_STATES else "yellow" if state == "backoff" else "green"
        table.add_row(
            s["name"],
            f"[{color}]{state}[/]",
            s.get("transport") or "-",
            f"{s['consumed_total']:,}",
            f"{s['replayed_total']:,}",
            f"{s['inserted_total']:,}",
            f"{s['duplicates_total']:,}",
            f"{s['dead_letters_total']:,}",
            (s.get("last_error") or "")[:120]
            if (state != "idle" and state != "stopped") or s.get("errors_total")
            else "",
        )
    return table


def collect(
    once: Annotated[
        bool, typer.Option("--once", help="drain each queue (and leftover spool) once, then exit")
    ] = False,
    connection: Annotated[
        list[str] | None, typer.Option("--connection", "-n", help="only these connections (repeatable)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the final status as JSON")] = False,
) -> None:
    """Collect usage from the configured CPA connections until stopped (Ctrl-C / SIGTERM)."""
    from relaymeter.ingest.cliproxy.service import CollectorService
    from relaymeter.logs import setup_logging
    from relaymeter.store import collector as store

    cfg = common.settings()

    async def go() -> list[dict[str, Any]]:
        async with common.open_app_state(cfg) as state:
            # After the store is open: migration chatter is not collector news.
            setup_logging(cfg.log_level, cfg.log_format)
            rows = await store.list_connections(state.db)
            names = {r.name for r in rows}
            for wanted in connection or []:
                if wanted not in names:
                    common.fail(f"no CPA connection named {wanted!r} (see `relaymeter cpa list`)")
            if not rows:
                common.fail("no CPA connections; add one with `relaymeter cpa add NAME URL`")
            service = CollectorService(state, only=connection)
            if once:
                await service.run_once()
                return service.status()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await service.start()
            common.err_console.print(
                f"collecting from {', '.join(sorted(names if not connection else set(connection)))} "
                "(Ctrl-C to stop)",
                highlight=False,
            )
            last_states: dict[str, str] = {}
            next_report = time.monotonic() + STATUS_EVERY_S
            try:
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(stop.wait(), 1.0)
                    except TimeoutError:
                        pass
                    items = service.status()
                    for s in items:
                        if last_states.get(s["name"]) != s["state"]:
                            last_states[s["name"]] = s["state"]
                            _print_state(s)
                    if time.monotonic() >= next_report:
                        next_report = time.monotonic() + STATUS_EVERY_S
                        for s in items:
                            common.err_console.print(
                                f"{s['name']}: {s['state']}, consumed {s['consumed_total']:,}, new "
                                f"{s['inserted_total']:,}, dead letters {s['dead_letters_total']:,}",
                                highlight=False,
                            )
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
                await service.stop()
            return service.status()

    items = common.run(go())
    if json_out:
        common.print_json(items)
    else:
        common.console.print(_summary_table(items))
    if any(s["state"] in FAILED_STATES for s in items):
        raise typer.Exit(1)


def _print_state(s: dict[str, Any]) -> None:
    state = s["state"]
    if state in ("running", "starting"):
        return
    line = f"{s['name']}: {state}"
    if s.get("transport"):
        line += f" via {s['transport']}"
    if state in FAILED_STATES or state == "backoff":
        line += f" - {s.get('last_error') or ''}"
        common.err_console.print(f"[yellow]{line}[/]", highlight=False)
        return
    for warning in s.get("warnings") or []:
        line += f" (warning: {warning})"
    common.err_console.print(line, highlight=False)
