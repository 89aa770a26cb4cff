"""normalize(): every accepted shape becomes the right UsageEvent, bad input a precise error."""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaymeter.domain.events import (
    NormalizeError,
    UsageEvent,
    event_row,
    format_rfc3339_nano,
    from_export_record,
    normalize,
    normalize_row,
    parse_timestamp_ns,
    to_export_record,
)
from relaymeter.domain.redact import mask_source

# The record from the protocol file (current CPA).
CPA_RECORD: dict[str, Any] = {
    "timestamp": "2026-11-20T17:14:03.512345678+08:00",
    "latency_ms": 5321,
    "ttft_ms": 812,
    "source": "alice@example.com",
    "auth_index": "a1b2c3d4",
    "access_token_sha256": "9f2c",
    "client_ip": "127.0.0.1",
    "x_forwarded_for": "",
    "user_agent": "claude-cli/2.1.3",
    "tokens": {
        "input_tokens": 1200,
        "output_tokens": 350,
        "reasoning_tokens": 0,
        "cached_tokens": 0,
        "cache_read_tokens": 48000,
        "cache_read_tokens_present": True,
        "cache_creation_tokens": 2100,
        "cache_creation_5m_tokens": 2100,
        "cache_creation_1h_tokens": 0,
        "total_tokens": 51650,
    },
    "failed": False,
    "generate": True,
    "stream": True,
    "fail": {"status_code": 200, "body": ""},
    "response_headers": {"Anthropic-Ratelimit-Unified-5h-Utilization": ["0.42"]},
    "accounting_version": 2,
    "token_breakdown": {},
    "provider": "claude",
    "executor_type": "claude",
    "model": "claude-sonnet-4-5-20250929",
    "alias": "claude-sonnet-4-5",
    "endpoint": "POST /v1/messages",
    "auth_type": "oauth",
    "api_key": "sk-client-key-as-configured-in-cpa",
    "request_id": "a1b2c3d4",
    "reasoning_effort": "",
    "service_tier": "",
    "response_service_tier": "",
}


