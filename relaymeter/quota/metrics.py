"""Prometheus metrics of quota windows (default registry; /metrics is served elsewhere)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

USED_PERCENT = Gauge(
    "relaymeter_quota_used_percent",
    "Utilization of a provider quota window per account (0-100)",
    ["account", "window"],
)
RESETS_AT = Gauge(
    "relaymeter_quota_resets_at_seconds",
    "When a provider quota window resets (Unix seconds)",
    ["account", "window"],
)
FETCHES = Counter(
    "relaymeter_quota_fetches_total",
    "Provider quota fetches by outcome (ok, rejected, error)",
    ["outcome"],
)
