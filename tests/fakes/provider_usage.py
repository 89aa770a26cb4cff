"""Fake provider quota endpoints on loopback: Claude OAuth usage, Codex wham/usage, Gemini quota.

Answers with the exact shapes of protocols/cliproxyapi.md §5, checks the bearer token (and
the OAuth beta header / ChatGPT account id like the real endpoints), and has the two OAuth
token endpoints so an expired token can be refreshed. ``gate`` holds usage answers until a
test opens it (to pile up concurrent callers); ``usage_calls`` counts usage calls per path.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson

from tests.fakes.upstream_base import FakeUpstream, Receive, Send

CLAUDE_PATH = "/api/oauth/usage"
CODEX_PATH = "/backend-api/wham/usage"
GEMINI_PATH = "/v1internal:retrieveUserQuota"

CLAUDE_USAGE: dict[str, Any] = {
    "five_hour": {"utilization": 37.0, "resets_at": "2026-08-22T18:00:00+00:00"},
    "seven_day": {"utilization": 12.0, "resets_at": "2026-08-27T00:00:00+00:00"},
    "seven_day_oauth_apps": None,
    "seven_day_opus": {"utilization": 0.0, "resets_at": None},
    "seven_day_sonnet": {"utilization": 3.0, "resets_at": "2026-08-27T00:00:00+00:00"},
    "seven_day_cowork": None,
    "extra_usage": {"is_enabled": False, "monthly_limit": 0, "used_credits": 0, "utilization": None},
}

CODEX_USAGE: dict[str, Any] = {
    "plan_type": "plus",
    "email": "alice@example.com",
    "rate_limit": {
        "allowed": True,
        "limit_reached": False,
        "primary_window": {
            "used_percent": 23,
            "limit_window_seconds": 18000,
            "reset_after_seconds": 9120,
            "reset_at": 1766400000,
        },
        "secondary_window": {
            "used_percent": 61,
            "limit_window_seconds": 604800,
            "reset_after_seconds": 301000,
            "reset_at": 1766692000,
        },
    },
    "code_review_rate_limit": None,
    "additional_rate_limits": None,
    "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
}

GEMINI_QUOTA: dict[str, Any] = {
    "buckets": [
        {
            "modelId": "gemini-2.5-pro",
            "tokenType": "REQUESTS",
            "remainingFraction": 0.75,
            "remainingAmount": "75",
            "resetTime": "2026-08-23T00:00:00Z",
        },
        {
            "modelId": "gemini-2.5-flash",
            "tokenType": "REQUESTS",
            "remainingFraction": 1,
            "resetTime": "2026-08-23T00:00:00Z",
        },
    ]
}

_tokens = itertools.count(1)


class FakeProviderUsage(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.access_tokens: set[str] = set()  # valid bearer tokens
        self.refresh_tokens: set[str] = set()  # refresh tokens the token endpoints accept
        self.claude: dict[str, Any] = copy.deepcopy(CLAUDE_USAGE)
        self.codex: dict[str, Any] = copy.deepcopy(CODEX_USAGE)
        self.gemini: dict[str, Any] = copy.deepcopy(GEMINI_QUOTA)
        self.per_token: dict[str, dict[str, Any]] = {}  # token -> answer overriding the default
        self.gate: asyncio.Event | None = None  # usage answers wait for this when set
        self.arrived = 0  # usage requests that reached the gate
        self.usage_calls: Counter[str] = Counter()
        self.calls_by_token: Counter[str] = Counter()  # usage calls per bearer token presented
        self.token_calls = 0

    def add_token(self, access: str, refresh: str | None = None) -> None:
        self.access_tokens.add(access)
        if refresh:
            self.refresh_tokens.add(refresh)

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: Any, send: Send, receive: Receive
    ) -> None:
        if path in ("/v1/oauth/token", "/oauth/token") and method == "POST":
            await self._token(send, body)
            return
        if path not in (CLAUDE_PATH, CODEX_PATH, GEMINI_PATH):
            await self.json(send, 404, {"error": {"type": "not_found_error", "message": f"no route {path}"}})
            return
        self.usage_calls[path] += 1
        self.arrived += 1
        if self.gate is not None:
            await self.gate.wait()
        script = self.next_script()
        if script is not None:
            await self.scripted(send, script)
            return
        status, doc = self.answer(method, path, headers, body)
        await self.json(send, status, doc)

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        """(status, JSON body) of a usage endpoint, as the real one would answer."""
        token = self.credential(headers)
        self.calls_by_token[token] += 1
        if token not in self.access_tokens:
            if path == CLAUDE_PATH:
                return 401, {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": "OAuth token has expired."},
                }
            return 401, {"detail": "Could not validate your credentials"}
        if path == CLAUDE_PATH:
            if "oauth-2025-04-20" not in headers.get("anthropic-beta", ""):
                return 401, {
                    "type": "error",
                    "error": {
                        "type": "authentication_error",
                        "message": "OAuth authentication is currently not supported.",
                    },
                }
            return 200, self.per_token.get(token, self.claude)
        if path == CODEX_PATH:
            if not headers.get("chatgpt-account-id"):
                return 403, {"detail": "missing chatgpt-account-id"}
            return 200, self.per_token.get(token, self.codex)
        if method != "POST" or not isinstance(body, dict) or "project" not in body:
            return 400, {
                "error": {"code": 400, "message": "project is required", "status": "INVALID_ARGUMENT"}
            }
        return 200, self.per_token.get(token, self.gemini)

    def cpa_handler(self, tokens: dict[str, str]) -> Any:
        """A FakeCPA ``api_call_handler``: CPA puts the account's token (by auth_index) in place
        of ``$TOKEN$`` and performs the call, answering {status_code, header, body}."""

        def handle(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            token = tokens.get(str(request.get("auth_index")))
            if token is None:
                return 400, {"error": "auth token not found"}
            headers = {
                str(k).lower(): str(v).replace("$TOKEN$", token)
                for k, v in (request.get("header") or {}).items()
            }
            path = urlsplit(str(request.get("url"))).path
            self.usage_calls[path] += 1
            data = request.get("data")
            try:
                body = orjson.loads(data) if data else None
            except orjson.JSONDecodeError:
                body = data
            status, doc = self.answer(str(request.get("method", "GET")), path, headers, body)
            return 200, {
                "status_code": status,
                "header": {"Content-Type": ["application/json"]},
                "body": orjson.dumps(doc).decode(),
            }

        return handle

    async def _token(self, send: Send, body: Any) -> None:
        self.token_calls += 1
        if not isinstance(body, dict) or body.get("grant_type") != "refresh_token":
            await self.json(send, 400, {"error": "unsupported_grant_type"})
            return
        if body.get("refresh_token") not in self.refresh_tokens:
            await self.json(
                send,
                400,
                {"error": "invalid_grant", "error_description": "Refresh token not found or invalid"},
            )
            return
        n = next(_tokens)
        access, refresh = f"fresh-access-{n}", f"fresh-refresh-{n}"
        self.refresh_tokens.discard(body["refresh_token"])
        self.add_token(access, refresh)
        await self.json(
            send,
            200,
            {"access_token": access, "refresh_token": refresh, "expires_in": 3600, "token_type": "Bearer"},
        )
