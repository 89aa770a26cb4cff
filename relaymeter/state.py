"""AppState: the per-process objects every route and service shares (settings, db, writer, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from relaymeter.config import Settings
from relaymeter.ingest.writer import UsageWriter
from relaymeter.security import SecretBox
from relaymeter.store.db import Database


@dataclass
class AppState:
    settings: Settings
    db: Database
    writer: UsageWriter
    box: SecretBox
    started_ms: int
    # Long-lived services by name (collector, quota, gateway, pricing, ...), set in the lifespan.
    services: dict[str, Any] = field(default_factory=dict)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.rm
    return state
