"""OAuth accounts: refresh before expiry (once under concurrency), failed refresh, 401 recovery, Codex."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import anthropic
import httpx
import openai
import orjson
import pytest

from relaymeter.config import Settings
from relaymeter.gateway import oauth
from relaymeter.store import accounts as account_store
from tests.fakes.gateway_env import ADMIN_TOKEN, GatewayEnv, gateway_env


@pytest.fixture
async def env(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(make_settings(admin_token=ADMIN_TOKEN)) as environment:
        monkeypatch.setitem(
            oauth.TOKEN_ENDPOINTS,
            "anthropic",
            {**oauth.TOKEN_ENDPOINTS["anthropic"], "url": environment.anthropic_url + "/v1/oauth/token"},
        )
        monkeypatch.setitem(
            oauth.TOKEN_ENDPOINTS,
            "openai",
            {**oauth.TOKEN_ENDPOINTS["openai"], "url": environment.openai_url + "/oauth/token"},
        )
        yield environment


def message() -> dict[str, object]:
    return {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def test_expired_token_is_refreshed_once_for_twenty_concurrent_requests(env: GatewayEnv) -> None:
    acc = await env.add_account(
        name="claude-oauth",
        kind="oauth",
        access_token="sk-ant-oat01-old",
        refresh_token="sk-ant-ort01-old",
        expires_at="2001-01-01T00:00:00Z",
    )
    env.anthropic.valid_credentials = {"sk-ant-oat01-refreshed-1"}
    _key_id, secret = await env.create_key()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        results = await asyncio.gather(*(client.post("/v1/messages", json=message()) for _ in range(20)))
    assert [r.status_code for r in results] == [200] * 20
    assert env.anthropic.token_calls == 1, "one refresh, however many requests waited for it"
    sent = [r for r in env.anthropic.requests if r.path == "/v1/messages"]
    assert {r.headers["authorization"] for r in sent} == {"Bearer sk-ant-oat01-refreshed-1"}
    assert all("oauth-2025-04-20" in r.headers["anthropic-beta"] for r in sent)
    assert all("x-api-key" not in r.headers for r in sent)
    token_request = next(r for r in env.anthropic.requests if r.path == "/v1/oauth/token")
    assert (
        token_request.body["grant_type"] == "refresh_token"
        and token_request.body["refresh_token"] == "sk-ant-ort01-old"
    )
    # the rotated tokens are stored encrypted, with the new expiry
    enc, expires = await account_store.read_credentials(env.state.db, acc["id"])
    creds = orjson.loads(env.state.box.decrypt(enc or ""))
    assert (
        creds["access_token"] == "sk-ant-oat01-refreshed-1"
        and creds["refresh_token"] == "sk-ant-ort01-rotated-1"
    )
    assert expires is not None and expires > env.gateway.clock() + 3_000_000
    # a reload (e.g. an admin edit elsewhere) keeps the fresh token
    await env.gateway.reload()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        assert (await client.post("/v1/messages", json=message())).status_code == 200
    assert env.anthropic.token_calls == 1


async def test_failed_refresh_marks_unhealthy_and_fails_over(env: GatewayEnv) -> None:
    broken = await env.add_account(
        name="revoked",
        kind="oauth",
        access_token="old",
        refresh_token="rt",
        expires_at="2001-01-01T00:00:00Z",
        priority=90,
    )
    backup = await env.add_account(name="backup", api_key="sk-backup", priority=10)
    env.anthropic.token_status = 400
    _key_id, secret = await env.create_key()
    client = anthropic.AsyncAnthropic(api_key=secret, base_url=env.url, max_retries=0)
    env.closing.append(client)
    reply = await client.messages.create(
        model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.content
    state = {a["id"]: a for a in env.gateway.snapshot()}
    assert state[broken["id"]]["health"] == "unhealthy"
    assert "token refresh failed: token endpoint answered 400" in state[broken["id"]]["health_reason"]
    events = await env.events()
    assert events[-1]["account_id"] == backup["id"]


async def test_upstream_401_on_oauth_account_refreshes_in_background(env: GatewayEnv) -> None:
    acc = await env.add_account(name="claude-oauth", kind="oauth", access_token="stale", refresh_token="rt")
    env.anthropic.valid_credentials = {"sk-ant-oat01-refreshed-1"}
    _key_id, secret = await env.create_key()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        first = await client.post("/v1/messages", json=message())
        assert first.status_code == 401  # the only account rejected the token
        for _ in range(100):
            if env.anthropic.token_calls and env.gateway.pool.accounts[acc["id"]].health == "ok":
                break
            await asyncio.sleep(0.05)
        second = await client.post("/v1/messages", json=message())
    assert env.anthropic.token_calls == 1
    assert second.status_code == 200


async def test_codex_oauth_account_serves_responses_streamed_and_aggregated(env: GatewayEnv) -> None:
    acc = await env.add_account(
        name="codex",
        provider="openai",
        kind="oauth",
        access_token="codex-access",
        refresh_token="codex-rt",
        account_id="acct-42",
        base_url=env.openai_url + "/backend-api/codex",
        expires_at="2099-01-01T00:00:00Z",
    )
    _key_id, secret = await env.create_key()
    client = openai.AsyncOpenAI(api_key=secret, base_url=env.url + "/v1", max_retries=0)
    env.closing.append(client)
    response = await client.responses.create(model="gpt-5-codex", input="hi")  # not streamed by the client
    assert response.output_text == env.openai.text and response.status == "completed"
    sent = env.openai.requests[-1]
    assert (
        sent.path == "/backend-api/codex/responses"
        and sent.body["stream"] is True
        and sent.body["store"] is False
    )
    assert (
        sent.headers["chatgpt-account-id"] == "acct-42"
        and sent.headers["authorization"] == "Bearer codex-access"
    )
    async with client.responses.stream(model="gpt-5-codex", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == env.openai.text
    with pytest.raises(openai.APIStatusError) as no_chat:
        await client.chat.completions.create(model="gpt-5-codex", messages=[{"role": "user", "content": "x"}])
    assert no_chat.value.status_code == 503  # a ChatGPT subscription serves the Responses API only
    events = await env.events()
    assert [(e["account_id"], e["output_tokens"], e["cache_read_tokens"]) for e in events[:2]] == [
        (acc["id"], 40, 100)
    ] * 2


async def test_failover_on_401_marks_api_key_account_unhealthy(env: GatewayEnv) -> None:
    bad = await env.add_account(name="bad", api_key="sk-bad", priority=90)
    await env.add_account(name="good", api_key="sk-good", priority=10)
    env.anthropic.valid_credentials = {"sk-good"}
    _key_id, secret = await env.create_key()
    async with httpx.AsyncClient(base_url=env.url, headers={"x-api-key": secret}, timeout=30) as client:
        assert (await client.post("/v1/messages", json=message())).status_code == 200
        assert (await client.post("/v1/messages", json=message())).status_code == 200
    pool_acc = env.gateway.pool.accounts[bad["id"]]
    assert pool_acc.health == "unhealthy" and "invalid x-api-key" in (pool_acc.health_reason or "")
    # the second request went straight to the healthy account
    assert [r.headers.get("x-api-key") for r in env.anthropic.requests] == ["sk-bad", "sk-good", "sk-good"]
