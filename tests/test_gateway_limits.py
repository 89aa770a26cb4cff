"""Key limits under load: concurrency, budgets with reservations, RPM, key state, caps, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest

from relaymeter.config import Settings
from relaymeter.domain.events import UsageEvent
from relaymeter.domain.redact import sha256_hex
from tests.fakes.gateway_env import ADMIN_TOKEN, GatewayEnv, gateway_env

COST_PER_TOKEN = 100  # micro-USD, FakePricer
ANTHROPIC_TOTAL = 1328  # tokens of one fake Anthropic answer
REQUEST_COST = ANTHROPIC_TOTAL * COST_PER_TOKEN


class FakePricer:
    """Every token costs 100 micro-USD (the real pricer lives elsewhere; budgets only need a cost)."""

    def apply(self, events: Sequence[UsageEvent]) -> None:
        for ev in events:
            ev.cost_micros = ev.total_tokens * COST_PER_TOKEN


@pytest.fixture
async def env(make_settings: Callable[..., Settings]) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(make_settings(admin_token=ADMIN_TOKEN, timezone="UTC")) as environment:
        yield environment


def message(stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


async def test_fifty_concurrent_requests_never_exceed_max_concurrency_five(env: GatewayEnv) -> None:
    await env.add_account()
    key_id, secret = await env.create_key(max_concurrency=5)
    env.anthropic.delay_s = 0.3
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        results = await asyncio.gather(*(client.post("/v1/messages", json=message()) for _ in range(50)))
    statuses = [r.status_code for r in results]
    assert env.anthropic.max_in_flight <= 5
    assert statuses.count(200) >= 5 and statuses.count(200) + statuses.count(429) == 50
    refused = next(r for r in results if r.status_code == 429)
    body = refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert (
        body["error"]["limit"] == "concurrency" and "5 requests already in flight" in body["error"]["message"]
    )
    assert refused.headers["x-relaymeter-limit"] == "concurrency"
    assert env.gateway.key_usage(key_id)["in_flight"] == 0  # every slot was given back
    # refused requests never reached an account and left no usage event
    assert len(await env.events()) == statuses.count(200)


async def test_budget_under_concurrent_load_is_exceeded_by_less_than_one_request(env: GatewayEnv) -> None:
    env.state.writer.pricer = FakePricer()
    await env.add_account()
    limit_usd = 1.0
    key_id, secret = await env.create_key(daily_limit_usd=limit_usd)
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        first = await client.post("/v1/messages", json=message())  # teaches the key what a request costs
        assert first.status_code == 200
        env.anthropic.delay_s = 0.4
        results = await asyncio.gather(*(client.post("/v1/messages", json=message()) for _ in range(50)))
        statuses = [r.status_code for r in results]
        admitted = statuses.count(200)
        spent = env.gateway.key_usage(key_id)["spend_micros"]["day"]
        assert spent == (admitted + 1) * REQUEST_COST
        limit = round(limit_usd * 1_000_000)
        assert limit <= spent < limit + REQUEST_COST, "overrun is bounded by the requests admitted in flight"
        assert statuses.count(402) == 50 - admitted and admitted < 10
        refused = next(r for r in results if r.status_code == 402)
        error = refused.json()["error"]
        assert error["type"] == "billing_error" and error["limit"] == "budget_day"
        assert "daily budget exhausted" in error["message"] and "resets" in error["message"]
        again = await client.post("/v1/messages", json=message())
        assert again.status_code == 402
    view = (await env.admin.get(f"/api/keys/{key_id}")).json()
    assert view["usage"]["spend_micros"]["day"] == spent
    assert view["daily_limit_usd"] == limit_usd


def pin_clock(env: GatewayEnv) -> int:
    """Freeze the gateway's clock in the middle of a minute (rate windows become deterministic)."""
    now = env.gateway.clock()
    pinned = now - now % 60_000 + 30_000
    env.gateway.clock = lambda: pinned
    return pinned


async def test_rpm_limit_says_when_it_resets(env: GatewayEnv) -> None:
    await env.add_account(provider="openai")
    _key_id, secret = await env.create_key(rpm=3)
    pin_clock(env)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(
        base_url=env.url, headers={"authorization": f"Bearer {secret}"}, timeout=30
    ) as client:
        codes = [(await client.post("/v1/chat/completions", json=body)).status_code for _ in range(3)]
        limited = await client.post("/v1/chat/completions", json=body)
    assert codes == [200, 200, 200]
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["limit"] == "rpm"
    assert "rpm limit reached" in error["message"] and error["resets_at"]
    assert int(limited.headers["retry-after"]) == 30  # the clock is pinned mid-minute


