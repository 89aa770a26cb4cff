"""Time series buckets equal a brute-force recomputation from raw events, in zones whose days
and hours do not align with UTC (half-hour and 45-minute offsets, DST changes), on both stores."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import pytest

from relaymeter import analytics
from relaymeter.domain.buckets import grid
from relaymeter.domain.windows import DAY_MS, HOUR_MS, TimeRange, zone
from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.queries import Filters, Metrics
from tests.analytics_seed import brute_metrics, make_events, seed, served, stored_rows

# 2026-03-25 00:00 UTC: ranges below cross the EU (Mar 29) and US (Mar 8 is before) DST changes.
BASE_MS = 1_774_396_800_000
# 50 s after / 70 s before an hour boundary: the outer partial hours are read as whole
# rollup hours minus the raw events outside the range.
EDGE_START = BASE_MS + 2 * DAY_MS + 5 * HOUR_MS + 50_000
EDGE_END = BASE_MS + 4 * DAY_MS + 9 * HOUR_MS - 70_000


def local_label(ts_ms: int, bucket: str, tz_name: str) -> str:
    """The bucket an event belongs to, by truncating its local wall-clock time (independent of grid)."""
    local = datetime.fromtimestamp(ts_ms / 1000, zone(tz_name))
    if bucket == "day":
        return local.date().isoformat()
    if bucket == "hour":
        return local.replace(minute=0, second=0, microsecond=0).isoformat(timespec="seconds")
    return local.replace(minute=local.minute - local.minute % 5, second=0, microsecond=0).isoformat(
        timespec="seconds"
    )


def api_label(start_ms: int, bucket: str, tz_name: str) -> str:
    local = datetime.fromtimestamp(start_ms / 1000, zone(tz_name))
    return local.date().isoformat() if bucket == "day" else local.isoformat(timespec="seconds")


def assert_same(got: Metrics, want: Metrics, where: str) -> None:
    assert got.to_dict() == want.to_dict(), where
    assert got.latency_buckets == want.latency_buckets, where


CASES = [
    # zone, bucket, start offset from BASE, length
    ("UTC", "day", 3 * HOUR_MS + 12_345, 6 * DAY_MS + 7_777),
    ("Asia/Kolkata", "day", 0, 6 * DAY_MS),
    ("Asia/Kolkata", "hour", 5 * HOUR_MS + 61_000, 30 * HOUR_MS),
    ("Asia/Kathmandu", "hour", 17 * 60_000, 26 * HOUR_MS),
    ("Asia/Kathmandu", "5m", 7 * HOUR_MS + 123, 3 * HOUR_MS),
    ("Europe/Berlin", "hour", 3 * DAY_MS + 18 * HOUR_MS, 16 * HOUR_MS),  # spring-forward night
    ("Europe/Berlin", "day", 0, 8 * DAY_MS),  # contains a 23-hour day
    ("America/St_Johns", "day", 0, 5 * DAY_MS + 3 * HOUR_MS),
    # many buckets: the rollup rows are mapped to buckets in Python instead of SQL
    ("Asia/Kolkata", "hour", 0, 5 * DAY_MS),
]


@pytest.fixture
async def seeded(db: Database) -> tuple[Database, list[dict[str, Any]]]:
    events = make_events(2500, BASE_MS - DAY_MS, BASE_MS + 10 * DAY_MS, seed=11)
    # Dense traffic around the edges used by test_bucketed_filters_and_edges, on both sides.
    events += make_events(150, EDGE_START - 60_000, EDGE_START + 60_000, seed=12)
    events += make_events(150, EDGE_END - 80_000, EDGE_END + 70_000, seed=13)
    await seed(db, events)
    return db, await stored_rows(db)


@pytest.mark.parametrize(("tz_name", "bucket", "offset", "length"), CASES)
async def test_buckets_match_raw_events(
    seeded: tuple[Database, list[dict[str, Any]]], tz_name: str, bucket: str, offset: int, length: int
) -> None:
    db, rows = seeded
    start, end = BASE_MS + offset, BASE_MS + offset + length
    rng = TimeRange("custom", start, end, tz_name)
    out = await analytics.timeseries(
        db, rng, Filters(), bucket=bucket, metrics=["requests"], group_by="model", top=50
    )

    want: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if start <= r["ts_ms"] < end:
            want[(local_label(r["ts_ms"], bucket, tz_name), served(r))].append(r)
    got: dict[tuple[str, str], int] = {}
    labels = [api_label(b["start_ms"], bucket, tz_name) for b in out["buckets"]]
    assert len(set(labels)) == len(labels) or bucket == "hour"  # a repeated hour only on DST fold
    for s in out["series"]:
        for label, value in zip(labels, s["values"]["requests"], strict=True):
            if value:
                got[(label, s["key"])] = value
    assert got == {k: len(v) for k, v in want.items()}

    # Full metrics (tokens, cost, latency histogram) per bucket, through the store function.
    g = grid(start, end, bucket, zone(tz_name))
    per_bucket = await queries.timeseries(db, g.bounds)
    for i, slot in enumerate(per_bucket):
        label = api_label(g.starts[i], bucket, tz_name)
        expected = brute_metrics(r for (lbl, _), rs in want.items() if lbl == label for r in rs)
        assert_same(slot.get((), Metrics()), expected, f"{tz_name} {bucket} bucket {label}")


async def test_filters_and_top_other(seeded: tuple[Database, list[dict[str, Any]]]) -> None:
    db, rows = seeded
    start, end = BASE_MS, BASE_MS + 3 * DAY_MS
    filters = Filters(status="failed", endpoints=("POST /v1/messages",))
    out = await analytics.timeseries(
        db,
        TimeRange("custom", start, end, "UTC"),
        filters,
        bucket="day",
        metrics=["requests", "cost_micros"],
        group_by="account",
        top=2,
    )
    picked = [
        r for r in rows if start <= r["ts_ms"] < end and r["failed"] and r["endpoint"] == "POST /v1/messages"
    ]
    assert [s["key"] for s in out["series"]][-1] == analytics.OTHER_KEY
    assert len(out["series"]) == 3
    assert sum(s["totals"]["requests"] for s in out["series"]) == len(picked)
    assert sum(s["totals"]["cost_micros"] for s in out["series"]) == sum(r["cost_micros"] for r in picked)
    by_account: dict[int, int] = defaultdict(int)
    for r in picked:
        by_account[r["account_id"]] += 1
    top_two = sorted(by_account.items(), key=lambda kv: (-kv[1], str(kv[0])))[:2]
    assert [(s["key"], s["totals"]["requests"]) for s in out["series"][:2]] == top_two
    assert all(s["name"] for s in out["series"])


def test_grid_dst_and_offsets() -> None:
    berlin = zone("Europe/Berlin")
    # 2026-03-29 is 23 hours long in Berlin.
    start = int(datetime(2026, 3, 28, tzinfo=berlin).timestamp() * 1000)
    g = grid(start, start + 3 * DAY_MS, "day", berlin)
    lengths = [g.end_of(i) - s for i, s in enumerate(g.starts)]
    assert lengths[:2] == [DAY_MS, DAY_MS - HOUR_MS]
    kolkata = zone("Asia/Kolkata")
    g = grid(BASE_MS, BASE_MS + 2 * HOUR_MS, "hour", kolkata)
    assert all(datetime.fromtimestamp(s / 1000, kolkata).minute == 0 for s in g.starts)
    assert g.bounds[0] == BASE_MS and g.bounds[-1] == BASE_MS + 2 * HOUR_MS
    with pytest.raises(ValueError, match="larger bucket"):
        grid(BASE_MS, BASE_MS + 30 * DAY_MS, "5m", kolkata)


FILTER_CASES = [
    (Filters(), ()),
    (Filters(status="failed"), ("model",)),
    (Filters(models=("gpt-5-codex", "claude-haiku-4-5")), ("model",)),
    (Filters(models=("gpt-5-codex",)), ()),
    (Filters(endpoints=("POST /v1/messages",)), ("endpoint",)),
    (Filters(), ("api_key_id",)),
    (Filters(), ("account_id",)),
    (Filters(sources=("cpa:main",), status="success"), ("source",)),
    # two dimensions: the full-key rollups answer
    (Filters(models=("gpt-5-codex",)), ("account_id",)),
    (Filters(), ("provider", "endpoint")),
]


def _dim_value(row: dict[str, Any], dim: str) -> Any:
    return served(row) if dim == "model" else row[dim]


def _match(row: dict[str, Any], f: Filters) -> bool:
    checks = (
        (f.account_ids, row["account_id"]),
        (f.api_key_ids, row["api_key_id"]),
        (f.models, served(row)),
        (f.providers, row["provider"]),
        (f.endpoints, row["endpoint"]),
        (f.sources, row["source"]),
    )
    if any(values and value not in values for values, value in checks):
        return False
    return f.status is None or (f.status == "failed") == bool(row["failed"])


@pytest.mark.parametrize(("filters", "dims"), FILTER_CASES)
async def test_bucketed_filters_and_edges(
    seeded: tuple[Database, list[dict[str, Any]]], filters: Filters, dims: tuple[str, ...]
) -> None:
    """Per-dimension and full-key rollups, raw edges read directly and as 'hour minus outside'."""
    db, rows = seeded
    start, end = EDGE_START, EDGE_END
    for tz_name, bucket in (("UTC", "day"), ("Asia/Kolkata", "day"), ("UTC", "hour")):
        g = grid(start, end, bucket, zone(tz_name))
        got = await queries.timeseries(db, g.bounds, filters, dims)
        for i, slot in enumerate(got):
            lo, hi = g.bounds[i], g.bounds[i + 1]
            want_rows: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                if lo <= r["ts_ms"] < hi and _match(r, filters):
                    want_rows[tuple(_dim_value(r, d) for d in dims)].append(r)
            assert set(slot) == set(want_rows), (tz_name, bucket, i)
            for k, rs in want_rows.items():
                assert_same(slot[k], brute_metrics(rs), f"{tz_name} {bucket} {i} {k}")


@pytest.mark.parametrize(
    "filters",
    [Filters(), Filters(status="failed"), Filters(models=("gpt-5-codex",)), Filters(account_ids=(1, 2))],
)
async def test_breakdowns_match_raw_events(
    seeded: tuple[Database, list[dict[str, Any]]], filters: Filters
) -> None:
    db, rows = seeded
    dims = ("account_id", "api_key_id", "model", "endpoint")
    for start, end in ((EDGE_START, EDGE_END), (EDGE_START, EDGE_START + 20 * 60_000)):
        async with db.connect() as conn:
            totals, by = await queries.breakdowns(conn, start, end, filters, dims)
        picked = [r for r in rows if start <= r["ts_ms"] < end and _match(r, filters)]
        assert_same(totals, brute_metrics(picked), "totals")
        for d in dims:
            want: dict[Any, list[dict[str, Any]]] = defaultdict(list)
            for r in picked:
                want[_dim_value(r, d)].append(r)
            assert set(by[d]) == set(want), d
            for k, rs in want.items():
                assert_same(by[d][k], brute_metrics(rs), f"{d}={k}")
        # one bucket through bucketed() agrees too
        (single,) = await queries.timeseries(db, [start, end], filters, ("model",))
        assert {k[0]: m.requests for k, m in single.items()} == {
            k: m.requests for k, m in by["model"].items()
        }


@pytest.mark.parametrize(
    "filters",
    [
        Filters(api_key_ids=(3,)),
        Filters(account_ids=(1, 4), models=("gpt-5-codex",)),
        Filters(models=("gemini-2.5-pro",), status="failed"),
        Filters(status="success"),
    ],
)
async def test_recent_requests_pages_match_raw_events(
    seeded: tuple[Database, list[dict[str, Any]]], filters: Filters
) -> None:
    """Keyset pages (newest first) with dimension filters, which read only matching hours."""
    db, rows = seeded
    start, end = BASE_MS, BASE_MS + 6 * DAY_MS
    want = sorted(
        (r for r in rows if start <= r["ts_ms"] < end and _match(r, filters)),
        key=lambda r: (r["ts_ms"], r["id"]),
        reverse=True,
    )
    got: list[int] = []
    before = None
    while True:
        page = await queries.recent_requests(
            db, start_ms=start, end_ms=end, filters=filters, limit=7, before=before
        )
        got.extend(r["id"] for r in page)
        if len(page) < 7:
            break
        before = (page[-1]["ts_ms"], page[-1]["id"])
    assert got == [r["id"] for r in want] and want
