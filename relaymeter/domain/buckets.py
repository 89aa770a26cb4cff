"""Time-series bucket boundaries (5 minutes, hours, days) computed in a time zone, DST-aware."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

from relaymeter.domain.windows import HOUR_MS, RangeError, next_period_start_ms, start_of_day_ms, to_ms

BUCKETS = ("5m", "hour", "day")
FIVE_MIN_MS = 300_000
QUARTER_MS = 900_000
MAX_BUCKETS = 2000


@dataclass(frozen=True, slots=True)
class BucketGrid:
    """``starts[i]`` is the zone-aligned start of bucket i (its label) and ``aligned_end`` the
    aligned end of the last one; ``bounds`` are the same boundaries clipped to the range, so
    bucket i holds the events in [bounds[i], bounds[i + 1])."""

    bucket: str
    starts: list[int]
    bounds: list[int]
    aligned_end: int

    def __len__(self) -> int:
        return len(self.starts)

    def end_of(self, i: int) -> int:
        """Zone-aligned end of bucket i (the next bucket's aligned start)."""
        return self.starts[i + 1] if i + 1 < len(self.starts) else self.aligned_end


def _offset_ms(ts_ms: int, tz: tzinfo) -> int:
    off = datetime.fromtimestamp(ts_ms / 1000, tz).utcoffset()
    return int(off.total_seconds() * 1000) if off is not None else 0


def floor_ms(ts_ms: int, bucket: str, tz: tzinfo) -> int:
    """Start of the bucket (in the zone) that contains ts_ms."""
    if bucket == "day":
        return start_of_day_ms(ts_ms, tz)
    if bucket == "hour":
        local = datetime.fromtimestamp(ts_ms / 1000, tz)
        floored = to_ms(local.replace(minute=0, second=0, microsecond=0))
        # A wall-clock hour can fold (DST); never return a start after the instant itself.
        return floored if floored <= ts_ms else floored - HOUR_MS
    if bucket == "5m":
        off = _offset_ms(ts_ms, tz)
        return (ts_ms + off) // FIVE_MIN_MS * FIVE_MIN_MS - off
    raise RangeError(f"unknown bucket {bucket!r}; use one of {', '.join(BUCKETS)}")


def next_start_ms(start_ms: int, bucket: str, tz: tzinfo) -> int:
    """Start of the bucket after the one starting at start_ms."""
    if bucket == "day":
        nxt = next_period_start_ms("day", start_ms, tz)
        return nxt if nxt > start_ms else start_ms + 24 * HOUR_MS
    width = HOUR_MS if bucket == "hour" else FIVE_MIN_MS
    candidate = start_ms + width
    if _offset_ms(start_ms, tz) == _offset_ms(candidate, tz):
        return candidate
    # The offset changes inside this bucket (DST): the next boundary is the first quarter
    # hour after start_ms whose wall-clock time is a multiple of the bucket width.
    t = (start_ms // QUARTER_MS + 1) * QUARTER_MS
    limit = start_ms + 2 * width + HOUR_MS
    while t < limit:
        local = datetime.fromtimestamp(t / 1000, tz)
        if local.second == 0 and (local.minute == 0 if bucket == "hour" else local.minute % 5 == 0):
            return t
        t += FIVE_MIN_MS if bucket == "5m" else QUARTER_MS
    return candidate


def grid(
    start_ms: int, end_ms: int, bucket: str, tz: tzinfo, *, max_buckets: int = MAX_BUCKETS
) -> BucketGrid:
    """Buckets covering [start_ms, end_ms): aligned starts plus boundaries clipped to the range."""
    if bucket not in BUCKETS:
        raise RangeError(f"unknown bucket {bucket!r}; use one of {', '.join(BUCKETS)}")
    if end_ms <= start_ms:
        raise RangeError("end must be after start")
    starts = [floor_ms(start_ms, bucket, tz)]
    while True:
        nxt = next_start_ms(starts[-1], bucket, tz)
        if nxt >= end_ms:
            break
        starts.append(nxt)
        if len(starts) > max_buckets:
            raise RangeError(
                f"the range holds more than {max_buckets} {bucket} buckets; "
                "use a larger bucket (hour or day) or a shorter range"
            )
    bounds = [start_ms, *starts[1:], end_ms]
    return BucketGrid(bucket, starts, bounds, next_start_ms(starts[-1], bucket, tz))


def default_bucket(start_ms: int, end_ms: int) -> str:
    """A sensible bucket for a range: 5 minutes up to 2 hours, hours up to 3 days, else days."""
    span = end_ms - start_ms
    if span <= 2 * HOUR_MS:
        return "5m"
    if span <= 72 * HOUR_MS:
        return "hour"
    return "day"
