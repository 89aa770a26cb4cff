"""Two gateway instances share one set of limits through a real Redis (Lua scripts, expiring leases)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any

import httpx
import pytest

from relaymeter.config import Settings
from relaymeter.domain.limits import KeyLimits
from relaymeter.gateway.counters import RedisCounters
from relaymeter.http_protocol import http_protocol
from relaymeter.state import AppState
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gateway_env import ADMIN_TOKEN
from tests.fakes.upstream_base import serve_asgi
from tests.services import REDIS_URL, require_redis, unique_name
from tests.test_gateway_limits import REQUEST_COST, FakePricer, message

pytestmark = pytest.mark.redis


async def _drop_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def two_instances(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[Any, list[str], list[AppState]]]:
    """Two relaymeter apps (same store, same Redis prefix) in front of one fake upstream."""
    from relaymeter.app import create_app

    require_redis()
    prefix = unique_name("rmtest")
    settings = make_settings(
        admin_token=ADMIN_TOKEN,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        timezone="UTC",
        gateway_reload_interval_s=0.5,
    )
    upstream = FakeAnthropic()
    apps = [create_app(settings), create_app(settings)]
    try:
        async with (
            serve_asgi(upstream) as upstream_url,
            serve_asgi(apps[0], lifespan="on", http=http_protocol()) as url_a,
            serve_asgi(apps[1], lifespan="on", http=http_protocol()) as url_b,
        ):
            upstream.base_url = upstream_url  # type: ignore[attr-defined]
            yield upstream, [url_a, url_b], [apps[0].state.rm, apps[1].state.rm]
    finally:
        await _drop_prefix(prefix)


async def _setup(
    urls: list[str], states: list[AppState], upstream: Any, **key_fields: Any
) -> tuple[int, str]:
    async with httpx.AsyncClient(
        base_url=urls[0], headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as admin:
        res = await admin.post(
            "/api/accounts",
            json={
                "name": "shared",
                "provider": "anthropic",
                "api_key": "sk-up",
                "base_url": upstream.base_url,
            },
        )
        assert res.status_code == 201, res.text
        res = await admin.post("/api/keys", json={"name": "shared-key", **key_fields})
        assert res.status_code == 201, res.text
        secret: str = res.json()["key"]
        key_id = int(res.json()["api_key"]["id"])
    for state in states:  # the other instance would see it within the poll interval; do not wait
        await state.services["gateway"].reload()
    return key_id, secret


async def test_two_instances_share_one_concurrency_limit(make_settings: Callable[..., Settings]) -> None:
    async with two_instances(make_settings) as (upstream, urls, states):
        _key_id, secret = await _setup(urls, states, upstream, max_concurrency=5)
        upstream.delay_s = 0.3
        clients = [httpx.AsyncClient(base_url=u, headers={"x-api-key": secret}, timeout=30) for u in urls]
        try:
            results = await asyncio.gather(
                *(clients[i % 2].post("/v1/messages", json=message()) for i in range(50))
            )
        finally:
            for c in clients:
                await c.aclose()
        statuses = [r.status_code for r in results]
        assert upstream.max_in_flight <= 5, "both instances together never exceed the key's limit"
        assert statuses.count(200) >= 5 and statuses.count(200) + statuses.count(429) == 50
        # both instances refused some: the limit really is shared, not per instance
        assert {i % 2 for i, r in enumerate(results) if r.status_code == 429} == {0, 1}


async def test_two_instances_share_rpm_and_budget(make_settings: Callable[..., Settings]) -> None:
    async with two_instances(make_settings) as (upstream, urls, states):
        for state in states:
            state.writer.pricer = FakePricer()
        key_id, secret = await _setup(urls, states, upstream, rpm=4, daily_limit_usd=0.5)
        clients = [httpx.AsyncClient(base_url=u, headers={"x-api-key": secret}, timeout=30) for u in urls]
        try:
            codes = [
                (await clients[i % 2].post("/v1/messages", json=message())).status_code for i in range(3)
            ]
            assert codes == [200, 200, 200]
            # 3 requests * 132,800 micro-USD = $0.40 spent of $0.50: one more is admitted ...
            assert (await clients[1].post("/v1/messages", json=message())).status_code == 200
            # the 5th request in the minute is refused by the shared RPM, on either instance
            limited = await clients[0].post("/v1/messages", json=message())
            assert limited.status_code == 429 and limited.json()["error"]["limit"] == "rpm"
            for state in states:
                gateway = state.services["gateway"]
                await gateway.counters.refresh_views(gateway.clock())
                assert gateway.key_usage(key_id)["spend_micros"]["day"] == 4 * REQUEST_COST
            # lift the RPM: now the shared budget ($0.53 spent of $0.50) refuses, on both instances
            async with httpx.AsyncClient(
                base_url=urls[0], headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as admin:
                assert (await admin.patch(f"/api/keys/{key_id}", json={"rpm": 0})).status_code == 200
            await states[1].services["gateway"].reload()
            for client in clients:
                refused = await client.post("/v1/messages", json=message())
                assert refused.status_code == 402 and refused.json()["error"]["limit"] == "budget_day"
        finally:
            for c in clients:
                await c.aclose()


async def test_a_crashed_instance_never_leaks_a_slot() -> None:
    require_redis()
    prefix = unique_name("rmtest")
    limits = KeyLimits(7, max_concurrency=1)
    crashed = RedisCounters(REDIS_URL, prefix, UTC, lease_ttl_s=1)
    survivor = RedisCounters(REDIS_URL, prefix, UTC, lease_ttl_s=1)
    try:
        assert await crashed.admit_key(limits, "lease-a", 0, _now()) is None
        denial = await survivor.admit_key(limits, "lease-b", 0, _now())
        assert denial is not None and denial.limit == "concurrency"
        # the crashed instance never releases nor renews; its lease expires
        await asyncio.sleep(1.2)
        assert await survivor.admit_key(limits, "lease-b", 0, _now()) is None
        await survivor.finish_key(limits, "lease-b", 0, 0, _now())
    finally:
        await crashed.redis.aclose()
        await survivor.redis.aclose()
        await _drop_prefix(prefix)


async def test_held_leases_are_renewed_while_a_request_runs() -> None:
    require_redis()
    prefix = unique_name("rmtest")
    limits = KeyLimits(8, max_concurrency=1)
    holder = RedisCounters(REDIS_URL, prefix, UTC, lease_ttl_s=3)
    other = RedisCounters(REDIS_URL, prefix, UTC, lease_ttl_s=3)
    await holder.start()
    try:
        assert await holder.admit_key(limits, "long", 0, _now()) is None
        await asyncio.sleep(4)  # longer than the lease: the renewal loop keeps it alive
        denial = await other.admit_key(limits, "x", 0, _now())
        assert denial is not None and denial.limit == "concurrency"
        await holder.finish_key(limits, "long", 0, 0, _now())
        assert await other.admit_key(limits, "x", 0, _now()) is None
    finally:
        await holder.close()
        await other.redis.aclose()
        await _drop_prefix(prefix)


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000
