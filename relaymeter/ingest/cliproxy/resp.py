"""RESP usage-queue consumer (redis-py) for CPA versions without the HTTP queue endpoint.

CPA's RESP listener shares its API port and understands only AUTH and (R|L)POP/SUBSCRIBE on
the key ``usage``: the client must not send CLIENT SETINFO, HELLO or health-check PINGs, and
redis-py must not retry a pop on its own (a pop is destructive; our runner decides).
"""

from __future__ import annotations

import ssl as ssl_module
import warnings
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relaymeter.ingest.cliproxy.management import (
    CPAAuthError,
    CPABannedError,
    CPAProtocolError,
    CPAUnavailableError,
    PopResult,
    normalize_base_url,
)

USAGE_KEY = "usage"


class RespQueue:
    """Pops usage records over RESP: ``AUTH <key>`` then ``RPOP usage <count>`` (oldest first)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        password: str | None,
        use_tls: bool = False,
        verify_tls: bool = True,
        db: int = 0,
        key: str = USAGE_KEY,
        timeout: float = 20.0,
    ) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.where = f"{'rediss' if use_tls else 'redis'}://{host}:{port}"
        kwargs: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": db,
            "password": password or None,
            "socket_timeout": timeout,
            "socket_connect_timeout": min(timeout, 10.0),
            "health_check_interval": 0,
            "retry": Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
            "single_connection_client": True,
            "decode_responses": False,
            "protocol": 2,  # RESP3 would start with HELLO, which CPA does not know
            "lib_name": None,
            "lib_version": None,
        }
        if use_tls:
            kwargs["ssl"] = True
            kwargs["ssl_cert_reqs"] = ssl_module.CERT_REQUIRED if verify_tls else ssl_module.CERT_NONE
            kwargs["ssl_check_hostname"] = verify_tls
        with warnings.catch_warnings():
            # lib_name/lib_version are deprecated aliases of driver_info in newer redis-py;
            # they are the spelling every supported version understands.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._client = aioredis.Redis(**kwargs)

    @classmethod
    def for_cpa(
        cls, base_url: str, management_key: str, *, verify_tls: bool = True, timeout: float = 20.0
    ) -> RespQueue:
        """The RESP endpoint of a CPA: same host and port as its HTTP API, TLS when https."""
        parts = urlsplit(normalize_base_url(base_url))
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            password=management_key,
            use_tls=tls,
            verify_tls=verify_tls,
            timeout=timeout,
        )

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # closing a broken connection must never raise
            pass

    async def probe(self) -> None:
        """Connect and authenticate, popping nothing."""
        try:
            await self._client.initialize()  # connects and sends AUTH (single connection client)
        except RedisError as exc:
            raise self._translate(exc) from None
        except OSError as exc:
            raise CPAUnavailableError(f"cannot reach RESP at {self.where}: {exc}") from None

    async def pop(self, count: int) -> PopResult:
        """Up to ``count`` records (a plain Redis answers nil for an empty multi-pop)."""
        if count < 1:
            raise ValueError("count must be a positive integer")
        try:
            reply = await self._client.execute_command("RPOP", self.key, count)
        except RedisError as exc:
            raise self._translate(exc) from None
        except OSError as exc:
            raise CPAUnavailableError(f"RESP connection to {self.where} failed: {exc}") from None
        if reply is None:
            return PopResult()
        items = reply if isinstance(reply, list) else [reply]
        texts = [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in items
            if item is not None
        ]
        return PopResult(items=texts)  # raw texts: parsed after they are spooled

    def _translate(self, exc: RedisError) -> Exception:
        message = str(exc).strip() or type(exc).__name__
        lowered = message.lower()
        if "ban" in lowered:
            return CPABannedError(f"RESP {self.where}: {message}")
        if (
            isinstance(exc, AuthenticationError)
            or "invalid management key" in lowered
            or "invalid password" in lowered
            or "wrongpass" in lowered
            or "noauth" in lowered
            or "authentication required" in lowered
        ):
            return CPAAuthError(
                f"RESP {self.where}: management key refused ({message}); fix the key - "
                "CPA bans an address for 30 minutes after 5 failed attempts"
            )
        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            return CPAUnavailableError(f"RESP connection to {self.where} failed: {message}")
        if isinstance(exc, ResponseError):
            return CPAProtocolError(f"RESP {self.where} refused the pop: {message}")
        return CPAUnavailableError(f"RESP {self.where}: {message}")
