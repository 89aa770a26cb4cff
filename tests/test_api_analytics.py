"""Analytics routes over a seeded store: summary, requests (pagination, detail), key usage,
account load, overview, health, and validation errors that name the parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from relaymeter.config import Settings
from relaymeter.domain.events import UsageEvent
from relaymeter.domain.redact import sha256_hex
from relaymeter.domain.windows import (
    DAY_MS,
    HOUR_MS,
    now_ms,
    start_of_day_ms,
    start_of_month_ms,
    start_of_week_ms,
    zone,
)
from relaymeter.store import accounts as accounts_store
from relaymeter.store import keys as keys_store
from relaymeter.store.db import Database
from tests.analytics_seed import brute_metrics, make_events, seed, served, stored_rows
from tests.conftest import running_app

TZ = "Asia/Kolkata"


class FakeGateway:
    """Stands in for the gateway service: only its live snapshot() is read by the analytics API."""

    name = "gateway"

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"accounts": {}, "api_keys": {}}

    def snapshot(self) -> dict[str, Any]:
        return self.state

    def key_usage(self, key_id: int) -> dict[str, Any]:
        return {"in_flight": 0, "rpm_used": 4.0, "tpm_used": 900.0}


@pytest.fixture
async def api(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[httpx.AsyncClient, Database, Any]]:
    async with running_app(make_settings(timezone=TZ, week_start="sunday")) as (app, client):
        res = await client.post("/api/auth/login", json={"password": "test-admin-password"})
        assert res.status_code == 200
        yield client, app.state.rm.db, app.state.rm


@pytest.fixture
async def seeded(
    api: tuple[httpx.AsyncClient, Database, Any],
) -> tuple[httpx.AsyncClient, list[dict[str, Any]]]:
    client, db, _state = api
    now = now_ms()
    await seed(db, make_events(1500, now - 40 * DAY_MS, now, seed=5))
    return client, await stored_rows(db)


def totals_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return brute_metrics(rows).to_dict()


async def test_summary_matches_raw_events_with_filters(
    seeded: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, rows = seeded
    res = await client.get("/api/summary", params={"range": "7d"})
    assert res.status_code == 200, res.text
    body = res.json()
    start, end = body["range"]["start_ms"], body["range"]["end_ms"]
    assert end - start == 7 * DAY_MS and body["range"]["tz"] == TZ
    in_range = [r for r in rows if start <= r["ts_ms"] < end]
    assert body["totals"] == totals_of(in_range)
    assert sum(b["requests"] for b in body["by_model"]) == len(in_range)
    assert {b["model"] for b in body["by_model"]} == {served(r) for r in in_range}

    some_key = in_range[0]["api_key_id"]
    res = await client.get(
        "/api/summary",
        params=[
            ("range", "30d"),
            ("model", "claude-sonnet-4-5,gpt-5-codex"),
            ("status", "failed"),
            ("api_key", str(some_key)),
        ],
    )
    body = res.json()
    start, end = body["range"]["start_ms"], body["range"]["end_ms"]
    picked = [
        r
        for r in rows
        if start <= r["ts_ms"] < end
        and served(r) in ("claude-sonnet-4-5", "gpt-5-codex")
        and r["failed"]
        and r["api_key_id"] == some_key
    ]
    assert body["totals"] == totals_of(picked)
    assert body["filters"]["model"] == ["claude-sonnet-4-5", "gpt-5-codex"]
    assert body["filters"]["api_key"] == [some_key]


async def test_custom_range_in_zone(seeded: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    client, rows = seeded
    day = datetime.fromtimestamp((now_ms() - 3 * DAY_MS) / 1000, zone(TZ)).date().isoformat()
    res = await client.get("/api/summary", params={"start": day, "end": day + "T12:30"})
    body = res.json()
    assert body["range"]["name"] == "custom"
    assert body["range"]["start"] == f"{day}T00:00:00+05:30"
    assert body["range"]["end"] == f"{day}T12:30:00+05:30"
    start, end = body["range"]["start_ms"], body["range"]["end_ms"]
    assert body["totals"]["requests"] == sum(1 for r in rows if start <= r["ts_ms"] < end)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"range": "custom"}, "start"),
        ({"range": "yesterday"}, "range"),
        ({"start": "not a date"}, "start"),
        ({"start": "2026-05-02", "end": "2026-05-01"}, "end"),
        ({"account": "abc"}, "account"),
        ({"status": "maybe"}, "status"),
    ],
)
async def test_bad_parameters_name_the_field(
    api: tuple[httpx.AsyncClient, Database, Any], params: dict[str, str], field: str
) -> None:
    client, _db, _state = api
    res = await client.get("/api/summary", params=params)
    assert res.status_code == 422, res.text
    err = res.json()["error"]
    assert err["code"] == "validation_error"
    assert err["message"].startswith(field + ":")
    assert err["fields"][0]["field"] == field


async def test_timeseries_route(seeded: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    client, rows = seeded
    res = await client.get(
        "/api/timeseries", params={"range": "24h", "metric": "tokens,cost", "group_by": "model"}
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["bucket"] == "hour" and body["metrics"] == ["total_tokens", "cost_usd"]
    assert 24 <= len(body["buckets"]) <= 25
    start, end = body["range"]["start_ms"], body["range"]["end_ms"]
    in_range = [r for r in rows if start <= r["ts_ms"] < end]
    assert sum(s["totals"]["total_tokens"] for s in body["series"]) == sum(
        r["total_tokens"] for r in in_range
    )
    for s in body["series"]:
        assert sum(s["values"]["total_tokens"]) == s["totals"]["total_tokens"]
    bad = await client.get("/api/timeseries", params={"range": "30d", "bucket": "5m"})
    assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("bucket:")
    bad = await client.get("/api/timeseries", params={"metric": "joy"})
    assert bad.status_code == 422 and "unknown metric 'joy'" in bad.json()["error"]["message"]


async def test_requests_keyset_pagination_and_detail(
    seeded: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, rows = seeded
    params: dict[str, Any] = {"range": "7d", "limit": 37, "status": "failed"}
    first = (await client.get("/api/requests", params=params)).json()
    start, end = first["range"]["start_ms"], first["range"]["end_ms"]
    want = sorted(
        (r for r in rows if start <= r["ts_ms"] < end and r["failed"]),
        key=lambda r: (r["ts_ms"], r["id"]),
        reverse=True,
    )
    seen: list[int] = []
    page = first
    while True:
        seen.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            break
        page = (await client.get("/api/requests", params={**params, "cursor": page["next_cursor"]})).json()
    assert seen == [r["id"] for r in want]
    item = first["items"][0]
    assert item["failed"] is True and item["error_message"] and "sk-abcdef" not in item["error_message"]
    assert item["account_name"] and item["api_key_prefix"] and item["time"].endswith("+05:30")

    detail = await client.get(f"/api/requests/{item['id']}")
    assert detail.status_code == 200
    body = detail.json()
    assert body["event_hash"] and body["raw"]["api_key"] == "[redacted]"
    assert (await client.get("/api/requests/999999999")).status_code == 404
    bad = await client.get("/api/requests", params={"cursor": "garbage!"})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "cursor"
    # simple dashboards: newest N without a range
    latest = (await client.get("/api/requests", params={"limit": 5})).json()
    newest = sorted(rows, key=lambda r: (r["ts_ms"], r["id"]), reverse=True)[:5]
    assert [i["id"] for i in latest["items"]] == [r["id"] for r in newest] and latest["range"] is None


async def test_keys_usage_calendar_periods(api: tuple[httpx.AsyncClient, Database, Any]) -> None:
    client, db, state = api
    tz = zone(TZ)
    now = now_ms()
    key_id = await keys_store.create_key(
        db,
        sha256_hex("sk-relay-test-key-1"),
        "sk-rel...ey-1",
        {
            "name": "team-a",
            "daily_limit_micros": 1_000_000,
            "monthly_limit_micros": 50_000_000,
            "total_limit_micros": 9_000_000,
        },
    )
    day0, week0, month0 = (
        start_of_day_ms(now, tz),
        start_of_week_ms(now, tz, "sunday"),
        start_of_month_ms(now, tz),
    )
    times = [now - 1000, day0 - 1000, week0 + 5, week0 - 10, month0 + 1, month0 - 1, now - 60 * DAY_MS]
    events = []
    for i, ts in enumerate(times):
        ev = UsageEvent(
            event_hash=sha256_hex(f"key-ev-{i}"),
            ts_ms=ts,
            source="gateway",
            api_key_id=key_id,
            model="m",
            endpoint="POST /v1/messages",
            input_tokens=10,
            output_tokens=5,
            cost_micros=400_000,
            failed=i == 0,
        )
        ev.recompute_total()
        events.append(ev)
    await seed(db, events)
    fake = FakeGateway()
    state.services["gateway"] = fake
    live = (await client.get("/api/keys/usage")).json()["items"][0]
    assert (live["concurrency_in_use"], live["rpm_used"], live["tpm_used"]) == (0, 4.0, 900.0)
    fake.state["api_keys"] = {key_id: {"in_flight": 2}}
    res = await client.get("/api/keys/usage")
    assert res.status_code == 200, res.text
    item = next(i for i in res.json()["items"] if i["api_key_id"] == key_id)

    def expected(lo: int) -> int:
        return sum(1 for t in times if lo <= t <= now)

    assert item["today"]["requests"] == expected(day0)
    assert item["week"]["requests"] == expected(week0)
    assert item["month"]["requests"] == expected(month0)
    assert item["today"]["cost_micros"] == 400_000 * expected(day0)
    assert item["today"]["limit_micros"] == 1_000_000
    assert item["today"]["remaining_micros"] == max(1_000_000 - 400_000 * expected(day0), 0)
    assert item["today"]["failures"] == 1
    assert item["week"]["limit_micros"] is None and item["week"]["used_ratio"] is None
    assert item["total"]["cost_micros"] == 400_000 * len(times)
    assert item["total"]["remaining_micros"] == 9_000_000 - 400_000 * len(times)
    assert item["concurrency_in_use"] == 2
    assert item["today"]["resets_ms"] > now and res.json()["week_start"] == "sunday"


async def test_accounts_load_flags(api: tuple[httpx.AsyncClient, Database, Any]) -> None:
    client, db, state = api
    busy = await accounts_store.create_account(
        db,
        {
            "name": "busy",
            "provider": "claude",
            "external_id": "busy",
            "daily_request_cap": 10,
            "max_concurrency": 4,
        },
    )
    calm = await accounts_store.create_account(
        db, {"name": "calm", "provider": "codex", "external_id": "calm", "daily_token_cap": 1_000_000}
    )
    bare = await accounts_store.create_account(
        db, {"name": "bare", "provider": "codex", "external_id": "bare"}
    )
    now = now_ms()
    events = []
    for i in range(9):
        ev = UsageEvent(
            event_hash=sha256_hex(f"acc-ev-{i}"),
            ts_ms=now - i * 1000,
            source="gateway",
            account_id=busy if i < 8 else calm,
            model="m",
            endpoint="POST /v1/messages",
            input_tokens=100,
            output_tokens=50,
        )
        ev.recompute_total()
        events.append(ev)
    await seed(db, events)
    fake = FakeGateway()
    fake.state["accounts"] = [
        {
            "id": busy,
            "in_flight": 0,
            "in_flight_shared": 1,
            "health": "cooldown",
            "available": False,
            "unavailable_reason": "cooling down after 429",
        }
    ]
    state.services["gateway"] = fake
    body = (await client.get("/api/accounts/load")).json()
    items = {i["account_id"]: i for i in body["items"]}
    b, c, n = items[busy], items[calm], items[bare]
    assert b["today"]["requests"] == 8 and b["caps"]["requests"] == {
        "used": 8,
        "cap": 10,
        "remaining": 2,
        "ratio": 0.8,
    }
    assert b["load_rate"] == 0.8 and not b["overloaded"] and not b["idle"]
    assert b["concurrency"] == {"current": 1, "max": 4} and b["health"] == "cooldown"
    assert b["available"] is False and b["unavailable_reason"] == "cooling down after 429"
    assert c["available"] is None
    assert c["caps"]["tokens"]["used"] == 150 and c["load_rate"] == 150 / 1_000_000 and c["idle"]
    assert n["load_rate"] is None and n["idle"] and not n["overloaded"]
    assert b["share_of_requests"] == 8 / 9
    # one more request pushes "busy" over 80% of its daily request cap
    ev = UsageEvent(
        event_hash=sha256_hex("acc-ev-x"),
        ts_ms=now,
        source="gateway",
        account_id=busy,
        model="m",
        endpoint="e",
    )
    await seed(db, [ev])
    b = next(i for i in (await client.get("/api/accounts/load")).json()["items"] if i["account_id"] == busy)
    assert b["overloaded"] and b["load_rate"] == 0.9
    assert body["totals"]["accounts"] == 3


async def test_overview_one_call(seeded: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    client, rows = seeded
    res = await client.get("/api/overview")
    assert res.status_code == 200, res.text
    body = res.json()
    start, end = body["today"]["start_ms"], body["today"]["end_ms"]
    today = [r for r in rows if start <= r["ts_ms"] < end]
    k = body["kpis"]
    assert k["requests_today"] == len(today)
    assert k["tokens_today"] == sum(r["total_tokens"] for r in today)
    assert k["cost_today_micros"] == sum(r["cost_micros"] for r in today)
    assert k["active_api_keys_today"] == len({r["api_key_id"] for r in today if r["api_key_id"]})
    assert k["accounts_total"] >= 1
    assert len(body["trend_7d"]) == 7 and body["trend_7d"][-1]["requests"] == len(today)
    week_start = body["trend_7d"][0]["start_ms"]
    assert sum(p["requests"] for p in body["trend_7d"]) == sum(
        1 for r in rows if week_start <= r["ts_ms"] < end
    )
    assert sum(p["total_tokens"] for p in body["hourly_today"]) == k["tokens_today"]
    assert sum(m["total_tokens"] for m in body["tokens_by_model"]) == k["tokens_today"]
    for a in body["accounts"]:
        assert a["requests_today"] == sum(1 for r in today if r["account_id"] == a["account_id"])
    assert len(body["recent_requests"]) == 10
    assert body["recent_requests"][0]["ts_ms"] == max(r["ts_ms"] for r in rows)
    assert body["hourly_today"][0]["start_ms"] == start


async def test_auth_required_and_public_health(api: tuple[httpx.AsyncClient, Database, Any]) -> None:
    client, _db, _state = api
    health = await client.get("/api/health")
    assert health.json()["status"] == "ok" and health.json()["database"] is True
    await client.post("/api/auth/logout")
    for path in (
        "/api/summary",
        "/api/timeseries",
        "/api/requests",
        "/api/keys/usage",
        "/api/accounts/load",
        "/api/overview",
    ):
        res = await client.get(path)
        assert res.status_code == 401, path
    assert (await client.get("/api/health")).status_code == 200


async def test_half_hour_zone_today_starts_at_local_midnight(
    api: tuple[httpx.AsyncClient, Database, Any],
) -> None:
    client, _db, _state = api
    body = (await client.get("/api/summary", params={"range": "today"})).json()
    assert body["range"]["start"].endswith("T00:00:00+05:30")
    assert (body["range"]["end_ms"] - body["range"]["start_ms"]) <= DAY_MS + HOUR_MS
