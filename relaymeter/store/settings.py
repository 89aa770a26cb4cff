"""Key/value settings stored as JSON (admin password hash, UI preferences, runtime options)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import delete, select

from relaymeter.store.db import Database
from relaymeter.store.events import dialect_insert
from relaymeter.store.schema import settings


async def get_setting(db: Database, key: str, default: Any = None) -> Any:
    async with db.connect() as conn:
        row = (await conn.execute(select(settings.c.value_json).where(settings.c.key == key))).first()
    return orjson.loads(row[0]) if row else default


async def get_settings(db: Database, prefix: str = "") -> dict[str, Any]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(settings.c.key, settings.c.value_json).where(settings.c.key.startswith(prefix))
        )
        return {k: orjson.loads(v) for k, v in rows}


async def set_setting(db: Database, key: str, value: Any) -> None:
    now = time.time_ns() // 1_000_000
    stmt = dialect_insert(db, settings).values(
        key=key, value_json=orjson.dumps(value).decode(), updated_ms=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"], set_={"value_json": stmt.excluded.value_json, "updated_ms": now}
    )
    async with db.begin() as conn:
        await conn.execute(stmt)


async def delete_setting(db: Database, key: str) -> None:
    async with db.begin() as conn:
        await conn.execute(delete(settings).where(settings.c.key == key))
