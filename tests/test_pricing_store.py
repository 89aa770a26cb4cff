"""Stored prices: snapshot seeding, sync from a file, overrides, missing models, repricing with rollups."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from relaymeter.config import Settings
from relaymeter.domain.events import UsageEvent, normalize
from relaymeter.domain.pricing import price_from_usd
from relaymeter.ingest.writer import UsageWriter
from relaymeter.pricing import sync as price_sync
from relaymeter.store import prices as price_store
from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.schema import model_prices, usage_daily, usage_events, usage_hourly
from tests.conftest import running_app

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

CATALOGUE = {
    "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
    "claude-sonnet-4-5": {
        "litellm_provider": "anthropic",
        "input_cost_per_token": 4e-06,  # deliberately not the shipped $3
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
    },
    "acme/acme-large": {
        "litellm_provider": "acme",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
    },
    "dall-e-3": {"litellm_provider": "openai", "output_cost_per_image": 0.04},
    "bad-model": {"input_cost_per_token": -1},
}


def event(
    model: str, i: int, *, provider: str = "claude", inp: int = 1000, out: int = 100, hour: int = 0
) -> UsageEvent:
    return normalize(
        {
            "timestamp": (T0 + hour * HOUR + i * 1000) / 1000,
            "request_id": f"r{i}",
            "provider": provider,
            "model": model,
            "auth_index": "acc1",
            "source": "a@example.com",
            "api_key": "sk-client-1",
            "endpoint": "POST /v1/messages",
            "latency_ms": 100 + i,
            "tokens": {"input_tokens": inp, "output_tokens": out},
        },
        source="cpa:main",
    )


async def write(db: Database, events: list[UsageEvent]) -> None:
    writer = UsageWriter(db, linger_ms=0, pricer=await price_sync.prepare_pricer(db))
    writer.start()
    try:
        await writer.write(events)
    finally:
        await writer.close()


async def hourly_costs(db: Database) -> dict[tuple[int, str], int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(
                usage_hourly.c.hour_ms, usage_hourly.c.model, func.sum(usage_hourly.c.cost_micros)
            ).group_by(usage_hourly.c.hour_ms, usage_hourly.c.model)
        )
        return {(int(h), m): int(c) for h, m, c in rows}


async def event_costs(db: Database) -> dict[tuple[int, str], int]:
    """The same sums computed from raw events: rollups must always agree with them."""
    out: dict[tuple[int, str], int] = {}
    async with db.connect() as conn:
        for ts, model, actual, cost in await conn.execute(
            select(
                usage_events.c.ts_ms,
                usage_events.c.model,
                usage_events.c.actual_model,
                usage_events.c.cost_micros,
            )
        ):
            key = (int(ts) - int(ts) % HOUR, actual or model)
            out[key] = out.get(key, 0) + int(cost)
    return out


async def test_snapshot_is_stored_once(db: Database) -> None:
    assert await price_sync.ensure_snapshot(db) is True
    assert await price_sync.ensure_snapshot(db) is False
    entries = await price_store.load_entries(db, "snapshot")
    assert len(entries) == len(price_sync.load_snapshot().entries)
    pricer = await price_store.load_pricer(db)
    assert pricer.version is not None
    assert pricer.price("claude-sonnet-4-5-20250929", "claude") is not None


async def test_sync_from_file_and_precedence(db: Database, tmp_path: Path) -> None:
    await price_sync.ensure_snapshot(db)
    path = tmp_path / "prices.json"
    path.write_bytes(orjson.dumps(CATALOGUE))
    result = await price_sync.sync(db, file=path)
    assert (result.models, result.added, result.unpriced) == (2, 2, 1)
    assert [m for m, _ in result.skipped] == ["bad-model"]

    pricer = await price_store.load_pricer(db)
    found = pricer.price("claude-sonnet-4-5", "claude")
    assert found is not None and found.entry.origin == "synced" and found.entry.price.input == 4_000_000
    # An exact shipped key still beats a shortened synced one.
    found = pricer.price("claude-sonnet-4-5-20250929", "claude")
    assert found is not None and found.entry.origin == "snapshot" and found.entry.price.input == 3_000_000
    prefixed = pricer.price("acme-large", "acme")
    assert prefixed is not None and prefixed.how == "prefixed"

    await price_store.set_override(db, "claude-sonnet-4-5", "anthropic", price_from_usd(input=5, output=20))
    found = (await price_store.load_pricer(db)).price("claude-sonnet-4-5-20250929", "claude")
    assert found is not None and found.entry.origin == "override" and found.entry.price.input == 5_000_000

    assert await price_store.delete_override(db, "claude-sonnet-4-5") is True
    assert await price_store.delete_override(db, "claude-sonnet-4-5") is False
    found = (await price_store.load_pricer(db)).price("claude-sonnet-4-5-20250929", "claude")
    assert found is not None and found.entry.origin == "snapshot"

    # A second sync of a smaller file removes what is gone and leaves the rest alone.
    path.write_bytes(orjson.dumps({"claude-sonnet-4-5": CATALOGUE["claude-sonnet-4-5"]}))
    again = await price_sync.sync(db, file=path)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 1, 1)


async def test_sync_errors_are_clear(db: Database, tmp_path: Path) -> None:
    with pytest.raises(price_sync.SyncError, match="no such file"):
        await price_sync.sync(db, file=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("<html>rate limited</html>")
    with pytest.raises(price_sync.SyncError, match="not valid JSON"):
        await price_sync.sync(db, file=bad)
    with pytest.raises(price_sync.SyncError, match="http"):
        await price_sync.sync(db, url="ftp://example.invalid/prices.json")
    async with db.connect() as conn:
        synced = await conn.execute(select(func.count()).where(model_prices.c.origin == "synced"))
        assert synced.scalar_one() == 0


async def test_missing_lists_exactly_the_unpriced_models(db: Database) -> None:
    events = [
        event("claude-sonnet-4-5-20250929", 1),
        event("gpt-5-codex-high", 2, provider="codex"),
        event("mystery-model-1", 3, provider="openai"),
        event("mystery-model-1", 4, provider="openai"),
        event("house-llm-7b", 5, provider="local"),
        event("zero-token-model", 6, provider="openai", inp=0, out=0),
    ]
    await write(db, events)
    pricer = await price_store.load_pricer(db)
    missing = [
        m for m in await price_store.seen_models(db) if pricer.price(m["model"], m["provider"]) is None
    ]
    assert sorted(m["model"] for m in missing) == ["house-llm-7b", "mystery-model-1"]
    assert {m["model"]: m["requests"] for m in missing}["mystery-model-1"] == 2
    async with db.connect() as conn:
        flags = dict(
            (await conn.execute(select(usage_events.c.request_id, usage_events.c.price_missing))).all()
        )
    assert flags == {"r1": False, "r2": False, "r3": True, "r4": True, "r5": True, "r6": False}


async def test_reprice_updates_events_and_rollups(db: Database) -> None:
    events = [event("claude-sonnet-4-5-20250929", i, hour=i % 3) for i in range(30)]
    events += [event("mystery-model-1", 100 + i, provider="openai", hour=i % 2) for i in range(7)]
    await write(db, events)
    before = await price_store.count_events(db)
    assert before == 37
    # 1000 input at $3 + 100 output at $15 = 3000 + 1500 micro-USD per Claude event
    assert (await hourly_costs(db))[(T0, "claude-sonnet-4-5-20250929")] == 10 * 4500
    assert await hourly_costs(db) == await event_costs(db)

    await price_store.set_override(db, "claude-sonnet-4-5", "", price_from_usd(input=10, output=100))
    await price_store.set_override(db, "mystery-model-1", "", price_from_usd(input=1, output=1))
    seen: list[tuple[int, int]] = []
    stats = await price_store.reprice(
        db, await price_store.load_pricer(db), batch_size=8, progress=lambda d, t: seen.append((d, t))
    )
    assert (stats.scanned, stats.changed, stats.newly_priced, stats.now_missing) == (37, 37, 7, 0)
    assert seen[0] == (0, 37) and seen[-1] == (37, 37)
    # 1000*10 + 100*100 = 20000 per Claude event; 1000*1 + 100*1 = 1100 per mystery event
    costs = await hourly_costs(db)
    assert costs[(T0, "claude-sonnet-4-5-20250929")] == 10 * 20_000
    assert costs[(T0, "mystery-model-1")] == 4 * 1100
    assert costs == await event_costs(db)
    async with db.connect() as conn:
        daily = (await conn.execute(select(func.sum(usage_daily.c.cost_micros)))).scalar_one()
    assert daily == 30 * 20_000 + 7 * 1100
    total = (await queries.summary(db, T0, T0 + 3 * HOUR))["totals"]
    assert total["cost_micros"] == 30 * 20_000 + 7 * 1100
    assert total["requests"] == 37  # request and token sums are untouched
    assert total["input_tokens"] == 37 * 1000

    # Nothing changed since: a second run changes nothing.
    again = await price_store.reprice(db, await price_store.load_pricer(db))
    assert (again.scanned, again.changed) == (37, 0)


async def test_reprice_scope_by_time_and_model(db: Database) -> None:
    await write(
        db,
        [event("claude-sonnet-4-5", i, hour=i) for i in range(4)] + [event("gpt-4o", 10, provider="openai")],
    )
    await price_store.set_override(db, "claude-sonnet-4-5", "", price_from_usd(input=0, output=0))
    await price_store.set_override(db, "gpt-4o", "", price_from_usd(input=0, output=0))
    pricer = await price_store.load_pricer(db)
    stats = await price_store.reprice(db, pricer, since_ms=T0 + 2 * HOUR, models=["claude-sonnet-4-5"])
    assert (stats.total, stats.changed) == (2, 2)
    costs = await hourly_costs(db)
    assert costs[(T0 + 3 * HOUR, "claude-sonnet-4-5")] == 0
    assert costs[(T0 + HOUR, "claude-sonnet-4-5")] == 4500
    assert costs[(T0, "gpt-4o")] > 0
    assert costs == await event_costs(db)


async def test_concurrent_reprices_keep_rollups_consistent(db: Database) -> None:
    await write(db, [event("claude-sonnet-4-5", i, hour=i % 4) for i in range(40)])
    await price_store.set_override(db, "claude-sonnet-4-5", "", price_from_usd(input=7, output=7))
    pricer = await price_store.load_pricer(db)
    await asyncio.gather(*(price_store.reprice(db, pricer, batch_size=5) for _ in range(3)))
    assert await hourly_costs(db) == await event_costs(db)
    assert sum((await hourly_costs(db)).values()) == 40 * 7700


# --- API and CLI --------------------------------------------------------------------------------


async def test_prices_api(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (app, client):
        assert (await client.get("/api/prices")).status_code == 401
        assert (
            await client.post("/api/auth/login", json={"password": "test-admin-password"})
        ).status_code == 200
        state = app.state.rm
        await state.writer.write(
            [event("mystery-model-1", 1, provider="openai"), event("claude-sonnet-4-5", 2)]
        )

        listed = (await client.get("/api/prices", params={"q": "sonnet-4-5"})).json()
        assert {i["model"] for i in listed["items"]} >= {"claude-sonnet-4-5", "claude-sonnet-4-5-20250929"}
        assert listed["items"][0]["input"] == 3.0

        missing = (await client.get("/api/prices/missing")).json()
        assert [m["model"] for m in missing["items"]] == ["mystery-model-1"]

        bad = await client.put("/api/prices/mystery-model-1", json={"input": -1, "output": 1})
        assert bad.status_code == 422 and "input" in bad.json()["error"]["message"]
        bad = await client.put("/api/prices/mystery-model-1", json={"input": 1, "output": 1, "tier_input": 2})
        assert bad.status_code == 422 and "tier_threshold" in bad.json()["error"]["message"]

        res = await client.put(
            "/api/prices/mystery-model-1",
            json={"input": "2", "output": "8", "cache_read": "0.5", "service_tiers": {"priority": 2}},
        )
        assert res.status_code == 200, res.text
        assert res.json()["price"]["service_tiers"] == {"priority": 2.0}
        assert (await client.get("/api/prices/missing")).json()["items"] == []
        match = (await client.get("/api/prices/match", params={"model": "mystery-model-1-20260101"})).json()
        assert match["matched"] and match["key"] == "mystery-model-1" and match["how"] == "stripped"

        # New events are priced at once with the new price (the writer's pricer was reloaded).
        await state.writer.write([event("mystery-model-1", 3, provider="openai")])
        async with state.db.connect() as conn:
            cost = (
                await conn.execute(
                    select(usage_events.c.cost_micros).where(usage_events.c.request_id == "r3")
                )
            ).scalar_one()
        assert cost == 1000 * 2 + 100 * 8

        job = await client.post("/api/prices/reprice", json={"since": "3650d"})
        assert job.status_code == 202, job.text
        for _ in range(200):
            status = (await client.get("/api/prices/reprice")).json()
            if status["state"] != "running":
                break
            await asyncio.sleep(0.02)
        assert status["state"] == "done", status
        assert status["result"]["newly_priced"] == 1

        synced = await client.post("/api/prices/sync", json={"catalogue": CATALOGUE})
        assert synced.status_code == 200 and synced.json()["models"] == 2
        refused = await client.post(
            "/api/prices/sync", json={"catalogue": {"x": {"output_cost_per_image": 1}}}
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_catalogue"

        assert (await client.delete("/api/prices/mystery-model-1")).json() == {"deleted": True}
        assert (await client.delete("/api/prices/mystery-model-1")).status_code == 404
        assert (await client.post("/api/prices/reprice", json={"since": "yesterday-ish"})).status_code == 422


def test_prices_cli_sync_list_missing_set_reprice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relaymeter.cli import app as cli_app
    from relaymeter.cli import common

    monkeypatch.setenv("RELAYMETER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RELAYMETER_CONFIG", str(tmp_path / "none.toml"))
    common.set_config_path(None)
    catalogue = tmp_path / "litellm.json"
    catalogue.write_bytes(orjson.dumps(CATALOGUE))
    runner = CliRunner()

    records = [
        {
            "timestamp": "2026-01-01T10:00:00Z",
            "request_id": "r1",
            "provider": "openai",
            "model": "mystery-model-1",
            "auth_index": "acc1",
            "tokens": {"input_tokens": 1000, "output_tokens": 100},
        },
        {
            "timestamp": "2026-01-01T10:00:01Z",
            "request_id": "r2",
            "provider": "acme",
            "model": "acme-large",
            "auth_index": "acc1",
            "tokens": {"input_tokens": 1000, "output_tokens": 100},
        },
        {
            "timestamp": "2026-01-01T10:00:02Z",
            "request_id": "r3",
            "provider": "claude",
            "model": "x-9",
            "auth_index": "acc1",
            "tokens": {"input_tokens": 1000, "output_tokens": 100},
        },
        {
            "timestamp": "2026-01-01T10:00:03Z",
            "request_id": "r4",
            "provider": "claude",
            "model": "claude-sonnet-4-5-20250929",
            "auth_index": "acc1",
            "tokens": {"input_tokens": 1000, "output_tokens": 100},
        },
    ]
    usage_file = tmp_path / "usage.jsonl"
    usage_file.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")

    res = runner.invoke(cli_app, ["prices", "list", "--missing", "--json"])
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout) == []
    res = runner.invoke(cli_app, ["import", str(usage_file)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli_app, ["prices", "list", "--missing", "--json"])
    assert sorted(m["model"] for m in orjson.loads(res.stdout)) == ["acme-large", "mystery-model-1", "x-9"]

    res = runner.invoke(cli_app, ["prices", "sync", "--file", str(catalogue)])
    assert res.exit_code == 0, res.output
    assert "synced 2 priced models" in res.stdout
    res = runner.invoke(cli_app, ["prices", "list", "--missing", "--json"])
    assert sorted(m["model"] for m in orjson.loads(res.stdout)) == ["mystery-model-1", "x-9"]

    res = runner.invoke(cli_app, ["prices", "set", "x-9", "--input", "1", "--output", "abc"])
    assert res.exit_code == 1 and "output" in res.output
    res = runner.invoke(cli_app, ["prices", "set", "x-9", "--input", "1", "--output", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli_app, ["prices", "reprice", "--json"])
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = orjson.loads(res.stdout)
    assert (out["scanned"], out["newly_priced"], out["still_missing"]) == (4, 2, 1)
    assert out["missing_models"] == {"mystery-model-1": 1}
    res = runner.invoke(cli_app, ["prices", "list", "--search", "x-9", "--json"])
    assert [(r["model"], r["origin"], r["input"]) for r in orjson.loads(res.stdout)] == [
        ("x-9", "override", 1.0)
    ]
    res = runner.invoke(cli_app, ["prices", "unset", "nope"])
    assert res.exit_code == 1
