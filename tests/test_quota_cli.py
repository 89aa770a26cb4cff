"""Quota through the real relay (headers hook, 429 -> exhausted cooldown) and the CLI commands."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from relaymeter.cli.quota_cmd import format_reset, remaining_style
from relaymeter.config import Settings
from relaymeter.domain.windows import zone
from tests.fakes.gateway_env import ADMIN_TOKEN, GatewayEnv, gateway_env
from tests.fakes.provider_usage import FakeProviderUsage
from tests.fakes.upstream_base import Scripted, serve_asgi


@pytest.fixture
async def env(make_settings: Callable[..., Settings]) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(make_settings(admin_token=ADMIN_TOKEN)) as environment:
        await environment.state.services["quota"].stop()  # only the hooks: no scheduled refresh
        yield environment


def message() -> dict[str, object]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def test_relayed_headers_become_windows_and_an_exhausted_429_cools_down(env: GatewayEnv) -> None:
    acc = await env.add_account(name="claude-key")
    _key_id, secret = await env.create_key()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        assert (await client.post("/v1/messages", json=message())).status_code == 200
        view = (await env.admin.get("/api/quota")).json()
        item = next(a for a in view["accounts"] if a["account_id"] == acc["id"])
        windows = {w["window"]: w for w in item["windows"]}
        # the fake Anthropic API sends per-minute request and token limits
        assert windows["requests"]["origin"] == "headers"
        assert (windows["requests"]["limit"], windows["requests"]["remaining"]) == (4000, 3999)
        assert windows["tokens"]["remaining"] == 399000

        reset_s = int(time.time()) + 3 * 86400
        env.anthropic.script.append(
            Scripted(
                status=429,
                body={
                    "type": "error",
                    "error": {"type": "rate_limit_error", "message": "weekly limit reached"},
                },
                headers={
                    "retry-after": "30",
                    "anthropic-ratelimit-unified-status": "rejected",
                    "anthropic-ratelimit-unified-7d-status": "rejected",
                    "anthropic-ratelimit-unified-7d-utilization": "1.0",
                    "anthropic-ratelimit-unified-7d-reset": str(reset_s),
                },
            )
        )
        res = await client.post("/v1/messages", json=message())
        assert res.status_code == 429
    live = env.gateway.pool.accounts[acc["id"]]
    # exhausted until the weekly reset, not the 30 s of retry-after
    assert (live.cooldown_kind, live.cooldown_until_ms) == ("exhausted", reset_s * 1000)
    view = (await env.admin.get("/api/quota")).json()
    item = next(a for a in view["accounts"] if a["account_id"] == acc["id"])
    assert {w["window"]: w["limit_reached"] for w in item["windows"]}["seven_day"] is True
    assert item["cooldown"]["kind"] == "exhausted"


def test_colours_and_local_reset_times() -> None:
    assert [remaining_style(p) for p in (80.0, 30.5, 30.0, 10.0, 9.9, None)] == [
        "green",
        "green",
        "dark_orange",
        "dark_orange",
        "red",
        "dim",
    ]
    now = 1_766_390_880_000  # 2025-12-22T08:08:00Z
    assert format_reset(now + 90 * 60_000, now, zone("Asia/Tokyo")) == "Mon 22 Dec 18:38 (in 1h30m)"
    assert format_reset(None, now, zone("UTC")) == "-"


async def test_quota_and_accounts_check_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relaymeter.cli import app as cli_app
    from relaymeter.cli import common

    monkeypatch.setenv("RELAYMETER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RELAYMETER_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("RELAYMETER_TIMEZONE", "UTC")
    monkeypatch.setenv("COLUMNS", "200")
    common.set_config_path(None)
    fake = FakeProviderUsage()
    fake.add_token("tok-a")
    fake.claude["seven_day_newfeature"] = {"utilization": 95.0, "resets_at": "2099-01-01T00:00:00Z"}
    runner = CliRunner()

    def invoke(*args: str) -> str:
        res = runner.invoke(cli_app, list(args))
        assert res.exit_code == 0, res.output
        return res.stdout

    async with serve_asgi(fake) as url:
        # The CLI runs its own event loop: run it in a thread so this loop keeps serving the fake.
        add = ["accounts", "add", "claude-a", "--provider", "anthropic", "--kind", "oauth"]
        add += ["--access-token", "tok-a", "--base-url", url]
        added = await asyncio.to_thread(runner.invoke, cli_app, add)
        assert added.exit_code == 0, added.output
        empty = await asyncio.to_thread(invoke, "quota")
        assert "not fetched yet" in empty
        data = orjson.loads(await asyncio.to_thread(invoke, "quota", "--force", "--json"))
        assert data["refresh_report"]["results"][0]["status"] == "ok"
        windows = {w["window"] for w in data["accounts"][0]["windows"]}
        assert {"five_hour", "seven_day", "seven_day_newfeature"} <= windows
        table = await asyncio.to_thread(invoke, "quota", "--force")
        assert re.search(r"claude-a.*five_hour.*37%.*63%", table)
        assert "seven_day_newfeature" in table
        assert "next refresh allowed in" in table  # the second forced refresh hit the cooldown
        assert fake.usage_calls["/api/oauth/usage"] == 1
        checked = orjson.loads(await asyncio.to_thread(invoke, "accounts", "check", "--json"))
        assert [(r["name"], r["recommendation"]) for r in checked["results"]] == [("claude-a", "keep")]
