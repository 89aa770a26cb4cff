"""Budget, rate and concurrency rules for API keys and accounts (pure: no I/O, no clock reads).

Budgets are calendar periods (day, week, month in the configured time zone; week start
configurable) plus an all-time total. Rates use a sliding window approximated from two fixed
one-minute buckets (the usual "sliding window counter"), which the Redis scripts mirror.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from relaymeter.domain.windows import (
    next_period_start_ms,
    start_of_day_ms,
    start_of_month_ms,
    start_of_week_ms,
)

MINUTE_MS = 60_000
PERIODS = ("day", "week", "month", "total")
FOREVER_MS = 2**62


@dataclass(frozen=True, slots=True)
class Window:
    period: str
    start_ms: int
    end_ms: int  # exclusive; FOREVER_MS for the total


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request may not go ahead: which limit, its value, and when it frees up."""

    limit: str  # concurrency | rpm | tpm | budget_day | budget_week | budget_month | budget_total | ...
    message: str
    status: int  # 429 for rate/concurrency, 402 for money
    reset_ms: int | None = None  # epoch ms when the limit resets (None: when a request finishes)

    def retry_after_s(self, now_ms: int) -> int | None:
        if self.reset_ms is None:
            return 1 if self.status == 429 else None
        return max(1, -(-(self.reset_ms - now_ms) // 1000))


@dataclass(slots=True)
class KeyLimits:
    """The limits of one API key; 0 / None means unlimited."""

    key_id: int
    max_concurrency: int = 0
    rpm: int = 0
    tpm: int = 0
    budgets: dict[str, int] = field(default_factory=dict)  # period -> micro-USD

    @property
    def has_budget(self) -> bool:
        return any(v is not None for v in self.budgets.values())


@dataclass(slots=True)
class AccountCaps:
    """Daily caps of one upstream account; None means no cap."""

    account_id: int
    max_concurrency: int = 0
    daily_requests: int | None = None
    daily_tokens: int | None = None
    daily_cost_micros: int | None = None

    @property
    def has_daily_caps(self) -> bool:
        return (
            self.daily_requests is not None
            or self.daily_tokens is not None
            or self.daily_cost_micros is not None
        )


class PeriodClock:
    """Current calendar windows for a time zone, recomputed only when one of them ends."""

    def __init__(self, tz: tzinfo, week_start: str = "monday") -> None:
        self.tz = tz
        self.week_start = week_start
        self._windows: dict[str, Window] = {}
        self._valid_until = -1
        self._valid_from = FOREVER_MS

    def windows(self, now_ms: int) -> dict[str, Window]:
        if not self._valid_from <= now_ms < self._valid_until:
            self._windows = calendar_windows(now_ms, self.tz, self.week_start)
            self._valid_from = max(w.start_ms for w in self._windows.values())
            self._valid_until = min(w.end_ms for w in self._windows.values())
        return self._windows

    def day(self, now_ms: int) -> Window:
        return self.windows(now_ms)["day"]


def calendar_windows(now_ms: int, tz: tzinfo, week_start: str = "monday") -> dict[str, Window]:
    return {
        "day": Window("day", start_of_day_ms(now_ms, tz), next_period_start_ms("day", now_ms, tz)),
        "week": Window(
            "week",
            start_of_week_ms(now_ms, tz, week_start),
            next_period_start_ms("week", now_ms, tz, week_start),
        ),
        "month": Window("month", start_of_month_ms(now_ms, tz), next_period_start_ms("month", now_ms, tz)),
        "total": Window("total", 0, FOREVER_MS),
    }


def sliding_count(prev_bucket: int, curr_bucket: int, now_ms: int) -> float:
    """Requests (or tokens) in the last minute, estimated from two fixed minute buckets."""
    elapsed = (now_ms % MINUTE_MS) / MINUTE_MS
    return prev_bucket * (1.0 - elapsed) + curr_bucket


def minute_of(now_ms: int) -> int:
    return now_ms // MINUTE_MS


def fmt_reset(reset_ms: int | None, tz: tzinfo) -> str:
    if reset_ms is None or reset_ms >= FOREVER_MS:
        return "never (raise or remove the limit)"
    local = datetime.fromtimestamp(reset_ms / 1000, UTC).astimezone(tz)
    return local.isoformat(timespec="seconds")


def usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


def concurrency_denial(in_flight: int, limit: int) -> Denial | None:
    if limit > 0 and in_flight >= limit:
        return Denial(
            "concurrency",
            f"concurrency limit reached: {in_flight} of {limit} requests already in flight for this key; "
            "retry when one finishes",
            429,
        )
    return None


def rate_denial(kind: str, used: float, limit: int, now_ms: int, tz: tzinfo) -> Denial | None:
    """kind is 'rpm' or 'tpm'; ``used`` is the sliding count for the last minute."""
    if limit <= 0 or used < limit:
        return None
    reset = (minute_of(now_ms) + 1) * MINUTE_MS
    what = "requests" if kind == "rpm" else "tokens"
    return Denial(
        kind,
        f"{kind} limit reached: {int(used)} {what} in the last minute, limit {limit}; "
        f"resets at {fmt_reset(reset, tz)}",
        429,
        reset,
    )


def budget_denial(
    period: str,
    limit_micros: int | None,
    spent_micros: int,
    reserved_micros: int,
    window: Window,
    tz: tzinfo,
) -> Denial | None:
    """Budget check: spend so far + what in-flight requests reserved must still be under the limit.

    Each admitted request reserves its estimated cost until it finishes, so concurrent
    requests can overrun a limit only by the requests already admitted when it was reached.
    """
    if limit_micros is None or spent_micros + reserved_micros < limit_micros:
        return None
    label = {"day": "daily", "week": "weekly", "month": "monthly"}.get(period, "total")
    reset = None if period == "total" else window.end_ms
    reserved = f" (+{usd(reserved_micros)} reserved by requests in flight)" if reserved_micros else ""
    return Denial(
        f"budget_{period}",
        f"{label} budget exhausted: spent {usd(spent_micros)}{reserved} of {usd(limit_micros)}; "
        f"resets {fmt_reset(reset, tz) if reset else 'never (raise or remove the limit)'}",
        402,
        reset,
    )


def account_cap_reason(caps: AccountCaps, requests: int, tokens: int, cost_micros: int) -> str | None:
    """Why an account is over one of its daily caps today, or None."""
    if caps.daily_requests is not None and requests >= caps.daily_requests:
        return f"daily request cap reached ({requests}/{caps.daily_requests})"
    if caps.daily_tokens is not None and tokens >= caps.daily_tokens:
        return f"daily token cap reached ({tokens}/{caps.daily_tokens})"
    if caps.daily_cost_micros is not None and cost_micros >= caps.daily_cost_micros:
        return f"daily cost cap reached ({usd(cost_micros)}/{usd(caps.daily_cost_micros)})"
    return None
