"""insert_batch (dedup + dimension ids + hourly rollup in one transaction), dead letters, retention."""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.latency import LATENCY_BUCKET_COUNT, bucket_index
from relaymeter.domain.redact import redact_text
from relaymeter.domain.windows import DAY_MS, HOUR_MS
from relaymeter.store import dim_rollups
from relaymeter.store.db import Database
from relaymeter.store.schema import (
    ROLLUP_KEY_COLUMNS,
    TOKEN_COLUMNS,
    accounts,
    api_keys,
    dead_letters,
    latency_bucket_columns,
    usage_daily,
    usage_events,
    usage_hourly,
)

_EVENT_COLUMNS = [c.name for c in usage_events.columns if c.name != "id"]
_SUM_COLUMNS = [
    "requests",
    "failures",
    *TOKEN_COLUMNS,
    "cost_micros",
    "latency_sum_ms",
    "latency_count",
    "ttft_sum_ms",
    "ttft_count",
    *latency_bucket_columns,
]


@dataclass(slots=True)
class BatchResult:
    inserted: list[bool]  # per input event: True when it was new

    @property
    def added(self) -> int:
        return sum(self.inserted)

    @property
    def skipped(self) -> int:
        return len(self.inserted) - self.added


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def dialect_insert(db: Database, table: Any) -> Any:
    return sqlite_insert(table) if db.is_sqlite else pg_insert(table)


async def insert_batch(db: Database, events: Sequence[UsageEvent]) -> BatchResult:
    """Insert new events (dedup on event_hash) and add them to the rollups, in ONE transaction.

    The CPU work that needs no database (rows, rollup increments) is done before taking the
    write lock, so a pipelining caller overlaps it with the previous batch's database work.
    """
    if not events:
        return BatchResult([])
    now = _now_ms()
    first_index: dict[str, int] = {}
    for i, ev in enumerate(events):
        first_index.setdefault(ev.event_hash, i)
    unique = [events[i] for i in sorted(first_index.values())]
    prepared = _prepare(db, unique, now) if _ids_from_cache(db, unique) else None

    async with db.write_lock, db.begin() as conn:
        new_accounts = await _resolve_accounts(db, conn, unique, now)
        new_keys = await _resolve_api_keys(db, conn, unique, now)
        if prepared is None:
            prepared = _prepare(db, unique, now)
        if db.is_sqlite:
            inserted_hashes = await _insert_sqlite(conn, unique, prepared.rows)
        else:
            stmt = pg_insert(usage_events).on_conflict_do_nothing(index_elements=["event_hash"])
            result = await conn.execute(stmt.returning(usage_events.c.event_hash), prepared.rows)
            inserted_hashes = {row[0] for row in result}
        if len(inserted_hashes) == len(unique):
            fresh: Sequence[UsageEvent] = unique
            rollups = prepared.rollups
        else:
            fresh = [ev for ev in unique if ev.event_hash in inserted_hashes]
            rollups = rollup_rows(fresh)
        if fresh:
            await apply_rollup_rows(db, conn, rollups)
            await _touch_last_used(db, conn, fresh)
    db.account_ids.update(new_accounts)
    db.api_key_ids.update(new_keys)
    flags = [False] * len(events)
    for h, i in first_index.items():
        flags[i] = h in inserted_hashes
    return BatchResult(flags)


@dataclass(slots=True)
class _Prepared:
    rows: list[Any]  # SQLite: tuples in _SQLITE_INSERT_EVENT order; PostgreSQL: dicts
    rollups: list[dict[str, Any]]


def _ids_from_cache(db: Database, events: Sequence[UsageEvent]) -> bool:
    """Fill account/API key ids known from the cache; True when nothing is left to resolve."""
    complete = True
    for ev in events:
        if not ev.account_id:
            ext = ev.account_external_id
            if ext:
                cached = db.account_ids.get((ev.source or "import", ext))
                if cached:
                    ev.account_id = cached
                else:
                    complete = False
        if not ev.api_key_id and ev.api_key_hash:
            cached = db.api_key_ids.get(ev.api_key_hash)
            if cached:
                ev.api_key_id = cached
            else:
                complete = False
    return complete


