"""CPA collector storage: connections (management key encrypted), the raw-record spool, leases
(one consumer per CPA across processes) and naming of observed CPA accounts.

The spool is written and committed (fsync'd on SQLite) before a popped record is parsed and
deleted only once its event is durable, so a crash in between loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.redact import redact_text
from relaymeter.store.db import Database
from relaymeter.store.events import dialect_insert
from relaymeter.store.schema import accounts, collector_spool, cpa_connections, dead_letters, leases

CONNECTION_FIELDS = (
    "name",
    "base_url",
    "management_key_enc",
    "mode",
    "batch_size",
    "poll_interval_ms",
    "enabled",
)


class ConnectionExists(ValueError):
    """A CPA connection with that name already exists."""


def _now() -> int:
    return time.time_ns() // 1_000_000


# --- connections ---------------------------------------------------------------------------


@dataclass(slots=True)
class CPAConnectionRow:
    id: int
    name: str
    base_url: str
    management_key_enc: str
    mode: str
    batch_size: int
    poll_interval_ms: int
    enabled: bool
    created_ms: int
    updated_ms: int

    def public(self) -> dict[str, Any]:
        """JSON-safe view without the (encrypted) management key."""
        return {
            "id": self.id,
            "name": self.name,
            "base_url": self.base_url,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "poll_interval_ms": self.poll_interval_ms,
            "enabled": self.enabled,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


def _row(row: Any) -> CPAConnectionRow:
    m = row._mapping
    return CPAConnectionRow(
        id=int(m["id"]),
        name=m["name"],
        base_url=m["base_url"],
        management_key_enc=m["management_key_enc"],
        mode=m["mode"],
        batch_size=int(m["batch_size"]),
        poll_interval_ms=int(m["poll_interval_ms"]),
        enabled=bool(m["enabled"]),
        created_ms=int(m["created_ms"]),
        updated_ms=int(m["updated_ms"]),
    )


async def list_connections(db: Database, *, enabled_only: bool = False) -> list[CPAConnectionRow]:
    stmt = select(cpa_connections).order_by(cpa_connections.c.name)
    if enabled_only:
        stmt = stmt.where(cpa_connections.c.enabled.is_(True))
    async with db.connect() as conn:
        return [_row(r) for r in await conn.execute(stmt)]


async def get_connection(
    db: Database, *, connection_id: int | None = None, name: str | None = None
) -> CPAConnectionRow | None:
    stmt = select(cpa_connections)
    if connection_id is not None:
        stmt = stmt.where(cpa_connections.c.id == connection_id)
    elif name is not None:
        stmt = stmt.where(cpa_connections.c.name == name)
    else:
        raise ValueError("connection_id or name is required")
    async with db.connect() as conn:
        row = (await conn.execute(stmt)).first()
    return _row(row) if row is not None else None


async def create_connection(db: Database, values: dict[str, Any]) -> CPAConnectionRow:
    now = _now()
    data = {k: values[k] for k in CONNECTION_FIELDS if k in values}
    data.update(created_ms=now, updated_ms=now)
    try:
        async with db.begin() as conn:
            if (
                await conn.execute(select(cpa_connections.c.id).where(cpa_connections.c.name == data["name"]))
            ).first() is not None:
                raise ConnectionExists(f"a CPA connection named {data['name']!r} already exists")
            new_id = (
                await conn.execute(insert(cpa_connections).returning(cpa_connections.c.id), data)
            ).scalar_one()
    except IntegrityError:
        raise ConnectionExists(f"a CPA connection named {data['name']!r} already exists") from None
    created = await get_connection(db, connection_id=int(new_id))
    assert created is not None
    return created


async def update_connection(
    db: Database, connection_id: int, values: dict[str, Any]
) -> CPAConnectionRow | None:
    data = {k: values[k] for k in CONNECTION_FIELDS if k in values}
    if data:
        data["updated_ms"] = _now()
        try:
            async with db.begin() as conn:
                if "name" in data:
                    clash = await conn.execute(
                        select(cpa_connections.c.id).where(
                            cpa_connections.c.name == data["name"], cpa_connections.c.id != connection_id
                        )
                    )
                    if clash.first() is not None:
                        raise ConnectionExists(f"a CPA connection named {data['name']!r} already exists")
                await conn.execute(
                    update(cpa_connections).where(cpa_connections.c.id == connection_id).values(**data)
                )
        except IntegrityError:
            raise ConnectionExists(f"a CPA connection named {data.get('name')!r} already exists") from None
    return await get_connection(db, connection_id=connection_id)


async def delete_connection(db: Database, connection_id: int) -> bool:
    async with db.begin() as conn:
        res = await conn.execute(delete(cpa_connections).where(cpa_connections.c.id == connection_id))
    return bool(res.rowcount)


# --- spool ------------------------------------------------------------------------------------


@dataclass(slots=True)
class SpoolRow:
    id: int
    raw: str
    received_ms: int


async def _set_sqlite_synchronous(conn: AsyncConnection, level: str) -> None:
    # Outside any transaction (SQLite refuses to change it inside one): straight on the driver.
    def run(sync_conn: Any) -> None:
        cursor = sync_conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA synchronous={level}")
        finally:
            cursor.close()

    await conn.run_sync(run)


async def spool_add(db: Database, connection: str, raws: Sequence[str], received_ms: int) -> list[int]:
    """Store popped batches (raw JSON array texts) durably: committed, and fsync'd on SQLite.

    Returns their ids in order.
    """
    if not raws:
        return []
    rows = [{"connection": connection, "raw": raw, "received_ms": received_ms} for raw in raws]
    # The write lock queues this behind the write path's batches in this process instead of
    # letting SQLite's busy handler poll for its lock.
    async with db.write_lock, db.connect() as conn:
        if db.is_sqlite:
            # The store runs WAL with synchronous=NORMAL (durable across process crashes);
            # popped records exist nowhere else, so make this commit survive power loss too.
            await _set_sqlite_synchronous(conn, "FULL")
        try:
            async with conn.begin():
                if db.is_sqlite:
                    ids = await _spool_insert_sqlite(conn, rows)
                else:
                    res = await conn.execute(
                        insert(collector_spool).returning(collector_spool.c.id, sort_by_parameter_order=True),
                        rows,
                    )
                    ids = [int(r[0]) for r in res]
        finally:
            if db.is_sqlite:
                await _set_sqlite_synchronous(conn, "NORMAL")
    return ids


async def _spool_insert_sqlite(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[int]:
    # SQLite serializes writers (BEGIN IMMEDIATE) and INTEGER PRIMARY KEY grows by one per row
    # inside one transaction, so the new ids are the n values ending at max(id).
    await conn.exec_driver_sql(
        "INSERT INTO collector_spool (connection, raw, received_ms) VALUES (?, ?, ?)",
        [(r["connection"], r["raw"], r["received_ms"]) for r in rows],
    )
    last = (await conn.exec_driver_sql("SELECT last_insert_rowid()")).scalar_one()
    first = int(last) - len(rows) + 1
    return list(range(first, int(last) + 1))


async def spool_pending(
    db: Database, connection: str, *, after_id: int = 0, limit: int = 1000
) -> list[SpoolRow]:
    """Spooled records of a connection not yet confirmed, oldest first."""
    stmt = (
        select(collector_spool.c.id, collector_spool.c.raw, collector_spool.c.received_ms)
        .where(collector_spool.c.connection == connection, collector_spool.c.id > after_id)
        .order_by(collector_spool.c.id)
        .limit(limit)
    )
    async with db.connect() as conn:
        return [SpoolRow(int(r[0]), r[1], int(r[2])) for r in await conn.execute(stmt)]


async def spool_finish(
    db: Database, connection: str, source: str, ids: Sequence[int], dead: Sequence[tuple[str, str]] = ()
) -> None:
    """Forget spooled batches whose events are stored, and dead-letter their records that can
    never become events, in ONE transaction (a crash before it replays the batch; after it,
    nothing is left to replay, so a record is never stored or dead-lettered twice).

    dead: (reason, raw text) pairs; JSON raw texts should already be redacted by the caller,
    free-text secrets are masked here as well.
    """
    if not ids and not dead:
        return
    now = _now()
    rows = [
        {"source": source, "reason": reason[:2000], "raw": redact_text(raw)[:200_000], "created_ms": now}
        for reason, raw in dead
    ]
    c = collector_spool.c
    async with db.write_lock, db.begin() as conn:
        if rows:
            await conn.execute(insert(dead_letters), rows)
        ordered = sorted(set(ids))
        for start in range(0, len(ordered), 500):
            await conn.execute(
                delete(collector_spool).where(
                    c.connection == connection, c.id.in_(ordered[start : start + 500])
                )
            )


async def spool_counts(db: Database) -> dict[str, int]:
    """Spooled batches not yet confirmed stored, per connection name."""
    stmt = select(collector_spool.c.connection, func.count()).group_by(collector_spool.c.connection)
    async with db.connect() as conn:
        return {str(r[0]): int(r[1]) for r in await conn.execute(stmt)}


async def rename_spool(db: Database, old: str, new: str) -> None:
    """Keep pending records attached when a connection is renamed."""
    async with db.begin() as conn:
        await conn.execute(
            update(collector_spool).where(collector_spool.c.connection == old).values(connection=new)
        )


# --- leases -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Lease:
    name: str
    holder: str
    expires_ms: int
    acquired: bool


async def acquire_lease(
    db: Database,
    name: str,
    holder: str,
    ttl_ms: int,
    *,
    take_over_from: str | None = None,
    now_ms: int | None = None,
) -> Lease:
    """Take or renew a named lease; it is granted when free, expired, already ours, or held by
    ``take_over_from`` (a holder the caller proved dead). Returns who holds it afterwards."""
    now = now_ms if now_ms is not None else _now()
    expires = now + ttl_ms
    c = leases.c
    async with db.begin() as conn:
        await conn.execute(
            dialect_insert(db, leases).on_conflict_do_nothing(index_elements=["name"]),
            {"name": name, "holder": holder, "expires_ms": expires},
        )
        allowed = [c.holder == holder, c.expires_ms < now]
        if take_over_from:
            allowed.append(c.holder == take_over_from)
        await conn.execute(
            update(leases)
            .where(and_(c.name == name, or_(*allowed)))
            .values(holder=holder, expires_ms=expires)
        )
        row = (await conn.execute(select(c.holder, c.expires_ms).where(c.name == name))).one()
    return Lease(name=name, holder=row[0], expires_ms=int(row[1]), acquired=row[0] == holder)


async def release_lease(db: Database, name: str, holder: str) -> None:
    async with db.begin() as conn:
        await conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


async def get_lease(db: Database, name: str) -> Lease | None:
    async with db.connect() as conn:
        row = (
            await conn.execute(select(leases.c.holder, leases.c.expires_ms).where(leases.c.name == name))
        ).first()
    if row is None:
        return None
    return Lease(name=name, holder=row[0], expires_ms=int(row[1]), acquired=False)


# --- observed CPA accounts ------------------------------------------------------------------


async def update_observed_accounts(db: Database, origin: str, infos: Sequence[dict[str, Any]]) -> int:
    """Name the accounts the write path created for a CPA connection (origin 'cpa:<name>').

    infos: dicts with external_id (the auth_index), name, provider, plan, email. Rows that
    do not exist yet are left alone (the write path creates them on first sight).
    """
    if not infos:
        return 0
    now = _now()
    c = accounts.c
    stmt = (
        update(accounts)
        .where(and_(c.origin == origin, c.external_id == bindparam("b_ext")))
        .values(
            name=bindparam("b_name"),
            provider=bindparam("b_provider"),
            plan=bindparam("b_plan"),
            email=bindparam("b_email"),
            updated_ms=now,
        )
    )
    params = [
        {
            "b_ext": str(i["external_id"])[:128],
            "b_name": (str(i.get("name") or i["external_id"]))[:200],
            "b_provider": str(i.get("provider") or "")[:40],
            "b_plan": (str(i["plan"])[:60] if i.get("plan") else None),
            "b_email": (str(i["email"])[:200] if i.get("email") else None),
        }
        for i in infos
    ]
    async with db.begin() as conn:
        res = await conn.execute(stmt, params)
    return int(res.rowcount or 0)
