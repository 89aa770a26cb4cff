"""Admin operations on gateway accounts and API keys, shared by the JSON API and the CLI.

Validates input, encrypts credentials, derives each account's identity (for duplicate-free
imports), parses imports (CSV, JSON, CPA auth files), applies batch edits, probes accounts,
and creates API keys (the secret is returned once; only its SHA-256 is stored).
"""

from __future__ import annotations

import base64
import csv
import io
import secrets
import time
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator

from relaymeter.domain.redact import mask_key, sha256_hex
from relaymeter.gateway.scheduler import MODELS, Account
from relaymeter.gateway.upstream import (
    UpstreamError,
    base_url,
    is_codex,
    make_client,
    request_headers,
    upstream_url,
)
from relaymeter.security import SecretBox
from relaymeter.state import AppState
from relaymeter.store import accounts as account_store
from relaymeter.store import keys as key_store

PROVIDERS = ("anthropic", "openai", "gemini", "openai-compatible")
Provider = Literal["anthropic", "openai", "gemini", "openai-compatible"]
Kind = Literal["api_key", "oauth"]
KEY_PREFIX = "sk-rm-"
PROVIDER_ALIASES = {
    "claude": "anthropic",
    "anthropic": "anthropic",
    "codex": "openai",
    "openai": "openai",
    "chatgpt": "openai",
    "gemini": "gemini",
    "gemini-cli": "gemini",
    "google": "gemini",
    "openai-compatible": "openai-compatible",
    "openai_compatible": "openai-compatible",
    "compatible": "openai-compatible",
}


class AdminError(ValueError):
    """Bad admin input or a missing target; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _now() -> int:
    return time.time_ns() // 1_000_000


# Bounds that keep every stored value inside a 64-bit integer column, with a clear 422 above.
MAX_USD = 1_000_000_000.0
MAX_COUNT = 2**53


def usd_to_micros(value: float | None) -> int | None:
    return None if value is None else round(value * 1_000_000)


def micros_to_usd(value: int | None) -> float | None:
    return None if value is None else value / 1_000_000


def parse_time_ms(value: Any, field: str) -> int | None:
    """Epoch seconds / ms (number or digits) or an ISO 8601 / RFC 3339 string -> epoch ms."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a time")
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        number = float(value)
        return int(number * 1000) if number < 10_000_000_000 else int(number)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field}: cannot parse {value!r} (use ISO 8601 or epoch seconds)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    raise ValueError(f"{field}: expected a time")


