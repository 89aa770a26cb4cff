"""Per-connection collector status (what `relaymeter cpa list`, the API and the UI show)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# running: draining a backlog; idle: caught up, waiting for the next poll; backoff: waiting
# after an error; lease_wait: another process consumes this CPA. Terminal (never retried
# on their own): auth_failed, banned, config_error, failed (a one-shot run gave up after
# retries), stopped, disabled.
STATES = (
    "starting",
    "running",
    "idle",
    "backoff",
    "lease_wait",
    "auth_failed",
    "banned",
    "config_error",
    "failed",
    "stopped",
    "disabled",
)
TERMINAL_STATES = frozenset({"auth_failed", "banned", "config_error", "failed", "stopped", "disabled"})


@dataclass
class ConnectionStatus:
    name: str
    base_url: str
    mode: str
    state: str = "starting"
    transport: str | None = None  # http | resp once known
    cpa_version: str | None = None
    publishing_enabled: bool | None = None
    retention_s: int | None = None
    poll_interval_ms: int = 0
    batch_size: int = 0
    started_ms: int | None = None
    last_poll_ms: int | None = None
    last_consumed_ms: int | None = None
    last_inserted_ms: int | None = None
    consumed_total: int = 0
    replayed_total: int = 0  # spooled by an earlier run that stopped before storing them
    inserted_total: int = 0
    duplicates_total: int = 0
    dead_letters_total: int = 0
    errors_total: int = 0
    spool_pending: int = 0
    lag_ms: int | None = None
    last_error: str | None = None
    last_error_kind: str | None = None
    last_error_ms: int | None = None
    next_retry_ms: int | None = None
    lease_holder: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
