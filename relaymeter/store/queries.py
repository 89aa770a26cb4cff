"""Summaries and breakdowns: usage_hourly for whole hours, raw events only for partial edge hours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.latency import LATENCY_BOUNDS_MS, LATENCY_BUCKET_COUNT, quantile
from relaymeter.domain.windows import HOUR_MS
from relaymeter.store.db import Database
from relaymeter.store.schema import (
    TOKEN_COLUMNS,
    accounts,
    api_keys,
    latency_bucket_columns,
    usage_events,
    usage_hourly,
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


def _rollup_metric_columns() -> list[ColumnElement[Any]]:
    h = usage_hourly.c
    cols: list[ColumnElement[Any]] = [func.sum(h[name]) for name in (*_SCALAR_NAMES, *latency_bucket_columns)]
    return cols


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
    if end_ms <= start_ms:
        return out
    h0, h1 = split_range(start_ms, end_ms)
    h = usage_hourly.c
    e = usage_events.c
    edges: list[ColumnElement[bool]] = []
    if h0 < h1:
        dim_cols = [h[d] for d in dims]
        stmt = select(*dim_cols, *_rollup_metric_columns()).where(
            h.hour_ms >= h0, h.hour_ms < h1, *_filter_clauses(h, filters, h.model)
        )
        if dim_cols:
            stmt = stmt.group_by(*dim_cols)
        for row in await conn.execute(stmt):
            _accumulate(out, row, len(dims))
        if start_ms < h0:
            edges.append(and_(e.ts_ms >= start_ms, e.ts_ms < h0))
        if h1 < end_ms:
            edges.append(and_(e.ts_ms >= h1, e.ts_ms < end_ms))
    else:
        edges.append(and_(e.ts_ms >= start_ms, e.ts_ms < end_ms))
    if edges:
        event_dims: list[ColumnElement[Any]] = [_event_dim(d) for d in dims]
        stmt = select(*event_dims, *_event_metric_columns()).where(
            or_(*edges), *_filter_clauses(e, filters, _served_model())
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
