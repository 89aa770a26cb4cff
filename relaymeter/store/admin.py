"""Admin credentials and sessions: password hash in settings, session tokens stored hashed."""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select

from relaymeter.security import sha256
from relaymeter.store.db import Database
from relaymeter.store.schema import admin_sessions
from relaymeter.store.settings import get_setting, set_setting

PASSWORD_KEY = "admin.password_hash"


async def get_password_hash(db: Database) -> str | None:
    value = await get_setting(db, PASSWORD_KEY)
    return value if isinstance(value, str) else None


async def set_password_hash(db: Database, value: str) -> None:
    await set_setting(db, PASSWORD_KEY, value)


async def create_session(db: Database, token: str, ttl_ms: int, client_ip: str | None) -> None:
    now = time.time_ns() // 1_000_000
    async with db.begin() as conn:
        await conn.execute(delete(admin_sessions).where(admin_sessions.c.expires_ms < now))
        await conn.execute(
            insert(admin_sessions),
            {
                "token_hash": sha256(token),
                "created_ms": now,
                "expires_ms": now + ttl_ms,
                "client_ip": client_ip,
            },
        )


async def session_valid(db: Database, token: str) -> bool:
    now = time.time_ns() // 1_000_000
    async with db.connect() as conn:
        row = (
            await conn.execute(
                select(admin_sessions.c.expires_ms).where(admin_sessions.c.token_hash == sha256(token))
            )
        ).first()
    return bool(row and row[0] > now)


async def delete_session(db: Database, token: str) -> None:
    async with db.begin() as conn:
        await conn.execute(delete(admin_sessions).where(admin_sessions.c.token_hash == sha256(token)))


async def delete_all_sessions(db: Database) -> None:
    async with db.begin() as conn:
        await conn.execute(delete(admin_sessions))
