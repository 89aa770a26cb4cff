"""Runtime settings, audit log, dead letters, storage stats and retention (with SQLite space reclaim)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from relaymeter.config import Settings
from relaymeter.domain.windows import DAY_MS, now_ms
from relaymeter.retention import purge
from relaymeter.store import events as store_events
from relaymeter.store import maintenance, queries
from relaymeter.store.db import Database
from relaymeter.store.schema import usage_events
from tests.analytics_seed import make_events, seed
from tests.conftest import running_app


@pytest.fixture
async def admin(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with running_app(make_settings()) as (app, client):
        assert (
            await client.post("/api/auth/login", json={"password": "test-admin-password"})
        ).status_code == 200
        yield client, app.state.rm


async def test_runtime_settings_change_apply_and_survive_restart(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(timezone="UTC")
    async with running_app(settings) as (app, client):
        await client.post("/api/auth/login", json={"password": "test-admin-password"})
        body = (await client.get("/api/settings")).json()
        assert {i["key"] for i in body["items"]} == {
            "retention_days",
            "timezone",
            "week_start",
            "store_raw_payloads",
        }
        assert body["values"]["timezone"] == "UTC"
        res = await client.patch("/api/settings", json={"retention_days": 14, "timezone": "Asia/Kolkata"})
        assert res.status_code == 200, res.text
        item = {i["key"]: i for i in res.json()["items"]}
        assert item["retention_days"]["value"] == 14 and item["retention_days"]["source"] == "runtime"
        assert item["timezone"]["config_value"] == "UTC"
        assert app.state.rm.settings.retention_days == 14
        # analytics pick the new zone up at once
        summary = (await client.get("/api/summary", params={"range": "today"})).json()
        assert summary["range"]["tz"] == "Asia/Kolkata"
        audit = (await client.get("/api/audit", params={"action": "settings.update"})).json()
        assert audit["items"][0]["detail"] == {"retention_days": 14, "timezone": "Asia/Kolkata"}

    async with running_app(settings) as (app, client):  # same data dir: the values are stored
        await client.post("/api/auth/login", json={"password": "test-admin-password"})
        assert app.state.rm.settings.retention_days == 14
        res = await client.delete("/api/settings/timezone")
        assert res.json()["values"]["timezone"] == "UTC" and app.state.rm.settings.timezone == "UTC"
        assert (await client.delete("/api/settings/colour")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"retention_days": -1}, "retention_days"),
        ({"week_start": "friday"}, "week_start"),
        ({"colour": "blue"}, "colour"),
        ({"retention_days": None}, "retention_days"),
    ],
)
async def test_invalid_settings_name_the_field(
    admin: tuple[httpx.AsyncClient, Any], body: dict[str, Any], field: str
) -> None:
    client, state = admin
    res = await client.patch("/api/settings", json=body)
    assert res.status_code == 422, res.text
    assert res.json()["error"]["message"].startswith(field)
    assert state.settings.retention_days == 0


async def test_env_pinned_setting_is_read_only(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYMETER_RETENTION_DAYS", "30")
    async with running_app(make_settings()) as (_app, client):
        await client.post("/api/auth/login", json={"password": "test-admin-password"})
        item = next(
            i for i in (await client.get("/api/settings")).json()["items"] if i["key"] == "retention_days"
        )
        assert item["editable"] is False and item["value"] == 30 and item["source"].startswith("env ")
        res = await client.patch("/api/settings", json={"retention_days": 3})
        assert res.status_code == 409 and "RELAYMETER_RETENTION_DAYS" in res.json()["error"]["message"]
    os.environ.pop("RELAYMETER_RETENTION_DAYS", None)


async def test_dead_letters_list_page_get_delete(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    await store_events.add_dead_letters(
        state.db, "import", [(f"line {i}: bad json", '{"api_key": "sk-abcdefghijk"') for i in range(5)]
    )
    await store_events.add_dead_letters(state.db, "cpa:main", [("timestamp: missing", "{}")])
    page = (await client.get("/api/dead-letters", params={"limit": 2, "source": "import"})).json()
    assert page["total"] == 5 and len(page["items"]) == 2 and page["next_before_id"]
    rest = (
        await client.get(
            "/api/dead-letters", params={"source": "import", "before_id": page["next_before_id"]}
        )
    ).json()
    assert len(rest["items"]) == 3 and rest["next_before_id"] is None
    one = (await client.get(f"/api/dead-letters/{page['items'][0]['id']}")).json()
    assert one["reason"].startswith("line") and "sk-abcdefghijk" not in one["raw"]
    assert (await client.delete("/api/dead-letters", params={"source": "import"})).json() == {"deleted": 5}
    assert (await client.get("/api/dead-letters")).json()["total"] == 1
    assert (await client.get("/api/dead-letters/999999")).status_code == 404


async def count_events(db: Database) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(usage_events))).scalar_one())


async def test_purge_deletes_old_raw_events_keeps_rollups_and_reclaims_space(sqlite_db: Database) -> None:
    db = sqlite_db
    now = now_ms()
    events = make_events(6000, now - 60 * DAY_MS, now, seed=3)
    # payload-heavy events so the deleted rows free real pages
    for ev in events:
        ev.raw_json = '{"pad": "' + "x" * 600 + '"}'
    await seed(db, events)
    start_of_data = now - 60 * DAY_MS
    whole_before = await queries.summary(db, start_of_data - DAY_MS, now + 1)
    cutoff = now - 20 * DAY_MS
    expected_left = sum(1 for e in events if e.ts_ms >= cutoff)
    pages_before = (await maintenance.sqlite_pragmas(db))["page_count"]
    assert (await maintenance.sqlite_pragmas(db))["auto_vacuum"] == 2

    deleted, freed = await purge(db, cutoff, batch=250, pause_s=0, vacuum_pages=100)
    assert deleted == len(events) - expected_left
    assert await count_events(db) == expected_left
    async with db.connect() as conn:
        oldest = (await conn.execute(select(func.min(usage_events.c.ts_ms)))).scalar_one()
    assert oldest >= cutoff
    assert freed > 0
    after = await maintenance.sqlite_pragmas(db)
    assert after["page_count"] < pages_before and after["freelist_count"] < 100
    # Whole hours come from rollups, which retention keeps: old totals are unchanged.
    assert (await queries.summary(db, start_of_data - DAY_MS, now + 1))["totals"] == whole_before["totals"]
    # Nothing to do the second time.
    assert await purge(db, cutoff, batch=250, pause_s=0) == (0, 0)


async def test_writers_proceed_while_purge_runs(sqlite_db: Database) -> None:
    db = sqlite_db
    now = now_ms()
    await seed(db, make_events(4000, now - 30 * DAY_MS, now - 10 * DAY_MS, seed=4))
    order: list[str] = []

    async def writer() -> None:
        for i in range(5):
            await store_events.insert_batch(db, make_events(20, now - 1000, now, seed=100 + i))
            order.append("write")
            await asyncio.sleep(0)

    async def purger() -> None:
        await purge(db, now - DAY_MS, batch=100, pause_s=0.005)
        order.append("purge")

    await asyncio.gather(purger(), writer())
    assert order.index("purge") == len(order) - 1  # every write finished while the purge was still going
    assert await count_events(db) == 100


async def test_storage_and_retention_run_via_api(admin: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = admin
    now = now_ms()
    events = make_events(300, now - 10 * DAY_MS, now, seed=9)
    await seed(state.db, events)
    body = (await client.get("/api/system/storage", params={"sizes": "true"})).json()
    assert body["rows"]["usage_events"] == 300 and body["backend"] == "sqlite"
    assert body["table_bytes"]["usage_events"] > 0 and body["sqlite"]["auto_vacuum"] == "incremental"
    assert body["retention"]["runs"] == 0
    skipped = (await client.post("/api/system/retention/run")).json()
    assert skipped["skipped"] and skipped["deleted"] == 0
    await client.patch("/api/settings", json={"retention_days": 5})
    done = (await client.post("/api/system/retention/run")).json()
    assert done["deleted"] == sum(1 for e in events if e.ts_ms < done["cutoff_ms"]) > 0
    left = (await client.get("/api/system/storage")).json()
    assert left["rows"]["usage_events"] == 300 - done["deleted"]
    assert left["oldest_event_ms"] >= done["cutoff_ms"]
    assert left["retention"]["runs"] == 2 and left["retention"]["last"]["deleted"] == done["deleted"]
