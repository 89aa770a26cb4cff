"""UsageEvent, the one normalized usage record, and normalize() for every accepted input shape.

Token buckets are stored non-overlapping: ``input_tokens`` is uncached input,
``cache_read_tokens`` and ``cache_creation_tokens`` are separate, ``output_tokens``
includes reasoning (``reasoning_tokens`` is the part of output spent reasoning), and
``total_tokens`` = input + cache_read + cache_creation + output. ``event_hash`` is computed
from the record as it arrived (CPA semantics) so it matches CPA-Manager's hash.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any

import orjson

from relaymeter.domain.redact import (
    compact_json,
    mask_key,
    mask_source,
    redact_text,
    redacted_json,
    sha256_hex,
)

MAX_INT = 2**62
MIN_TS_NS = 0
MAX_TS_NS = 253402300799 * 10**9  # 9999-12-31T23:59:59Z
EXPORT_MARKER = "relaymeter_export"


class NormalizeError(ValueError):
    """A record that cannot become a UsageEvent; the message says which field and why."""


@dataclass(slots=True)
class UsageEvent:
    event_hash: str
    ts_ms: int
    source: str = ""
    request_id: str = ""
    account_id: int = 0
    account_label: str = ""
    auth_index: str = ""
    source_hash: str = ""
    api_key_id: int = 0
    api_key_hash: str = ""
    api_key_prefix: str = ""
    provider: str = ""
    endpoint: str = ""
    method: str = ""
    path: str = ""
    model: str = ""
    actual_model: str = ""
    stream: bool | None = None
    status_code: int | None = None
    failed: bool = False
    error_kind: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    total_tokens: int = 0
    latency_ms: int | None = None
    ttft_ms: int | None = None
    cost_micros: int = 0
    price_missing: bool = False
    service_tier: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    raw_json: str | None = None
    time_from_receipt: bool = False

    @property
    def priced_model(self) -> str:
        """The model that actually served the request, which is the one priced."""
        return self.actual_model or self.model

    @property
    def account_external_id(self) -> str:
        """Identity of an observed (non-gateway) account within its source."""
        if self.auth_index:
            return self.auth_index
        if self.source_hash:
            return "src:" + self.source_hash[:24]
        return ""

    def recompute_total(self) -> None:
        self.total_tokens = (
            self.input_tokens + self.cache_read_tokens + self.cache_creation_tokens + self.output_tokens
        )


EVENT_FIELDS = tuple(f.name for f in fields(UsageEvent))

# --- provider token semantics -------------------------------------------------------

_ANTHROPIC_LIKE = {"claude", "anthropic"}
_GEMINI_LIKE = {"gemini", "gemini-cli", "vertex", "aistudio", "antigravity", "google"}
_OPENAI_LIKE = {"codex", "openai", "openai-compatible", "xai", "kimi", "qwen", "iflow", "azure", "deepseek"}


def input_includes_cache(provider: str, model: str = "") -> bool:
    """Whether the provider's prompt/input count includes cached tokens (OpenAI, Gemini: yes)."""
    p = provider.lower()
    if p in _ANTHROPIC_LIKE:
        return False
    if p in _OPENAI_LIKE or p in _GEMINI_LIKE:
        return True
    return not model.lower().startswith("claude")


def output_includes_reasoning(provider: str, model: str = "") -> bool:
    """Whether the provider's output count includes reasoning tokens (OpenAI: yes, Gemini: no)."""
    p = provider.lower()
    if p in _GEMINI_LIKE:
        return False
    if p in _ANTHROPIC_LIKE or p in _OPENAI_LIKE:
        return True
    return not model.lower().startswith("gemini")


# --- small field readers ----------------------------------------------------------------


def _first(record: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any] | None:
    get = record.get
    for name in names:
        value = get(name)
        if value is not None and value != "":
            return name, value
    return None


def _text(record: dict[str, Any], names: tuple[str, ...], limit: int = 200, missing: str = "") -> str:
    """_as_str() of the first of ``names`` that holds a value, else ``missing``."""
    value = record.get(names[0])
    if type(value) is str and value:  # the usual case, in short
        return value.strip()[:limit]
    found = _first(record, names)
    return _as_str(found[1], limit) if found else missing


