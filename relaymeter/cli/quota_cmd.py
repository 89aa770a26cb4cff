"""`relaymeter quota` (provider windows as a coloured table) and `relaymeter accounts check`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from relaymeter.cli import common

GREEN_ABOVE = 30.0  # remaining percent above which a window is green
RED_BELOW = 10.0  # below which it is red (amber in between)


def remaining_style(remaining_percent: float | None) -> str:
    if remaining_percent is None:
        return "dim"
    if remaining_percent > GREEN_ABOVE:
        return "green"
    if remaining_percent >= RED_BELOW:
        return "dark_orange"
    return "red"


def _ago(ms: int | None, now: int) -> str:
    if not ms:
        return "never"
    return _span(now - ms) + " ago"


def _span(ms: int) -> str:
    seconds = max(0, ms // 1000)
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24}h"


def format_reset(ms: int | None, now: int, tz: Any) -> str:
    """A reset time in the configured (local) zone, with how long until it."""
    if not ms:
        return "-"
    local = datetime.fromtimestamp(ms / 1000, tz)
    when = local.strftime("%a %d %b %H:%M")
    return f"{when} (in {_span(ms - now)})" if ms > now else f"{when} (passed)"


def _ours(local: dict[str, Any] | None) -> str:
    if not local:
        return ""
    from relaymeter.cli.report import fmt_tokens, fmt_usd

    return (
        f"{local['requests']:,} req, {fmt_tokens(local['total_tokens'])} tok, {fmt_usd(local['cost_micros'])}"
    )


def quota_table(data: dict[str, Any], tz: Any) -> Table:
    now = int(data["generated_ms"])
    table = Table(title="quota windows", title_justify="left")
    for col, justify in (
        ("account", "left"),
        ("window", "left"),
        ("used", "right"),
        ("left", "right"),
        ("resets", "left"),
        ("source", "left"),
        ("ours in window", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for acc in data["accounts"]:
        label = Text(acc["name"])
        if not acc["enabled"]:
            label.append(
                f" (disabled{' by ' + acc['disabled_by'] if acc['disabled_by'] else ''})", style="dim"
            )
        if acc.get("plan"):
            label.append(f" [{acc['plan']}]", style="dim")
        if not acc["windows"]:
            note = acc.get("last_error") or (
                "windows come from relayed responses" if acc["kind"] == "api_key" else "not fetched yet"
            )
            table.add_row(
                label, "-", "", "", "", Text(note, style="red" if acc.get("last_error") else "dim"), ""
            )
            continue
        for i, w in enumerate(acc["windows"]):
            used = w["used_percent"]
            left = w["remaining_percent"]
            style = "red" if w["limit_reached"] else remaining_style(left)
            left_text = "-" if left is None else f"{left:.0f}%"
            if w["remaining"] is not None and w["limit"]:
                left_text += f" ({w['remaining']:,}/{w['limit']:,})"
            elif w["remaining"] is not None and left is None:
                left_text = f"{w['remaining']:,}"
            source = {"oauth_usage": "usage", "cpa_api_call": "cpa", "headers": "headers"}.get(
                w["origin"], w["origin"]
            )
            table.add_row(
                label if i == 0 else "",
                w["window"],
                "-" if used is None else f"{used:.0f}%",
                Text(left_text, style=style),
                format_reset(w["resets_at_ms"], now, tz),
                f"{source} {_ago(w['fetched_ms'], now)}",
                _ours(acc["local"].get(w["window"])),
            )
        if acc.get("last_error"):
            table.add_row(
                "", Text(f"last refresh failed: {acc['last_error']}", style="red"), "", "", "", "", ""
            )
    return table


def quota(
    force: Annotated[
        bool, typer.Option("--force", help="ask the providers now (per-account cooldown applies)")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Which account still has room, and when each window resets."""
    from relaymeter.domain.windows import zone
    from relaymeter.quota.service import QuotaService

    cfg = common.settings()

    async def go() -> dict[str, Any]:
        async with common.open_app_state(cfg, start_writer=False) as state:
            service = QuotaService(state)
            try:
                report = await service.refresh(force=True) if force else None
                data = await service.overview()
            finally:
                await service.close()
            if report is not None:
                data["refresh_report"] = report.to_dict()
            return data

    data = common.run(go())
    if json_out:
        common.print_json(data)
        return
    if not data["accounts"]:
        common.console.print("no accounts yet: add one with `relaymeter accounts add` or connect a CPA")
        return
    common.console.print(quota_table(data, zone(cfg.timezone)))
    report = data.get("refresh_report")
    if report:
        for item in report["results"]:
            if item["status"] in ("skipped", "error", "rejected"):
                style = "yellow" if item["status"] == "skipped" else "red"
                common.console.print(
                    f"[{style}]{item['name']}: {item['status']}[/] {item.get('message', '')}", highlight=False
                )
    elif not any(a["windows"] for a in data["accounts"]):
        common.console.print(
            "no windows stored yet: run `relaymeter quota --force` or keep `relaymeter serve` running"
        )


_REC_STYLE = {"keep": "green", "disable": "yellow", "re-enable": "cyan", "remove": "red"}


def accounts_check(
    apply: Annotated[
        bool, typer.Option("--apply", help="act on the recommendations (gateway accounts)")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Probe every account and recommend keep / disable / re-enable / remove (--apply acts)."""
    from relaymeter.quota.health import check_accounts
    from relaymeter.quota.service import QuotaService

    cfg = common.settings()

    async def go() -> dict[str, Any]:
        async with common.open_app_state(cfg, start_writer=False) as state:
            service = QuotaService(state)
            try:
                with Progress(
                    TextColumn("probing accounts"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=common.err_console,
                    disable=json_out,
                ) as bar:
                    task = bar.add_task("check", total=None)
                    return await check_accounts(
                        state,
                        service,
                        apply=apply,
                        actor="cli",
                        progress=lambda done, total: bar.update(task, completed=done, total=total),
                    )
            finally:
                await service.close()

    out = common.run(go())
    if json_out:
        common.print_json(out)
        return
    for problem in out["problems"]:
        common.console.print(f"[red]CPA {problem['connection']}:[/] {problem['message']}", highlight=False)
    if not out["results"]:
        common.console.print("no accounts to check")
        return
    table = Table(title="account check" + (" (applied)" if apply else ""), title_justify="left")
    for col in (
        "account",
        "origin",
        "probe",
        "result",
        "recommendation",
        "reason",
        *(("applied",) if apply else ()),
    ):
        table.add_column(col)
    for r in out["results"]:
        row = [
            r["name"],
            r["origin"],
            r["probe"],
            r["outcome"],
            Text(r["recommendation"], style=_REC_STYLE.get(r["recommendation"], "")),
            r["reason"],
        ]
        if apply:
            row.append(r["applied"] or "")
        table.add_row(*row)
    common.console.print(table)
    if not apply and any(r["recommendation"] != "keep" for r in out["results"]):
        common.console.print("run again with --apply to act on these recommendations")
