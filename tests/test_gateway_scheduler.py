"""Account selection: priority, weights, stickiness, cooldown, health, and failover before the first byte."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable

import anthropic
import openai
import pytest

from relaymeter.config import Settings
from relaymeter.gateway.scheduler import CHAT, MESSAGES, Account, AccountPool, reset_from_headers
from tests.fakes.gateway_env import ADMIN_TOKEN, GatewayEnv, gateway_env
from tests.fakes.upstream_base import Scripted


class Clock:
    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def pool_of(*accounts: Account, clock: Clock | None = None) -> AccountPool:
    pool = AccountPool(clock=clock or Clock())
    pool.replace(accounts)
    return pool


def acc(id: int, **kw: object) -> Account:
    kw.setdefault("provider", "anthropic")
    kw.setdefault("kind", "api_key")
    return Account(id=id, name=f"a{id}", **kw)  # type: ignore[arg-type]


def test_highest_priority_wins_and_lower_is_fallback() -> None:
    pool = pool_of(acc(1, priority=10), acc(2, priority=90), acc(3, priority=50))
    assert pool.pick(MESSAGES, "m").id == 2  # type: ignore[union-attr]
    assert pool.pick(MESSAGES, "m", exclude={2}).id == 3  # type: ignore[union-attr]
    pool.accounts[2].enabled = False
    assert pool.pick(MESSAGES, "m").id == 3  # type: ignore[union-attr]


def test_weights_split_sequential_traffic_exactly() -> None:
    pool = pool_of(acc(1, weight=3), acc(2, weight=1))
    picks = Counter(pool.pick(MESSAGES, "m").id for _ in range(400))  # type: ignore[union-attr]
    assert picks == {1: 300, 2: 100}


def test_least_loaded_relative_to_weight() -> None:
    pool = pool_of(acc(1, weight=2), acc(2, weight=1))
    pool.accounts[1].in_flight = 3  # load 1.5
    pool.accounts[2].in_flight = 1  # load 1.0
    assert pool.pick(MESSAGES, "m").id == 2  # type: ignore[union-attr]
    pool.accounts[2].in_flight = 2  # load 2.0
    assert pool.pick(MESSAGES, "m").id == 1  # type: ignore[union-attr]


def test_concurrency_cap_and_model_allow_list_and_route() -> None:
    pool = pool_of(
        acc(1, max_concurrency=1, models=("claude-sonnet-*",)),
        acc(2, models=("claude-haiku-4-5",), model_map={"fast": "claude-haiku-4-5"}),
        acc(3, provider="openai"),
    )
    assert pool.pick(MESSAGES, "claude-sonnet-4-5").id == 1  # type: ignore[union-attr]
    pool.accounts[1].in_flight = 1
    assert pool.pick(MESSAGES, "claude-sonnet-4-5") is None
    assert "concurrency" in pool.why_none(MESSAGES, "claude-sonnet-4-5")
    assert pool.pick(MESSAGES, "fast").id == 2  # type: ignore[union-attr]
    assert pool.accounts[2].map_model("fast") == "claude-haiku-4-5"
    assert pool.pick(CHAT, "gpt-5").id == 3  # type: ignore[union-attr]
    assert pool.pick(MESSAGES, "gpt-5") is None


def test_sticky_session_stays_while_eligible_then_moves() -> None:
    clock = Clock()
    pool = pool_of(acc(1), acc(2), acc(3), clock=clock)
    first = pool.pick(MESSAGES, "m", session="s1")
    assert first is not None
    # Many other picks would rotate the accounts; the session stays put.
    for _ in range(10):
        pool.pick(MESSAGES, "m")
        assert pool.pick(MESSAGES, "m", session="s1") is first
    pool.set_cooldown(first.id, clock.now + 60_000, "429", "rate_limit")
    moved = pool.pick(MESSAGES, "m", session="s1")
    assert moved is not None and moved is not first
    # ... and it now sticks to the new account even after the old one recovers.
    clock.now += 61_000
    assert pool.pick(MESSAGES, "m", session="s1") is moved


def test_cooldown_from_429_headers_and_return_after_reset() -> None:
    clock = Clock()
    pool = pool_of(acc(1, priority=90), acc(2), clock=clock)
    a1 = pool.accounts[1]
    pool.on_status(a1, 429, {"retry-after": "30"}, "rate limited")
    assert a1.cooldown_until_ms == clock.now + 30_000
    assert pool.pick(MESSAGES, "m").id == 2  # type: ignore[union-attr]
    clock.now += 30_001
    assert pool.pick(MESSAGES, "m").id == 1  # type: ignore[union-attr]
    # an exhausted window set by the quota service is not shortened by a short rate-limit cooldown
    pool.set_cooldown(1, clock.now + 3_600_000, "weekly window exhausted", "exhausted")
    pool.on_status(a1, 429, {"retry-after": "5"}, "rate limited")
    assert a1.cooldown_until_ms == clock.now + 3_600_000 and a1.cooldown_kind == "exhausted"
    pool.clear_cooldown(1)
    assert pool.pick(MESSAGES, "m").id == 1  # type: ignore[union-attr]


def test_reset_headers_of_each_provider() -> None:
    now = 1_700_000_000_000
    assert reset_from_headers({"retry-after-ms": "1500"}, now) == now + 1500
    assert (
        reset_from_headers({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-remaining-requests": "0"}, now)
        == now + 360_000
    )
    unified = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": str(now // 1000 + 7200),
    }
    assert reset_from_headers(unified, now) == now + 7_200_000
    tokens = {
        "anthropic-ratelimit-tokens-reset": "2023-11-14T22:15:00Z",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:30Z",
        "anthropic-ratelimit-requests-remaining": "10",
    }
    assert reset_from_headers(tokens, now) == 1_700_000_100_000  # the exhausted limit's reset
    assert reset_from_headers({}, now) is None


def test_401_marks_unhealthy_until_retry_and_success_clears() -> None:
    clock = Clock()
    pool = pool_of(acc(1, priority=90), acc(2), clock=clock)
    a1 = pool.accounts[1]
    pool.on_status(a1, 401, {}, "invalid x-api-key")
    assert a1.health == "unhealthy" and "invalid x-api-key" in (a1.health_reason or "")
    assert pool.pick(MESSAGES, "m").id == 2  # type: ignore[union-attr]
    clock.now += 5 * 60_000  # due for a retry
    assert pool.pick(MESSAGES, "m").id == 1  # type: ignore[union-attr]
    pool.on_success(a1)
    assert a1.health == "ok" and a1.health_reason is None


# --- failover through the real relay ---------------------------------------------------------


@pytest.fixture
async def env(make_settings: Callable[..., Settings]) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(make_settings(admin_token=ADMIN_TOKEN)) as environment:
        yield environment


async def test_failover_on_429_and_connect_error_before_first_byte(env: GatewayEnv) -> None:
    primary = await env.add_account(name="primary", priority=90)
    backup = await env.add_account(name="backup", priority=10)
    dead = await env.add_account(name="dead", priority=50, base_url="http://127.0.0.1:9")  # nothing listens
    _key_id, secret = await env.create_key()
    client = anthropic.AsyncAnthropic(api_key=secret, base_url=env.url, max_retries=0)
    env.closing.append(client)

    env.anthropic.script.append(
        Scripted(
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            {"retry-after": "120"},
        )
    )
    async with client.messages.stream(
        model="claude-x", max_tokens=9, messages=[{"role": "user", "content": "a"}]
    ) as s:
        text = "".join([t async for t in s.text_stream])
    assert text == env.anthropic.text
    state = {a["id"]: a for a in env.gateway.snapshot()}
    assert state[primary["id"]]["cooldown_until_ms"] is not None
    assert state[primary["id"]]["cooldown_kind"] == "rate_limit"
    # primary (429) -> dead (connect error) -> backup served it
    events = await env.events()
    assert len(events) == 1 and events[0]["account_id"] == backup["id"] and not events[0]["failed"]
    assert env.gateway.pool.accounts[dead["id"]].error_streak == 1


async def test_no_failover_after_first_byte(env: GatewayEnv) -> None:
    await env.add_account(name="one", priority=90)
    await env.add_account(name="two", priority=10)
    _key_id, secret = await env.create_key()
    env.anthropic.script.append(Scripted(break_stream_after=4))  # cut the stream mid-way
    client = anthropic.AsyncAnthropic(api_key=secret, base_url=env.url, max_retries=0)
    env.closing.append(client)
    with pytest.raises(anthropic.APIError, match="broke off"):
        async with client.messages.stream(
            model="claude-x", max_tokens=9, messages=[{"role": "user", "content": "a"}]
        ) as s:
            async for _ in s.text_stream:
                pass
            await s.get_final_message()
    assert env.anthropic.calls == 1, "a stream that already started must never be retried elsewhere"
    events = await env.events()
    assert len(events) == 1 and events[0]["failed"]
    assert events[0]["error_kind"] == "upstream_stream_error"
    assert events[0]["input_tokens"] == 21  # message_start's usage was captured before the break


async def test_all_accounts_failing_returns_last_upstream_error_and_503_when_none(env: GatewayEnv) -> None:
    await env.add_account(provider="openai", name="o1")
    await env.add_account(provider="openai", name="o2")
    _key_id, secret = await env.create_key()
    err = {"error": {"message": "upstream overloaded", "type": "server_error", "param": None, "code": None}}
    env.openai.script += [Scripted(503, err), Scripted(503, err)]
    client = openai.AsyncOpenAI(api_key=secret, base_url=env.url + "/v1", max_retries=0)
    env.closing.append(client)
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 503 and "upstream overloaded" in failed.value.message
    assert env.openai.calls == 2
    # a model no account serves: 503 naming the model
    for acc_row in list(env.gateway.pool.accounts.values()):
        acc_row.models = ("gpt-4o-mini",)
    with pytest.raises(openai.APIStatusError) as unavailable:
        await client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert unavailable.value.status_code == 503
    assert "no upstream account serves model 'gpt-5'" in unavailable.value.message
    events = await env.events()
    assert [e["status_code"] for e in events][-1] == 503
