"""Collector admin API and `relaymeter cpa ...` / `relaymeter collect` against a fake CPA."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from relaymeter.cli import app as cli_app
from relaymeter.config import Settings
from tests.conftest import running_app
from tests.fakes.cpa import FakeCPA, FakeCPAThread, make_auth_file, make_record


async def _login(client: httpx.AsyncClient) -> None:
    res = await client.post("/api/auth/login", json={"password": "test-admin-password"})
    assert res.status_code == 200, res.text


async def _wait_for(client: httpx.AsyncClient, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(400):
        status = (await client.get("/api/collector/status")).json()
        if status["connections"] and predicate(status["connections"][0]):
            return status["connections"][0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"collector status never matched: {status}")


async def test_connection_crud_and_live_status(make_settings: Callable[..., Settings]) -> None:
    async with FakeCPA() as fake, running_app(make_settings()) as (app, client):
        fake.auth_files = [make_auth_file(i) for i in range(7)]
        fake.push_many([make_record(i) for i in range(40)])
        assert (await client.get("/api/collector/status")).status_code == 401
        await _login(client)
        assert (await client.get("/api/collector/status")).json()["connections"] == []

        body = {"name": "main", "base_url": fake.url, "management_key": "wrong-key", "poll_interval_ms": 300}
        res = await client.post("/api/collector/connections", json=body)
        assert res.status_code == 400
        assert res.json()["error"]["code"] == "cpa_auth_failed"
        assert "nothing saved" in res.json()["error"]["message"]

        res = await client.post(
            "/api/collector/connections",
            json={**body, "management_key": "mgmt-secret", "poll_interval_ms": 40_000},
        )
        assert res.status_code == 422
        assert res.json()["error"]["code"] == "cpa_config_error"
        assert "at most 30 s" in res.json()["error"]["message"]

        res = await client.post("/api/collector/connections", json={**body, "mode": "carrier-pigeon"})
        assert res.status_code == 422
        assert res.json()["error"]["fields"][0]["field"] == "mode"

        res = await client.post("/api/collector/connections", json={**body, "management_key": "mgmt-secret"})
        assert res.status_code == 201, res.text
        created = res.json()
        assert "mgmt-secret" not in res.text and "management_key" not in created
        assert created["check"]["ok"] and created["check"]["transport"] == "http"
        cid = created["id"]

        conn = await _wait_for(client, lambda c: c["inserted_total"] == 40 and c["state"] == "idle")
        assert conn["transport"] == "http" and conn["cpa_version"] == "7.3.1"
        assert conn["spool_pending"] == 0 and conn["spooled_batches"] == 0
        assert conn["dead_letters_stored"] == 0

        res = await client.post(
            "/api/collector/connections", json={**body, "management_key": "mgmt-secret", "name": "again"}
        )
        assert res.status_code == 409
        assert "one consumer" in res.json()["error"]["message"]

        fake.publishing = False
        res = await client.put(f"/api/collector/connections/{cid}/publishing", json={"enabled": True})
        assert res.json() == {"name": "main", "publishing_enabled": True} and fake.publishing

        res = await client.post(f"/api/collector/connections/{cid}/test")
        assert res.json()["ok"] and res.json()["http_queue"] is True

        res = await client.patch(f"/api/collector/connections/{cid}", json={"batch_size": 5})
        assert res.status_code == 200 and res.json()["batch_size"] == 5
        fake.push_many([make_record(i) for i in range(100, 112)])
        await _wait_for(client, lambda c: c["batch_size"] == 5 and c["inserted_total"] == 12)

        db_row = (
            sqlite3.connect(app.state.rm.settings.data_dir / "relaymeter.db")
            .execute("SELECT management_key_enc FROM cpa_connections")
            .fetchone()[0]
        )
        assert "mgmt-secret" not in db_row

        res = await client.delete(f"/api/collector/connections/{cid}")
        assert res.json()["deleted"] is True
        assert (await client.get(f"/api/collector/connections/{cid}")).status_code == 404
        assert (await client.get("/api/collector/status")).json()["connections"] == []


async def test_auth_failure_is_reported_and_restart_retries(make_settings: Callable[..., Settings]) -> None:
    async with FakeCPA() as fake, running_app(make_settings()) as (_app, client):
        await _login(client)
        body = {"name": "main", "base_url": fake.url, "management_key": "old-key", "check": False}
        cid = (await client.post("/api/collector/connections", json=body)).json()["id"]
        conn = await _wait_for(client, lambda c: c["state"] == "auth_failed")
        assert "management key refused" in conn["last_error"]
        assert sum(fake.failures.values()) == 1
        res = await client.post(f"/api/collector/connections/{cid}/restart")
        assert res.status_code == 200
        await _wait_for(client, lambda c: c["state"] == "auth_failed" and c["errors_total"] == 1)
        assert sum(fake.failures.values()) == 2  # one attempt per explicit restart, never a loop
        fake.failures.clear()
        res = await client.patch(f"/api/collector/connections/{cid}", json={"management_key": "mgmt-secret"})
        assert res.status_code == 200
        fake.push(make_record(1))
        await _wait_for(client, lambda c: c["inserted_total"] == 1)


# --- CLI ------------------------------------------------------------------------------------------


def _flat(text: str) -> str:
    """CLI output with Rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RELAYMETER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RELAYMETER_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("RELAYMETER_LOG_LEVEL", "warning")
    yield tmp_path


