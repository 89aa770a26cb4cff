"""In-memory copies of closed per-dimension rollup units (every row of one UTC 15-minute slot,
hour, day or month), used only while the rollups' change counters (store/versions.py) still
match: long ranges then read the database only for the units that are still changing."""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from relaymeter.domain.windows import DAY_MS, HOUR_MS
from relaymeter.store import versions
from relaymeter.store.increments import SLOT_MS, next_month_ms

LEVEL_TABLES = {
    "month": ("usage_monthly_dim", "month_ms"),
    "day": ("usage_daily_dim", "day_ms"),
    "hour": ("usage_hourly_dim", "hour_ms"),
    "slot": ("usage_15m_dim", "slot_ms"),
}
_WIDTH = {"day": DAY_MS, "hour": HOUR_MS, "slot": SLOT_MS}
MAX_ROWS = 400_000  # at most ~100 MB of int64 sums: ~1,000 units of a pool with ~400 dimension values
# A query whose closed units would fill more than this share of the cache reads the database the
# usual way instead of evicting what other queries reuse (e.g. 30 days by hour in a big pool).
QUERY_SHARE = 0.6

Span = tuple[int, int, int, int]  # (lo, hi, bucket, sign), as in store/queries.py
Sink = Callable[[int, Sequence[Any], Sequence[Any], int], None]


def unit_end(level: str, start_ms: int) -> int:
    """End of the rollup unit (month, day, hour or 15-minute slot) starting at ``start_ms``."""
    return next_month_ms(start_ms) if level == "month" else start_ms + _WIDTH[level]


@dataclass(slots=True)
class UnitRows:
    idx: np.ndarray  # registry index of each row's (dim, value)
    sums: np.ndarray  # (rows, sum columns) int64
    version: int


class RollupCache:
    """Closed units' rows by (level, start), least recently used dropped past ``max_rows``."""

    def __init__(self, sum_columns: Sequence[str], max_rows: int = MAX_ROWS) -> None:
        self.sum_columns = tuple(sum_columns)
        self.max_rows = max_rows
        self.keys: list[tuple[str, str]] = []  # registry: index -> (dim, value)
        self._index: dict[tuple[str, str], int] = {}
        self._units: OrderedDict[tuple[str, int], UnitRows] = OrderedDict()
        self._rows = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._units)

    def unit_budget(self) -> int:
        """How many units one query may bring in: its share of the cache at the rows per unit
        seen so far."""
        per_unit = max(self._rows / len(self._units), 1.0) if self._units else 400.0
        return int(self.max_rows * QUERY_SHARE / per_unit)

    def get(self, unit: tuple[str, int], version: int) -> UnitRows | None:
        entry = self._units.get(unit)
        if entry is None or entry.version != version:
            return None
        self._units.move_to_end(unit)
        return entry

    def put(self, unit: tuple[str, int], rows: Sequence[Sequence[Any]], version: int) -> UnitRows:
        """Store a unit's rows ((dim, value, *sums) each) read at ``version``."""
        index = self._index
        idx = np.empty(len(rows), dtype=np.int64)
        for i, row in enumerate(rows):
            key = (str(row[0]), str(row[1]))
            j = index.get(key)
            if j is None:
                j = index[key] = len(self.keys)
                self.keys.append(key)
            idx[i] = j
        sums = np.array([row[2:] for row in rows], dtype=np.int64).reshape(len(rows), len(self.sum_columns))
        entry = UnitRows(idx, sums, version)
        old = self._units.pop(unit, None)
        if old is not None:
            self._rows -= len(old.idx)
        self._units[unit] = entry
        self._rows += len(rows)
        while self._rows > self.max_rows and len(self._units) > 1:
            _unit, dropped = self._units.popitem(last=False)
            self._rows -= len(dropped.idx)
        return entry


_CACHES: weakref.WeakKeyDictionary[Any, RollupCache] = weakref.WeakKeyDictionary()


def for_connection(conn: AsyncConnection, sum_columns: Sequence[str]) -> RollupCache:
    """The cache of the connection's engine (one per Database)."""
    engine = conn.sync_engine
    cache = _CACHES.get(engine)
    if cache is None:
        cache = _CACHES[engine] = RollupCache(sum_columns)
    return cache


