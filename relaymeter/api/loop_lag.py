"""Event-loop lag: how late a timer due every 100 ms runs, as a Prometheus histogram.

Everything a relaymeter process serves (relayed requests, API, console) runs on one event loop;
when the loop is saturated or stalled, each request waits that long before its next step. The
lag shows it directly: under 1 ms on an idle loop, tens of ms when the process needs more CPU
than it gets (run `serve --workers N`) or something blocks it.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

INTERVAL_S = 0.1
BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLag:
    """A histogram of the lag as plain numbers (one writer: the monitor task)."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(BOUNDS_S) + 1)
        self.total_s = 0.0
        self.max_s = 0.0  # the largest since the last scrape

    def observe(self, lag_s: float) -> None:
        self.buckets[bisect.bisect_left(BOUNDS_S, lag_s)] += 1
        self.total_s += lag_s
        self.max_s = max(self.max_s, lag_s)

    async def run(self, interval_s: float = INTERVAL_S) -> None:
        """Measure until cancelled."""
        while True:
            due = time.perf_counter() + interval_s
            await asyncio.sleep(interval_s)
            self.observe(max(0.0, time.perf_counter() - due))

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "relaymeter_event_loop_lag_seconds",
            f"How late a timer due every {INTERVAL_S:g} s ran on this process's event loop.",
        )
        cumulative = 0
        points = []
        for bound, count in zip([*map(floatToGoString, BOUNDS_S), "+Inf"], self.buckets, strict=True):
            cumulative += count
            points.append((bound, cumulative))
        family.add_metric([], buckets=points, sum_value=self.total_s)
        yield family
        worst, self.max_s = self.max_s, 0.0
        yield GaugeMetricFamily(
            "relaymeter_event_loop_lag_max_seconds",
            "The largest event-loop lag since the last scrape.",
            worst,
        )
