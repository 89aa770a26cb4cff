"""UsageWriter: batching, results for bulk writers, retries, dead letters, flush on close."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import func, select

from relaymeter.domain.events import UsageEvent
from relaymeter.ingest.writer import UsageWriter
from relaymeter.store import events as store_events
from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.schema import usage_events
from tests.test_store_summary import BASE_MS, make_events


async def count_events(db: Database) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(usage_events))).scalar_one())


async def test_submitted_events_are_all_written_in_batches(db: Database) -> None:
    writer = UsageWriter(db, batch_size=100, linger_ms=5)
    writer.start()
    events = make_events(1050, seed=21)
    for ev in events:
        writer.submit(ev)
    await writer.flush()
    assert await count_events(db) == 1050
    assert writer.stats.batches >= 11
    await writer.close()


async def test_write_reports_new_and_duplicate(db: Database) -> None:
    writer = UsageWriter(db, batch_size=50, linger_ms=1)
    writer.start()
    events = make_events(80, seed=22)
    assert await writer.write(events[:40]) == [True] * 40
    assert await writer.write(events) == [False] * 40 + [True] * 40
    await writer.close()


async def test_close_flushes_everything_queued(sqlite_db: Database) -> None:
    writer = UsageWriter(sqlite_db, batch_size=500, linger_ms=10_000)
    writer.start()
    for ev in make_events(2000, seed=23):
        writer.submit(ev)
    await writer.close()
    assert await count_events(sqlite_db) == 2000


async def test_transient_failure_is_retried(sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store_events.insert_batch
    calls = {"n": 0}

    async def flaky(db: Database, events: Sequence[UsageEvent]) -> store_events.BatchResult:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("database went away")
        return await real(db, events)

    monkeypatch.setattr(store_events, "insert_batch", flaky)
    writer = UsageWriter(sqlite_db, batch_size=100, linger_ms=1, retry_base_s=0.01)
    writer.start()
    assert all(await writer.write(make_events(30, seed=24)))
    await writer.close()
    assert writer.stats.retries == 2 and writer.stats.dead_lettered == 0
    assert await count_events(sqlite_db) == 30


async def test_unstorable_event_goes_to_dead_letters_and_the_rest_is_stored(sqlite_db: Database) -> None:
    events = make_events(20, seed=25)
    events[7].input_tokens = 2**70  # cannot be stored in a BIGINT
    writer = UsageWriter(sqlite_db, batch_size=100, linger_ms=1, retry_base_s=0.01, max_retries=1)
    writer.start()
    for ev in events:
        writer.submit(ev)
    await writer.close()
    assert await count_events(sqlite_db) == 19
    assert writer.stats.dead_lettered == 1
    letters = await store_events.list_dead_letters(sqlite_db)
    assert len(letters) == 1 and events[7].event_hash in letters[0]["raw"]
    summary = await queries.summary(sqlite_db, BASE_MS - 1, BASE_MS + 10 * 86_400_000)
    assert summary["totals"]["requests"] == 19


async def test_write_raises_for_an_unstorable_event(sqlite_db: Database) -> None:
    ev = make_events(1, seed=26)[0]
    ev.output_tokens = 2**70
    writer = UsageWriter(sqlite_db, batch_size=10, linger_ms=1, retry_base_s=0.01, max_retries=0)
    writer.start()
    with pytest.raises(RuntimeError, match="store failed"):
        await writer.write([ev])
    await writer.close()


async def test_listeners_see_new_events_only(sqlite_db: Database) -> None:
    writer = UsageWriter(sqlite_db, batch_size=10, linger_ms=1)
    seen: list[UsageEvent] = []
    writer.listeners.append(seen.extend)
    writer.start()
    events = make_events(5, seed=27)
    await writer.write(events)
    await writer.write(events)
    await writer.close()
    assert sorted(e.event_hash for e in seen) == sorted(e.event_hash for e in events)
