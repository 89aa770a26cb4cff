"""`relaymeter db stats` (sizes, row counts, event span) and `relaymeter db vacuum`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from relaymeter.cli import common


def fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"


def _when(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


def stats(
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    sizes: Annotated[
        bool, typer.Option("--sizes/--no-sizes", help="measure bytes per table (reads every page)")
    ] = True,
) -> None:
    """Database sizes, row counts per table and the time span of stored events."""
    from relaymeter.store import maintenance, migrate
    from relaymeter.store.db import Database

    cfg = common.settings()

    async def go() -> dict[str, Any]:
        db = Database(cfg.effective_database_url)
        try:
            await migrate.upgrade(db)
            return await maintenance.stats(db, sizes=sizes)
        finally:
            await db.dispose()

    data = common.run(go())
    data["retention_days"] = cfg.retention_days
    if json_out:
        common.print_json(data)
        return
    head = Table(title=f"relaymeter database ({data['backend']})", title_justify="left", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    head.add_row("total size", fmt_bytes(data["total_bytes"]))
    sq = data.get("sqlite")
    if sq:
        head.add_row("file", str(sq["path"]))
        for name, size in sq["file_bytes"].items():
            head.add_row(f"  {name.replace('_', '-')}", fmt_bytes(size))
        head.add_row("free pages (reusable)", f"{sq['free_pages']:,} ({fmt_bytes(sq['free_bytes'])})")
        head.add_row("auto vacuum", sq["auto_vacuum"])
    head.add_row("oldest event", _when(data["oldest_event_ms"]))
    head.add_row("newest event", _when(data["newest_event_ms"]))
    head.add_row(
        "retention", f"{data['retention_days']} days" if data["retention_days"] else "keep everything"
    )
    common.console.print(head)
    table = Table(title="tables", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("size (with indexes)", justify="right")
    for name, count in sorted(data["rows"].items(), key=lambda kv: -data["table_bytes"].get(kv[0], 0)):
        size = data["table_bytes"].get(name)
        table.add_row(name, f"{count:,}", "-" if size is None else fmt_bytes(size))
    common.console.print(table)
    if sq and sq["auto_vacuum"] != "incremental":
        common.console.print(
            "note: this SQLite file cannot shrink after retention deletes rows; "
            "run `relaymeter db vacuum` once (while relaymeter is stopped) to enable it",
            highlight=False,
        )


def vacuum(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Rebuild the database file to reclaim free space (SQLite: also enables incremental vacuum).

    Blocks writers while it runs and needs free disk space about the size of the database:
    run it while relaymeter is stopped.
    """
    from relaymeter.store import maintenance, migrate
    from relaymeter.store.db import Database

    cfg = common.settings()
    if not yes and not typer.confirm("Rebuild the database now? Writers are blocked until it finishes"):
        raise typer.Exit(1)

    async def go() -> dict[str, int]:
        db = Database(cfg.effective_database_url)
        try:
            await migrate.upgrade(db)
            return await maintenance.vacuum(db)
        finally:
            await db.dispose()

    result = common.run(go())
    common.console.print(
        f"vacuum done: {fmt_bytes(result['bytes_before'])} -> {fmt_bytes(result['bytes_after'])}",
        highlight=False,
    )