def sha(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


def test_current_cpa_record_normalizes_to_utc_and_independent_buckets() -> None:
    ev = normalize(copy.deepcopy(CPA_RECORD), source="cpa:main")
    # 17:14:03 at +08:00 is 09:14:03 UTC
    assert ev.ts_ms == int(datetime(2026, 11, 20, 9, 14, 3, tzinfo=UTC).timestamp() * 1000) + 512
    assert ev.source == "cpa:main"
    assert (ev.input_tokens, ev.output_tokens) == (1200, 350)
    assert (ev.cache_read_tokens, ev.cache_creation_tokens) == (48000, 2100)
    assert ev.total_tokens == 51650
    assert ev.model == "claude-sonnet-4-5" and ev.actual_model == "claude-sonnet-4-5-20250929"
    assert (ev.method, ev.path, ev.endpoint) == ("POST", "/v1/messages", "POST /v1/messages")
    assert ev.latency_ms == 5321 and ev.ttft_ms == 812
    assert ev.stream is True and ev.failed is False and ev.status_code == 200
    assert ev.account_label == "ali***@example.com"
    assert ev.source_hash == sha("alice@example.com")
    assert ev.api_key_hash == sha("sk-client-key-as-configured-in-cpa")
    assert ev.client_ip == "127.0.0.1" and ev.user_agent == "claude-cli/2.1.3"


def test_event_hash_matches_the_cpa_manager_formula() -> None:
    ev = normalize(copy.deepcopy(CPA_RECORD), source="cpa:main")
    parts = [
        "a1b2c3d4",
        "2026-11-20T09:14:03.512345678Z",
        "POST /v1/messages",
        "claude-sonnet-4-5-20250929",
        "a1b2c3d4",
        sha("alice@example.com"),
        "1200",
        "350",
        "0",
        "0",  # max(cached_tokens, cache_tokens)
        "false",
        "5321",
    ]
    assert ev.event_hash == sha("|".join(parts))


def test_event_hash_omits_latency_when_absent_and_trims_fraction_zeros() -> None:
    record = {
        "timestamp": "2026-11-20T09:14:03.500Z",
        "model": "gpt-5",
        "endpoint": "POST /v1/responses",
        "tokens": {"input_tokens": 10, "output_tokens": 5, "cached_tokens": 3, "cache_tokens": 7},
    }
    ev = normalize(record, source="import")
    expected = "|".join(
        ["", "2026-11-20T09:14:03.5Z", "POST /v1/responses", "gpt-5", "", "", "10", "5", "0", "7", "false"]
    )
    assert ev.event_hash == sha(expected)


def test_raw_payload_is_redacted_and_source_masked() -> None:
    record = copy.deepcopy(CPA_RECORD)
    record["source"] = "sk-upstream-secret-key-1234567890"
    record["fail"] = {"status_code": 401, "body": "invalid x-api-key sk-ant-api03-abcdefgh12345"}
    record["failed"] = True
    ev = normalize(record, source="cpa:main")
    assert ev.raw_json is not None
    raw = orjson.loads(ev.raw_json)
    assert raw["api_key"] == "[redacted]"
    assert "sk-upstream-secret" not in ev.raw_json
    assert raw["source"] == mask_source("sk-upstream-secret-key-1234567890")
    assert "sk-ant-api03" not in ev.raw_json
    assert ev.failed and ev.status_code == 401
    assert ev.error_message is not None and "sk-ant-api03" not in ev.error_message


def test_normalize_row_is_the_event_as_a_tuple() -> None:
    for record in (copy.deepcopy(CPA_RECORD), {**CPA_RECORD, "failed": True, "fail": {"status_code": 500}}):
        row = normalize_row(copy.deepcopy(record), source="cpa:main", received_ms=5)
        assert UsageEvent(*row) == normalize(record, source="cpa:main", received_ms=5)
        assert row == event_row(UsageEvent(*row))


def test_openai_style_input_includes_cached_and_output_includes_reasoning() -> None:
    record = {
        "timestamp": 1763630043,
        "provider": "codex",
        "model": "gpt-5-codex",
        "tokens": {"input_tokens": 1000, "output_tokens": 300, "reasoning_tokens": 120, "cached_tokens": 600},
    }
    ev = normalize(record, source="cpa:x")
    assert ev.input_tokens == 400  # uncached part only
    assert ev.cache_read_tokens == 600
    assert ev.output_tokens == 300 and ev.reasoning_tokens == 120
    assert ev.total_tokens == 1300


def test_gemini_reasoning_is_added_to_output() -> None:
    record = {
        "timestamp": 1763630043000,
        "provider": "gemini",
        "model": "gemini-2.5-pro",
        "tokens": {"input_tokens": 100, "output_tokens": 40, "reasoning_tokens": 60, "total_tokens": 200},
    }
    ev = normalize(record, source="cpa:x")
    assert ev.output_tokens == 100 and ev.reasoning_tokens == 60
    assert ev.total_tokens == 200
    assert ev.ts_ms == 1763630043000  # >= 1e10: milliseconds


def test_token_breakdown_is_preferred_when_present() -> None:
    record = copy.deepcopy(CPA_RECORD)
    record["provider"] = "codex"
    record["tokens"] = {"input_tokens": 999, "output_tokens": 999}
    record["token_breakdown"] = {
        "input": {
            "total_tokens": 1500,
            "uncached_tokens": 500,
            "cache_read_tokens": 900,
            "cache_write_tokens": 100,
        },
        "output": {"total_tokens": 300, "non_reasoning_tokens": 200, "reasoning_tokens": 100},
        "unclassified_tokens": 0,
        "quality": "exact",
    }
    ev = normalize(record, source="cpa:x")
    assert (ev.input_tokens, ev.cache_read_tokens, ev.cache_creation_tokens) == (500, 900, 100)
    assert (ev.output_tokens, ev.reasoning_tokens) == (300, 100)
    assert ev.total_tokens == 1800


def test_oldest_cpa_subset_with_numeric_auth_index() -> None:
    record = {
        "timestamp": "2025-06-01T10:00:00.123-05:00",
        "latency_ms": 800,
        "source": "bob@example.com",
        "auth_index": 7,
        "tokens": {
            "input_tokens": 10,
            "output_tokens": 20,
            "reasoning_tokens": 0,
            "cached_tokens": 0,
            "total_tokens": 30,
        },
        "failed": False,
        "provider": "claude",
        "model": "claude-3-5-sonnet",
        "endpoint": "POST /v1/messages",
        "auth_type": "oauth",
        "api_key": "k1",
        "request_id": "deadbeef",
    }
    ev = normalize(record, source="cpa:old")
    assert ev.auth_index == "7"
    assert ev.ts_ms == parse_timestamp_ns("2025-06-01T15:00:00.123Z") // 1_000_000
    assert ev.total_tokens == 30 and ev.stream is None and ev.ttft_ms is None


@pytest.mark.parametrize(
    ("record", "field_value"),
    [
        ({"createdAt": "2026-01-02 03:04:05", "modelName": "m"}, ("model", "m")),
        ({"request_time": "2026-01-02T03:04:05", "model_name": "m2"}, ("model", "m2")),
        (
            {"time": 1767323045, "method": "post", "path": "/v1/chat/completions"},
            ("endpoint", "POST /v1/chat/completions"),
        ),
        ({"created": "1767323045000", "api": "GET /v1/models"}, ("path", "/v1/models")),
        (
            {
                "timestamp": 1767323045,
                "usage": {"prompt_tokens": 9, "completion_tokens": 4},
                "provider": "openai",
            },
            ("output_tokens", 4),
        ),
        (
            {"timestamp": 1767323045, "promptTokens": 9, "completionTokens": 4, "provider": "openai"},
            ("input_tokens", 9),
        ),
        ({"timestamp": 1767323045, "durationMs": 77}, ("latency_ms", 77)),
        ({"timestamp": 1767323045, "success": False}, ("failed", True)),
        ({"timestamp": 1767323045, "statusCode": 503}, ("failed", True)),
        ({"timestamp": 1767323045, "errorMessage": "boom"}, ("failed", True)),
        ({"timestamp": 1767323045, "ok": True}, ("failed", False)),
        ({"timestamp": 1767323045, "requestId": "r-1"}, ("request_id", "r-1")),
        ({"timestamp": 1767323045, "authIndex": "ab"}, ("auth_index", "ab")),
        ({"timestamp": 1767323045, "type": "codex"}, ("provider", "codex")),
        ({"timestamp": 1767323045}, ("endpoint", "-")),
        ({"timestamp": 1767323045}, ("model", "-")),
    ],
)
def test_cpa_manager_field_aliases(record: dict[str, Any], field_value: tuple[str, Any]) -> None:
    name, value = field_value
    assert getattr(normalize(record, source="import"), name) == value


def test_total_is_derived_from_parts() -> None:
    ev = normalize(
        {
            "timestamp": 1767323045,
            "provider": "claude",
            "tokens": {"input_tokens": 3, "output_tokens": 4, "cache_tokens": 5},
        },
        source="i",
    )
    assert ev.total_tokens == 12


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([], "not a JSON object"),
        ({"model": "x"}, "timestamp: missing"),
        ({"timestamp": "yesterday"}, "timestamp: cannot parse"),
        ({"timestamp": "2026-02-30T00:00:00Z"}, "timestamp: invalid date"),
        ({"timestamp": 1767323045, "tokens": {"input_tokens": "many"}}, "tokens.input_tokens: not a number"),
        ({"timestamp": 1767323045, "tokens": {"output_tokens": -5}}, "tokens.output_tokens: negative"),
        ({"timestamp": 1767323045, "latency_ms": [1]}, "latency_ms: expected a number"),
        ({"timestamp": 10**30}, "timestamp: out of range"),
        ({"timestamp": 1767323045, "failed": "perhaps"}, "failed: expected a boolean"),
    ],
)
def test_bad_records_get_a_precise_error(record: Any, message: str) -> None:
    with pytest.raises(NormalizeError, match=message):
        normalize(record, source="import")


