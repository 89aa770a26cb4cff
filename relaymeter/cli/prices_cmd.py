"""`relaymeter prices ...`: sync the catalogue, list (and list missing), set / unset overrides, reprice."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from relaymeter.cli import common

app = typer.Typer(
    help="Model prices: catalogue sync, overrides, repricing stored usage.", no_args_is_help=True
)


def _usd(value: Any) -> str:
    if value is None:
        return "-"
    text = f"{value:,.6f}".rstrip("0").rstrip(".")
    return "$" + text


@app.command("sync")
def sync_cmd(
    url: Annotated[
        str | None, typer.Option("--url", help="catalogue URL (default: pricing_sync_url)")
    ] = None,
    file: Annotated[str | None, typer.Option("--file", help="a local LiteLLM price JSON file")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Replace the synced prices with LiteLLM's model_prices_and_context_window.json."""
    from relaymeter.pricing import sync as price_sync
    from relaymeter.pricing.service import reload_pricer

    if url and file:
        common.fail("give either --url or --file, not both")
    cfg = common.settings()

    async def go() -> dict[str, Any]:
        async with common.open_app_state(cfg, start_writer=False) as state:
            try:
                result = await price_sync.sync(state.db, url=url or cfg.pricing_sync_url, file=file)
            except price_sync.SyncError as exc:
                common.fail(str(exc))
            await reload_pricer(state)
            return result.to_dict()

    out = common.run(go())
    if json_out:
        common.print_json(out)
        return
    common.console.print(
        f"synced {out['models']:,} priced models from {out['source']}: {out['added']:,} added, "
        f"{out['updated']:,} updated, {out['removed']:,} removed, {out['unchanged']:,} unchanged",
        highlight=False,
    )
    if out["skipped_count"]:
        common.console.print(f"[yellow]skipped {out['skipped_count']} entries with invalid prices[/]")
        for item in out["skipped"][:10]:
            common.console.print(f"  {item['model']}: {item['reason']}", highlight=False)
    if out["added"] or out["updated"] or out["removed"]:
        common.console.print("stored costs keep their old value until `relaymeter prices reprice`")


