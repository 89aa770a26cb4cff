"""Reprice benchmark: load N synthetic events, change every model's price, time `prices reprice`.

    .venv/bin/python bench/reprice.py --events 1000000            # SQLite in a temp dir
    .venv/bin/python bench/reprice.py --events 1000000 --db postgres

Loading is not timed. The timed part is store.prices.reprice over all events (every event's
cost changes), the same code `relaymeter prices reprice` runs. Afterwards it checks that the
hourly rollups' cost equals the sum over raw events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from bench.ingest import MODELS, drop_schema, open_db, synthetic_events
from relaymeter.domain.pricing import price_from_usd
from relaymeter.ingest.writer import UsageWriter
from relaymeter.pricing.sync import prepare_pricer
from relaymeter.store import prices as price_store
from relaymeter.store.schema import usage_events, usage_hourly


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--batch", type=int, default=5000, help="events per reprice transaction")
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()

    events = synthetic_events(args.events, args.days)
    with tempfile.TemporaryDirectory(prefix="rm-bench-") as tmp:
        db, schema = await open_db(args.db, Path(tmp))
        try:
            writer = UsageWriter(db, batch_size=2000, linger_ms=20, pricer=await prepare_pricer(db))
            writer.start()
            t0 = time.perf_counter()
            for start in range(0, len(events), 50_000):
                await writer.write(events[start : start + 50_000])
            await writer.close()
            print(
                f"loaded {writer.stats.written:,} priced events in {time.perf_counter() - t0:.1f} s (not counted)"
            )
            del events

            for _provider, model in MODELS:  # every stored cost changes
                await price_store.set_override(db, model, "", price_from_usd(input="3.3", output="16.5"))
            pricer = await price_store.load_pricer(db)

            t0, c0 = time.perf_counter(), time.process_time()
            stats = await price_store.reprice(db, pricer, batch_size=args.batch)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(
                f"reprice ({args.db}): {stats.scanned:,} events ({stats.changed:,} changed) in {elapsed:.1f} s "
                f"= {stats.scanned / elapsed:,.0f} events/s (batch {args.batch}; "
                f"this process used {cpu:.1f} s CPU incl. the SQLite thread; load average {os.getloadavg()[0]:.1f})"
            )
            async with db.connect() as conn:
                rolled = (await conn.execute(select(func.sum(usage_hourly.c.cost_micros)))).scalar_one()
                raw = (await conn.execute(select(func.sum(usage_events.c.cost_micros)))).scalar_one()
            print(f"rollup cost == event cost: {int(rolled) == int(raw)} (${int(raw) / 1e6:,.2f})")
        finally:
            await db.dispose()
            if schema:
                await drop_schema(schema)


if __name__ == "__main__":
    asyncio.run(main())
