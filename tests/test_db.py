"""Database handle behaviour that users notice: reads never hold up the write path."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from relaymeter.store.db import Database
from relaymeter.store.settings import get_setting, set_setting


async def test_an_open_read_does_not_block_writes(db: Database) -> None:
    async with db.connect() as reader:
        await reader.execute(text("SELECT count(*) FROM usage_events"))
        # with a write lock taken by the read this would wait for the busy timeout (15 s)
        await asyncio.wait_for(set_setting(db, "probe", 1), timeout=3)
    assert await get_setting(db, "probe") == 1