def _number(record: dict[str, Any], names: tuple[str, ...]) -> int | None:
    """_as_int() of the first of ``names`` that holds a value, else None."""
    value = record.get(names[0])
    if type(value) is int and 0 <= value < MAX_INT:  # the usual case, in short
        return value
    found = _first(record, names)
    return _as_int(found[1], found[0]) if found else None


def _as_int(value: Any, field: str) -> int:
    if type(value) is int and 0 <= value < MAX_INT:
        return value
    if isinstance(value, bool):
        raise NormalizeError(f"{field}: expected a number, got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise NormalizeError(f"{field}: not a finite number")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(Decimal(text)) if text else 0
        except (InvalidOperation, ValueError, OverflowError):
            raise NormalizeError(f"{field}: not a number: {value[:40]!r}") from None
    else:
        raise NormalizeError(f"{field}: expected a number, got {type(value).__name__}")
    if number < 0:
        raise NormalizeError(f"{field}: negative value {number}")
    if number >= MAX_INT:
        raise NormalizeError(f"{field}: value too large")
    return number


def _as_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "1", "yes", "y", "t"):
            return True
        if v in ("false", "0", "no", "n", "f", ""):
            return False
    raise NormalizeError(f"{field}: expected a boolean, got {str(value)[:40]!r}")


def _as_str(value: Any, limit: int = 200) -> str:
    if type(value) is str:
        return value.strip()[:limit]
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value).strip()[:limit]
    return ""


# --- timestamps ------------------------------------------------------------------------

