"""Admin API for gateway accounts: CRUD, secrets never shown, test, batch, import with dry-run."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from sqlalchemy import select

from relaymeter.config import Settings
from relaymeter.store.schema import accounts, audit_log
from tests.fakes.gateway_env import ADMIN_TOKEN, GatewayEnv, gateway_env


@pytest.fixture
async def env(make_settings: Callable[..., Settings]) -> AsyncIterator[GatewayEnv]:
    async with gateway_env(make_settings(admin_token=ADMIN_TOKEN)) as environment:
        yield environment


async def test_create_never_returns_or_stores_the_secret_in_clear(env: GatewayEnv) -> None:
    secret = "sk-ant-api03-verysecretvalue-0123456789"
    created = await env.add_account(
        name="main", provider="anthropic", api_key=secret, priority=70, models=["claude-*"]
    )
    assert created["origin"] == "gateway" and created["priority"] == 70
    assert secret not in orjson.dumps(created).decode()
    assert created["credential"]["api_key"].startswith("sk-ant") and created["credential"][
        "api_key"
    ].endswith("6789")
    async with env.state.db.connect() as conn:
        stored = (await conn.execute(select(accounts.c.credentials_enc, accounts.c.external_id))).one()
    assert secret not in stored[0] and secret not in stored[1]
    listed = (await env.admin.get("/api/accounts")).json()["accounts"]
    assert [a["name"] for a in listed] == ["main"]
    assert listed[0]["runtime"]["health"] == "ok" and listed[0]["runtime"]["in_flight"] == 0
    assert secret not in (await env.admin.get("/api/accounts")).text
    dup = await env.admin.post(
        "/api/accounts", json={"name": "again", "provider": "anthropic", "api_key": secret}
    )
    assert dup.status_code == 409 and "already exists" in dup.json()["error"]["message"]


async def test_validation_names_the_field(env: GatewayEnv) -> None:
    cases = [
        ({"name": "x", "provider": "openai-compatible", "api_key": "k"}, "base_url"),
        ({"name": "x", "provider": "anthropic"}, "api_key"),
        ({"name": "x", "provider": "nope", "api_key": "k"}, "provider"),
        ({"name": "x", "provider": "openai", "api_key": "k", "base_url": "ftp://x"}, "base_url"),
        ({"name": "x", "provider": "openai", "api_key": "k", "weight": 0}, "weight"),
        ({"name": "x", "provider": "anthropic", "kind": "oauth"}, "access_token"),
    ]
    for body, field in cases:
        res = await env.admin.post("/api/accounts", json=body)
        assert res.status_code == 422, body
        assert field in res.json()["error"]["message"], (body, res.json())
    unauth = await env.admin.get("/api/accounts", headers={"authorization": "Bearer wrong"})
    assert unauth.status_code == 401


async def test_edit_enable_disable_delete_and_audit(env: GatewayEnv) -> None:
    acc = await env.add_account(name="edit-me", daily_request_cap=10, daily_cost_cap_usd=2.5)
    assert acc["daily_cost_cap_micros"] == 2_500_000
    res = await env.admin.patch(
        f"/api/accounts/{acc['id']}",
        json={"priority": 5, "daily_request_cap": None, "model_map": {"fast": "claude-haiku-4-5"}},
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert (
        body["priority"] == 5
        and body["daily_request_cap"] is None
        and body["daily_cost_cap_micros"] == 2_500_000
    )
    assert env.gateway.pool.accounts[acc["id"]].map_model("fast") == "claude-haiku-4-5"  # reloaded at once
    disabled = (await env.admin.post(f"/api/accounts/{acc['id']}/disable")).json()
    assert disabled["enabled"] is False and disabled["disabled_by"] == "user"
    assert env.gateway.pool.accounts[acc["id"]].enabled is False
    enabled = (await env.admin.post(f"/api/accounts/{acc['id']}/enable")).json()
    assert enabled["enabled"] is True and enabled["disabled_by"] is None
    assert (await env.admin.delete(f"/api/accounts/{acc['id']}")).status_code == 204
    assert (await env.admin.get(f"/api/accounts/{acc['id']}")).status_code == 404
    assert acc["id"] not in env.gateway.pool.accounts
    async with env.state.db.connect() as conn:
        actions = [r[0] for r in await conn.execute(select(audit_log.c.action).order_by(audit_log.c.id))]
    assert {"account.create", "account.update", "account.disable", "account.enable", "account.delete"} <= set(
        actions
    )


async def test_test_endpoint_marks_rejected_credentials_unhealthy(env: GatewayEnv) -> None:
    good = await env.add_account(name="good", api_key="sk-good")
    bad = await env.add_account(name="bad", api_key="sk-bad")
    env.anthropic.valid_credentials = {"sk-good"}
    ok = (await env.admin.post(f"/api/accounts/{good['id']}/test")).json()
    assert ok["ok"] is True and ok["status"] == 200 and ok["models"] == 2
    failed = (await env.admin.post(f"/api/accounts/{bad['id']}/test")).json()
    assert failed["ok"] is False and failed["status"] == 401 and "invalid x-api-key" in failed["message"]
    runtime = (await env.admin.get(f"/api/accounts/{bad['id']}")).json()
    assert runtime["runtime"]["health"] == "unhealthy"
    assert runtime["health"] == "unhealthy" and "invalid x-api-key" in runtime["health_reason"]  # persisted
    # fixing the key brings it back at once
    await env.admin.patch(f"/api/accounts/{bad['id']}", json={"api_key": "sk-good-2"})
    env.anthropic.valid_credentials.add("sk-good-2")
    assert env.gateway.pool.accounts[bad["id"]].health == "ok"
    assert (await env.admin.post(f"/api/accounts/{bad['id']}/test")).json()["ok"] is True


async def test_batch_sets_caps_priority_and_enabled(env: GatewayEnv) -> None:
    a = await env.add_account(name="a")
    b = await env.add_account(name="b")
    c = await env.add_account(name="c")
    res = await env.admin.post(
        "/api/accounts/batch",
        json={"all": True, "set": {"daily_cost_cap_usd": 12.5, "daily_request_cap": 1000}},
    )
    assert res.status_code == 200 and res.json()["updated"] == 3
    res = await env.admin.post(
        "/api/accounts/batch", json={"ids": [a["id"], c["id"]], "set": {"enabled": False, "priority": 1}}
    )
    assert res.json()["updated"] == 2
    rows = {r["id"]: r for r in (await env.admin.get("/api/accounts")).json()["accounts"]}
    assert all(
        r["daily_cost_cap_micros"] == 12_500_000 and r["daily_request_cap"] == 1000 for r in rows.values()
    )
    assert (
        rows[a["id"]]["enabled"] is False
        and rows[a["id"]]["disabled_by"] == "user"
        and rows[a["id"]]["priority"] == 1
    )
    assert rows[b["id"]]["enabled"] is True and rows[b["id"]]["priority"] == 50
    assert env.gateway.pool.accounts[c["id"]].enabled is False
    missing = await env.admin.post("/api/accounts/batch", json={"ids": [999], "set": {"priority": 3}})
    assert missing.status_code == 404 and "999" in missing.json()["error"]["message"]
    untargeted = await env.admin.post("/api/accounts/batch", json={"set": {"priority": 3}})
    assert untargeted.status_code == 422 and "all=true" in untargeted.json()["error"]["message"]


def _jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(orjson.dumps(claims)).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{body}.sig"


async def test_import_csv_dry_run_then_apply(env: GatewayEnv) -> None:
    existing = await env.add_account(name="existing", provider="openai", api_key="sk-dup")
    csv_text = (
        "name,provider,api_key,base_url,priority,models,model_map,daily_cost_cap_usd\n"
        "deepseek,openai-compatible,sk-ds,https://api.deepseek.com/v1,60,deepseek-chat;deepseek-reasoner,,5\n"
        "broken,martian,sk-x,,,,,\n"
        "dup,openai,sk-dup,,,,,\n"
        "claude main,claude,sk-ant-1,,,,sonnet=claude-sonnet-4-5,\n"
    )
    preview = await env.admin.post(
        "/api/accounts/import?dry_run=true", content=csv_text, headers={"content-type": "text/csv"}
    )
    assert preview.status_code == 200, preview.text
    result = preview.json()
    assert (result["dry_run"], result["added"], result["skipped"], result["failed"]) == (True, 2, 1, 1)
    by_name = {r["name"]: r for r in result["rows"]}
    assert by_name["broken"]["status"] == "failed" and "provider" in by_name["broken"]["reason"]
    assert by_name["dup"]["status"] == "skipped" and str(existing["id"]) in by_name["dup"]["reason"]
    assert len((await env.admin.get("/api/accounts")).json()["accounts"]) == 1  # nothing written
    applied = (
        await env.admin.post("/api/accounts/import", content=csv_text, headers={"content-type": "text/csv"})
    ).json()
    assert applied["added"] == 2 and all("id" in r for r in applied["rows"] if r["status"] == "added")
    rows = {r["name"]: r for r in (await env.admin.get("/api/accounts")).json()["accounts"]}
    assert rows["deepseek"]["models"] == ["deepseek-chat", "deepseek-reasoner"]
    assert rows["deepseek"]["daily_cost_cap_usd"] == 5.0 and rows["deepseek"]["priority"] == 60
    assert rows["claude main"]["provider"] == "anthropic" and rows["claude main"]["model_map"] == {
        "sonnet": "claude-sonnet-4-5"
    }
    again = (
        await env.admin.post("/api/accounts/import", content=csv_text, headers={"content-type": "text/csv"})
    ).json()
    assert again["added"] == 0 and again["skipped"] == 3


async def test_import_cpa_auth_files(env: GatewayEnv) -> None:
    files = [
        {
            "type": "claude",
            "email": "alice@example.com",
            "access_token": "sk-ant-oat01-aaaa",
            "refresh_token": "sk-ant-ort01-bbbb",
            "expired": "2030-01-02T03:04:05+08:00",
            "last_refresh": "2029-12-31T00:00:00Z",
            "priority": 80,
        },
        {
            "type": "codex",
            "email": "bob@example.com",
            "access_token": "eyJ.codex.access",
            "refresh_token": "rt_codex",
            "id_token": _jwt(
                {
                    "https://api.openai.com/auth": {
                        "chatgpt_account_id": "acct-123",
                        "chatgpt_plan_type": "plus",
                    }
                }
            ),
            "expired": "2030-01-01T00:00:00Z",
        },
        {
            "type": "gemini",
            "email": "carol@example.com",
            "token": {"access_token": "ya29.x", "refresh_token": "1//y", "expiry": "2030-01-01T00:00:00Z"},
            "project_id": "proj-1",
        },
        {"type": "qwen", "email": "dave@example.com", "access_token": "z"},
    ]
    body = {"content": orjson.dumps(files).decode(), "dry_run": False}
    result = (await env.admin.post("/api/accounts/import", json=body)).json()
    assert (result["added"], result["failed"]) == (3, 1)
    assert "unsupported auth file type 'qwen'" in result["rows"][3]["reason"]
    rows = {r["email"]: r for r in (await env.admin.get("/api/accounts")).json()["accounts"]}
    claude = rows["alice@example.com"]
    assert (claude["provider"], claude["kind"], claude["priority"]) == ("anthropic", "oauth", 80)
    assert claude["token_expires_ms"] == 1893524645000  # 2030-01-01T19:04:05Z
    assert claude["credential"]["has_refresh_token"] is True
    codex = rows["bob@example.com"]
    assert (codex["provider"], codex["plan"], codex["credential"]["account_id"]) == (
        "openai",
        "plus",
        "acct-123",
    )
    gemini = rows["carol@example.com"]
    assert gemini["provider"] == "gemini" and gemini["note"] == "project proj-1"
    assert gemini["runtime"]["unavailable_reason"] == "this provider/kind cannot be relayed"
    again = (await env.admin.post("/api/accounts/import", json=body)).json()
    assert again["skipped"] == 3  # the same logins are recognised


async def test_import_rejects_garbage_with_a_clear_error(env: GatewayEnv) -> None:
    empty = await env.admin.post("/api/accounts/import", content=b"   ")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
    headerless = await env.admin.post("/api/accounts/import", content=b"just,some,text\n1,2,3")
    assert headerless.status_code == 400 and "header row" in headerless.json()["error"]["message"]
    binary = await env.admin.post("/api/accounts/import", content=b"\xff\xfe\x00bad")
    assert binary.status_code == 400 and "UTF-8" in binary.json()["error"]["message"]
    jsonl = b'{"name": "a", "provider": "openai", "api_key": "k1"}\nnot json\n'
    result = (await env.admin.post("/api/accounts/import?dry_run=true", content=jsonl)).json()
    assert (result["added"], result["failed"]) == (1, 1) and "not JSON" in result["rows"][1]["reason"]