@app.command("list")
def list_cmd(
    missing: Annotated[
        bool, typer.Option("--missing", help="models seen in usage that have no price")
    ] = False,
    search: Annotated[str | None, typer.Option("--search", "-s", help="substring of the model name")] = None,
    origin: Annotated[
        str | None, typer.Option(help="only rows of one origin: override, synced or snapshot")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Effective price per model in USD per 1M tokens (override > synced > snapshot)."""
    from relaymeter.domain.pricing import price_to_usd
    from relaymeter.pricing.catalogue import ORIGINS, merge_origins
    from relaymeter.store import prices as price_store

    if origin is not None and origin not in ORIGINS:
        common.fail(f"--origin: use one of {', '.join(ORIGINS)}")
    cfg = common.settings()

    async def go() -> list[dict[str, Any]]:
        async with common.open_app_state(cfg, start_writer=False) as state:
            if missing:
                pricer = await price_store.load_pricer(state.db)
                seen = await price_store.seen_models(state.db)
                rows = [m for m in seen if pricer.price(m["model"], m["provider"]) is None]
                return sorted(rows, key=lambda m: (-m["total_tokens"], m["model"]))
            entries = await price_store.load_entries(state.db, origin)
            if not origin:
                entries = list(merge_origins(entries).values())
            needle = (search or "").lower()
            return [
                {"model": e.model, "provider": e.provider, "origin": e.origin, **price_to_usd(e.price)}
                for e in sorted(entries, key=lambda e: e.model.lower())
                if needle in e.model.lower()
            ]

    rows = common.run(go())
    if json_out:
        common.print_json(rows)
        return
    if missing:
        if not rows:
            common.console.print("every model seen in stored usage has a price")
            return
        from relaymeter.cli.report import fmt_tokens

        table = Table(title="models without a price", title_justify="left")
        for col in ("model", "provider", "requests", "tokens"):
            table.add_column(col, justify="left" if col in ("model", "provider") else "right")
        for r in rows:
            table.add_row(
                r["model"], r["provider"] or "-", f"{r['requests']:,}", fmt_tokens(r["total_tokens"])
            )
        common.console.print(table)
        common.console.print("set one with `relaymeter prices set MODEL --input X --output Y`, then reprice")
        return
    table = Table(title="prices (USD per 1M tokens)", title_justify="left")
    for col in (
        "model",
        "origin",
        "input",
        "output",
        "cache read",
        "cache write 5m / 1h",
        "long context",
        "tiers",
    ):
        table.add_column(
            col,
            justify="left" if col in ("model", "origin", "long context", "tiers") else "right",
            no_wrap=col in ("model", "origin"),
        )
    for r in rows:
        tier = r["tier"]
        long_ctx = (
            f">{tier['threshold_tokens'] // 1000}k: {_usd(tier['input'])} / {_usd(tier['output'])}"
            if tier
            else ""
        )
        tiers = ", ".join(f"{k} x{v:g}" for k, v in r["service_tiers"].items())
        table.add_row(
            r["model"],
            r["origin"],
            _usd(r["input"]),
            _usd(r["output"]),
            _usd(r["cache_read"]),
            f"{_usd(r['cache_write_5m'])} / {_usd(r['cache_write_1h'])}",
            long_ctx,
            tiers,
        )
    common.console.print(table)
    common.console.print(f"{len(rows):,} models", highlight=False)


def _parse_tiers(values: list[str]) -> dict[str, str]:
    tiers: dict[str, str] = {}
    for item in values:
        name, sep, mult = item.partition("=")
        if not sep or not name.strip() or not mult.strip():
            common.fail(f"--service-tier {item!r}: use NAME=MULTIPLIER, e.g. priority=2")
        tiers[name.strip()] = mult.strip()
    return tiers


@app.command("set")
def set_cmd(
    model: Annotated[str, typer.Argument(help="model name as served, e.g. claude-sonnet-4-5")],
    input_price: Annotated[str, typer.Option("--input", help="USD per 1M uncached input tokens")],
    output_price: Annotated[str, typer.Option("--output", help="USD per 1M output tokens")],
    cache_read: Annotated[str | None, typer.Option(help="USD per 1M cache-read tokens")] = None,
    cache_write: Annotated[str | None, typer.Option(help="USD per 1M cache-write tokens (5-minute)")] = None,
    cache_write_1h: Annotated[
        str | None, typer.Option("--cache-write-1h", help="USD per 1M 1-hour cache writes")
    ] = None,
    tier_threshold: Annotated[
        int | None, typer.Option(help="prompt tokens above which the tier prices apply, e.g. 200000")
    ] = None,
    tier_input: Annotated[str | None, typer.Option(help="long-context input price")] = None,
    tier_output: Annotated[str | None, typer.Option(help="long-context output price")] = None,
    tier_cache_read: Annotated[str | None, typer.Option(help="long-context cache-read price")] = None,
    tier_cache_write: Annotated[str | None, typer.Option(help="long-context cache-write price")] = None,
    service_tier: Annotated[
        list[str] | None, typer.Option("--service-tier", help="NAME=MULTIPLIER, e.g. priority=2 (repeatable)")
    ] = None,
    provider: Annotated[str, typer.Option(help="provider label shown in lists")] = "",
) -> None:
    """Set your own price for a model (it beats the synced and shipped prices)."""
    from relaymeter.domain.pricing import PriceError, price_from_usd
    from relaymeter.pricing.service import reload_pricer
    from relaymeter.store import prices as price_store

    name = model.strip()
    if not name or len(name) > 200:
        common.fail("MODEL: 1 to 200 characters")
    try:
        price = price_from_usd(
            input=input_price,
            output=output_price,
            cache_read=cache_read,
            cache_write_5m=cache_write,
            cache_write_1h=cache_write_1h,
            tier_threshold=tier_threshold,
            tier_input=tier_input,
            tier_output=tier_output,
            tier_cache_read=tier_cache_read,
            tier_cache_write=tier_cache_write,
            service_tiers=dict(_parse_tiers(service_tier or [])),
        )
    except PriceError as exc:
        common.fail(str(exc))
    cfg = common.settings()

    async def go() -> bool:
        async with common.open_app_state(cfg, start_writer=False) as state:
            created = await price_store.set_override(state.db, name, provider.strip(), price)
            await reload_pricer(state)
            from relaymeter.store import audit

            await audit.record(state.db, "prices.set", actor="cli", target=name)
            return created

    created = common.run(go())
    common.console.print(
        f"{'added' if created else 'updated'} price override for {name}; "
        f"run `relaymeter prices reprice --model {name}` to update stored costs",
        highlight=False,
    )


@app.command("unset")
def unset_cmd(model: Annotated[str, typer.Argument(help="model whose override to remove")]) -> None:
    """Remove your override for a model; the synced or shipped price applies again."""
    from relaymeter.store import prices as price_store

    cfg = common.settings()

    async def go() -> bool:
        async with common.open_app_state(cfg, start_writer=False) as state:
            return await price_store.delete_override(state.db, model.strip())

    if not common.run(go()):
        common.fail(f"no price override for {model!r} (see `relaymeter prices list --origin override`)")
    common.console.print(f"removed the price override for {model}", highlight=False)


@app.command("reprice")
def reprice_cmd(
    since: Annotated[
        str | None, typer.Option(help="only events from this time: ISO date/time, epoch ms, or 7d / 12h")
    ] = None,
    until: Annotated[str | None, typer.Option(help="only events before this time")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="only this served model (repeatable)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=100, max=50_000, help="events per transaction")] = 5000,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Recompute stored event costs and hourly rollups with the current prices."""
    from relaymeter.cli.report import fmt_usd
    from relaymeter.domain.windows import RangeError
    from relaymeter.pricing.service import parse_since
    from relaymeter.store import prices as price_store

    cfg = common.settings()
    try:
        since_ms = parse_since(since, cfg.timezone) if since else None
        until_ms = parse_since(until, cfg.timezone) if until else None
    except RangeError as exc:
        common.fail(str(exc))
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        common.fail("--until must be after --since")

    async def go() -> dict[str, Any]:
        async with common.open_app_state(cfg, start_writer=False) as state:
            pricer = await price_store.load_pricer(state.db)
            with Progress(
                TextColumn("repricing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=common.err_console,
                disable=json_out,
                transient=False,
            ) as bar:
                task = bar.add_task("reprice", total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                stats = await price_store.reprice(
                    state.db,
                    pricer,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    models=model or (),
                    batch_size=batch_size,
                    progress=progress,
                )
            return stats.to_dict()

    out = common.run(go())
    if json_out:
        common.print_json(out)
        return
    common.console.print(
        f"scanned {out['scanned']:,} events, {out['changed']:,} changed "
        f"({out['newly_priced']:,} newly priced); cost {fmt_usd(out['cost_before_micros'])} -> "
        f"{fmt_usd(out['cost_after_micros'])}",
        highlight=False,
    )
    if out["still_missing"]:
        names = ", ".join(list(out["missing_models"])[:8])
        common.console.print(
            f"[yellow]{out['still_missing']:,} events still have no price[/] ({names}); "
            "see `relaymeter prices list --missing`",
            highlight=False,
        )
