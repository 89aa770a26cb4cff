"""Prometheus metrics of the gateway (default registry; /metrics is served elsewhere)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

KEY_IN_FLIGHT = Gauge(
    "relaymeter_gateway_key_in_flight", "Requests in flight per gateway API key", ["api_key"]
)
ACCOUNT_IN_FLIGHT = Gauge(
    "relaymeter_gateway_account_in_flight", "Requests in flight per upstream account", ["account"]
)
REQUESTS = Counter(
    "relaymeter_gateway_requests_total",
    "Client requests handled by the gateway, by route and outcome",
    ["route", "outcome"],
)
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

_request_children: dict[tuple[str, str], Any] = {}


def request_done(route: str, outcome: str) -> None:
    """Count a finished request (label children cached: this runs once per request)."""
    child = _request_children.get((route, outcome))
    if child is None:
        child = _request_children[(route, outcome)] = REQUESTS.labels(route, outcome)
    child.inc()


def account_gauge(account: Any) -> Any:
    """The in-flight gauge of an account, cached on the account object."""
    gauge = getattr(account, "in_flight_gauge", None)
    if gauge is None:
        gauge = account.in_flight_gauge = ACCOUNT_IN_FLIGHT.labels(account.name)
    return gauge
