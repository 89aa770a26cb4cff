"""Async client for CLIProxyAPI's management API (/v0/management): config, publishing toggle,
usage queue (HTTP), auth files and the api-call passthrough, with typed errors.

Reused by the collector, the quota engine (api-call) and the CPA-panel reverse proxy (request()).
A 401 raises CPAAuthError: callers must stop and report, because CPA bans an IP for 30 minutes
after five failed attempts.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

MANAGEMENT_PREFIX = "/v0/management"
DEFAULT_RETENTION_S = 60  # CPA's default redis-usage-queue-retention-seconds
USER_AGENT = "relaymeter-cpa-client"


class CPAError(Exception):
    """Any failure talking to CPA; ``kind`` is a stable machine-readable category."""

    kind = "error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CPAAuthError(CPAError):
    """The management key was refused (401 / RESP -ERR invalid management key). Never retry."""

    kind = "auth_failed"


class CPABannedError(CPAAuthError):
    """CPA banned this client address after too many failed attempts (403, 30 minutes)."""

    kind = "banned"


class CPAForbiddenError(CPAError):
    """403 without a ban: remote management is disabled for non-local clients."""

    kind = "forbidden"


class CPANotFoundError(CPAError):
    """404: an endpoint this CPA does not have (older version) or management is disabled."""

    kind = "not_found"


class CPAUnavailableError(CPAError):
    """Network failure, timeout, 5xx or a connection dropped mid-answer: worth retrying later."""

    kind = "unavailable"


class CPAProtocolError(CPAError):
    """CPA answered something this client does not understand."""

    kind = "protocol"


def normalize_base_url(url: str) -> str:
    """``https://host:8317`` from what a user pasted (trailing slash or management path removed)."""
    text = url.strip()
    if not text:
        raise ValueError("CPA URL is empty")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"CPA URL must be http(s)://host[:port], got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith(MANAGEMENT_PREFIX):
        path = path[: -len(MANAGEMENT_PREFIX)]
    return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


