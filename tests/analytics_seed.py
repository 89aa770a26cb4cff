"""Deterministic usage events for analytics tests, and brute-force recomputation from raw rows."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import select

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.latency import bucket_index
from relaymeter.domain.redact import sha256_hex
from relaymeter.store import events as store_events
from relaymeter.store.db import Database
from relaymeter.store.queries import Metrics
from relaymeter.store.schema import usage_events

MODELS = ("claude-sonnet-4-5", "gpt-5-codex", "gemini-2.5-pro", "claude-haiku-4-5")
ENDPOINTS = ("POST /v1/messages", "POST /v1/chat/completions", "POST /v1/responses")
SOURCES = ("cpa:main", "cpa:backup", "import")
PROVIDERS = {
    "claude-sonnet-4-5": "claude",
    "gpt-5-codex": "codex",
    "gemini-2.5-pro": "gemini",
    "claude-haiku-4-5": "claude",
}


def make_events(
    n: int, start_ms: int, end_ms: int, seed: int = 7, *, keys: int = 5, accounts: int = 4
) -> list[UsageEvent]:
    """n events spread over [start, end): observed accounts and keys, failures, nulls, aliases."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ts = rnd.randrange(start_ms, end_ms)
        model = rnd.choice(MODELS)
        failed = rnd.random() < 0.15
        inp, out_t = rnd.randrange(0, 5000), rnd.randrange(0, 2000)
        cache_read = rnd.choice((0, 0, rnd.randrange(0, 40000)))
        cache_creation = rnd.choice((0, 0, rnd.randrange(0, 3000)))
        latency = (
            None if rnd.random() < 0.1 else rnd.choice((50, 400, 2500, 9000, 61000, rnd.randrange(1, 400000)))
        )
        key_raw = f"sk-client-{rnd.randrange(keys)}-secretvalue"
        ev = UsageEvent(
            event_hash=sha256_hex(f"seed-{seed}-{i}"),
            ts_ms=ts,
            source=rnd.choice(SOURCES),
            request_id=f"{rnd.getrandbits(32):08x}",
            account_label=f"acc{rnd.randrange(accounts)}@example.com",
            auth_index=f"{rnd.randrange(accounts):016x}",
            api_key_hash=sha256_hex(key_raw),
            api_key_prefix=key_raw[:6] + "..." + key_raw[-4:],
            provider=PROVIDERS[model],
            endpoint=rnd.choice(ENDPOINTS),
            model=model + ("-alias" if rnd.random() < 0.2 else ""),
            actual_model=model,
            stream=rnd.choice((True, False, None)),
            status_code=rnd.choice((429, 500, 401)) if failed else 200,
            failed=failed,
            error_kind="upstream_error" if failed else None,
            error_message="rate limited, key sk-abcdef123456 exhausted" if failed else None,
            input_tokens=inp,
            output_tokens=out_t,
            reasoning_tokens=min(out_t, rnd.randrange(0, 300)),
            cache_read_tokens=cache_read,
            cache_creation_tokens=cache_creation,
            latency_ms=latency,
            ttft_ms=None if latency is None else min(latency, rnd.randrange(10, 3000)),
            cost_micros=rnd.randrange(0, 50_000),
            raw_json=orjson.dumps({"source": "m:sk-c...alue", "api_key": "[redacted]", "n": i}).decode(),
        )
        ev.recompute_total()
        out.append(ev)
    return out


async def seed(db: Database, events: Sequence[UsageEvent], batch: int = 5000) -> None:
    for start in range(0, len(events), batch):
        await store_events.insert_batch(db, events[start : start + batch])


async def stored_rows(db: Database) -> list[dict[str, Any]]:
    """Every stored event as a dict (account_id / api_key_id as the write path assigned them)."""
    async with db.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(usage_events))]


def brute_metrics(rows: Iterable[dict[str, Any]]) -> Metrics:
    m = Metrics()
    for r in rows:
        m.requests += 1
        m.failures += 1 if r["failed"] else 0
        for name in (
            "input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cache_read_tokens",
            "cache_creation_tokens",
            "cache_creation_1h_tokens",
            "total_tokens",
            "cost_micros",
        ):
            setattr(m, name, getattr(m, name) + int(r[name] or 0))
        if r["latency_ms"] is not None:
            m.latency_sum_ms += r["latency_ms"]
            m.latency_count += 1
            m.latency_buckets[bucket_index(r["latency_ms"])] += 1
        if r["ttft_ms"] is not None:
            m.ttft_sum_ms += r["ttft_ms"]
            m.ttft_count += 1
    return m


def served(row: dict[str, Any]) -> str:
    return str(row["actual_model"] or row["model"])
