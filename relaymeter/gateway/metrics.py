"""Prometheus metrics of the gateway (default registry; /metrics is served elsewhere).

Per-request figures (requests by outcome, requests in flight per key and per account) are
plain integers read at scrape time by a collector, so the relay path takes no metric locks.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

REJECTED = Counter(
    "relaymeter_gateway_rejected_total",
    "Requests refused before relaying (auth, limits, no account), by route and reason",
    ["route", "reason"],
)
UPSTREAM_ERRORS = Counter(
    "relaymeter_gateway_upstream_errors_total",
    "Upstream errors per account (HTTP status or 'connect')",
    ["account", "error"],
)
FAILOVERS = Counter(
    "relaymeter_gateway_failovers_total", "Requests moved to another account before the first byte", ["route"]
)
COOLDOWNS = Counter("relaymeter_gateway_cooldowns_total", "Accounts put in cooldown, by kind", ["kind"])

_requests: dict[tuple[str, str], int] = {}
_services: weakref.WeakSet[Any] = weakref.WeakSet()  # running GatewayService objects


def request_done(route: str, outcome: str) -> None:
    """Count a finished request."""
    key = (route, outcome)
    _requests[key] = _requests.get(key, 0) + 1


def register(service: Any) -> None:
    """Report this gateway's in-flight figures (``keys_by_id``, ``counters``, ``pool``) at scrape time."""
    _services.add(service)


def unregister(service: Any) -> None:
    _services.discard(service)


class _GatewayCollector:
    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "relaymeter_gateway_requests",
            "Client requests handled by the gateway, by route and outcome",
            labels=["route", "outcome"],
        )
        for (route, outcome), count in sorted(_requests.items()):
            requests.add_metric([route, outcome], count)
        yield requests
        keys = GaugeMetricFamily(
            "relaymeter_gateway_key_in_flight", "Requests in flight per gateway API key", labels=["api_key"]
        )
        accounts = GaugeMetricFamily(
            "relaymeter_gateway_account_in_flight",
            "Requests in flight per upstream account",
            labels=["account"],
        )
        key_values: dict[str, int] = {}
        account_values: dict[str, int] = {}
        for service in list(_services):
            for key in list(service.keys_by_id.values()):
                state = service.counters.keys.get(key.id)
                key_values[key.name] = key_values.get(key.name, 0) + (len(state.leases) if state else 0)
            for acc in list(service.pool.accounts.values()):
                account_values[acc.name] = account_values.get(acc.name, 0) + acc.in_flight
        for name, value in sorted(key_values.items()):
            keys.add_metric([name], value)
        for name, value in sorted(account_values.items()):
            accounts.add_metric([name], value)
        yield keys
        yield accounts


_collector = _GatewayCollector()
try:
    REGISTRY.register(_collector)  # type: ignore[arg-type]
except ValueError:  # re-import in the same process (tests)
    pass
