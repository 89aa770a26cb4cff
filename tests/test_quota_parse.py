"""Parsing provider quota answers and rate-limit headers (shapes from the protocol file)."""

from __future__ import annotations

import copy

import pytest

from relaymeter.quota.parse import (
    ParseError,
    exhausted_until,
    parse_claude_usage,
    parse_codex_usage,
    parse_duration_ms,
    parse_gemini_quota,
    parse_headers,
)
from tests.fakes.provider_usage import CLAUDE_USAGE, CODEX_USAGE, GEMINI_QUOTA

NOW = 1_766_390_880_000  # 2025-12-22T08:08:00Z


def by_name(windows: list) -> dict:  # type: ignore[type-arg]
    return {w.name: w for w in windows}


def test_claude_usage_windows_including_unknown_ones() -> None:
    doc = copy.deepcopy(CLAUDE_USAGE)
    doc["seven_day_research_preview"] = {
        "utilization": 55.5,
        "resets_at": "2026-08-25T00:00:00Z",
        "note": "new",
    }
    report = parse_claude_usage(doc)
    w = by_name(report.windows)
    # null windows are absent; extra_usage (disabled) is not a window; the unknown one is kept
    assert set(w) == {
        "five_hour",
        "seven_day",
        "seven_day_opus",
        "seven_day_sonnet",
        "seven_day_research_preview",
    }
    assert w["five_hour"].used_percent == 37.0
    assert w["five_hour"].remaining_percent == 63.0
    assert w["five_hour"].resets_at_ms == 1_787_421_600_000  # 2026-08-22T18:00:00Z
    assert w["five_hour"].window_seconds == 18_000
    assert w["seven_day"].window_seconds == 604_800
    assert w["seven_day_opus"].resets_at_ms is None
    assert w["seven_day_research_preview"].used_percent == 55.5
    assert w["seven_day_research_preview"].extra == {"note": "new"}
    assert not any(x.exhausted for x in report.windows)
    assert report.info["extra_usage"]["is_enabled"] is False


def test_claude_usage_exhausted_and_extra_credits() -> None:
    doc = copy.deepcopy(CLAUDE_USAGE)
    doc["seven_day"] = {"utilization": 100.0, "resets_at": "2026-08-27T00:00:00+00:00"}
    doc["extra_usage"] = {
        "is_enabled": True,
        "monthly_limit": 5000,
        "used_credits": 1250,
        "utilization": 25.0,
    }
    report = parse_claude_usage(doc)
    w = by_name(report.windows)
    assert w["seven_day"].exhausted and w["seven_day"].limit_reached
    assert (w["extra_usage"].limit_value, w["extra_usage"].remaining, w["extra_usage"].used_percent) == (
        5000,
        3750,
        25.0,
    )
    until, reason = exhausted_until(report.windows, NOW) or (None, "")
    assert until == w["seven_day"].resets_at_ms and "seven_day" in reason
    with pytest.raises(ParseError):
        parse_claude_usage(["not", "an", "object"])


def test_codex_windows_classified_by_length() -> None:
    report = parse_codex_usage(CODEX_USAGE, NOW)
    w = by_name(report.windows)
    assert set(w) == {"five_hour", "seven_day"}
    assert (w["five_hour"].used_percent, w["five_hour"].resets_at_ms, w["five_hour"].window_seconds) == (
        23.0,
        1_766_400_000_000,
        18_000,
    )
    assert (w["seven_day"].used_percent, w["seven_day"].resets_at_ms) == (61.0, 1_766_692_000_000)
    assert report.info == {
        "plan": "plus",
        "email": "alice@example.com",
        "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
    }