def _check_url(value: str | None, field: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{field}: must be a {' or '.join(schemes)} URL such as https://host/path")
    return value.rstrip("/")


def mask_url(value: str | None) -> str | None:
    """A URL with its password hidden (proxy URLs may carry credentials)."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.password:
        netloc = f"{parts.username}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return value


# --- accounts ----------------------------------------------------------------------------------


class _CommonFields(BaseModel):
    """Fields and checks shared by account and key input: expiry and a model allow-list."""

    model_config = {"extra": "forbid"}

    expires_at: int | float | str | None = Field(None, description="ISO 8601 or epoch; null = never")
    models: list[str] | None = Field(None, description="model allow-list; glob patterns allowed; null = any")

    @field_validator("expires_at")
    @classmethod
    def _expiry(cls, v: Any) -> Any:
        parse_time_ms(v, "expires_at")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        cleaned = [m.strip() for m in v if m.strip()]
        return cleaned or None


class _AccountFields(_CommonFields):
    name: str | None = Field(None, min_length=1, max_length=200)
    provider: Provider | None = None
    kind: Kind | None = None
    api_key: SecretStr | None = Field(None, description="API key (kind api_key)")
    access_token: SecretStr | None = Field(None, description="OAuth access token (kind oauth)")
    refresh_token: SecretStr | None = Field(None, description="OAuth refresh token (kind oauth)")
    expires_at: int | float | str | None = Field(
        None, description="OAuth access token expiry: ISO 8601 or epoch"
    )
    account_id: str | None = Field(None, max_length=200, description="ChatGPT account id (Codex OAuth)")
    base_url: str | None = Field(None, description="API base URL (required for openai-compatible)")
    priority: int | None = Field(None, ge=-1000, le=1000, description="higher is preferred")
    weight: int | None = Field(None, ge=1, le=1000)
    max_concurrency: int | None = Field(None, ge=0, le=100_000, description="0 = unlimited")
    enabled: bool | None = None
    model_map: dict[str, str] | None = Field(None, description="requested model -> model sent upstream")
    daily_request_cap: int | None = Field(None, ge=0, le=MAX_COUNT)
    daily_token_cap: int | None = Field(None, ge=0, le=MAX_COUNT)
    daily_cost_cap_usd: float | None = Field(None, ge=0, le=MAX_USD)
    proxy_url: str | None = None
    email: str | None = Field(None, max_length=200)
    plan: str | None = Field(None, max_length=60)
    note: str | None = Field(None, max_length=2000)

    @field_validator("base_url")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        return _check_url(v, "base_url")

    @field_validator("proxy_url")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        return _check_url(v, "proxy_url")


class AccountCreate(_AccountFields):
    name: str = Field(min_length=1, max_length=200)
    provider: Provider
    kind: Kind = "api_key"

    @model_validator(mode="after")
    def _credentials(self) -> AccountCreate:
        if self.kind == "api_key" and self.api_key is None:
            raise ValueError("api_key: required for kind api_key")
        if self.kind == "oauth" and self.access_token is None and self.refresh_token is None:
            raise ValueError("access_token: an OAuth account needs an access_token and/or refresh_token")
        if self.provider == "openai-compatible" and not self.base_url:
            raise ValueError("base_url: required for provider openai-compatible")
        return self


class AccountUpdate(_AccountFields):
    """Only the fields sent are changed; send null to clear a cap, model list or map."""


def _credentials(inp: _AccountFields, kind: str, old: dict[str, Any] | None) -> dict[str, Any] | None:
    """The credential object to store, or None when the input does not change it."""
    given = {
        name: getattr(inp, name).get_secret_value()
        for name in ("api_key", "access_token", "refresh_token")
        if getattr(inp, name) is not None
    }
    if not given and inp.account_id is None:
        return None
    creds = dict(old or {})
    if kind == "api_key":
        creds = {"api_key": given.get("api_key", creds.get("api_key", ""))}
    else:
        creds.pop("api_key", None)
        creds.update(given)
        if inp.account_id is not None:
            creds["account_id"] = inp.account_id
    return creds


def identity(provider: str, kind: str, creds: dict[str, Any], email: str | None) -> str:
    """Stable identity of a credential: the same key or OAuth login imported twice is a duplicate."""
    if kind == "api_key":
        return f"key:{provider}:{sha256_hex(str(creds.get('api_key', '')))[:32]}"
    who = email or creds.get("account_id")
    if who:
        return f"oauth:{provider}:{str(who).lower()}"
    secret = str(creds.get("refresh_token") or creds.get("access_token") or "")
    return f"oauth:{provider}:{sha256_hex(secret)[:32]}"


def account_values(
    inp: _AccountFields,
    box: SecretBox,
    *,
    old: dict[str, Any] | None = None,
    old_creds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store column values from validated input (only the fields that were sent, for updates)."""
    sent = inp.model_fields_set
    values: dict[str, Any] = {}
    for name in (
        "name",
        "provider",
        "kind",
        "base_url",
        "priority",
        "weight",
        "max_concurrency",
        "enabled",
        "models",
        "daily_request_cap",
        "daily_token_cap",
        "proxy_url",
        "email",
        "plan",
        "note",
    ):
        if name in sent or (old is None and getattr(inp, name) is not None):
            values[name] = getattr(inp, name)
    if "model_map" in sent:
        values["model_map"] = inp.model_map or {}
    if "daily_cost_cap_usd" in sent:
        values["daily_cost_cap_micros"] = usd_to_micros(inp.daily_cost_cap_usd)
    if "enabled" in values and values["enabled"] is None:
        values.pop("enabled")
    if "enabled" in values:
        values["disabled_by"] = None if values["enabled"] else "user"
    provider = values.get("provider") or (old or {}).get("provider")
    kind = values.get("kind") or (old or {}).get("kind") or "api_key"
    if provider == "openai-compatible" and not (values.get("base_url") or (old or {}).get("base_url")):
        raise AdminError("base_url: required for provider openai-compatible")
    creds = _credentials(inp, kind, old_creds)
    if creds is None and old is not None and "kind" in values and values["kind"] != old.get("kind"):
        raise AdminError("changing kind needs the new credentials (api_key, or access_token/refresh_token)")
    if creds is not None:
        values["credentials_enc"] = box.encrypt(orjson.dumps(creds).decode())
        values["external_id"] = identity(
            str(provider), kind, creds, values.get("email") or (old or {}).get("email")
        )
        if kind == "oauth":
            values["token_expires_ms"] = parse_time_ms(inp.expires_at, "expires_at")
        else:
            values["token_expires_ms"] = None
    elif "expires_at" in sent:
        values["token_expires_ms"] = parse_time_ms(inp.expires_at, "expires_at")
    return values


def _mask_credential(row: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    if not row.get("credentials_enc"):
        return {"present": False}
    try:
        creds = orjson.loads(box.decrypt(row["credentials_enc"]))
    except (ValueError, orjson.JSONDecodeError):
        return {"present": True, "readable": False}
    out: dict[str, Any] = {"present": True, "readable": True}
    if creds.get("api_key"):
        out["api_key"] = mask_key(str(creds["api_key"]))
    if creds.get("access_token"):
        out["access_token"] = mask_key(str(creds["access_token"]))
    out["has_refresh_token"] = bool(creds.get("refresh_token"))
    if creds.get("account_id"):
        out["account_id"] = creds["account_id"]
    return out


def account_view(
    row: dict[str, Any], box: SecretBox, runtime: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The public form of an account: never a credential, only masked hints."""
    view = {
        "id": row["id"],
        "origin": row["origin"],
        "name": row["name"],
        "provider": row["provider"],
        "kind": row["kind"],
        "base_url": row.get("base_url"),
        "priority": row["priority"],
        "weight": row["weight"],
        "max_concurrency": row["max_concurrency"],
        "enabled": bool(row["enabled"]),
        "disabled_by": row.get("disabled_by"),
        "models": row.get("models"),
        "model_map": row.get("model_map") or {},
        "daily_request_cap": row.get("daily_request_cap"),
        "daily_token_cap": row.get("daily_token_cap"),
        "daily_cost_cap_micros": row.get("daily_cost_cap_micros"),
        "daily_cost_cap_usd": micros_to_usd(row.get("daily_cost_cap_micros")),
        "proxy_url": mask_url(row.get("proxy_url")),
        "email": row.get("email"),
        "plan": row.get("plan"),
        "note": row.get("note"),
        "health": row.get("health"),
        "health_reason": row.get("health_reason"),
        "cooldown_until_ms": row.get("cooldown_until_ms"),
        "token_expires_ms": row.get("token_expires_ms"),
        "credential": _mask_credential(row, box) if row["origin"] == "gateway" else None,
        "last_used_ms": row.get("last_used_ms"),
        "created_ms": row["created_ms"],
        "updated_ms": row["updated_ms"],
    }
    if runtime is not None:
        view["runtime"] = runtime
    return view


async def _unique_name(state: AppState, name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


async def create_account(state: AppState, inp: AccountCreate) -> dict[str, Any]:
    values = account_values(inp, state.box)
    taken = await account_store.existing_names(state.db)
    if inp.name in taken:
        raise AdminError(f"name: an account named {inp.name!r} already exists", 409, "conflict")
    try:
        account_id = await account_store.create_account(state.db, values)
    except account_store.AccountExists as exc:
        raise AdminError(str(exc), 409, "conflict") from None
    await reload_gateway(state)
    row = await account_store.get_account(state.db, account_id)
    assert row is not None
    return account_view(row, state.box, runtime_of(state, account_id))


async def get_gateway_account(state: AppState, account_id: int) -> dict[str, Any]:
    row = await account_store.get_account(state.db, account_id)
    if row is None:
        raise AdminError(f"no account with id {account_id}", 404, "not_found")
    return row


async def update_account(state: AppState, account_id: int, inp: AccountUpdate) -> dict[str, Any]:
    row = await get_gateway_account(state, account_id)
    if row["origin"] != "gateway":
        raise AdminError(
            f"account {account_id} is observed through {row['origin']}; only gateway accounts can be edited",
            409,
            "observed_account",
        )
    old_creds = None
    if row.get("credentials_enc"):
        try:
            old_creds = orjson.loads(state.box.decrypt(row["credentials_enc"]))
        except (ValueError, orjson.JSONDecodeError):
            old_creds = None
    values = account_values(inp, state.box, old=row, old_creds=old_creds)
    if "name" in values and values["name"] != row["name"]:
        if values["name"] in await account_store.existing_names(state.db):
            raise AdminError(f"name: an account named {values['name']!r} already exists", 409, "conflict")
    try:
        await account_store.update_account(state.db, account_id, values)
    except account_store.AccountExists as exc:
        raise AdminError(str(exc), 409, "conflict") from None
    await reload_gateway(state)
    fresh = await account_store.get_account(state.db, account_id)
    assert fresh is not None
    return account_view(fresh, state.box, runtime_of(state, account_id))


async def set_account_enabled(state: AppState, account_id: int, enabled: bool) -> dict[str, Any]:
    row = await get_gateway_account(state, account_id)
    if row["origin"] != "gateway":
        raise AdminError(f"account {account_id} is observed, not a gateway account", 409, "observed_account")
    await account_store.set_enabled(state.db, account_id, enabled, by="user")
    await reload_gateway(state)
    fresh = await account_store.get_account(state.db, account_id)
    assert fresh is not None
    return account_view(fresh, state.box, runtime_of(state, account_id))


async def delete_account(state: AppState, account_id: int) -> None:
    row = await get_gateway_account(state, account_id)
    if row["origin"] != "gateway":
        raise AdminError(
            f"account {account_id} is observed through {row['origin']}; its usage history refers to it",
            409,
            "observed_account",
        )
    await account_store.delete_account(state.db, account_id)
    await reload_gateway(state)


class BatchSet(BaseModel):
    model_config = {"extra": "forbid"}

    daily_request_cap: int | None = Field(None, ge=0, le=MAX_COUNT)
    daily_token_cap: int | None = Field(None, ge=0, le=MAX_COUNT)
    daily_cost_cap_usd: float | None = Field(None, ge=0, le=MAX_USD)
    priority: int | None = Field(None, ge=-1000, le=1000)
    weight: int | None = Field(None, ge=1, le=1000)
    max_concurrency: int | None = Field(None, ge=0, le=100_000)
    enabled: bool | None = None


class BatchBody(BaseModel):
    model_config = {"extra": "forbid"}

    ids: list[int] | None = Field(None, description="accounts to change; omit and set all=true for every one")
    all: bool = False
    set: BatchSet

    @model_validator(mode="after")
    def _target(self) -> BatchBody:
        if self.ids is None and not self.all:
            raise ValueError("ids: list the account ids, or send all=true to change every gateway account")
        if not self.set.model_fields_set:
            raise ValueError("set: name at least one field to change")
        return self


async def batch_update(state: AppState, body: BatchBody) -> dict[str, Any]:
    changes = body.set
    values: dict[str, Any] = {}
    for name in changes.model_fields_set:
        value = getattr(changes, name)
        if name == "daily_cost_cap_usd":
            values["daily_cost_cap_micros"] = usd_to_micros(value)
        elif name == "enabled":
            if value is None:
                raise AdminError("set.enabled: true or false")
            values["enabled"] = value
            values["disabled_by"] = None if value else "user"
        elif name in ("priority", "weight", "max_concurrency") and value is None:
            raise AdminError(f"set.{name}: a number is required")
        else:
            values[name] = value
    ids = None if body.all else body.ids
    if ids is not None:
        known = {r["id"] for r in await account_store.list_accounts(state.db, ids=ids)}
        missing = sorted(set(ids) - known)
        if missing:
            raise AdminError(
                f"ids: no gateway account with id {', '.join(map(str, missing))}", 404, "not_found"
            )
    updated = await account_store.update_many(state.db, ids, values)
    await reload_gateway(state)
    return {"updated": updated, "set": {k: getattr(changes, k) for k in changes.model_fields_set}}


# --- import ----------------------------------------------------------------------------------------


def _jwt_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        doc = orjson.loads(base64.urlsafe_b64decode(payload))
        return doc if isinstance(doc, dict) else {}
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return {}


_EXPIRY_KEYS = ("expired", "expire", "expires_at", "expiresAt", "expiry", "expires")


def cpa_auth_file(doc: dict[str, Any]) -> dict[str, Any]:
    """A CPA auth file (Claude / Codex / Gemini OAuth) as account input fields."""
    kind = str(doc.get("type") or "").lower()
    provider = PROVIDER_ALIASES.get(kind)
    if provider is None:
        raise ValueError(
            f"unsupported auth file type {kind or '(none)'!r} (claude, codex and gemini are supported)"
        )
    token_obj: dict[str, Any] = doc["token"] if isinstance(doc.get("token"), dict) else {}
    access = doc.get("access_token") or token_obj.get("access_token")
    refresh = doc.get("refresh_token") or token_obj.get("refresh_token")
    if not access and not refresh:
        raise ValueError("the auth file has no access_token or refresh_token")
    expiry = next((doc[k] for k in _EXPIRY_KEYS if doc.get(k)), None) or token_obj.get("expiry")
    email = doc.get("email")
    fields: dict[str, Any] = {
        "provider": provider,
        "kind": "oauth",
        "access_token": access,
        "refresh_token": refresh,
        "expires_at": expiry,
        "email": email,
    }
    plan = None
    if provider == "openai":
        claims = _jwt_claims(str(doc.get("id_token") or ""))
        auth_claim = claims.get("https://api.openai.com/auth")
        auth: dict[str, Any] = auth_claim if isinstance(auth_claim, dict) else {}
        id_token: dict[str, Any] = doc["id_token"] if isinstance(doc.get("id_token"), dict) else {}
        fields["account_id"] = (
            doc.get("account_id") or id_token.get("chatgpt_account_id") or auth.get("chatgpt_account_id")
        )
        plan = id_token.get("plan_type") or auth.get("chatgpt_plan_type")
    if provider == "gemini" and doc.get("project_id"):
        fields["note"] = f"project {doc['project_id']}"
    if plan:
        fields["plan"] = str(plan)
    for name in ("priority", "weight"):
        if isinstance(doc.get(name), int) and not isinstance(doc.get(name), bool):
            fields[name] = doc[name]
    if isinstance(doc.get("note"), str) and doc["note"]:
        fields["note"] = doc["note"]
    if doc.get("disabled") is True:
        fields["enabled"] = False
    label = {"anthropic": "claude", "openai": "codex", "gemini": "gemini"}[provider]
    fields["name"] = f"{label} {email}" if email else f"{label} {(str(refresh or access))[-6:]}"
    return fields


_CSV_LISTS = ("models",)


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, raw_value in row.items():
        if raw_key is None:
            raise ValueError("the row has more cells than the header")
        key = raw_key.strip().lower().replace(" ", "_").replace("-", "_")
        value = (raw_value or "").strip()
        if value == "":
            continue
        if key in _CSV_LISTS:
            out[key] = [m for m in value.replace(",", ";").split(";") if m.strip()]
        elif key == "model_map":
            mapping = {}
            for pair in value.replace(",", ";").split(";"):
                if not pair.strip():
                    continue
                if "=" not in pair:
                    raise ValueError(f"model_map: {pair!r} is not requested=actual")
                src, dst = pair.split("=", 1)
                mapping[src.strip()] = dst.strip()
            out[key] = mapping
        elif key in ("priority", "weight", "max_concurrency", "daily_request_cap", "daily_token_cap"):
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not a whole number") from None
        elif key == "daily_cost_cap_usd":
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not a number") from None
        elif key == "enabled":
            out[key] = value.lower() in ("1", "true", "yes", "y", "on")
        elif key == "provider":
            out[key] = PROVIDER_ALIASES.get(value.lower(), value.lower())
        else:
            out[key] = value
    if "kind" not in out:
        out["kind"] = (
            "oauth"
            if ("access_token" in out or "refresh_token" in out) and "api_key" not in out
            else "api_key"
        )
    return out


def _json_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError("expected an object")
    if "content" in item and isinstance(item.get("name"), str) and "provider" not in item:
        content = item["content"]  # {"name": "claude-a@b.json", "content": {...} | "..."}
        if isinstance(content, str):
            content = orjson.loads(content)
        return _json_item(content)
    if "type" in item and "provider" not in item:
        return cpa_auth_file(item)
    fields = dict(item)
    if isinstance(fields.get("provider"), str):
        fields["provider"] = PROVIDER_ALIASES.get(fields["provider"].lower(), fields["provider"].lower())
    if "kind" not in fields:
        fields["kind"] = (
            "oauth"
            if ("access_token" in fields or "refresh_token" in fields) and "api_key" not in fields
            else "api_key"
        )
    return fields


def parse_import(content: str) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """Rows of an import: (label, fields, error). CSV with a header row, a JSON array/object, JSONL."""
    text = content.strip().lstrip("\ufeff")
    if not text:
        raise AdminError("the import is empty")
    rows: list[tuple[str, dict[str, Any] | None, str | None]] = []
    if text[0] in "[{":
        items: list[Any]
        try:
            doc = orjson.loads(text)
            if isinstance(doc, list):
                items = doc
            elif isinstance(doc, dict) and isinstance(doc.get("accounts"), list):
                items = doc["accounts"]
            elif isinstance(doc, dict) and isinstance(doc.get("files"), list):
                items = doc["files"]
            else:
                items = [doc]
        except orjson.JSONDecodeError:
            items = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    items.append(ValueError(f"line {number}: not JSON ({exc})"))
        for index, item in enumerate(items, 1):
            label = f"item {index}"
            if isinstance(item, ValueError):
                rows.append((label, None, str(item)))
                continue
            try:
                rows.append((label, _json_item(item), None))
            except (ValueError, orjson.JSONDecodeError) as exc:
                rows.append((label, None, str(exc)))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "provider" not in {f.strip().lower() for f in reader.fieldnames}:
        raise AdminError(
            "CSV needs a header row with at least: name, provider, and api_key (or access_token / refresh_token)"
        )
    for row in reader:
        label = f"line {reader.line_num}"
        try:
            rows.append((label, _csv_row(row), None))
        except ValueError as exc:
            rows.append((label, None, str(exc)))
    return rows


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


async def import_accounts(state: AppState, content: str, *, dry_run: bool) -> dict[str, Any]:
    """Add every new account of an import; duplicates are skipped, bad rows fail with the reason."""
    parsed = parse_import(content)
    existing = await account_store.existing_external_ids(state.db)
    names = await account_store.existing_names(state.db)
    results: list[dict[str, Any]] = []
    to_add: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, str] = {}
    for label, fields, error in parsed:
        entry: dict[str, Any] = {"row": label, "name": (fields or {}).get("name")}
        if error is not None or fields is None:
            results.append({**entry, "status": "failed", "reason": error})
            continue
        try:
            inp = AccountCreate.model_validate({k: v for k, v in fields.items() if v is not None})
            values = account_values(inp, state.box)
        except ValidationError as exc:
            results.append({**entry, "status": "failed", "reason": _validation_message(exc)})
            continue
        except (AdminError, ValueError) as exc:
            results.append({**entry, "status": "failed", "reason": str(exc)})
            continue
        ext = values["external_id"]
        if ext in existing:
            results.append(
                {**entry, "status": "skipped", "reason": f"already exists (account {existing[ext]})"}
            )
            continue
        if ext in seen:
            results.append(
                {**entry, "status": "skipped", "reason": f"duplicate of {seen[ext]} in this import"}
            )
            continue
        seen[ext] = label
        values["name"] = await _unique_name(state, values["name"], names)
        names.add(values["name"])
        entry["name"] = values["name"]
        results.append({**entry, "status": "added"})
        to_add.append((len(results) - 1, values))
    if not dry_run and to_add:
        ids = await account_store.create_accounts(state.db, [v for _i, v in to_add])
        for (index, _values), account_id in zip(to_add, ids, strict=True):
            results[index]["id"] = account_id
        await reload_gateway(state)
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("added", "skipped", "failed")}
    return {"dry_run": dry_run, **counts, "rows": results}


# --- probing ------------------------------------------------------------------------------------


async def test_account(state: AppState, account_id: int) -> dict[str, Any]:
    """Probe an account with a free request (model list, or the Codex usage endpoint)."""
    from relaymeter.gateway.oauth import RefreshError, TokenRefresher
    from relaymeter.gateway.scheduler import AccountPool
    from relaymeter.gateway.service import GatewayService, account_from_row

    row = await get_gateway_account(state, account_id)
    if row["origin"] != "gateway":
        raise AdminError(f"account {account_id} is observed, not a gateway account", 409, "observed_account")
    service = state.services.get("gateway")
    gw = service if isinstance(service, GatewayService) else None
    acc: Account | None = gw.pool.accounts.get(account_id) if gw else None
    own_client = None
    if acc is None or gw is None:
        acc = account_from_row(row, state.box)
        pool = AccountPool()
        pool.accounts[acc.id] = acc
        own_client = make_client(
            "aiohttp", state.settings.upstream_connect_timeout_s, min(state.settings.upstream_timeout_s, 60)
        )
        client = own_client
        oauth = TokenRefresher(state.db, state.box, pool, lambda: client)
    else:
        pool = gw.pool
        client = gw.client()
        oauth = gw.oauth
    started = time.perf_counter()
    result: dict[str, Any] = {"id": account_id, "name": acc.name, "ok": False}
    try:
        if acc.credential_error:
            result.update(status=None, message=acc.credential_error)
            return result
        if not acc.routes:
            result.update(
                status=None, message="this provider/kind cannot be relayed (Gemini OAuth is quota-only)"
            )
            return result
        try:
            token = await oauth.token_for(acc)
        except RefreshError as exc:
            result.update(status=None, message=f"token refresh failed: {exc}")
            return result
        headers = request_headers(acc, {}, token)
        if is_codex(acc):
            url = base_url(acc).rsplit("/codex", 1)[0] + "/wham/usage"
        else:
            url = upstream_url(acc, MODELS)
        try:
            resp = await client.send("GET", url, headers, None, acc.proxy_url)
            raw = await resp.read()
        except UpstreamError as exc:
            pool.on_transport_error(acc, str(exc))
            result.update(status=None, message=f"unreachable: {exc}")
            return result
        from relaymeter.gateway.usage_parsers import error_message_of

        result["status"] = resp.status
        if resp.status < 400:
            pool.on_success(acc)
            result["ok"] = True
            message = "credentials accepted"
            try:
                doc = orjson.loads(raw)
                if isinstance(doc, dict) and isinstance(doc.get("data"), list):
                    result["models"] = len(doc["data"])
                    message += f"; {len(doc['data'])} models listed"
            except orjson.JSONDecodeError:
                pass
            result["message"] = message
        else:
            message = error_message_of(raw)
            pool.on_status(acc, resp.status, resp.headers, message)
            result["message"] = f"{resp.status}: {message}"
        return result
    finally:
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        if gw is not None:
            await gw.flush_health()
        elif pool.dirty:
            await account_store.save_health(state.db, pool.health_rows(pool.dirty))
        if own_client is not None:
            await own_client.close()


def runtime_of(state: AppState, account_id: int) -> dict[str, Any] | None:
    service = state.services.get("gateway")
    if service is None:
        return None
    for item in service.snapshot():
        if item["id"] == account_id:
            return dict(item)
    return None


async def reload_gateway(state: AppState) -> None:
    service = state.services.get("gateway")
    if service is not None:
        await service.reload()


# --- API keys ------------------------------------------------------------------------------------


class _KeyFields(_CommonFields):
    name: str | None = Field(None, min_length=1, max_length=200)
    remark: str | None = Field(None, max_length=2000)
    enabled: bool | None = None
    max_concurrency: int | None = Field(None, ge=0, le=100_000)
    rpm: int | None = Field(None, ge=0, le=MAX_COUNT)
    tpm: int | None = Field(None, ge=0, le=MAX_COUNT)
    daily_limit_usd: float | None = Field(None, ge=0, le=MAX_USD)
    weekly_limit_usd: float | None = Field(None, ge=0, le=MAX_USD)
    monthly_limit_usd: float | None = Field(None, ge=0, le=MAX_USD)
    total_limit_usd: float | None = Field(None, ge=0, le=MAX_USD)


class KeyCreate(_KeyFields):
    name: str = Field(min_length=1, max_length=200)


class KeyUpdate(_KeyFields):
    """Only the fields sent are changed; send null to remove a limit or an expiry."""


_LIMITS_USD = {
    "daily_limit_usd": "daily_limit_micros",
    "weekly_limit_usd": "weekly_limit_micros",
    "monthly_limit_usd": "monthly_limit_micros",
    "total_limit_usd": "total_limit_micros",
}


def key_values(inp: _KeyFields, *, create: bool) -> dict[str, Any]:
    sent = inp.model_fields_set
    values: dict[str, Any] = {}
    for name in ("name", "remark", "enabled", "models", "max_concurrency", "rpm", "tpm"):
        if name in sent:
            value = getattr(inp, name)
            if value is None and name in ("enabled", "max_concurrency", "rpm", "tpm", "name"):
                if name == "name" or name == "enabled":
                    raise AdminError(f"{name}: may not be null")
                value = 0
            values[name] = value
    for usd_name, column in _LIMITS_USD.items():
        if usd_name in sent:
            values[column] = usd_to_micros(getattr(inp, usd_name))
    if "expires_at" in sent:
        values["expires_ms"] = parse_time_ms(inp.expires_at, "expires_at")
    if create:
        values.setdefault("enabled", True)
    return values


def key_view(row: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    view = {
        "id": row["id"],
        "origin": row["origin"],
        "name": row["name"],
        "prefix": row["prefix"],
        "remark": row.get("remark"),
        "enabled": bool(row["enabled"]),
        "revoked": bool(row["revoked"]),
        "usable": row["origin"] == "gateway"
        and bool(row["enabled"])
        and not row["revoked"]
        and (row.get("expires_ms") is None or row["expires_ms"] > _now()),
        "expires_ms": row.get("expires_ms"),
        "models": row.get("models"),
        "max_concurrency": row["max_concurrency"],
        "rpm": row["rpm"],
        "tpm": row["tpm"],
        "last_used_ms": row.get("last_used_ms"),
        "created_ms": row["created_ms"],
        "updated_ms": row["updated_ms"],
    }
    for usd_name, column in _LIMITS_USD.items():
        view[column] = row.get(column)
        view[usd_name] = micros_to_usd(row.get(column))
    if usage is not None:
        view["usage"] = usage
    return view


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(state: AppState, inp: KeyCreate) -> tuple[dict[str, Any], str]:
    """Create a gateway key; returns (view, secret). The secret is never stored nor shown again."""
    secret = new_secret()
    key_id = await key_store.create_key(
        state.db, sha256_hex(secret), mask_key(secret), key_values(inp, create=True)
    )
    await reload_gateway(state)
    row = await key_store.get_key(state.db, key_id)
    assert row is not None
    return key_view(row, usage_of(state, key_id)), secret


async def get_key_row(state: AppState, key_id: int) -> dict[str, Any]:
    row = await key_store.get_key(state.db, key_id)
    if row is None:
        raise AdminError(f"no API key with id {key_id}", 404, "not_found")
    return row


async def update_key(state: AppState, key_id: int, inp: KeyUpdate) -> dict[str, Any]:
    row = await get_key_row(state, key_id)
    if row["origin"] != "gateway":
        raise AdminError(
            f"API key {key_id} was observed in CPA records; it cannot be edited or used here",
            409,
            "observed_key",
        )
    if row["revoked"] and inp.enabled:
        raise AdminError("this key was revoked; create a new key instead", 409, "revoked")
    await key_store.update_key(state.db, key_id, key_values(inp, create=False))
    await reload_gateway(state)
    return key_view(await get_key_row(state, key_id), usage_of(state, key_id))


async def set_key_enabled(state: AppState, key_id: int, enabled: bool) -> dict[str, Any]:
    return await update_key(state, key_id, KeyUpdate(enabled=enabled))


async def revoke_key(state: AppState, key_id: int) -> dict[str, Any]:
    row = await get_key_row(state, key_id)
    if row["origin"] != "gateway":
        raise AdminError(f"API key {key_id} is observed, not a gateway key", 409, "observed_key")
    await key_store.update_key(state.db, key_id, {"revoked": True, "enabled": False})
    await reload_gateway(state)
    return key_view(await get_key_row(state, key_id), usage_of(state, key_id))


async def delete_key(state: AppState, key_id: int) -> None:
    row = await get_key_row(state, key_id)
    if row["origin"] != "gateway":
        raise AdminError(f"API key {key_id} is observed; its usage history refers to it", 409, "observed_key")
    await key_store.delete_key(state.db, key_id)
    await reload_gateway(state)


def usage_of(state: AppState, key_id: int) -> dict[str, Any] | None:
    service = state.services.get("gateway")
    if service is None:
        return None
    usage: dict[str, Any] = service.key_usage(key_id)
    return usage
