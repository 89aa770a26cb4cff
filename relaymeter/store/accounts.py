"""Upstream accounts: CRUD of gateway accounts, health persistence, daily usage for caps.

Gateway accounts have origin 'gateway'; their external_id is a stable identity of the
credential (provider + email or a hash of the key) so imports can skip duplicates.
Credentials arrive here already encrypted (``credentials_enc``); this module never sees them
in clear text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select, update

from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.schema import accounts

GATEWAY = "gateway"

# Columns an admin may set (credentials go through credentials_enc).
EDITABLE = (
    "name",
    "provider",
    "kind",
    "base_url",
    "plan",
    "email",
    "credentials_enc",
    "token_expires_ms",
    "priority",
    "weight",
    "max_concurrency",
    "enabled",
    "disabled_by",
    "models_json",
    "model_map_json",
    "daily_request_cap",
    "daily_token_cap",
    "daily_cost_cap_micros",
    "proxy_url",
    "note",
    "external_id",
)


class AccountExists(ValueError):
    """An account with the same identity (origin, external_id) already exists."""


def _now() -> int:
    return time.time_ns() // 1_000_000


def decode_row(row: Any) -> dict[str, Any]:
    """A row as a dict with models / model_map decoded from JSON."""
    item = dict(row._mapping)
    item["models"] = orjson.loads(item["models_json"]) if item.get("models_json") else None
    item["model_map"] = orjson.loads(item["model_map_json"]) if item.get("model_map_json") else {}
    return item


async def list_accounts(
    db: Database, *, origin: str | None = GATEWAY, ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Accounts of one origin ('gateway' by default; None = every origin), ordered by id."""
    stmt = select(accounts).order_by(accounts.c.id)
    if origin is not None:
        stmt = stmt.where(accounts.c.origin == origin)
    if ids is not None:
        stmt = stmt.where(accounts.c.id.in_(list(ids)))
    async with db.connect() as conn:
        return [decode_row(r) for r in await conn.execute(stmt)]


async def get_account(db: Database, account_id: int) -> dict[str, Any] | None:
    async with db.connect() as conn:
        row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
    return decode_row(row) if row else None


async def find_by_name(db: Database, name: str, origin: str = GATEWAY) -> dict[str, Any] | None:
    async with db.connect() as conn:
        row = (
            await conn.execute(
                select(accounts).where(accounts.c.origin == origin, accounts.c.name == name).limit(1)
            )
        ).first()
    return decode_row(row) if row else None


async def existing_external_ids(db: Database, origin: str = GATEWAY) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(accounts.c.external_id, accounts.c.id).where(accounts.c.origin == origin)
        )
        return {str(ext): int(acc_id) for ext, acc_id in rows}


async def existing_names(db: Database, origin: str = GATEWAY) -> set[str]:
    async with db.connect() as conn:
        return {
            str(r[0]) for r in await conn.execute(select(accounts.c.name).where(accounts.c.origin == origin))
        }


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in values.items() if k in EDITABLE}
    if "models" in values:
        out["models_json"] = orjson.dumps(values["models"]).decode() if values["models"] is not None else None
    if "model_map" in values:
        out["model_map_json"] = orjson.dumps(values["model_map"]).decode() if values["model_map"] else None
    return out


async def create_accounts(db: Database, items: Iterable[dict[str, Any]], origin: str = GATEWAY) -> list[int]:
    """Insert accounts in one transaction; raises AccountExists when an identity is taken."""
    now = _now()
    rows = []
    for values in items:
        row = _clean(values)
        row.update(origin=origin, created_ms=now, updated_ms=now)
        row.setdefault("external_id", "")
        rows.append(row)
    ids: list[int] = []
    async with db.begin() as conn:
        taken = {
            str(r[0])
            for r in await conn.execute(
                select(accounts.c.external_id).where(
                    accounts.c.origin == origin,
                    accounts.c.external_id.in_([r["external_id"] for r in rows]),
                )
            )
        }
        for row in rows:
            if row["external_id"] in taken:
                raise AccountExists(f"an account with the same credential already exists ({row['name']})")
            taken.add(row["external_id"])
            result = await conn.execute(insert(accounts).values(**row))
            ids.append(int(result.inserted_primary_key[0]))  # type: ignore[index]
    return ids


