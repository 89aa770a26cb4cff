"""Client API keys: CRUD of gateway keys (stored as SHA-256 + display prefix) and spend so far.

Observed keys (origin 'observed', seen in CPA records) are listed here too but have no secret
and can never authenticate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select, update

from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.schema import api_keys

GATEWAY = "gateway"

EDITABLE = (
    "name",
    "remark",
    "enabled",
    "revoked",
    "expires_ms",
    "models_json",
    "max_concurrency",
    "rpm",
    "tpm",
    "daily_limit_micros",
    "weekly_limit_micros",
    "monthly_limit_micros",
    "total_limit_micros",
)
LIMIT_COLUMNS = {
    "day": "daily_limit_micros",
    "week": "weekly_limit_micros",
    "month": "monthly_limit_micros",
    "total": "total_limit_micros",
}


def _now() -> int:
    return time.time_ns() // 1_000_000


def decode_row(row: Any) -> dict[str, Any]:
    item = dict(row._mapping)
    item["models"] = orjson.loads(item["models_json"]) if item.get("models_json") else None
    return item


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in values.items() if k in EDITABLE}
    if "models" in values:
        out["models_json"] = orjson.dumps(values["models"]).decode() if values["models"] is not None else None
    return out


async def create_key(db: Database, key_hash: str, prefix: str, values: dict[str, Any]) -> int:
    now = _now()
    row = _clean(values)
    row.update(origin=GATEWAY, key_hash=key_hash, prefix=prefix, created_ms=now, updated_ms=now)
    async with db.begin() as conn:
        result = await conn.execute(insert(api_keys).values(**row))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


async def list_keys(db: Database, *, origin: str | None = None) -> list[dict[str, Any]]:
    stmt = select(api_keys).order_by(api_keys.c.id)
    if origin is not None:
        stmt = stmt.where(api_keys.c.origin == origin)
    async with db.connect() as conn:
        return [decode_row(r) for r in await conn.execute(stmt)]


async def get_key(db: Database, key_id: int) -> dict[str, Any] | None:
    async with db.connect() as conn:
        row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
    return decode_row(row) if row else None


async def find_key(db: Database, ref: str) -> dict[str, Any] | None:
    """A key by id, exact name or display prefix (CLI convenience)."""
    async with db.connect() as conn:
        if ref.isdigit():
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == int(ref)))).first()
            if row:
                return decode_row(row)
        rows = (
            await conn.execute(
                select(api_keys).where((api_keys.c.name == ref) | (api_keys.c.prefix == ref)).limit(2)
            )
        ).all()
    if len(rows) == 1:
        return decode_row(rows[0])
    return None


async def update_key(db: Database, key_id: int, values: dict[str, Any]) -> bool:
    row = _clean(values)
    row["updated_ms"] = _now()
    async with db.begin() as conn:
        result = await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**row))
        return bool(result.rowcount)


async def delete_key(db: Database, key_id: int) -> bool:
    async with db.begin() as conn:
        return bool((await conn.execute(delete(api_keys).where(api_keys.c.id == key_id))).rowcount)


async def fingerprint(db: Database) -> tuple[int, int]:
    """(count, newest updated_ms) of gateway keys: changes whenever an admin edits one."""
    async with db.connect() as conn:
        row = (
            await conn.execute(
                select(func.count(), func.max(api_keys.c.updated_ms)).where(api_keys.c.origin == GATEWAY)
            )
        ).one()
    return int(row[0] or 0), int(row[1] or 0)


async def spend(
    db: Database, key_ids: Sequence[int], windows: dict[str, tuple[int, int]]
) -> dict[int, dict[str, int]]:
    """Cost in micro-USD per key and named window [start, end), from rollups + edge events."""
    out: dict[int, dict[str, int]] = {k: dict.fromkeys(windows, 0) for k in key_ids}
    if not key_ids:
        return out
    async with db.connect() as conn:
        for name, (start, end) in windows.items():
            rows = await queries.grouped_metrics(
                conn, start, end, queries.Filters(api_key_ids=tuple(key_ids)), ("api_key_id",)
            )
            for (key_id,), metrics in rows.items():
                if int(key_id) in out:
                    out[int(key_id)][name] = metrics.cost_micros
    return out
