"""Rollup increments of a batch, computed column-wise with numpy (no SQL here).

Events (or repricing's cost deltas) are summed once per 15-minute slot and full rollup key;
every rollup table's rows (full-key hourly / daily, per-dimension 15-minute / hourly / daily /
monthly) are folded from those few rows. The write path upserts them in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.latency import LATENCY_BOUNDS_MS
from relaymeter.domain.windows import DAY_MS, HOUR_MS
from relaymeter.store.schema import ROLLUP_SUM_COLUMNS, TOKEN_COLUMNS

SLOT_MS = 900_000  # 15 minutes: every zone offset in use is a multiple of it
# The full rollup key after the time column, in usage_hourly's column order.
KEY_COLUMNS = ("account_id", "api_key_id", "model", "endpoint", "source", "provider", "failed")
# Per-dimension rollups: one row per time, dimension and value ('*' = all, value '').
ALL = "*"
DIMS = ("account_id", "api_key_id", "model", "endpoint", "provider", "source")
SUM_COLUMNS = ROLLUP_SUM_COLUMNS
COST = SUM_COLUMNS.index("cost_micros")
_LAT0 = SUM_COLUMNS.index("lat_b0")
_BOUNDS = np.array(LATENCY_BOUNDS_MS, dtype=np.int64)
_DIM_INDEX = {dim: KEY_COLUMNS.index(dim) for dim in DIMS}

Int64Array = npt.NDArray[np.int64]
Record = tuple[Any, ...]

_event_key = attrgetter(
    "account_id", "api_key_id", "actual_model", "model", "endpoint", "source", "provider", "failed"
)
_MISSING = -(1 << 63)  # stands for None in _event_numbers (no real time, count or cost is this)
_LATENCY = COST + 1  # positions of latency_ms and ttft_ms in _event_numbers' tuple
# _event_numbers(ev) -> (ts_ms, failed, *TOKEN_COLUMNS, cost_micros, latency_ms, ttft_ms), None as
# _MISSING: compiled into one tuple display, as it runs once per event.
_NUMBERS_SOURCE = f"""
def _event_numbers(ev):
    latency = ev.latency_ms
    ttft = ev.ttft_ms
    return (
        {", ".join(f"ev.{name}" for name in ("ts_ms", "failed", *TOKEN_COLUMNS, "cost_micros"))},
        {_MISSING} if latency is None else latency,
        {_MISSING} if ttft is None else ttft,
    )