def test_codex_unusual_windows_and_limit_reached() -> None:
    doc = copy.deepcopy(CODEX_USAGE)
    rate = doc["rate_limit"]
    rate["limit_reached"] = True
    rate["allowed"] = False
    rate["primary_window"] = {"used_percent": 80, "limit_window_seconds": 3600, "reset_after_seconds": 600}
    del rate["secondary_window"]["reset_at"]
    doc["code_review_rate_limit"] = {
        "allowed": True,
        "limit_reached": False,
        "primary_window": {"used_percent": 5, "limit_window_seconds": 604800, "reset_at": 1766692000},
    }
    doc["additional_rate_limits"] = [
        {
            "limit_name": "GPT-5 Pro",
            "rate_limit": {"primary_window": {"used_percent": 40, "limit_window_seconds": 86400}},
        }
    ]
    w = by_name(parse_codex_usage(doc, NOW).windows)
    assert set(w) == {"primary", "seven_day", "code_review_seven_day", "gpt_5_pro_primary"}
    assert w["primary"].resets_at_ms == NOW + 600_000
    assert w["seven_day"].resets_at_ms == NOW + 301_000_000  # from reset_after_seconds
    # "limit reached" without a window at 100%: the fullest window is marked
    assert w["primary"].limit_reached and not w["seven_day"].limit_reached
    with pytest.raises(ParseError):
        parse_codex_usage({"plan_type": "plus"}, NOW)


def test_gemini_buckets() -> None:
    doc = copy.deepcopy(GEMINI_QUOTA)
    doc["buckets"].append(
        {"modelId": "gemini-3-pro", "remainingFraction": 0, "resetTime": "2026-08-23T00:00:00Z"}
    )
    w = by_name(parse_gemini_quota(doc).windows)
    assert w["gemini-2.5-pro:requests"].used_percent == 25.0
    assert w["gemini-2.5-pro:requests"].remaining == 75
    assert w["gemini-2.5-flash:requests"].used_percent == 0.0
    assert w["gemini-3-pro"].limit_reached
    # model windows never exhaust the whole account
    assert exhausted_until(list(w.values()), NOW) is None


def test_anthropic_headers_unified_and_per_minute() -> None:
    headers = {
        "Anthropic-Ratelimit-Unified-5h-Utilization": ["0.42"],  # CPA's Go-canonical form
        "anthropic-ratelimit-unified-5h-reset": "1766404800",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-7d-utilization": "1.0",
        "anthropic-ratelimit-unified-7d-reset": "1766692000",
        "anthropic-ratelimit-unified-7d-status": "rejected",
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3000",
        "anthropic-ratelimit-requests-reset": "2025-12-22T08:09:00Z",
        "content-type": "application/json",
    }
    w = by_name(parse_headers(headers, NOW))
    assert set(w) == {"five_hour", "seven_day", "requests"}
    assert w["five_hour"].used_percent == 42.0 and w["five_hour"].resets_at_ms == 1_766_404_800_000
    assert w["seven_day"].limit_reached
    assert (w["requests"].limit_value, w["requests"].remaining, w["requests"].used_percent) == (
        4000,
        3000,
        25.0,
    )
    assert w["requests"].resets_at_ms == NOW + 60_000
    assert exhausted_until(list(w.values()), NOW) == (1_766_692_000_000, "quota window exhausted: seven_day")


def test_openai_and_codex_headers() -> None:
    w = by_name(
        parse_headers(
            {
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-tokens": "29000",
                "x-ratelimit-reset-tokens": "20ms",
            },
            NOW,
        )
    )
    assert w["requests"].limit_reached and w["requests"].resets_at_ms == NOW + 360_000
    assert w["tokens"].resets_at_ms == NOW + 20
    # per-minute limits are short rate limits, not an exhausted account
    assert exhausted_until(list(w.values()), NOW) is None

    w = by_name(
        parse_headers(
            {
                "x-codex-primary-used-percent": "100",
                "x-codex-primary-window-minutes": "300",
                "x-codex-primary-reset-after-seconds": "3600",
                "x-codex-secondary-used-percent": "40",
                "x-codex-secondary-window-minutes": "10080",
            },
            NOW,
        )
    )
    assert w["five_hour"].exhausted and w["five_hour"].resets_at_ms == NOW + 3_600_000
    assert w["seven_day"].used_percent == 40
    assert parse_headers({"content-type": "text/plain"}, NOW) == []


def test_durations() -> None:
    assert parse_duration_ms("1h2m3.5s") == 3_723_500
    assert parse_duration_ms("20ms") == 20
    assert parse_duration_ms("7") == 7000
    assert parse_duration_ms("soon") is None