def error_text(body: bytes) -> str:
    """The ``error`` message of a CPA JSON error body, else the (shortened) body text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:300]
    if isinstance(data, dict):
        for key in ("error", "message", "status"):
            if isinstance(data.get(key), str):
                return str(data[key])[:300]
    return body.decode("utf-8", "replace").strip()[:300]


@dataclass(slots=True)
class CPAVersion:
    version: str = ""
    commit: str = ""
    build_date: str = ""


@dataclass(slots=True)
class PopResult:
    """Records popped from the usage queue, oldest first.

    Each item is a parsed JSON value, or a str holding a record's raw text still to be parsed
    (RESP items, and records CPA itself could not parse). ``body`` is the JSON array text as
    received when it arrived whole: it is what gets spooled, before anything is parsed.
    ``truncated`` is True when the answer was cut off (connection dropped, or not a JSON
    array): CPA already removed the whole batch, only the complete records are here.
    ``size`` is set when a whole body's records were counted but not kept (``items`` is then
    empty and ``body`` is the only copy of them).
    """

    items: list[Any] = field(default_factory=list)
    body: str | None = None
    truncated: bool = False
    size: int | None = None

    def __len__(self) -> int:
        return len(self.items) if self.size is None else self.size

    def spool_text(self) -> str:
        """The batch as one JSON array text (items keep their raw-or-parsed form)."""
        return self.body if self.body is not None else orjson.dumps(self.items).decode()


@dataclass(slots=True)
class ApiCallResult:
    status_code: int
    header: dict[str, Any]
    body: str

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass(slots=True)
class AuthFileInfo:
    """What relaymeter keeps of one /auth-files entry: enough to name an observed account."""

    auth_index: str
    name: str
    provider: str
    plan: str | None
    email: str | None
    label: str
    disabled: bool
    raw: dict[str, Any]

    @property
    def display_name(self) -> str:
        return self.label or self.email or self.name or self.auth_index


def auth_file_info(entry: dict[str, Any]) -> AuthFileInfo | None:
    """Tolerant reading of one auth-files entry (None when it has no auth_index)."""
    index = entry.get("auth_index", entry.get("authIndex"))
    if index in (None, ""):
        return None
    raw_token = entry.get("id_token")
    id_token: dict[str, Any] = raw_token if isinstance(raw_token, dict) else {}
    plan = None
    for source in (id_token, entry):
        for key in ("plan_type", "plan", "subscription_type", "chatgpt_plan_type"):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                plan = value.strip()[:60]
                break
        if plan:
            break
    email = _text(entry.get("email"))
    label = _text(entry.get("label"))
    name = _text(entry.get("name"))
    provider = entry.get("provider") or entry.get("type") or ""
    return AuthFileInfo(
        auth_index=str(index).strip(),
        name=name.strip()[:200],
        provider=str(provider).strip().lower()[:40],
        plan=plan,
        email=email[:200] or None,
        label=label.strip()[:200],
        disabled=bool(entry.get("disabled")),
        raw=entry,
    )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def split_json_array(body: bytes, *, keep_items: bool = True) -> PopResult:
    """A usage-queue answer as a PopResult.

    A body cut off mid-array yields its complete leading items (truncated=True); a body that
    is not a JSON array at all becomes one raw item, so its content is dead-lettered, not lost.
    Without ``keep_items``, a whole array is parsed only to be checked and counted (``size``).
    """
    if not keep_items:
        # Thousands of containers that die at once: collecting during the parse would only
        # traverse them (and promote them to older generations) for nothing.
        gc.disable()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return salvage_array(body.decode("utf-8", "replace"))
    finally:
        if not keep_items:
            gc.enable()
    text = body.decode("utf-8", "replace")
    if not isinstance(data, list):
        return PopResult(items=[text], truncated=True)
    if not keep_items:
        return PopResult(body=text, size=len(data))
    return PopResult(items=data, body=text)


def salvage_array(text: str) -> PopResult:
    """The complete leading items of a JSON array text that was cut off."""
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        return PopResult(items=[text] if text.strip() else [], truncated=True)
    pos += 1
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        items.append(value)
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        else:
            break
    return PopResult(items=items, truncated=True)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class ManagementClient:
    """One CPA's management API. Use as ``async with ManagementClient(url, key) as cpa: ...``."""

    def __init__(
        self,
        base_url: str,
        management_key: str,
        *,
        timeout: float = 20.0,
        verify: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._key = management_key
        self.version = CPAVersion()
        self._client = httpx.AsyncClient(
            base_url=self.base_url + MANAGEMENT_PREFIX,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            verify=verify,
            transport=transport,
            headers={"Authorization": f"Bearer {management_key}", "User-Agent": USER_AGENT},
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> ManagementClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- low level ---------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """Send one request below /v0/management and return the response whatever its status.

        Only network failures raise (CPAUnavailableError); for pass-through use (CPA panel proxy).
        """
        kwargs: dict[str, Any] = {"params": params, "headers": headers}
        if json_body is not None:
            kwargs["content"] = orjson.dumps(json_body)
            kwargs["headers"] = {"Content-Type": "application/json", **(headers or {})}
        elif content is not None:
            kwargs["content"] = content
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        try:
            response = await self._client.request(method, _rel(path), **kwargs)
        except httpx.TimeoutException as exc:
            raise CPAUnavailableError(f"CPA at {self.base_url} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise CPAUnavailableError(f"cannot reach CPA at {self.base_url}: {_describe(exc)}") from None
        self._note_version(response.headers)
        return response

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """request() + status check: the parsed JSON body, or a typed CPAError."""
        response = await self.request(method, path, **kwargs)
        self.raise_for_status(response.status_code, response.content, path)
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise CPAProtocolError(f"{path}: CPA answered something that is not JSON") from None

    def raise_for_status(self, status: int, body: bytes, path: str) -> None:
        if status < 400:
            return
        message = error_text(body)
        where = f"CPA {self.base_url}{MANAGEMENT_PREFIX}/{_rel(path).split('?')[0]}"
        if status == 401:
            raise CPAAuthError(
                f"{where}: management key refused ({message or 'unauthorized'}); fix the key - "
                "CPA bans an address for 30 minutes after 5 failed attempts",
                status=status,
            )
        if status == 403:
            if "ban" in message.lower():
                raise CPABannedError(f"{where}: {message}", status=status)
            raise CPAForbiddenError(
                f"{where}: {message or 'forbidden'} (enable remote management in CPA's config "
                "or run relaymeter on the CPA host)",
                status=status,
            )
        if status == 404:
            raise CPANotFoundError(f"{where}: not found ({message or '404'})", status=status)
        if status >= 500:
            raise CPAUnavailableError(f"{where}: server error {status}: {message}", status=status)
        raise CPAError(f"{where}: HTTP {status}: {message}", status=status)

    def _note_version(self, headers: httpx.Headers) -> None:
        version = headers.get("x-cpa-version")
        if version:
            self.version = CPAVersion(
                version=version,
                commit=headers.get("x-cpa-commit", ""),
                build_date=headers.get("x-cpa-build-date", ""),
            )

    # -- endpoints -------------------------------------------------------------------------

    async def get_config(self) -> dict[str, Any]:
        data = await self.call("GET", "/config")
        if not isinstance(data, dict):
            raise CPAProtocolError("/config: expected a JSON object")
        return data

    async def retention_seconds(self, config: dict[str, Any] | None = None) -> int:
        """How long CPA keeps queued usage records (its default when the key is absent)."""
        cfg = config if config is not None else await self.get_config()
        value = cfg.get("redis-usage-queue-retention-seconds")
        try:
            seconds = int(value) if value not in (None, "") else 0
        except (TypeError, ValueError):
            seconds = 0
        return seconds if seconds > 0 else DEFAULT_RETENTION_S

    async def usage_statistics_enabled(self) -> bool:
        data = await self.call("GET", "/usage-statistics-enabled")
        if isinstance(data, dict):
            for key in ("usage-statistics-enabled", "value", "enabled"):
                if key in data:
                    return bool(data[key])
        raise CPAProtocolError("/usage-statistics-enabled: unexpected answer")

    async def set_usage_statistics_enabled(self, enabled: bool) -> None:
        """Turn CPA's usage publishing on or off (PUT, PATCH as a fallback)."""
        try:
            await self.call("PUT", "/usage-statistics-enabled", json_body={"value": enabled})
        except CPAError as exc:
            if exc.status not in (404, 405):
                raise
            await self.call("PATCH", "/usage-statistics-enabled", json_body={"value": enabled})

    async def pop_usage(self, count: int, *, keep_items: bool = True) -> PopResult:
        """GET /usage-queue?count=N: up to N records, oldest first (destructive on CPA's side).

        Without ``keep_items`` a whole answer comes back as its text and record count only."""
        if count < 1:
            raise ValueError("count must be a positive integer")
        chunks: list[bytes] = []
        try:
            async with self._client.stream("GET", "usage-queue", params={"count": count}) as response:
                self._note_version(response.headers)
                if response.status_code >= 400:
                    body = await response.aread()
                    self.raise_for_status(response.status_code, body, "/usage-queue")
                try:
                    async for chunk in response.aiter_bytes():
                        chunks.append(chunk)
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, httpx.DecodingError):
                    return salvage_array(b"".join(chunks).decode("utf-8", "replace"))
        except httpx.TimeoutException as exc:
            raise CPAUnavailableError(f"CPA at {self.base_url} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise CPAUnavailableError(f"cannot reach CPA at {self.base_url}: {_describe(exc)}") from None
        body = b"".join(chunks)
        if not body.strip():
            return PopResult()
        return split_json_array(body, keep_items=keep_items)

    async def probe_usage_queue(self) -> bool:
        """Whether this CPA has the HTTP usage queue, without popping anything.

        ``count=0`` is rejected with 400 by CPAs that have the endpoint (nothing is popped)
        and answered 404 by older ones.
        """
        response = await self.request("GET", "/usage-queue", params={"count": 0})
        if response.status_code == 404:
            return False
        if response.status_code in (400, 200):
            return True
        self.raise_for_status(response.status_code, response.content, "/usage-queue")
        return True

    async def auth_files(
        self, *, name: str | None = None, auth_index: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("name", name), ("auth_index", auth_index)) if v}
        data = await self.call("GET", "/auth-files", params=params or None)
        files = data.get("files") if isinstance(data, dict) else data
        if not isinstance(files, list):
            raise CPAProtocolError('/auth-files: expected {"files": [...]}')
        return [f for f in files if isinstance(f, dict)]

    async def auth_file_infos(self) -> dict[str, AuthFileInfo]:
        """auth_index -> account facts, for naming observed accounts."""
        out: dict[str, AuthFileInfo] = {}
        for entry in await self.auth_files():
            info = auth_file_info(entry)
            if info is not None:
                out[info.auth_index] = info
        return out

    async def api_call(
        self,
        auth_index: str,
        method: str,
        url: str,
        *,
        header: dict[str, str] | None = None,
        data: str | None = None,
        timeout_s: float = 60.0,
    ) -> ApiCallResult:
        """Have CPA perform an HTTP call with one of its accounts' credentials.

        Put ``$TOKEN$`` in a header value where the account's access token belongs. Raises
        CPAError with CPA's message on 400 (no token / refresh failed) and 502.
        """
        payload: dict[str, Any] = {"auth_index": auth_index, "method": method.upper(), "url": url}
        if header:
            payload["header"] = header
        if data is not None:
            payload["data"] = data
        result = await self.call("POST", "/api-call", json_body=payload, timeout_s=timeout_s)
        if not isinstance(result, dict) or "status_code" not in result:
            raise CPAProtocolError("/api-call: expected {status_code, header, body}")
        body = result.get("body")
        if body is None:
            body = ""
        elif not isinstance(body, str):
            body = orjson.dumps(body).decode()
        header_out = result.get("header") if isinstance(result.get("header"), dict) else {}
        try:
            status_code = int(result["status_code"])
        except (TypeError, ValueError):
            raise CPAProtocolError("/api-call: status_code is not a number") from None
        return ApiCallResult(status_code=status_code, header=header_out or {}, body=body)


def _rel(path: str) -> str:
    """Paths are relative to /v0/management (httpx joins a leading-slash path onto the base)."""
    return path.lstrip("/")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