def _prepare(db: Database, events: Sequence[UsageEvent], now: int) -> _Prepared:
    if db.is_sqlite:
        rows: list[Any] = [(event_key(ev.event_hash), *_event_values(ev), now) for ev in events]
    else:
        rows = [_event_row(ev, now) for ev in events]
    return _Prepared(rows, rollup_rows(events))


_EVENT_VALUE_NAMES = [name for name in _EVENT_COLUMNS if name not in ("ingested_ms", "event_key")]
_event_values = operator.attrgetter(*_EVENT_VALUE_NAMES)
_SQLITE_INSERT_EVENT = (
    f"INSERT INTO usage_events (event_key, {', '.join(_EVENT_VALUE_NAMES)}, ingested_ms) "
    f"VALUES (?, {', '.join('?' for _ in _EVENT_VALUE_NAMES)}, ?)"
)


def event_key(event_hash: str) -> int:
    """The indexed int64 form of an event hash (its first 8 bytes, signed)."""
    key = int(event_hash[:16], 16)
    return key - (1 << 64) if key >= (1 << 63) else key


def _event_row(ev: UsageEvent, now: int) -> dict[str, Any]:
    row = dict(zip(_EVENT_VALUE_NAMES, _event_values(ev), strict=True))
    row["event_key"] = event_key(ev.event_hash)
    row["ingested_ms"] = now
    return row


async def _insert_sqlite(conn: AsyncConnection, events: Sequence[UsageEvent], rows: list[Any]) -> set[str]:
    """SQLite: find the hashes already stored, then one driver-level executemany of the rest.

    Safe without RETURNING: every write transaction starts with BEGIN IMMEDIATE, so no other
    writer can commit between the lookup and the insert.
    """
    keys = list({row[0] for row in rows})
    existing: set[str] = set()
    for start in range(0, len(keys), 900):
        chunk = keys[start : start + 900]
        res = await conn.exec_driver_sql(
            f"SELECT event_hash FROM usage_events WHERE event_key IN ({', '.join('?' for _ in chunk)})",
            tuple(chunk),
        )
        existing.update(r[0] for r in res)
    if existing:
        rows = [row for row, ev in zip(rows, events, strict=True) if ev.event_hash not in existing]
    if rows:
        await conn.exec_driver_sql(_SQLITE_INSERT_EVENT, rows)
    return {ev.event_hash for ev in events if ev.event_hash not in existing}


async def _resolve_accounts(
    db: Database, conn: AsyncConnection, events: Iterable[UsageEvent], now: int
) -> dict[tuple[str, str], int]:
    """Give observed events an accounts.id, creating 'observed' rows on first sight."""
    wanted: dict[tuple[str, str], UsageEvent] = {}
    for ev in events:
        if ev.account_id:
            continue
        ext = ev.account_external_id
        if not ext:
            continue
        key = (ev.source or "import", ext)
        cached = db.account_ids.get(key)
        if cached:
            ev.account_id = cached
        else:
            wanted.setdefault(key, ev)
    if not wanted:
        return {}
    rows = [
        {
            "origin": origin,
            "external_id": ext,
            "name": ev.account_label or ext,
            "provider": ev.provider,
            "kind": "observed",
            "created_ms": now,
            "updated_ms": now,
        }
        for (origin, ext), ev in wanted.items()
    ]
    await conn.execute(
        dialect_insert(db, accounts).on_conflict_do_nothing(index_elements=["origin", "external_id"]), rows
    )
    found: dict[tuple[str, str], int] = {}
    keys = list(wanted)
    for start in range(0, len(keys), 400):
        chunk = keys[start : start + 400]
        res = await conn.execute(
            select(accounts.c.origin, accounts.c.external_id, accounts.c.id).where(
                tuple_(accounts.c.origin, accounts.c.external_id).in_(chunk)
            )
        )
        for origin, ext, acc_id in res:
            found[(origin, ext)] = int(acc_id)
    for ev in events:
        if not ev.account_id:
            acc = found.get((ev.source or "import", ev.account_external_id))
            if acc:
                ev.account_id = acc
    return found


