"""Summaries and breakdowns: usage_hourly for whole hours, raw events only for partial edge hours."""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, literal_column, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.latency import LATENCY_BOUNDS_MS, LATENCY_BUCKET_COUNT, quantiles
from relaymeter.domain.windows import DAY_MS, HOUR_MS
from relaymeter.store import rollup_cache
from relaymeter.store.db import Database
from relaymeter.store.increments import SLOT_MS, month_start_ms, next_month_ms
from relaymeter.store.schema import (
    ROLLUP_SCALAR_COLUMNS,
    ROLLUP_SUM_COLUMNS,
    TOKEN_COLUMNS,
    accounts,
    api_keys,
    latency_bucket_columns,
    usage_15m_dim,
    usage_daily,
    usage_daily_dim,
    usage_events,
    usage_hourly,
    usage_hourly_dim,
    usage_monthly_dim,
)

DIMENSIONS = ("account_id", "api_key_id", "model", "endpoint", "provider", "source")


@dataclass(frozen=True, slots=True)
class Filters:
    account_ids: tuple[int, ...] = ()
    api_key_ids: tuple[int, ...] = ()
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    status: str | None = None  # "success" | "failed" | None


@dataclass(slots=True)
class Metrics:
    requests: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    total_tokens: int = 0
    cost_micros: int = 0
    latency_sum_ms: int = 0
    latency_count: int = 0
    ttft_sum_ms: int = 0
    ttft_count: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKET_COUNT)

    def add_row(self, values: Sequence[Any]) -> None:
        """Add one SQL row in _METRIC_NAMES order (+ latency buckets)."""
        n = len(_SCALAR_NAMES)
        for i, name in enumerate(_SCALAR_NAMES):
            setattr(self, name, getattr(self, name) + int(values[i] or 0))
        for j in range(LATENCY_BUCKET_COUNT):
            self.latency_buckets[j] += int(values[n + j] or 0)

    def merge(self, other: Metrics) -> None:
        for name in _SCALAR_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for j in range(LATENCY_BUCKET_COUNT):
            self.latency_buckets[j] += other.latency_buckets[j]

    @property
    def success_rate(self) -> float | None:
        return ((self.requests - self.failures) / self.requests) if self.requests else None

    @property
    def cost_usd(self) -> float:
        return self.cost_micros / 1_000_000

    def to_dict(self) -> dict[str, Any]:
        p50, p95 = quantiles(self.latency_buckets, (0.50, 0.95))
        return {
            "requests": self.requests,
            "failures": self.failures,
            "successes": self.requests - self.failures,
            "success_rate": self.success_rate,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "total_tokens": self.total_tokens,
            "cost_micros": self.cost_micros,
            "cost_usd": self.cost_usd,
            "avg_latency_ms": (self.latency_sum_ms / self.latency_count) if self.latency_count else None,
            "p50_latency_ms": p50,
            "p95_latency_ms": p95,
            "avg_ttft_ms": (self.ttft_sum_ms / self.ttft_count) if self.ttft_count else None,
        }


_SCALAR_NAMES = ROLLUP_SCALAR_COLUMNS


