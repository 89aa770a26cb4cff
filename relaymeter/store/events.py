"""insert_batch (dedup + dimension ids + rollups in one transaction), dead letters, retention."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import chain
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.redact import redact_text
from relaymeter.domain.windows import DAY_MS, HOUR_MS
from relaymeter.store import versions
from relaymeter.store.db import Database
from relaymeter.store.increments import SUM_COLUMNS, Increments
from relaymeter.store.schema import (
    accounts,
    api_keys,
    dead_letters,
    usage_15m_dim,
    usage_daily,
    usage_daily_dim,
    usage_events,
    usage_hourly,
    usage_hourly_dim,
    usage_monthly_dim,
)

_EVENT_COLUMNS = [c.name for c in usage_events.columns if c.name != "id"]


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
    Accounts and API keys seen for the first time get their rows in a transaction before.
    """
    if not events:
        return BatchResult([])
    now = _now_ms()
    first_index: dict[str, int] = {}
    for i, ev in enumerate(events):
        first_index.setdefault(ev.event_hash, i)
    unique = [events[i] for i in sorted(first_index.values())]
    if not _ids_from_cache(db, unique):
        async with db.write_lock, db.begin() as conn:
            new_accounts = await _resolve_accounts(db, conn, unique, now)
            new_keys = await _resolve_api_keys(db, conn, unique, now)
        db.account_ids.update(new_accounts)
        db.api_key_ids.update(new_keys)
    prepared = _prepare(db, unique, now)

    if db.is_sqlite:
        last_used = (dict(db.account_last_used), dict(db.api_key_last_used))
        store = partial(_store_sqlite, events=unique, prepared=prepared, last_used=last_used)
        async with db.write_lock:
            if db.sqlite_writer is not None:
                inserted_hashes, touched = await db.sqlite_writer.run(store)
            else:
                async with db.begin() as conn:
                    inserted_hashes, touched = await conn.run_sync(
                        lambda c: store(c.connection.dbapi_connection)
                    )
        db.account_last_used.update(touched[0])
        db.api_key_last_used.update(touched[1])
    else:
        async with db.write_lock, db.begin() as conn:
            stmt = pg_insert(usage_events).on_conflict_do_nothing(index_elements=["event_hash"])
            result = await conn.execute(stmt.returning(usage_events.c.event_hash), prepared.rows)
            inserted_hashes = {row[0] for row in result}
            if len(inserted_hashes) == len(unique):
                fresh: Sequence[UsageEvent] = unique
                increments = prepared.increments
            else:
                fresh = [ev for ev in unique if ev.event_hash in inserted_hashes]
                increments = Increments.from_events(fresh)
            if fresh:
                await apply_increments(db, conn, increments)
                await _touch_last_used(db, conn, fresh)
    flags = [False] * len(events)
    for h, i in first_index.items():
        flags[i] = h in inserted_hashes
    return BatchResult(flags)


LastUsed = tuple[dict[int, int], dict[int, int]]


