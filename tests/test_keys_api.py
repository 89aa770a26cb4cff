"""Admin API for client API keys: shown once, hashed at rest, limits, observed keys never authenticate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from sqlalchemy import select

from relaymeter.config import Settings
from relaymeter.domain.events import UsageEvent
from relaymeter.domain.redact import mask_key, sha256_hex
from relaymeter.store.schema import api_keys
from tests.fakes.gateway_env import ADMIN_TOKEN, GatewayEnv, gateway_env


@pytest.fixture
async def env(make_settings: Callable[..., Settings]) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(make_settings(admin_token=ADMIN_TOKEN)) as environment:
        yield environment


async def test_key_is_shown_once_and_stored_as_a_hash(env: GatewayEnv) -> None:
    res = await env.admin.post(
        "/api/keys",
        json={"name": "ci", "remark": "build bots", "rpm": 60, "daily_limit_usd": 3, "models": ["claude-*"]},
    )
    assert res.status_code == 201
    body = res.json()
    secret = body["key"]
    assert secret.startswith("sk-rm-") and len(secret) > 40
    view = body["api_key"]
    assert view["prefix"] == mask_key(secret) and view["daily_limit_usd"] == 3.0 and view["rpm"] == 60
    assert view["usable"] is True and view["usage"]["in_flight"] == 0
    async with env.state.db.connect() as conn:
        row = (await conn.execute(select(api_keys.c.key_hash, api_keys.c.prefix, api_keys.c.origin))).one()
    assert row == (sha256_hex(secret), mask_key(secret), "gateway")
    again = await env.admin.get(f"/api/keys/{view['id']}")
    assert secret not in again.text and sha256_hex(secret) not in again.text
    assert secret not in (await env.admin.get("/api/keys")).text


async def test_edit_validation_and_delete(env: GatewayEnv) -> None:
    key_id, secret = await env.create_key(name="k", tpm=1000)
    bad = await env.admin.post("/api/keys", json={"name": "x", "rpm": -1})
    assert bad.status_code == 422 and "rpm" in bad.json()["error"]["message"]
    unknown = await env.admin.post("/api/keys", json={"name": "x", "budget": 5})
    assert unknown.status_code == 422 and "budget" in unknown.json()["error"]["message"]
    res = await env.admin.patch(
        f"/api/keys/{key_id}", json={"tpm": 0, "monthly_limit_usd": 40, "name": "renamed"}
    )
    assert res.status_code == 200
    assert (res.json()["tpm"], res.json()["monthly_limit_micros"], res.json()["name"]) == (
        0,
        40_000_000,
        "renamed",
    )
    assert env.gateway.keys_by_id[key_id].limits.budgets == {"month": 40_000_000}
    assert (await env.admin.patch(f"/api/keys/{key_id}", json={"monthly_limit_usd": None})).json()[
        "monthly_limit_micros"
    ] is None
    assert (await env.admin.get("/api/keys/999")).status_code == 404
    assert (await env.admin.delete(f"/api/keys/{key_id}")).status_code == 204
    assert env.gateway.lookup_key(secret) is None


async def test_observed_keys_are_listed_but_never_authenticate(env: GatewayEnv) -> None:
    await env.add_account()
    observed_secret = "sk-client-key-as-configured-in-cpa"
    event = UsageEvent(
        event_hash=sha256_hex("observed-1"),
        ts_ms=env.gateway.clock(),
        source="cpa:main",
        api_key_hash=sha256_hex(observed_secret),
        api_key_prefix=mask_key(observed_secret),
        model="claude-x",
    )
    await env.state.writer.write([event])
    keys = (await env.admin.get("/api/keys?origin=observed")).json()["keys"]
    assert len(keys) == 1 and keys[0]["origin"] == "observed" and keys[0]["usable"] is False
    observed_id = keys[0]["id"]
    assert (await env.admin.patch(f"/api/keys/{observed_id}", json={"rpm": 5})).status_code == 409
    await env.gateway.reload()
    async with httpx.AsyncClient(base_url=env.url) as client:
        res = await client.post(
            "/v1/messages",
            headers={"x-api-key": observed_secret},
            content=orjson.dumps({"model": "claude-x", "max_tokens": 5, "messages": []}),
        )
    assert res.status_code == 401 and res.json()["error"]["message"] == "invalid API key"
    gateway_only = (await env.admin.get("/api/keys?origin=gateway")).json()["keys"]
    assert gateway_only == []