def test_live_record_without_time_uses_receipt_time_and_is_flagged() -> None:
    ev = normalize({"model": "m"}, source="cpa:x", received_ms=1767323045123)
    assert ev.ts_ms == 1767323045123 and ev.time_from_receipt


def test_cpa_manager_export_keeps_its_hash() -> None:
    given_hash = "ab" * 32
    line = {
        "event_hash": given_hash,
        "timestamp_ms": 1767323045000,
        "timestamp": "2026-01-02T03:04:05Z",
        "model": "gpt-5",
        "input_tokens": 5,
        "output_tokens": 6,
        "failed": False,
        "raw_json": orjson.dumps({"api_key": "sk-secretsecret", "model": "gpt-5"}).decode(),
    }
    ev = normalize(line, source="import")
    assert ev.event_hash == given_hash
    assert ev.raw_json is not None and "sk-secretsecret" not in ev.raw_json


def test_export_record_round_trips() -> None:
    ev = normalize(copy.deepcopy(CPA_RECORD), source="cpa:main")
    ev.cost_micros = 12345
    back = normalize(orjson.loads(orjson.dumps(to_export_record(ev))), source="ignored")
    ev.account_id = back.account_id = 0
    assert back == ev


def test_export_record_rejects_a_bad_hash() -> None:
    with pytest.raises(NormalizeError, match="event_hash"):
        from_export_record({"relaymeter_export": 1, "event_hash": "xyz", "ts_ms": 1})