def _dbapi(conn: Connection) -> Any:
    """The DB-API connection under a (sync-facade) SQLAlchemy connection."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    return dbapi


def _store_sqlite(
    conn: Any, *, events: Sequence[UsageEvent], prepared: _Prepared, last_used: LastUsed
) -> tuple[set[str], LastUsed]:
    """SQLite, inside the write transaction (DB-API connection): dedup, insert, rollups and
    last-used times. Returns the hashes inserted and the last-used times written.

    Dedup needs no RETURNING: the transaction began with BEGIN IMMEDIATE, so no other writer
    can commit between the lookup and the insert.
    """
    cur = conn.cursor()
    # One statement, one parameter: the keys as a JSON array (built in _prepare).
    cur.execute(_SQLITE_DEDUP, (prepared.keys_json,))
    existing = {r[0] for r in cur.fetchall()}
    fresh: Sequence[UsageEvent] = events
    inserts, writes, latest = prepared.inserts, prepared.writes, prepared.latest
    if existing:
        fresh = [ev for ev in events if ev.event_hash not in existing]
        inserts = _insert_statements(fresh, prepared.now)
        writes = _increment_writes(Increments.from_events(fresh))
        latest = _latest_used(fresh)
    for sql, params in inserts:
        cur.execute(sql, params)
    touched: LastUsed = ({}, {})
    if fresh:
        _upsert_sqlite(cur, writes)
        for table, latest_ts, written, done in (
            ("accounts", latest[0], last_used[0], touched[0]),
            ("api_keys", latest[1], last_used[1], touched[1]),
        ):
            due = {k: v for k, v in latest_ts.items() if v > written.get(k, 0) + LAST_USED_RESOLUTION_MS}
            if due:
                items = list(due.items())
                start = 0
                for size in _chunk_sizes(len(items)):
                    params = tuple(chain.from_iterable(items[start : start + size]))
                    cur.execute(_last_used_sql(table, size), params)
                    start += size
                done.update(due)
    return {ev.event_hash for ev in fresh}, touched


_SQLITE_DEDUP = "SELECT event_hash FROM usage_events WHERE event_key IN (SELECT value FROM json_each(?))"


@cache
def _last_used_sql(table: str, rows: int) -> str:
    """Advance last_used_ms of ``rows`` (id, ts) pairs in one statement (not a step per row);
    a CTE rather than UPDATE ... FROM, which needs SQLite 3.33."""
    values = ", ".join("(?, ?)" for _ in range(rows))
    ts = f"(SELECT v.ts FROM v WHERE v.id = {table}.id)"
    return (
        f"WITH v(id, ts) AS (VALUES {values}) UPDATE {table} SET last_used_ms = {ts} "
        f"WHERE id IN (SELECT id FROM v) AND coalesce(last_used_ms, 0) < {ts}"
    )


def _latest_used(events: Sequence[UsageEvent]) -> tuple[dict[int, int], dict[int, int]]:
    """Latest event time per account id and per API key id (ids 0 left out)."""
    accounts_ts: dict[int, int] = {}
    keys_ts: dict[int, int] = {}
    for ev in events:
        ts = ev.ts_ms
        if (row_id := ev.account_id) and ts > accounts_ts.get(row_id, 0):
            accounts_ts[row_id] = ts
        if (row_id := ev.api_key_id) and ts > keys_ts.get(row_id, 0):
            keys_ts[row_id] = ts
    return accounts_ts, keys_ts


def _due_last_used(events: Sequence[UsageEvent], attr: str, written: dict[int, int]) -> dict[int, int]:
    """Rows whose last_used_ms should advance: at most once a second per row."""
    latest: dict[int, int] = {}
    for ev in events:
        row_id = getattr(ev, attr)
        if row_id and ev.ts_ms > latest.get(row_id, 0):
            latest[row_id] = ev.ts_ms
    return {k: v for k, v in latest.items() if v > written.get(k, 0) + LAST_USED_RESOLUTION_MS}


@dataclass(slots=True)
class _Prepared:
    rows: list[Any]  # PostgreSQL: dicts (SQLite: empty, see inserts)
    increments: Increments  # what the rows add to the rollups
    # SQLite only, built here so the write thread mostly binds and steps: rollup rows, the
    # INSERT statements with their parameters, the keys to look up as JSON, latest use per id.
    writes: list[tuple[Any, list[tuple[Any, ...]]]] = field(default_factory=list)
    inserts: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    keys_json: bytes = b"[]"
    latest: tuple[dict[int, int], dict[int, int]] = ({}, {})
    now: int = 0  # ingested_ms


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
        increments = Increments.from_events(events)
        inserts = _insert_statements(events, now)
        # event_key is the first value of each row; ?1 (ingested_ms) comes before the rows.
        keys = chain.from_iterable(params[1::_EVENT_ROW_PARAMS] for _sql, params in inserts)
        return _Prepared(
            [],
            increments,
            _increment_writes(increments),
            inserts,
            orjson.dumps(list(keys)),
            _latest_used(events),
            now,
        )
    return _Prepared([_event_row(ev, now) for ev in events], Increments.from_events(events))


_EVENT_VALUE_NAMES = [name for name in _EVENT_COLUMNS if name not in ("ingested_ms", "event_key")]
_event_values = operator.attrgetter(*_EVENT_VALUE_NAMES)
# sqlite3 binds None and bool through its adapter lookup, which costs more than the value's
# insert; the SQLite rows carry '' / -1 / 0-1 instead and SQL turns the sentinels back into NULL
# (normalize never produces '' for these texts nor negative counts).
_EMPTY_IS_NULL = ("error_kind", "error_message", "service_tier", "client_ip", "user_agent", "raw_json")
_NEGATIVE_IS_NULL = ("stream", "status_code", "latency_ms", "ttft_ms")
_AS_INT = ("failed", "price_missing")


def _placeholder(name: str, number: int) -> str:
    if name in _EMPTY_IS_NULL:
        return f"NULLIF(?{number}, '')"
    if name in _NEGATIVE_IS_NULL:
        return f"NULLIF(?{number}, -1)"
    return f"?{number}"


def _row_value(name: str) -> str:
    """Python expression of one column's SQLite parameter, read from event ``ev``."""
    if name in _EMPTY_IS_NULL:
        return f"'' if (v := ev.{name}) is None else v"
    if name in _NEGATIVE_IS_NULL:
        return f"-1 if (v := ev.{name}) is None else int(v)"
    if name in _AS_INT:
        return f"int(ev.{name})"
    return f"ev.{name}"