def split_range(start_ms: int, end_ms: int) -> tuple[int, int]:
    """[h0, h1): the whole hours inside [start, end); h0 >= h1 means none."""
    h0 = -(-start_ms // HOUR_MS) * HOUR_MS
    h1 = end_ms // HOUR_MS * HOUR_MS
    return h0, h1


@dataclass(frozen=True, slots=True)
class RangePlan:
    """Which store covers which part of [start, end): whole UTC days from usage_daily, whole
    hours from usage_hourly, and the partial hours at both ends from raw events."""

    days: tuple[tuple[int, int], ...]
    hours: tuple[tuple[int, int], ...]
    raw: tuple[tuple[int, int], ...]


def plan_range(start_ms: int, end_ms: int) -> RangePlan:
    if end_ms <= start_ms:
        return RangePlan((), (), ())
    h0, h1 = split_range(start_ms, end_ms)
    if h0 >= h1:
        return RangePlan((), (), ((start_ms, end_ms),))
    d0 = -(-h0 // DAY_MS) * DAY_MS
    d1 = h1 // DAY_MS * DAY_MS
    if d0 < d1:
        days: tuple[tuple[int, int], ...] = ((d0, d1),)
        hours = tuple(p for p in ((h0, d0), (d1, h1)) if p[0] < p[1])
    else:
        days, hours = (), ((h0, h1),)
    raw = tuple(p for p in ((start_ms, h0), (h1, end_ms)) if p[0] < p[1])
    return RangePlan(days, hours, raw)


def _served_model() -> ColumnElement[Any]:
    e = usage_events.c
    return case((e.actual_model != "", e.actual_model), else_=e.model)


def _event_dim(name: str) -> ColumnElement[Any]:
    return _served_model() if name == "model" else usage_events.c[name]


def _filter_clauses(cols: Any, filters: Filters, model_col: ColumnElement[Any]) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if filters.account_ids:
        clauses.append(cols.account_id.in_(filters.account_ids))
    if filters.api_key_ids:
        clauses.append(cols.api_key_id.in_(filters.api_key_ids))
    if filters.models:
        clauses.append(model_col.in_(filters.models))
    if filters.providers:
        clauses.append(cols.provider.in_(filters.providers))
    if filters.endpoints:
        clauses.append(cols.endpoint.in_(filters.endpoints))
    if filters.sources:
        clauses.append(cols.source.in_(filters.sources))
    if filters.status == "failed":
        clauses.append(cols.failed.is_(True))
    elif filters.status == "success":
        clauses.append(cols.failed.is_(False))
    return clauses


def _event_metric_columns() -> list[ColumnElement[Any]]:
    e = usage_events.c
    one: ColumnElement[Any] = literal_column("1")
    zero: ColumnElement[Any] = literal_column("0")
    cols: list[ColumnElement[Any]] = [
        func.count(),
        func.sum(case((e.failed.is_(True), one), else_=zero)),
        *[func.sum(e[name]) for name in TOKEN_COLUMNS],
        func.sum(e.cost_micros),
        func.sum(e.latency_ms),
        func.count(e.latency_ms),
        func.sum(e.ttft_ms),
        func.count(e.ttft_ms),
    ]
    for i in range(LATENCY_BUCKET_COUNT):
        low = LATENCY_BOUNDS_MS[i - 1] if i > 0 else None
        high = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else None
        cond: ColumnElement[bool]
        if low is None:
            cond = e.latency_ms <= high
        elif high is None:
            cond = e.latency_ms > low
        else:
            cond = and_(e.latency_ms > low, e.latency_ms <= high)
        cols.append(func.sum(case((cond, one), else_=zero)))
    return cols


async def grouped_metrics(
    conn: AsyncConnection,
    start_ms: int,
    end_ms: int,
    filters: Filters = Filters(),
    dims: Sequence[str] = (),
) -> dict[tuple[Any, ...], Metrics]:
    """Metrics for [start, end) grouped by the given dimensions (subset of DIMENSIONS)."""
    out: dict[tuple[Any, ...], Metrics] = {}
    plan = plan_range(start_ms, end_ms)
    for table, time_col, spans in ((usage_daily, "day_ms", plan.days), (usage_hourly, "hour_ms", plan.hours)):
        if not spans:
            continue
        cols = table.c
        dim_cols = [cols[d] for d in dims]
        metric_cols = [func.sum(cols[name]) for name in (*_SCALAR_NAMES, *latency_bucket_columns)]
        span_clause = or_(*[and_(cols[time_col] >= lo, cols[time_col] < hi) for lo, hi in spans])
        stmt = select(*dim_cols, *metric_cols).where(span_clause, *_filter_clauses(cols, filters, cols.model))
        if dim_cols:
            stmt = stmt.group_by(*dim_cols)
        for row in await conn.execute(stmt):
            _accumulate(out, row, len(dims))
    if plan.raw:
        e = usage_events.c
        event_dims: list[ColumnElement[Any]] = [_event_dim(d) for d in dims]
        stmt = select(*event_dims, *_event_metric_columns()).where(
            or_(*[and_(e.ts_ms >= lo, e.ts_ms < hi) for lo, hi in plan.raw]),
            *_filter_clauses(e, filters, _served_model()),
        )
        if event_dims:
            stmt = stmt.group_by(*event_dims)
        for row in await conn.execute(stmt):
            _accumulate(out, row, len(dims))
    return out


def _accumulate(out: dict[tuple[Any, ...], Metrics], row: Sequence[Any], ndims: int) -> None:
    if not row[ndims]:  # COUNT/SUM(requests) is 0 or NULL: empty aggregate
        return
    key = tuple(bool(v) if isinstance(v, bool) else v for v in row[:ndims])
    metrics = out.get(key)
    if metrics is None:
        metrics = out[key] = Metrics()
    metrics.add_row(row[ndims:])


async def _names(conn: AsyncConnection, table: Any, ids: set[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    cols = [table.c.id, table.c.name]
    if table is accounts:
        cols += [table.c.provider, table.c.origin, table.c.kind]
    else:
        cols += [table.c.prefix, table.c.origin]
    res = await conn.execute(select(*cols).where(table.c.id.in_(sorted(ids))))
    return {int(r[0]): dict(r._mapping) for r in res}


async def summary(
    db: Database,
    start_ms: int,
    end_ms: int,
    filters: Filters = Filters(),
    *,
    top: int | None = None,
) -> dict[str, Any]:
    """Totals plus breakdowns by account, API key, model and endpoint for [start, end)
    (``breakdowns``: per-dimension rollups without filters, full-key ones with)."""
    async with db.connect() as conn:
        totals, found = await breakdowns(conn, start_ms, end_ms, filters)
        by: dict[str, dict[Any, Metrics]] = {
            "account": found["account_id"],
            "api_key": found["api_key_id"],
            "model": found["model"],
            "endpoint": found["endpoint"],
        }
        account_names = await _names(conn, accounts, {k for k in by["account"] if k})
        key_names = await _names(conn, api_keys, {k for k in by["api_key"] if k})

    def ordered(items: dict[Any, Metrics]) -> list[tuple[Any, Metrics]]:
        result = sorted(items.items(), key=lambda kv: (-kv[1].requests, -kv[1].total_tokens, str(kv[0])))
        return result[:top] if top else result

    return {
        "start_ms": start_ms,
        "end_ms": end_ms,
        "totals": totals.to_dict(),
        "by_account": [
            {
                "account_id": k,
                "name": account_names.get(k, {}).get("name") or ("(none)" if not k else f"account {k}"),
                "provider": account_names.get(k, {}).get("provider", ""),
                **m.to_dict(),
            }
            for k, m in ordered(by["account"])
        ],
        "by_api_key": [
            {
                "api_key_id": k,
                "name": key_names.get(k, {}).get("name") or ("(none)" if not k else f"key {k}"),
                "prefix": key_names.get(k, {}).get("prefix", ""),
                **m.to_dict(),
            }
            for k, m in ordered(by["api_key"])
        ],
        "by_model": [{"model": k, **m.to_dict()} for k, m in ordered(by["model"])],
        "by_endpoint": [{"endpoint": k, **m.to_dict()} for k, m in ordered(by["endpoint"])],
    }


# --- analytics (time series, recent requests, request detail, key usage, account load) ---------

MAX_PAGE = 1000
_CASE_LIMIT = 64  # up to this many spans the SQL maps rows to buckets itself (else Python does)
_SLOT_WIDTHS = (HOUR_MS, 1_800_000, 900_000, 300_000, 60_000, 1000, 1)

# A span of time read at one level (day / hour rollups, or raw events) into a bucket with a
# sign: (lo, hi, bucket, sign). Negative spans take out what a whole day or hour read too much.
Span = tuple[int, int, int, int]


def _cover_units(
    lo: int,
    hi: int,
    bucket: int,
    sign: int,
    out: dict[str, list[Span]],
    complement: bool,
    width: int,
    level: str,
) -> None:
    """[lo, hi) from ``level`` rows ``width`` long, raw events only for partial units (with
    ``complement``, a unit mostly inside is read whole minus the raw part outside)."""
    unit = lo - lo % width
    while lo < hi:
        end = unit + width
        x, y = lo, min(hi, end)
        if x == unit and y == end:
            out[level].append((unit, end, bucket, sign))
        elif complement and width - (y - x) < y - x:
            out[level].append((unit, end, bucket, sign))
            if unit < x:
                out["raw"].append((unit, x, bucket, -sign))
            if y < end:
                out["raw"].append((y, end, bucket, -sign))
        else:
            out["raw"].append((x, y, bucket, sign))
        lo, unit = y, end


def _cover_hours(
    lo: int,
    hi: int,
    bucket: int,
    sign: int,
    out: dict[str, list[Span]],
    complement: bool,
    slots: bool = False,
) -> None:
    if not slots:
        _cover_units(lo, hi, bucket, sign, out, complement, HOUR_MS, "hour")
        return
    hour = lo - lo % HOUR_MS
    while lo < hi:
        end = hour + HOUR_MS
        x, y = lo, min(hi, end)
        if x == hour and y == end:
            out["hour"].append((hour, end, bucket, sign))
        else:  # a partial hour from its 15-minute slots
            _cover_units(x, y, bucket, sign, out, complement, SLOT_MS, "slot")
        lo, hour = y, end


def _cover_days(
    lo: int,
    hi: int,
    bucket: int,
    sign: int,
    out: dict[str, list[Span]],
    complement: bool,
    slots: bool = False,
) -> None:
    day = lo - lo % DAY_MS
    while lo < hi:
        end = day + DAY_MS
        x, y = lo, min(hi, end)
        if x == day and y == end:
            out["day"].append((day, end, bucket, sign))
        elif complement and DAY_MS - (y - x) < y - x:
            out["day"].append((day, end, bucket, sign))
            _cover_hours(day, x, bucket, -sign, out, False, slots)
            _cover_hours(y, end, bucket, -sign, out, False, slots)
        else:
            _cover_hours(x, y, bucket, sign, out, complement, slots)
        lo, day = y, end


def _cover(
    lo: int, hi: int, bucket: int, out: dict[str, list[Span]], months: bool, slots: bool = False
) -> None:
    """Spans that read exactly the events in [lo, hi) into ``bucket``, reading as little as
    possible: whole UTC months (per-dimension rollups only), days and hours from rollups, and
    within partial hours 15-minute slots when ``slots`` (per-dimension rollups only); a
    month, day, hour or slot mostly inside is read whole and what lies outside is subtracted
    (e.g. the current day of a range that ends now)."""
    if not months:
        _cover_days(lo, hi, bucket, 1, out, True, slots)
        return
    month = month_start_ms(lo)
    while lo < hi:
        end = next_month_ms(month)
        x, y = lo, min(hi, end)
        if x == month and y == end:
            out["month"].append((month, end, bucket, 1))
        elif (end - month) - (y - x) < y - x:
            out["month"].append((month, end, bucket, 1))
            _cover_days(month, x, bucket, -1, out, False, slots)
            _cover_days(y, end, bucket, -1, out, False, slots)
        else:
            _cover_days(x, y, bucket, 1, out, True, slots)
        lo, month = y, end


def _disjoint(spans: list[Span]) -> bool:
    return all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def plan_buckets(
    bounds: Sequence[int], months: bool = False, slots: bool = False
) -> dict[tuple[str, int], list[Span]]:
    """Labelled spans per (level, sign) covering every bucket [bounds[i], bounds[i + 1]).

    Within one (level, sign) group the spans never overlap, so each row maps to one bucket.
    ``months`` / ``slots``: monthly and 15-minute rollups exist for this query (the
    per-dimension ones).
    """
    levels: dict[str, list[Span]] = {"month": [], "day": [], "hour": [], "slot": [], "raw": []}
    for i in range(len(bounds) - 1):
        _cover(bounds[i], bounds[i + 1], i, levels, months, slots)
    groups: dict[tuple[str, int], list[Span]] = {}
    for level, spans in levels.items():
        for sign in (1, -1):
            picked = sorted(s for s in spans if s[3] == sign)
            merged: list[Span] = []
            for s in picked:
                if merged and merged[-1][1] == s[0] and merged[-1][2] == s[2]:
                    merged[-1] = (merged[-1][0], s[1], s[2], sign)
                else:
                    merged.append(s)
            if merged:
                groups[(level, sign)] = merged
    if not all(_disjoint(spans) for spans in groups.values()):  # never expected; stay exact anyway
        levels = {"month": [], "day": [], "hour": [], "slot": [], "raw": []}
        for i in range(len(bounds) - 1):
            plan = plan_range(bounds[i], bounds[i + 1])
            levels["day"] += [(a, b, i, 1) for a, b in plan.days]
            levels["hour"] += [(a, b, i, 1) for a, b in plan.hours]
            levels["raw"] += [(a, b, i, 1) for a, b in plan.raw]
        groups = {(level, 1): sorted(spans) for level, spans in levels.items() if spans}
    return groups


def _ranges(spans: Sequence[Span]) -> list[tuple[int, int]]:
    """The spans' time ranges with touching ones joined."""
    ranges: list[tuple[int, int]] = []
    for lo, hi, _b, _s in spans:
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


def _rollup_times(spans: Sequence[Span], level: str) -> list[int] | None:
    """Start times of the spans' whole months / days / hours / slots, for an IN list (an index
    lookup per value; SQLite turns a long OR of ranges into a full table scan); None if many."""
    values: list[int] = []
    for lo, hi in _ranges(spans):
        v = lo
        while v < hi:
            if len(values) >= 5000:
                return None
            values.append(v)
            v = rollup_cache.unit_end(level, v)
    return values


def _span_of(spans: Sequence[Span], starts: Sequence[int], lo: int, hi: int) -> int:
    """Bucket of the one span that meets [lo, hi)."""
    i = bisect.bisect_right(starts, hi - 1) - 1
    return spans[max(i, 0)][2]


def _slot_width(spans: Sequence[Span]) -> int:
    """Widest slot (a divisor of an hour) such that no slot meets two spans."""
    for width in _SLOT_WIDTHS:
        if all((a[1] - 1) // width < b[0] // width for a, b in itertools.pairwise(spans)):
            return width
    return 1


async def timeseries(
    db: Database,
    bounds: Sequence[int],
    filters: Filters = Filters(),
    dims: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> list[dict[tuple[Any, ...], Metrics]]:
    """Metrics per bucket [bounds[i], bounds[i + 1]) grouped by dims (see ``bucketed``)."""
    async with db.connect() as conn:
        return await bucketed(conn, bounds, filters, dims, columns)


_FILTER_DIMS = (
    ("account_ids", "account_id"),
    ("api_key_ids", "api_key_id"),
    ("models", "model"),
    ("providers", "provider"),
    ("endpoints", "endpoint"),
    ("sources", "source"),
)
_INT_DIMS = ("account_id", "api_key_id")
_LAT_INDEX = {name: i for i, name in enumerate(latency_bucket_columns)}


def single_dimension(filters: Filters, dims: Sequence[str]) -> str | None:
    """The one dimension a query involves ('*' for none), or None when it involves several
    or filters on status. Such queries are answered from the per-dimension rollups."""
    involved = set(dims) | {dim for attr, dim in _FILTER_DIMS if getattr(filters, attr)}
    if len(involved) > 1 or filters.status is not None:  # they keep successes and failures together
        return None
    return next(iter(involved)) if involved else "*"


def _selected(columns: Sequence[str] | None) -> list[str]:
    """Sum columns to read, in _SCALAR_NAMES order (+ latency buckets when asked for)."""
    if columns is None:
        return [*_SCALAR_NAMES, *latency_bucket_columns]
    wanted = set(columns) | {"requests"}
    out = [c for c in _SCALAR_NAMES if c in wanted]
    if "latency_buckets" in wanted:
        out.extend(latency_bucket_columns)
    return out


def _event_sum_columns(names: Sequence[str]) -> list[ColumnElement[Any]]:
    every = dict(zip([*_SCALAR_NAMES, *latency_bucket_columns], _event_metric_columns(), strict=True))
    return [every[n] for n in names]


Acc = dict[tuple[Any, ...], list[int]]


def _acc(store: Acc, key: tuple[Any, ...], vals: Sequence[Any], sign: int) -> None:
    """Add (sign 1) or subtract (sign -1) one row of sums (None = 0) into store[key]."""
    if None in vals:  # only raw-event sums can be NULL (no latency in any event, say)
        vals = [v or 0 for v in vals]
    if sign < 0:
        vals = [-v for v in vals]
    cur = store.get(key)
    store[key] = list(vals) if cur is None else list(map(operator.add, cur, vals))


_ALL_SUMS = ROLLUP_SUM_COLUMNS


def _metrics(store: Acc, names: Sequence[str]) -> dict[tuple[Any, ...], Metrics]:
    """Accumulated sums as Metrics (groups whose requests net to 0 are dropped)."""
    out: dict[tuple[Any, ...], Metrics] = {}
    req = names.index("requests")
    every = tuple(names) == _ALL_SUMS
    n = len(_SCALAR_NAMES)
    scalars = [(i, name) for i, name in enumerate(names) if name not in _LAT_INDEX]
    lats = [(i, _LAT_INDEX[name]) for i, name in enumerate(names) if name in _LAT_INDEX]
    for key, vals in store.items():
        if not vals[req]:
            continue
        if every:  # one constructor call: much faster than a setattr per field
            fields_: dict[str, Any] = dict(zip(_SCALAR_NAMES, map(int, vals[:n]), strict=True))
            out[key] = Metrics(**fields_, latency_buckets=[int(v) for v in vals[n:]])
            continue
        given: dict[str, Any] = {name: int(vals[i]) for i, name in scalars}
        m = Metrics(**given)
        for i, j in lats:
            m.latency_buckets[j] = int(vals[i])
        out[key] = m
    return out


_SUM_CACHE: dict[tuple[str, tuple[str, ...]], list[ColumnElement[Any]]] = {}


def _sums(table: Any, names: Sequence[str]) -> list[ColumnElement[Any]]:
    """SUM() column expressions, built once per table and column set (they are immutable)."""
    key = (table.name, tuple(names))
    cols = _SUM_CACHE.get(key)
    if cols is None:
        if table is usage_events:
            cols = _event_sum_columns(names)
        else:
            cols = [func.sum(table.c[c]) for c in names]
        _SUM_CACHE[key] = cols
    return cols


Sink = Callable[[int, Sequence[Any], Sequence[Any], int], None]
# Rollup reads are written as SQL text: times and buckets are integers we computed (inlined),
# filter values are bound. Building them with expression objects cost more than the query.
_Where = tuple[list[str], dict[str, Any]]
_FULL_KEY_FILTERS = (
    ("account_ids", "account_id"),
    ("api_key_ids", "api_key_id"),
    ("models", "model"),
    ("providers", "provider"),
    ("endpoints", "endpoint"),
    ("sources", "source"),
)


def _full_key_where(filters: Filters) -> _Where:
    """Filter conditions on a full-key rollup table (usage_hourly / usage_daily)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    for attr, column in _FULL_KEY_FILTERS:
        values = getattr(filters, attr)
        if values:
            where.append(f"{column} IN :f_{column}")
            params[f"f_{column}"] = list(values)
    if filters.status in ("failed", "success"):
        where.append("failed = :f_failed")
        params["f_failed"] = filters.status == "failed"
    return where, params


def _rollup_sql(
    part: int, table: Any, level: str, spans: Sequence[Span], names: Sequence[str], keys: Sequence[str]
) -> tuple[str, bool, bool]:
    """(SELECT, constant, in_sql) reading the spans' rollup rows grouped by bucket and keys,
    tagged with ``part``: the bucket is a constant (one bucket), a CASE over the spans, or the
    time itself (many spans: mapped in Python). Filter conditions follow as {where}."""
    t = f"{level}_ms"
    in_sql = len(spans) <= _CASE_LIMIT
    constant = in_sql and len({s[2] for s in spans}) == 1
    if constant:
        label = "0"
    elif in_sql:
        whens = " ".join(f"WHEN {t} < {int(s[1])} THEN {int(s[2])}" for s in spans[:-1])
        label = f"CASE {whens} ELSE {int(spans[-1][2])} END"
    else:
        label = t
    times = _rollup_times(spans, level)
    if times is not None:
        span_sql = f"{t} IN ({', '.join(str(v) for v in times)})"
    else:
        span_sql = (
            "(" + " OR ".join(f"({t} >= {int(lo)} AND {t} < {int(hi)})" for lo, hi in _ranges(spans)) + ")"
        )
    group = ([] if constant else ["tb"]) + list(keys)
    sql = (
        f"SELECT {int(part)} AS part, {label} AS tb{''.join(', ' + k for k in keys)}, "
        + ", ".join(f"SUM({n})" for n in names)
        + f" FROM {table.name} WHERE {span_sql}{{where}}"
        + (f" GROUP BY {', '.join(group)}" if group else "")
    )
    return sql, constant, in_sql


async def _read_spans(
    conn: AsyncConnection,
    groups: dict[tuple[str, int], list[Span]],
    filters: Filters,
    names: Sequence[str],
    rollup_keys: Callable[[], list[str]],
    rollup_where: Callable[[], _Where],
    event_keys: Sequence[ColumnElement[Any]],
    tables: tuple[Any, Any, Any, Any],
    sink: Sink,
    dim_filter: tuple[set[str], set[str] | None] | None = None,
) -> None:
    """Read every (level, sign) group and hand each row to sink(bucket, keys, sums, sign): the
    rollup levels in ONE statement (a UNION ALL of one SELECT per group; each round trip to
    the database costs more than a small read), raw events in one query per group.

    With ``dim_filter`` (the per-dimension rollups' wanted dims [and values]), closed units
    come from the engine's rollup cache (store/rollup_cache.py) when it is current.
    """
    monthly, daily, hourly, slots = tables
    keys = rollup_keys()
    if dim_filter is not None and tables is _DIM_TABLES:
        cache = rollup_cache.for_connection(conn, _ALL_SUMS)
        groups = await rollup_cache.read_closed_units(conn, cache, groups, names, keys, *dim_filter, sink)
    nkeys = len(keys)
    parts: list[tuple[list[Span], list[int], int, bool, bool]] = []
    selects: list[str] = []
    for (level, sign), spans in groups.items():
        if level in ("month", "day", "hour", "slot"):
            table = {"month": monthly, "day": daily, "hour": hourly, "slot": slots}[level]
            sql, constant, in_sql = _rollup_sql(len(parts), table, level, spans, names, keys)
            parts.append((spans, [s[0] for s in spans], sign, constant, in_sql))
            selects.append(sql)
    if selects:
        conds, params = rollup_where()
        where = "".join(f" AND {c}" for c in conds)
        union = text(" UNION ALL ".join(sql.replace("{where}", where) for sql in selects))
        lists = [k for k, v in params.items() if isinstance(v, list)]
        if lists:
            union = union.bindparams(*[bindparam(k, expanding=True) for k in lists])
        if params:
            union = union.bindparams(**params)
        for row in await conn.execute(union):
            spans, starts, sign, constant, in_sql = parts[row[0]]
            if constant:
                bucket = spans[0][2]
            elif in_sql:
                bucket = int(row[1])
            else:
                tb = int(row[1])
                bucket = _span_of(spans, starts, tb, tb + 1)
            sink(bucket, row[2 : 2 + nkeys], row[2 + nkeys :], sign)
    for (level, sign), spans in groups.items():
        if level != "raw":
            continue
        starts = [s[0] for s in spans]
        e = usage_events.c
        width = _slot_width(spans)
        slot = e.ts_ms.op("/")(literal_column(str(width)))
        ranges = _ranges(spans)
        # One query per range beyond two: SQLite scans the whole table for a long OR.
        batches = [ranges] if len(ranges) <= 2 else [[r] for r in ranges]
        nkeys = len(event_keys)
        for batch in batches:
            stmt = (
                select(slot.label("slot"), *event_keys, *_sums(usage_events, names))
                .where(
                    or_(*[and_(e.ts_ms >= lo, e.ts_ms < hi) for lo, hi in batch]),
                    *_filter_clauses(e, filters, _served_model()),
                )
                .group_by(slot, *event_keys)
            )
            for row in await conn.execute(stmt):
                if not row[1 + nkeys]:
                    continue
                lo = int(row[0]) * width
                sink(_span_of(spans, starts, lo, lo + width), row[1 : 1 + nkeys], row[1 + nkeys :], sign)


_DIM_TABLES = (usage_monthly_dim, usage_daily_dim, usage_hourly_dim, usage_15m_dim)
_FULL_TABLES = (None, usage_daily, usage_hourly, None)


async def _read_plan(
    conn: AsyncConnection,
    groups: dict[tuple[str, int], list[Span]],
    *,
    filters: Filters,
    names: Sequence[str],
    dims: Sequence[str],
    per_dimension: bool,
    cached: tuple[set[str], set[str] | None] | None,
    rollup_keys: Callable[[], list[str]],
    rollup_where: Callable[[], _Where],
    sinks: tuple[Sink, Sink],
) -> None:
    """Read a plan_buckets() plan: its rollup groups (per-dimension or full-key tables; closed
    units of the wanted dims [and values] through the rollup cache when ``cached``) into the
    first sink, then its raw-event groups into the second."""
    tables = _DIM_TABLES if per_dimension else _FULL_TABLES
    event_keys = [_event_dim(d) for d in dims]
    rollup_groups = {k: v for k, v in groups.items() if k[0] != "raw"}
    raw_groups = {k: v for k, v in groups.items() if k[0] == "raw"}
    args = (filters, names, rollup_keys, rollup_where, event_keys, tables)
    await _read_spans(conn, rollup_groups, *args, sinks[0], cached)
    await _read_spans(conn, raw_groups, *args, sinks[1])


async def bucketed(
    conn: AsyncConnection,
    bounds: Sequence[int],
    filters: Filters = Filters(),
    dims: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> list[dict[tuple[Any, ...], Metrics]]:
    """Metrics per bucket [bounds[i], bounds[i + 1]) grouped by dims (see bucketed_sums)."""
    names, sums = await bucketed_sums(conn, bounds, filters, dims, columns)
    return [_metrics(a, names) for a in sums]


async def timeseries_sums(
    db: Database,
    bounds: Sequence[int],
    filters: Filters = Filters(),
    dims: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> tuple[list[str], list[Acc]]:
    async with db.connect() as conn:
        return await bucketed_sums(conn, bounds, filters, dims, columns)


async def bucketed_sums(
    conn: AsyncConnection,
    bounds: Sequence[int],
    filters: Filters = Filters(),
    dims: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> tuple[list[str], list[Acc]]:
    """Sums per bucket [bounds[i], bounds[i + 1]) and group (lists in ``names`` order), exact
    to the millisecond.

    Each bucket is read from whole UTC days and hours of the rollups plus raw events for the
    partial hours (see plan_buckets). Rollups are the per-dimension ones when the query
    involves at most one dimension, else the full-key ones. ``columns`` limits the sums read
    (names of Metrics fields, 'latency_buckets' for the histogram).
    """
    n = len(bounds) - 1
    names = _selected(columns)
    if n <= 0:
        return names, []
    acc: list[Acc] = [{} for _ in range(n)]
    single = single_dimension(filters, dims)
    convert = single is not None and bool(dims) and dims[0] in _INT_DIMS

    def rollup_keys() -> list[str]:
        if single:
            return ["value"] if dims else []
        return list(dims)

    def rollup_where() -> _Where:
        if not single:
            return _full_key_where(filters)
        where: _Where = (["dim = :dim"], {"dim": single})
        for attr, dim in _FILTER_DIMS:
            values = getattr(filters, attr)
            if values and dim == single:
                where[0].append("value IN :values")
                where[1]["values"] = [str(v) for v in values]
        return where

    def rollup_sink(bucket: int, keys: Sequence[Any], vals: Sequence[Any], sign: int) -> None:
        _acc(acc[bucket], (int(keys[0]),) if convert and keys else tuple(keys), vals, sign)

    def event_sink(bucket: int, keys: Sequence[Any], vals: Sequence[Any], sign: int) -> None:
        _acc(acc[bucket], tuple(keys), vals, sign)

    groups = plan_buckets(bounds, months=single is not None, slots=single is not None)
    dim_filter: tuple[set[str], set[str] | None] | None = None
    if single:
        wanted = [str(v) for attr, dim in _FILTER_DIMS if dim == single for v in getattr(filters, attr)]
        dim_filter = ({single}, set(wanted) if wanted else None)
    await _read_plan(
        conn,
        groups,
        filters=filters,
        names=names,
        dims=dims,
        per_dimension=single is not None,
        cached=dim_filter,
        rollup_keys=rollup_keys,
        rollup_where=rollup_where,
        sinks=(rollup_sink, event_sink),
    )
    req = names.index("requests")
    return names, [{k: v for k, v in a.items() if v[req]} for a in acc]


async def dimension_names(db: Database, dim: str, keys: Sequence[Any]) -> dict[Any, dict[str, Any]]:
    """Display data for account / API key ids ({id: {name, provider|prefix, origin}})."""
    ids = {int(k) for k in keys if k}
    if dim not in ("account_id", "api_key_id") or not ids:
        return {}
    async with db.connect() as conn:
        return dict(await _names(conn, accounts if dim == "account_id" else api_keys, ids))


_LIST_COLUMNS = (
    "id",
    "ts_ms",
    "source",
    "request_id",
    "account_id",
    "account_label",
    "auth_index",
    "api_key_id",
    "provider",
    "endpoint",
    "method",
    "path",
    "model",
    "actual_model",
    "stream",
    "status_code",
    "failed",
    "error_kind",
    *TOKEN_COLUMNS,
    "latency_ms",
    "ttft_ms",
    "cost_micros",
    "price_missing",
    "service_tier",
    "client_ip",
    "user_agent",
)
ERROR_PREVIEW_CHARS = 500


async def _attach_names(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    acc = await _names(conn, accounts, {r["account_id"] for r in rows if r["account_id"]})
    keys = await _names(conn, api_keys, {r["api_key_id"] for r in rows if r["api_key_id"]})
    for r in rows:
        a = acc.get(r["account_id"])
        k = keys.get(r["api_key_id"])
        r["account_name"] = a["name"] if a else None
        r["api_key_name"] = k["name"] if k else None
        r["api_key_prefix"] = k["prefix"] if k else None
        for name in ("stream", "failed", "price_missing"):
            if r.get(name) is not None:
                r[name] = bool(r[name])


async def recent_requests(
    db: Database,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    filters: Filters = Filters(),
    limit: int = 50,
    before: tuple[int, int] | None = None,
    request_id: str | None = None,
) -> list[dict[str, Any]]:
    """Newest events first (ts_ms, id descending); ``before`` = (ts_ms, id) of the last row seen."""
    e = usage_events.c
    cols: list[ColumnElement[Any]] = [e[c] for c in _LIST_COLUMNS]
    cols.append(func.substr(e.error_message, 1, ERROR_PREVIEW_CHARS).label("error_message"))
    clauses = _filter_clauses(e, filters, _served_model())
    if start_ms is not None:
        clauses.append(e.ts_ms >= start_ms)
    if end_ms is not None:
        clauses.append(e.ts_ms < end_ms)
    if request_id:
        clauses.append(e.request_id == request_id)
    if before is not None:
        ts, row_id = before
        clauses.append(e.ts_ms <= ts)
        clauses.append(or_(e.ts_ms < ts, e.id < row_id))
    limit = max(1, min(limit, MAX_PAGE))
    upper = end_ms
    if before is not None:
        upper = before[0] + 1 if upper is None else min(upper, before[0] + 1)

    def page(extra: list[ColumnElement[bool]], n: int) -> Any:
        return select(*cols).where(*clauses, *extra).order_by(e.ts_ms.desc(), e.id.desc()).limit(n)

    async with db.connect() as conn:
        hours = await _matching_hours(conn, filters, start_ms, upper)
        if hours is None:
            rows = [dict(r._mapping) for r in await conn.execute(page([], limit))]
        else:
            # Filtered by account / key / model...: read only the hours that hold such events,
            # newest first, a few at a time until the page is full.
            rows = []
            i = 0
            while i < len(hours) and len(rows) < limit:
                chunk: list[int] = []
                expected = 0
                while i < len(hours) and (not chunk or expected < limit - len(rows)):
                    chunk.append(hours[i][0])
                    expected += hours[i][1]
                    i += 1
                for lo, hi in _hour_ranges(chunk):
                    got = await conn.execute(page([e.ts_ms >= lo, e.ts_ms < hi], limit - len(rows)))
                    rows.extend(dict(r._mapping) for r in got)
                    if len(rows) >= limit:
                        break
        await _attach_names(conn, rows)
    return rows


def _hour_ranges(hours: Sequence[int]) -> list[tuple[int, int]]:
    """Newest-first hour starts -> newest-first [lo, hi) ranges with touching hours joined."""
    out: list[tuple[int, int]] = []
    for h in hours:
        if out and out[-1][0] == h + HOUR_MS:
            out[-1] = (h, out[-1][1])
        else:
            out.append((h, h + HOUR_MS))
    return out


async def _matching_hours(
    conn: AsyncConnection, filters: Filters, start_ms: int | None, end_ms: int | None
) -> list[tuple[int, int]] | None:
    """(hour, most events that can match there) newest first for the dimension filters, from
    the per-dimension rollups; None without dimension filters."""
    h = usage_hourly_dim.c
    found: dict[int, int] | None = None
    for attr, dim in _FILTER_DIMS:
        values = getattr(filters, attr)
        if not values:
            continue
        where = [h.dim == dim, h.value.in_([str(v) for v in values])]
        if start_ms is not None:
            where.append(h.hour_ms >= start_ms - start_ms % HOUR_MS)
        if end_ms is not None:
            where.append(h.hour_ms < end_ms)
        stmt = select(h.hour_ms, func.sum(h.requests)).where(*where).group_by(h.hour_ms)
        counts = {int(t): int(n) for t, n in await conn.execute(stmt) if n and n > 0}
        found = counts if found is None else {t: min(n, counts[t]) for t, n in found.items() if t in counts}
    if found is None:
        return None
    return sorted(found.items(), reverse=True)


async def request_detail(db: Database, event_id: int) -> dict[str, Any] | None:
    """One event with every stored column (raw_json is the redacted raw record)."""
    async with db.connect() as conn:
        row = (await conn.execute(select(usage_events).where(usage_events.c.id == event_id))).first()
        if row is None:
            return None
        item = dict(row._mapping)
        await _attach_names(conn, [item])
    return item


async def metrics_by(
    db: Database,
    periods: dict[str, tuple[int, int]],
    dim: str,
    filters: Filters = Filters(),
    columns: Sequence[str] | None = None,
) -> dict[str, dict[Any, Metrics]]:
    """For each named period [start, end): metrics grouped by one dimension.

    Periods that overlap or touch (today / this week / this month) are read in one pass: the
    segments between all their edges are buckets, and each period adds up its segments.
    """
    live = {name: p for name, p in periods.items() if p[1] > p[0]}
    out: dict[str, dict[Any, Metrics]] = {name: {} for name in periods}
    if not live:
        return out
    edges = sorted({t for p in live.values() for t in p})
    covered = all(any(lo <= a and b <= hi for lo, hi in live.values()) for a, b in itertools.pairwise(edges))
    async with db.connect() as conn:
        if not covered:  # disjoint periods with gaps between them: one pass each
            for name, (start, end) in live.items():
                (rows,) = await bucketed(conn, [start, end], filters, (dim,), columns)
                out[name] = {k[0]: m for k, m in rows.items()}
            return out
        names, segments = await bucketed_sums(conn, edges, filters, (dim,), columns)
    for name, (start, end) in live.items():
        parts = [seg for i, seg in enumerate(segments) if start <= edges[i] and edges[i + 1] <= end]
        total: Acc = parts[0] if len(parts) == 1 else {}
        if len(parts) > 1:
            for seg in parts:
                for key, vals in seg.items():
                    _acc(total, key, vals, 1)
        out[name] = {k[0]: m for k, m in _metrics(total, names).items()}
    return out


async def all_time_cost(db: Database, dim: str, ids: Sequence[int]) -> dict[int, int]:
    """Cost in micro-USD since the first event, per account / API key id (from usage_daily)."""
    if not ids or dim not in ("account_id", "api_key_id"):
        return {}
    d = usage_daily.c
    stmt = select(d[dim], func.sum(d.cost_micros)).where(d[dim].in_(sorted(set(ids)))).group_by(d[dim])
    async with db.connect() as conn:
        return {int(k): int(v or 0) for k, v in await conn.execute(stmt)}


_PANEL_COLUMNS = (
    "id",
    "ts_ms",
    "event_hash",
    "provider",
    "endpoint",
    "model",
    "actual_model",
    "account_label",
    "auth_index",
    "request_id",
    "latency_ms",
    "failed",
    *TOKEN_COLUMNS,
)


async def newest_events(
    db: Database, limit: int, *, start_ms: int | None = None, end_ms: int | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` events (light columns), newest first: CPA panel details."""
    e = usage_events.c
    stmt = select(*[e[c] for c in _PANEL_COLUMNS]).order_by(e.ts_ms.desc(), e.id.desc()).limit(max(limit, 0))
    if start_ms is not None:
        stmt = stmt.where(e.ts_ms >= start_ms)
    if end_ms is not None:
        stmt = stmt.where(e.ts_ms < end_ms)
    async with db.connect() as conn:
        result = await conn.execute(stmt)
        return [dict(zip(_PANEL_COLUMNS, r, strict=True)) for r in result]


async def models_in_use(db: Database) -> list[tuple[str, str]]:
    """(served model, provider) pairs that appear in stored usage."""
    d = usage_daily.c
    stmt = select(d.model, d.provider).group_by(d.model, d.provider)
    async with db.connect() as conn:
        return [(str(m), str(p)) for m, p in await conn.execute(stmt)]


async def breakdowns(
    conn: AsyncConnection,
    start_ms: int,
    end_ms: int,
    filters: Filters = Filters(),
    dims: Sequence[str] = ("account_id", "api_key_id", "model", "endpoint"),
) -> tuple[Metrics, dict[str, dict[Any, Metrics]]]:
    """Totals and one breakdown per dimension over [start, end).

    Without filters the per-dimension rollups answer all of it in one scan per level;
    otherwise the full-key rollups grouped by all dims are split.
    """
    totals = Metrics()
    if end_ms <= start_ms:
        return totals, {d: {} for d in dims}
    names = [*_SCALAR_NAMES, *latency_bucket_columns]
    holder: Acc = {}
    grouped: dict[str, Acc] = {d: {} for d in dims}
    dim_path = single_dimension(filters, ()) == "*"  # no filters at all

    def rollup_keys() -> list[str]:
        return ["dim", "value"] if dim_path else list(dims)

    def rollup_where() -> _Where:
        if dim_path:
            return ["dim IN :dims"], {"dims": ["*", *dims]}
        return _full_key_where(filters)

    def split(keys: Sequence[Any], vals: Sequence[Any], sign: int) -> None:
        _acc(holder, (), vals, sign)
        for d, value in zip(dims, keys, strict=True):
            _acc(grouped[d], (value,), vals, sign)

    def rollup_sink(_bucket: int, keys: Sequence[Any], vals: Sequence[Any], sign: int) -> None:
        if not dim_path:
            split(keys, vals, sign)
        elif keys[0] == "*":
            _acc(holder, (), vals, sign)
        else:
            _acc(grouped[keys[0]], (int(keys[1]) if keys[0] in _INT_DIMS else keys[1],), vals, sign)

    def event_sink(_bucket: int, keys: Sequence[Any], vals: Sequence[Any], sign: int) -> None:
        split(keys, vals, sign)

    groups = plan_buckets([start_ms, end_ms], months=dim_path, slots=dim_path)
    await _read_plan(
        conn,
        groups,
        filters=filters,
        names=names,
        dims=dims,
        per_dimension=dim_path,
        cached=({"*", *dims}, None) if dim_path else None,
        rollup_keys=rollup_keys,
        rollup_where=rollup_where,
        sinks=(rollup_sink, event_sink),
    )
    totals = _metrics(holder, names).get((), totals)
    return totals, {d: {k[0]: m for k, m in _metrics(items, names).items()} for d, items in grouped.items()}
