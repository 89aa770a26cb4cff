"""The official anthropic and openai SDKs, pointed at relaymeter, work on every route; usage is exact."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import openai
import pytest

from relaymeter.config import Settings
from tests.fakes.gateway_env import ADMIN_TOKEN, GatewayEnv, gateway_env

ANTHROPIC_BUCKETS = {
    "input_tokens": 21,
    "cache_read_tokens": 1000,
    "cache_creation_tokens": 300,
    "cache_creation_1h_tokens": 100,
    "output_tokens": 7,
    "reasoning_tokens": 0,
    "total_tokens": 1328,
}
# prompt 120 incl. 100 cached -> 20 uncached; completion 40 incl. 16 reasoning.
OPENAI_BUCKETS = {
    "input_tokens": 20,
    "cache_read_tokens": 100,
    "cache_creation_tokens": 0,
    "output_tokens": 40,
    "reasoning_tokens": 16,
    "total_tokens": 160,
}


@pytest.fixture(params=["raw", "aiohttp", "httpx"])
async def env(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> AsyncIterator[GatewayEnv]:
    """Every SDK test runs with each upstream HTTP client."""
    async with gateway_env(
        make_settings(admin_token=ADMIN_TOKEN, gateway_http_client=request.param)
    ) as environment:
        yield environment


def _tokens(event: dict[str, Any], names: dict[str, int]) -> dict[str, int]:
    return {k: event[k] for k in names}


async def test_anthropic_sdk_messages_stream_count_tokens_and_models(env: GatewayEnv) -> None:
    account = await env.add_account(provider="anthropic", name="claude-a")
    key_id, secret = await env.create_key(name="alice")
    client = anthropic.AsyncAnthropic(api_key=secret, base_url=env.url, max_retries=0)
    env.closing.append(client)

    message = await client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == env.anthropic.text  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == 1000

    async with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "stream please"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == env.anthropic.text
    assert final.usage.output_tokens == 7

    counted = await client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}]
    )
    assert counted.input_tokens == 21

    models = await client.models.list()
    assert {m.id for m in models.data} >= {"claude-sonnet-4-5-20250929"}

    # The upstream got the account's key, never the client's.
    sent = env.anthropic.requests[0]
    assert sent.headers["x-api-key"] == "sk-upstream-claude-a"
    assert secret not in str(sent.headers)

    events = await env.events()
    assert [e["endpoint"] for e in events] == [
        "POST /v1/messages",
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
    ]
    for event in events[:2]:
        assert _tokens(event, ANTHROPIC_BUCKETS) == ANTHROPIC_BUCKETS
        assert event["source"] == "gateway"
        assert event["account_id"] == account["id"]
        assert event["api_key_id"] == key_id
        assert event["failed"] is False or event["failed"] == 0
        assert event["status_code"] == 200
        assert event["model"] == "claude-sonnet-4-5"
        assert event["latency_ms"] is not None
    assert events[0]["stream"] in (False, 0) and events[1]["stream"] in (True, 1)
    assert events[1]["ttft_ms"] is not None
    assert events[2]["total_tokens"] == 0  # counting tokens consumes none


async def test_openai_sdk_chat_and_responses_stream_and_not(env: GatewayEnv) -> None:
    await env.add_account(provider="openai", name="oai")
    _key_id, secret = await env.create_key(name="bob")
    client = openai.AsyncOpenAI(api_key=secret, base_url=env.url + "/v1", max_retries=0)
    env.closing.append(client)

    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == env.openai.text
    assert completion.usage is not None and completion.usage.prompt_tokens == 120

    # Stream without include_usage: relaymeter asks upstream for usage and strips that chunk.
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == env.openai.text
    assert all(c.choices for c in chunks), "the usage-only chunk the client did not ask for must be stripped"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    upstream_body = env.openai.requests[-1].body
    assert upstream_body["stream_options"] == {"include_usage": True}

    # Stream with include_usage: the client gets the usage chunk untouched.
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 40

    response = await client.responses.create(model="gpt-5", input="hello")
    assert response.output_text == env.openai.text
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 100

    streamed = []
    async with client.responses.stream(model="gpt-5", input="hello") as stream:
        async for event in stream:
            streamed.append(event.type)
        final = await stream.get_final_response()
    assert streamed[-1] == "response.completed"
    assert final.usage is not None and final.usage.output_tokens == 40

    models = await client.models.list()
    assert "gpt-4o-mini" in {m.id for m in models.data}

    events = await env.events()
    assert [(e["endpoint"], bool(e["stream"])) for e in events] == [
        ("POST /v1/chat/completions", False),
        ("POST /v1/chat/completions", True),
        ("POST /v1/chat/completions", True),
        ("POST /v1/responses", False),
        ("POST /v1/responses", True),
    ]
    for event in events:
        assert _tokens(event, OPENAI_BUCKETS) == OPENAI_BUCKETS, event["endpoint"]
        assert event["provider"] == "openai"
        assert event["actual_model"] in ("gpt-4o-mini", "gpt-5")


async def test_errors_speak_each_dialect(env: GatewayEnv) -> None:
    await env.add_account(provider="anthropic")
    await env.add_account(provider="openai")
    _key_id, secret = await env.create_key(name="limited", models=["claude-*", "gpt-4o-mini"])

    bad_key = anthropic.AsyncAnthropic(api_key="sk-wrong", base_url=env.url, max_retries=0)
    env.closing.append(bad_key)
    with pytest.raises(anthropic.AuthenticationError) as auth_err:
        await bad_key.messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert auth_err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

    oai_bad = openai.AsyncOpenAI(api_key="sk-wrong", base_url=env.url + "/v1", max_retries=0)
    env.closing.append(oai_bad)
    with pytest.raises(openai.AuthenticationError) as oai_err:
        await oai_bad.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert oai_err.value.code == "invalid_api_key"

    oai = openai.AsyncOpenAI(api_key=secret, base_url=env.url + "/v1", max_retries=0)
    env.closing.append(oai)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert "may not use model 'gpt-5'" in denied.value.message

    raw = await env.admin.post(
        "/v1/messages",
        content=b"{not json",
        headers={"x-api-key": secret, "content-type": "application/json"},
    )
    assert raw.status_code == 400
    assert raw.json()["type"] == "error" and raw.json()["error"]["type"] == "invalid_request_error"

    missing = await env.admin.post(
        "/v1/chat/completions", json={"messages": []}, headers={"authorization": f"Bearer {secret}"}
    )
    assert missing.status_code == 400 and "model" in missing.json()["error"]["message"]
