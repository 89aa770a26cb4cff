"""Provider quota answers and rate-limit headers -> Window objects (pure parsing, no I/O).

Sources: Claude's OAuth usage endpoint, Codex's ``wham/usage``, Gemini's
``retrieveUserQuota``, and the rate-limit headers of relayed responses (Anthropic unified
and per-minute limits, OpenAI ``x-ratelimit-*``, Codex ``x-codex-*``). Window names a
provider adds later are kept as they come, never dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FIVE_HOUR_S = 5 * 3600
SEVEN_DAY_S = 7 * 86400
# Windows that limit the whole account (an exhausted one blocks every model). Model-specific
# windows (seven_day_opus, Gemini per-model buckets) and per-minute API limits do not.
ACCOUNT_WINDOWS = frozenset({"five_hour", "seven_day", "primary", "secondary"})
WEEKLY_WINDOWS = frozenset({"seven_day", "secondary"})
_KNOWN_SECONDS = {"five_hour": FIVE_HOUR_S, "seven_day": SEVEN_DAY_S}


@dataclass(slots=True)
class Window:
    name: str
    used_percent: float | None = None
    remaining: int | None = None
    limit_value: int | None = None
    resets_at_ms: int | None = None
    window_seconds: int | None = None
    limit_reached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exhausted(self) -> bool:
        return self.limit_reached or (self.used_percent is not None and self.used_percent >= 100)

    @property
    def remaining_percent(self) -> float | None:
        return None if self.used_percent is None else max(0.0, 100.0 - self.used_percent)


@dataclass(slots=True)
class UsageReport:
    windows: list[Window] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # plan, email, credits, ...


class ParseError(ValueError):
    """A provider answer that is not the documented shape."""


# --- value helpers ------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _int(value: Any) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def _percent(value: Any) -> float | None:
    number = _num(value)
    return None if number is None else round(max(0.0, number), 4)


def parse_time_ms(value: Any) -> int | None:
    """Epoch ms from epoch seconds / ms numbers or an RFC 3339 string (None when unusable)."""
    number = _num(value)
    if number is not None:
        if number <= 0:
            return None
        return int(number * 1000) if number < 10_000_000_000 else int(number)
    if isinstance(value, str) and value.strip():
        text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        # Python < 3.11 style: trim fractional seconds beyond microseconds.
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None
        return int(dt.timestamp() * 1000)
    return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration_ms(text: str) -> int | None:
    """'20ms', '1s', '6m0s', '1h2m3.5s' -> milliseconds; a bare number is seconds."""
    t = text.strip()
    number = _num(t)
    if number is not None:
        return int(number * 1000)
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(t):
        if match.start() != pos:
            return None
        factor = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[match.group(2)]
        total += float(match.group(1)) * factor
        pos = match.end()
    if pos != len(t) or pos == 0:
        return None
    return int(total)


# --- Claude OAuth usage ---------------------------------------------------------------------------


def parse_claude_usage(doc: Any) -> UsageReport:
    """``GET /api/oauth/usage``: every object with ``utilization`` is a window (null ones skipped)."""
    if not isinstance(doc, dict):
        raise ParseError("Claude usage: expected a JSON object")
    report = UsageReport()
    for name, value in doc.items():
        if not isinstance(value, dict):
            continue
        if name == "extra_usage":
            limit = _int(value.get("monthly_limit"))
            used = _num(value.get("used_credits"))
            report.info["extra_usage"] = value
            if value.get("is_enabled"):
                report.windows.append(
                    Window(
                        name="extra_usage",
                        used_percent=_percent(value.get("utilization")),
                        limit_value=limit,
                        remaining=None if limit is None or used is None else max(0, int(limit - used)),
                        extra={"kind": "credits", **value},
                    )
                )
            continue
        if "utilization" not in value and "resets_at" not in value:
            continue
        used = _percent(value.get("utilization"))
        report.windows.append(
            Window(
                name=str(name)[:80],
                used_percent=used,
                resets_at_ms=parse_time_ms(value.get("resets_at")),
                window_seconds=_seconds_for(str(name)),
                limit_reached=used is not None and used >= 100,
                extra={k: v for k, v in value.items() if k not in ("utilization", "resets_at")},
            )
        )
    return report


def _seconds_for(name: str) -> int | None:
    if name in _KNOWN_SECONDS:
        return _KNOWN_SECONDS[name]
    if name.startswith("seven_day"):
        return SEVEN_DAY_S
    if name.startswith("five_hour"):
        return FIVE_HOUR_S
    return None


# --- Codex wham/usage -------------------------------------------------------------------------------


def _codex_name(seconds: int | None, fallback: str) -> str:
    if seconds == FIVE_HOUR_S:
        return "five_hour"
    if seconds == SEVEN_DAY_S:
        return "seven_day"
    return fallback


def _codex_windows(rate: Any, prefix: str, now_ms: int) -> list[Window]:
    if not isinstance(rate, dict):
        return []
    found: list[tuple[str, dict[str, Any]]] = []
    for slot in ("primary", "secondary"):
        value = rate.get(f"{slot}_window")
        if isinstance(value, dict):
            found.append((slot, value))
    names = [_codex_name(_int(w.get("limit_window_seconds")), slot) for slot, w in found]
    if len(set(names)) != len(names):  # both classified alike: keep primary / secondary
        names = [slot for slot, _ in found]
    reached = bool(rate.get("limit_reached")) or rate.get("allowed") is False
    windows = []
    for name, (_slot, w) in zip(names, found, strict=True):
        used = _percent(w.get("used_percent"))
        reset = parse_time_ms(w.get("reset_at"))
        if reset is None and _num(w.get("reset_after_seconds")) is not None:
            reset = now_ms + int((_num(w.get("reset_after_seconds")) or 0) * 1000)
        windows.append(
            Window(
                name=f"{prefix}{name}",
                used_percent=used,
                resets_at_ms=reset,
                window_seconds=_int(w.get("limit_window_seconds")),
                limit_reached=used is not None and used >= 100,
            )
        )
    if reached and windows and not any(w.limit_reached for w in windows):
        # The provider says "limit reached" without a window at 100%: blame the fullest one.
        fullest = max(windows, key=lambda w: w.used_percent or 0.0)
        fullest.limit_reached = True
    return windows


def parse_codex_usage(doc: Any, now_ms: int) -> UsageReport:
    """``GET /backend-api/wham/usage``: primary / secondary windows classified by their length."""
    if not isinstance(doc, dict):
        raise ParseError("Codex usage: expected a JSON object")
    report = UsageReport()
    for key in ("plan_type", "email"):
        if doc.get(key):
            report.info["plan" if key == "plan_type" else key] = doc[key]
    if isinstance(doc.get("credits"), dict):
        report.info["credits"] = doc["credits"]
    report.windows.extend(_codex_windows(doc.get("rate_limit"), "", now_ms))
    report.windows.extend(_codex_windows(doc.get("code_review_rate_limit"), "code_review_", now_ms))
    extra = doc.get("additional_rate_limits")
    items: list[tuple[str, Any]] = []
    if isinstance(extra, dict):
        items = [(str(k), v) for k, v in extra.items()]
    elif isinstance(extra, list):
        for i, item in enumerate(extra):
            if not isinstance(item, dict):
                continue
            name = next(
                (
                    str(item[k])
                    for k in ("limit_name", "name", "metered_feature", "feature", "id")
                    if item.get(k)
                ),
                f"additional_{i}",
            )
            items.append((name, item.get("rate_limit", item)))
    for name, rate in items:
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] or "additional"
        report.windows.extend(_codex_windows(rate, f"{slug}_", now_ms))
    if not report.windows and not isinstance(doc.get("rate_limit"), dict):
        raise ParseError("Codex usage: no rate_limit object in the answer")
    return report


# --- Gemini retrieveUserQuota ---------------------------------------------------------------------


def parse_gemini_quota(doc: Any) -> UsageReport:
    """``POST v1internal:retrieveUserQuota``: one window per model (and token type) bucket."""
    if not isinstance(doc, dict) or not isinstance(doc.get("buckets", []), list):
        raise ParseError('Gemini quota: expected {"buckets": [...]}')
    report = UsageReport()
    for bucket in doc.get("buckets", []):
        if not isinstance(bucket, dict):
            continue
        model = str(bucket.get("modelId") or "all")[:60]
        token_type = str(bucket.get("tokenType") or "").lower()
        name = f"{model}:{token_type}" if token_type else model
        fraction = _num(bucket.get("remainingFraction"))
        used = None if fraction is None else round(max(0.0, (1.0 - fraction) * 100), 4)
        report.windows.append(
            Window(
                name=name[:80],
                used_percent=used,
                remaining=_int(bucket.get("remainingAmount")),
                resets_at_ms=parse_time_ms(bucket.get("resetTime")),
                limit_reached=fraction is not None and fraction <= 0,
                extra={"model": model, "token_type": token_type} if token_type else {"model": model},
            )
        )
    return report


# --- rate-limit headers of relayed responses ------------------------------------------------------


def _limit_headers(headers: Any) -> dict[str, str]:
    """The rate-limit headers only, names lower-case; Go-style list values (CPA's
    response_headers) become their first item."""
    out: dict[str, str] = {}
    items = headers.items() if hasattr(headers, "items") else []
    for name, value in items:
        name = name.lower() if isinstance(name, str) else str(name).lower()
        if not name.startswith(_PREFIXES):  # most headers: one cheap check
            continue
        if isinstance(value, list | tuple):
            value = value[0] if value else ""
        out[name] = str(value)
    return out


_UNIFIED = re.compile(r"^anthropic-ratelimit-unified-(.+)-(utilization|reset|status)$")
_ANTHROPIC = re.compile(
    r"^anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-(limit|remaining|reset)$"
)
_OPENAI = re.compile(r"^x-ratelimit-(limit|remaining|reset)-(requests|tokens)$")
_CODEX = re.compile(r"^x-codex-(primary|secondary)-(.+)$")
_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-", "x-codex-")


def _claim_name(claim: str) -> str:
    c = claim.lower().replace("-", "_")
    for short, long in (("5h", "five_hour"), ("7d", "seven_day")):
        if c == short:
            return long
        if c.startswith(short + "_"):
            return long + c[len(short) :]
    return "unified_" + c


def _limit_window(name: str, limit: int | None, remaining: int | None, reset: int | None) -> Window:
    used = None
    if limit and remaining is not None:
        used = round(max(0.0, (limit - remaining) / limit * 100), 4)
    return Window(
        name=name,
        used_percent=used,
        remaining=remaining,
        limit_value=limit,
        resets_at_ms=reset,
        window_seconds=60,
        limit_reached=remaining == 0 if remaining is not None else False,
    )


def parse_headers(headers: Any, now_ms: int) -> list[Window]:
    """Every rate-limit window the response headers describe (empty when there are none)."""
    h = _limit_headers(headers)
    windows: list[Window] = []
    if not h:
        return windows

    unified: dict[str, dict[str, str]] = {}
    anthropic: dict[str, dict[str, str]] = {}
    openai: dict[str, dict[str, str]] = {}
    codex: dict[str, dict[str, str]] = {}
    for name, value in h.items():
        if m := _UNIFIED.match(name):
            unified.setdefault(m.group(1), {})[m.group(2)] = value
        elif m := _ANTHROPIC.match(name):
            anthropic.setdefault(m.group(1), {})[m.group(2)] = value
        elif m := _OPENAI.match(name):
            openai.setdefault(m.group(2), {})[m.group(1)] = value
        elif m := _CODEX.match(name):
            codex.setdefault(m.group(1), {})[m.group(2)] = value

    for claim, parts in sorted(unified.items()):
        util = _num(parts.get("utilization"))
        status = parts.get("status", "").lower()
        wname = _claim_name(claim)
        windows.append(
            Window(
                name=wname,
                used_percent=None if util is None else round(max(0.0, util * 100), 4),
                resets_at_ms=parse_time_ms(parts.get("reset", "")),
                window_seconds=_seconds_for(wname),
                limit_reached=status == "rejected",
                extra={"status": status} if status else {},
            )
        )
    for kind, parts in sorted(anthropic.items()):
        windows.append(
            _limit_window(
                kind.replace("-", "_"),
                _int(parts.get("limit")),
                _int(parts.get("remaining")),
                parse_time_ms(parts.get("reset", "")),
            )
        )
    for kind, parts in sorted(openai.items()):
        reset_text = parts.get("reset", "")
        reset = None
        if reset_text:
            duration = parse_duration_ms(reset_text)
            reset = now_ms + duration if duration is not None else parse_time_ms(reset_text)
        windows.append(_limit_window(kind, _int(parts.get("limit")), _int(parts.get("remaining")), reset))
    codex_windows = []
    for slot, parts in sorted(codex.items()):
        minutes = _int(parts.get("window-minutes"))
        seconds = minutes * 60 if minutes is not None else None
        used = _percent(parts.get("used-percent"))
        reset = parse_time_ms(parts.get("reset-at", ""))
        after = _num(parts.get("reset-after-seconds"))
        if reset is None and after is not None:
            reset = now_ms + int(after * 1000)
        codex_windows.append(
            Window(
                name=_codex_name(seconds, slot),
                used_percent=used,
                resets_at_ms=reset,
                window_seconds=seconds,
                limit_reached=used is not None and used >= 100,
            )
        )
    if len({w.name for w in codex_windows}) == len(codex_windows):
        windows.extend(codex_windows)
    else:
        for w, slot in zip(codex_windows, sorted(codex), strict=True):
            w.name = slot
            windows.append(w)
    return windows


def exhausted_until(windows: list[Window], now_ms: int) -> tuple[int | None, str] | None:
    """(until_ms or None when unknown, reason) when an account-wide window is used up, else None."""
    hit = [w for w in windows if w.name in ACCOUNT_WINDOWS and w.exhausted]
    if not hit:
        return None
    resets = [w.resets_at_ms for w in hit if w.resets_at_ms is not None and w.resets_at_ms > now_ms]
    names = ", ".join(sorted(w.name for w in hit))
    return (max(resets) if resets else None), f"quota window exhausted: {names}"
