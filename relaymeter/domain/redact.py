"""Redaction of secrets in payloads before they are stored, and masking for display."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

import orjson

REDACTED = "[redacted]"
_SECRET_KEYS = {
    "api_key",
    "apikey",
    "authorization",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "cookie",
    "set_cookie",
    "x_api_key",
    "proxy_authorization",
}
_SECRET_TEXT = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\bsk-ant-[A-Za-z0-9_-]{6,}"
    r"|\bsk-[A-Za-z0-9_-]{6,}"
    r"|\bAIza[0-9A-Za-z_-]{10,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{10,}"
)


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the whitespace-trimmed string; "" for an empty one."""
    value = value.strip()
    if not value:
        return ""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    norm = key.lower().replace("-", "_")
    return norm in _SECRET_KEYS or "secret" in norm or "password" in norm


def _may_hold_secret(text: str) -> bool:
    """Cheap pre-check so most strings skip the regex."""
    return len(text) >= 10 and ("sk-" in text or "earer" in text or "AIza" in text or "_" in text)


def redact_text(text: str) -> str:
    """Mask bearer tokens and provider key shapes inside free text (e.g. error bodies)."""
    if not _may_hold_secret(text):
        return text

    def _sub(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(1) + REDACTED
        return REDACTED

    return _SECRET_TEXT.sub(_sub, text)


def redact(value: Any) -> Any:
    """A copy of a JSON value with secret-named keys replaced and secrets in strings masked."""
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            skey = key if type(key) is str else str(key)
            if is_secret_key(skey) and item not in (None, "", [], {}):
                out[skey] = REDACTED
                continue
            t = type(item)
            if t is str:  # inline the cheap pre-check: most strings hold no secret
                out[skey] = redact_text(item) if _may_hold_secret(item) else item
            elif t is int or t is float or t is bool or item is None:
                out[skey] = item
            else:
                out[skey] = redact(item)
        return out
    if kind is list:
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict | list):
        return redact(dict(value) if isinstance(value, dict) else list(value))
    return value


def redacted_json(value: Any) -> str:
    """Compact JSON of a value with secrets redacted (integers beyond 64 bits become strings)."""
    clean = redact(value)
    try:
        return orjson.dumps(clean, default=str).decode()
    except TypeError:
        return orjson.dumps(_big_ints_as_str(clean), default=str).decode()


def _big_ints_as_str(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {k: _big_ints_as_str(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_ints_as_str(v) for v in value]
    return value


def looks_secret(value: str) -> bool:
    v = value.strip()
    if v.startswith(("sk-", "AIza")):
        return True
    return len(v) >= 32 and " " not in v and "/" not in v


def mask_source(value: str) -> str:
    """Display form of an upstream identity: emails partly shown, secrets reduced to ends."""
    v = value.strip()
    if not v:
        return ""
    if "@" in v and not looks_secret(v):
        local, _, domain = v.partition("@")
        return f"{local[:3]}***@{domain}"
    if looks_secret(v):
        if len(v) <= 8:
            return "m:****"
        return f"m:{v[:4]}...{v[-4:]}"
    return v


def mask_key(value: str) -> str:
    """Display prefix for a client API key: enough to recognise it, never enough to use it."""
    v = value.strip()
    if len(v) <= 8:
        return "****"
    return f"{v[:6]}...{v[-4:]}"
