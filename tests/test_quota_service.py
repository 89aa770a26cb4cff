"""Quota refresh against fake Claude / Codex usage endpoints: storage, tokens, cooldown,
single-flight, the gateway's exhausted cooldown, CPA-held accounts, local windows, checks."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from relaymeter.config import Settings
from relaymeter.domain.events import UsageEvent
from relaymeter.gateway import oauth
from relaymeter.gateway.scheduler import MESSAGES
from relaymeter.quota.service import QuotaService
from relaymeter.state import AppState
from relaymeter.store import accounts as account_store
from relaymeter.store import quotas as quota_store
from tests.conftest import running_app
from tests.fakes.cpa import FakeCPA, make_auth_file
from tests.fakes.provider_usage import CLAUDE_PATH, CODEX_PATH, FakeProviderUsage
from tests.fakes.upstream_base import serve_asgi

ADMIN = "quota-admin-token-0123456789"
HOUR = 3_600_000


class Clock:
    def __init__(self) -> None:
        self.now = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@dataclass
class Env:
    app: Any
    client: httpx.AsyncClient
    fake: FakeProviderUsage
    url: str
    clock: Clock

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.rm
        return state

    @property
    def quota(self) -> QuotaService:
        service: QuotaService = self.state.services["quota"]
        return service

    @property
    def gateway(self) -> Any:
        return self.state.services["gateway"]

    async def add_claude(self, name: str, token: str, *, valid: bool = True, **fields: Any) -> int:
        if valid:
            self.fake.add_token(token, fields.get("refresh_token"))
        body = {
            "name": name,
            "provider": "anthropic",
            "kind": "oauth",
            "access_token": token,
            "base_url": self.url,
        }
        res = await self.client.post("/api/accounts", json={**body, **fields})
        assert res.status_code == 201, res.text
        return int(res.json()["id"])

    async def add_codex(self, name: str, token: str, account_id: str = "acct-1", **fields: Any) -> int:
        self.fake.add_token(token)
        body = {
            "name": name,
            "provider": "openai",
            "kind": "oauth",
            "access_token": token,
            "account_id": account_id,
            "base_url": self.url + "/backend-api/codex",
        }
        res = await self.client.post("/api/accounts", json={**body, **fields})
        assert res.status_code == 201, res.text
        return int(res.json()["id"])

    def claude_doc(self, **windows: dict[str, Any] | None) -> dict[str, Any]:
        doc = copy.deepcopy(self.fake.claude)
        doc.update(windows)
        return doc


@pytest.fixture
async def env(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    fake = FakeProviderUsage()
    async with (
        serve_asgi(fake) as url,
        running_app(make_settings(admin_token=ADMIN)) as (app, client),
    ):
        client.headers["authorization"] = f"Bearer {ADMIN}"
        for provider, path in (("anthropic", "/v1/oauth/token"), ("openai", "/oauth/token")):
            monkeypatch.setitem(
                oauth.TOKEN_ENDPOINTS, provider, {**oauth.TOKEN_ENDPOINTS[provider], "url": url + path}
            )
        environment = Env(app, client, fake, url, Clock())
        await environment.quota.stop()  # no background loops: the tests drive refreshes and time
        environment.quota.clock = environment.clock
        environment.gateway.pool.clock = environment.clock
        environment.gateway.clock = environment.clock
        yield environment


async def test_refresh_stores_windows_and_history(env: Env) -> None:
    claude = await env.add_claude("claude-a", "tok-a")
    codex = await env.add_codex("codex-a", "tok-c")
    env.fake.claude["seven_day_research"] = {"utilization": 9.0, "resets_at": "2026-08-27T00:00:00+00:00"}
    res = await env.client.post("/api/quota/refresh")
    assert res.status_code == 200, res.text
    by_id = {r["account_id"]: r for r in res.json()["results"]}
    assert by_id[claude]["status"] == "ok" and by_id[codex]["status"] == "ok"

    view = (await env.client.get("/api/quota")).json()
    accounts = {a["account_id"]: a for a in view["accounts"]}
    claude_windows = {w["window"]: w for w in accounts[claude]["windows"]}
    assert set(claude_windows) == {
        "five_hour",
        "seven_day",
        "seven_day_opus",
        "seven_day_sonnet",
        "seven_day_research",
    }
    assert claude_windows["five_hour"]["remaining_percent"] == 63.0
    assert claude_windows["five_hour"]["origin"] == "oauth_usage"
    codex_windows = {w["window"]: w for w in accounts[codex]["windows"]}
    assert codex_windows["seven_day"]["used_percent"] == 61.0
    assert codex_windows["five_hour"]["resets_at_ms"] == 1_766_400_000_000
    assert accounts[codex]["plan"] == "plus" and accounts[codex]["info"]["credits"]["balance"] == "0"
    sent = [r for r in env.fake.requests if r.path == CODEX_PATH]
    assert sent[0].headers["chatgpt-account-id"] == "acct-1"
    exposition = (await env.client.get("/metrics")).text
    assert 'relaymeter_quota_used_percent{account="claude-a",window="five_hour"} 37.0' in exposition

    env.clock.advance(400_000)
    env.fake.claude["five_hour"]["utilization"] = 55.0
    assert (await env.client.post("/api/quota/refresh")).status_code == 200
    hist = (
        await env.client.get("/api/quota/history", params={"account": claude, "window": "five_hour"})
    ).json()
    assert [h["used_percent"] for h in hist["items"]] == [37.0, 55.0]
    assert (await env.client.get("/api/quota/history", params={"account": "x"})).status_code == 422


async def test_expired_token_is_refreshed_then_the_call_retried(env: Env) -> None:
    # The stored access token is no longer valid upstream; the refresh token is.
    acc = await env.add_claude("claude-old", "tok-stale", valid=False, refresh_token="ref-ok")
    env.fake.refresh_tokens.add("ref-ok")
    res = (await env.client.post("/api/quota/refresh")).json()
    item = next(r for r in res["results"] if r["account_id"] == acc)
    assert item["status"] == "ok" and item["refreshed_token"] is True
    assert env.fake.token_calls == 1
    assert env.fake.calls_by_token["tok-stale"] == 1  # the 401 answer, then the retry below
    live = env.gateway.pool.accounts[acc]
    assert live.creds["access_token"].startswith("fresh-access-")
    assert env.fake.calls_by_token[live.creds["access_token"]] == 1
    # the new token was stored (encrypted) for the next start
    row = await account_store.get_account(env.state.db, acc)
    assert row is not None and "fresh-access" in env.state.box.decrypt(row["credentials_enc"])


async def test_token_expiring_soon_is_refreshed_before_the_call(env: Env) -> None:
    acc = await env.add_claude(
        "claude-exp", "tok-exp", valid=False, refresh_token="ref-2", expires_at="2001-01-01T00:00:00Z"
    )
    env.fake.refresh_tokens.add("ref-2")
    res = (await env.client.post("/api/quota/refresh")).json()
    assert next(r for r in res["results"] if r["account_id"] == acc)["status"] == "ok"
    assert env.fake.calls_by_token["tok-exp"] == 0  # never sent the expired token


async def test_rejected_credentials(env: Env) -> None:
    acc = await env.add_claude("claude-dead", "tok-dead", valid=False, refresh_token="ref-revoked")
    res = (await env.client.post("/api/quota/refresh")).json()
    item = next(r for r in res["results"] if r["account_id"] == acc)
    assert item["status"] == "rejected" and "token refresh failed" in item["message"]
    view = {a["account_id"]: a for a in (await env.client.get("/api/quota")).json()["accounts"]}
    assert view[acc]["last_status"] == "rejected" and view[acc]["windows"] == []


async def test_forced_refresh_cooldown(env: Env) -> None:
    acc = await env.add_claude("claude-a", "tok-a")
    assert (await env.client.post("/api/quota/refresh")).json()["results"][0]["status"] == "ok"
    env.clock.advance(60_000)
    again = (await env.client.post("/api/quota/refresh")).json()["results"][0]
    assert again["status"] == "skipped" and again["retry_after_s"] == 240
    view = (await env.client.get("/api/quota")).json()["accounts"][0]
    assert view["next_refresh_allowed_in_s"] == 240
    assert env.fake.usage_calls[CLAUDE_PATH] == 1
    env.clock.advance(240_000)
    assert (await env.client.post("/api/quota/refresh", json={"accounts": [acc]})).json()["results"][0][
        "status"
    ] == "ok"
    assert env.fake.usage_calls[CLAUDE_PATH] == 2
    forced = (await env.client.get("/api/quota", params={"force": 1})).json()
    assert forced["refresh_report"]["results"][0]["status"] == "skipped"
    assert forced["accounts"][0]["next_refresh_allowed_in_s"] == 300


async def test_single_flight_under_twenty_concurrent_forced_refreshes(env: Env) -> None:
    await env.add_claude("claude-a", "tok-a")
    env.fake.gate = asyncio.Event()
    calls = [asyncio.create_task(env.client.post("/api/quota/refresh")) for _ in range(20)]
    for _ in range(500):  # bounded wait until everyone is queued behind the one provider call
        if env.fake.arrived >= 1 and env.quota.joins >= 19:
            break
        await asyncio.sleep(0.01)
    env.fake.gate.set()
    answers = [r.json() for r in await asyncio.gather(*calls)]
    assert env.fake.usage_calls[CLAUDE_PATH] == 1, "exactly one provider call"
    assert sorted(a["joined"] for a in answers) == [False] + [True] * 19
    assert all(a["results"][0]["status"] == "ok" for a in answers)


async def test_scheduler_skips_an_exhausted_account_until_its_reset(env: Env) -> None:
    reset = env.clock.now + 2 * HOUR
    a = await env.add_claude("claude-first", "tok-a", priority=90)
    b = await env.add_claude("claude-second", "tok-b", priority=10)
    env.fake.per_token["tok-a"] = env.claude_doc(seven_day={"utilization": 100.0, "resets_at": iso(reset)})
    pool = env.gateway.pool
    assert pool.pick(MESSAGES, "claude-sonnet-4-5").id == a

    await env.quota.refresh(force=False)  # a scheduled run
    acc_a = pool.accounts[a]
    assert (acc_a.cooldown_kind, acc_a.cooldown_until_ms) == ("exhausted", reset)
    assert pool.pick(MESSAGES, "claude-sonnet-4-5").id == b
    view = {x["account_id"]: x for x in (await env.client.get("/api/quota")).json()["accounts"]}
    assert view[a]["exhausted_until_ms"] == reset and view[a]["cooldown"]["kind"] == "exhausted"

    env.clock.advance(HOUR)  # past the refresh interval, before the reset
    report = await env.quota.refresh(force=False)
    assert next(r for r in report.results if r["account_id"] == a)["status"] == "skipped"
    assert (env.fake.calls_by_token["tok-a"], env.fake.calls_by_token["tok-b"]) == (1, 2)
    assert pool.pick(MESSAGES, "claude-sonnet-4-5").id == b

    env.clock.advance(HOUR + 1000)  # the weekly window has reset
    assert pool.pick(MESSAGES, "claude-sonnet-4-5").id == a
    env.fake.per_token["tok-a"] = env.claude_doc(
        seven_day={"utilization": 0.0, "resets_at": iso(reset + 7 * 24 * HOUR)}
    )
    await env.quota.refresh(force=False)
    assert env.fake.calls_by_token["tok-a"] == 2
    assert a not in env.quota.exhausted


async def test_room_again_clears_an_exhausted_cooldown(env: Env) -> None:
    a = await env.add_claude("claude-a", "tok-a")
    env.fake.per_token["tok-a"] = env.claude_doc(
        five_hour={"utilization": 100.0, "resets_at": iso(env.clock.now + HOUR)}
    )
    await env.quota.refresh(force=True)
    assert env.gateway.pool.accounts[a].cooldown_kind == "exhausted"
    env.fake.per_token["tok-a"] = env.claude_doc(
        five_hour={"utilization": 20.0, "resets_at": iso(env.clock.now + HOUR)}
    )
    env.clock.advance(301_000)
    await env.quota.refresh(force=True)  # e.g. the plan was upgraded: room before the reset
    assert env.gateway.pool.accounts[a].cooldown_until_ms == 0


async def test_rate_limit_headers_and_429_hook(env: Env) -> None:
    a = await env.add_claude("claude-a", "tok-a")
    reset_s = (env.clock.now + 3 * 24 * HOUR) // 1000
    headers = {
        "anthropic-ratelimit-unified-5h-utilization": "0.30",
        "anthropic-ratelimit-unified-5h-reset": str((env.clock.now + HOUR) // 1000),
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-7d-utilization": "1.0",
        "anthropic-ratelimit-unified-7d-reset": str(reset_s),
        "anthropic-ratelimit-unified-7d-status": "rejected",
        "retry-after": "30",
    }
    pool = env.gateway.pool
    acc = pool.accounts[a]
    # What the gateway does with a 429: quota hook first, then its own cooldown bookkeeping.
    env.quota.observe_headers(a, "anthropic", 429, headers)
    env.quota.on_rate_limited(a)
    pool.on_status(acc, 429, headers, "rate limited")
    assert (acc.cooldown_kind, acc.cooldown_until_ms) == ("exhausted", reset_s * 1000)
    # The same headers again within a minute are not stored twice.
    env.quota.observe_headers(a, "anthropic", 429, headers)
    assert await env.quota.flush_headers() == 2
    for task in list(env.quota._background):
        await task
    assert env.fake.calls_by_token["tok-a"] == 1  # the 429 triggered one usage refresh
    rows = {r["window"]: r for r in await quota_store.latest(env.state.db, [a])}
    assert rows["five_hour"]["origin"] == "oauth_usage"  # the fetch is newer than the headers


async def test_local_windows_aligned_to_the_provider_reset(env: Env) -> None:
    a = await env.add_claude("claude-a", "tok-a")
    now = env.clock.now
    env.fake.per_token["tok-a"] = env.claude_doc(
        five_hour={"utilization": 50.0, "resets_at": iso(now + HOUR)}
    )
    await env.quota.refresh(force=True)

    def ev(i: int, ago_ms: int, tokens: int) -> UsageEvent:
        e = UsageEvent(
            event_hash=f"{i:064x}",
            ts_ms=now - ago_ms,
            source="gateway",
            account_id=a,
            provider="anthropic",
            model="claude-sonnet-4-5",
            input_tokens=tokens,
            cost_micros=tokens,
        )
        e.recompute_total()
        return e

    # the provider's window started 4 h ago (resets in 1 h): the 4.5 h old event is outside it
    await env.state.writer.write(
        [ev(1, 30 * 60_000, 100), ev(2, 3 * HOUR, 200), ev(3, int(4.5 * HOUR), 400), ev(4, 50 * HOUR, 800)]
    )
    view = next(x for x in (await env.client.get("/api/quota")).json()["accounts"] if x["account_id"] == a)
    five, seven = view["local"]["five_hour"], view["local"]["seven_day"]
    assert five["aligned_to_reset"] and five["start_ms"] == now - 4 * HOUR
    assert (five["requests"], five["total_tokens"]) == (2, 300)
    assert not seven["aligned_to_reset"]  # no weekly reset in the fake's answer relative to now
    assert (seven["requests"], seven["total_tokens"]) == (4, 1500)


async def test_cpa_held_accounts_through_api_call(env: Env) -> None:
    from relaymeter.ingest.cliproxy.connections import add_connection

    cpa = FakeCPA()
    cpa.auth_files = [
        make_auth_file(0, provider="claude"),
        make_auth_file(1, provider="codex"),
        make_auth_file(2, provider="claude"),
    ]
    tokens = {cpa.auth_files[0]["auth_index"]: "cpa-tok-0", cpa.auth_files[1]["auth_index"]: "cpa-tok-1"}
    env.fake.add_token("cpa-tok-0")
    env.fake.add_token("cpa-tok-1")
    cpa.api_call_handler = env.fake.cpa_handler(tokens)  # auth file 2 has no token in CPA
    async with cpa:
        await add_connection(
            env.state, {"name": "main", "base_url": cpa.url, "management_key": "mgmt-secret"}, check=False
        )
        env.quota.bases = {"claude": env.url, "codex": env.url + "/backend-api"}
        report = (await env.client.post("/api/quota/refresh")).json()
    by_origin = sorted((r["origin"], r["status"]) for r in report["results"])
    assert by_origin == [("cpa:main", "ok"), ("cpa:main", "ok"), ("cpa:main", "rejected")]
    view = [x for x in (await env.client.get("/api/quota")).json()["accounts"] if x["origin"] == "cpa:main"]
    assert len(view) == 3
    windows = {x["provider"]: {w["window"]: w for w in x["windows"]} for x in view if x["windows"]}
    assert windows["claude"]["five_hour"]["origin"] == "cpa_api_call"
    assert windows["codex"]["seven_day"]["used_percent"] == 61.0
    # relaymeter never saw a token: the usage call went through CPA's /api-call
    assert not any(r.path in (CLAUDE_PATH, CODEX_PATH) for r in env.fake.requests)


async def test_accounts_check_recommends_and_applies(env: Env) -> None:
    ok = await env.add_claude("a-ok", "tok-ok")
    full = await env.add_claude("b-full", "tok-full")
    env.fake.per_token["tok-full"] = env.claude_doc(
        seven_day={"utilization": 100.0, "resets_at": iso(env.clock.now + 24 * HOUR)}
    )
    sys_off = await env.add_claude("c-system-off", "tok-sys")
    user_off = await env.add_claude("d-user-off", "tok-user")
    dead = await env.add_claude("e-dead", "tok-dead", valid=False, refresh_token="ref-revoked")
    await account_store.set_enabled(env.state.db, sys_off, False, by="system")
    assert (await env.client.post(f"/api/accounts/{user_off}/disable")).status_code == 200

    dry = (await env.client.post("/api/quota/check")).json()
    recs = {r["account_id"]: r["recommendation"] for r in dry["results"]}
    assert recs == {ok: "keep", full: "disable", sys_off: "re-enable", user_off: "keep", dead: "remove"}
    assert "person" in next(r["reason"] for r in dry["results"] if r["account_id"] == user_off)
    assert await account_store.get_account(env.state.db, dead) is not None  # nothing applied yet

    applied = (await env.client.post("/api/quota/check", json={"apply": True})).json()
    assert {r["account_id"]: r["applied"] for r in applied["results"]} == {
        ok: None,
        full: "disabled",
        sys_off: "enabled",
        user_off: None,
        dead: "removed",
    }
    rows = {r["id"]: r for r in await account_store.list_accounts(env.state.db)}
    assert (rows[full]["enabled"], rows[full]["disabled_by"]) == (False, "system")
    assert (rows[sys_off]["enabled"], rows[sys_off]["disabled_by"]) == (True, None)
    assert (rows[user_off]["enabled"], rows[user_off]["disabled_by"]) == (False, "user")
    assert dead not in rows
    assert dead not in env.gateway.pool.accounts and env.gateway.pool.accounts[sys_off].enabled


async def test_gemini_code_assist_quota(env: Env) -> None:
    env.fake.add_token("tok-g")
    res = await env.client.post(
        "/api/accounts",
        json={
            "name": "gemini-a",
            "provider": "gemini",
            "kind": "oauth",
            "access_token": "tok-g",
            "base_url": env.url,
            "note": "project my-proj-123",
        },
    )
    assert res.status_code == 201, res.text
    acc = int(res.json()["id"])
    report = (await env.client.post("/api/quota/refresh")).json()
    assert report["results"][0]["status"] == "ok"
    sent = next(r for r in env.fake.requests if r.path.endswith("retrieveUserQuota"))
    assert sent.method == "POST" and sent.body == {"project": "my-proj-123"}
    view = next(a for a in (await env.client.get("/api/quota")).json()["accounts"] if a["account_id"] == acc)
    assert {w["window"]: w["used_percent"] for w in view["windows"]} == {
        "gemini-2.5-flash:requests": 0.0,
        "gemini-2.5-pro:requests": 25.0,
    }


async def test_history_is_pruned_but_the_latest_kept(env: Env) -> None:
    a = await env.add_claude("claude-a", "tok-a")
    await env.quota.refresh(force=True)
    env.clock.advance(400_000)
    await env.quota.refresh(force=True)
    assert len(await quota_store.history(env.state.db, a, window="five_hour")) == 2
    removed = await quota_store.prune(env.state.db, env.clock.now + 1)
    assert removed == 4  # the older fetch's four windows; the newest of each window stays
    assert len(await quota_store.history(env.state.db, a, window="five_hour")) == 1
    assert len(await quota_store.latest(env.state.db, [a])) == 4