async def _resolve_api_keys(
    db: Database, conn: AsyncConnection, events: Iterable[UsageEvent], now: int
) -> dict[str, int]:
    """Give events carrying only a client key hash an api_keys.id ('observed' row on first sight)."""
    wanted: dict[str, UsageEvent] = {}
    for ev in events:
        if ev.api_key_id or not ev.api_key_hash:
            continue
        cached = db.api_key_ids.get(ev.api_key_hash)
        if cached:
            ev.api_key_id = cached
        else:
            wanted.setdefault(ev.api_key_hash, ev)
    if not wanted:
        return {}
    rows = [
        {
            "origin": "observed",
            "key_hash": h,
            "prefix": ev.api_key_prefix,
            "name": ev.api_key_prefix or f"key {h[:8]}",
            "created_ms": now,
            "updated_ms": now,
        }
        for h, ev in wanted.items()
    ]
    await conn.execute(dialect_insert(db, api_keys).on_conflict_do_nothing(index_elements=["key_hash"]), rows)
    found: dict[str, int] = {}
    hashes = list(wanted)
    for start in range(0, len(hashes), 500):
        res = await conn.execute(
            select(api_keys.c.key_hash, api_keys.c.id).where(
                api_keys.c.key_hash.in_(hashes[start : start + 500])
            )
        )
        for h, key_id in res:
            found[h] = int(key_id)
    for ev in events:
        if not ev.api_key_id and ev.api_key_hash:
            ev.api_key_id = found.get(ev.api_key_hash, 0)
    return found


def rollup_key(ev: UsageEvent) -> tuple[Any, ...]:
    return (
        ev.ts_ms - ev.ts_ms % HOUR_MS,
        ev.account_id,
        ev.api_key_id,
        ev.priced_model,
        ev.endpoint,
        ev.source,
        ev.provider,
        ev.failed,
    )


def rollup_rows(events: Iterable[UsageEvent]) -> list[dict[str, Any]]:
    """Aggregate events into usage_hourly increments (pure; also used by tests and repricing)."""
    acc: dict[tuple[Any, ...], list[int]] = {}
    n_sum = len(_SUM_COLUMNS)
    lat0 = _SUM_COLUMNS.index("lat_b0")
    for ev in events:
        key = rollup_key(ev)
        sums = acc.get(key)
        if sums is None:
            sums = acc[key] = [0] * n_sum
        sums[0] += 1
        sums[1] += 1 if ev.failed else 0
        sums[2] += ev.input_tokens
        sums[3] += ev.output_tokens
        sums[4] += ev.reasoning_tokens
        sums[5] += ev.cache_read_tokens
        sums[6] += ev.cache_creation_tokens
        sums[7] += ev.cache_creation_1h_tokens
        sums[8] += ev.total_tokens
        sums[9] += ev.cost_micros
        if ev.latency_ms is not None:
            sums[10] += ev.latency_ms
            sums[11] += 1
            sums[lat0 + bucket_index(ev.latency_ms)] += 1
        if ev.ttft_ms is not None:
            sums[12] += ev.ttft_ms
            sums[13] += 1
    rows = []
    for key, sums in acc.items():
        row = dict(zip(ROLLUP_KEY_COLUMNS, key, strict=True))
        row.update(zip(_SUM_COLUMNS, sums, strict=True))
        rows.append(row)
    return rows


assert len(_SUM_COLUMNS) == 14 + LATENCY_BUCKET_COUNT


_ROLLUP_ALL = [*ROLLUP_KEY_COLUMNS, *_SUM_COLUMNS]
_DAILY_KEY_COLUMNS = ("day_ms", *ROLLUP_KEY_COLUMNS[1:])


def _sqlite_upsert(table: str, keys: Sequence[str]) -> str:
    cols = [*keys, *_SUM_COLUMNS]
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in _SUM_COLUMNS)
    )


_SQLITE_UPSERT_HOURLY = _sqlite_upsert("usage_hourly", ROLLUP_KEY_COLUMNS)
_SQLITE_UPSERT_DAILY = _sqlite_upsert("usage_daily", _DAILY_KEY_COLUMNS)


