"""`relaymeter serve --workers N`: shared counters across processes, and two real workers serving."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from relaymeter.domain.limits import AccountCaps, KeyLimits
from relaymeter.gateway.scheduler import MESSAGES, Account, AccountPool
from relaymeter.gateway.sessions import session_hash
from relaymeter.gateway.shared_counters import SharedCounters, SharedTable
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.upstream_base import free_port, serve_asgi

ADMIN_TOKEN = "test-admin-token-0123456789"
NOW = 1_760_000_000_000


def _pair(tmp_path: Path) -> tuple[SharedTable, SharedCounters, SharedCounters]:
    table = SharedTable(tmp_path / "counters.bin", create=True, workers=2, keys=64, accounts=16)
    tz = ZoneInfo("UTC")
    # Each worker opens the file on its own (own mapping, own slot cache), as processes do.
    return (
        table,
        SharedCounters(SharedTable(table.path), 0, tz),
        SharedCounters(SharedTable(table.path), 1, tz),
    )


async def test_limits_are_shared_and_a_dead_workers_slots_come_back(tmp_path: Path) -> None:
    table, a, b = _pair(tmp_path)
    limits = KeyLimits(1, max_concurrency=2)
    assert await a.admit_key(limits, "a1", 0, NOW) is None
    assert await b.admit_key(limits, "b1", 0, NOW) is None
    denial = await a.admit_key(limits, "a2", 0, NOW)
    assert denial is not None and denial.limit == "concurrency"
    assert b.key_view(1, NOW)["in_flight"] == 2
    await b.finish_key(limits, "b1", 0, 0, NOW)
    assert await a.admit_key(limits, "a2", 0, NOW) is None
    # Worker 0 dies holding a1 and a2: the supervisor gives both slots back.
    table.release_worker(0)
    assert b.key_view(1, NOW)["in_flight"] == 0
    assert await b.admit_key(limits, "b2", 0, NOW) is None

    budget = KeyLimits(2, budgets={"day": 1_000})
    assert await a.admit_key(budget, "x", 0, NOW) is None
    await a.finish_key(budget, "x", 1_000, 50, NOW)
    denial = await b.admit_key(budget, "y", 0, NOW)
    assert denial is not None and denial.limit == "budget_day"
    assert b.key_view(2, NOW)["spend_micros"]["day"] == 1_000

    caps = AccountCaps(7, 1, None, None, None)
    assert await a.acquire_account(caps, "l1", NOW) is None
    assert await b.acquire_account(caps, "l2", NOW) is not None
    await a.release_account(caps, "l1", served=True, tokens=10, cost=5, now_ms=NOW)
    assert await b.acquire_account(caps, "l2", NOW) is None
    view = a.account_view(7, NOW)
    assert (view.in_flight, view.requests, view.tokens, view.cost) == (1, 2, 10, 5)


async def test_finish_gives_back_the_account_slot_and_the_key_lease_in_one_step(tmp_path: Path) -> None:
    _table, a, b = _pair(tmp_path)
    limits = KeyLimits(3, max_concurrency=1, budgets={"day": 10_000})
    caps = AccountCaps(9, 1, None, None, None)
    assert await a.admit_key(limits, "k1", 500, NOW) is None
    assert await a.acquire_account(caps, "a1", NOW) is None
    assert b.key_view(3, NOW)["reserved_micros"] == 500
    await a.finish(limits, "k1", caps, "a1", tokens=40, cost=700, now_ms=NOW)
    view = b.key_view(3, NOW)
    assert (view["in_flight"], view["reserved_micros"], view["spend_micros"]["day"]) == (0, 0, 700)
    acc = b.account_view(9, NOW)
    assert (acc.in_flight, acc.requests, acc.tokens, acc.cost) == (0, 1, 40, 700)
    # Without an account (nothing was relayed): only the key lease.
    assert await b.admit_key(limits, "k2", 0, NOW) is None
    await b.finish(limits, "k2", None, "", tokens=0, cost=0, now_ms=NOW)
    assert a.key_view(3, NOW)["in_flight"] == 0
    assert a.account_view(9, NOW).requests == 1


def _worker_pool(path: Path, clock: list[int]) -> AccountPool:
    """One worker's scheduler: its own mapping of the table, its own accounts and load."""
    table = SharedTable(path)
    pool = AccountPool(sticky_ttl_ms=60_000, clock=lambda: clock[0])
    pool.sessions = table.session_bindings()
    pool.replace(Account(id=i, name=f"a{i}", provider="anthropic", kind="api_key") for i in (1, 2, 3))
    return pool


