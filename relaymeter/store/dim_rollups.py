"""Per-dimension rollups (usage_hourly_dim / usage_daily_dim), kept in step with usage_hourly.

``apply`` is called by store.events.apply_rollup_rows with the same signed hourly increments
it writes, in the same transaction, so inserts and repricing keep both exact. Each increment
is folded into one row per dimension value (and '*' for the total), successes and failures
together, per hour, UTC day and UTC month.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from operator import add
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.windows import DAY_MS
from relaymeter.store.db import Database
from relaymeter.store.schema import usage_daily_dim, usage_hourly_dim, usage_monthly_dim

ALL = "*"
DIMS = ("account_id", "api_key_id", "model", "endpoint", "provider", "source")
KEY_COLUMNS = ("dim", "value")
SUM_COLUMNS = tuple(c.name for c in usage_hourly_dim.columns if c.name not in ("hour_ms", *KEY_COLUMNS))


def dim_value(dim: str, value: Any) -> str:
    """How a dimension value is stored in the ``value`` column."""
    return "" if dim == ALL else str(value)


def month_start_ms(ts_ms: int) -> int:
    """Start of the UTC month holding ts_ms."""
    d = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp() * 1000)


Sums = dict[tuple[Any, ...], list[int]]


def fold(hourly: Iterable[dict[str, Any]]) -> tuple[Sums, Sums, Sums]:
    """(hourly, daily, monthly) per-dimension sums from full-key hourly increments (pure)."""
    hours: Sums = {}
    for row in hourly:
        vals = [row[c] for c in SUM_COLUMNS]
        h = row["hour_ms"]
        for dim in (ALL, *DIMS):
            key = (h, dim, "" if dim == ALL else str(row[dim]))
            cur = hours.get(key)
            hours[key] = vals if cur is None else list(map(add, cur, vals))
    days: Sums = {}
    for (h, dim, value), vals in hours.items():
        key = (h - h % DAY_MS, dim, value)
        cur = days.get(key)
        days[key] = vals if cur is None else list(map(add, cur, vals))
    months: Sums = {}
    starts: dict[int, int] = {}
    for (d, dim, value), vals in days.items():
        m = starts.get(d)
        if m is None:
            m = starts[d] = month_start_ms(d)
        key = (m, dim, value)
        cur = months.get(key)
        months[key] = vals if cur is None else list(map(add, cur, vals))
    return hours, days, months


def _sqlite_upsert(table: str, time_column: str) -> str:
    cols = [time_column, *KEY_COLUMNS, *SUM_COLUMNS]
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT ({time_column}, {', '.join(KEY_COLUMNS)}) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS)
    )


_SQLITE_HOURLY = _sqlite_upsert("usage_hourly_dim", "hour_ms")
_SQLITE_DAILY = _sqlite_upsert("usage_daily_dim", "day_ms")
_SQLITE_MONTHLY = _sqlite_upsert("usage_monthly_dim", "month_ms")


def _records(acc: dict[tuple[Any, ...], list[int]]) -> list[tuple[Any, ...]]:
    return [(*key, *vals) for key, vals in acc.items()]


async def apply(db: Database, conn: AsyncConnection, hourly: Sequence[dict[str, Any]]) -> None:
    """Add signed full-key hourly increments to the per-dimension rollups (same transaction)."""
    if not hourly:
        return
    hours, days, months = fold(hourly)
    if db.is_sqlite:
        await conn.exec_driver_sql(_SQLITE_HOURLY, _records(hours))
        await conn.exec_driver_sql(_SQLITE_DAILY, _records(days))
        await conn.exec_driver_sql(_SQLITE_MONTHLY, _records(months))
        return
    for table, time_column, acc in (
        (usage_hourly_dim, "hour_ms", hours),
        (usage_daily_dim, "day_ms", days),
        (usage_monthly_dim, "month_ms", months),
    ):
        names = (time_column, *KEY_COLUMNS, *SUM_COLUMNS)
        stmt = pg_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[time_column, *KEY_COLUMNS],
            set_={c: table.c[c] + stmt.excluded[c] for c in SUM_COLUMNS},
        )
        await conn.execute(stmt, [dict(zip(names, rec, strict=True)) for rec in _records(acc)])