def daily_rows(hourly: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold hourly rollup increments into UTC-day increments."""
    acc: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in hourly:
        day = row["hour_ms"] - row["hour_ms"] % DAY_MS
        key = (day, *(row[c] for c in ROLLUP_KEY_COLUMNS[1:]))
        slot = acc.get(key)
        if slot is None:
            slot = acc[key] = dict(zip(_DAILY_KEY_COLUMNS, key, strict=True))
            for c in _SUM_COLUMNS:
                slot[c] = row[c]
        else:
            for c in _SUM_COLUMNS:
                slot[c] += row[c]
    return list(acc.values())


async def apply_rollup_rows(
    db: Database, conn: AsyncConnection, rows: list[dict[str, Any]], sign: int = 1
) -> None:
    """Add (sign=1) or subtract (sign=-1) hourly increments; usage_daily follows."""
    if not rows:
        return
    if sign < 0:
        rows = [{k: (-v if k in _SUM_COLUMNS else v) for k, v in row.items()} for row in rows]
    if not db.is_sqlite:
        # Several PostgreSQL writers: upsert in one key order so concurrent batches can't
        # deadlock (SQLite serializes writers, so it skips the sort).
        rows = sorted(rows, key=lambda r: tuple(r[c] for c in ROLLUP_KEY_COLUMNS))
    days = daily_rows(rows)
    await dim_rollups.apply(db, conn, rows)  # per-dimension rollups follow the same increments
    if db.is_sqlite:
        await conn.exec_driver_sql(_SQLITE_UPSERT_HOURLY, [tuple(r[c] for c in _ROLLUP_ALL) for r in rows])
        await conn.exec_driver_sql(
            _SQLITE_UPSERT_DAILY, [tuple(r[c] for c in (*_DAILY_KEY_COLUMNS, *_SUM_COLUMNS)) for r in days]
        )
        return
    for table, keys, data in (
        (usage_hourly, ROLLUP_KEY_COLUMNS, rows),
        (usage_daily, _DAILY_KEY_COLUMNS, days),
    ):
        stmt = pg_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: table.c[name] + stmt.excluded[name] for name in _SUM_COLUMNS},
        )
        await conn.execute(stmt, data)


LAST_USED_RESOLUTION_MS = 1000


async def _touch_last_used(db: Database, conn: AsyncConnection, events: Sequence[UsageEvent]) -> None:
    """Advance accounts/api_keys.last_used_ms, at most once a second per row."""
    for table, attr, written in (
        (accounts, "account_id", db.account_last_used),
        (api_keys, "api_key_id", db.api_key_last_used),
    ):
        latest: dict[int, int] = {}
        for ev in events:
            row_id = getattr(ev, attr)
            if row_id and ev.ts_ms > latest.get(row_id, 0):
                latest[row_id] = ev.ts_ms
        due = [
            {"b_id": k, "b_ts": v}
            for k, v in latest.items()
            if v > written.get(k, 0) + LAST_USED_RESOLUTION_MS
        ]
        if not due:
            continue
        stmt = (
            update(table)
            .where(
                and_(
                    table.c.id == bindparam("b_id"),
                    func.coalesce(table.c.last_used_ms, 0) < bindparam("b_ts"),
                )
            )
            .values(last_used_ms=bindparam("b_ts"))
        )
        await conn.execute(stmt, due)
        for item in due:
            written[item["b_id"]] = item["b_ts"]


async def add_dead_letters(db: Database, source: str, items: Sequence[tuple[str, str]]) -> None:
    """Store records that can never become events: (reason, raw text) pairs, raw redacted."""
    if not items:
        return
    now = _now_ms()
    rows = [
        {"source": source, "reason": reason[:2000], "raw": redact_text(raw)[:200_000], "created_ms": now}
        for reason, raw in items
    ]
    async with db.begin() as conn:
        await conn.execute(insert(dead_letters), rows)


async def count_dead_letters(db: Database, source: str | None = None) -> int:
    stmt = select(func.count()).select_from(dead_letters)
    if source is not None:
        stmt = stmt.where(dead_letters.c.source == source)
    async with db.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def list_dead_letters(
    db: Database, limit: int = 100, source: str | None = None
) -> list[dict[str, Any]]:
    stmt = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    if source is not None:
        stmt = stmt.where(dead_letters.c.source == source)
    async with db.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def delete_events_before(db: Database, cutoff_ms: int, batch: int = 5000) -> int:
    """Delete raw events older than cutoff in small transactions (rollups are kept)."""
    total = 0
    while True:
        async with db.begin() as conn:
            ids = [
                r[0]
                for r in await conn.execute(
                    select(usage_events.c.id).where(usage_events.c.ts_ms < cutoff_ms).limit(batch)
                )
            ]
            if not ids:
                return total
            await conn.execute(delete(usage_events).where(usage_events.c.id.in_(ids)))
        total += len(ids)
