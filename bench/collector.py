"""Collector benchmark: drain N records queued in a fake CPA into a fresh store.

    .venv/bin/python bench/collector.py                          # 100,000 records, HTTP, SQLite
    .venv/bin/python bench/collector.py --mode resp --records 50000
    .venv/bin/python bench/collector.py --db postgres

The fake CPA runs in its own process (it serializes the queue, like CPA would); the collector
runs here exactly as in `relaymeter collect --once`: pop -> spool (fsync) -> normalize ->
write path -> unspool. Prints wall and CPU time, records/s, the share spent in normalize()
alone, and the machine's load (figures from a shared machine vary with its load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from procstat import cpu_seconds  # noqa: E402  # bench/procstat.py, beside this script
from sqlalchemy import text  # noqa: E402

from relaymeter.app import open_state  # noqa: E402
from relaymeter.config import load_settings  # noqa: E402
from relaymeter.domain.events import normalize  # noqa: E402
from relaymeter.ingest.cliproxy.records import RecordNormalizer  # noqa: E402
from relaymeter.ingest.cliproxy.runner import ConnectionRunner, ConnectionSettings  # noqa: E402
from relaymeter.ingest.writer import UsageWriter  # noqa: E402
from relaymeter.pricing.sync import prepare_pricer  # noqa: E402
from relaymeter.store import migrate  # noqa: E402
from relaymeter.store.db import Database  # noqa: E402
from tests.fakes.cpa import make_record  # noqa: E402

PG_URL = os.environ.get("RELAYMETER_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def start_fake(records: int, resp_only: bool) -> tuple[subprocess.Popen[str], int]:
    args = [sys.executable, "-m", "tests.fakes.cpa", "--records", str(records), "--retention", "3600"]
    if resp_only:
        args.append("--no-http-queue")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def normalize_cost_us(sample: int = 5000, keep_raw: bool = True) -> float:
    raws = [orjson.dumps(make_record(i)) for i in range(sample)]
    started = time.process_time()
    for raw in raws:
        normalize(orjson.loads(raw), source="cpa:bench", received_ms=0, keep_raw=keep_raw)
    return (time.process_time() - started) / sample * 1e6


async def open_store(args: argparse.Namespace, tmp: Path) -> tuple[Database, UsageWriter, str | None]:
    """The store and write path as `relaymeter collect` opens them (SQLite file or a PG schema)."""
    settings = load_settings(tmp / "no-config.toml", data_dir=tmp)
    schema = None
    if args.db == "postgres":
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = Database(PG_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await admin.dispose()
        db = Database(PG_URL, pg_schema=schema)
        await migrate.upgrade(db)
        writer = UsageWriter(
            db,
            batch_size=settings.writer_batch_size,
            linger_ms=settings.writer_linger_ms,
            pricer=await prepare_pricer(db),
        )
        return db, writer, schema
    state = await open_state(settings)
    return state.db, state.writer, None


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rm-bench-collector-"))
    proc, port = start_fake(args.records, args.mode == "resp")
    db, writer, schema = await open_store(args, tmp)
    writer.start()
    normalizer = RecordNormalizer(args.workers)
    try:
        runner = ConnectionRunner(
            ConnectionSettings(
                name="bench",
                base_url=f"http://127.0.0.1:{port}",
                management_key="mgmt-secret",
                mode=args.mode,
                batch_size=args.batch_size,
            ),
            db=db,
            writer=writer,
            holder="bench:0:00",
            keep_raw=not args.no_raw,
            normalizer=normalizer,
        )
        wall0, cpu0 = time.perf_counter(), time.process_time()
        status = await runner.run(once=True)
        await writer.flush()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        worker_cpu = sum(cpu_seconds(pid) or 0.0 for pid in normalizer.worker_pids())
        async with db.connect() as conn:
            stored = (await conn.execute(text("SELECT count(*) FROM usage_events"))).scalar_one()
    finally:
        normalizer.close()
        await writer.close()
        await db.dispose()
        proc.kill()
        proc.wait()
        if schema is not None:
            admin = Database(PG_URL)
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()

    if stored != args.records or status.dead_letters_total:
        raise SystemExit(f"drain incomplete: stored {stored} of {args.records} ({status.last_error})")
    per_record = normalize_cost_us(keep_raw=not args.no_raw)
    load = os.getloadavg()
    print(
        f"collector drain: {args.records:,} records via {status.transport}, batch {args.batch_size}, "
        f"{args.db}{', raw payloads off' if args.no_raw else ''}, {args.workers} normalize worker(s)"
    )
    print(f"  wall {wall:.2f} s = {args.records / wall:,.0f} records/s   (target: 100,000 in < 10 s)")
    print(
        f"  collector CPU {cpu:.2f} s (event loop + SQLite threads) + {worker_cpu:.2f} s in normalize "
        f"worker processes = {args.records / (cpu + worker_cpu):,.0f} records/s of CPU"
    )
    print(
        f"  normalize() alone: {per_record:.0f} us/record = {per_record * args.records / 1e6:.2f} s "
        f"of CPU for these records ({per_record * args.records / 1e6 / cpu:.0%} of the collector's)"
    )
    print(f"  machine: {os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} (shared)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--mode", choices=("http", "resp"), default="http")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--no-raw", action="store_true", help="store_raw_payloads = false")
    parser.add_argument(
        "--workers", type=int, default=1, help="normalize worker processes (collector_normalize_workers)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