async def test_tpm_limit_counts_tokens_of_finished_requests(env: GatewayEnv) -> None:
    await env.add_account(provider="openai")
    key_id, secret = await env.create_key(tpm=500)  # one fake OpenAI answer is 160 tokens
    pin_clock(env)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(
        base_url=env.url, headers={"authorization": f"Bearer {secret}"}, timeout=30
    ) as client:
        codes = [(await client.post("/v1/chat/completions", json=body)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 429]  # 640 tokens used after four requests
    assert env.gateway.key_usage(key_id)["tpm_used"] == 640


async def test_disabled_revoked_and_expired_keys_stop_at_once(env: GatewayEnv) -> None:
    await env.add_account()
    key_id, secret = await env.create_key()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        assert (await client.post("/v1/messages", json=message())).status_code == 200
        assert (await env.admin.post(f"/api/keys/{key_id}/disable")).status_code == 200
        denied = await client.post("/v1/messages", json=message())
        assert denied.status_code == 401 and "disabled" in denied.json()["error"]["message"]
        assert (await env.admin.post(f"/api/keys/{key_id}/enable")).status_code == 200
        assert (await client.post("/v1/messages", json=message())).status_code == 200
        assert (
            await env.admin.patch(f"/api/keys/{key_id}", json={"expires_at": "2001-01-01T00:00:00Z"})
        ).status_code == 200
        assert "expired" in (await client.post("/v1/messages", json=message())).json()["error"]["message"]
        await env.admin.patch(f"/api/keys/{key_id}", json={"expires_at": None})
        assert (await env.admin.post(f"/api/keys/{key_id}/revoke")).status_code == 200
        revoked = await client.post("/v1/messages", json=message())
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
        again = await env.admin.post(f"/api/keys/{key_id}/enable")
        assert again.status_code == 409


async def test_account_daily_request_cap(env: GatewayEnv) -> None:
    account = await env.add_account(daily_request_cap=2)
    _key_id, secret = await env.create_key()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        codes = [(await client.post("/v1/messages", json=message())).status_code for _ in range(3)]
    assert codes == [200, 200, 503]
    snap = next(a for a in env.gateway.snapshot() if a["id"] == account["id"])
    assert snap["today"]["requests"] == 2 and snap["today"]["request_cap"] == 2
    assert "daily request cap reached" in snap["unavailable_reason"]


async def test_client_disconnect_mid_stream_records_a_cancelled_event(env: GatewayEnv) -> None:
    account = await env.add_account()
    key_id, secret = await env.create_key()
    env.anthropic.hold = asyncio.Event()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        async with client.stream("POST", "/v1/messages", json=message(stream=True)) as resp:
            assert resp.status_code == 200
            received = b""
            async for chunk in resp.aiter_bytes():
                received += chunk
                if received.count(b"content_block_delta") >= 3:
                    break
    # the client is gone: relaymeter hangs up on the upstream and records what was streamed
    await asyncio.wait_for(env.anthropic.disconnected.wait(), 10)
    for _ in range(100):
        events = await env.events()
        if events:
            break
        await asyncio.sleep(0.05)
    env.anthropic.hold.set()
    assert len(events) == 1
    event = events[0]
    assert event["error_kind"] == "cancelled" and event["status_code"] == 499 and event["failed"]
    assert event["input_tokens"] == 21 and event["cache_read_tokens"] == 1000  # from message_start
    assert event["output_tokens"] >= 3  # deltas streamed before the client left
    assert event["account_id"] == account["id"] and event["api_key_id"] == key_id
    assert env.gateway.key_usage(key_id)["in_flight"] == 0
    assert env.gateway.pool.accounts[account["id"]].in_flight == 0


async def test_spend_so_far_is_seeded_from_the_store(env: GatewayEnv) -> None:
    env.state.writer.pricer = None
    key_id, secret = await env.create_key(daily_limit_usd=0.5, total_limit_usd=10)
    now = env.gateway.clock()
    events = [
        UsageEvent(
            event_hash=sha256_hex(f"seed-{i}"),
            ts_ms=now - 1000 * i,
            source="gateway",
            api_key_id=key_id,
            model="claude-x",
            input_tokens=10,
            cost_micros=200_000,
        )
        for i in range(3)
    ]
    await env.state.writer.write(events)
    await env.gateway.seed_counters()
    usage = env.gateway.key_usage(key_id)
    assert usage["spend_micros"]["day"] == 600_000 and usage["spend_micros"]["total"] == 600_000
    await env.add_account()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        refused = await client.post("/v1/messages", json=message())
    assert refused.status_code == 402 and "$0.60" in refused.json()["error"]["message"]
