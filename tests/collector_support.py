"""Helpers shared by the collector and import/export tests: an AppState on a test database."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import func, select

from relaymeter.config import load_settings
from relaymeter.ingest.cliproxy.runner import ConnectionRunner, ConnectionSettings
from relaymeter.ingest.writer import UsageWriter
from relaymeter.security import SecretBox
from relaymeter.state import AppState
from relaymeter.store.db import Database
from relaymeter.store.schema import collector_spool, dead_letters, usage_events


@asynccontextmanager
async def app_state(db: Database, tmp_path: Path, **overrides: Any) -> AsyncIterator[AppState]:
    """A running writer and secret box on ``db``, like the app's lifespan opens them."""
    overrides.setdefault("data_dir", tmp_path / "data")
    overrides.setdefault("admin_password", "test-admin-password")
    settings = load_settings(tmp_path / "no-config.toml", **overrides)
    writer = UsageWriter(db, batch_size=1000, linger_ms=5, retry_base_s=0.01)
    writer.start()
    state = AppState(
        settings=settings,
        db=db,
        writer=writer,
        box=SecretBox(Fernet.generate_key()),
        started_ms=time.time_ns() // 1_000_000,
    )
    try:
        yield state
    finally:
        await writer.close()


def runner_for(
    state: AppState,
    url: str,
    *,
    name: str = "main",
    key: str = "mgmt-secret",
    holder: str = "test:1:aa",
    **kw: Any,
) -> ConnectionRunner:
    return ConnectionRunner(
        ConnectionSettings(name=name, base_url=url, management_key=key, **kw),
        db=state.db,
        writer=state.writer,
        holder=holder,
    )


async def count(db: Database, table: Any = usage_events, *where: Any) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def rows(db: Database, table: Any, *where: Any, order: Any = None) -> list[dict[str, Any]]:
    stmt = select(table).where(*where)
    if order is not None:
        stmt = stmt.order_by(order)
    async with db.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def spool_size(db: Database) -> int:
    return await count(db, collector_spool)


async def dead_letter_rows(db: Database) -> list[dict[str, Any]]:
    return await rows(db, dead_letters, order=dead_letters.c.id)


async def wait_until(check: Callable[[], Any], *, timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll ``check`` (sync or async) until it is truthy; fail after a generous timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
