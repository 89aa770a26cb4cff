"""Redaction of secrets in payloads before they are stored, and masking for display."""

from __future__ import annotations

import functools
import hashlib
import itertools
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


# is_secret_key() answers for the keys seen so far, as plain set lookups (the redaction of
# every stored payload asks for each of its keys); bounded, after that it asks is_secret_key.
_KNOWN_SAFE_KEYS: set[str] = set()
_KNOWN_SECRET_KEYS: set[str] = set()
_KNOWN_KEYS_MAX = 8192


def _secret_key(key: str) -> bool:
    secret = is_secret_key(key)
    if len(_KNOWN_SAFE_KEYS) + len(_KNOWN_SECRET_KEYS) < _KNOWN_KEYS_MAX:
        (_KNOWN_SECRET_KEYS if secret else _KNOWN_SAFE_KEYS).add(key)
    return secret


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
    """A JSON value with secret-named keys replaced and secrets in strings masked.

    Parts that need no change are the input's own objects (a dict or list is copied only when
    something in it changes), so treat the result as read-only, e.g. serialize it.
    """
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is dict:
        return _redact_dict(value)
    if kind is list:
        return _redact_list(value)
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict | list):
        return redact(dict(value) if isinstance(value, dict) else list(value))
    return value


def _redact_dict(value: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] | None = None  # the copy, made at the first item that changes
    seen = 0
    for key, item in value.items():
        if type(key) is str and key in _KNOWN_SAFE_KEYS:
            skey = key
        else:
            skey = key if type(key) is str else str(key)
            if (skey in _KNOWN_SECRET_KEYS or _secret_key(skey)) and item not in (None, "", [], {}):
                if out is None:
                    out = _head(value, seen)
                out[skey] = REDACTED
                continue
        new = _redacted_item(item)
        if out is not None:
            out[skey] = new
        elif new is not item or skey is not key:
            out = _head(value, seen)
            out[skey] = new
        else:
            seen += 1
    return value if out is None else out


def _redacted_item(item: Any) -> Any:
    """One value of a dict or list, redacted (the same object when nothing changes)."""
    t = type(item)
    if t is str:  # the cheap pre-check first: most strings hold no secret
        return redact_text(item) if _may_hold_secret(item) else item
    if t is int or t is float or t is bool or item is None:
        return item
    return redact(item)


def _head(value: dict[Any, Any], count: int) -> dict[str, Any]:
    """A new dict with the first ``count`` items of ``value`` (all unchanged, str keys)."""
    return dict(itertools.islice(value.items(), count)) if count else {}


def _redact_list(value: list[Any]) -> list[Any]:
    out: list[Any] | None = None
    for index, item in enumerate(value):
        new = _redacted_item(item)
        if out is not None:
            out.append(new)
        elif new is not item:
            out = value[:index]
            out.append(new)
    return value if out is None else out


def redacted_json(value: Any, overrides: dict[str, Any] | None = None) -> str:
    """Compact JSON of a value with secrets redacted (integers beyond 64 bits become strings).

    ``overrides`` replace (or add) top-level keys of a dict first, e.g. a masked field; what
    they hold is redacted like the rest.
    """
    if overrides and isinstance(value, dict):
        value = {**value, **overrides}
    if type(value) is dict:
        text = _plain_dict_json(value)
        if text is not None:
            return text
    return compact_json(redact(value))


# Each secret key name, lower-cased and quoted as a JSON key, ends with one of these (and
# "-" or "_" never occur in them, so a key's either spelling is found).
_KEY_ENDS = ('key":', 'token":', 'cookie":', 'authorization":')
if not all(f'"{key}":'.endswith(_KEY_ENDS) for key in _SECRET_KEYS):
    raise RuntimeError("a secret key name ends in none of _KEY_ENDS: extend them")
_KEY_WORDS = (*_KEY_ENDS, "secret", "password")
_NOTHING: tuple[Any, ...] = (None, "", [], {})


@functools.lru_cache(maxsize=256)
def _layout(keys: tuple[Any, ...]) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """For a dict's top-level keys: its secret keys, and how often each of _KEY_WORDS occurs
    in the lower-cased JSON text of those keys. None when a key is not a str."""
    if not all(type(key) is str for key in keys):
        return None
    secret = tuple(key for key in keys if is_secret_key(key))
    names = "".join(f'"{key}":' for key in keys).lower()
    return secret, tuple(names.count(word) for word in _KEY_WORDS)


def _plain_dict_json(value: dict[Any, Any]) -> str | None:
    """redacted_json() of a dict whose only secrets are its top-level secret keys, or None.

    The dict with those keys redacted is serialized and the text checked: when it is plain
    ASCII without escapes, holds no secret-looking text and no key names but the top-level
    ones, redact() would change nothing else in it, at any depth. Otherwise None: use redact().
    """
    layout = _layout(tuple(value))
    if layout is None:
        return None
    secret, key_words = layout
    out = value
    if secret:
        out = dict(value)
        for key in secret:
            if out[key] not in _NOTHING:
                out[key] = REDACTED
    try:
        text = orjson.dumps(out, default=str).decode()
    except TypeError:
        return None
    if not text.isascii() or "\\" in text:
        return None  # an escape or a non-ASCII letter could hide a match from the checks below
    low = text.lower()
    if (
        "bearer" in low
        or "sk-" in low
        or "aiza" in low
        or (
            "gh" in low
            and ("ghp_" in low or "gho_" in low or "ghu_" in low or "ghs_" in low or "ghr_" in low)
        )
    ):
        return None  # what _SECRET_TEXT could match (case-insensitively) somewhere
    for word, expected in zip(_KEY_WORDS, key_words, strict=True):
        if (low.count(word) != expected) if expected else (word in low):
            return None  # maybe a secret key below the top level
    return text


def compact_json(value: Any) -> str:
    """Compact JSON of a value (integers beyond 64 bits become strings)."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return orjson.dumps(_big_ints_as_str(value), default=str).decode()


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
