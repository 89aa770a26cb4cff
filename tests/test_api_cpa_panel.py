"""CPA panel mode: the legacy usage payload equals a brute-force recomputation from raw events,
export/import round trip, model prices, the management key check (with CPA's ban), the reverse
proxy to a (fake) CPA and CORS for the panel's browser page."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from relaymeter.config import Settings
from relaymeter.domain.windows import DAY_MS, now_ms, zone
from tests.analytics_seed import make_events, seed, stored_rows
from tests.conftest import running_app
from tests.fakes.cpa import FakeCPA

TZ = "America/St_Johns"  # -03:30 / -02:30: local days and hours are not UTC ones
KEY = "panel-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def panel(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with running_app(make_settings(timezone=TZ, cpa_panel_key=KEY)) as (app, client):
        yield client, app.state.rm


def expected_tokens(row: dict[str, Any]) -> dict[str, int]:
    """CPA's token semantics, written out per provider of the seeded data."""
    provider = row["provider"]
    inp, cr, out, rs = (
        row["input_tokens"],
        row["cache_read_tokens"],
        row["output_tokens"],
        row["reasoning_tokens"],
    )
    if provider == "claude":  # uncached input; cache reads only in their own field
        return {
            "input_tokens": inp,
            "output_tokens": out,
            "reasoning_tokens": rs,
            "cached_tokens": 0,
            "cache_tokens": 0,
            "cache_read_tokens": cr,
            "cache_creation_tokens": row["cache_creation_tokens"],
            "total_tokens": row["total_tokens"],
        }
    return {  # codex (OpenAI) and gemini count cached input inside input; gemini's output excludes reasoning
        "input_tokens": inp + cr,
        "output_tokens": out - rs if provider == "gemini" else out,
        "reasoning_tokens": rs,
        "cached_tokens": cr,
        "cache_tokens": cr,
        "cache_read_tokens": cr,
        "cache_creation_tokens": row["cache_creation_tokens"],
        "total_tokens": row["total_tokens"],
    }


def brute_force_snapshot(rows: list[dict[str, Any]], tz_name: str) -> dict[str, Any]:
    tz = zone(tz_name)
    newest = sorted(rows, key=lambda r: (r["ts_ms"], r["id"]), reverse=True)

    def counts(items: list[dict[str, Any]]) -> dict[str, int]:
        failed = sum(1 for r in items if r["failed"])
        return {
            "total_requests": len(items),
            "success_count": len(items) - failed,
            "failure_count": failed,
            "total_tokens": sum(r["total_tokens"] for r in items),
        }

    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in newest:
        grouped[r["endpoint"]][r["actual_model"] or r["model"]].append(r)
    apis = {}
    for endpoint, models in grouped.items():
        items = [r for rs in models.values() for r in rs]
        apis[endpoint] = {
            **counts(items),
            "models": {
                model: {
                    **counts(rs),
                    "details": [
                        {
                            "timestamp": datetime.fromtimestamp(r["ts_ms"] / 1000, tz).isoformat(
                                timespec="milliseconds"
                            ),
                            "source": r["account_label"],
                            "auth_index": r["auth_index"],
                            "tokens": expected_tokens(r),
                            "failed": bool(r["failed"]),
                            **({"latency_ms": r["latency_ms"]} if r["latency_ms"] is not None else {}),
                            "request_id": r["request_id"],
                            "provider": r["provider"],
                            "event_hash": r["event_hash"],
                        }
                        for r in rs
                    ],
                }
                for model, rs in models.items()
            },
        }
    by: dict[str, dict[str, int]] = {k: defaultdict(int) for k in ("rd", "rh", "td", "th")}
    for r in newest:
        local = datetime.fromtimestamp(r["ts_ms"] / 1000, tz)
        day, hour = local.date().isoformat(), f"{local.hour:02d}"
        by["rd"][day] += 1
        by["rh"][hour] += 1
        by["td"][day] += r["total_tokens"]
        by["th"][hour] += r["total_tokens"]
    return {
        **counts(newest),
        "apis": apis,
        "requests_by_day": dict(by["rd"]),
        "requests_by_hour": dict(by["rh"]),
        "tokens_by_day": dict(by["td"]),
        "tokens_by_hour": dict(by["th"]),
    }


