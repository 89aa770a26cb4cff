"""Per-dimension rollups stay equal to the full-key rollups they are folded from: after inserts,
after signed corrections (the path repricing uses) and when rebuilt by the migration."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import text

from relaymeter.store import events as store_events
from relaymeter.store import increments, migrate
from relaymeter.store.db import Database
from relaymeter.store.increments import SLOT_MS, Increments
from tests.analytics_seed import make_events, seed

BASE = 1_790_000_000_000
SUMS = ", ".join(f"SUM({c})" for c in increments.SUM_COLUMNS)


async def expected_from_full(db: Database) -> list[tuple[Any, ...]]:
    parts = []
    for dim in ("*", *increments.DIMS):
        value = "''" if dim == "*" else f"CAST({dim} AS VARCHAR(200))"
        group = "hour_ms" if dim == "*" else f"hour_ms, {dim}"
        parts.append(
            f"SELECT hour_ms, '{dim}' AS dim, {value} AS value, {SUMS} FROM usage_hourly GROUP BY {group}"
        )
    sql = " UNION ALL ".join(parts)
    async with db.connect() as conn:
        rows = [tuple(r) for r in await conn.execute(text(sql))]
    return sorted((r for r in rows if any(r[3:])), key=lambda r: (r[0], r[1], str(r[2])))


async def dim_rows(db: Database, table: str, time_column: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(increments.SUM_COLUMNS)
    async with db.connect() as conn:
        rows = [
            tuple(r)
            for r in await conn.execute(text(f"SELECT {time_column}, dim, value, {cols} FROM {table}"))
        ]
    return sorted((r for r in rows if any(r[3:])), key=lambda r: (r[0], r[1], str(r[2])))


async def folded(db: Database, table: str, time_column: str, period_ms: int) -> list[tuple[Any, ...]]:
    """A per-dimension table's rows summed into coarser periods."""
    period = f"{time_column} - {time_column} % {period_ms}"
    async with db.connect() as conn:
        rows = [
            tuple(r)
            for r in await conn.execute(
                text(f"SELECT {period}, dim, value, {SUMS} FROM {table} GROUP BY {period}, dim, value")
            )
        ]
    return sorted((r for r in rows if any(r[3:])), key=lambda r: (r[0], r[1], str(r[2])))


async def assert_consistent(db: Database) -> None:
    hourly = await dim_rows(db, "usage_hourly_dim", "hour_ms")
    assert hourly == await expected_from_full(db)
    assert hourly == await folded(db, "usage_15m_dim", "slot_ms", 3_600_000)
    daily = await dim_rows(db, "usage_daily_dim", "day_ms")
    assert daily == await folded(db, "usage_hourly_dim", "hour_ms", 86_400_000)
    assert hourly
    months: dict[tuple[Any, ...], list[int]] = {}
    for day, dim, value, *vals in daily:
        key = (increments.month_start_ms(day), dim, value)
        months[key] = [a + b for a, b in zip(months.get(key, [0] * len(vals)), vals, strict=True)]
    want = sorted(((*k, *v) for k, v in months.items() if any(v)), key=lambda r: (r[0], r[1], str(r[2])))
    assert await dim_rows(db, "usage_monthly_dim", "month_ms") == want


async def test_inserts_and_signed_corrections_keep_dims_exact(db: Database) -> None:
    events = make_events(2000, BASE, BASE + 5 * 86_400_000, seed=61)
    await seed(db, events[:1500], batch=400)
    await seed(db, events, batch=700)  # duplicates change nothing
    await assert_consistent(db)
    # Corrections as repricing writes them: cost-only deltas, and whole increments out and in.
    sample = [e for e in events[:300] if e.account_id]
    deltas: dict[tuple[Any, ...], int] = {}
    for e in sample:
        key = (e.ts_ms - e.ts_ms % SLOT_MS, e.account_id, e.api_key_id, e.priced_model, e.endpoint, e.source)
        full = (*key, e.provider, e.failed)
        deltas[full] = deltas.get(full, 0) + e.cost_micros + 7
    async with db.begin() as conn:
        await store_events.apply_increments(db, conn, Increments.from_cost_deltas(deltas))
        await store_events.apply_increments(db, conn, Increments.from_events(sample).negated())
        await store_events.apply_increments(db, conn, Increments.from_events(sample[:100]))
    await assert_consistent(db)


async def test_migration_rebuilds_the_same_rows(db: Database) -> None:
    await seed(db, make_events(1500, BASE, BASE + 3 * 86_400_000, seed=62))
    before = await dim_rows(db, "usage_hourly_dim", "hour_ms")
    before_daily = await dim_rows(db, "usage_daily_dim", "day_ms")
    before_monthly = await dim_rows(db, "usage_monthly_dim", "month_ms")
    async with db.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "0001"))
    await migrate.upgrade(db)
    assert await dim_rows(db, "usage_hourly_dim", "hour_ms") == before
    assert await dim_rows(db, "usage_daily_dim", "day_ms") == before_daily
    assert await dim_rows(db, "usage_monthly_dim", "month_ms") == before_monthly


async def test_month_level_reads_match_raw_events(db: Database) -> None:
    """A range covering most of a UTC month reads the month row minus what lies outside it."""
    from collections import defaultdict

    from relaymeter.store import queries
    from tests.analytics_seed import brute_metrics, served, stored_rows

    feb20, apr10 = 1_771_545_600_000, 1_775_779_200_000  # 2026-02-20, 2026-04-10 UTC
    await seed(db, make_events(3000, feb20, apr10, seed=63))
    rows = await stored_rows(db)
    start = 1_772_543_820_000  # 2026-03-03 13:17 UTC
    end = 1_774_746_300_000  # 2026-03-29 01:05 UTC
    groups = queries.plan_buckets([start, end], months=True)
    assert ("month", 1) in groups and ("day", -1) in groups  # the month row is read, the rest subtracted
    picked = [r for r in rows if start <= r["ts_ms"] < end]
    async with db.connect() as conn:
        totals, by = await queries.breakdowns(conn, start, end)
    assert totals.to_dict() == brute_metrics(picked).to_dict()
    for dim in ("account_id", "api_key_id", "model", "endpoint"):
        want: dict[object, list[dict[str, object]]] = defaultdict(list)
        for r in picked:
            want[served(r) if dim == "model" else r[dim]].append(r)
        assert {k: m.to_dict() for k, m in by[dim].items()} == {
            k: brute_metrics(v).to_dict() for k, v in want.items()
        }
    (one,) = await queries.timeseries(db, [start, end], queries.Filters(models=("gpt-5-codex",)), ("model",))
    codex = [r for r in picked if served(r) == "gpt-5-codex"]
    assert one[("gpt-5-codex",)].to_dict() == brute_metrics(codex).to_dict()
