"""Pooled HTTP clients to upstream providers (aiohttp or httpx) and per-provider request building.

All clients (these two and the lean ``rawclient``) expose the same small interface (status,
headers, read, chunks, close) so the relay and the benchmark can swap them. ``raw`` is the
default: it measured several times cheaper per request than aiohttp (see bench/README.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from relaymeter.gateway.scheduler import CHAT, COUNT_TOKENS, MESSAGES, MODELS, RESPONSES, Account

DEFAULT_BASE = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "codex": "https://chatgpt.com/backend-api/codex",
}
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_OAUTH_BETA = "oauth-2025-04-20"

# Client request headers never sent upstream (auth is replaced, hop-by-hop dropped).
_DROP_REQUEST = frozenset(
    {
        "host",
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "expect",  # the body is sent with the headers; an interim 100 is never waited for
        "upgrade",
        "accept-encoding",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "forwarded",
        "chatgpt-account-id",
        "openai-organization",
        "openai-project",
    }
)
# Upstream response headers not relayed: hop-by-hop, recomputed, or revealing the account.
_DROP_RESPONSE_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-", "x-codex-", "cf-", "openai-organization")
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "set-cookie",
        "server",
        "date",
        "alt-svc",
        "via",
        "openai-project",
        "x-envoy-upstream-service-time",
        "strict-transport-security",
    }
)


class UpstreamError(Exception):
    """The upstream could not be reached or broke before answering (connect, TLS, timeout)."""


class UpstreamResponse(Protocol):
    status: int
    headers: dict[str, str]  # lower-case names

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class UpstreamClient(Protocol):
    name: str

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, proxy: str | None
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


# --- aiohttp -----------------------------------------------------------------------------


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers: dict[str, str] = {k.lower(): v for k, v in resp.headers.items()}

    async def read(self) -> bytes:
        try:
            data: bytes = await self._resp.read()
            return data
        except Exception as exc:
            raise UpstreamError(f"reading the upstream body failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise UpstreamError(f"upstream stream broke: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        self._resp.close()


class AiohttpClient:
    name = "aiohttp"

    def __init__(self, connect_timeout_s: float = 10.0, read_timeout_s: float = 600.0) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            # Never keep upstream cookies: they would leak between clients and accounts.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, proxy: str | None
    ) -> UpstreamResponse:
        try:
            resp = await self._session.request(method, url, data=body, headers=headers, proxy=proxy)
        except (self._aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        return _AiohttpResponse(resp)

    async def close(self) -> None:
        await self._session.close()


# --- httpx -------------------------------------------------------------------------------


class _HttpxResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers.raw}

    async def read(self) -> bytes:
        try:
            return b"".join([chunk async for chunk in self._resp.stream])
        except Exception as exc:
            raise UpstreamError(f"reading the upstream body failed: {type(exc).__name__}: {exc}") from exc
        finally:
            await self._resp.stream.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.stream:
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise UpstreamError(f"upstream stream broke: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._resp.stream.aclose()


class HttpxClient:
    """httpx's connection-pool transport used directly (no client-level cookie jar or hooks)."""

    name = "httpx"

    def __init__(self, connect_timeout_s: float = 10.0, read_timeout_s: float = 600.0) -> None:
        import httpx

        self._httpx = httpx
        self._timeout = {
            "connect": connect_timeout_s,
            "read": read_timeout_s,
            "write": read_timeout_s,
            "pool": None,
        }
        self._limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
        self._transports: dict[str | None, Any] = {}

    def _transport(self, proxy: str | None) -> Any:
        transport = self._transports.get(proxy)
        if transport is None:
            transport = self._transports[proxy] = self._httpx.AsyncHTTPTransport(
                limits=self._limits, proxy=proxy
            )
        return transport

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, proxy: str | None
    ) -> UpstreamResponse:
        # The raw transport does not decode bodies: ask for them uncompressed.
        headers = {**headers, "accept-encoding": "identity"}
        request = self._httpx.Request(
            method, url, headers=headers, content=body, extensions={"timeout": self._timeout}
        )
        try:
            resp = await self._transport(proxy).handle_async_request(request)
        except (self._httpx.HTTPError, OSError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        return _HttpxResponse(resp)

    async def close(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()


def make_client(name: str, connect_timeout_s: float, read_timeout_s: float) -> UpstreamClient:
    if name == "raw":
        from relaymeter.gateway.rawclient import RawClient

        return RawClient(connect_timeout_s, read_timeout_s)
    if name == "httpx":
        return HttpxClient(connect_timeout_s, read_timeout_s)
    return AiohttpClient(connect_timeout_s, read_timeout_s)


# --- provider specifics ----------------------------------------------------------------------


def is_codex(acc: Account) -> bool:
    return acc.provider == "openai" and acc.kind == "oauth"


def base_url(acc: Account) -> str:
    if acc.base_url:
        return acc.base_url.rstrip("/")
    if is_codex(acc):
        return DEFAULT_BASE["codex"]
    return DEFAULT_BASE.get(acc.provider, DEFAULT_BASE["openai"])


def upstream_url(acc: Account, route: str) -> str:
    """Where a route goes for this account. Anthropic bases exclude /v1; OpenAI-style bases include it."""
    base = base_url(acc)
    if acc.provider == "anthropic":
        return (
            base
            + {MESSAGES: "/v1/messages", COUNT_TOKENS: "/v1/messages/count_tokens", MODELS: "/v1/models"}[
                route
            ]
        )
    return base + {CHAT: "/chat/completions", RESPONSES: "/responses", MODELS: "/models"}[route]


def request_headers(acc: Account, client_headers: Any, token: str) -> dict[str, str]:
    """Client headers minus auth and hop-by-hop ones, plus the account's credentials."""
    out: dict[str, str] = {}
    for name, value in client_headers.items():
        lname = name.lower()
        if lname in _DROP_REQUEST:
            continue
        out[lname] = value
    out["accept-encoding"] = "gzip, deflate"
    if acc.provider == "anthropic":
        out.setdefault("anthropic-version", ANTHROPIC_VERSION)
        if acc.kind == "oauth":
            out["authorization"] = f"Bearer {token}"
            betas = [b.strip() for b in out.get("anthropic-beta", "").split(",") if b.strip()]
            if ANTHROPIC_OAUTH_BETA not in betas:
                betas.append(ANTHROPIC_OAUTH_BETA)
            out["anthropic-beta"] = ",".join(betas)
        else:
            out["x-api-key"] = token
        return out
    out["authorization"] = f"Bearer {token}"
    if is_codex(acc):
        account_id = acc.creds.get("account_id")
        if account_id:
            out["chatgpt-account-id"] = str(account_id)
        out.setdefault("openai-beta", "responses=experimental")
        out.setdefault("originator", "codex_cli_rs")
    return out


def response_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Upstream headers relayed to the client (raw ASGI form)."""
    out = []
    for name, value in headers.items():
        if name in _DROP_RESPONSE or name.startswith(_DROP_RESPONSE_PREFIXES):
            continue
        out.append((name.encode("latin-1"), value.encode("latin-1", "replace")))
    return out
