"""A real Redis server standing in for CPA's RESP side (list `usage` in logical db 9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from relaymeter.ingest.cliproxy.resp import RespQueue
from relaymeter.ingest.cliproxy.runner import ConnectionRunner, ConnectionSettings
from relaymeter.store.db import Database
from relaymeter.store.schema import usage_events
from tests.collector_support import app_state, count, rows, spool_size
from tests.fakes.cpa import FakeCPA, make_record
from tests.services import require_redis

REDIS_DB = 9  # only this logical database is flushed

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_db() -> AsyncIterator[aioredis.Redis]:
    require_redis()
    client = aioredis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


def _queue() -> RespQueue:
    return RespQueue("127.0.0.1", 6379, password=None, db=REDIS_DB)


async def test_resp_queue_pops_oldest_first_and_nil_means_empty(redis_db: aioredis.Redis) -> None:
    records = [orjson.dumps(make_record(i)).decode() for i in range(5)]
    for raw in records:
        await redis_db.lpush("usage", raw)
    queue = _queue()
    try:
        first = await queue.pop(3)
        assert first.items == records[:3]  # raw texts, parsed only after they are spooled
        assert orjson.loads(first.spool_text()) == records[:3]
        assert (await queue.pop(10)).items == records[3:]
        empty = await queue.pop(10)  # plain Redis answers nil, CPA answers *0
        assert len(empty) == 0 and not empty.truncated
    finally:
        await queue.close()


async def test_collector_drains_a_real_redis_list(
    db: Database, tmp_path: Path, redis_db: aioredis.Redis
) -> None:
    await redis_db.lpush("usage", *[orjson.dumps(make_record(i)).decode() for i in range(1200)])
    await redis_db.lpush("usage", "{broken")
    async with FakeCPA(http_queue=False) as fake, app_state(db, tmp_path) as state:
        runner = ConnectionRunner(
            ConnectionSettings(name="redis", base_url=fake.url, management_key="mgmt-secret", batch_size=500),
            db=state.db,
            writer=state.writer,
            holder="test:1:aa",
            resp_queue=_queue(),
        )
        status = await runner.run(once=True)
        assert status.transport == "resp"
        assert (status.consumed_total, status.inserted_total, status.dead_letters_total) == (1201, 1200, 1)
        assert await redis_db.llen("usage") == 0
        assert await count(db) == 1200
        assert await spool_size(db) == 0
        stored = await rows(db, usage_events)
        assert {e["source"] for e in stored} == {"cpa:redis"}
