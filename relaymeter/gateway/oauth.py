"""OAuth access tokens of upstream accounts: refreshed before expiry, one refresh per account at a time.

A per-account asyncio lock (plus a Redis lock when several instances share the store) makes
sure one token is never refreshed twice at once; before refreshing, the stored credentials
are re-read in case another instance already did it. A failed refresh marks the account
unhealthy with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from relaymeter.gateway.scheduler import Account, AccountPool
from relaymeter.gateway.upstream import UpstreamClient, UpstreamError
from relaymeter.security import SecretBox
from relaymeter.store import accounts as account_store
from relaymeter.store.db import Database

log = logging.getLogger(__name__)

# Public OAuth clients of the official CLIs (the same ones their own refresh uses).
TOKEN_ENDPOINTS: dict[str, dict[str, str]] = {
    "anthropic": {
        "url": "https://console.anthropic.com/v1/oauth/token",
        "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    },
    "openai": {
        "url": "https://auth.openai.com/oauth/token",
        "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
        "scope": "openid profile email",
    },
}
REFRESH_MARGIN_MS = 5 * 60_000  # refresh when the token expires within this
BACKGROUND_MARGIN_MS = 15 * 60_000  # the background loop refreshes this far ahead


class RefreshError(Exception):
    """The token could not be refreshed; the message says why (no secrets)."""


def _now() -> int:
    return time.time_ns() // 1_000_000


def access_token(acc: Account) -> str:
    creds = acc.creds
    if acc.kind == "oauth":
        return str(creds.get("access_token") or "")
    return str(creds.get("api_key") or "")


class TokenRefresher:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        pool: AccountPool,
        client: Callable[[], UpstreamClient],
        redis: Any = None,
        redis_prefix: str = "relaymeter",
    ) -> None:
        self.db = db
        self.box = box
        self.pool = pool
        self.client = client
        self.redis = redis
        self.redis_prefix = redis_prefix
        self._locks: dict[int, asyncio.Lock] = {}
        self.refreshes = 0  # successful refreshes (tests, metrics)

    def needs_refresh(self, acc: Account, margin_ms: int = REFRESH_MARGIN_MS) -> bool:
        if acc.kind != "oauth" or not acc.creds.get("refresh_token"):
            return False
        if not acc.creds.get("access_token"):
            return True
        return acc.token_expires_ms is not None and acc.token_expires_ms - _now() <= margin_ms

    async def token_for(self, acc: Account) -> str:
        """The credential to send; refreshes an OAuth token that is about to expire."""
        if self.needs_refresh(acc):
            await self.refresh(acc)
        token = access_token(acc)
        if not token:
            raise RefreshError("the account has no credential (add an API key or OAuth token)")
        return token

    async def refresh(self, acc: Account, *, force: bool = False, margin_ms: int = REFRESH_MARGIN_MS) -> None:
        lock = self._locks.setdefault(acc.id, asyncio.Lock())
        async with lock:
            # Someone refreshed while we waited for the lock.
            if not force and not self.needs_refresh(acc, margin_ms):
                return
            async with self._shared_lock(acc.id):
                if await self._adopt_stored(acc) and not force and not self.needs_refresh(acc, margin_ms):
                    return
                try:
                    await self._do_refresh(acc)
                except RefreshError as exc:
                    self.pool.mark_unhealthy(acc, f"token refresh failed: {exc}")
                    raise
            self.pool.on_success(acc)

    @contextlib.asynccontextmanager
    async def _shared_lock(self, account_id: int) -> Any:
        if self.redis is None:
            yield
            return
        name = f"{self.redis_prefix}:gw:oauth-refresh:{account_id}"
        token = str(time.time_ns())
        deadline = time.monotonic() + 30
        while not await self.redis.set(name, token, nx=True, px=30_000):
            if time.monotonic() > deadline:
                raise RefreshError("another instance holds the refresh lock for too long")
            await asyncio.sleep(0.1)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                if await self.redis.get(name) == token:
                    await self.redis.delete(name)

    async def _adopt_stored(self, acc: Account) -> bool:
        """Take credentials another instance stored after refreshing; True when they changed."""
        enc, expires = await account_store.read_credentials(self.db, acc.id)
        if not enc:
            return False
        try:
            creds = orjson.loads(self.box.decrypt(enc))
        except (ValueError, orjson.JSONDecodeError):
            return False
        if creds.get("access_token") == acc.creds.get("access_token"):
            return False
        acc.creds = creds
        acc.token_expires_ms = expires
        return True

    async def _do_refresh(self, acc: Account) -> None:
        endpoint = TOKEN_ENDPOINTS.get(acc.provider)
        refresh_token = acc.creds.get("refresh_token")
        if not refresh_token:
            raise RefreshError("no refresh token stored")
        if endpoint is None:
            raise RefreshError(f"no OAuth token endpoint known for provider {acc.provider}")
        url = endpoint["url"]
        body: dict[str, Any] = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": endpoint["client_id"],
        }
        if endpoint.get("scope"):
            body["scope"] = endpoint["scope"]
        headers = {"content-type": "application/json", "accept": "application/json"}
        try:
            resp = await self.client().send("POST", url, headers, orjson.dumps(body), acc.proxy_url)
            raw = await resp.read()
        except UpstreamError as exc:
            raise RefreshError(f"token endpoint unreachable: {exc}") from None
        if resp.status != 200:
            detail = raw[:200].decode("utf-8", "replace")
            raise RefreshError(f"token endpoint answered {resp.status}: {_safe(detail)}")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RefreshError("token endpoint answered with something that is not JSON") from None
        if not isinstance(doc, dict) or not doc.get("access_token"):
            raise RefreshError("token endpoint answer has no access_token")
        creds = dict(acc.creds)
        creds["access_token"] = doc["access_token"]
        if doc.get("refresh_token"):
            creds["refresh_token"] = doc["refresh_token"]
        if doc.get("id_token"):
            creds["id_token"] = doc["id_token"]
        expires_in = doc.get("expires_in")
        expires_ms = _now() + int(expires_in) * 1000 if isinstance(expires_in, int | float) else None
        creds["last_refresh_ms"] = _now()
        await account_store.save_credentials(
            self.db, acc.id, self.box.encrypt(orjson.dumps(creds).decode()), expires_ms
        )
        acc.creds = creds
        acc.token_expires_ms = expires_ms
        self.refreshes += 1
        log.info("refreshed the OAuth token of account %s", acc.name)

    async def refresh_due(self) -> None:
        """Background: refresh every OAuth token that expires soon (bounded parallelism)."""
        due = [
            a
            for a in self.pool.accounts.values()
            if a.enabled and self.needs_refresh(a, BACKGROUND_MARGIN_MS)
        ]
        sem = asyncio.Semaphore(4)

        async def one(acc: Account) -> None:
            async with sem:
                try:
                    await self.refresh(acc, margin_ms=BACKGROUND_MARGIN_MS)
                except RefreshError as exc:
                    log.warning("account %s: %s", acc.name, exc)

        await asyncio.gather(*(one(a) for a in due))


def _safe(text: str) -> str:
    from relaymeter.domain.redact import redact_text

    return redact_text(text).replace("\n", " ")