def test_a_session_sticks_to_one_account_across_workers(tmp_path: Path) -> None:
    table = SharedTable(tmp_path / "counters.bin", create=True, workers=2, keys=8, accounts=8, sessions=64)
    clock = [NOW]
    a, b = _worker_pool(table.path, clock), _worker_pool(table.path, clock)
    bound = a.pick(MESSAGES, "m", session="conv-1")
    assert bound is not None
    # Worker b has its own load figures: left to itself it would pick another account.
    b.accounts[bound.id].in_flight = 5
    assert b.pick(MESSAGES, "m").id != bound.id  # type: ignore[union-attr]
    for _ in range(5):
        assert b.pick(MESSAGES, "m", session="conv-1").id == bound.id  # type: ignore[union-attr]
        assert a.pick(MESSAGES, "m", session="conv-1").id == bound.id  # type: ignore[union-attr]
    # The bound account cools down in worker b: the session moves there, and worker a follows.
    b.set_cooldown(bound.id, NOW + 30_000, "429", "rate_limit")
    moved = b.pick(MESSAGES, "m", session="conv-1")
    assert moved is not None and moved.id != bound.id
    assert a.sessions.get("conv-1", NOW) == moved.id
    # Bindings expire after the sticky TTL, in every worker.
    clock[0] = NOW + 61_000
    assert a.sessions.get("conv-1", clock[0]) is None
    assert b.sessions.get("conv-1", clock[0]) is None


def test_shared_session_slots_are_replaced_not_misread(tmp_path: Path) -> None:
    table = SharedTable(tmp_path / "counters.bin", create=True, workers=1, keys=8, accounts=8, sessions=1)
    one = table.session_bindings()
    other = SharedTable(table.path).session_bindings()
    one.bind("s1", 7, NOW + 1_000)
    assert other.get("s1", NOW) == 7
    # One slot: a second session takes it over; the first reads as unbound, not as account 9.
    other.bind("s2", 9, NOW + 1_000)
    assert one.get("s2", NOW) == 9
    assert one.get("s1", NOW) is None
    # An entry caught half-written (hash cleared first) reads as unbound.
    table.q[table.session_base] = 0
    assert one.get("s2", NOW) is None
    assert session_hash("s2") == session_hash("s2") > 0


class Recording:
    """Wraps the fake upstream to see which upstream connections (relay workers) called it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.peers: set[tuple[str, int]] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.peers.add(tuple(scope["client"]))
        await self.app(scope, receive, send)


async def _wait_up(url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert proc.returncode is None, "relaymeter serve exited"
            try:
                if (await client.get(url + "/api/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("relaymeter serve --workers 2 did not start")


async def test_two_workers_serve_record_usage_and_share_a_concurrency_limit(tmp_path: Path) -> None:
    upstream = FakeAnthropic(delay_s=0.3)
    recording = Recording(upstream)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYMETER_")}
    env.update(
        RELAYMETER_DATA_DIR=str(tmp_path),
        RELAYMETER_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAYMETER_ADMIN_PASSWORD="test-password-123",
        RELAYMETER_COLLECTOR_ENABLED="false",
        RELAYMETER_GATEWAY_RELOAD_INTERVAL_S="0.5",
        RELAYMETER_LOG_LEVEL="warning",
    )
    url = f"http://127.0.0.1:{port}"
    async with serve_asgi(recording) as upstream_url:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaymeter", "serve", "--port", str(port), "--workers", "2", env=env
        )
        try:
            await _wait_up(url, proc)
            async with httpx.AsyncClient(
                base_url=url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
            ) as admin:
                res = await admin.post(
                    "/api/accounts",
                    json={
                        "name": "up",
                        "provider": "anthropic",
                        "api_key": "sk-up",
                        "base_url": upstream_url,
                    },
                )
                assert res.status_code == 201, res.text
                res = await admin.post("/api/keys", json={"name": "limited", "max_concurrency": 2})
                assert res.status_code == 201, res.text
                key = res.json()["key"]
            await asyncio.sleep(2.5)  # both workers reload the new account and key
            body = {"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "connection": "close"}

            async def one() -> int:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:  # a new connection each
                    return (await client.post("/v1/messages", json=body, headers=headers)).status_code

            statuses = [await one() for _ in range(16)]
            assert statuses == [200] * 16
            assert len(recording.peers) == 2  # each worker keeps its own upstream connection: both served
            burst = await asyncio.gather(*(one() for _ in range(8)))
            assert upstream.max_in_flight <= 2  # the key's limit held across the two processes
            assert burst.count(429) >= 1 and burst.count(200) >= 2, burst
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 0
    with sqlite3.connect(tmp_path / "relaymeter.db") as db:
        rows = db.execute(
            "SELECT status_code, input_tokens, output_tokens FROM usage_events WHERE source = 'gateway'"
        ).fetchall()
    assert len(rows) == 16 + burst.count(200)  # one event per admitted request, from both workers
    assert {r[0] for r in rows} == {200}
    assert {(r[1], r[2]) for r in rows} == {(21, 7)}
