"""Prometheus metrics of the CPA collector, on prometheus_client's default REGISTRY."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECORDS_CONSUMED = Counter(
    "relaymeter_collector_records_consumed",
    "Usage records popped from a CPA queue (and spooled).",
    ["connection"],
)
EVENTS_INSERTED = Counter(
    "relaymeter_collector_events_inserted",
    "Events the collector stored as new.",
    ["connection"],
)
EVENTS_DUPLICATE = Counter(
    "relaymeter_collector_events_duplicate",
    "Collected records that were already stored (same event hash).",
    ["connection"],
)
DEAD_LETTERS = Counter(
    "relaymeter_collector_dead_letters",
    "Collected records that could not become events (kept in dead letters).",
    ["connection"],
)
ERRORS = Counter(
    "relaymeter_collector_errors",
    "Collector errors by kind (auth_failed, unavailable, protocol, store, ...).",
    ["connection", "kind"],
)
LAG_SECONDS = Gauge(
    "relaymeter_collector_lag_seconds",
    "Time between the newest collected record's timestamp and its storage.",
    ["connection"],
)
LAST_SUCCESS = Gauge(
    "relaymeter_collector_last_success_timestamp_seconds",
    "When the collector last completed a poll of this CPA (Unix time).",
    ["connection"],
)
SPOOL_PENDING = Gauge(
    "relaymeter_collector_spool_pending",
    "Popped records spooled but not yet confirmed stored.",
    ["connection"],
)
UP = Gauge(
    "relaymeter_collector_up",
    "1 while the connection is consuming (running or idle), 0 otherwise.",
    ["connection"],
)


def forget(connection: str) -> None:
    """Drop the series of a removed connection."""
    for metric in (
        RECORDS_CONSUMED,
        EVENTS_INSERTED,
        EVENTS_DUPLICATE,
        DEAD_LETTERS,
        LAG_SECONDS,
        LAST_SUCCESS,
        SPOOL_PENDING,
        UP,
    ):
        try:
            metric.remove(connection)
        except KeyError:
            pass
    for labels in list(ERRORS._metrics):  # no public "remove matching labels"
        if labels and labels[0] == connection:
            try:
                ERRORS.remove(*labels)
            except KeyError:
                pass