def _combine(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of several units summed per registry index."""
    if len(parts) == 1:
        return parts[0]
    idx = np.concatenate([p[0] for p in parts])
    sums = np.concatenate([p[1] for p in parts])
    keys, inverse = np.unique(idx, return_inverse=True)
    out = np.zeros((len(keys), sums.shape[1]), dtype=np.int64)
    np.add.at(out, inverse, sums)
    return keys, out


async def read_closed_units(
    conn: AsyncConnection,
    cache: RollupCache,
    groups: dict[tuple[str, int], list[Span]],
    names: Sequence[str],
    keys: Sequence[str],
    wanted_dims: set[str],
    wanted_values: set[str] | None,
    sink: Sink,
) -> dict[tuple[str, int], list[Span]]:
    """Hand the rows of every closed unit in ``groups`` to sink (from the cache, or read and
    cached), summed per bucket (signs applied); returns the spans left for the usual reads: other
    levels and units that are still open. ``keys`` is the row key shape the sink expects
    (('dim', 'value'), ('value',) or ()); rows are those of ``wanted_dims`` [and values]."""
    now = time.time_ns() // 1_000_000
    budget = cache.unit_budget()
    seen = 0
    closed: list[tuple[str, int, int, int, int]] = []
    rest: dict[tuple[str, int], list[Span]] = {}
    for (level, sign), spans in groups.items():
        if level not in LEVEL_TABLES:
            rest[(level, sign)] = spans
            continue
        for lo, hi, bucket, _sign in spans:
            t = lo
            while t < hi:
                end = unit_end(level, t)
                if end <= now:
                    closed.append((level, t, end, bucket, sign))
                else:
                    rest.setdefault((level, sign), []).append((t, end, bucket, sign))
                t = end
                seen += 1
                if seen > budget:
                    return groups
    if not closed:
        return groups

    coarse = [(t, end) for level, t, end, _b, _s in closed if level in ("month", "day")]
    hours = sorted({t - t % HOUR_MS for level, t, _e, _b, _s in closed if level in ("hour", "slot")})
    days = (min(t for t, _ in coarse), max(e for _, e in coarse)) if coarse else None
    counters = await versions.read(conn, days, hours)

    def version_of(level: str, t: int, end: int) -> int:
        if level in ("hour", "slot"):
            return counters.get((versions.HOUR, t - t % HOUR_MS), 0)
        if level == "day":
            return counters.get((versions.DAY, t), 0)
        return sum(v for (lv, d), v in counters.items() if lv == versions.DAY and t <= d < end)

    found: dict[int, list[tuple[UnitRows, int]]] = {}  # bucket -> (unit rows, sign)
    missing: dict[str, list[tuple[int, int, int, int]]] = {}
    for level, t, end, bucket, sign in closed:
        version = version_of(level, t, end)
        entry = cache.get((level, t), version)
        if entry is None:
            missing.setdefault(level, []).append((t, bucket, sign, version))
            cache.misses += 1
        else:
            found.setdefault(bucket, []).append((entry, sign))
            cache.hits += 1
    if missing:
        sums = ", ".join(cache.sum_columns)
        selects = []
        for level, units in missing.items():
            table, column = LEVEL_TABLES[level]
            times = ", ".join(str(int(t)) for t, *_ in units)
            selects.append(
                f"SELECT '{level}', {column}, dim, value, {sums} FROM {table} WHERE {column} IN ({times})"
            )
        rows: dict[tuple[str, int], list[Any]] = {}
        for row in await conn.execute(text(" UNION ALL ".join(selects))):
            rows.setdefault((row[0], int(row[1])), []).append(row[2:])
        for level, units in missing.items():
            for t, bucket, sign, version in units:
                entry = cache.put((level, t), rows.get((level, t), []), version)
                found.setdefault(bucket, []).append((entry, sign))

    columns = [cache.sum_columns.index(n) for n in names]
    registry = cache.keys
    mask = np.fromiter(
        (d in wanted_dims and (wanted_values is None or v in wanted_values) for d, v in registry),
        dtype=bool,
        count=len(registry),
    )
    shape = tuple(keys)
    for bucket, parts in found.items():
        chosen = []
        for part, sign in parts:
            selected = mask[part.idx]
            sums = part.sums[selected][:, columns]
            chosen.append((part.idx[selected], sums if sign > 0 else -sums))
        idx, picked = _combine(chosen)
        keep = picked.any(axis=1)
        for j, vals in zip(idx[keep].tolist(), picked[keep].tolist(), strict=True):
            dim, value = registry[j]
            if shape == ("dim", "value"):
                sink(bucket, (dim, value), vals, 1)
            elif shape == ("value",):
                sink(bucket, (value,), vals, 1)
            else:
                sink(bucket, (), vals, 1)
    return rest
