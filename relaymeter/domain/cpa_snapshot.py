"""CPA's legacy usage snapshot (what CPA's management panel reads from GET /usage), built from
stored events: ``apis`` keyed by endpoint, then model, each with its request details newest
first. Token counts are given back in the provider's own semantics, as CPA reports them."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, tzinfo
from typing import Any

from relaymeter.domain.events import input_includes_cache, output_includes_reasoning


@functools.lru_cache(maxsize=1024)
def _semantics(provider: str, model: str) -> tuple[bool, bool]:
    return input_includes_cache(provider, model), output_includes_reasoning(provider, model)


def cpa_tokens(row: dict[str, Any]) -> dict[str, int]:
    """Stored (non-overlapping) token buckets -> CPA's token fields for this provider.

    OpenAI-style providers count cached input inside ``input_tokens`` (and report it as
    ``cached_tokens``); Anthropic-style providers report uncached input only, with cache
    reads and writes in their own fields. Gemini reports reasoning outside ``output_tokens``.
    """
    with_cache, with_reasoning = _semantics(
        str(row.get("provider") or ""), str(row.get("actual_model") or row.get("model") or "")
    )
    inp = int(row["input_tokens"] or 0)
    cache_read = int(row["cache_read_tokens"] or 0)
    out = int(row["output_tokens"] or 0)
    reasoning = int(row["reasoning_tokens"] or 0)
    cached = cache_read if with_cache else 0
    return {
        "input_tokens": inp + cached,
        "output_tokens": out if with_reasoning else max(out - reasoning, 0),
        "reasoning_tokens": reasoning,
        "cached_tokens": cached,
        "cache_tokens": cached,
        "cache_read_tokens": cache_read,
        "cache_creation_tokens": int(row["cache_creation_tokens"] or 0),
        "total_tokens": int(row["total_tokens"] or 0),
    }


class _Clock:
    """Local RFC 3339 timestamps, day and hour labels for epoch ms, cached per UTC minute
    (zone offsets are whole minutes)."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.minutes: dict[int, tuple[str, str, str, str]] = {}

    def __call__(self, ts_ms: int) -> tuple[str, str, str]:
        minute, rest = divmod(ts_ms, 60_000)
        cached = self.minutes.get(minute)
        if cached is None:
            local = datetime.fromtimestamp(minute * 60, self.tz)
            stamp = local.isoformat(timespec="seconds")  # ...THH:MM:00+01:00
            cached = (stamp[:17], stamp[19:], stamp[:10], stamp[11:13])
            self.minutes[minute] = cached
        prefix, offset, day, hour = cached
        return f"{prefix}{rest // 1000:02d}.{rest % 1000:03d}{offset}", day, hour


def detail(row: dict[str, Any], tz: tzinfo, clock: _Clock | None = None) -> dict[str, Any]:
    """One request detail; carries event_hash so a re-import into relaymeter deduplicates."""
    stamp = (clock or _Clock(tz))(row["ts_ms"])[0]
    out: dict[str, Any] = {
        "timestamp": stamp,
        "source": row.get("account_label") or "",
        "auth_index": row.get("auth_index") or "",
        "tokens": cpa_tokens(row),
        "failed": bool(row["failed"]),
    }
    if row.get("latency_ms") is not None:
        out["latency_ms"] = int(row["latency_ms"])
    if row.get("request_id"):
        out["request_id"] = row["request_id"]
    if row.get("provider"):
        out["provider"] = row["provider"]
    if row.get("event_hash"):
        out["event_hash"] = row["event_hash"]
    return out


def _empty_counts() -> dict[str, int]:
    return {"total_requests": 0, "success_count": 0, "failure_count": 0, "total_tokens": 0}


def build_snapshot(rows: Iterable[dict[str, Any]], tz: tzinfo) -> dict[str, Any]:
    """The snapshot of the given events (pass them newest first: details keep that order)."""
    snap: dict[str, Any] = {
        **_empty_counts(),
        "apis": {},
        "requests_by_day": {},
        "requests_by_hour": {},
        "tokens_by_day": {},
        "tokens_by_hour": {},
    }
    apis: dict[str, Any] = snap["apis"]
    clock = _Clock(tz)
    by_day: dict[str, int] = snap["requests_by_day"]
    by_hour: dict[str, int] = snap["requests_by_hour"]
    tok_day: dict[str, int] = snap["tokens_by_day"]
    tok_hour: dict[str, int] = snap["tokens_by_hour"]
    for row in rows:
        failed = bool(row["failed"])
        tokens = int(row["total_tokens"] or 0)
        endpoint = row.get("endpoint") or "-"
        model = row.get("actual_model") or row.get("model") or "unknown"
        api = apis.get(endpoint)
        if api is None:
            api = apis[endpoint] = {**_empty_counts(), "models": {}}
        slot = api["models"].get(model)
        if slot is None:
            slot = api["models"][model] = {**_empty_counts(), "details": []}
        outcome = "failure_count" if failed else "success_count"
        for target in (snap, api, slot):
            target["total_requests"] += 1
            target[outcome] += 1
            target["total_tokens"] += tokens
        slot["details"].append(detail(row, tz, clock))
        _stamp, day, hour = clock(row["ts_ms"])
        by_day[day] = by_day.get(day, 0) + 1
        by_hour[hour] = by_hour.get(hour, 0) + 1
        tok_day[day] = tok_day.get(day, 0) + tokens
        tok_hour[hour] = tok_hour.get(hour, 0) + tokens
    return snap
