"""Ingest benchmark: N synthetic events through the single write path, then summary latency.

    .venv/bin/python bench/ingest.py --events 1000000            # SQLite in a temp dir
    .venv/bin/python bench/ingest.py --events 1000000 --db postgres

Prints events/s through UsageWriter (generation excluded) and the latency of summary
queries over the loaded store (median and max of several runs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.windows import resolve_range
from relaymeter.ingest.writer import UsageWriter
from relaymeter.store import migrate, queries
from relaymeter.store.db import Database

PG_URL = os.environ.get("RELAYMETER_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
MODELS = [
    ("claude", "claude-sonnet-4-5-20250929"),
    ("claude", "claude-opus-4-1-20250805"),
    ("claude", "claude-haiku-4-5-20251001"),
    ("codex", "gpt-5-codex"),
    ("codex", "gpt-5"),
    ("openai", "gpt-4.1-mini"),
    ("gemini", "gemini-2.5-pro"),
    ("gemini", "gemini-2.5-flash"),
]
ENDPOINTS = ["POST /v1/messages", "POST /v1/chat/completions", "POST /v1/responses", "POST /v1beta/models"]


def synthetic_events(n: int, days: int, seed: int = 7) -> list[UsageEvent]:
    """Time-ordered events over the last ``days`` days from a pool like a real one: 12 accounts,
    40 API keys, 8 models, 4 endpoints; each key mostly uses one endpoint and two models, and is
    served by two or three accounts of its provider."""
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000
    span = days * 86_400_000
    step = span / max(n, 1)
    key_models = {k: (MODELS[k % len(MODELS)], MODELS[(k * 3 + 1) % len(MODELS)]) for k in range(40)}
    events = []
    for i in range(n):
        key = rng.randrange(40)
        provider, model = key_models[key][0 if rng.random() < 0.8 else 1]
        account = (key * 7 + rng.randrange(3)) % 12
        inp = rng.randrange(50, 5000)
        out = rng.randrange(10, 2000)
        cache_read = rng.randrange(0, 40000) if provider == "claude" else rng.randrange(0, 2000)
        latency = int(rng.lognormvariate(7.5, 0.8))
        failed = rng.random() < 0.03
        ev = UsageEvent(
            event_hash=f"{rng.getrandbits(256):064x}",
            ts_ms=now - span + int(i * step),
            source="cpa:bench",
            request_id=f"{i:08x}",
            account_label=f"acct{account}@example.com",
            auth_index=f"{account:016x}",
            api_key_hash=f"{key:064x}",
            api_key_prefix=f"sk-b...{key:04d}",
            provider=provider,
            endpoint=ENDPOINTS[key % len(ENDPOINTS)],
            method="POST",
            path=ENDPOINTS[key % len(ENDPOINTS)][5:],
            model=model,
            actual_model=model,
            stream=bool(i % 2),
            status_code=500 if failed else 200,
            failed=failed,
            input_tokens=inp,
            output_tokens=out,
            reasoning_tokens=out // 4 if provider == "codex" else 0,
            cache_read_tokens=cache_read,
            cache_creation_tokens=rng.randrange(0, 3000) if provider == "claude" else 0,
            latency_ms=latency,
            ttft_ms=latency // 5,
            cost_micros=(inp * 3 + out * 15) // 1,
        )
        ev.recompute_total()
        events.append(ev)
    return events


async def open_db(kind: str, path: Path) -> tuple[Database, str | None]:
    if kind == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{path / 'bench.db'}")
        await migrate.upgrade(db)
        return db, None
    schema = f"bench_{os.getpid()}"
    admin = Database(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    await admin.dispose()
    db = Database(PG_URL, pg_schema=schema)
    await migrate.upgrade(db)
    return db, schema


async def drop_schema(schema: str) -> None:
    admin = Database(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await admin.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--runs", type=int, default=7, help="summary query repetitions")
    args = parser.parse_args()

    t0 = time.perf_counter()
    events = synthetic_events(args.events, args.days)
    gen_s = time.perf_counter() - t0
    # The million generated events are the bench's input, not the writer's state: keep the
    # cyclic GC from re-scanning them during the timed part (a server never holds them all).
    gc.collect()
    gc.freeze()
    print(f"generated {len(events):,} events in {gen_s:.1f} s (not counted)")

    with tempfile.TemporaryDirectory(prefix="rm-bench-") as tmp:
        db, schema = await open_db(args.db, Path(tmp))
        try:
            writer = UsageWriter(db, batch_size=args.batch, linger_ms=20)
            writer.start()
            t0 = time.perf_counter()
            for start in range(0, len(events), 50_000):
                for ev in events[start : start + 50_000]:
                    writer.submit(ev)
                while writer.depth > 100_000:  # noqa: ASYNC110 - backpressure poll in a bench
                    await asyncio.sleep(0.01)
            await writer.close()
            ingest_s = time.perf_counter() - t0
            rate = len(events) / ingest_s
            print(
                f"ingest ({args.db}): {len(events):,} events in {ingest_s:.1f} s = {rate:,.0f} events/s "
                f"(batch {args.batch}, written {writer.stats.written:,}, duplicates {writer.stats.duplicates})"
            )
            for name in ("today", "24h", "7d", "30d"):
                rng = resolve_range(name, tz="Asia/Kolkata")
                timings = []
                result = None
                for _ in range(args.runs):
                    t = time.perf_counter()
                    result = await queries.summary(db, rng.start_ms, rng.end_ms)
                    timings.append((time.perf_counter() - t) * 1000)
                assert result is not None
                print(
                    f"summary {name:>5} (tz Asia/Kolkata): median {statistics.median(timings):6.1f} ms, "
                    f"max {max(timings):6.1f} ms, {result['totals']['requests']:,} requests"
                )
        finally:
            await db.dispose()
            if schema:
                await drop_schema(schema)


if __name__ == "__main__":
    asyncio.run(main())