def test_rfc3339_formatting() -> None:
    assert format_rfc3339_nano(1795166043512345678) == "2026-11-20T09:14:03.512345678Z"
    assert format_rfc3339_nano(1795166043000000000) == "2026-11-20T09:14:03Z"
    assert format_rfc3339_nano(1795166043100000000) == "2026-11-20T09:14:03.1Z"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
known_keys = st.sampled_from(
    [
        "timestamp", "time", "created_at", "createdAt", "tokens", "usage", "input_tokens", "output_tokens",
        "total_tokens", "cached_tokens", "cache_tokens", "latency_ms", "failed", "success", "status", "error",
        "source", "api_key", "auth_index", "request_id", "provider", "model", "endpoint", "method", "path",
        "token_breakdown", "fail", "event_hash", "relaymeter_export", "stream", "raw_json", "ttft_ms",
    ]
)  # fmt: skip
records = st.dictionaries(known_keys | st.text(max_size=10), json_values, max_size=10)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(records, st.one_of(st.none(), st.integers(min_value=0, max_value=2**45)))
def test_normalize_never_raises_anything_but_normalize_error(
    record: dict[str, Any], received: int | None
) -> None:
    try:
        ev = normalize(record, source="fuzz", received_ms=received)
    except NormalizeError as exc:
        assert str(exc)  # a precise, non-empty reason
        return
    assert isinstance(ev, UsageEvent)
    assert len(ev.event_hash) == 64
    assert min(ev.input_tokens, ev.output_tokens, ev.cache_read_tokens, ev.cache_creation_tokens) >= 0
    assert (
        ev.total_tokens
        == ev.input_tokens + ev.output_tokens + ev.cache_read_tokens + ev.cache_creation_tokens
    )
    assert ev.reasoning_tokens <= ev.output_tokens
    if ev.raw_json is not None:
        orjson.loads(ev.raw_json)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
    st.sampled_from(["claude", "codex", "gemini", "openai", "", "kimi", "vertex"]),
)
def test_token_buckets_never_overlap(inp: int, out: int, reasoning: int, cached: int, provider: str) -> None:
    ev = normalize(
        {
            "timestamp": 1767323045,
            "provider": provider,
            "tokens": {
                "input_tokens": inp,
                "output_tokens": out,
                "reasoning_tokens": reasoning,
                "cached_tokens": cached,
            },
        },
        source="p",
    )
    assert (
        ev.total_tokens
        == ev.input_tokens + ev.cache_read_tokens + ev.cache_creation_tokens + ev.output_tokens
    )
    assert ev.input_tokens + ev.cache_read_tokens >= min(inp, cached)
