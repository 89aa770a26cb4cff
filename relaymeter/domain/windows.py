"""Named time ranges (today, 1h, 5h, 24h, 7d, 30d, custom) and calendar periods in a time zone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
RANGE_NAMES = ("today", "1h", "5h", "24h", "7d", "30d", "custom")
_ROLLING_MS = {"1h": HOUR_MS, "5h": 5 * HOUR_MS, "24h": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class RangeError(ValueError):
    """A range, time or time zone that cannot be resolved; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    name: str
    start_ms: int
    end_ms: int
    tz: str


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def zone(name: str | None) -> tzinfo:
    """A tzinfo for an IANA name; "local" or empty means the machine's local zone."""
    if not name or name == "local":
        local = datetime.now().astimezone().tzinfo
        return local if local is not None else UTC
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RangeError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)") from None


def zone_name(name: str | None) -> str:
    tz = zone(name)
    key = getattr(tz, "key", None)
    return str(key) if key else (tz.tzname(datetime.now()) or "UTC")


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def parse_time_ms(value: str, tz: tzinfo) -> int:
    """Epoch ms from epoch ms digits, an ISO date (midnight in ``tz``) or an ISO date-time."""
    text = value.strip()
    if not text:
        raise RangeError("empty time")
    if text.isdigit():
        number = int(text)
        return number * 1000 if number < 10_000_000_000 else number
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RangeError(f"cannot parse time {value!r} (use ISO 8601 or epoch milliseconds)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return to_ms(dt)


def start_of_day_ms(ts_ms: int, tz: tzinfo) -> int:
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    return to_ms(datetime(local.year, local.month, local.day, tzinfo=tz))


def start_of_week_ms(ts_ms: int, tz: tzinfo, week_start: str = "monday") -> int:
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    offset = (local.weekday() - WEEKDAYS.index(week_start)) % 7
    day = datetime(local.year, local.month, local.day) - timedelta(days=offset)
    return to_ms(day.replace(tzinfo=tz))


def start_of_month_ms(ts_ms: int, tz: tzinfo) -> int:
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    return to_ms(datetime(local.year, local.month, 1, tzinfo=tz))


def next_period_start_ms(period: str, ts_ms: int, tz: tzinfo, week_start: str = "monday") -> int:
    """When the calendar period (day, week, month) containing ts_ms ends."""
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    if period == "day":
        nxt = datetime(local.year, local.month, local.day) + timedelta(days=1)
    elif period == "week":
        offset = (local.weekday() - WEEKDAYS.index(week_start)) % 7
        nxt = datetime(local.year, local.month, local.day) + timedelta(days=7 - offset)
    elif period == "month":
        nxt = datetime(local.year + (local.month == 12), local.month % 12 + 1, 1)
    else:
        raise RangeError(f"unknown period {period!r}")
    return to_ms(nxt.replace(tzinfo=tz))


def resolve_range(
    name: str,
    *,
    tz: str | None = None,
    start: str | None = None,
    end: str | None = None,
    now: int | None = None,
) -> TimeRange:
    """Resolve a named range to [start_ms, end_ms) in a time zone."""
    tzi = zone(tz)
    current = now if now is not None else now_ms()
    key = (name or "today").strip().lower()
    if key == "today":
        return TimeRange(key, start_of_day_ms(current, tzi), current + 1, zone_name(tz))
    if key in _ROLLING_MS:
        return TimeRange(key, current + 1 - _ROLLING_MS[key], current + 1, zone_name(tz))
    if key == "custom" or (start and key not in RANGE_NAMES):
        if not start:
            raise RangeError("a custom range needs start (and optionally end)")
        start_ms = parse_time_ms(start, tzi)
        end_ms = parse_time_ms(end, tzi) if end else current + 1
        if end_ms <= start_ms:
            raise RangeError("end must be after start")
        return TimeRange("custom", start_ms, end_ms, zone_name(tz))
    raise RangeError(f"unknown range {name!r}; use one of {', '.join(RANGE_NAMES)}")
