"""Shared fixtures: a migrated store on SQLite and PostgreSQL, settings, and a running app."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from relaymeter.config import Settings, load_settings
from relaymeter.store import migrate
from relaymeter.store.db import Database
from tests.services import PG_URL, require_postgres, unique_name

# Tests never read the developer's own config file or env.
for _key in list(os.environ):
    if _key.startswith("RELAYMETER_") and not _key.startswith("RELAYMETER_TEST_"):
        del os.environ[_key]


@asynccontextmanager
async def open_db(kind: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, migrated database: a temp SQLite file, or a private schema in PostgreSQL."""
    if kind == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
        await migrate.upgrade(db)
        try:
            yield db
        finally:
            await db.dispose()
        return
    require_postgres()
    schema = unique_name("rm")
    admin = Database(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = Database(PG_URL, pg_schema=schema, pool_size=4)
    try:
        await migrate.upgrade(db)
        yield db
    finally:
        await db.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def db(db_kind: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated store; every test using it runs on SQLite and on PostgreSQL."""
    async with open_db(db_kind, tmp_path) as database:
        yield database


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    async with open_db("sqlite", tmp_path) as database:
        yield database


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated in tmp_path (no user config file), with overrides as keyword args."""

    def factory(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("admin_password", "test-admin-password")
        overrides.setdefault("writer_linger_ms", 5)
        return load_settings(tmp_path / "no-config.toml", **overrides)

    return factory


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The ASGI app with its lifespan running, and an httpx client bound to it in-process."""
    from relaymeter.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


@pytest.fixture
async def app_client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client already logged in as admin (SQLite store in tmp_path)."""
    async with running_app(make_settings()) as (_app, client):
        res = await client.post("/api/auth/login", json={"password": "test-admin-password"})
        assert res.status_code == 200, res.text
        yield client
