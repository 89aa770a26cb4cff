"""Every rollup table the write path keeps equals a GROUP BY over the stored raw events, after
batches with duplicates; and the vectorized increments equal a plain per-event fold."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from relaymeter.domain.latency import LATENCY_BOUNDS_MS, bucket_index
from relaymeter.store.db import Database
from relaymeter.store.increments import DIMS, SLOT_MS, SUM_COLUMNS, Increments, month_start_ms
from tests.analytics_seed import make_events, seed

BASE = 1_790_000_000_000  # 2026-09-21; the events below cross a month end
KEYS = ("account_id", "api_key_id", "model", "endpoint", "source", "provider", "failed")
SERVED = "CASE WHEN actual_model <> '' THEN actual_model ELSE model END"


def event_sums_sql() -> str:
    lat = []
    low = None
    for high in (*LATENCY_BOUNDS_MS, None):
        conds = [
            c
            for c in (
                f"latency_ms > {low}" if low is not None else "",
                f"latency_ms <= {high}" if high else "",
            )
            if c
        ]
        lat.append(f"SUM(CASE WHEN {' AND '.join(conds)} THEN 1 ELSE 0 END)")
        low = high
    tokens = [f"SUM({c})" for c in SUM_COLUMNS[2:10]]
    return ", ".join(
        [
            "COUNT(*)",
            "SUM(CASE WHEN failed THEN 1 ELSE 0 END)",
            *tokens,
            "COALESCE(SUM(latency_ms), 0)",
            "COUNT(latency_ms)",
            "COALESCE(SUM(ttft_ms), 0)",
            "COUNT(ttft_ms)",
            *lat,
        ]
    )


def norm(rows: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(int(v) if isinstance(v, bool) else v for v in r) for r in rows),
        key=lambda r: tuple(map(str, r)),
    )


async def fetch(db: Database, sql: str) -> list[tuple[Any, ...]]:
    async with db.connect() as conn:
        return norm(await conn.execute(text(sql)))


async def test_rollup_tables_equal_raw_events(db: Database) -> None:
    events = make_events(2500, BASE, BASE + 20 * 86_400_000, seed=5, keys=7, accounts=5)
    await seed(db, events[:1700], batch=450)
    await seed(db, events, batch=800)  # duplicates are not counted twice
    sums, cols = event_sums_sql(), ", ".join(SUM_COLUMNS)
    keys = ", ".join(KEYS).replace("model,", f"{SERVED},", 1)
    for table, period in (("usage_hourly", 3_600_000), ("usage_daily", 86_400_000)):
        time_col = "hour_ms" if table == "usage_hourly" else "day_ms"
        want = await fetch(
            db,
            f"SELECT ts_ms - ts_ms % {period}, {keys}, {sums} FROM usage_events "
            f"GROUP BY ts_ms - ts_ms % {period}, {keys}",
        )
        got = await fetch(db, f"SELECT {time_col}, {', '.join(KEYS)}, {cols} FROM {table}")
        assert got == want and got, table
    for table, time_col, period in (
        ("usage_15m_dim", "slot_ms", SLOT_MS),
        ("usage_hourly_dim", "hour_ms", 3_600_000),
        ("usage_daily_dim", "day_ms", 86_400_000),
    ):
        want = []
        for dim in ("*", *DIMS):
            value = "''" if dim == "*" else (SERVED if dim == "model" else f"CAST({dim} AS VARCHAR(200))")
            group = f"ts_ms - ts_ms % {period}" + ("" if dim == "*" else f", {value}")
            want += await fetch(
                db,
                f"SELECT ts_ms - ts_ms % {period}, '{dim}', {value}, {sums} FROM usage_events GROUP BY {group}",
            )
        got = await fetch(db, f"SELECT {time_col}, dim, value, {cols} FROM {table}")
        assert got == norm(want) and got, table
    daily = await fetch(db, f"SELECT day_ms, dim, value, {cols} FROM usage_daily_dim")
    months: dict[tuple[Any, ...], list[int]] = {}
    for day, dim, value, *vals in daily:
        key = (month_start_ms(day), dim, value)
        months[key] = [a + b for a, b in zip(months.get(key, [0] * len(vals)), vals, strict=True)]
    assert await fetch(db, f"SELECT month_ms, dim, value, {cols} FROM usage_monthly_dim") == norm(
        (*k, *v) for k, v in months.items()
    )


def test_vectorized_increments_equal_a_per_event_fold() -> None:
    events = make_events(3000, BASE, BASE + 3 * 86_400_000, seed=9, keys=9, accounts=6)
    for i, e in enumerate(events):
        e.account_id, e.api_key_id = i % 6 + 1, i % 9 + 1
    want: dict[tuple[Any, ...], list[int]] = {}
    for e in events:
        key = (
            e.ts_ms - e.ts_ms % 3_600_000,
            e.account_id,
            e.api_key_id,
            e.priced_model,
            e.endpoint,
            e.source,
            e.provider,
            e.failed,
        )
        s = want.setdefault(key, [0] * len(SUM_COLUMNS))
        s[0] += 1
        s[1] += int(e.failed)
        for i, c in enumerate(SUM_COLUMNS[2:10], start=2):
            s[i] += getattr(e, c)
        if e.latency_ms is not None:
            s[10] += e.latency_ms
            s[11] += 1
            s[14 + bucket_index(e.latency_ms)] += 1
        if e.ttft_ms is not None:
            s[12] += e.ttft_ms
            s[13] += 1
    got = Increments.from_events(events).full_key(3_600_000)
    assert norm(got) == norm((*k, *v) for k, v in want.items())
    assert Increments.from_events([]).full_key(3_600_000) == []
    assert norm(Increments.from_events(events).negated().full_key(3_600_000)) == norm(
        (*k, *(-x for x in v)) for k, v in want.items()
    )


def test_small_batches_fold_in_python_to_the_same_rows(monkeypatch: Any) -> None:
    """Batches of a few rollup rows (the gateway's) skip numpy; the rows must not change."""
    from relaymeter.store import increments

    events = make_events(400, BASE, BASE + 40 * 86_400_000, seed=4, keys=3, accounts=2)
    for i, e in enumerate(events):
        e.account_id, e.api_key_id = i % 2 + 1, i % 3 + 1
    for size in (1, 2, 5, 12, 16, 17, 40, 120):
        for start in range(0, len(events) - size, 97):
            inc = Increments.from_events(events[start : start + size])
            for inc_or_neg in (inc, inc.negated()):
                monkeypatch.setattr(increments, "SMALL", 1 << 30)
                small = (inc_or_neg.full_key(3_600_000), inc_or_neg.per_dimension())
                monkeypatch.setattr(increments, "SMALL", -1)
                vectorized = (inc_or_neg.full_key(3_600_000), inc_or_neg.per_dimension())
                assert small == vectorized, (size, start)
                assert small[1]["slot_ms"], "every batch has per-dimension rows"
    # Repricing deltas that cancel out in a per-dimension row leave no row behind.
    key = (1, 1, "m", "POST /v1/messages", "gateway", "anthropic", False)
    other = (2, 1, "m", "POST /v1/messages", "gateway", "anthropic", False)
    slot = BASE - BASE % SLOT_MS
    deltas = Increments.from_cost_deltas({(slot, *key): 5, (slot, *other): -5})
    monkeypatch.setattr(increments, "SMALL", 1 << 30)
    small_rows = deltas.per_dimension()
    monkeypatch.setattr(increments, "SMALL", -1)
    assert small_rows == deltas.per_dimension()
    assert not [r for r in small_rows["hour_ms"] if r[1] in ("*", "api_key_id", "model")]
