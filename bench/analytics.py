"""Analytics API latency over a large SQLite store (p50 / p95 per endpoint, in-process).

    .venv/bin/python bench/analytics.py --events 1000000          # builds bench/data/analytics-1m/
    .venv/bin/python bench/analytics.py --events 10000000 --requests 40

The store is generated once (time-ordered synthetic events over --days days ending now,
written in big batches through relaymeter.store.events.insert_batch: dedup, observed
accounts / keys, events, hourly + daily rollups) and kept under bench/data/ for the next run;
a reused store is topped up to the current time. Each endpoint is then called --requests
times through the ASGI app (admin bearer token, warm-up calls first) and p50 / p95 printed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import func, select

from relaymeter.app import create_app
from relaymeter.config import load_settings
from relaymeter.domain.events import UsageEvent
from relaymeter.store import events as store_events
from relaymeter.store import migrate
from relaymeter.store.db import Database
from relaymeter.store.schema import usage_events

DATA = Path(__file__).resolve().parent / "data"
TOKEN = "bench-admin-token"
PANEL_KEY = "bench-panel-key"
MODELS = [
    ("claude", "claude-sonnet-4-5-20250929"),
    ("claude", "claude-opus-4-1-20250805"),
    ("claude", "claude-haiku-4-5-20251001"),
    ("codex", "gpt-5-codex"),
    ("codex", "gpt-5"),
    ("codex", "gpt-5-mini"),
    ("openai", "gpt-4.1-mini"),
    ("openai", "o4-mini"),
    ("gemini", "gemini-2.5-pro"),
    ("gemini", "gemini-2.5-flash"),
    ("gemini", "gemini-2.5-flash-lite"),
    ("xai", "grok-4"),
]
ENDPOINTS = ["POST /v1/messages", "POST /v1/chat/completions", "POST /v1/responses", "POST /v1beta/models"]
KEYS = 300
ACCOUNTS = 40


class Generator:
    """Events from a pool like a busy real one: 300 API keys (Zipf-like use), 40 accounts,
    12 models, 4 endpoints; a key uses one endpoint and mostly two models, served by two
    accounts of the model's provider; traffic follows the time of day."""

    def __init__(self, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        weights = [1 / (k + 1) ** 0.9 for k in range(KEYS)]
        self.cum = list(itertools.accumulate(weights))
        self.key_models = {
            k: (MODELS[k % len(MODELS)], MODELS[(k * 5 + 3) % len(MODELS)]) for k in range(KEYS)
        }
        self.counter = 0

    def events(self, start_ms: int, end_ms: int, n: int) -> Iterator[UsageEvent]:
        rng = self.rng
        step = (end_ms - start_ms) / max(n, 1)
        for i in range(n):
            self.counter += 1
            key = bisect.bisect_left(self.cum, rng.random() * self.cum[-1])
            provider, model = self.key_models[key][0 if rng.random() < 0.8 else 1]
            account = (hash(provider) % 7 + key * 3 + rng.randrange(2)) % ACCOUNTS
            inp = rng.randrange(50, 5000)
            out = rng.randrange(10, 2000)
            latency = int(rng.lognormvariate(7.5, 0.9))
            failed = rng.random() < 0.04
            endpoint = ENDPOINTS[key % len(ENDPOINTS)]
            ev = UsageEvent(
                event_hash=f"{rng.getrandbits(256):064x}",
                ts_ms=start_ms + int(i * step),
                source="cpa:main" if account < 30 else "cpa:backup",
                request_id=f"{self.counter:08x}",
                account_label=f"acct{account}@example.com",
                auth_index=f"{account:016x}",
                api_key_hash=f"{key:064x}",
                api_key_prefix=f"sk-b...{key:04d}",
                provider=provider,
                endpoint=endpoint,
                method="POST",
                path=endpoint[5:],
                model=model,
                actual_model=model,
                stream=bool(i % 2),
                status_code=529 if failed else 200,
                failed=failed,
                error_message="upstream overloaded" if failed else None,
                input_tokens=inp,
                output_tokens=out,
                reasoning_tokens=out // 4 if provider == "codex" else 0,
                cache_read_tokens=rng.randrange(0, 40000) if provider == "claude" else rng.randrange(0, 2000),
                cache_creation_tokens=rng.randrange(0, 3000) if provider == "claude" else 0,
                latency_ms=latency,
                ttft_ms=latency // 5,
                cost_micros=inp * 3 + out * 15,
                raw_json=None,
            )
            ev.recompute_total()
            yield ev


async def event_span(db: Database) -> tuple[int, int, int]:
    async with db.connect() as conn:
        row = (
            await conn.execute(
                select(func.count(), func.min(usage_events.c.ts_ms), func.max(usage_events.c.ts_ms))
            )
        ).one()
    return int(row[0]), int(row[1] or 0), int(row[2] or 0)


async def fill(db: Database, start_ms: int, end_ms: int, n: int, batch: int, gen: Generator) -> float:
    """Insert n events spread over [start, end); returns events per second."""
    t0 = time.perf_counter()
    done = 0
    chunk_ms = (end_ms - start_ms) / max(n, 1) * batch
    for b in range(0, n, batch):
        size = min(batch, n - b)
        lo = start_ms + int(b // batch * chunk_ms)
        hi = lo + int(chunk_ms * size / batch)
        await store_events.insert_batch(db, list(gen.events(lo, max(hi, lo + 1), size)))
        done += size
        if (b // batch) % 20 == 0:
            rate = done / (time.perf_counter() - t0)
            print(f"  {done:,} / {n:,} events ({rate:,.0f}/s)", flush=True)
    return done / (time.perf_counter() - t0)


async def prepare(path: Path, events: int, days: int, batch: int) -> None:
    db = Database(f"sqlite+aiosqlite:///{path / 'relaymeter.db'}")
    try:
        await migrate.upgrade(db)
        count, _oldest, newest = await event_span(db)
        now = time.time_ns() // 1_000_000
        gen = Generator(seed=count + 11)
        if count == 0:
            print(f"generating {events:,} events over {days} days into {path} ...", flush=True)
            rate = await fill(db, now - days * 86_400_000, now, events, batch, gen)
            print(f"stored {events:,} events at {rate:,.0f} events/s", flush=True)
        elif newest < now - 60_000:
            extra = max(int((now - newest) * count / (days * 86_400_000)), 1)
            print(f"reusing {count:,} events; topping up {extra:,} events up to now", flush=True)
            await fill(db, newest + 1, now, extra, batch, gen)
        else:
            print(f"reusing {count:,} events", flush=True)
    finally:
        await db.dispose()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def bench(path: Path, requests: int, tz: str) -> list[tuple[str, float, float, int, float]]:
    cfg = load_settings(
        path / "none.toml",
        data_dir=path,
        admin_token=TOKEN,
        admin_password="bench-password",
        cpa_panel_key=PANEL_KEY,
        gateway_enabled=False,
        collector_enabled=False,
        timezone=tz,
    )
    app = create_app(cfg)
    results = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers, timeout=600
        ) as c:
            first = (await c.get("/api/requests", params={"limit": 50})).json()
            some_id = first["items"][10]["id"]
            cursor = first["next_cursor"]
            key_id = first["items"][0]["api_key_id"]
            cases: list[tuple[str, str, dict[str, Any]]] = [
                ("summary today", "/api/summary", {"range": "today"}),
                ("summary 24h", "/api/summary", {"range": "24h"}),
                ("summary 7d", "/api/summary", {"range": "7d"}),
                ("summary 30d", "/api/summary", {"range": "30d"}),
                (
                    "summary 7d model+failed",
                    "/api/summary",
                    {"range": "7d", "model": "gpt-5", "status": "failed"},
                ),
                ("timeseries 24h hour", "/api/timeseries", {"range": "24h", "bucket": "hour"}),
                ("timeseries 5h 5m", "/api/timeseries", {"range": "5h", "bucket": "5m"}),
                (
                    "timeseries 7d day by model",
                    "/api/timeseries",
                    {"range": "7d", "bucket": "day", "group_by": "model"},
                ),
                (
                    "timeseries 30d day by key",
                    "/api/timeseries",
                    {"range": "30d", "bucket": "day", "group_by": "api_key"},
                ),
                ("timeseries 7d hour", "/api/timeseries", {"range": "7d", "bucket": "hour"}),
                ("requests newest 50", "/api/requests", {"limit": 50}),
                ("requests page 2", "/api/requests", {"limit": 50, "cursor": cursor}),
                ("requests 24h failed", "/api/requests", {"range": "24h", "status": "failed", "limit": 50}),
                ("requests 7d by key", "/api/requests", {"range": "7d", "api_key": str(key_id), "limit": 50}),
                ("request detail", f"/api/requests/{some_id}", {}),
                ("keys usage", "/api/keys/usage", {}),
                ("accounts load", "/api/accounts/load", {}),
                ("overview", "/api/overview", {}),
                ("health", "/api/health", {}),
            ]
            for name, url, params in cases:
                for _ in range(2):
                    res = await c.get(url, params=params)
                    assert res.status_code == 200, (name, res.status_code, res.text[:300])
                times = []
                cpu = []
                for _ in range(requests):
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = await c.get(url, params=params)
                    times.append((time.perf_counter() - t0) * 1000)
                    cpu.append((time.process_time() - c0) * 1000)
                    assert res.status_code == 200, (name, res.text[:300])
                results.append(
                    (
                        name,
                        statistics.median(times),
                        pct(times, 0.95),
                        len(res.content),
                        statistics.median(cpu),
                    )
                )
                print(
                    f"{name:32s} p50 {results[-1][1]:7.1f} ms  p95 {results[-1][2]:7.1f} ms"
                    f"  CPU p50 {results[-1][4]:7.1f} ms",
                    flush=True,
                )
            panel_times = []
            panel_cpu = []
            for _ in range(max(3, requests // 5)):
                t0, c0 = time.perf_counter(), time.process_time()
                res = await c.get("/v0/management/usage", headers={"Authorization": f"Bearer {PANEL_KEY}"})
                panel_times.append((time.perf_counter() - t0) * 1000)
                panel_cpu.append((time.process_time() - c0) * 1000)
            results.append(
                (
                    "cpa panel usage (50k details)",
                    statistics.median(panel_times),
                    pct(panel_times, 0.95),
                    len(res.content),
                    statistics.median(panel_cpu),
                )
            )
            print(
                f"{'cpa panel usage (50k details)':32s} p50 {results[-1][1]:7.1f} ms  p95 {results[-1][2]:7.1f} ms"
            )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=30, help="timed calls per endpoint")
    parser.add_argument(
        "--tz",
        default="Asia/Kolkata",
        help="zone(s) of the ranges, comma-separated (a half-hour offset is the worst case)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="store directory (default bench/data/analytics-<N>)"
    )
    parser.add_argument("--build-only", action="store_true", help="build / top up the store, then stop")
    args = parser.parse_args()
    label = f"{args.events // 1_000_000}m" if args.events % 1_000_000 == 0 else str(args.events)
    path = args.data or DATA / f"analytics-{label}"
    path.mkdir(parents=True, exist_ok=True)
    await prepare(path, args.events, args.days, args.batch)
    if args.build_only:
        return
    zones = [z.strip() for z in args.tz.split(",") if z.strip()]
    results: dict[str, list[tuple[str, float, float, int, float]]] = {}
    load: dict[str, tuple[float, float, float]] = {}
    for tz in zones:
        print(f"--- {tz}", flush=True)
        cpu0 = time.process_time()
        results[tz] = await bench(path, args.requests, tz)
        load[tz] = os.getloadavg()
        print(f"process CPU {time.process_time() - cpu0:.1f} s; load average {load[tz][0]:.2f}", flush=True)
    count = await _count(path)
    print()
    heads = " | ".join(f"{tz} p50 / p95 (CPU p50) ms" for tz in zones)
    print(f"| endpoint ({count:,} events) | {heads} | response bytes |")
    print("|---|" + "---:|" * (len(zones) + 1))
    for i, (name, *_rest) in enumerate(results[zones[0]]):
        cells = " | ".join(
            f"{results[tz][i][1]:.0f} / {results[tz][i][2]:.0f} ({results[tz][i][4]:.0f})" for tz in zones
        )
        print(f"| {name} | {cells} | {results[zones[-1]][i][3]:,} |")
    print("load average (1 min) after each zone: " + ", ".join(f"{tz} {load[tz][0]:.2f}" for tz in zones))


async def _count(path: Path) -> int:
    db = Database(f"sqlite+aiosqlite:///{path / 'relaymeter.db'}")
    try:
        return (await event_span(db))[0]
    finally:
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
