"""Analytics service: summaries, time series, request lists, key usage, account load, overview.

Routers and CLI commands call these; they combine store queries (relaymeter.store.queries)
with calendar rules (time zone, week start) and the gateway pool's live snapshot.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import orjson

from relaymeter.domain.buckets import BucketGrid, grid
from relaymeter.domain.latency import LATENCY_BUCKET_COUNT, quantile
from relaymeter.domain.redact import redact, redact_text
from relaymeter.domain.windows import (
    DAY_MS,
    HOUR_MS,
    TimeRange,
    next_period_start_ms,
    now_ms,
    start_of_day_ms,
    start_of_month_ms,
    start_of_week_ms,
    zone,
)
from relaymeter.store import accounts as accounts_store
from relaymeter.store import keys as keys_store
from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.queries import Filters, Metrics

METRIC_NAMES = (
    "requests",
    "failures",
    "successes",
    "success_rate",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "total_tokens",
    "cost_micros",
    "cost_usd",
    "avg_latency_ms",
    "p50_latency_ms",
    "p95_latency_ms",
    "avg_ttft_ms",
)
METRIC_ALIASES = {
    "tokens": "total_tokens",
    "cost": "cost_usd",
    "latency": "avg_latency_ms",
    "errors": "failures",
    "input": "input_tokens",
    "output": "output_tokens",
}
GROUPS = {
    "model": "model",
    "account": "account_id",
    "api_key": "api_key_id",
    "endpoint": "endpoint",
    "provider": "provider",
    "source": "source",
}
OTHER_KEY = "__other__"
# Groups with few values (models, endpoints...) are read for every bucket at once; accounts
# and API keys (hundreds) are ranked first and read per bucket only for the top ones.
FEW_VALUES = ("model", "endpoint", "provider", "source")
OVERLOADED = 0.8
IDLE = 0.2


class CursorError(ValueError):
    """A pagination cursor that was not produced by this API."""


def iso(ts_ms: int, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz).isoformat(timespec="seconds")


def range_out(rng: TimeRange) -> dict[str, Any]:
    tz = zone(rng.tz)
    return {
        "name": rng.name,
        "tz": rng.tz,
        "start_ms": rng.start_ms,
        "end_ms": rng.end_ms,
        "start": iso(rng.start_ms, tz),
        "end": iso(rng.end_ms, tz),
    }


def filters_out(filters: Filters) -> dict[str, Any]:
    return {
        "account": list(filters.account_ids),
        "api_key": list(filters.api_key_ids),
        "model": list(filters.models),
        "provider": list(filters.providers),
        "endpoint": list(filters.endpoints),
        "source": list(filters.sources),
        "status": filters.status,
    }


# --- summary -------------------------------------------------------------------------------


async def summary(
    db: Database, rng: TimeRange, filters: Filters, *, top: int | None = None
) -> dict[str, Any]:
    """Totals and breakdowns by account, API key, model and endpoint (queries.summary's shape)."""
    async with db.connect() as conn:
        totals, by = await queries.breakdowns(conn, rng.start_ms, rng.end_ms, filters)
    account_names = await queries.dimension_names(db, "account_id", list(by["account_id"]))
    key_names = await queries.dimension_names(db, "api_key_id", list(by["api_key_id"]))

    def ordered(items: dict[Any, Metrics]) -> list[tuple[Any, Metrics]]:
        result = sorted(items.items(), key=lambda kv: (-kv[1].requests, -kv[1].total_tokens, str(kv[0])))
        return result[:top] if top else result

    return {
        "range": range_out(rng),
        "filters": filters_out(filters),
        "totals": totals.to_dict(),
        "by_account": [
            {
                "account_id": k,
                "name": (account_names.get(k) or {}).get("name") or ("(none)" if not k else f"account {k}"),
                "provider": (account_names.get(k) or {}).get("provider", ""),
                **m.to_dict(),
            }
            for k, m in ordered(by["account_id"])
        ],
        "by_api_key": [
            {
                "api_key_id": k,
                "name": (key_names.get(k) or {}).get("name") or ("(none)" if not k else f"key {k}"),
                "prefix": (key_names.get(k) or {}).get("prefix", ""),
                **m.to_dict(),
            }
            for k, m in ordered(by["api_key_id"])
        ],
        "by_model": [{"model": k, **m.to_dict()} for k, m in ordered(by["model"])],
        "by_endpoint": [{"endpoint": k, **m.to_dict()} for k, m in ordered(by["endpoint"])],
    }


# --- time series -----------------------------------------------------------------------------


_METRIC_COLUMNS = {
    "requests": ("requests",),
    "failures": ("requests", "failures"),
    "successes": ("requests", "failures"),
    "success_rate": ("requests", "failures"),
    "cost_micros": ("cost_micros",),
    "cost_usd": ("cost_micros",),
    "avg_latency_ms": ("latency_sum_ms", "latency_count"),
    "p50_latency_ms": ("latency_buckets",),
    "p95_latency_ms": ("latency_buckets",),
    "avg_ttft_ms": ("ttft_sum_ms", "ttft_count"),
}


def metric_columns(metrics: Sequence[str]) -> list[str]:
    """The stored sums the given metrics are computed from."""
    out: list[str] = []
    for name in metrics:
        for col in _METRIC_COLUMNS.get(name, (name,)):
            if col not in out:
                out.append(col)
    return out


_FILTER_ATTRS = {
    "account_id": "account_ids",
    "api_key_id": "api_key_ids",
    "model": "models",
    "provider": "providers",
    "endpoint": "endpoints",
    "source": "sources",
}


def narrow(filters: Filters, dim: str, values: Sequence[Any]) -> Filters:
    """The filters restricted to the given values of one dimension (intersected with its own)."""
    attr = _FILTER_ATTRS[dim]
    current = getattr(filters, attr)
    chosen = tuple(v for v in values if not current or v in current)
    fields: dict[str, Any] = {f.name: getattr(filters, f.name) for f in dataclasses.fields(filters)}
    fields[attr] = chosen
    return Filters(**fields)


class SumReader:
    """Metric values from a list of sums in ``columns`` order (as queries.timeseries_sums gives)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.at = {name: i for i, name in enumerate(columns)}
        self.lat0 = self.at.get("lat_b0")

    def __call__(self, vals: Sequence[int], name: str) -> Any:
        at = self.at
        if name in at:
            return vals[at[name]]
        requests = vals[at["requests"]]
        if name == "successes":
            return requests - vals[at["failures"]]
        if name == "success_rate":
            return (requests - vals[at["failures"]]) / requests if requests else None
        if name == "cost_usd":
            return vals[at["cost_micros"]] / 1_000_000
        if name == "avg_latency_ms":
            count = vals[at["latency_count"]]
            return vals[at["latency_sum_ms"]] / count if count else None
        if name == "avg_ttft_ms":
            count = vals[at["ttft_count"]]
            return vals[at["ttft_sum_ms"]] / count if count else None
        if name in ("p50_latency_ms", "p95_latency_ms") and self.lat0 is not None:
            return quantile(
                vals[self.lat0 : self.lat0 + LATENCY_BUCKET_COUNT], 0.5 if name.startswith("p50") else 0.95
            )
        raise KeyError(name)


def _series_name(group: str | None, key: Any, names: Mapping[Any, dict[str, Any]]) -> str:
    if group is None:
        return "all"
    if key == OTHER_KEY:
        return "other"
    if group in ("account", "api_key"):
        info = names.get(key)
        if info:
            return str(info.get("name") or key)
        return "(none)" if not key else f"{group.replace('_', ' ')} {key}"
    return str(key) if key not in ("", None) else "(none)"


async def timeseries(
    db: Database,
    rng: TimeRange,
    filters: Filters,
    *,
    bucket: str,
    metrics: Sequence[str],
    group_by: str | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Values per bucket for each requested metric, optionally one series per group (top N + other)."""
    tz = zone(rng.tz)
    g: BucketGrid = grid(rng.start_ms, rng.end_ms, bucket, tz)
    dim = GROUPS[group_by] if group_by else None
    wanted = metric_columns(metrics)
    rank_metric = metrics[0] if metrics else "requests"
    if dim is None:
        columns, per_bucket = await queries.timeseries_sums(db, g.bounds, filters, (), wanted)
        value = SumReader(columns)
        keep: list[Any] = [None]
        folded: set[Any] = set()
    elif dim in FEW_VALUES:
        # Every group per bucket in one pass; the ranking is their sum over the buckets.
        columns, per_group = await queries.timeseries_sums(db, g.bounds, filters, (dim,), wanted)
        value = SumReader(columns)
        by_key: dict[Any, list[int]] = {}
        for slot in per_group:
            for key, sums in slot.items():
                cur = by_key.get(key[0])
                by_key[key[0]] = sums if cur is None else [a + b for a, b in zip(cur, sums, strict=True)]
        ranked = sorted(by_key.items(), key=lambda kv: (-(value(kv[1], rank_metric) or 0), str(kv[0])))
        keep = [k for k, _ in ranked[:top]]
        folded = {k for k, _ in ranked[top:]}
        per_bucket = []
        for slot in per_group:
            others = [sums for key, sums in slot.items() if key[0] in folded]
            kept = {key: sums for key, sums in slot.items() if key[0] not in folded}
            if others:
                kept[(OTHER_KEY,)] = [sum(col) for col in zip(*others, strict=True)]
            per_bucket.append(kept)
    else:
        # Rank the groups over the whole range, then read per-bucket values only for the top
        # ones; "other" is everything minus them (a few hundred rows instead of groups x buckets).
        columns, (by_group,) = await queries.timeseries_sums(
            db, [rng.start_ms, rng.end_ms], filters, (dim,), wanted
        )
        value = SumReader(columns)
        ordered = sorted(by_group.items(), key=lambda kv: (-(value(kv[1], rank_metric) or 0), str(kv[0][0])))
        keep = [k[0] for k, _ in ordered[:top]]
        folded = {k[0] for k, _ in ordered[top:]}
        per_bucket = [{} for _ in range(len(g))]
        if keep:
            _cols, per_bucket = await queries.timeseries_sums(
                db, g.bounds, narrow(filters, dim, keep), (dim,), wanted
            )
        if folded:
            _cols, everything = await queries.timeseries_sums(db, g.bounds, filters, (), wanted)
            for i, slot in enumerate(everything):
                rest = slot.get(())
                if rest is None:
                    continue
                for k in keep:
                    vals = per_bucket[i].get((k,))
                    if vals is not None:
                        rest = [a - b for a, b in zip(rest, vals, strict=True)]
                per_bucket[i][(OTHER_KEY,)] = rest
    width = len(columns)
    names = await queries.dimension_names(db, dim, keep) if dim in ("account_id", "api_key_id") else {}

    series_keys: list[Any] = list(keep) + ([OTHER_KEY] if folded else [])
    cells: dict[Any, list[list[int]]] = {k: [[0] * width for _ in range(len(g))] for k in series_keys}
    for i, slot in enumerate(per_bucket):
        for key, vals in slot.items():
            target = cells.get(key[0] if dim else None)
            if target is not None:
                target[i] = [a + b for a, b in zip(target[i], vals, strict=True)]
    series = []
    for k in series_keys:
        total = [sum(col) for col in zip(*cells[k], strict=True)] if cells[k] else [0] * width
        series.append(
            {
                "key": k,
                "name": _series_name(group_by, k, names),
                "values": {name: [value(c, name) for c in cells[k]] for name in metrics},
                "totals": {name: value(total, name) for name in metrics},
            }
        )
    return {
        "range": range_out(rng),
        "filters": filters_out(filters),
        "bucket": bucket,
        "group_by": group_by,
        "metrics": list(metrics),
        "buckets": [
            {"start_ms": s, "end_ms": g.end_of(i), "label": iso(s, tz)} for i, s in enumerate(g.starts)
        ],
        "series": series,
    }


# --- recent requests ----------------------------------------------------------------------------


def encode_cursor(ts_ms: int, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{ts_ms}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, row_id = text.partition(":")
        out = (int(ts), int(row_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise CursorError("cursor is not valid; pass the next_cursor of a previous page") from None
    if out[0] < 0 or out[1] < 0:
        raise CursorError("cursor is not valid; pass the next_cursor of a previous page")
    return out


def _request_item(row: dict[str, Any], tz: tzinfo) -> dict[str, Any]:
    item = dict(row)
    item["time"] = iso(row["ts_ms"], tz)
    item["cost_usd"] = row["cost_micros"] / 1_000_000
    item["served_model"] = row["actual_model"] or row["model"]
    if row.get("error_message"):
        # Stored text is redacted on the way in; mask again in case a producer missed one.
        item["error_message"] = redact_text(row["error_message"])
    return item


async def recent_requests(
    db: Database,
    *,
    rng: TimeRange | None,
    filters: Filters,
    limit: int,
    cursor: str | None,
    request_id: str | None,
    tz: tzinfo,
) -> dict[str, Any]:
    before = decode_cursor(cursor) if cursor else None
    rows = await queries.recent_requests(
        db,
        start_ms=rng.start_ms if rng else None,
        end_ms=rng.end_ms if rng else None,
        filters=filters,
        limit=limit + 1,
        before=before,
        request_id=request_id,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "range": range_out(rng) if rng else None,
        "filters": filters_out(filters),
        "limit": limit,
        "items": [_request_item(r, tz) for r in rows],
        "next_cursor": encode_cursor(rows[-1]["ts_ms"], rows[-1]["id"]) if more and rows else None,
    }


async def request_detail(db: Database, event_id: int, tz: tzinfo) -> dict[str, Any] | None:
    row = await queries.request_detail(db, event_id)
    if row is None:
        return None
    item = _request_item(row, tz)
    raw = item.pop("raw_json", None)
    if raw:
        try:
            item["raw"] = redact(orjson.loads(raw))
        except orjson.JSONDecodeError:
            item["raw"] = None
    else:
        item["raw"] = None
    return item


# --- calendar periods, key usage, account load ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Periods:
    now: int
    day: tuple[int, int]
    week: tuple[int, int]
    month: tuple[int, int]
    resets: dict[str, int]


def periods(now: int, tz: tzinfo, week_start: str) -> Periods:
    return Periods(
        now=now,
        day=(start_of_day_ms(now, tz), now + 1),
        week=(start_of_week_ms(now, tz, week_start), now + 1),
        month=(start_of_month_ms(now, tz), now + 1),
        resets={p: next_period_start_ms(p, now, tz, week_start) for p in ("day", "week", "month")},
    )


def _ratio(used: int, cap: int | None) -> float | None:
    if cap is None or cap <= 0:
        return None
    return used / cap


def _period_usage(m: Metrics | None, start: int, resets: int | None, limit: int | None) -> dict[str, Any]:
    m = m or Metrics()
    remaining = None if limit is None else max(limit - m.cost_micros, 0)
    return {
        "start_ms": start,
        "resets_ms": resets,
        "requests": m.requests,
        "failures": m.failures,
        "successes": m.requests - m.failures,
        "success_rate": m.success_rate,
        "input_tokens": m.input_tokens,
        "output_tokens": m.output_tokens,
        "total_tokens": m.total_tokens,
        "cost_micros": m.cost_micros,
        "cost_usd": m.cost_usd,
        "limit_micros": limit,
        "limit_usd": None if limit is None else limit / 1_000_000,
        "remaining_micros": remaining,
        "used_ratio": _ratio(m.cost_micros, limit),
        "over_limit": limit is not None and m.cost_micros >= limit,
    }


def gateway_snapshot(services: Mapping[str, Any]) -> dict[str, Any]:
    """The gateway pool's live state (``snapshot()``), or {} when no gateway runs."""
    gateway = services.get("gateway")
    snap = getattr(gateway, "snapshot", None)
    if snap is None:
        return {}
    try:
        value = snap()
    except Exception:
        return {}
    return value if isinstance(value, dict) else {"accounts": value}


def _by_id(items: Any) -> dict[int, dict[str, Any]]:
    """Per-id entries from a snapshot section given as {id: {...}} or [{"id"|"account_id": ...}]."""
    out: dict[int, dict[str, Any]] = {}
    if isinstance(items, Mapping):
        for k, v in items.items():
            try:
                out[int(k)] = v if isinstance(v, dict) else {"in_flight": v}
            except (TypeError, ValueError):
                continue
    elif isinstance(items, Sequence) and not isinstance(items, str | bytes):
        for v in items:
            if not isinstance(v, Mapping):
                continue
            ident = v.get("account_id", v.get("api_key_id", v.get("id")))
            try:
                out[int(ident)] = dict(v)
            except (TypeError, ValueError):
                continue
    return out


def _first_int(entry: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = entry.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            return int(value)
    return None


async def keys_usage(
    db: Database,
    *,
    tz: tzinfo,
    tz_name: str,
    week_start: str,
    origin: str | None,
    services: Mapping[str, Any],
    now: int | None = None,
) -> dict[str, Any]:
    current = now if now is not None else now_ms()
    p = periods(current, tz, week_start)
    keys = await keys_store.list_keys(db, origin=origin)
    usage = await queries.metrics_by(
        db,
        {"day": p.day, "week": p.week, "month": p.month},
        "api_key_id",
        columns=("requests", "failures", "input_tokens", "output_tokens", "total_tokens", "cost_micros"),
    )
    with_total = [k["id"] for k in keys if k.get("total_limit_micros") is not None]
    totals = await queries.all_time_cost(db, "api_key_id", with_total)
    live = _by_id(gateway_snapshot(services).get("api_keys", {}))
    key_view = getattr(services.get("gateway"), "key_usage", None)
    items = []
    for k in keys:
        kid = k["id"]
        total_limit = k.get("total_limit_micros")
        spent_total = totals.get(kid, 0) if total_limit is not None else None
        entry = live.get(kid, {})
        if not entry and callable(key_view) and k.get("origin") == "gateway":
            try:
                view = key_view(kid)
            except Exception:  # live counters are optional; the stored usage still answers
                view = None
            entry = view if isinstance(view, dict) else {}
        items.append(
            {
                "api_key_id": kid,
                "name": k["name"],
                "prefix": k.get("prefix") or "",
                "origin": k.get("origin") or "",
                "enabled": bool(k.get("enabled")),
                "revoked": bool(k.get("revoked")),
                "expires_ms": k.get("expires_ms"),
                "last_used_ms": k.get("last_used_ms"),
                "rpm": k.get("rpm") or 0,
                "tpm": k.get("tpm") or 0,
                "max_concurrency": k.get("max_concurrency") or 0,
                "concurrency_in_use": _first_int(entry, "in_flight", "inflight", "current", "active"),
                "rpm_used": entry.get("rpm_used") if isinstance(entry.get("rpm_used"), int | float) else None,
                "tpm_used": entry.get("tpm_used") if isinstance(entry.get("tpm_used"), int | float) else None,
                "today": _period_usage(
                    usage["day"].get(kid), p.day[0], p.resets["day"], k.get("daily_limit_micros")
                ),
                "week": _period_usage(
                    usage["week"].get(kid), p.week[0], p.resets["week"], k.get("weekly_limit_micros")
                ),
                "month": _period_usage(
                    usage["month"].get(kid), p.month[0], p.resets["month"], k.get("monthly_limit_micros")
                ),
                "total": {
                    "cost_micros": spent_total,
                    "limit_micros": total_limit,
                    "remaining_micros": None
                    if total_limit is None or spent_total is None
                    else max(total_limit - spent_total, 0),
                    "used_ratio": _ratio(spent_total or 0, total_limit),
                },
            }
        )
    return {"generated_ms": current, "tz": tz_name, "week_start": week_start, "items": items}


def _cap(used: int, cap: int | None) -> dict[str, Any]:
    return {
        "used": used,
        "cap": cap,
        "remaining": None if cap is None else max(cap - used, 0),
        "ratio": _ratio(used, cap),
    }


async def accounts_load(
    db: Database,
    *,
    tz: tzinfo,
    tz_name: str,
    origin: str | None,
    services: Mapping[str, Any],
    now: int | None = None,
    today_usage: Mapping[Any, Metrics] | None = None,
) -> dict[str, Any]:
    """Today's use of every account against its daily caps, with load flags and live pool state.
    ``today_usage``: metrics by account id since the start of today, when the caller has them."""
    current = now if now is not None else now_ms()
    day = (start_of_day_ms(current, tz), current + 1)
    rows = await accounts_store.list_accounts(db, origin=origin)
    usage = today_usage
    if usage is None:
        usage = (
            await queries.metrics_by(
                db,
                {"day": day},
                "account_id",
                columns=(
                    "requests",
                    "failures",
                    "total_tokens",
                    "cost_micros",
                    "latency_sum_ms",
                    "latency_count",
                ),
            )
        )["day"]
    snapshot = gateway_snapshot(services)
    live = _by_id(snapshot.get("accounts", {}))
    all_requests = sum(m.requests for k, m in usage.items() if k) or 0
    items = []
    for a in rows:
        aid = a["id"]
        m = usage.get(aid) or Metrics()
        d = m.to_dict()
        entry = live.get(aid, {})
        caps = {
            "requests": _cap(m.requests, a.get("daily_request_cap")),
            "tokens": _cap(m.total_tokens, a.get("daily_token_cap")),
            "cost_micros": _cap(m.cost_micros, a.get("daily_cost_cap_micros")),
        }
        # in_flight_shared counts every gateway instance (Redis); in_flight only this one.
        current_conc = _first_int(entry, "in_flight_shared", "in_flight", "inflight", "current", "active")
        max_conc = _first_int(entry, "max_concurrency", "max") or a.get("max_concurrency") or 0
        ratios = [c["ratio"] for c in caps.values() if c["ratio"] is not None]
        if current_conc is not None and max_conc:
            ratios.append(current_conc / max_conc)
        load_rate = max(ratios) if ratios else None
        health = entry.get("health") if isinstance(entry.get("health"), str) else a.get("health")
        items.append(
            {
                "account_id": aid,
                "name": a["name"],
                "origin": a.get("origin") or "",
                "provider": a.get("provider") or "",
                "kind": a.get("kind") or "",
                "plan": a.get("plan"),
                "enabled": bool(a.get("enabled")),
                "priority": a.get("priority"),
                "weight": a.get("weight"),
                "health": health or "ok",
                "health_reason": entry.get("health_reason") or a.get("health_reason"),
                "cooldown_until_ms": _first_int(entry, "cooldown_until_ms") or a.get("cooldown_until_ms"),
                "last_used_ms": a.get("last_used_ms"),
                "today": {
                    "requests": m.requests,
                    "failures": m.failures,
                    "success_rate": d["success_rate"],
                    "total_tokens": m.total_tokens,
                    "cost_micros": m.cost_micros,
                    "cost_usd": d["cost_usd"],
                    "avg_latency_ms": d["avg_latency_ms"],
                },
                "caps": caps,
                "load_rate": load_rate,
                "overloaded": load_rate is not None and load_rate > OVERLOADED,
                "idle": (load_rate < IDLE) if load_rate is not None else m.requests == 0,
                "share_of_requests": (m.requests / all_requests) if all_requests else None,
                "concurrency": {"current": current_conc, "max": max_conc or None},
                "available": entry["available"] if isinstance(entry.get("available"), bool) else None,
                "unavailable_reason": entry.get("unavailable_reason") if entry else None,
            }
        )
    healthy = sum(1 for i in items if i["enabled"] and i["health"] == "ok")
    return {
        "generated_ms": current,
        "tz": tz_name,
        "day_start_ms": day[0],
        "totals": {
            "accounts": len(items),
            "enabled": sum(1 for i in items if i["enabled"]),
            "healthy": healthy,
            "overloaded": sum(1 for i in items if i["overloaded"]),
            "idle": sum(1 for i in items if i["idle"]),
        },
        "items": items,
    }


# --- overview ------------------------------------------------------------------------------------


def _compact(m: Metrics) -> dict[str, Any]:
    return {
        "requests": m.requests,
        "failures": m.failures,
        "success_rate": m.success_rate,
        "input_tokens": m.input_tokens,
        "output_tokens": m.output_tokens,
        "cache_read_tokens": m.cache_read_tokens,
        "cache_creation_tokens": m.cache_creation_tokens,
        "total_tokens": m.total_tokens,
        "cost_micros": m.cost_micros,
        "cost_usd": m.cost_usd,
    }


async def overview(
    db: Database,
    *,
    tz: tzinfo,
    tz_name: str,
    services: Mapping[str, Any],
    top: int = 5,
    recent: int = 10,
    now: int | None = None,
) -> dict[str, Any]:
    """Everything the console's overview page shows, in one call."""
    current = now if now is not None else now_ms()
    day0 = start_of_day_ms(current, tz)
    today = TimeRange("today", day0, current + 1, tz_name)
    # 7 calendar days ending today, and today's hours.
    week0 = start_of_day_ms(day0 - 6 * DAY_MS + HOUR_MS * 12, tz)
    days = grid(week0, current + 1, "day", tz)
    hours = grid(day0, current + 1, "hour", tz)
    if days.bounds[-2] == day0 == hours.bounds[0]:
        # One pass: the earlier days, then today's hours (today's day point is their sum).
        both = await queries.timeseries(db, days.bounds[:-1] + hours.bounds[1:])
        earlier, hourly = both[: len(days) - 1], both[len(days) - 1 :]
        today_sum = Metrics()
        for slot in hourly:
            if () in slot:
                today_sum.merge(slot[()])
        daily = [*earlier, {(): today_sum} if today_sum.requests else {}]
    else:
        daily = await queries.timeseries(db, days.bounds)
        hourly = await queries.timeseries(db, hours.bounds)

    async with db.connect() as conn:
        totals, by = await queries.breakdowns(
            conn, day0, current + 1, Filters(), ("api_key_id", "model", "account_id")
        )
    by_key: dict[int, Metrics] = {int(k): m for k, m in by["api_key_id"].items()}
    by_model: dict[str, Metrics] = {str(k): m for k, m in by["model"].items()}
    key_rank = sorted(
        ((k, m) for k, m in by_key.items() if k), key=lambda kv: (-kv[1].cost_micros, -kv[1].requests)
    )
    key_names = await queries.dimension_names(db, "api_key_id", [k for k, _ in key_rank[:top]])
    model_rank = sorted(by_model.items(), key=lambda kv: (-kv[1].total_tokens, kv[0]))

    load = await accounts_load(
        db, tz=tz, tz_name=tz_name, origin=None, services=services, now=current, today_usage=by["account_id"]
    )
    recent_rows = await queries.recent_requests(db, limit=recent)
    d = totals.to_dict()

    def day_point(i: int, slot: dict[tuple[Any, ...], Metrics]) -> dict[str, Any]:
        m = slot.get((), Metrics())
        start = days.starts[i]
        return {
            "date": datetime.fromtimestamp(start / 1000, tz).date().isoformat(),
            "start_ms": start,
            **_compact(m),
        }

    def hour_point(i: int, slot: dict[tuple[Any, ...], Metrics]) -> dict[str, Any]:
        m = slot.get((), Metrics())
        start = hours.starts[i]
        return {
            "hour": datetime.fromtimestamp(start / 1000, tz).strftime("%H:%M"),
            "start_ms": start,
            **_compact(m),
        }

    all_tokens = totals.total_tokens
    return {
        "generated_ms": current,
        "tz": tz_name,
        "today": range_out(today),
        "kpis": {
            "accounts_total": load["totals"]["accounts"],
            "accounts_enabled": load["totals"]["enabled"],
            "accounts_healthy": load["totals"]["healthy"],
            "accounts_overloaded": load["totals"]["overloaded"],
            "requests_today": totals.requests,
            "failures_today": totals.failures,
            "success_rate_today": d["success_rate"],
            "tokens_today": totals.total_tokens,
            "input_tokens_today": totals.input_tokens,
            "output_tokens_today": totals.output_tokens,
            "cost_today_micros": totals.cost_micros,
            "cost_today_usd": d["cost_usd"],
            "active_api_keys_today": sum(1 for k, m in by_key.items() if k and m.requests),
            "avg_latency_ms_today": d["avg_latency_ms"],
            "p95_latency_ms_today": d["p95_latency_ms"],
        },
        "trend_7d": [day_point(i, s) for i, s in enumerate(daily)],
        "hourly_today": [hour_point(i, s) for i, s in enumerate(hourly)],
        "tokens_by_model": [
            {
                "model": model or "(none)",
                "total_tokens": m.total_tokens,
                "requests": m.requests,
                "cost_micros": m.cost_micros,
                "cost_usd": m.cost_usd,
                "share": (m.total_tokens / all_tokens) if all_tokens else None,
            }
            for model, m in model_rank
        ],
        "top_keys": [
            {
                "api_key_id": k,
                "name": (key_names.get(k) or {}).get("name") or f"key {k}",
                "prefix": (key_names.get(k) or {}).get("prefix") or "",
                **_compact(m),
            }
            for k, m in key_rank[:top]
        ],
        "accounts": [
            {
                k: a[k]
                for k in (
                    "account_id",
                    "name",
                    "provider",
                    "health",
                    "enabled",
                    "load_rate",
                    "overloaded",
                    "idle",
                )
            }
            | {"requests_today": a["today"]["requests"]}
            for a in load["items"]
        ],
        "recent_requests": [_request_item(r, tz) for r in recent_rows],
    }
