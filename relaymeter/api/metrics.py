"""GET /metrics: Prometheus text from prometheus_client's default REGISTRY.

Usage metrics (requests, tokens, cost, latency by route / account / model) are plain totals
the writer's listener adds each committed batch to, rendered with the writer statistics at
scrape time (no metric objects or locks on the write path). Other features register their own metrics
(gateway, collector, quota) on the same registry. Optional bearer auth: ``metrics_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Iterator, Sequence
from itertools import accumulate
from operator import attrgetter
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.responses import Response

from relaymeter import __version__
from relaymeter.api.errors import ApiError
from relaymeter.api.loop_lag import LoopLag
from relaymeter.domain.events import UsageEvent
from relaymeter.domain.latency import LATENCY_BOUNDS_MS, LATENCY_BUCKET_COUNT, bucket_index
from relaymeter.state import AppState, get_state

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])

_LABELS = ["source", "route", "account", "model"]
_SECONDS = [b / 1000 for b in LATENCY_BOUNDS_MS]

_TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "reasoning_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_creation", "cache_creation_tokens"),
)
_token_values = attrgetter(*(attr for _kind, attr in _TOKEN_KINDS))
_BUCKET_LABELS = [*(floatToGoString(s) for s in _SECONDS), "+Inf"]


class UsageTotals:
    """Usage counters and latency histograms as plain numbers, updated once per written batch
    and turned into metric families only when /metrics is scraped."""

    def __init__(self) -> None:
        # (source, route, account, model) -> [success, failed, *tokens by kind, cost_micros]
        self.counts: dict[tuple[str, str, str, str], list[int]] = {}
        # labels -> [*bucket counts, sum in ms]
        self.latency: dict[tuple[str, str, str], list[int]] = {}
        self.ttft: dict[tuple[str, str], list[int]] = {}

    def add(self, events: Sequence[UsageEvent]) -> None:
        """Count newly stored events (a writer listener)."""
        counts, latency, ttft = self.counts, self.latency, self.ttft
        width = LATENCY_BUCKET_COUNT + 1
        for ev in events:
            route = ev.endpoint or "-"
            account = ev.account_label or (str(ev.account_id) if ev.account_id else "-")
            model = ev.actual_model or ev.model or "-"
            key = (ev.source or "-", route, account, model)
            row = counts.get(key)
            if row is None:
                row = counts[key] = [0] * (3 + len(_TOKEN_KINDS))
            row[1 if ev.failed else 0] += 1
            for i, value in enumerate(_token_values(ev), start=2):
                row[i] += value
            row[-1] += ev.cost_micros
            if ev.latency_ms is not None:
                hist = latency.setdefault((route, account, model), [0] * width)
                hist[bucket_index(ev.latency_ms)] += 1
                hist[-1] += ev.latency_ms
            if ev.ttft_ms is not None:
                hist = ttft.setdefault((route, model), [0] * width)
                hist[bucket_index(ev.ttft_ms)] += 1
                hist[-1] += ev.ttft_ms

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "relaymeter_usage_requests",
            "Requests stored as usage events, by outcome.",
            labels=[*_LABELS, "status"],
        )
        tokens = CounterMetricFamily(
            "relaymeter_usage_tokens",
            "Tokens of stored usage events by kind (input = uncached input, output includes reasoning).",
            labels=[*_LABELS, "kind"],
        )
        cost = CounterMetricFamily(
            "relaymeter_usage_cost_usd", "Cost of stored usage events in US dollars.", labels=_LABELS
        )
        for labels, row in list(self.counts.items()):
            for status, value in (("success", row[0]), ("failed", row[1])):
                if value:
                    requests.add_metric([*labels, status], value)
            for (kind, _attr), value in zip(_TOKEN_KINDS, row[2:-1], strict=True):
                if value:
                    tokens.add_metric([*labels, kind], value)
            if row[-1]:
                cost.add_metric(list(labels), row[-1] / 1_000_000)
        yield from (requests, tokens, cost)
        yield _histogram(
            "relaymeter_usage_latency_seconds",
            "Request latency of stored usage events.",
            ["route", "account", "model"],
            self.latency,
        )
        yield _histogram(
            "relaymeter_usage_ttft_seconds",
            "Time to first token of stored usage events.",
            ["route", "model"],
            self.ttft,
        )


def _histogram(
    name: str, doc: str, label_names: list[str], data: dict[Any, list[int]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=label_names)
    for labels, hist in list(data.items()):
        cumulative = list(accumulate(hist[:-1]))
        family.add_metric(
            list(labels),
            buckets=list(zip(_BUCKET_LABELS, cumulative, strict=True)),
            sum_value=hist[-1] / 1000,
        )
    return family


TOTALS = UsageTotals()


class _WriterCollector(Collector):
    """Writer queue depth and counters, read from the running app at scrape time."""

    def __init__(self) -> None:
        self.state: AppState | None = None
        self.loop_lag: LoopLag | None = None

    def collect(self) -> Iterator[Metric]:
        yield _info()
        yield from TOTALS.collect()
        if self.loop_lag is not None:
            yield from self.loop_lag.collect()
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
    """Feeds the usage metrics: counts each batch of newly stored events as the writer commits it;
    measures the event loop's lag."""

    name = "metrics"

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.loop_lag = LoopLag()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.state.writer.listeners.append(TOTALS.add)
        _collector.state = self.state
        _collector.loop_lag = self.loop_lag
        self._task = asyncio.create_task(self.loop_lag.run(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(ValueError):
            self.state.writer.listeners.remove(TOTALS.add)
        if _collector.state is self.state:
            _collector.state = None
            _collector.loop_lag = None


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
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