async def create_account(db: Database, values: dict[str, Any], origin: str = GATEWAY) -> int:
    return (await create_accounts(db, [values], origin))[0]


async def update_account(db: Database, account_id: int, values: dict[str, Any]) -> bool:
    row = _clean(values)
    if not row:
        return await get_account(db, account_id) is not None
    row["updated_ms"] = _now()
    async with db.begin() as conn:
        if "external_id" in row:
            clash = (
                await conn.execute(
                    select(accounts.c.id).where(
                        accounts.c.origin == GATEWAY,
                        accounts.c.external_id == row["external_id"],
                        accounts.c.id != account_id,
                    )
                )
            ).first()
            if clash:
                raise AccountExists(f"account {clash[0]} already uses this credential")
        result = await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**row))
        return bool(result.rowcount)


async def update_many(db: Database, ids: Sequence[int] | None, values: dict[str, Any]) -> int:
    """Set the same values on the selected gateway accounts (all when ids is None)."""
    row = _clean(values)
    if not row:
        return 0
    row["updated_ms"] = _now()
    stmt = update(accounts).where(accounts.c.origin == GATEWAY).values(**row)
    if ids is not None:
        stmt = stmt.where(accounts.c.id.in_(list(ids)))
    async with db.begin() as conn:
        return int((await conn.execute(stmt)).rowcount or 0)


async def set_enabled(db: Database, account_id: int, enabled: bool, by: str = "user") -> bool:
    """Enable or disable; ``by`` ('user' | 'system') is kept so automatic checks never undo a person."""
    return await update_account(db, account_id, {"enabled": enabled, "disabled_by": None if enabled else by})


async def delete_account(db: Database, account_id: int) -> bool:
    async with db.begin() as conn:
        result = await conn.execute(delete(accounts).where(accounts.c.id == account_id))
        return bool(result.rowcount)


async def save_health(db: Database, items: Sequence[dict[str, Any]]) -> None:
    """Persist runtime health (health, health_reason, cooldown_until_ms) without bumping updated_ms."""
    if not items:
        return
    async with db.begin() as conn:
        for item in items:
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == item["id"])
                .values(
                    health=item["health"],
                    health_reason=item.get("health_reason"),
                    cooldown_until_ms=item.get("cooldown_until_ms"),
                )
            )


async def save_credentials(
    db: Database, account_id: int, credentials_enc: str, token_expires_ms: int | None
) -> None:
    """Store refreshed OAuth tokens (does not bump updated_ms: not an admin change)."""
    async with db.begin() as conn:
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(credentials_enc=credentials_enc, token_expires_ms=token_expires_ms)
        )


async def read_credentials(db: Database, account_id: int) -> tuple[str | None, int | None]:
    async with db.connect() as conn:
        row = (
            await conn.execute(
                select(accounts.c.credentials_enc, accounts.c.token_expires_ms).where(
                    accounts.c.id == account_id
                )
            )
        ).first()
    return (row[0], row[1]) if row else (None, None)


async def fingerprint(db: Database) -> tuple[int, int]:
    """(count, newest updated_ms) of gateway accounts: changes whenever an admin edits one."""
    async with db.connect() as conn:
        row = (
            await conn.execute(
                select(func.count(), func.max(accounts.c.updated_ms)).where(accounts.c.origin == GATEWAY)
            )
        ).one()
    return int(row[0] or 0), int(row[1] or 0)


async def day_usage(db: Database, start_ms: int, end_ms: int) -> dict[int, tuple[int, int, int]]:
    """Per account (requests, tokens, cost micros) in [start, end) from rollups + edge events."""
    async with db.connect() as conn:
        rows = await queries.grouped_metrics(
            conn, start_ms, end_ms, queries.Filters(sources=("gateway",)), ("account_id",)
        )
    return {int(k[0]): (m.requests, m.total_tokens, m.cost_micros) for k, m in rows.items() if k[0]}
