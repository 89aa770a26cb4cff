"""GET /metrics: usage counters and latency histograms fed from the write path, writer gauges,
and the optional bearer token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from relaymeter.config import Settings
from relaymeter.domain.windows import DAY_MS, now_ms
from tests.analytics_seed import make_events
from tests.conftest import running_app


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in values.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


async def scrape(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.get("/metrics", headers=headers)


async def test_usage_metrics_follow_stored_events(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (app, client):
        state = app.state.rm
        before = samples((await scrape(client)).text)
        now = now_ms()
        events = make_events(300, now - DAY_MS, now, seed=31)
        assert all(await state.writer.write(events))
        await state.writer.write(events[:10])  # duplicates are not counted again
        res = await scrape(client)
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
        after = samples(res.text)

        def delta(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert delta("relaymeter_usage_requests_total") == 300
        assert delta("relaymeter_usage_requests_total", status="failed") == sum(e.failed for e in events)
        claude = [
            e for e in events if e.actual_model == "claude-sonnet-4-5" and e.endpoint == "POST /v1/messages"
        ]
        assert delta(
            "relaymeter_usage_requests_total", model="claude-sonnet-4-5", route="POST /v1/messages"
        ) == len(claude)
        assert delta("relaymeter_usage_tokens_total", kind="input") == sum(e.input_tokens for e in events)
        assert delta("relaymeter_usage_tokens_total", kind="cache_read") == sum(
            e.cache_read_tokens for e in events
        )
        assert abs(delta("relaymeter_usage_cost_usd_total") - sum(e.cost_micros for e in events) / 1e6) < 1e-6
        timed = [e for e in events if e.latency_ms is not None]
        assert delta("relaymeter_usage_latency_seconds_count") == len(timed)
        assert delta("relaymeter_usage_latency_seconds_bucket", le="0.1") == sum(
            1 for e in timed if e.latency_ms <= 100
        )
        assert total(after, "relaymeter_writer_queue_depth") == 0
        assert total(after, "relaymeter_writer_up") == 1
        assert total(after, "relaymeter_writer_events_written_total") >= 300
        assert total(after, "relaymeter_writer_events_duplicate_total") >= 10
        assert total(after, "relaymeter_build_info") == 1


async def test_metrics_token(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(metrics_token="scrape-me")) as (_app, client):
        assert (await scrape(client)).status_code == 401
        assert (await scrape(client, Authorization="Bearer wrong")).status_code == 401
        ok = await scrape(client, Authorization="Bearer scrape-me")
        assert ok.status_code == 200 and "relaymeter_writer_queue_depth" in ok.text


async def test_event_loop_lag_shows_a_blocked_loop(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_app, client):
        await asyncio.sleep(0.35)  # a few idle measurements
        idle = samples((await scrape(client)).text)
        assert total(idle, "relaymeter_event_loop_lag_seconds_count") >= 2
        time.sleep(0.3)  # noqa: ASYNC251 - on purpose: something blocks the loop
        await asyncio.sleep(0.25)
        after = samples((await scrape(client)).text)
        assert total(after, "relaymeter_event_loop_lag_max_seconds") >= 0.15
        slow = total(after, "relaymeter_event_loop_lag_seconds_count") - total(
            after, "relaymeter_event_loop_lag_seconds_bucket", le="0.1"
        )
        assert slow >= 1, "the blocked stretch counts above 100 ms"
        assert total(after, "relaymeter_event_loop_lag_seconds_sum") > total(
            idle, "relaymeter_event_loop_lag_seconds_sum"
        )
