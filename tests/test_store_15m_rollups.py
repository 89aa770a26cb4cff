"""Reads through the 15-minute per-dimension rollups: local hour and day edges of zones whose
offset is not a whole hour (+5:30, +5:45, +8:45, +12:45, -3:30) come from usage_15m_dim, and
every total, breakdown and bucket still equals a brute-force recomputation from raw events.
The migration fills usage_15m_dim from the raw events of an existing store."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from relaymeter.domain.buckets import grid
from relaymeter.domain.windows import DAY_MS, HOUR_MS, zone
from relaymeter.store import migrate, queries
from relaymeter.store.db import Database
from relaymeter.store.queries import Filters, Metrics
from tests.analytics_seed import brute_metrics, make_events, seed, served, stored_rows

BASE = 1_795_000_000_000  # 2026-11-18
ZONES = [
    "Asia/Kolkata",  # +5:30
    "Asia/Kathmandu",  # +5:45
    "Australia/Eucla",  # +8:45
    "Pacific/Chatham",  # +13:45 / +12:45 (DST)
    "America/St_Johns",  # -3:30 / -2:30 (DST)
    "Europe/Berlin",
    "UTC",
]
DIMS = ("account_id", "api_key_id", "model", "endpoint")


def value_of(row: dict[str, Any], dim: str) -> Any:
    return served(row) if dim == "model" else row[dim]


def same(got: Metrics, want: Metrics, where: str) -> None:
    assert got.to_dict() == want.to_dict(), where
    assert got.latency_buckets == want.latency_buckets, where


async def check_window(db: Database, rows: list[dict[str, Any]], start: int, end: int, tz: str) -> None:
    picked = [r for r in rows if start <= r["ts_ms"] < end]
    async with db.connect() as conn:
        totals, by = await queries.breakdowns(conn, start, end)
    same(totals, brute_metrics(picked), f"totals {tz} {start} {end}")
    for d in DIMS:
        want: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in picked:
            want[value_of(r, d)].append(r)
        assert set(by[d]) == set(want), (tz, d)
        for k, rs in want.items():
            same(by[d][k], brute_metrics(rs), f"{tz} {d}={k}")
    # Hour buckets in the zone (totals) and day buckets by model.
    g = grid(start, end, "hour", zone(tz), max_buckets=10_000)
    for i, slot in enumerate(await queries.timeseries(db, g.bounds)):
        lo, hi = g.bounds[i], g.bounds[i + 1]
        same(slot.get((), Metrics()), brute_metrics(r for r in picked if lo <= r["ts_ms"] < hi), f"{tz} h{i}")
    g = grid(start, end, "day", zone(tz))
    for i, slot in enumerate(await queries.timeseries(db, g.bounds, Filters(), ("model",))):
        lo, hi = g.bounds[i], g.bounds[i + 1]
        want_m: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in picked:
            if lo <= r["ts_ms"] < hi:
                want_m[(served(r),)].append(r)
        assert set(slot) == set(want_m), (tz, "day", i)
        for k, rs in want_m.items():
            same(slot[k], brute_metrics(rs), f"{tz} day {i} {k}")


async def test_random_windows_in_odd_offset_zones(db: Database) -> None:
    await seed(db, make_events(2500, BASE - DAY_MS, BASE + 6 * DAY_MS, seed=21), batch=600)
    rows = await stored_rows(db)

    cases: list[tuple[int, int, str, bool]] = []

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.integers(min_value=-DAY_MS, max_value=5 * DAY_MS),
        st.integers(min_value=1, max_value=3 * DAY_MS),
        st.sampled_from(ZONES),
        st.booleans(),
    )
    def windows(offset: int, length: int, tz: str, local_midnight: bool) -> None:
        cases.append((offset, length, tz, local_midnight))

    windows()
    for offset, length, tz, local_midnight in cases:
        start = BASE + offset
        if local_midnight:  # a calendar range ("today", "this week") starts at a local midnight
            start = grid(start, start + 1, "day", zone(tz)).starts[0]
        await check_window(db, rows, start, start + length, tz)


async def test_half_hour_zone_edges_come_from_slots(db: Database) -> None:
    await seed(db, make_events(1200, BASE, BASE + 3 * DAY_MS, seed=22))
    rows = await stored_rows(db)
    g = grid(BASE + 5 * HOUR_MS, BASE + 2 * DAY_MS, "hour", zone("Asia/Kolkata"))
    groups = queries.plan_buckets(g.bounds, months=True, slots=True)
    assert ("slot", 1) in groups
    # Only the range's own edges (not whole local hours) are left to raw events.
    raw = [s for (level, _sign), spans in groups.items() if level == "raw" for s in spans]
    assert sum(hi - lo for lo, hi, _b, _s in raw) <= 2 * 15 * 60_000
    # Full-key queries (status filter) have no 15-minute level and read raw events there.
    assert ("slot", 1) not in queries.plan_buckets(g.bounds)
    got = await queries.timeseries(db, g.bounds, Filters(status="failed"))
    for i, slot in enumerate(got):
        lo, hi = g.bounds[i], g.bounds[i + 1]
        want = brute_metrics(r for r in rows if lo <= r["ts_ms"] < hi and r["failed"])
        same(slot.get((), Metrics()), want, f"failed h{i}")
    await check_window(db, rows, g.bounds[0], g.bounds[-1], "Asia/Kolkata")


async def slot_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.connect() as conn:
        found = await conn.execute(text("SELECT * FROM usage_15m_dim"))
        return sorted((tuple(r) for r in found), key=lambda r: (r[0], r[1], str(r[2])))


async def test_migration_fills_slots_from_raw_events(db: Database) -> None:
    await seed(db, make_events(1500, BASE - 20 * DAY_MS, BASE, seed=23))  # crosses a month end
    written = await slot_rows(db)
    assert written
    async with db.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "0004_monthly_dim"))
        assert "usage_15m_dim" not in await conn.run_sync(
            lambda c: c.dialect.get_table_names(c)  # type: ignore[no-any-return]
        )
    await migrate.upgrade(db)
    assert await slot_rows(db) == written
