"""Store functions for gateway accounts and keys, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.redact import sha256_hex
from relaymeter.store import accounts as account_store
from relaymeter.store import keys as key_store
from relaymeter.store.db import Database
from relaymeter.store.events import insert_batch


async def test_account_crud_identity_health_and_fingerprint(db: Database) -> None:
    ids = await account_store.create_accounts(
        db,
        [
            {"name": "a", "provider": "anthropic", "external_id": "key:anthropic:1", "models": ["claude-*"]},
            {"name": "b", "provider": "openai", "external_id": "key:openai:2", "model_map": {"x": "y"}},
        ],
    )
    before = await account_store.fingerprint(db)
    assert before[0] == 2
    with pytest.raises(account_store.AccountExists):
        await account_store.create_account(
            db, {"name": "c", "provider": "anthropic", "external_id": "key:anthropic:1"}
        )
    rows = await account_store.list_accounts(db)
    assert [(r["name"], r["models"], r["model_map"]) for r in rows] == [
        ("a", ["claude-*"], {}),
        ("b", None, {"x": "y"}),
    ]
    await asyncio.sleep(0.002)
    assert await account_store.update_account(db, ids[0], {"priority": 7, "models": None})
    assert (await account_store.fingerprint(db)) != before
    marked = await account_store.fingerprint(db)
    await account_store.save_health(
        db, [{"id": ids[1], "health": "cooldown", "health_reason": "429", "cooldown_until_ms": 5}]
    )
    assert await account_store.fingerprint(db) == marked  # runtime health is not an admin change
    row = await account_store.get_account(db, ids[1])
    assert row is not None and (row["health"], row["cooldown_until_ms"]) == ("cooldown", 5)
    assert await account_store.set_enabled(db, ids[1], False, by="user")
    assert (await account_store.get_account(db, ids[1]) or {})["disabled_by"] == "user"
    assert await account_store.update_many(db, None, {"daily_request_cap": 9}) == 2
    assert await account_store.delete_account(db, ids[0])
    assert [r["id"] for r in await account_store.list_accounts(db)] == [ids[1]]


async def test_spend_and_day_usage_come_from_rollups_and_edge_events(db: Database) -> None:
    key_id = await key_store.create_key(
        db, sha256_hex("sk-rm-x"), "sk-rm-...x", {"name": "k", "daily_limit_micros": 5}
    )
    acc_id = await account_store.create_account(
        db, {"name": "a", "provider": "anthropic", "external_id": "e"}
    )
    hour = 3_600_000
    base = 1_700_000_000_000 - 1_700_000_000_000 % hour
    events = [
        UsageEvent(
            event_hash=sha256_hex(f"e{i}"),
            ts_ms=ts,
            source="gateway",
            account_id=acc_id,
            api_key_id=key_id,
            model="m",
            input_tokens=10,
            output_tokens=5,
            total_tokens=15,
            cost_micros=1000,
        )
        for i, ts in enumerate((base + 10, base + hour + 5, base + 2 * hour + 30 * 60_000))
    ]
    await insert_batch(db, events)
    # from the middle of the first hour to the middle of the third: 2 events (rollup + edge)
    window = (base + 5, base + 2 * hour + 45 * 60_000)
    spend = await key_store.spend(db, [key_id], {"day": window, "total": (0, base + 10 * hour)})
    assert spend == {key_id: {"day": 3000, "total": 3000}}
    narrow = await key_store.spend(db, [key_id], {"day": (base + 11, base + 2 * hour)})
    assert narrow[key_id]["day"] == 1000
    usage = await account_store.day_usage(db, base, base + 3 * hour)
    assert usage == {acc_id: (3, 45, 3000)}
    found = await key_store.find_key(db, "k")
    assert found is not None and found["id"] == key_id
    assert (await key_store.find_key(db, str(key_id)) or {}).get("name") == "k"
