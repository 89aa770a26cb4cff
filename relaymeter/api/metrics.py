"""GET /metrics: Prometheus text from prometheus_client's default REGISTRY.

Usage metrics (requests, tokens, cost, latency by route / account / model) are fed by a small
service reading every newly stored event from a queue registered in ``writer.listeners``;
writer statistics are read at scrape time. Other features register their own metrics
(gateway, collector, quota) on the same registry. Optional bearer auth: ``metrics_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from relaymeter import __version__
from relaymeter.api.errors import ApiError
from relaymeter.domain.events import UsageEvent
from relaymeter.domain.latency import LATENCY_BOUNDS_MS
from relaymeter.state import AppState, get_state

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])

_LABELS = ["source", "route", "account", "model"]
_SECONDS = [b / 1000 for b in LATENCY_BOUNDS_MS]

REQUESTS = Counter(
    "relaymeter_usage_requests",
    "Requests stored as usage events, by outcome.",
    [*_LABELS, "status"],
)
TOKENS = Counter(
    "relaymeter_usage_tokens",
    "Tokens of stored usage events by kind (input = uncached input, output includes reasoning).",
    [*_LABELS, "kind"],
)
COST = Counter("relaymeter_usage_cost_usd", "Cost of stored usage events in US dollars.", _LABELS)
LATENCY = Histogram(
    "relaymeter_usage_latency_seconds",
    "Request latency of stored usage events.",
    ["route", "account", "model"],
    buckets=_SECONDS,
)
TTFT = Histogram(
    "relaymeter_usage_ttft_seconds",
    "Time to first token of stored usage events.",
    ["route", "model"],
    buckets=_SECONDS,
)
_TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "reasoning_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_creation", "cache_creation_tokens"),
)


def observe(event: UsageEvent) -> None:
    """Count one newly stored event."""
    route = event.endpoint or "-"
    account = event.account_label or (str(event.account_id) if event.account_id else "-")
    model = event.actual_model or event.model or "-"
    labels = (event.source or "-", route, account, model)
    REQUESTS.labels(*labels, "failed" if event.failed else "success").inc()
    for kind, attr in _TOKEN_KINDS:
        value = getattr(event, attr)
        if value:
            TOKENS.labels(*labels, kind).inc(value)
    if event.cost_micros:
        COST.labels(*labels).inc(event.cost_micros / 1_000_000)
    if event.latency_ms is not None:
        LATENCY.labels(route, account, model).observe(event.latency_ms / 1000)
    if event.ttft_ms is not None:
        TTFT.labels(route, model).observe(event.ttft_ms / 1000)


class _WriterCollector(Collector):
    """Writer queue depth and counters, read from the running app at scrape time."""

    def __init__(self) -> None:
        self.state: AppState | None = None

    def collect(self) -> Iterator[Metric]:
        yield _info()
        state = self.state
        if state is None:
            return
        writer = state.writer
        stats = writer.stats
        yield GaugeMetricFamily(
            "relaymeter_writer_queue_depth", "Events waiting in the write queue.", writer.depth
        )
        yield GaugeMetricFamily(
            "relaymeter_writer_up", "1 while the usage writer task runs.", 1 if writer.alive else 0
        )
        for name, doc, value in (
            ("relaymeter_writer_events_written", "Events the writer stored as new.", stats.written),
            ("relaymeter_writer_events_duplicate", "Events skipped as duplicates.", stats.duplicates),
            (
                "relaymeter_writer_events_dead_lettered",
                "Events the writer could not store.",
                stats.dead_lettered,
            ),
            ("relaymeter_writer_batches", "Write transactions committed.", stats.batches),
            ("relaymeter_writer_retries", "Batches retried after an error.", stats.retries),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        if stats.last_flush_ms is not None:
            yield GaugeMetricFamily(
                "relaymeter_writer_last_flush_timestamp_seconds",
                "When the writer last committed a batch (Unix time).",
                stats.last_flush_ms / 1000,
            )
        if stats.batch_seconds:
            recent = sorted(stats.batch_seconds)
            yield GaugeMetricFamily(
                "relaymeter_writer_batch_seconds_p95",
                "95th percentile duration of the last 100 write batches.",
                recent[min(len(recent) - 1, int(len(recent) * 0.95))],
            )


def _info() -> Metric:
    info = GaugeMetricFamily("relaymeter_build_info", "relaymeter version.", labels=["version"])
    info.add_metric([__version__], 1)
    return info


_collector = _WriterCollector()
with contextlib.suppress(ValueError):  # re-import in the same process (tests)
    REGISTRY.register(_collector)


class MetricsService:
    """Feeds the usage metrics from the writer's listener queue."""

    name = "metrics"

    def __init__(self, state: AppState, maxsize: int = 100_000) -> None:
        self.state = state
        self.queue: asyncio.Queue[UsageEvent] = asyncio.Queue(maxsize=maxsize)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.state.writer.listeners.append(self.queue)
        _collector.state = self.state
        self._task = asyncio.create_task(self._run(), name="usage-metrics")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.state.writer.listeners.remove(self.queue)
        if _collector.state is self.state:
            _collector.state = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                observe(event)
            except Exception:  # a metric must never stop the feed
                log.exception("usage metrics: could not count an event")

    async def drain(self) -> None:
        """Count everything queued so far (tests and shutdown)."""
        while not self.queue.empty():
            observe(self.queue.get_nowait())


def metrics_service(state: AppState) -> MetricsService:
    return MetricsService(state)


def _authorized(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        401: {"description": "metrics_token is set and the bearer token is missing or wrong"},
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics; needs ``Authorization: Bearer <metrics_token>`` when that setting is set."""
    state = get_state(request)
    token = state.settings.metrics_token
    if token is not None and token.get_secret_value() and not _authorized(request, token.get_secret_value()):
        raise ApiError(
            401,
            "unauthorized",
            "send Authorization: Bearer <metrics_token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    service: Any = state.services.get("metrics")
    if isinstance(service, MetricsService):
        await service.drain()
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
