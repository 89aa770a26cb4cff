"""Summaries and breakdowns: usage_hourly for whole hours, raw events only for partial edge hours."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.latency import LATENCY_BOUNDS_MS, LATENCY_BUCKET_COUNT, quantile
from relaymeter.domain.windows import DAY_MS, HOUR_MS
from relaymeter.store.db import Database
from relaymeter.store.schema import (
    TOKEN_COLUMNS,
    accounts,
    api_keys,
    latency_bucket_columns,
    usage_daily,
    usage_daily_dim,
    usage_events,
    usage_hourly,
    usage_hourly_dim,
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

    def to_dict(self) -> dict[str, Any]:
        ok = self.requests - self.failures
        return {
            "requests": self.requests,
            "failures": self.failures,
            "successes": ok,
            "success_rate": (ok / self.requests) if self.requests else None,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "total_tokens": self.total_tokens,
            "cost_micros": self.cost_micros,
            "cost_usd": self.cost_micros / 1_000_000,
            "avg_latency_ms": (self.latency_sum_ms / self.latency_count) if self.latency_count else None,
            "p50_latency_ms": quantile(self.latency_buckets, 0.50),
            "p95_latency_ms": quantile(self.latency_buckets, 0.95),
            "avg_ttft_ms": (self.ttft_sum_ms / self.ttft_count) if self.ttft_count else None,
        }


_SCALAR_NAMES = (
    "requests",
    "failures",
    *TOKEN_COLUMNS,
    "cost_micros",
    "latency_sum_ms",
    "latency_count",
    "ttft_sum_ms",
    "ttft_count",
)


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
    """Totals plus breakdowns by account, API key, model and endpoint for [start, end)."""
    async with db.connect() as conn:
        rows = await grouped_metrics(
            conn, start_ms, end_ms, filters, ("account_id", "api_key_id", "model", "endpoint")
        )
        totals = Metrics()
        by: dict[str, dict[Any, Metrics]] = {"account": {}, "api_key": {}, "model": {}, "endpoint": {}}
        for (account_id, api_key_id, model, endpoint), m in rows.items():
            totals.merge(m)
            for name, key in (
                ("account", account_id),
                ("api_key", api_key_id),
                ("model", model),
                ("endpoint", endpoint),
            ):
                slot = by[name].get(key)
                if slot is None:
                    slot = by[name][key] = Metrics()
                slot.merge(m)
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

_CASE_BUCKET_LIMIT = 64  # up to this many buckets the SQL maps rollup rows to buckets itself
MAX_PAGE = 1000


def _merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _bucket_case(col: ColumnElement[Any], bounds: Sequence[int]) -> ColumnElement[Any]:
    """SQL CASE mapping a time value to its bucket index (bounds[i] <= t < bounds[i + 1])."""
    last = len(bounds) - 2
    if last <= 0:
        return literal_column("0")
    return case(
        *[(col < bounds[i + 1], literal_column(str(i))) for i in range(last)], else_=literal_column(str(last))
    )


def _slot_width(bounds: Sequence[int]) -> int:
    """Largest divisor of an hour that every inner boundary is a multiple of: raw events are
    grouped in slots of this width, and no slot straddles two buckets."""
    width = HOUR_MS
    for b in bounds[1:-1]:
        width = math.gcd(width, b)
    return max(width, 1)


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
    """The one dimension a query involves ('*' for none), or None when it involves several.

    Such queries are answered from the per-dimension rollups (store/dim_rollups.py).
    """
    involved = set(dims) | {dim for attr, dim in _FILTER_DIMS if getattr(filters, attr)}
    if len(involved) > 1:
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


def _add(
    out: dict[tuple[Any, ...], Metrics],
    key: tuple[Any, ...],
    vals: Sequence[Any],
    names: Sequence[str],
    sign: int,
) -> None:
    m = out.get(key)
    if m is None:
        m = out[key] = Metrics()
    for name, v in zip(names, vals, strict=True):
        if not v:
            continue
        lat = _LAT_INDEX.get(name)
        if lat is not None:
            m.latency_buckets[lat] += sign * int(v)
        else:
            setattr(m, name, getattr(m, name) + sign * int(v))


def _hour_pieces(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans cut at UTC hour boundaries (each piece lies inside one hour)."""
    out = []
    for lo, hi in spans:
        while lo < hi:
            cut = min(hi, (lo // HOUR_MS + 1) * HOUR_MS)
            out.append((lo, cut))
            lo = cut
    return out


def _plan_buckets(
    bounds: Sequence[int],
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """(daily spans, hourly spans, raw spans to add, raw spans to subtract) for the buckets.

    An outer partial hour is read as its whole rollup hour minus the raw events outside the
    range when that is shorter (e.g. the current hour of a range that ends now).
    """
    n = len(bounds) - 1
    plans = [plan_range(bounds[i], bounds[i + 1]) for i in range(n)]
    day_spans = [s for p in plans for s in p.days]
    hour_spans = [s for p in plans for s in p.hours]
    inner = set(bounds[1:-1])
    positive: list[tuple[int, int]] = []
    negative: list[tuple[int, int]] = []
    for lo, hi in _hour_pieces([s for p in plans for s in p.raw]):
        hour = lo - lo % HOUR_MS
        at_edge = lo == bounds[0] or hi == bounds[-1]
        clean = not any(hour < b < hour + HOUR_MS for b in inner)
        outside = [p for p in ((hour, lo), (hi, hour + HOUR_MS)) if p[0] < p[1]]
        if at_edge and clean and sum(b - a for a, b in outside) < hi - lo:
            hour_spans.append((hour, hour + HOUR_MS))
            negative.extend(outside)
        else:
            positive.append((lo, hi))
    return day_spans, hour_spans, positive, negative


def _status_clauses(cols: Any, filters: Filters) -> list[ColumnElement[bool]]:
    if filters.status == "failed":
        return [cols.failed.is_(True)]
    if filters.status == "success":
        return [cols.failed.is_(False)]
    return []


async def bucketed(
    conn: AsyncConnection,
    bounds: Sequence[int],
    filters: Filters = Filters(),
    dims: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> list[dict[tuple[Any, ...], Metrics]]:
    """Metrics per bucket [bounds[i], bounds[i + 1]) grouped by dims, exact to the millisecond.

    Each bucket is planned like a summary: whole UTC days from the daily rollups, whole hours
    from the hourly rollups, partial hours from raw events (see _plan_buckets). Rollups are
    the per-dimension ones when the query involves at most one dimension, else the full-key
    ones. ``columns`` limits the sums read (names of Metrics fields, 'latency_buckets' for the
    histogram); unread fields stay 0.
    """
    n = len(bounds) - 1
    out: list[dict[tuple[Any, ...], Metrics]] = [{} for _ in range(max(n, 0))]
    if n <= 0:
        return out
    names = _selected(columns)
    ndims = len(dims)
    day_spans, hour_spans, positive, negative = _plan_buckets(bounds)

    def slot_index(t: int) -> int:
        return min(max(bisect.bisect_right(bounds, t) - 1, 0), n - 1)

    single = single_dimension(filters, dims)
    for table, time_name, spans in (
        (usage_daily_dim if single else usage_daily, "day_ms", day_spans),
        (usage_hourly_dim if single else usage_hourly, "hour_ms", hour_spans),
    ):
        spans = _merge_spans(spans)
        if not spans:
            continue
        cols = table.c
        t = cols[time_name]
        key: ColumnElement[Any] = _bucket_case(t, bounds) if n <= _CASE_BUCKET_LIMIT else t
        where = [or_(*[and_(t >= lo, t < hi) for lo, hi in spans]), *_status_clauses(cols, filters)]
        if single:
            where.append(cols.dim == single)
            for attr, dim in _FILTER_DIMS:
                values = getattr(filters, attr)
                if values and dim == single:
                    where.append(cols.value.in_([str(v) for v in values]))
            group_cols: list[ColumnElement[Any]] = [cols.value] if ndims else []
        else:
            where.extend(_filter_clauses(cols, filters, cols.model))
            group_cols = [cols[d] for d in dims]
        stmt = (
            select(key.label("tb"), *group_cols, *[func.sum(cols[c]) for c in names])
            .where(*where)
            .group_by(key, *group_cols)
        )
        for row in await conn.execute(stmt):
            idx = int(row[0]) if n <= _CASE_BUCKET_LIMIT else slot_index(int(row[0]))
            if single and ndims:
                k: tuple[Any, ...] = (int(row[1]) if dims[0] in _INT_DIMS else row[1],)
            else:
                k = tuple(row[1 : 1 + ndims])
            _add(out[min(max(idx, 0), n - 1)], k, row[1 + ndims :], names, 1)
    e = usage_events.c
    width = _slot_width(bounds)
    slot = e.ts_ms.op("/")(literal_column(str(width)))
    event_dims = [_event_dim(d) for d in dims]
    metric_cols = _event_sum_columns(names)
    for spans, sign in ((_merge_spans(positive), 1), (_merge_spans(negative), -1)):
        if not spans:
            continue
        stmt = (
            select(slot.label("slot"), *event_dims, *metric_cols)
            .where(
                or_(*[and_(e.ts_ms >= lo, e.ts_ms < hi) for lo, hi in spans]),
                *_filter_clauses(e, filters, _served_model()),
            )
            .group_by(slot, *event_dims)
        )
        for row in await conn.execute(stmt):
            if not row[1 + ndims]:
                continue
            at = max(int(row[0]) * width, bounds[0]) if sign > 0 else int(row[0]) * width
            _add(out[slot_index(at)], tuple(row[1 : 1 + ndims]), row[1 + ndims :], names, sign)
    for slot_map in out:
        for k in [k for k, m in slot_map.items() if m.requests == 0]:
            del slot_map[k]
    return out


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
    stmt = (
        select(*cols)
        .where(*clauses)
        .order_by(e.ts_ms.desc(), e.id.desc())
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    async with db.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(stmt)]
        await _attach_names(conn, rows)
    return rows


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
    db: Database, periods: dict[str, tuple[int, int]], dim: str, filters: Filters = Filters()
) -> dict[str, dict[Any, Metrics]]:
    """For each named period [start, end): metrics grouped by one dimension."""
    out: dict[str, dict[Any, Metrics]] = {}
    async with db.connect() as conn:
        for name, (start, end) in periods.items():
            rows = await grouped_metrics(conn, start, end, filters, (dim,))
            out[name] = {k[0]: m for k, m in rows.items()}
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

    Without dimension filters (status may be set) one scan of the per-dimension rollups
    answers everything; otherwise the full-key rollups grouped by all dims are split.
    """
    totals = Metrics()
    by: dict[str, dict[Any, Metrics]] = {d: {} for d in dims}
    if end_ms <= start_ms:
        return totals, by

    def add(key_dims: Sequence[Any], vals: Sequence[Any], names: Sequence[str], sign: int) -> None:
        _add(holder, (), vals, names, sign)
        for d, value in zip(dims, key_dims, strict=True):
            _add(by[d], (value,), vals, names, sign)

    holder: dict[tuple[Any, ...], Metrics] = {(): totals}
    names = [*_SCALAR_NAMES, *latency_bucket_columns]
    if single_dimension(filters, ()) != "*":
        rows = await grouped_metrics(conn, start_ms, end_ms, filters, tuple(dims))
        for key, m in rows.items():
            totals.merge(m)
            for d, value in zip(dims, key, strict=True):
                slot = by[d].get(value)
                if slot is None:
                    slot = by[d][value] = Metrics()
                slot.merge(m)
        return totals, by
    day_spans, hour_spans, positive, negative = _plan_buckets([start_ms, end_ms])
    for table, time_name, spans in (
        (usage_daily_dim, "day_ms", day_spans),
        (usage_hourly_dim, "hour_ms", hour_spans),
    ):
        spans = _merge_spans(spans)
        if not spans:
            continue
        cols = table.c
        t = cols[time_name]
        stmt = (
            select(cols.dim, cols.value, *[func.sum(cols[c]) for c in names])
            .where(
                or_(*[and_(t >= lo, t < hi) for lo, hi in spans]),
                cols.dim.in_(["*", *dims]),
                *_status_clauses(cols, filters),
            )
            .group_by(cols.dim, cols.value)
        )
        for row in await conn.execute(stmt):
            dim, value = row[0], row[1]
            if dim == "*":
                _add(holder, (), row[2:], names, 1)
            else:
                _add(by[dim], (int(value) if dim in _INT_DIMS else value,), row[2:], names, 1)
    e = usage_events.c
    event_dims = [_event_dim(d) for d in dims]
    for spans, sign in ((_merge_spans(positive), 1), (_merge_spans(negative), -1)):
        if not spans:
            continue
        stmt = (
            select(*event_dims, *_event_sum_columns(names))
            .where(
                or_(*[and_(e.ts_ms >= lo, e.ts_ms < hi) for lo, hi in spans]),
                *_filter_clauses(e, filters, _served_model()),
            )
            .group_by(*event_dims)
        )
        for row in await conn.execute(stmt):
            if row[len(dims)]:
                add(row[: len(dims)], row[len(dims) :], names, sign)
    for d in dims:
        for k in [k for k, m in by[d].items() if m.requests == 0]:
            del by[d][k]
    return totals, by
