"""Audit log of admin actions."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import insert, select

from relaymeter.domain.redact import redact
from relaymeter.store.db import Database
from relaymeter.store.schema import audit_log


async def record(
    db: Database,
    action: str,
    *,
    actor: str = "admin",
    target: str = "",
    detail: dict[str, Any] | None = None,
    client_ip: str | None = None,
) -> None:
    row = {
        "ts_ms": time.time_ns() // 1_000_000,
        "actor": actor,
        "action": action,
        "target": target[:200],
        "detail_json": orjson.dumps(redact(detail), default=str).decode() if detail else None,
        "client_ip": client_ip,
    }
    async with db.begin() as conn:
        await conn.execute(insert(audit_log), row)


async def list_entries(
    db: Database, *, limit: int = 100, before_id: int | None = None, action: str | None = None
) -> list[dict[str, Any]]:
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(audit_log.c.id < before_id)
    if action:
        stmt = stmt.where(audit_log.c.action == action)
    async with db.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(stmt)]
    for row in rows:
        row["detail"] = orjson.loads(row.pop("detail_json")) if row.get("detail_json") else None
    return rows