# _sqlite_row(ev) -> (event_key, *values in _EVENT_VALUE_NAMES order, NULLs as sentinels). It runs
# once per event, so it is compiled from the column list into one tuple display (no loops, no
# intermediate list); event_key inlined.
_ROW_SOURCE = f"""
def _sqlite_row(ev):
    key = int(ev.event_hash[:16], 16)
    return (key - {1 << 64} if key >= {1 << 63} else key, {", ".join(map(_row_value, _EVENT_VALUE_NAMES))})
"""
_row_namespace: dict[str, Any] = {}
exec(_ROW_SOURCE, _row_namespace)
_sqlite_row: Callable[[UsageEvent], tuple[Any, ...]] = _row_namespace["_sqlite_row"]

# Rows per statement: each statement step costs sqlite3 a reset + bind round and this thread a GIL
# hand-over (sqlite3 releases the GIL around every step), so a batch goes CHUNK_ROWS rows to a
# statement and its remainder in power-of-two parts: a few cached statements serve any size.
CHUNK_ROWS = 128
_EVENT_ROW_PARAMS = 1 + len(_EVENT_VALUE_NAMES)  # event_key + values; ?1 is ingested_ms, shared


def _chunk_sizes(count: int) -> list[int]:
    sizes = [CHUNK_ROWS] * (count // CHUNK_ROWS)
    rest, size = count % CHUNK_ROWS, CHUNK_ROWS
    while rest:
        size //= 2
        if rest >= size:
            sizes.append(size)
            rest -= size
    return sizes


@cache
def _insert_events_sql(rows: int) -> str:
    """INSERT of ``rows`` events: ?1 is the batch's ingested_ms, then each row's parameters."""
    groups = []
    for r in range(rows):
        first = 2 + r * _EVENT_ROW_PARAMS
        cells = (_placeholder(n, first + 1 + i) for i, n in enumerate(_EVENT_VALUE_NAMES))
        groups.append(f"(?{first}, {', '.join(cells)}, ?1)")
    columns = ", ".join(_EVENT_VALUE_NAMES)
    return f"INSERT INTO usage_events (event_key, {columns}, ingested_ms) VALUES {', '.join(groups)}"


def _insert_statements(events: Sequence[UsageEvent], now: int) -> list[tuple[str, tuple[Any, ...]]]:
    """(INSERT, parameters) pairs that store ``events``. The rows go straight into each
    statement's flat parameter tuple: no per-event tuple outlives its chunk (less GC work)."""
    out = []
    start = 0
    for size in _chunk_sizes(len(events)):
        params = (now, *chain.from_iterable(map(_sqlite_row, events[start : start + size])))
        out.append((_insert_events_sql(size), params))
        start += size
    return out


def event_key(event_hash: str) -> int:
    """The indexed int64 form of an event hash (its first 8 bytes, signed)."""
    key = int(event_hash[:16], 16)
    return key - (1 << 64) if key >= (1 << 63) else key


def _event_row(ev: UsageEvent, now: int) -> dict[str, Any]:
    row = dict(zip(_EVENT_VALUE_NAMES, _event_values(ev), strict=True))
    row["event_key"] = event_key(ev.event_hash)
    row["ingested_ms"] = now
    return row


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


def _sqlite_upsert(table: str, keys: Sequence[str], rows: int = 1) -> str:
    cols = [*keys, *SUM_COLUMNS]
    row = f"({', '.join('?' for _ in cols)})"
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES {', '.join([row] * rows)} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS)
    )


