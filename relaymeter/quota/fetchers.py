"""Fetching provider quota windows for one account: with its own OAuth token, or through CPA.

Gateway accounts are asked directly with their token (through the account's proxy), using
the gateway's token refresher: an expired token is refreshed first, and a 401 answer leads
to one forced refresh and one retry. CPA-held accounts are asked through CPA's management
``/api-call`` passthrough, so their tokens never leave CPA. Base URLs can be overridden
(per account via its base_url, or per provider), which is how tests use loopback fakes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from relaymeter.quota.parse import (
    ParseError,
    UsageReport,
    parse_claude_usage,
    parse_codex_usage,
    parse_gemini_quota,
)

DEFAULT_BASES = {
    "claude": "https://api.anthropic.com",
    "codex": "https://chatgpt.com/backend-api",
    "gemini": "https://cloudcode-pa.googleapis.com",
}
CLAUDE_OAUTH_BETA = "oauth-2025-04-20"
USER_AGENT = "relaymeter-quota"
# Quota kinds by (provider, credential kind); CPA types map through CPA_TYPES first.
FETCHABLE = {("anthropic", "oauth"): "claude", ("openai", "oauth"): "codex", ("gemini", "oauth"): "gemini"}
CPA_TYPES = {
    "claude": "claude",
    "anthropic": "claude",
    "codex": "codex",
    "openai": "codex",
    "gemini": "gemini",
    "gemini-cli": "gemini",
}
_PROJECT_IN_NOTE = re.compile(r"\bproject[:\s]+([A-Za-z0-9._-]+)")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class QuotaTarget:
    """One account whose windows can be read (or only observed from headers)."""

    account_id: int
    name: str
    origin: str  # 'gateway' | 'cpa:<connection>'
    provider: str  # the account's provider (anthropic, openai, gemini, claude, codex, ...)
    kind: str  # oauth | api_key | observed
    quota_kind: str | None  # claude | codex | gemini | None (headers only)
    enabled: bool = True
    disabled_by: str | None = None
    plan: str | None = None
    email: str | None = None
    base_url: str | None = None
    connection: str | None = None  # CPA connection name
    auth_index: str | None = None
    chatgpt_account_id: str | None = None
    project: str | None = None
    cpa_disabled: bool = False

    @property
    def via_cpa(self) -> bool:
        return self.connection is not None


@dataclass(slots=True)
class FetchResult:
    account_id: int
    status: str  # ok | rejected | error | unsupported
    report: UsageReport | None = None
    http_status: int | None = None
    message: str | None = None
    origin: str = "oauth_usage"  # oauth_usage | cpa_api_call
    fetched_ms: int = 0
    refreshed_token: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def usage_base(target: QuotaTarget, bases: dict[str, str]) -> str:
    """Where the usage endpoint of this account lives (its base_url wins for gateway accounts)."""
    kind = target.quota_kind or ""
    if target.base_url and not target.via_cpa:
        base = target.base_url.rstrip("/")
        if kind == "codex" and base.endswith("/codex"):
            base = base[: -len("/codex")]
        return base
    return bases.get(kind, DEFAULT_BASES.get(kind, "")).rstrip("/")


def usage_request(
    target: QuotaTarget, bases: dict[str, str]
) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, url, headers without the credential, body) of the account's usage endpoint."""
    base = usage_base(target, bases)
    headers = {"accept": "application/json", "user-agent": USER_AGENT}
    if target.quota_kind == "claude":
        headers["anthropic-beta"] = CLAUDE_OAUTH_BETA
        return "GET", base + "/api/oauth/usage", headers, None
    if target.quota_kind == "codex":
        if target.chatgpt_account_id:
            headers["chatgpt-account-id"] = target.chatgpt_account_id
        return "GET", base + "/wham/usage", headers, None
    if target.quota_kind == "gemini":
        headers["content-type"] = "application/json"
        body = orjson.dumps({"project": target.project} if target.project else {})
        return "POST", base + "/v1internal:retrieveUserQuota", headers, body
    raise ValueError(f"account {target.name} has no usage endpoint")


def parse_usage(quota_kind: str, body: bytes, now: int) -> UsageReport:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ParseError("the usage endpoint answered something that is not JSON") from None
    if quota_kind == "claude":
        return parse_claude_usage(doc)
    if quota_kind == "codex":
        return parse_codex_usage(doc, now)
    return parse_gemini_quota(doc)


def error_text(body: bytes) -> str:
    """A short, secret-free description of an error body."""
    from relaymeter.domain.redact import redact_text

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return redact_text(body[:200].decode("utf-8", "replace")).strip()
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            for key in ("message", "type", "code"):
                if isinstance(err.get(key), str):
                    return redact_text(err[key])[:200]
        for key in ("error", "message", "detail"):
            if isinstance(doc.get(key), str):
                return redact_text(doc[key])[:200]
    return redact_text(body[:200].decode("utf-8", "replace")).strip()


def gateway_target(row: dict[str, Any], creds: dict[str, Any] | None = None) -> QuotaTarget:
    """A target for a gateway account row (store.accounts.list_accounts shape)."""
    creds = creds or {}
    provider, kind = str(row.get("provider") or ""), str(row.get("kind") or "")
    note = str(row.get("note") or "")
    project = creds.get("project_id") or (m.group(1) if (m := _PROJECT_IN_NOTE.search(note)) else None)
    return QuotaTarget(
        account_id=int(row["id"]),
        name=str(row["name"]),
        origin="gateway",
        provider=provider,
        kind=kind,
        quota_kind=FETCHABLE.get((provider, kind)),
        enabled=bool(row.get("enabled", True)),
        disabled_by=row.get("disabled_by"),
        plan=row.get("plan"),
        email=row.get("email"),
        base_url=row.get("base_url"),
        chatgpt_account_id=creds.get("account_id"),
        project=project,
    )


def cpa_target(account_id: int, connection: str, info: Any) -> QuotaTarget:
    """A target for a CPA auth file (relaymeter.ingest.cliproxy.management.AuthFileInfo)."""
    raw: dict[str, Any] = info.raw
    id_token = raw.get("id_token") if isinstance(raw.get("id_token"), dict) else {}
    chatgpt = (
        (id_token or {}).get("chatgpt_account_id") or raw.get("account_id") or raw.get("chatgpt_account_id")
    )
    provider = str(info.provider or raw.get("type") or "").lower()
    return QuotaTarget(
        account_id=account_id,
        name=info.display_name,
        origin=f"cpa:{connection}",
        provider=provider,
        kind="oauth" if raw.get("account_type", "oauth") == "oauth" else "api_key",
        quota_kind=CPA_TYPES.get(provider) if raw.get("account_type", "oauth") == "oauth" else None,
        enabled=not info.disabled,
        plan=info.plan,
        email=info.email,
        connection=connection,
        auth_index=info.auth_index,
        chatgpt_account_id=str(chatgpt) if chatgpt else None,
        project=str(raw.get("project_id")) if raw.get("project_id") else None,
        cpa_disabled=info.disabled,
    )


def classify(status: int) -> str:
    """Outcome of a usage call by HTTP status: credentials rejected, or a (transient) error."""
    if status in (401, 403):
        return "rejected"
    return "error"
