"""`relaymeter report RANGE`: usage summary as Rich tables (or --json)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from relaymeter.cli import common


def fmt_tokens(n: int) -> str:
    for unit, size in (("B", 1_000_000_000), ("M", 1_000_000), ("K", 1_000)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def fmt_usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _breakdown(title: str, key: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in (
        key,
        "requests",
        "failed",
        "input",
        "output",
        "cache read",
        "cache write",
        "total",
        "cost",
        "avg latency",
    ):
        table.add_column(col, justify="left" if col == key else "right")
    for r in rows:
        table.add_row(
            str(r.get("name") or r.get(key) or "-"),
            f"{r['requests']:,}",
            f"{r['failures']:,}",
            fmt_tokens(r["input_tokens"]),
            fmt_tokens(r["output_tokens"]),
            fmt_tokens(r["cache_read_tokens"]),
            fmt_tokens(r["cache_creation_tokens"]),
            fmt_tokens(r["total_tokens"]),
            fmt_usd(r["cost_micros"]),
            fmt_ms(r["avg_latency_ms"]),
        )
    return table


def report(
    range_name: Annotated[
        str, typer.Argument(metavar="RANGE", help="today, 1h, 5h, 24h, 7d, 30d or custom")
    ] = "today",
    start: Annotated[str | None, typer.Option(help="custom range start (ISO 8601 or epoch ms)")] = None,
    end: Annotated[str | None, typer.Option(help="custom range end (default now)")] = None,
    tz: Annotated[str | None, typer.Option(help="IANA time zone (default: configured)")] = None,
    top: Annotated[int, typer.Option(help="rows per breakdown")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Usage summary for a time range: totals and breakdowns by account, API key, model, endpoint."""
    from relaymeter.domain.windows import RangeError, resolve_range
    from relaymeter.store import queries
    from relaymeter.store.db import Database
    from relaymeter.store.migrate import upgrade

    cfg = common.settings()
    try:
        rng = resolve_range(range_name, tz=tz or cfg.timezone, start=start, end=end)
    except RangeError as exc:
        common.fail(str(exc))

    async def go() -> dict[str, Any]:
        db = Database(cfg.effective_database_url)
        try:
            await upgrade(db)
            return await queries.summary(db, rng.start_ms, rng.end_ms, top=None if json_out else top)
        finally:
            await db.dispose()

    data = common.run(go())
    data["range"] = {"name": rng.name, "tz": rng.tz}
    if json_out:
        common.print_json(data)
        return
    t = data["totals"]
    head = Table(title=f"relaymeter usage: {rng.name} ({rng.tz})", title_justify="left", show_header=False)
    head.add_column("metric")
    head.add_column("value", justify="right")
    rate = "-" if t["success_rate"] is None else f"{t['success_rate'] * 100:.1f}%"
    for label, value in (
        ("requests", f"{t['requests']:,}"),
        ("failed", f"{t['failures']:,}"),
        ("success rate", rate),
        ("input tokens", fmt_tokens(t["input_tokens"])),
        ("output tokens", fmt_tokens(t["output_tokens"])),
        (
            "cache read / write",
            f"{fmt_tokens(t['cache_read_tokens'])} / {fmt_tokens(t['cache_creation_tokens'])}",
        ),
        ("total tokens", fmt_tokens(t["total_tokens"])),
        ("cost", fmt_usd(t["cost_micros"])),
        (
            "latency avg / p50 / p95",
            f"{fmt_ms(t['avg_latency_ms'])} / {fmt_ms(t['p50_latency_ms'])} / {fmt_ms(t['p95_latency_ms'])}",
        ),
    ):
        head.add_row(label, value)
    common.console.print(head)
    if not t["requests"]:
        common.console.print("no usage recorded in this range")
        return
    common.console.print(_breakdown("by account", "account_id", data["by_account"]))
    common.console.print(_breakdown("by API key", "api_key_id", data["by_api_key"]))
    common.console.print(_breakdown("by model", "model", data["by_model"]))
    common.console.print(_breakdown("by endpoint", "endpoint", data["by_endpoint"]))
