"""A realistic store for the console's browser tests: gateway and observed accounts, keys, 8 days of events.

Seeds through the store API and the single write path. Also runnable for a local preview:
``python -m tests.browser.seed DATA_DIR [--events N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

import orjson

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.redact import sha256_hex
from relaymeter.ingest.writer import UsageWriter
from relaymeter.store import accounts as account_store
from relaymeter.store import keys as key_store
from relaymeter.store import migrate
from relaymeter.store import quotas as quota_store
from relaymeter.store.db import Database

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

GATEWAY_ACCOUNTS = (
    {
        "name": "claude-max-01",
        "provider": "anthropic",
        "kind": "oauth",
        "priority": 100,
        "max_concurrency": 8,
        "daily_token_cap": 40_000_000,
        "email": "ops1@example.com",
        "plan": "max",
    },
    {
        "name": "claude-max-02",
        "provider": "anthropic",
        "kind": "oauth",
        "priority": 100,
        "max_concurrency": 8,
        "daily_request_cap": 4000,
        "email": "ops2@example.com",
        "plan": "max",
    },
    {
        "name": "openai-prod",
        "provider": "openai",
        "kind": "api_key",
        "priority": 50,
        "max_concurrency": 16,
        "daily_cost_cap_micros": 200_000_000,
    },
    {"name": "gemini-backup", "provider": "gemini", "kind": "api_key", "priority": 10, "max_concurrency": 4},
)
GATEWAY_KEYS = (
    {
        "name": "ci-pipeline",
        "daily_limit_micros": 20_000_000,
        "monthly_limit_micros": 400_000_000,
        "max_concurrency": 4,
    },
    {"name": "alice-laptop", "daily_limit_micros": 5_000_000, "rpm": 60},
    {"name": "batch-jobs", "weekly_limit_micros": 100_000_000},
)
# (requested model, served model, provider, gateway account index)
MODELS = (
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "anthropic", 0),
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "anthropic", 1),
    ("claude-haiku-4-5", "claude-haiku-4-5", "anthropic", 1),
    ("gpt-5-codex", "gpt-5-codex", "openai", 2),
    ("gpt-5", "gpt-5", "openai", 2),
    ("gemini-2.5-pro", "gemini-2.5-pro", "gemini", 3),
    # A model no catalogue knows: it shows up under "models without a price".
    ("acme-finetune-v2", "acme-finetune-v2", "openai", 2),
)
ENDPOINT = {
    "anthropic": "POST /v1/messages",
    "openai": "POST /v1/responses",
    "gemini": "POST /v1/chat/completions",
}


def quota_history(account_ids: list[int], now_ms: int) -> list[quota_store.SnapshotRow]:
    """Hourly window snapshots over 7 days: Claude 5 h / 7 d / 7 d opus, Codex primary / secondary."""
    rows = []
    plans = (
        (
            account_ids[0],
            (("five_hour", 18000, 62.0), ("seven_day", 604800, 48.0), ("seven_day_opus", 604800, 91.0)),
        ),
        (account_ids[1], (("five_hour", 18000, 97.0), ("seven_day", 604800, 83.0))),
        (account_ids[2], (("primary", 18000, 12.0), ("secondary", 604800, 35.0))),
    )
    for hours_ago in range(7 * 24, -1, -2):
        at = now_ms - hours_ago * HOUR_MS
        for account_id, windows in plans:
            for window, seconds, final in windows:
                # Utilization climbs towards `final` and drops back at each reset.
                cycle = seconds * 1000
                phase = (at % cycle) / cycle
                used = round(min(100.0, final * (0.35 + 0.65 * phase)), 1) if hours_ago else final
                reset = at - (at % cycle) + cycle
                rows.append(
                    quota_store.SnapshotRow(
                        account_id=account_id,
                        window=window,
                        used_percent=used,
                        remaining=None,
                        limit_value=None,
                        resets_at_ms=reset,
                        window_seconds=seconds,
                        limit_reached=used >= 100,
                        origin="oauth_usage",
                        extra=None,
                        fetched_ms=at,
                    )
                )
    return rows


def make_events(
    n: int, now_ms: int, account_ids: list[int], key_ids: list[int], seed: int = 11
) -> list[UsageEvent]:
    """n events over the last 8 days (busier recently and in working hours), gateway and CPA sources."""
    rnd = random.Random(seed)
    out: list[UsageEvent] = []
    start = now_ms - 8 * DAY_MS
    for i in range(n):
        # Skew towards recent times; keep a third of events in the last 24 h.
        ts = now_ms - rnd.randrange(0, DAY_MS) if i % 3 == 0 else rnd.randrange(start, now_ms)
        req, served, provider, acc_idx = rnd.choice(MODELS)
        observed = rnd.random() < 0.3
        failed = rnd.random() < 0.04
        inp = rnd.randrange(200, 6000)
        out_t = rnd.randrange(50, 2500)
        cache_read = rnd.choice((0, rnd.randrange(1000, 60000)))
        cache_write = rnd.choice((0, 0, rnd.randrange(100, 4000)))
        latency = rnd.randrange(300, 45000)
        stream = rnd.random() < 0.7
        ev = UsageEvent(
            event_hash=sha256_hex(f"browser-seed-{seed}-{i}"),
            ts_ms=ts,
            source="cpa:main" if observed else "gateway",
            request_id=f"req_{rnd.getrandbits(48):012x}",
            provider=provider,
            endpoint=ENDPOINT[provider],
            method="POST",
            path=ENDPOINT[provider].split(" ", 1)[1],
            model=req,
            actual_model=served,
            stream=stream,
            status_code=rnd.choice((429, 500, 529)) if failed else 200,
            failed=failed,
            error_kind="upstream_error" if failed else None,
            error_message="upstream answered 429: rate limit reached for requests" if failed else None,
            input_tokens=0 if failed else inp,
            output_tokens=0 if failed else out_t,
            reasoning_tokens=0 if failed else min(out_t, rnd.randrange(0, 400)),
            cache_read_tokens=0 if failed else cache_read,
            cache_creation_tokens=0 if failed else cache_write,
            latency_ms=latency,
            ttft_ms=min(latency, rnd.randrange(200, 2500)) if stream else None,
            cost_micros=0
            if failed
            else (inp * 3 + out_t * 15 + cache_read * 3 // 10 + cache_write * 375 // 100),
            client_ip=f"10.0.0.{rnd.randrange(2, 60)}",
            user_agent=rnd.choice(("claude-cli/2.0.14", "codex_cli_rs/0.46.0", "python-httpx/0.28")),
            raw_json=orjson.dumps(
                {"model": req, "usage": {"input_tokens": inp}, "api_key": "[redacted]"}
            ).decode(),
        )
        if observed:
            idx = rnd.randrange(3)
            ev.auth_index = f"{idx + 1:016x}"
            ev.account_label = f"cpa-user{idx + 1}@example.com"
            key_raw = f"sk-observed-{rnd.randrange(2)}-value"
            ev.api_key_hash = sha256_hex(key_raw)
            ev.api_key_prefix = key_raw[:7] + "..." + key_raw[-4:]
        else:
            ev.account_id = account_ids[acc_idx]
            ev.api_key_id = rnd.choice(key_ids)
        if served == "acme-finetune-v2" and not failed:
            ev.cost_micros, ev.price_missing = 0, True
        ev.recompute_total()
        out.append(ev)
    return out


async def seed(db_url: str, events: int = 3000, now_ms: int | None = None) -> dict[str, list[int]]:
    """Create accounts, keys and events in the store at db_url; returns the ids created."""
    now = now_ms or time.time_ns() // 1_000_000
    db = Database(db_url)
    try:
        await migrate.upgrade(db)
        account_ids = []
        for values in GATEWAY_ACCOUNTS:
            account_ids.append(
                await account_store.create_account(db, {**values, "external_id": f"seed:{values['name']}"})
            )
        key_ids = []
        for values in GATEWAY_KEYS:
            raw = f"rm-seed-{values['name']}-secret"
            key_ids.append(await key_store.create_key(db, sha256_hex(raw), raw[:10], dict(values)))
        await quota_store.insert_snapshots(db, quota_history(account_ids, now))
        writer = UsageWriter(db, batch_size=1000, linger_ms=5)
        writer.start()
        try:
            await writer.write(make_events(events, now, account_ids, key_ids))
        finally:
            await writer.close()
        return {"accounts": account_ids, "keys": key_ids}
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    ids = asyncio.run(seed(f"sqlite+aiosqlite:///{args.data_dir / 'relaymeter.db'}", args.events))
    print(orjson.dumps(ids).decode())


if __name__ == "__main__":
    main()