async def test_usage_payload_matches_brute_force(panel: tuple[httpx.AsyncClient, Any]) -> None:
    client, state = panel
    now = now_ms()
    await seed(state.db, make_events(1200, now - 9 * DAY_MS, now, seed=21))
    rows = await stored_rows(state.db)
    res = await client.get("/v0/management/usage", headers=AUTH)
    assert res.status_code == 200, res.text
    body = res.json()
    want = brute_force_snapshot(rows, TZ)
    assert body["failed_requests"] == want["failure_count"] > 0
    assert body["usage"] == want
    # details are newest first and the payload is limited to the newest N events
    limited = (await client.get("/v0/management/usage", params={"limit": 50}, headers=AUTH)).json()["usage"]
    newest = sorted(rows, key=lambda r: (r["ts_ms"], r["id"]), reverse=True)[:50]
    assert limited == brute_force_snapshot(newest, TZ)


async def test_export_import_round_trip(
    panel: tuple[httpx.AsyncClient, Any], make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    client, state = panel
    now = now_ms()
    await seed(state.db, make_events(400, now - 3 * DAY_MS, now, seed=22))
    exported = await client.get("/v0/management/usage/export", headers=AUTH)
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    doc = exported.json()
    assert doc["version"] == 1 and doc["exported_at"].endswith("Z") and doc["usage"]["total_requests"] == 400

    other = make_settings(data_dir=tmp_path / "other", timezone="UTC", cpa_panel_key=KEY)
    async with running_app(other) as (_app2, client2):
        first = await client2.post("/v0/management/usage/import", content=orjson.dumps(doc), headers=AUTH)
        assert first.status_code == 200, first.text
        assert first.json() | {"format": "x"} == {
            "added": 400,
            "skipped": 0,
            "failed": 0,
            "format": "x",
            "total_requests": 400,
            "failed_requests": doc["usage"]["failure_count"],
        }
        again = (
            await client2.post("/v0/management/usage/import", content=orjson.dumps(doc), headers=AUTH)
        ).json()
        assert again["added"] == 0 and again["skipped"] == 400
        # The imported copy shows the same usage (tokens given back in relaymeter's buckets).
        copy = (await client2.get("/v0/management/usage", headers=AUTH)).json()["usage"]
    original = doc["usage"]
    assert copy["total_tokens"] == original["total_tokens"]
    for endpoint, api in original["apis"].items():
        for model, slot in api["models"].items():
            mine = copy["apis"][endpoint]["models"][model]
            assert [d["tokens"] for d in mine["details"]] == [d["tokens"] for d in slot["details"]]


async def test_import_refuses_aggregate_only_export(panel: tuple[httpx.AsyncClient, Any]) -> None:
    client, _state = panel
    doc = {
        "version": 1,
        "usage": {"total_requests": 10, "apis": {"POST /v1/messages": {"total_requests": 10, "models": {}}}},
    }
    res = await client.post("/v0/management/usage/import", content=orjson.dumps(doc), headers=AUTH)
    assert res.status_code == 400 and "aggregate" in res.json()["error"]
    empty = await client.post("/v0/management/usage/import", content=b"", headers=AUTH)
    assert empty.status_code == 400 and isinstance(empty.json()["error"], str)


async def test_model_prices(panel: tuple[httpx.AsyncClient, Any]) -> None:
    client, _state = panel
    res = await client.put(
        "/v0/management/model-prices",
        json={
            "prices": {
                "my-model": {"prompt": 3, "completion": 15, "cache": 0.3},
                "other": {"prompt": 1, "completion": 2},
            }
        },
        headers=AUTH,
    )
    assert res.status_code == 200, res.text
    prices = (await client.get("/v0/management/model-prices", headers=AUTH)).json()["prices"]
    assert prices["my-model"] == {"prompt": 3.0, "completion": 15.0, "cache": 0.3}
    assert prices["other"] == {"prompt": 1.0, "completion": 2.0, "cache": 1.0}
    bad = await client.put(
        "/v0/management/model-prices", json={"prices": {"x": {"prompt": -1, "completion": 1}}}, headers=AUTH
    )
    assert bad.status_code == 422


async def test_key_check_and_ban(panel: tuple[httpx.AsyncClient, Any]) -> None:
    client, _state = panel
    missing = await client.get("/v0/management/usage")
    assert missing.status_code == 401 and missing.json() == {"error": "missing management key"}
    assert (await client.get("/v0/management/usage", headers={"X-Management-Key": KEY})).status_code == 200
    assert (await client.get("/v0/management/usage", headers={"Authorization": KEY})).status_code == 200
    for _ in range(5):
        wrong = await client.get("/v0/management/usage", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "invalid management key"}
    banned = await client.get("/v0/management/usage", headers=AUTH)
    assert banned.status_code == 403 and banned.json()["error"].startswith(
        "IP banned due to too many failed attempts"
    )


async def test_admin_session_is_accepted(panel: tuple[httpx.AsyncClient, Any]) -> None:
    client, _state = panel
    await client.post("/api/auth/login", json={"password": "test-admin-password"})
    assert (await client.get("/v0/management/usage")).status_code == 200


async def test_no_key_configured(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_app, client):
        res = await client.get("/v0/management/usage", headers=AUTH)
        assert res.status_code == 403 and "cpa_panel_key" in res.json()["error"]


async def test_reverse_proxy_to_cpa(make_settings: Callable[..., Settings]) -> None:
    async with FakeCPA(management_key="cpa-secret") as cpa:
        settings = make_settings(cpa_panel_url=cpa.url + "/v0/management/")
        async with running_app(settings) as (app, client):
            # The key of the CPA connection at cpa_panel_url is accepted (and used upstream).
            from relaymeter.store import collector as collector_store

            await collector_store.create_connection(
                app.state.rm.db,
                {
                    "name": "main",
                    "base_url": cpa.url,
                    "management_key_enc": app.state.rm.box.encrypt("cpa-secret"),
                    "enabled": False,
                },
            )
            headers = {"Authorization": "Bearer cpa-secret"}
            res = await client.get("/v0/management/config", headers=headers)
            assert res.status_code == 200, res.text
            assert res.headers["x-cpa-version"] == cpa.version and "usage-statistics-enabled" in res.json()
            res = await client.put(
                "/v0/management/usage-statistics-enabled", json={"value": False}, headers=headers
            )
            assert res.json() == {"status": "ok"} and cpa.publishing is False
            # CPA's own errors pass through unchanged.
            res = await client.get("/v0/management/nothing-here", headers=headers)
            assert res.status_code == 404
            # A wrong key never reaches CPA (no strike against relaymeter's address there).
            before = len(cpa.log)
            assert (
                await client.get("/v0/management/config", headers={"Authorization": "Bearer bad"})
            ).status_code == 401
            assert len(cpa.log) == before and not cpa.failures
            # Admins reach CPA with the connection's key.
            await client.post("/api/auth/login", json={"password": "test-admin-password"})
            assert (await client.get("/v0/management/config")).status_code == 200
        port = cpa.port
    async with running_app(make_settings(cpa_panel_url=f"http://127.0.0.1:{port}", cpa_panel_key=KEY)) as (
        _a,
        client,
    ):
        down = await client.get("/v0/management/config", headers=AUTH)
        assert down.status_code == 502 and "unreachable" in down.json()["error"]


async def test_cors_for_the_panel_only(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(cpa_panel_key=KEY, cpa_panel_cors_origins=["http://cpa.local:8317"])
    async with running_app(settings) as (_app, client):
        pre = await client.options(
            "/v0/management/usage",
            headers={
                "Origin": "http://cpa.local:8317",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert (
            pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://cpa.local:8317"
        )
        assert "authorization" in pre.headers["access-control-allow-headers"]
        res = await client.get("/v0/management/usage", headers={**AUTH, "Origin": "http://cpa.local:8317"})
        assert res.headers["access-control-allow-origin"] == "http://cpa.local:8317"
        other = await client.get("/v0/management/usage", headers={**AUTH, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        api = await client.get("/api/health", headers={"Origin": "http://cpa.local:8317"})
        assert "access-control-allow-origin" not in api.headers
