"""The in-memory copies of closed rollup units: reused while current, never stale.

A summary or time series answered partly from the cache must equal the same query answered
from the database alone, also after late events, repricing or a write by another process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relaymeter.domain.buckets import grid
from relaymeter.domain.pricing import price_from_usd
from relaymeter.domain.windows import DAY_MS, HOUR_MS, zone
from relaymeter.store import events as store_events
from relaymeter.store import migrate, queries, rollup_cache
from relaymeter.store import prices as price_store
from relaymeter.store.db import Database
from relaymeter.store.queries import Filters
from tests.test_store_summary import BASE_MS, make_events

START = BASE_MS - BASE_MS % DAY_MS  # a UTC midnight days in the past: every unit is closed
END = START + 4 * DAY_MS


def cache_of(db: Database) -> rollup_cache.RollupCache:
    (cache,) = [c for engine, c in rollup_cache._CACHES.items() if engine is db.engine.sync_engine]
    return cache


async def uncached(monkeypatch: pytest.MonkeyPatch, query: Any) -> Any:
    """The query's answer with the cache switched off (the database alone)."""

    async def passthrough(conn: Any, cache: Any, groups: Any, *args: Any) -> Any:
        return groups

    with monkeypatch.context() as m:
        m.setattr(rollup_cache, "read_closed_units", passthrough)
        return await query()


async def test_closed_units_are_reused_until_a_late_event_lands(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_events.insert_batch(db, make_events(400, seed=3, span_ms=4 * DAY_MS))
    start, end = START + 5 * HOUR_MS + 1_234, END - 7 * HOUR_MS  # ragged edges: slots and raw too

    async def query() -> Any:
        return await queries.summary(db, start, end)

    first = await query()
    cache = cache_of(db)
    assert cache.misses > 0 and cache.hits == 0
    second = await query()
    assert second == first == await uncached(monkeypatch, query)
    assert cache.hits > 0

    late = make_events(1, seed=99, span_ms=1)[0]
    late.ts_ms = START + DAY_MS + 3 * HOUR_MS  # inside a day the cache holds
    late.input_tokens += 1_000_000
    late.recompute_total()
    await store_events.insert_batch(db, [late])
    after = await query()
    assert after["totals"]["requests"] == first["totals"]["requests"] + 1
    assert after["totals"]["input_tokens"] == first["totals"]["input_tokens"] + late.input_tokens
    assert after == await uncached(monkeypatch, query)


async def test_timeseries_by_dimension_and_value_filter_match_the_database(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_events.insert_batch(db, make_events(300, seed=5, span_ms=4 * DAY_MS))
    for tz in ("UTC", "Asia/Kolkata", "America/St_Johns"):
        bounds = grid(START + 2 * HOUR_MS, END - HOUR_MS, "day", zone(tz)).bounds
        for dims, filters in (
            ((), Filters()),
            (("model",), Filters()),
            (("api_key_id",), Filters()),
            ((), Filters(models=("gpt-5",))),
            (("model",), Filters(models=("gpt-5", "gemini-2.5-pro"))),
        ):

            async def query(d: Any = dims, f: Filters = filters, b: Any = bounds) -> Any:
                return await queries.timeseries_sums(db, b, f, d)

            expected = await uncached(monkeypatch, query)
            assert await query() == expected, (tz, dims, filters)
            assert await query() == expected, (tz, dims, filters)  # now from the cache


async def test_repricing_a_closed_day_is_seen(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    events = make_events(120, seed=8, span_ms=2 * DAY_MS)
    for ev in events:
        ev.model = ev.actual_model = "claude-sonnet-4-5-20250929"
        ev.provider = "claude"
        ev.input_tokens, ev.output_tokens, ev.cost_micros = 1000, 100, 1
        ev.cache_read_tokens = ev.cache_creation_tokens = 0
        ev.recompute_total()
    await store_events.insert_batch(db, events)
    before = await queries.summary(db, START, END)
    assert before["totals"]["cost_micros"] == 120

    await price_store.set_override(db, "claude-sonnet-4-5", "", price_from_usd(input=10, output=100))
    await price_store.reprice(db, await price_store.load_pricer(db))
    after = await queries.summary(db, START, END)
    assert after["totals"]["cost_micros"] == 120 * 20_000
    assert after == await uncached(monkeypatch, lambda: queries.summary(db, START, END))


async def test_a_write_by_another_process_is_seen(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    reader, writer = Database(url), Database(url)  # two engines: two processes' worth of caches
    try:
        await migrate.upgrade(reader)
        await store_events.insert_batch(writer, make_events(200, seed=4, span_ms=3 * DAY_MS))
        first = await queries.summary(reader, START, END)
        assert (await queries.summary(reader, START, END)) == first
        assert cache_of(reader).hits > 0

        late = make_events(1, seed=77, span_ms=1)[0]
        late.ts_ms = START + 2 * HOUR_MS
        await store_events.insert_batch(writer, [late])
        after = await queries.summary(reader, START, END)
        assert after["totals"]["requests"] == first["totals"]["requests"] + 1
    finally:
        await reader.dispose()
        await writer.dispose()


def test_least_recently_used_units_go_first_past_the_row_cap() -> None:
    cache = rollup_cache.RollupCache(("requests", "cost_micros"), max_rows=5)
    rows = [("*", "", 1, 10), ("model", "a", 1, 10)]
    cache.put(("day", 0), rows, version=1)
    cache.put(("day", DAY_MS), rows, version=1)
    assert cache.get(("day", 0), version=1) is not None  # now the most recently used
    cache.put(("day", 2 * DAY_MS), rows, version=1)  # 6 rows > 5: the least recently used goes
    assert cache.get(("day", DAY_MS), version=1) is None
    assert cache.get(("day", 0), version=1) is not None
    assert cache.get(("day", 0), version=2) is None  # a newer counter: stale
