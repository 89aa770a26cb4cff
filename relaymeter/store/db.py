"""Database handle: async engine for SQLite (pragmas on every connection) or PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from relaymeter.store.sqlite_writer import SqliteWriter

# Python's sqlite3 looks up an adapter for every parameter that is not exactly int, float, str or
# bytes; for None and bool the lookup fails the slow way (it builds error messages) and cost more
# than the row insert itself. Registered adapters turn those lookups into one dict hit.
sqlite3.register_adapter(type(None), lambda value: value)
sqlite3.register_adapter(bool, int)

SQLITE_PRAGMAS = (
    # Takes effect only on a new (empty) file; lets retention give space back (store/maintenance).
    "PRAGMA auto_vacuum=INCREMENTAL",
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=15000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
)
# The write path's own connection also checkpoints the WAL less often (every 10,000 pages, ~40 MB,
# instead of 1,000): a batch on a large store dirties thousands of pages (mostly of the random
# event_key index), and a page rewritten by the next batches is copied to the database file once
# per checkpoint instead of once per batch. synchronous stays NORMAL: commits are as durable as
# before against a crash of the process; at a power loss, WAL mode with NORMAL may lose the
# commits since the last checkpoint, now a few batches instead of one.
MIN_SQLITE = (3, 38, 0)
SQLITE_WRITER_PRAGMAS = (*SQLITE_PRAGMAS, "PRAGMA wal_autocheckpoint=10000")


class Database:
    """One engine per process plus small caches the write path keeps (dimension ids)."""

    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = 10, pg_schema: str | None = None
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()  # 'sqlite' | 'postgresql'
        kwargs: dict[str, Any] = {"echo": echo}
        # The write path's own connection and thread (file-backed SQLite only: an in-memory
        # database is private to each connection).
        self.sqlite_writer: SqliteWriter | None = None
        if self.is_sqlite:
            if sqlite3.sqlite_version_info < MIN_SQLITE:
                raise RuntimeError(
                    f"relaymeter needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer (JSON functions, "
                    f"statements with thousands of parameters); this Python has {sqlite3.sqlite_version}"
                )
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                self.sqlite_writer = SqliteWriter(str(Path(database).expanduser()), SQLITE_WRITER_PRAGMAS)
            if database in ("", ":memory:"):
                kwargs["poolclass"] = NullPool
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
            if pg_schema:  # isolates tests (and tenants) in their own schema
                kwargs["connect_args"] = {"server_settings": {"search_path": pg_schema}}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_on_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_on_begin)
        # Serializes the write path's transactions inside this process (FIFO), so a pipelined
        # writer prepares the next batch while this one is in the database.
        self.write_lock = asyncio.Lock()
        # (origin, external_id) -> accounts.id and key_hash -> api_keys.id, filled after commit.
        self.account_ids: dict[tuple[str, str], int] = {}
        self.api_key_ids: dict[str, int] = {}
        # last_used_ms written per row, so the write path updates it at most once a second.
        self.account_last_used: dict[int, int] = {}
        self.api_key_last_used: dict[int, int] = {}

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """``async with db.begin() as conn``: one write transaction, committed on success.

        On SQLite it starts with BEGIN IMMEDIATE, so reads inside it see the latest data and
        no other writer can commit between them and the writes. Reads through ``connect()``
        start a plain (deferred) BEGIN and never block writers.
        """
        async with self.engine.connect() as conn:
            await conn.execution_options(relaymeter_write=True)
            async with conn.begin():
                yield conn

    def connect(self) -> Any:
        return self.engine.connect()

    async def dispose(self) -> None:
        if self.sqlite_writer is not None:
            await asyncio.to_thread(self.sqlite_writer.close)
        await self.engine.dispose()

    async def ping(self) -> bool:
        from sqlalchemy import text

        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from pysqlite so BEGIN is emitted by _sqlite_on_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    write = conn.get_execution_options().get("relaymeter_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


AsyncConn = AsyncConnection
