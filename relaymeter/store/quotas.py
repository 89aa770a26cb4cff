"""quota_snapshots: every fetched window kept as history; the latest per account and window for views.

Also the two account-side reads the quota engine needs: an id for a CPA-held account that has
not been seen in usage yet, and our own usage per account since a given start (local windows).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, insert, select

from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.events import dialect_insert
from relaymeter.store.schema import accounts, quota_snapshots


def _now() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class SnapshotRow:
    account_id: int
    window: str
    used_percent: float | None
    remaining: int | None
    limit_value: int | None
    resets_at_ms: int | None
    window_seconds: int | None
    limit_reached: bool
    origin: str  # oauth_usage | cpa_api_call | headers
    extra: dict[str, Any] | None
    fetched_ms: int


def _to_dict(row: Any) -> dict[str, Any]:
    m = dict(row._mapping)
    raw = m.pop("extra_json", None)
    try:
        m["extra"] = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        m["extra"] = {}
    m["limit_reached"] = bool(m["limit_reached"])
    return m


async def insert_snapshots(db: Database, rows: Sequence[SnapshotRow]) -> None:
    if not rows:
        return
    values = [
        {
            "account_id": r.account_id,
            "window": r.window[:80],
            "used_percent": r.used_percent,
            "remaining": r.remaining,
            "limit_value": r.limit_value,
            "resets_at_ms": r.resets_at_ms,
            "window_seconds": r.window_seconds,
            "limit_reached": r.limit_reached,
            "origin": r.origin,
            "extra_json": orjson.dumps(r.extra, default=str).decode() if r.extra else None,
            "fetched_ms": r.fetched_ms,
        }
        for r in rows
    ]
    async with db.begin() as conn:
        await conn.execute(insert(quota_snapshots), values)


async def latest(db: Database, account_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The newest snapshot of every (account, window), ordered by account then window."""
    q = quota_snapshots.c
    newest = select(func.max(q.id).label("id")).group_by(q.account_id, q.window)
    if account_ids is not None:
        newest = newest.where(q.account_id.in_(list(account_ids)))
    sub = newest.subquery()
    stmt = (
        select(quota_snapshots).join(sub, quota_snapshots.c.id == sub.c.id).order_by(q.account_id, q.window)
    )
    async with db.connect() as conn:
        return [_to_dict(r) for r in await conn.execute(stmt)]


async def last_fetched(db: Database, account_ids: Sequence[int] | None = None) -> dict[int, int]:
    """Per account, when a provider was last asked (fetched_ms of its newest non-header snapshot)."""
    q = quota_snapshots.c
    stmt = select(q.account_id, func.max(q.fetched_ms)).where(q.origin != "headers").group_by(q.account_id)
    if account_ids is not None:
        stmt = stmt.where(q.account_id.in_(list(account_ids)))
    async with db.connect() as conn:
        return {int(a): int(t) for a, t in await conn.execute(stmt)}


async def history(
    db: Database,
    account_id: int,
    *,
    window: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 2000,
) -> list[dict[str, Any]]:
    """Snapshots of one account, oldest first (for a utilization chart)."""
    q = quota_snapshots.c
    clauses = [q.account_id == account_id]
    if window:
        clauses.append(q.window == window)
    if since_ms is not None:
        clauses.append(q.fetched_ms >= since_ms)
    if until_ms is not None:
        clauses.append(q.fetched_ms < until_ms)
    inner = (
        select(quota_snapshots).where(and_(*clauses)).order_by(q.fetched_ms.desc(), q.id.desc()).limit(limit)
    )
    async with db.connect() as conn:
        rows = [_to_dict(r) for r in await conn.execute(inner)]
    rows.reverse()
    return rows


async def prune(db: Database, before_ms: int, batch: int = 5000) -> int:
    """Delete history older than ``before_ms``, but never the newest snapshot of a window."""
    q = quota_snapshots.c
    keep = select(func.max(q.id)).group_by(q.account_id, q.window)
    total = 0
    while True:
        async with db.begin() as conn:
            ids = [
                r[0]
                for r in await conn.execute(
                    select(q.id).where(q.fetched_ms < before_ms, q.id.not_in(keep)).limit(batch)
                )
            ]
            if not ids:
                return total
            await conn.execute(delete(quota_snapshots).where(q.id.in_(ids)))
        total += len(ids)


async def ensure_observed_account(
    db: Database,
    origin: str,
    external_id: str,
    *,
    name: str,
    provider: str,
    plan: str | None = None,
    email: str | None = None,
) -> int:
    """The accounts.id of a CPA-held account (origin 'cpa:<name>', external_id = auth_index).

    Creates the 'observed' row the write path would create on first usage, so windows can be
    shown before the account served any request.
    """
    now = _now()
    row = {
        "origin": origin,
        "external_id": external_id[:128],
        "name": name[:200] or external_id,
        "provider": provider[:40],
        "kind": "observed",
        "plan": plan[:60] if plan else None,
        "email": email[:200] if email else None,
        "created_ms": now,
        "updated_ms": now,
    }
    async with db.begin() as conn:
        await conn.execute(
            dialect_insert(db, accounts)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["origin", "external_id"])
        )
        found = (
            await conn.execute(
                select(accounts.c.id).where(
                    accounts.c.origin == origin, accounts.c.external_id == row["external_id"]
                )
            )
        ).scalar_one()
    return int(found)


async def accounts_by_id(db: Database, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    c = accounts.c
    stmt = select(
        c.id, c.name, c.origin, c.external_id, c.provider, c.kind, c.plan, c.email, c.enabled, c.disabled_by
    ).where(c.id.in_(wanted))
    async with db.connect() as conn:
        return {int(r[0]): dict(r._mapping) for r in await conn.execute(stmt)}


async def local_usage(db: Database, starts: Mapping[int, int], end_ms: int) -> dict[int, dict[str, int]]:
    """Our own requests / tokens / cost per account in [start, end), each account with its own start."""
    by_start: dict[int, list[int]] = {}
    for account_id, start in starts.items():
        by_start.setdefault(start, []).append(account_id)
    out: dict[int, dict[str, int]] = {}
    async with db.connect() as conn:
        for start, ids in by_start.items():
            rows = await queries.grouped_metrics(
                conn, start, end_ms, queries.Filters(account_ids=tuple(sorted(ids))), ("account_id",)
            )
            for key, m in rows.items():
                out[int(key[0])] = {
                    "requests": m.requests,
                    "failures": m.failures,
                    "input_tokens": m.input_tokens,
                    "output_tokens": m.output_tokens,
                    "cache_read_tokens": m.cache_read_tokens,
                    "total_tokens": m.total_tokens,
                    "cost_micros": m.cost_micros,
                }
    return out
