"""Change counters of the rollups per UTC hour and day (usage_versions): bumped by every
rollup write in its own transaction, read by store/rollup_cache.py to tell a stale copy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.windows import DAY_MS, HOUR_MS

HOUR = "h"
DAY = "d"

_BUMP = (
    "INSERT INTO usage_versions (level, unit_ms, version) VALUES (:level, :unit_ms, 1) "
    "ON CONFLICT (level, unit_ms) DO UPDATE SET version = usage_versions.version + 1"
)
_BUMP_QMARK = _BUMP.replace(":level", "?").replace(":unit_ms", "?")


def touched_units(times: Iterable[int]) -> list[tuple[str, int]]:
    """(level, unit start) of the hours and days holding the given rollup times (any level
    finer than a day: 15-minute slots or hours), in a stable order."""
    hours = sorted({t - t % HOUR_MS for t in times})
    days = sorted({h - h % DAY_MS for h in hours})
    return [(DAY, d) for d in days] + [(HOUR, h) for h in hours]


def bump_sqlite(cursor: Any, units: Sequence[tuple[str, int]]) -> None:
    """SQLite, DB-API cursor inside the write transaction."""
    if units:
        cursor.executemany(_BUMP_QMARK, units)


async def bump(conn: AsyncConnection, units: Sequence[tuple[str, int]]) -> None:
    """In the caller's transaction (units in one order, so concurrent writers can't deadlock)."""
    if units:
        await conn.execute(text(_BUMP), [{"level": lv, "unit_ms": t} for lv, t in units])


async def read(
    conn: AsyncConnection, days: tuple[int, int] | None, hours: Sequence[int]
) -> dict[tuple[str, int], int]:
    """Counters of the days in [days[0], days[1]) and of the given hours (absent = 0)."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if days is not None:
        clauses.append("(level = 'd' AND unit_ms >= :d0 AND unit_ms < :d1)")
        params.update(d0=days[0], d1=days[1])
    if hours:
        # Whole hours between the first and last asked for: one index range, few rows.
        clauses.append("(level = 'h' AND unit_ms >= :h0 AND unit_ms <= :h1)")
        params.update(h0=min(hours), h1=max(hours))
    if not clauses:
        return {}
    sql = f"SELECT level, unit_ms, version FROM usage_versions WHERE {' OR '.join(clauses)}"
    return {(str(lv), int(t)): int(v) for lv, t, v in await conn.execute(text(sql), params)}