_TS_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9})\d*)?\s*(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_timestamp_ns(value: Any, field: str = "timestamp") -> int:
    """Epoch nanoseconds UTC from an epoch number (seconds below 1e10, else ms) or a date string."""
    if type(value) is str and (fast := _fast_rfc3339_ns(value)) is not None:
        if not MIN_TS_NS <= fast <= MAX_TS_NS:
            raise NormalizeError(f"{field}: out of range")
        return fast  # RFC 3339 as CPA writes it: never numeric, so no other branch could apply
    if isinstance(value, bool):
        raise NormalizeError(f"{field}: expected a time, got a boolean")
    if isinstance(value, int | float) or (isinstance(value, str) and _looks_numeric(value)):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise NormalizeError(f"{field}: cannot parse {str(value)[:40]!r}") from None
        if not number.is_finite() or number < 0:
            raise NormalizeError(f"{field}: out of range")
        ns = int(number * 10**9) if number < 10_000_000_000 else int(number * 10**6)
    elif isinstance(value, str) and (fast := _fast_rfc3339_ns(value)) is not None:
        ns = fast
    elif isinstance(value, str):
        match = _TS_RE.match(value.strip())
        if not match:
            raise NormalizeError(f"{field}: cannot parse {value[:40]!r} (use RFC 3339 or epoch)")
        y, mo, d, h, mi, s, frac, off = match.groups()
        try:
            tz = _offset_zone(off or "Z")
            dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=tz)
        except ValueError as exc:
            raise NormalizeError(f"{field}: invalid date {value[:40]!r}: {exc}") from None
        ns = int((dt - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**9 + int(
            (frac or "0").ljust(9, "0")
        )
    else:
        raise NormalizeError(f"{field}: expected a time, got {type(value).__name__}")
    if not MIN_TS_NS <= ns <= MAX_TS_NS:
        raise NormalizeError(f"{field}: out of range")
    return ns


_FAST_TS = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")


def _fast_rfc3339_ns(text: str) -> int | None:
    """RFC 3339 as CPA writes it (``...T..:..:..[.fraction](Z|+hh:mm)``), or None to fall back."""
    match = _FAST_TS.fullmatch(text)
    if match is None:
        return None
    base, frac, off = match.groups()
    try:
        seconds = _epoch_seconds(base, off)
    except ValueError:
        return None
    return seconds * 10**9 + (int(frac.ljust(9, "0")) if frac else 0)


@functools.lru_cache(maxsize=8192)
def _epoch_seconds(base: str, off: str) -> int:
    return int(datetime.fromisoformat(base + ("+00:00" if off == "Z" else off)).timestamp())


@functools.lru_cache(maxsize=256)
def _offset_zone(off: str) -> timezone:
    if off in ("Z", "z"):
        return UTC
    sign = 1 if off[0] == "+" else -1
    digits = off[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _looks_numeric(text: str) -> bool:
    t = text.strip()
    return bool(t) and bool(re.fullmatch(r"\d+(\.\d+)?", t))


def format_rfc3339_nano(ns: int) -> str:
    """UTC time as Go's time.RFC3339Nano prints it (trailing zeros of the fraction trimmed)."""
    secs, frac = divmod(ns, 10**9)
    text = _format_seconds(secs)
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


@functools.lru_cache(maxsize=4096)
def _format_seconds(secs: int) -> str:
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- event hash ------------------------------------------------------------------------


def compute_event_hash(
    *,
    request_id: str,
    ts_ns: int,
    endpoint: str,
    model: str,
    auth_index: str,
    source_hash: str,
    input_tokens: int,
    output_tokens: int,
    reasoning_tokens: int,
    cached_tokens: int,
    failed: bool,
    latency_ms: int | None,
) -> str:
    """The CPA-Manager compatible event hash (see protocols/cliproxyapi.md §3)."""
    parts = [
        request_id,
        format_rfc3339_nano(ts_ns),
        endpoint,
        model,
        auth_index,
        source_hash,
        str(input_tokens),
        str(output_tokens),
        str(reasoning_tokens),
        str(cached_tokens),
        "true" if failed else "false",
    ]
    if latency_ms is not None:
        parts.append(str(latency_ms))
    return sha256_hex("|".join(parts))


# --- normalize -----------------------------------------------------------------------------

_TS_KEYS = ("timestamp", "time", "created_at", "createdAt", "created", "request_time", "requestTime")
_METHOD_KEYS = ("method", "http_method", "httpMethod")
_PATH_KEYS = ("path", "url_path", "urlPath", "route")
_ENDPOINT_KEYS = ("endpoint", "api", "request", "operation")
_LATENCY_KEYS = ("latency_ms", "latencyMs", "duration_ms", "durationMs", "elapsed_ms", "elapsedMs")
_SOURCE_KEYS = ("source", "api_key", "apiKey", "key", "account", "email")
_API_KEY_KEYS = ("api_key", "apiKey", "key")
_AUTH_INDEX_KEYS = ("auth_index", "authIndex", "AuthIndex")
_REQUEST_ID_KEYS = ("request_id", "requestId", "id")
_PROVIDER_KEYS = ("provider", "type", "auth_type", "authType")
_MODEL_KEYS = ("model", "model_name", "modelName")
_TTFT_KEYS = ("ttft_ms", "ttftMs", "first_token_ms")
_STATUS_KEYS = ("status", "status_code", "statusCode", "http_status", "httpStatus")
_TOKEN_ALIASES: dict[str, tuple[str, ...]] = {
    "input": ("input_tokens", "inputTokens", "prompt_tokens", "promptTokens"),
    "output": ("output_tokens", "outputTokens", "completion_tokens", "completionTokens"),
    "reasoning": ("reasoning_tokens", "reasoningTokens"),
    "cached": ("cached_tokens", "cachedTokens"),
    "cache": ("cache_tokens", "cacheTokens"),
    "total": ("total_tokens", "totalTokens", "total"),
    "cache_read": ("cache_read_tokens", "cacheReadTokens", "cache_read_input_tokens"),
    "cache_creation": ("cache_creation_tokens", "cacheCreationTokens", "cache_creation_input_tokens"),
    "cache_creation_5m": ("cache_creation_5m_tokens",),
    "cache_creation_1h": ("cache_creation_1h_tokens",),
}


_ALIAS_RANK = {
    name: (bucket, rank) for bucket, names in _TOKEN_ALIASES.items() for rank, name in enumerate(names)
}


_TOKEN_BUCKETS = tuple(_TOKEN_ALIASES.items())


def _read_tokens(record: dict[str, Any]) -> dict[str, int]:
    """Token counts by bucket: the nested ``tokens`` / ``usage`` object first, then top level
    (within a level, the first alias in _TOKEN_ALIASES order that holds a value)."""
    nested: dict[str, Any] = {}
    for key in ("tokens", "usage"):
        value = record.get(key)
        if isinstance(value, dict):
            nested = value
            break
    nget = nested.get
    get = record.get
    out: dict[str, int] = {}
    for bucket, names in _TOKEN_BUCKETS:
        for name in names:
            value = nget(name)
            if value is not None and value != "":
                break
        else:
            for name in names:
                value = get(name)
                if value is not None and value != "":
                    break
            else:
                out[bucket] = 0
                continue
        if type(value) is int and 0 <= value < MAX_INT:
            out[bucket] = value
            continue
        try:
            out[bucket] = _as_int(value, f"tokens.{name}")
        except NormalizeError:
            # Raise the error the field-by-field reading order gives (with several bad counts,
            # the one met first in the record).
            _read_tokens_in_record_order(record)
            raise
    return out


def _read_tokens_in_record_order(record: dict[str, Any]) -> dict[str, int]:
    """_read_tokens converting the counts in the order they appear in the record."""
    nested: dict[str, Any] = {}
    for key in ("tokens", "usage"):
        if isinstance(record.get(key), dict):
            nested = record[key]
            break
    best: dict[str, tuple[int, int, str, Any]] = {}  # bucket -> (level, rank, name, value)
    for level, source in ((0, nested), (1, record)):
        for name, value in source.items():
            hit = _ALIAS_RANK.get(name)
            if hit is None or value is None or value == "":
                continue
            bucket, rank = hit
            current = best.get(bucket)
            if current is None or (level, rank) < current[:2]:
                best[bucket] = (level, rank, name, value)
    out = dict.fromkeys(_TOKEN_ALIASES, 0)
    for bucket, (_level, _rank, name, value) in best.items():
        out[bucket] = _as_int(value, f"tokens.{name}")
    return out


def _read_breakdown(value: Any) -> dict[str, int] | None:
    """Non-overlapping buckets from CPA's token_breakdown (schema 2), or None when absent."""
    if not isinstance(value, dict) or not value:
        return None
    inp = value.get("input")
    outp = value.get("output")
    if not isinstance(inp, dict) or not isinstance(outp, dict):
        return None
    get = lambda d, k, f: _as_int(d.get(k) or 0, f)  # noqa: E731
    uncached = get(inp, "uncached_tokens", "token_breakdown.input.uncached_tokens")
    cache_read = get(inp, "cache_read_tokens", "token_breakdown.input.cache_read_tokens")
    cache_write = get(inp, "cache_write_tokens", "token_breakdown.input.cache_write_tokens")
    out_total = get(outp, "total_tokens", "token_breakdown.output.total_tokens")
    reasoning = get(outp, "reasoning_tokens", "token_breakdown.output.reasoning_tokens")
    non_reasoning = get(outp, "non_reasoning_tokens", "token_breakdown.output.non_reasoning_tokens")
    return {
        "input": uncached,
        "cache_read": cache_read,
        "cache_creation": cache_write,
        "output": max(out_total, non_reasoning + reasoning),
        "reasoning": reasoning,
    }


def canonical_tokens(provider: str, model: str, raw: dict[str, int]) -> dict[str, int]:
    """Provider token counts -> non-overlapping buckets (see the module docstring)."""
    cache_read = raw.get("cache_read") or max(raw.get("cached", 0), raw.get("cache", 0))
    cache_creation = raw.get("cache_creation", 0) or (
        raw.get("cache_creation_5m", 0) + raw.get("cache_creation_1h", 0)
    )
    inp = raw.get("input", 0)
    out = raw.get("output", 0)
    reasoning = raw.get("reasoning", 0)
    includes_cache, includes_reasoning = _token_semantics(provider, model)
    if includes_cache:
        inp = max(0, inp - cache_read)
    if not includes_reasoning:
        out += reasoning
    reasoning = min(reasoning, out)
    return {
        "input": inp,
        "cache_read": cache_read,
        "cache_creation": cache_creation,
        "cache_creation_1h": min(raw.get("cache_creation_1h", 0), cache_creation),
        "output": out,
        "reasoning": reasoning,
    }


def _failed(record: dict[str, Any], status: int | None) -> bool:
    found = _first(record, ("failed", "is_failed", "isFailed"))
    if found:
        return _as_bool(found[1], found[0])
    found = _first(record, ("success", "ok"))
    if found:
        return not _as_bool(found[1], found[0])
    if status is not None:
        return status >= 400
    return _first(record, ("error", "error_message", "errorMessage")) is not None


def _status(record: dict[str, Any]) -> int | None:
    found = _first(record, _STATUS_KEYS)
    if found and not isinstance(found[1], dict):
        try:
            return _as_int(found[1], found[0])
        except NormalizeError:
            return None
    fail = record.get("fail")
    if isinstance(fail, dict) and fail.get("status_code") not in (None, ""):
        try:
            return _as_int(fail["status_code"], "fail.status_code")
        except NormalizeError:
            return None
    return None


def _error_message(record: dict[str, Any], failed: bool) -> str | None:
    if not failed:
        return None
    fail = record.get("fail")
    text: Any = None
    if isinstance(fail, dict):
        text = fail.get("body")
    if not text:
        found = _first(record, ("error_message", "errorMessage", "error"))
        text = found[1] if found else None
    if text in (None, ""):
        return None
    if not isinstance(text, str):
        text = compact_json(text)  # big integers as strings, never a TypeError
    return redact_text(text)[:2000]


def normalize(
    record: Any,
    *,
    source: str,
    received_ms: int | None = None,
    keep_raw: bool = True,
) -> UsageEvent:
    """Turn one usage record (CPA queue, CPA-Manager or relaymeter export) into a UsageEvent.

    ``received_ms`` is used as the time of live queue records that carry none (the event is
    flagged); without it a record with no timestamp is an error.
    """
    if isinstance(record, dict) and record.get(EXPORT_MARKER):
        return from_export_record(record)
    return UsageEvent(*normalize_row(record, source=source, received_ms=received_ms, keep_raw=keep_raw))


event_row = attrgetter(*EVENT_FIELDS)
"""A UsageEvent's values as a tuple in EVENT_FIELDS order (UsageEvent(*row) rebuilds it)."""

# Facts about values that repeat across records (an account's source, a client key), so
# each is hashed and masked once; bounded, cleared when full.
_FACTS_MAX = 4096
_source_facts: dict[str, tuple[str, str]] = {}  # upstream source -> (sha256, display mask)
_key_facts: dict[str, tuple[str, str]] = {}  # client API key -> (sha256, display prefix)
_semantics: dict[tuple[str, str], tuple[bool, bool]] = {}  # (provider, model) -> flags
_shared: dict[str, str] = {}  # a value -> the one object used for it


def _source_hash_and_mask(value: str) -> tuple[str, str]:
    facts = _source_facts.get(value)
    if facts is None:
        facts = (sha256_hex(value), mask_source(value))
        if len(_source_facts) >= _FACTS_MAX:
            _source_facts.clear()
        _source_facts[value] = facts
    return facts


def _key_hash_and_prefix(value: str) -> tuple[str, str]:
    facts = _key_facts.get(value)
    if facts is None:
        facts = (sha256_hex(value), mask_key(value) if value else "")
        if len(_key_facts) >= _FACTS_MAX:
            _key_facts.clear()
        _key_facts[value] = facts
    return facts


def _token_semantics(provider: str, model: str) -> tuple[bool, bool]:
    """(input includes cache, output includes reasoning) for a provider and model."""
    key = (provider, model)
    flags = _semantics.get(key)
    if flags is None:
        flags = (input_includes_cache(provider, model), output_includes_reasoning(provider, model))
        if len(_semantics) >= _FACTS_MAX:
            _semantics.clear()
        _semantics[key] = flags
    return flags


def normalize_row(
    record: Any,
    *,
    source: str,
    received_ms: int | None = None,
    keep_raw: bool = True,
) -> tuple[Any, ...]:
    """normalize() as the event's values in EVENT_FIELDS order (what a worker process ships)."""
    if not isinstance(record, dict):
        raise NormalizeError(f"record is not a JSON object (got {type(record).__name__})")
    get = record.get
    if get(EXPORT_MARKER):
        return event_row(from_export_record(record))

    status = _status(record)
    value = get("timestamp")  # CPA's name: the first alias
    found_ts = ("timestamp", value) if value is not None and value != "" else _first(record, _TS_KEYS)
    time_from_receipt = False
    if found_ts is None and get("timestamp_ms") not in (None, ""):
        found_ts = ("timestamp_ms", record["timestamp_ms"])
    if found_ts is not None:
        ts_ns = parse_timestamp_ns(found_ts[1], found_ts[0])
    elif received_ms is not None:
        ts_ns = received_ms * 1_000_000
        time_from_receipt = True
    else:
        raise NormalizeError("timestamp: missing (no timestamp, time or created_at field)")

    method = _text(record, _METHOD_KEYS, 16).upper()
    path = _text(record, _PATH_KEYS)
    endpoint = _text(record, _ENDPOINT_KEYS)
    if not endpoint and (method or path):
        endpoint = f"{method} {path}".strip()
    if endpoint:
        first, _, rest = endpoint.partition(" ")
        if rest.startswith("/") and first.isalpha() and first.isupper():
            method = method or first
            path = path or rest.strip()
    else:
        endpoint = "-"

    raw_tokens = _read_tokens(record)
    latency_ms = _number(record, _LATENCY_KEYS)
    ttft_ms = _number(record, _TTFT_KEYS)

    upstream_source = _text(record, _SOURCE_KEYS, 500)
    api_key = _text(record, _API_KEY_KEYS, 500)
    auth_index = _text(record, _AUTH_INDEX_KEYS, 64)
    request_id = _text(record, _REQUEST_ID_KEYS, 128)
    provider = _text(record, _PROVIDER_KEYS, 40).lower()
    model = _text(record, _MODEL_KEYS, 200, "-")
    alias = _as_str(get("alias"))
    value = get("failed")
    failed = value if type(value) is bool else _failed(record, status)

    upstream_hash, upstream_mask = _source_hash_and_mask(upstream_source)
    api_key_hash, api_key_prefix = _key_hash_and_prefix(api_key)
    source_hash = _as_str(get("source_hash"), 64) or upstream_hash
    api_key_hash = _as_str(get("api_key_hash"), 64) or api_key_hash
    input_raw = raw_tokens["input"]
    output_raw = raw_tokens["output"]
    reasoning_raw = raw_tokens["reasoning"]
    cached_for_hash = max(raw_tokens["cached"], raw_tokens["cache"])
    given_hash = get("event_hash")
    if isinstance(given_hash, str) and re.fullmatch(r"[0-9a-fA-F]{64}", given_hash.strip()):
        event_hash = given_hash.strip().lower()
    else:
        event_hash = compute_event_hash(
            request_id=request_id,
            ts_ns=ts_ns,
            endpoint=endpoint,
            model=model,
            auth_index=auth_index,
            source_hash=source_hash,
            input_tokens=input_raw,
            output_tokens=output_raw,
            reasoning_tokens=reasoning_raw,
            cached_tokens=cached_for_hash,
            failed=failed,
            latency_ms=latency_ms,
        )

    breakdown = _read_breakdown(get("token_breakdown"))
    cache_creation_1h_raw = raw_tokens["cache_creation_1h"]
    if breakdown is not None:
        inp = breakdown["input"]
        out = breakdown["output"]
        reasoning = breakdown["reasoning"]
        cache_read = breakdown["cache_read"]
        cache_creation = breakdown["cache_creation"]
    else:
        canon = canonical_tokens(provider, model, raw_tokens)
        inp, out, reasoning = canon["input"], canon["output"], canon["reasoning"]
        cache_read, cache_creation = canon["cache_read"], canon["cache_creation"]
    cache_creation_1h = min(cache_creation_1h_raw, cache_creation)

    label_source = _as_str(get("account_label") or get("label"), 200)
    stream = get("stream")
    if stream is not None:
        stream = _as_bool(stream, "stream")
    service_tier = _as_str(get("response_service_tier") or get("service_tier"), 40) or None
    client_ip = _as_str(get("client_ip"), 64) or None
    user_agent = _as_str(get("user_agent"), 500) or None
    error_message = _error_message(record, failed) if failed else None
    raw_json = _raw_json(record) if keep_raw else None
    # Values that repeat across records become one shared object each: an event then holds
    # no copies of them, and a batch of events pickles them once.
    if len(_shared) >= _FACTS_MAX:
        _shared.clear()
    share = _shared.setdefault
    return (
        event_hash,
        ts_ns // 1_000_000,
        source,
        request_id,
        0,  # account_id
        label_source or upstream_mask,
        share(auth_index, auth_index),
        source_hash,
        0,  # api_key_id
        api_key_hash,
        api_key_prefix,
        share(provider, provider),
        share(endpoint, endpoint),
        share(method, method),
        share(path, path),
        share(alias or model, alias or model),
        share(model, model) if model != "-" else "",  # actual_model
        stream,
        status,
        failed,
        "upstream_error" if failed else None,  # error_kind
        error_message,
        inp,
        out,
        reasoning,
        cache_read,
        cache_creation,
        cache_creation_1h,
        inp + cache_read + cache_creation + out,  # total_tokens
        latency_ms,
        ttft_ms,
        0,  # cost_micros
        False,  # price_missing
        service_tier,
        client_ip and share(client_ip, client_ip),
        user_agent and share(user_agent, user_agent),
        raw_json,
        time_from_receipt,
    )


_ROW_FIELDS = (
    "event_hash ts_ms source request_id account_id account_label auth_index source_hash api_key_id "
    "api_key_hash api_key_prefix provider endpoint method path model actual_model stream status_code "
    "failed error_kind error_message input_tokens output_tokens reasoning_tokens cache_read_tokens "
    "cache_creation_tokens cache_creation_1h_tokens total_tokens latency_ms ttft_ms cost_micros "
    "price_missing service_tier client_ip user_agent raw_json time_from_receipt"
).split()
if tuple(_ROW_FIELDS) != EVENT_FIELDS:  # normalize_row builds its tuple in this order
    raise RuntimeError("UsageEvent fields changed: update normalize_row")


def _raw_json(record: dict[str, Any]) -> str:
    """The record as stored: redacted compact JSON (its raw_json text when it carries one),
    with CPA's source (the raw upstream API key for API-key accounts) masked."""
    raw_obj: Any = record
    if isinstance(record.get("raw_json"), str):
        try:
            raw_obj = orjson.loads(record["raw_json"])
        except orjson.JSONDecodeError:
            raw_obj = record
    if isinstance(raw_obj, dict) and isinstance(raw_obj.get("source"), str):
        return redacted_json(raw_obj, {"source": _source_hash_and_mask(raw_obj["source"])[1]})
    return redacted_json(raw_obj)


# --- relaymeter's own export format ------------------------------------------------------


def to_export_record(event: UsageEvent) -> dict[str, Any]:
    """A JSON-ready dict that from_export_record() turns back into the same event."""
    record = asdict(event)
    record[EXPORT_MARKER] = 1
    record["timestamp"] = format_rfc3339_nano(event.ts_ms * 1_000_000)
    record.pop("account_id", None)
    record.pop("api_key_id", None)
    return record


def from_export_record(record: dict[str, Any]) -> UsageEvent:
    values: dict[str, Any] = {}
    for name in EVENT_FIELDS:
        if name in record and name not in ("account_id", "api_key_id"):
            values[name] = record[name]
    if not isinstance(values.get("event_hash"), str) or not re.fullmatch(
        r"[0-9a-f]{64}", values["event_hash"]
    ):
        raise NormalizeError("event_hash: missing or not 64 hex characters")
    values["ts_ms"] = _as_int(values.get("ts_ms"), "ts_ms")
    for name in (
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cache_read_tokens",
        "cache_creation_tokens",
        "cache_creation_1h_tokens",
        "total_tokens",
        "cost_micros",
    ):
        values[name] = _as_int(values.get(name) or 0, name)
    for name in ("latency_ms", "ttft_ms", "status_code"):
        if values.get(name) is not None:
            values[name] = _as_int(values[name], name)
    for name in ("failed", "price_missing", "time_from_receipt"):
        values[name] = _as_bool(values.get(name) or False, name)
    if values.get("stream") is not None:
        values["stream"] = _as_bool(values["stream"], "stream")
    for name, value in list(values.items()):
        if name not in (
            "ts_ms",
            "failed",
            "price_missing",
            "time_from_receipt",
            "stream",
            "latency_ms",
            "ttft_ms",
            "status_code",
        ) and not name.endswith(("_tokens", "_micros")):
            values[name] = None if value is None else _as_str(value, 100_000)
    for name in (
        "source",
        "request_id",
        "account_label",
        "auth_index",
        "source_hash",
        "api_key_hash",
        "api_key_prefix",
        "provider",
        "endpoint",
        "method",
        "path",
        "model",
        "actual_model",
    ):
        if values.get(name) is None:
            values[name] = ""
    return UsageEvent(**values)
