"""Per-dimension rollups stay equal to the full-key rollups they are folded from: after inserts,
after signed corrections (the path repricing uses) and when rebuilt by the migration."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import text

from relaymeter.store import dim_rollups, migrate
from relaymeter.store import events as store_events
from relaymeter.store.db import Database
from tests.analytics_seed import make_events, seed

BASE = 1_790_000_000_000
SUMS = ", ".join(f"SUM({c})" for c in dim_rollups.SUM_COLUMNS)


async def expected_from_full(db: Database) -> list[tuple[Any, ...]]:
    parts = []
    for dim in ("*", *dim_rollups.DIMS):
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
    cols = ", ".join(dim_rollups.SUM_COLUMNS)
    async with db.connect() as conn:
        rows = [
            tuple(r)
            for r in await conn.execute(text(f"SELECT {time_column}, dim, value, {cols} FROM {table}"))
        ]
    return sorted((r for r in rows if any(r[3:])), key=lambda r: (r[0], r[1], str(r[2])))


async def daily_from_hourly(db: Database) -> list[tuple[Any, ...]]:
    async with db.connect() as conn:
        rows = [
            tuple(r)
            for r in await conn.execute(
                text(
                    f"SELECT hour_ms - hour_ms % 86400000, dim, value, {SUMS} FROM usage_hourly_dim "
                    "GROUP BY hour_ms - hour_ms % 86400000, dim, value"
                )
            )
        ]
    return sorted((r for r in rows if any(r[3:])), key=lambda r: (r[0], r[1], str(r[2])))


async def assert_consistent(db: Database) -> None:
    hourly = await dim_rows(db, "usage_hourly_dim", "hour_ms")
    assert hourly == await expected_from_full(db)
    assert await dim_rows(db, "usage_daily_dim", "day_ms") == await daily_from_hourly(db)
    assert hourly


async def test_inserts_and_signed_corrections_keep_dims_exact(db: Database) -> None:
    events = make_events(2000, BASE, BASE + 5 * 86_400_000, seed=61)
    await seed(db, events[:1500], batch=400)
    await seed(db, events, batch=700)  # duplicates change nothing
    await assert_consistent(db)
    # A cost correction as repricing writes it: old increments out, new ones in.
    rows = store_events.rollup_rows([e for e in events[:300] if e.account_id])
    async with db.begin() as conn:
        await store_events.apply_rollup_rows(db, conn, rows, sign=-1)
        for r in rows:
            r["cost_micros"] = r["cost_micros"] * 2 + 7
        await store_events.apply_rollup_rows(db, conn, rows)
    await assert_consistent(db)


async def test_migration_rebuilds_the_same_rows(db: Database) -> None:
    await seed(db, make_events(1500, BASE, BASE + 3 * 86_400_000, seed=62))
    before = await dim_rows(db, "usage_hourly_dim", "hour_ms")
    before_daily = await dim_rows(db, "usage_daily_dim", "day_ms")
    async with db.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "0001"))
    await migrate.upgrade(db)
    assert await dim_rows(db, "usage_hourly_dim", "hour_ms") == before
    assert await dim_rows(db, "usage_daily_dim", "day_ms") == before_daily