@pytest.fixture
def fake_thread() -> Iterator[tuple[FakeCPAThread, FakeCPA]]:
    thread = FakeCPAThread(FakeCPA(publishing=False))
    fake = thread.start()
    try:
        yield thread, fake
    finally:
        thread.stop()


def test_cpa_cli_add_list_test_collect_remove(
    cli_env: Path, fake_thread: tuple[FakeCPAThread, FakeCPA]
) -> None:
    thread, fake = fake_thread
    runner = CliRunner()
    res = runner.invoke(
        cli_app,
        ["cpa", "add", "main", fake.url, "--key", "-", "--poll-interval", "45"],
        input="mgmt-secret\n",
    )
    assert res.exit_code == 1
    assert "poll interval 45 s is unsafe" in _flat(res.output)

    res = runner.invoke(
        cli_app, ["cpa", "add", "main", fake.url, "--key", "-", "--enable-publishing"], input="mgmt-secret\n"
    )
    assert res.exit_code == 0, res.output
    assert "added CPA connection main" in res.output
    assert thread.call(lambda: fake.publishing) is True

    res = runner.invoke(
        cli_app, ["cpa", "add", "main", fake.url, "--key", "-", "--no-check"], input="mgmt-secret\n"
    )
    assert res.exit_code == 1 and "already exists" in _flat(res.output)

    res = runner.invoke(cli_app, ["cpa", "list", "--json"])
    listed = json.loads(res.stdout)
    assert [(c["name"], c["base_url"], c["spooled_batches"]) for c in listed] == [("main", fake.url, 0)]
    assert "mgmt-secret" not in res.output

    res = runner.invoke(cli_app, ["cpa", "test", "main", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True

    thread.call(lambda: fake.push_many([make_record(i) for i in range(25)]))
    res = runner.invoke(cli_app, ["collect", "--once", "--json"])
    assert res.exit_code == 0, res.output
    status = json.loads(res.stdout)[0]
    assert (status["name"], status["inserted_total"], status["transport"]) == ("main", 25, "http")

    res = runner.invoke(cli_app, ["cpa", "publishing", "main", "off"])
    assert res.exit_code == 0 and "off" in res.output
    assert thread.call(lambda: fake.publishing) is False

    res = runner.invoke(cli_app, ["cpa", "edit", "main", "--key", "-"], input="bad-key\n")
    assert res.exit_code == 1 and "management key refused" in _flat(res.output)

    res = runner.invoke(cli_app, ["cpa", "remove", "main", "--yes"])
    assert res.exit_code == 0 and "removed CPA connection main" in res.output
    res = runner.invoke(cli_app, ["collect", "--once"])
    assert res.exit_code == 1 and "no CPA connections" in _flat(res.output)


def test_collect_once_fails_loudly_on_a_refused_key(
    cli_env: Path, fake_thread: tuple[FakeCPAThread, FakeCPA]
) -> None:
    _thread, fake = fake_thread
    runner = CliRunner()
    res = runner.invoke(cli_app, ["cpa", "add", "main", fake.url, "--key", "nope", "--no-check"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli_app, ["collect", "--once", "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)[0]["state"] == "auth_failed"
    assert os.environ.get("RELAYMETER_DATA_DIR")