# (table, its key columns, which rows of Increments go there)
_FULL_KEY_TABLES = ((usage_hourly, HOUR_MS), (usage_daily, DAY_MS))
_DIM_TABLES = {
    "slot_ms": usage_15m_dim,
    "hour_ms": usage_hourly_dim,
    "day_ms": usage_daily_dim,
    "month_ms": usage_monthly_dim,
}


def _key_columns(table: Any) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if c.name not in SUM_COLUMNS)


_ROLLUP_KEYS = {t.name: _key_columns(t) for t in (usage_hourly, usage_daily, *_DIM_TABLES.values())}


@cache
def _sqlite_upsert_rows(table: str, rows: int) -> str:
    """The upsert of ``rows`` rollup rows in one statement (rows of a batch have distinct keys;
    a repeated key would still add up, as SQLite applies the upsert row by row)."""
    return _sqlite_upsert(table, _ROLLUP_KEYS[table], rows)


def _increment_writes(inc: Increments) -> list[tuple[Any, list[tuple[Any, ...]]]]:
    writes: list[tuple[Any, list[tuple[Any, ...]]]] = [
        (t, inc.full_key(period)) for t, period in _FULL_KEY_TABLES
    ]
    writes += [(_DIM_TABLES[name], rows) for name, rows in inc.per_dimension().items()]
    return [(table, rows) for table, rows in writes if rows]


def _upsert_sqlite(cursor: Any, writes: list[tuple[Any, list[tuple[Any, ...]]]]) -> None:
    """SQLite (DB-API cursor, inside the caller's transaction): add rollup rows to their tables."""
    for table, rows in writes:
        start = 0
        for size in _chunk_sizes(len(rows)):
            params = tuple(chain.from_iterable(rows[start : start + size]))
            cursor.execute(_sqlite_upsert_rows(table.name, size), params)
            start += size
    versions.bump_sqlite(cursor, _touched(writes))


def _touched(writes: list[tuple[Any, list[tuple[Any, ...]]]]) -> list[tuple[str, int]]:
    """The hours and days whose rollup rows these writes change (for usage_versions)."""
    return versions.touched_units(row[0] for table, rows in writes if table is usage_hourly for row in rows)


async def apply_increments(db: Database, conn: AsyncConnection, inc: Increments) -> None:
    """Add signed increments to every rollup table: full-key hourly and daily, and the
    per-dimension 15-minute, hourly, daily and monthly rows (in the caller's transaction)."""
    if not len(inc):
        return
    if db.is_sqlite:
        await conn.run_sync(lambda c: _upsert_sqlite(_dbapi(c).cursor(), _increment_writes(inc)))
        return
    writes = _increment_writes(inc)
    for table, rows in writes:
        # Several PostgreSQL writers: upsert in one key order so concurrent batches can't deadlock.
        keys = _key_columns(table)
        names = (*keys, *SUM_COLUMNS)
        stmt = pg_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: table.c[c] + stmt.excluded[c] for c in SUM_COLUMNS}
        )
        rows.sort(key=lambda r: tuple(str(v) for v in r[: len(keys)]))
        await conn.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])
    await versions.bump(conn, _touched(writes))


LAST_USED_RESOLUTION_MS = 1000


async def _touch_last_used(db: Database, conn: AsyncConnection, events: Sequence[UsageEvent]) -> None:
    """Advance accounts/api_keys.last_used_ms, at most once a second per row."""
    for table, attr, written in (
        (accounts, "account_id", db.account_last_used),
        (api_keys, "api_key_id", db.api_key_last_used),
    ):
        due = _due_last_used(events, attr, written)
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
        await conn.execute(stmt, [{"b_id": k, "b_ts": v} for k, v in due.items()])
        written.update(due)


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