"""
_numbers_namespace: dict[str, Any] = {}
exec(_NUMBERS_SOURCE, _numbers_namespace)
_event_numbers: Callable[[UsageEvent], tuple[int, ...]] = _numbers_namespace["_event_numbers"]


def month_start_ms(ts_ms: int) -> int:
    """Start of the UTC month holding ts_ms."""
    d = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp() * 1000)


def next_month_ms(month_ms: int) -> int:
    """Start of the UTC month after the one starting at ``month_ms``."""
    d = datetime.fromtimestamp(month_ms / 1000, UTC)
    return int(datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC).timestamp() * 1000)


def _group(
    times: Int64Array, codes: Int64Array, sums: Int64Array
) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Sum rows sharing (time, code); returns the distinct (time, code) pairs and their sums.

    Times are multiples of SLOT_MS, so (time / SLOT_MS, code) packs into one int64 sort key.
    """
    if len(codes) == 0:
        return times, codes, sums
    width = int(codes.max()) + 1
    packed = (times // SLOT_MS) * width + codes
    order = np.argsort(packed, kind="stable")
    ordered = packed[order]
    starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
    first = ordered[starts]
    return (first // width) * SLOT_MS, first % width, np.add.reduceat(sums[order], starts, axis=0)


def _records(
    times: Int64Array, labels: Sequence[Record], codes: Int64Array, sums: Int64Array
) -> list[Record]:
    """(time, *label, *sums) as plain Python values; rows whose sums are all zero are dropped."""
    keep = np.any(sums != 0, axis=1)
    return [
        (t, *labels[c], *row)
        for t, c, row in zip(times[keep].tolist(), codes[keep].tolist(), sums[keep].tolist(), strict=True)
    ]


# Up to this many rows, folding is done on Python lists: numpy's per-call overhead would
# dominate (the gateway writes batches of ~100 events that share a handful of keys).
SMALL = 16


def _fold_small(
    times: list[int], labels: Sequence[Record], codes: list[int], sums: list[list[int]]
) -> list[Record]:
    """``_records(*_group(...))`` for a few rows, on Python lists (same rows, same order)."""
    acc: dict[tuple[int, int], list[int]] = {}
    for key, row in zip(zip(times, codes, strict=True), sums, strict=True):
        seen = acc.get(key)
        acc[key] = row if seen is None else [a + b for a, b in zip(seen, row, strict=True)]
    return [(t, *labels[c], *row) for (t, c), row in sorted(acc.items()) if any(row)]


@dataclass(slots=True)
class Increments:
    """Signed sums per 15-minute slot and full rollup key (keys[code] = KEY_COLUMNS values)."""

    slots: Int64Array  # slot start per row
    codes: Int64Array  # index into keys per row
    keys: list[Record]
    sums: Int64Array  # rows x SUM_COLUMNS

    @classmethod
    def from_events(cls, events: Sequence[UsageEvent]) -> Increments:
        index: dict[Record, int] = {}
        codes = [
            index.setdefault((acc, key, actual or model, endpoint, source, provider, failed), len(index))
            for acc, key, actual, model, endpoint, source, provider, failed in map(_event_key, events)
        ]
        n = len(events)
        width = _LATENCY + 2
        values = np.fromiter(
            chain.from_iterable(map(_event_numbers, events)), dtype=np.int64, count=n * width
        ).reshape(n, width)
        sums = np.zeros((n, len(SUM_COLUMNS)), dtype=np.int64)
        sums[:, 0] = 1
        sums[:, 1 : COST + 1] = values[:, 1 : COST + 1]
        for col, pos in (
            (SUM_COLUMNS.index("latency_sum_ms"), _LATENCY),
            (SUM_COLUMNS.index("ttft_sum_ms"), _LATENCY + 1),
        ):
            present = values[:, pos] != _MISSING
            measured = np.where(present, values[:, pos], 0)
            sums[:, col] = measured
            sums[:, col + 1] = present
            if pos == _LATENCY:
                rows = np.flatnonzero(present)
                sums[rows, _LAT0 + np.searchsorted(_BOUNDS, measured[rows], side="left")] = 1
        ts = values[:, 0]
        slots, group_codes, grouped = _group(ts - ts % SLOT_MS, np.array(codes, dtype=np.int64), sums)
        return cls(slots, group_codes, [(*k[:6], bool(k[6])) for k in index], grouped)

    @classmethod
    def from_cost_deltas(cls, deltas: dict[Record, int]) -> Increments:
        """Cost-only increments keyed (slot, *KEY_COLUMNS), as repricing produces them."""
        keys = list(deltas)
        sums = np.zeros((len(keys), len(SUM_COLUMNS)), dtype=np.int64)
        sums[:, COST] = np.array(list(deltas.values()), dtype=np.int64)
        slots = np.array([k[0] for k in keys], dtype=np.int64)
        return cls(slots, np.arange(len(keys), dtype=np.int64), [tuple(k[1:]) for k in keys], sums)

    def negated(self) -> Increments:
        return Increments(self.slots, self.codes, self.keys, -self.sums)

    def __len__(self) -> int:
        return len(self.codes)

    # -- rows per table ----------------------------------------------------------------------

    def full_key(self, period_ms: int) -> list[Record]:
        """(period start, *KEY_COLUMNS, *SUM_COLUMNS) rows for usage_hourly / usage_daily."""
        times = self.slots - self.slots % period_ms
        if len(self.codes) <= SMALL:
            return _fold_small(times.tolist(), self.keys, self.codes.tolist(), self.sums.tolist())
        t, codes, sums = _group(times, self.codes, self.sums)
        return _records(t, self.keys, codes, sums)

    def per_dimension(self) -> dict[str, list[Record]]:
        """(time, dim, value, *SUM_COLUMNS) rows per table: slot, hour, day and month."""
        periods: dict[str, Int64Array] = {
            "slot_ms": self.slots,
            "hour_ms": self.slots - self.slots % HOUR_MS,
            "day_ms": self.slots - self.slots % DAY_MS,
        }
        days = periods["day_ms"]
        month_of = {d: month_start_ms(d) for d in set(days.tolist())}
        periods["month_ms"] = np.array([month_of[d] for d in days.tolist()], dtype=np.int64)
        out: dict[str, list[Record]] = {name: [] for name in periods}
        small = len(self.codes) <= SMALL
        if small:
            codes = self.codes.tolist()
            sums = self.sums.tolist()
            period_times = {name: times.tolist() for name, times in periods.items()}
        for dim in (ALL, *DIMS):
            if dim == ALL:
                labels: list[Record] = [(ALL, "")]
                per_key = [0] * len(self.keys)
            else:
                pos = _DIM_INDEX[dim]
                index: dict[str, int] = {}
                per_key = [index.setdefault(str(key[pos]), len(index)) for key in self.keys]
                labels = [(dim, value) for value in index]
            if small:
                value_list = [per_key[c] for c in codes]
                for name, times_list in period_times.items():
                    out[name].extend(_fold_small(times_list, labels, value_list, sums))
                continue
            value_codes = np.array(per_key, dtype=np.int64)[self.codes]
            for name, times in periods.items():
                t, c, s = _group(times, value_codes, self.sums)
                out[name].extend(_records(t, labels, c, s))
        return out
