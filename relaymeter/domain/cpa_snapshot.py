"""CPA's legacy usage snapshot (what CPA's management panel reads from GET /usage), built from
stored events: ``apis`` keyed by endpoint, then model, each with its request details newest
first. Token counts are given back in the provider's own semantics, as CPA reports them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo
from typing import Any

from relaymeter.domain.events import input_includes_cache, output_includes_reasoning


def cpa_tokens(row: dict[str, Any]) -> dict[str, int]:
    """Stored (non-overlapping) token buckets -> CPA's token fields for this provider.

    OpenAI-style providers count cached input inside ``input_tokens`` (and report it as
    ``cached_tokens``); Anthropic-style providers report uncached input only, with cache
    reads and writes in their own fields. Gemini reports reasoning outside ``output_tokens``.
    """
    provider = str(row.get("provider") or "")
    model = str(row.get("actual_model") or row.get("model") or "")
    inp = int(row["input_tokens"] or 0)
    cache_read = int(row["cache_read_tokens"] or 0)
    cache_creation = int(row["cache_creation_tokens"] or 0)
    out = int(row["output_tokens"] or 0)
    reasoning = int(row["reasoning_tokens"] or 0)
    cached = 0
    if input_includes_cache(provider, model):
        inp += cache_read
        cached = cache_read
    if not output_includes_reasoning(provider, model):
        out = max(out - reasoning, 0)
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "reasoning_tokens": reasoning,
        "cached_tokens": cached,
        "cache_tokens": cached,
        "cache_read_tokens": cache_read,
        "cache_creation_tokens": cache_creation,
        "total_tokens": int(row["total_tokens"] or 0),
    }


def detail(row: dict[str, Any], tz: tzinfo) -> dict[str, Any]:
    """One request detail; carries event_hash so a re-import into relaymeter deduplicates."""
    out: dict[str, Any] = {
        "timestamp": datetime.fromtimestamp(row["ts_ms"] / 1000, tz).isoformat(timespec="milliseconds"),
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


def _count(target: dict[str, Any], failed: bool, tokens: int) -> None:
    target["total_requests"] += 1
    target["failure_count" if failed else "success_count"] += 1
    target["total_tokens"] += tokens


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
        _count(snap, failed, tokens)
        _count(api, failed, tokens)
        _count(slot, failed, tokens)
        slot["details"].append(detail(row, tz))
        local = datetime.fromtimestamp(row["ts_ms"] / 1000, tz)
        day, hour = local.strftime("%Y-%m-%d"), f"{local.hour:02d}"
        snap["requests_by_day"][day] = snap["requests_by_day"].get(day, 0) + 1
        snap["requests_by_hour"][hour] = snap["requests_by_hour"].get(hour, 0) + 1
        snap["tokens_by_day"][day] = snap["tokens_by_day"].get(day, 0) + tokens
        snap["tokens_by_hour"][hour] = snap["tokens_by_hour"].get(hour, 0) + tokens
    return snap
