"""The write path and summaries, on SQLite and PostgreSQL.

The central property: a summary built from daily/hourly rollups plus raw edge events equals a
brute-force recomputation from the raw events, for random windows in random time zones
(including half-hour and 45-minute offsets).
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.windows import DAY_MS, HOUR_MS, resolve_range, zone
from relaymeter.store import events as store_events
from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.schema import accounts, api_keys, usage_daily, usage_events, usage_hourly

BASE_MS = 1_795_000_000_000  # 2026-11-18, a fixed origin so runs are reproducible
ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Australia/Adelaide", "Europe/Berlin"]


def make_events(n: int, seed: int = 1, span_ms: int = 5 * DAY_MS) -> list[UsageEvent]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model = rng.choice(["claude-sonnet-4-5", "gpt-5", "gemini-2.5-pro"])
        ev = UsageEvent(
            event_hash=f"{rng.getrandbits(256):064x}",
            ts_ms=BASE_MS + rng.randrange(span_ms),
            source=rng.choice(["cpa:a", "cpa:b", "import"]),
            request_id=f"{i:08x}",
            auth_index=f"{rng.randrange(4):016x}",
            account_label=f"acct{i % 4}",
            api_key_hash=f"{rng.randrange(5):064x}",
            api_key_prefix="sk-...",
            provider=rng.choice(["claude", "codex"]),
            endpoint=rng.choice(["POST /v1/messages", "POST /v1/responses"]),
            model=model,
            actual_model=model if rng.random() < 0.9 else "",
            failed=rng.random() < 0.1,
            input_tokens=rng.randrange(0, 5000),
            output_tokens=rng.randrange(0, 2000),
            cache_read_tokens=rng.randrange(0, 10000),
            cache_creation_tokens=rng.randrange(0, 500),
            latency_ms=rng.randrange(0, 90_000) if rng.random() < 0.9 else None,
            ttft_ms=rng.randrange(0, 5000) if rng.random() < 0.5 else None,
            cost_micros=rng.randrange(0, 100_000),
        )
        ev.recompute_total()
        out.append(ev)
    return out


def brute_force(events: list[UsageEvent], start: int, end: int) -> dict[str, Any]:
    picked = [e for e in events if start <= e.ts_ms < end]

    def agg(items: list[UsageEvent]) -> tuple[int, ...]:
        lat = [e.latency_ms for e in items if e.latency_ms is not None]
        return (
            len(items),
            sum(e.failed for e in items),
            sum(e.input_tokens for e in items),
            sum(e.output_tokens for e in items),
            sum(e.cache_read_tokens for e in items),
            sum(e.cache_creation_tokens for e in items),
            sum(e.total_tokens for e in items),
            sum(e.cost_micros for e in items),
            sum(lat),
            len(lat),
        )

    groups: dict[str, dict[Any, list[UsageEvent]]] = {
        k: defaultdict(list) for k in ("account", "key", "model", "endpoint")
    }
    for e in picked:
        groups["account"][e.account_id].append(e)
        groups["key"][e.api_key_id].append(e)
        groups["model"][e.actual_model or e.model].append(e)
        groups["endpoint"][e.endpoint].append(e)
    return {
        "totals": agg(picked),
        **{name: {k: agg(v) for k, v in g.items()} for name, g in groups.items()},
    }


def as_tuple(row: dict[str, Any]) -> tuple[int, ...]:
    return (
        row["requests"],
        row["failures"],
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["cache_creation_tokens"],
        row["total_tokens"],
        row["cost_micros"],
    )


def check(summary: dict[str, Any], expected: dict[str, Any]) -> None:
    assert as_tuple(summary["totals"]) == expected["totals"][:8]
    count = expected["totals"][9]
    if count:
        assert abs(summary["totals"]["avg_latency_ms"] - expected["totals"][8] / count) < 1e-6
    else:
        assert summary["totals"]["avg_latency_ms"] is None
    for name, key in (
        ("by_account", "account_id"),
        ("by_api_key", "api_key_id"),
        ("by_model", "model"),
        ("by_endpoint", "endpoint"),
    ):
        got = {row[key]: as_tuple(row) for row in summary[name]}
        group = {
            "by_account": "account",
            "by_api_key": "key",
            "by_model": "model",
            "by_endpoint": "endpoint",
        }[name]
        assert got == {k: v[:8] for k, v in expected[group].items()}


async def test_insert_batch_dedups_and_maintains_rollups(db: Database) -> None:
    events = make_events(500, seed=3)
    first = await store_events.insert_batch(db, events[:300])
    assert first.added == 300
    again = await store_events.insert_batch(db, events[200:500] + events[:10])
    assert again.added == 200 and again.skipped == 110
    async with db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(usage_events))).scalar_one() == 500
        hourly = (
            await conn.execute(
                select(func.sum(usage_hourly.c.requests), func.sum(usage_hourly.c.total_tokens))
            )
        ).one()
        daily = (
            await conn.execute(select(func.sum(usage_daily.c.requests), func.sum(usage_daily.c.total_tokens)))
        ).one()
        n_accounts = (await conn.execute(select(func.count()).select_from(accounts))).scalar_one()
        n_keys = (await conn.execute(select(func.count()).select_from(api_keys))).scalar_one()
    assert tuple(hourly) == tuple(daily) == (500, sum(e.total_tokens for e in events))
    # observed accounts: one per (source, auth_index); observed keys: one per client key hash
    assert n_accounts == len({(e.source, e.auth_index) for e in events})
    assert n_keys == len({e.api_key_hash for e in events})


async def test_duplicate_inside_one_batch_counts_once(db: Database) -> None:
    ev = make_events(1, seed=9)[0]
    result = await store_events.insert_batch(db, [ev, ev])
    assert result.inserted == [True, False]
    summary = await queries.summary(db, BASE_MS, BASE_MS + 6 * DAY_MS)
    assert summary["totals"]["requests"] == 1


async def test_summary_equals_brute_force_for_random_windows(db: Database) -> None:
    events = make_events(1500, seed=11)
    for start in range(0, len(events), 400):
        await store_events.insert_batch(db, events[start : start + 400])

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.integers(min_value=-DAY_MS, max_value=6 * DAY_MS),
        st.integers(min_value=1, max_value=7 * DAY_MS),
        st.sampled_from(ZONES),
        st.sampled_from(["custom", "today", "1h", "5h", "24h", "7d"]),
    )
    def windows(offset: int, length: int, tz: str, name: str) -> None:
        cases.append((offset, length, tz, name))

    cases: list[tuple[int, int, str, str]] = []
    windows()
    for offset, length, tz, name in cases:
        if name == "custom":
            start_local = datetime.fromtimestamp((BASE_MS + offset) / 1000, zone(tz)).replace(tzinfo=None)
            rng = resolve_range(
                "custom", tz=tz, start=start_local.isoformat(), end=str(BASE_MS + offset + length)
            )
        else:
            rng = resolve_range(name, tz=tz, now=BASE_MS + offset + length)
        summary = await queries.summary(db, rng.start_ms, rng.end_ms)
        check(summary, brute_force(events, rng.start_ms, rng.end_ms))


async def test_summary_filters_match_brute_force(db: Database) -> None:
    events = make_events(600, seed=5)
    await store_events.insert_batch(db, events)
    start, end = BASE_MS + 7 * HOUR_MS + 123, BASE_MS + 3 * DAY_MS + 17 * HOUR_MS + 999
    some = events[0]
    flt = queries.Filters(account_ids=(some.account_id,), status="failed", models=("gpt-5",))
    summary = await queries.summary(db, start, end, flt)
    picked = [
        e
        for e in events
        if e.account_id == some.account_id and e.failed and (e.actual_model or e.model) == "gpt-5"
    ]
    expected = brute_force(picked, start, end)
    assert as_tuple(summary["totals"]) == expected["totals"][:8]


async def test_retention_deletes_raw_events_but_keeps_rollups(db: Database) -> None:
    events = make_events(300, seed=8)
    await store_events.insert_batch(db, events)
    cutoff = BASE_MS + 2 * DAY_MS
    deleted = await store_events.delete_events_before(db, cutoff, batch=50)
    assert deleted == sum(1 for e in events if e.ts_ms < cutoff)
    # whole days before the cutoff are still summarised from rollups
    summary = await queries.summary(db, BASE_MS - BASE_MS % DAY_MS, cutoff - cutoff % DAY_MS)
    expected = brute_force(events, BASE_MS - BASE_MS % DAY_MS, cutoff - cutoff % DAY_MS)
    assert summary["totals"]["requests"] == expected["totals"][0]


async def test_dead_letters_are_redacted(db: Database) -> None:
    await store_events.add_dead_letters(
        db, "import", [("bad line 3: timestamp missing", '{"api": "Bearer abcdefghijklmnop"}')]
    )
    rows = await store_events.list_dead_letters(db)
    assert rows[0]["reason"].startswith("bad line 3")
    assert "abcdefghijklmnop" not in rows[0]["raw"]
    assert await store_events.count_dead_letters(db, "import") == 1
