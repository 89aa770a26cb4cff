"""The CPA collector against a fake CPA speaking CPA's HTTP and RESP wire formats."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from relaymeter.ingest.cliproxy.management import (
    CPAAuthError,
    CPABannedError,
    CPAError,
    ManagementClient,
    split_json_array,
)
from relaymeter.ingest.cliproxy.resp import RespQueue
from relaymeter.ingest.cliproxy.runner import Backoff, lease_name
from relaymeter.ingest.cliproxy.service import CollectorService
from relaymeter.store import collector as store
from relaymeter.store.db import Database
from relaymeter.store.schema import accounts, usage_events
from tests.collector_support import (
    app_state,
    count,
    dead_letter_rows,
    rows,
    runner_for,
    spool_size,
    wait_until,
)
from tests.fakes.cpa import FakeCPA, make_auth_file, make_record


async def test_http_queue_is_drained_and_accounts_are_named(db: Database, tmp_path: Path) -> None:
    async with FakeCPA() as fake, app_state(db, tmp_path) as state:
        fake.auth_files = [make_auth_file(i, provider="codex", plan="pro") for i in range(7)]
        fake.push_many([make_record(i) for i in range(1234)])
        before = (
            REGISTRY.get_sample_value("relaymeter_collector_records_consumed_total", {"connection": "main"})
            or 0
        )
        status = await runner_for(state, fake.url, batch_size=500).run(once=True)

        assert status.transport == "http"
        assert (status.consumed_total, status.inserted_total, status.dead_letters_total) == (1234, 1234, 0)
        assert status.cpa_version == "7.3.1" and status.retention_s == 60 and status.publishing_enabled
        assert await count(db) == 1234
        assert await spool_size(db) == 0
        assert len(fake.queue) == 0
        pops = [p for proto, p in fake.log if p == "GET /v0/management/usage-queue"]
        assert len(pops) == 3  # 500 + 500 + 234: a short batch ends the drain
        events = await rows(db, usage_events)
        assert {e["source"] for e in events} == {"cpa:main"}
        assert all(e["account_label"].startswith("user") for e in events)
        accts = await rows(db, accounts, accounts.c.origin == "cpa:main", order=accounts.c.external_id)
        assert len(accts) == 7
        assert accts[3]["external_id"] == f"{3:016x}"
        assert (accts[3]["name"], accts[3]["email"], accts[3]["plan"], accts[3]["provider"]) == (
            "user3@example.com",
            "user3@example.com",
            "pro",
            "codex",
        )
        after = REGISTRY.get_sample_value(
            "relaymeter_collector_records_consumed_total", {"connection": "main"}
        )
        assert after == before + 1234


async def test_resp_mode_authenticates_first_and_sends_no_extra_commands(
    sqlite_db: Database, tmp_path: Path
) -> None:
    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push_many([make_record(i) for i in range(700)])
        status = await runner_for(state, fake.url, mode="resp", batch_size=300).run(once=True)
        assert status.transport == "resp"
        assert status.inserted_total == 700
        resp_commands = [cmd for proto, cmd in fake.log if proto == "resp"]
        assert resp_commands[0] == "AUTH"
        assert set(resp_commands) == {"AUTH", "RPOP"}  # no HELLO, CLIENT SETINFO or PING
        assert await count(sqlite_db) == 700


async def test_auto_mode_falls_back_to_resp_when_http_queue_is_missing(
    sqlite_db: Database, tmp_path: Path
) -> None:
    async with FakeCPA(http_queue=False) as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push_many([make_record(i) for i in range(50)])
        status = await runner_for(state, fake.url, mode="auto").run(once=True)
        assert status.transport == "resp"
        assert status.errors_total == 0
        assert await count(sqlite_db) == 50
        assert ("http", "GET /v0/management/usage-queue") in fake.log  # tried HTTP first


async def test_http_mode_without_http_queue_is_a_config_error(sqlite_db: Database, tmp_path: Path) -> None:
    async with FakeCPA(http_queue=False) as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push(make_record(1))
        status = await asyncio.wait_for(runner_for(state, fake.url, mode="http").run(), 10)
        assert status.state == "config_error"
        assert "older than 6.10.8" in (status.last_error or "")
        assert len(fake.queue) == 1


@pytest.mark.parametrize("mode", ["http", "resp"])
async def test_empty_queue_is_not_an_error(sqlite_db: Database, tmp_path: Path, mode: str) -> None:
    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        status = await runner_for(state, fake.url, mode=mode).run(once=True)
        assert (status.consumed_total, status.errors_total, status.last_error) == (0, 0, None)
        assert status.last_poll_ms is not None
        assert await count(sqlite_db) == 0


@pytest.mark.parametrize("mode", ["http", "resp"])
async def test_refused_key_stops_the_connection_after_one_attempt(
    sqlite_db: Database, tmp_path: Path, mode: str
) -> None:
    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push(make_record(1))
        # Not once=True: a refused key must end even a long-running collector.
        status = await asyncio.wait_for(runner_for(state, fake.url, key="wrong", mode=mode).run(), 10)
        assert status.state == "auth_failed"
        assert "management key refused" in (status.last_error or "")
        assert sum(fake.failures.values()) == 1
        assert len(fake.queue) == 1


async def test_resp_auth_errors_and_ban_are_reported() -> None:
    async with FakeCPA() as fake:
        for _ in range(4):
            queue = RespQueue.for_cpa(fake.url, "wrong")
            with pytest.raises(CPAAuthError) as err:
                await queue.pop(10)
            assert not isinstance(err.value, CPABannedError)
            await queue.close()
        queue = RespQueue.for_cpa(fake.url, "wrong")
        with pytest.raises(CPAAuthError):
            await queue.pop(10)
        await queue.close()
        # The address is banned now: even the right key is refused, over HTTP too.
        async with ManagementClient(fake.url, "mgmt-secret") as cpa:
            with pytest.raises(CPABannedError, match="banned"):
                await cpa.get_config()
        queue = RespQueue.for_cpa(fake.url, "mgmt-secret")
        with pytest.raises(CPABannedError):
            await queue.pop(1)
        await queue.close()


async def test_resp_pop_without_auth_gets_noauth() -> None:
    async with FakeCPA() as fake:
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        writer.write(b"*3\r\n$4\r\nRPOP\r\n$5\r\nusage\r\n$2\r\n10\r\n")
        await writer.drain()
        assert await reader.readline() == b"-NOAUTH Authentication required.\r\n"
        writer.write(
            b"*2\r\n$4\r\nAUTH\r\n$11\r\nmgmt-secret\r\n*3\r\n$4\r\nRPOP\r\n$5\r\nqueue\r\n$1\r\n1\r\n"
        )
        await writer.drain()
        assert await reader.readline() == b"+OK\r\n"
        assert await reader.readline() == b"-ERR unsupported channel\r\n"
        writer.close()


async def test_malformed_records_become_dead_letters(db: Database, tmp_path: Path) -> None:
    async with FakeCPA() as fake, app_state(db, tmp_path) as state:
        fake.push(make_record(1))
        fake.push('{"timestamp": "2026-11-20T17:14:03Z", "model": "broken')  # CPA passes it as a JSON string
        fake.push({"timestamp": "yesterday", "model": "m", "api_key": "sk-secret-client-key-123"})
        fake.push({"timestamp": "2026-11-20T17:14:03Z", "tokens": {"input_tokens": -5}})
        fake.push("[1, 2]")
        fake.push(make_record(2))
        status = await runner_for(state, fake.url).run(once=True)

        assert (status.inserted_total, status.dead_letters_total) == (2, 4)
        assert await count(db) == 2
        assert await spool_size(db) == 0
        letters = await dead_letter_rows(db)
        assert [d["source"] for d in letters] == ["cpa:main"] * 4
        reasons = [d["reason"] for d in letters]
        assert "not valid JSON" in reasons[0] and '"model": "broken' in letters[0]["raw"]
        assert reasons[1].startswith("timestamp") and "yesterday" in letters[1]["raw"]
        assert "sk-secret-client-key-123" not in letters[1]["raw"]
        assert "negative" in reasons[2]
        assert "not a JSON object" in reasons[3]


async def test_live_record_without_timestamp_uses_receive_time(sqlite_db: Database, tmp_path: Path) -> None:
    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        record = make_record(5)
        del record["timestamp"]
        fake.push(record)
        status = await runner_for(state, fake.url).run(once=True)
        assert status.inserted_total == 1
        stored = (await rows(sqlite_db, usage_events))[0]
        assert abs(stored["ts_ms"] - (status.last_consumed_ms or 0)) < 5_000


async def test_http_connection_dropped_mid_batch_keeps_what_arrived(
    sqlite_db: Database, tmp_path: Path
) -> None:
    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push_many([make_record(i) for i in range(100)])
        fake.drop_next_pop = 30
        runner = runner_for(state, fake.url, batch_size=100)
        task = asyncio.create_task(runner.run())
        await wait_until(lambda: runner.status.errors_total > 0)
        assert runner.status.state in ("backoff", "running", "idle")
        assert "dropped mid-batch" in (runner.status.last_error or "")
        assert "30 complete records" in (runner.status.last_error or "")
        fake.push_many([make_record(i) for i in range(1000, 1050)])
        await wait_until(lambda: runner.status.inserted_total >= 80)
        runner.stop()
        await task
        # 30 salvaged + 50 later; the 70 CPA removed but never delivered are gone (CPA's pop is destructive).
        assert await count(sqlite_db) == 80
        assert fake.popped_total == 150
        assert await spool_size(sqlite_db) == 0


async def test_resp_connection_dropped_mid_batch_recovers(sqlite_db: Database, tmp_path: Path) -> None:
    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push_many([make_record(i) for i in range(20)])
        fake.drop_next_pop = 5
        runner = runner_for(state, fake.url, mode="resp", batch_size=20)
        task = asyncio.create_task(runner.run())
        await wait_until(lambda: runner.status.errors_total > 0)
        assert runner.status.last_error_kind == "unavailable"
        fake.push_many([make_record(i) for i in range(100, 110)])
        await wait_until(lambda: runner.status.inserted_total >= 10)
        runner.stop()
        await task
        assert await count(sqlite_db) == 10
        assert runner.status.state == "stopped"


def test_salvaging_a_cut_json_array() -> None:
    cut = split_json_array(b'[{"a": 1}, "not json", {"b": [1, 2]}, {"c": ')
    assert cut.truncated
    assert cut.items == [{"a": 1}, "not json", {"b": [1, 2]}]
    assert cut.spool_text() == '[{"a":1},"not json",{"b":[1,2]}]'
    whole = split_json_array(b'[{"a":1},"x"]')
    assert not whole.truncated and whole.items == [{"a": 1}, "x"] and whole.body == '[{"a":1},"x"]'
    odd = split_json_array(b'{"error": "not an array"}')
    assert odd.truncated and odd.items == ['{"error": "not an array"}']  # kept, to be dead-lettered


async def test_poll_interval_beyond_retention_is_refused(sqlite_db: Database, tmp_path: Path) -> None:
    async with FakeCPA(retention_s=10) as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push(make_record(1))
        status = await asyncio.wait_for(runner_for(state, fake.url, poll_interval_ms=6000).run(), 10)
        assert status.state == "config_error"
        assert "keeps queued usage records for 10 s" in (status.last_error or "")
        assert "at most 5 s" in (status.last_error or "")
        assert fake.popped_total == 0


async def test_publishing_off_is_reported(sqlite_db: Database, tmp_path: Path) -> None:
    async with FakeCPA(publishing=False) as fake, app_state(sqlite_db, tmp_path) as state:
        assert not fake.publish(make_record(1))
        status = await runner_for(state, fake.url).run(once=True)
        assert status.publishing_enabled is False
        assert any("publishing is off" in w for w in status.warnings)


async def test_full_batches_are_popped_back_to_back(sqlite_db: Database, tmp_path: Path) -> None:
    async with FakeCPA(retention_s=3600) as fake, app_state(sqlite_db, tmp_path) as state:
        fake.push_many([make_record(i) for i in range(1500)])
        runner = runner_for(state, fake.url, batch_size=500, poll_interval_ms=600_000)
        task = asyncio.create_task(runner.run())
        await wait_until(lambda: runner.status.state == "idle")
        # Idle is reached only after a short batch: three full pops and an empty one, no waiting.
        assert [p for _, p in fake.log].count("GET /v0/management/usage-queue") == 4
        assert await count(sqlite_db) == 1500
        runner.stop()
        await task


async def test_only_one_consumer_per_cpa(db: Database, tmp_path: Path) -> None:
    async with FakeCPA() as fake, app_state(db, tmp_path) as state:
        first = runner_for(state, fake.url, holder="hostA:1:aa")
        task = asyncio.create_task(first.run())
        await wait_until(lambda: first.status.state == "idle")
        second = runner_for(state, fake.url + "/", name="other", holder="hostB:2:bb")
        status = await second.run(once=True)
        assert status.state == "lease_wait"
        assert status.lease_holder == "hostA:1:aa:main"
        assert "only one consumer per CPA" in (status.last_error or "")
        first.stop()
        await task
        assert await store.get_lease(db, lease_name(fake.url)) is None  # released on stop
        status = await runner_for(state, fake.url, name="other", holder="hostB:2:bb").run(once=True)
        assert status.state == "stopped" and status.errors_total == 0


async def test_lease_of_a_dead_local_process_is_taken_over(sqlite_db: Database, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()
    dead = f"{socket.gethostname()}:{proc.pid}:dead:main"
    await store.acquire_lease(sqlite_db, lease_name("http://127.0.0.1:1"), dead, 60_000)
    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        await store.acquire_lease(sqlite_db, lease_name(fake.url), dead, 60_000)
        fake.push(make_record(1))
        status = await runner_for(state, fake.url).run(once=True)
        assert status.inserted_total == 1


async def test_spooled_records_are_replayed_idempotently(db: Database, tmp_path: Path) -> None:
    import orjson

    records = [make_record(i) for i in range(10)]
    await store.spool_add(db, "main", [orjson.dumps(records[:6]).decode()], 1_700_000_000_000)
    await store.spool_add(db, "main", [orjson.dumps(records[6:]).decode()], 1_700_000_000_000)
    async with FakeCPA() as fake, app_state(db, tmp_path) as state:
        status = await runner_for(state, fake.url).run(once=True)
        assert (status.replayed_total, status.inserted_total) == (10, 10)
        assert await spool_size(db) == 0
        # A crash after the insert but before the spool delete replays them again: no duplicates.
        await store.spool_add(db, "main", [orjson.dumps(records[:4]).decode()], 1_700_000_000_000)
        status = await runner_for(state, fake.url).run(once=True)
        assert (status.replayed_total, status.inserted_total, status.duplicates_total) == (4, 0, 4)
        assert await count(db) == 10


async def test_records_of_every_cpa_version_normalize(db: Database, tmp_path: Path) -> None:
    old = {  # v6.9.38-v6.10.6 subset, numeric auth_index, CPA-local offset
        "timestamp": "2025-06-01T10:00:00.5+08:00",
        "latency_ms": 900,
        "source": "bob@example.com",
        "auth_index": 12,
        "tokens": {
            "input_tokens": 100,
            "output_tokens": 20,
            "reasoning_tokens": 5,
            "cached_tokens": 40,
            "total_tokens": 120,
        },
        "failed": False,
        "provider": "codex",
        "model": "gpt-5-codex",
        "endpoint": "POST /v1/responses",
        "auth_type": "oauth",
        "api_key": "client-key-1",
        "request_id": "0a0b0c0d",
    }
    breakdown = make_record(
        7,
        provider="codex",
        model="gpt-5",
        alias="gpt-5",
        tokens={
            "input_tokens": 1000,
            "output_tokens": 300,
            "cached_tokens": 600,
            "reasoning_tokens": 100,
            "total_tokens": 1300,
        },
        token_breakdown={
            "input": {
                "total_tokens": 1000,
                "uncached_tokens": 400,
                "cache_read_tokens": 600,
                "cache_write_tokens": 0,
            },
            "output": {"total_tokens": 300, "non_reasoning_tokens": 200, "reasoning_tokens": 100},
            "unclassified_tokens": 0,
            "quality": "exact",
        },
        fail={"status_code": 429, "body": "rate limited for key sk-abcdefghijklmnop"},
        failed=True,
    )
    async with FakeCPA() as fake, app_state(db, tmp_path) as state:
        fake.push(old)
        fake.push(breakdown)
        status = await runner_for(state, fake.url).run(once=True)
        assert status.inserted_total == 2
        by_model = {e["actual_model"]: e for e in await rows(db, usage_events)}
        first = by_model["gpt-5-codex"]
        assert first["ts_ms"] == 1748743200500  # 02:00:00.5 UTC
        assert first["auth_index"] == "12"
        assert (first["input_tokens"], first["cache_read_tokens"], first["output_tokens"]) == (60, 40, 20)
        second = by_model["gpt-5"]
        assert (second["input_tokens"], second["cache_read_tokens"]) == (400, 600)
        assert (second["output_tokens"], second["reasoning_tokens"]) == (300, 100)
        assert second["failed"] and second["status_code"] == 429
        assert "sk-abcdefghijklmnop" not in (second["error_message"] or "")


async def test_several_cpas_run_side_by_side_and_a_dead_one_does_not_stall(
    sqlite_db: Database, tmp_path: Path
) -> None:
    from relaymeter.ingest.cliproxy import connections as conn_admin

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    async with FakeCPA() as a, FakeCPA() as b, app_state(sqlite_db, tmp_path) as state:
        a.push_many([make_record(i) for i in range(30)])
        b.push_many([make_record(i) for i in range(100, 140)])
        for name, url in (("a", a.url), ("b", b.url), ("dead", f"http://127.0.0.1:{dead_port}")):
            await conn_admin.add_connection(
                state,
                {"name": name, "base_url": url, "management_key": "mgmt-secret", "poll_interval_ms": 200},
                check=False,
            )
        service = CollectorService(state, reconcile_interval_s=0)
        await service.start()
        try:

            def status() -> dict[str, dict[str, Any]]:
                return {s["name"]: s for s in service.status()}

            async def stored(n: int) -> bool:
                return await count(sqlite_db) >= n

            await wait_until(lambda: status()["a"]["inserted_total"] + status()["b"]["inserted_total"] == 70)
            await wait_until(lambda: status()["dead"]["errors_total"] > 0)
            assert await stored(70)
            statuses = status()
            assert statuses["a"]["inserted_total"] == 30 and statuses["b"]["inserted_total"] == 40
            assert statuses["dead"]["state"] == "backoff"
            assert statuses["dead"]["last_error_kind"] == "unavailable"
            assert statuses["dead"]["next_retry_ms"] is not None
            sources = {e["source"] for e in await rows(sqlite_db, usage_events)}
            assert sources == {"cpa:a", "cpa:b"}
            # A new record on a running connection is picked up on the next poll.
            a.push(make_record(999))
            await wait_until(lambda: stored(71))
        finally:
            await service.stop()
        assert {s["state"] for s in service.status()} == {"stopped"}


def test_backoff_doubles_to_thirty_seconds_with_jitter() -> None:
    backoff = Backoff()
    delays = [backoff.next() for _ in range(8)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 16, 30, 30, 30], strict=True):
        assert nominal * 0.8 <= delay <= min(30, nominal * 1.2)
    backoff.reset()
    assert backoff.next() <= 1.2


async def test_management_client_endpoints() -> None:
    async with FakeCPA(publishing=False) as fake:
        fake.auth_files = [make_auth_file(1, provider="codex")]
        fake.api_call_handler = lambda req: (
            200,
            {
                "status_code": 200,
                "header": {"Content-Type": ["application/json"]},
                "body": '{"plan_type": "plus"}',
            },
        )
        async with ManagementClient(fake.url + "/v0/management/", "mgmt-secret") as cpa:
            assert cpa.base_url == fake.url
            assert (await cpa.get_config())["redis-usage-queue-retention-seconds"] == 60
            assert cpa.version.version == "7.3.1" and cpa.version.commit == "0123abcd"
            assert await cpa.usage_statistics_enabled() is False
            await cpa.set_usage_statistics_enabled(True)
            assert fake.publishing is True
            fake.push(make_record(1))
            assert await cpa.probe_usage_queue() is True
            assert len(fake.queue) == 1  # the probe popped nothing
            infos = await cpa.auth_file_infos()
            assert infos[f"{1:016x}"].plan == "plus"
            result = await cpa.api_call(
                f"{1:016x}",
                "GET",
                "https://chatgpt.com/backend-api/wham/usage",
                header={"Authorization": "Bearer $TOKEN$"},
            )
            assert result.status_code == 200 and result.json() == {"plan_type": "plus"}
            with pytest.raises(CPAError, match="auth token not found"):
                await cpa.api_call("ffff", "GET", "https://example.com")
        fake.http_queue = False
        async with ManagementClient(fake.url, "mgmt-secret") as cpa:
            assert await cpa.probe_usage_queue() is False


async def test_saved_connection_gives_a_management_client(sqlite_db: Database, tmp_path: Path) -> None:
    from relaymeter.ingest.cliproxy import connections as conn_admin

    async with FakeCPA() as fake, app_state(sqlite_db, tmp_path) as state:
        row, check = await conn_admin.add_connection(
            state, {"name": "main", "base_url": fake.url + "/", "management_key": "mgmt-secret"}
        )
        assert check is not None and check.ok and row.base_url == fake.url
        assert "mgmt-secret" not in row.management_key_enc
        async with await conn_admin.management_client(state, name="main") as cpa:
            assert (await cpa.get_config())["usage-statistics-enabled"] is True
        with pytest.raises(conn_admin.ConnectionConflict):
            await conn_admin.add_connection(
                state, {"name": "copy", "base_url": fake.url, "management_key": "k"}, check=False
            )
        with pytest.raises(conn_admin.ConnectionInvalid, match="name"):
            await conn_admin.add_connection(
                state,
                {"name": "bad name!", "base_url": "http://127.0.0.1:1", "management_key": "k"},
                check=False,
            )
