"""CPA panel mode: relaymeter stands in for CPA-Manager's usage service under /v0/management.

CPA's own management panel, pointed at relaymeter, reads usage from here (CPA's legacy
usage payload built from relaymeter's store), exports / imports it, reads and sets model
prices, and every other /v0/management/* call is reverse-proxied to the CPA at
``cpa_panel_url``. Callers send CPA's management key (``Authorization: Bearer <key>``, the
raw key, or ``X-Management-Key``); relaymeter checks it itself before anything reaches CPA,
and five wrong keys from one address ban it for 30 minutes, like CPA does. Errors use CPA's
``{"error": "..."}`` shape. Browser access is governed by ``cpa_panel_cors_origins``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relaymeter.api.auth import client_ip, is_admin
from relaymeter.api.jsonresponse import FastJSONResponse
from relaymeter.domain.cpa_snapshot import build_snapshot
from relaymeter.domain.pricing import PriceError, price_from_usd
from relaymeter.domain.windows import now_ms, zone
from relaymeter.ingest import files
from relaymeter.ingest.cliproxy.management import normalize_base_url
from relaymeter.pricing.service import reload_pricer
from relaymeter.state import AppState, get_state
from relaymeter.store import audit, queries
from relaymeter.store import collector as collector_store
from relaymeter.store import prices as price_store

log = logging.getLogger(__name__)

PREFIX = "/v0/management"
MAX_FAILURES = 5
BAN_S = 30 * 60
KEY_CACHE_S = 30.0
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_EXPOSED = "X-CPA-VERSION, X-CPA-COMMIT, X-CPA-BUILD-DATE, Content-Disposition"


class PanelError(Exception):
    """An error answered in CPA's shape: {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# --- management key check -----------------------------------------------------------------------


class _Guard:
    """Failed-key counter per client address and a short cache of the accepted keys."""

    def __init__(self) -> None:
        self.failures: dict[str, list[float]] = {}
        self.banned_until: dict[str, float] = {}
        self.keys: list[str] = []
        self.keys_at = 0.0
        self.keys_for: tuple[Any, ...] = ()

    def banned_for(self, ip: str) -> float:
        until = self.banned_until.get(ip, 0.0)
        left = until - time.monotonic()
        if left <= 0:
            self.banned_until.pop(ip, None)
            return 0.0
        return left

    def fail(self, ip: str) -> None:
        now = time.monotonic()
        recent = [t for t in self.failures.get(ip, []) if t > now - BAN_S] + [now]
        self.failures[ip] = recent
        if len(recent) >= MAX_FAILURES:
            self.banned_until[ip] = now + BAN_S
            self.failures.pop(ip, None)

    def success(self, ip: str) -> None:
        self.failures.pop(ip, None)


def _guard(state: AppState) -> _Guard:
    guard = state.services.get("_cpa_panel_guard")
    if not isinstance(guard, _Guard):
        guard = _Guard()
        state.services["_cpa_panel_guard"] = guard
    return guard


def presented_key(request: Request) -> str:
    header = request.headers.get("authorization", "").strip()
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    if header:
        return header
    return request.headers.get("x-management-key", "").strip()


async def connection_key(state: AppState) -> str | None:
    """The management key of the CPA connection whose URL is cpa_panel_url, decrypted."""
    url = state.settings.cpa_panel_url
    if not url:
        return None
    try:
        target = normalize_base_url(url)
    except ValueError:
        return None
    for row in await collector_store.list_connections(state.db):
        try:
            if normalize_base_url(row.base_url) == target:
                return state.box.decrypt(row.management_key_enc)
        except Exception:  # a row whose key cannot be decrypted is skipped
            log.warning("CPA connection %s: cannot decrypt its management key", row.name)
    return None


async def accepted_keys(state: AppState) -> list[str]:
    guard = _guard(state)
    setting = state.settings.cpa_panel_key
    stamp = (state.settings.cpa_panel_url, setting.get_secret_value() if setting else None)
    if guard.keys_for == stamp and time.monotonic() - guard.keys_at < KEY_CACHE_S:
        return guard.keys
    keys = []
    if setting is not None and setting.get_secret_value():
        keys.append(setting.get_secret_value())
    from_connection = await connection_key(state)
    if from_connection:
        keys.append(from_connection)
    guard.keys, guard.keys_at, guard.keys_for = keys, time.monotonic(), stamp
    return keys


async def require_panel_key(request: Request) -> str:
    """Dependency of every /v0/management route: returns the actor for the audit log."""
    state = get_state(request)
    guard = _guard(state)
    ip = client_ip(request)
    left = guard.banned_for(ip)
    if left:
        minutes, seconds = divmod(int(left), 60)
        raise PanelError(403, f"IP banned due to too many failed attempts. Try again in {minutes}m{seconds}s")
    key = presented_key(request)
    if await is_admin(request):
        return "admin"
    if not key:
        raise PanelError(401, "missing management key")
    keys = await accepted_keys(state)
    if not keys:
        raise PanelError(
            403,
            "relaymeter has no management key for the CPA panel: set cpa_panel_key, "
            "or add a CPA connection whose URL is cpa_panel_url",
        )
    if any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        guard.success(ip)
        return "cpa-panel"
    guard.fail(ip)
    await audit.record(state.db, "cpa_panel.key_rejected", actor="anonymous", client_ip=ip)
    raise PanelError(401, "invalid management key")


PanelDep = Depends(require_panel_key)
router = APIRouter(prefix=PREFIX, tags=["cpa panel"])


# --- response models (documentation; large payloads are sent without re-validation) ---------------


class CpaTokens(BaseModel):
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cache_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    total_tokens: int


class CpaDetail(BaseModel):
    timestamp: str = Field(description="RFC 3339 in the configured time zone")
    source: str = Field(description="masked account (email shortened, keys reduced to their ends)")
    auth_index: str
    tokens: CpaTokens
    failed: bool
    latency_ms: int | None = None
    request_id: str | None = None
    provider: str | None = None
    event_hash: str | None = None


class CpaModel(BaseModel):
    total_requests: int
    success_count: int
    failure_count: int
    total_tokens: int
    details: list[CpaDetail] = Field(description="newest first")


class CpaApi(BaseModel):
    total_requests: int
    success_count: int
    failure_count: int
    total_tokens: int
    models: dict[str, CpaModel]


class CpaSnapshot(BaseModel):
    total_requests: int
    success_count: int
    failure_count: int
    total_tokens: int
    apis: dict[str, CpaApi] = Field(description="keyed by endpoint, e.g. 'POST /v1/messages'")
    requests_by_day: dict[str, int]
    requests_by_hour: dict[str, int] = Field(description="keyed by hour of day '00'..'23'")
    tokens_by_day: dict[str, int]
    tokens_by_hour: dict[str, int]


class CpaUsageOut(BaseModel):
    usage: CpaSnapshot
    failed_requests: int


class CpaExportOut(BaseModel):
    version: int
    exported_at: str
    usage: CpaSnapshot


class CpaImportOut(BaseModel):
    added: int
    skipped: int
    failed: int = Field(description="records that could not become events (kept in dead letters)")
    format: str
    total_requests: int = Field(description="requests stored after the import")
    failed_requests: int


class CpaPrice(BaseModel):
    prompt: float = Field(ge=0, le=1_000_000, description="USD per 1M input tokens")
    completion: float = Field(ge=0, le=1_000_000, description="USD per 1M output tokens")
    cache: float | None = Field(
        None, ge=0, le=1_000_000, description="USD per 1M cache-read tokens (default: prompt)"
    )


class CpaPricesOut(BaseModel):
    prices: dict[str, CpaPrice]


class CpaPricesIn(BaseModel):
    prices: dict[str, CpaPrice]


class CpaError(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": CpaError, "description": "missing or invalid management key"},
    403: {"model": CpaError, "description": "address banned after failed keys, or no key configured"},
}


# --- usage -----------------------------------------------------------------------------------


async def _snapshot(state: AppState, limit: int) -> dict[str, Any]:
    rows = await queries.newest_events(state.db, limit)
    return build_snapshot(rows, zone(state.settings.timezone))


_LIMIT_DOC = "newest events included (default: cpa_panel_detail_limit)"


@router.get("/usage", response_model=None, responses={200: {"model": CpaUsageOut}, **_ERRORS})
async def usage(
    request: Request,
    limit: int | None = Query(None, ge=1, le=1_000_000, description=_LIMIT_DOC),
    _actor: str = PanelDep,
) -> Response:
    """CPA's legacy usage payload over the newest events (apis keyed by endpoint, details newest first)."""
    state = get_state(request)
    snap = await _snapshot(state, limit or state.settings.cpa_panel_detail_limit)
    return FastJSONResponse({"usage": snap, "failed_requests": snap["failure_count"]})


@router.get("/usage/export", response_model=None, responses={200: {"model": CpaExportOut}, **_ERRORS})
async def usage_export(
    request: Request,
    limit: int | None = Query(None, ge=1, le=1_000_000, description=_LIMIT_DOC),
    _actor: str = PanelDep,
) -> Response:
    """CPA's usage export document ({version, exported_at, usage}); importable by CPA and relaymeter."""
    state = get_state(request)
    snap = await _snapshot(state, limit or state.settings.cpa_panel_detail_limit)
    exported = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    name = f"usage-export-{exported[:10]}.json"
    return FastJSONResponse(
        {"version": 1, "exported_at": exported, "usage": snap},
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def _store_totals(state: AppState) -> tuple[int, int]:
    async with state.db.connect() as conn:
        rows = await queries.grouped_metrics(conn, 0, now_ms() + 1)
    m = rows.get(())
    return (m.requests, m.failures) if m else (0, 0)


@router.post(
    "/usage/import",
    response_model=CpaImportOut,
    responses={400: {"model": CpaError, "description": "the document cannot be imported"}, **_ERRORS},
    openapi_extra={
        "requestBody": {
            "description": "a CPA usage export ({version, usage}) or any file relaymeter imports (JSONL, JSON)",
            "content": {"application/json": {"schema": {"type": "object"}}},
            "required": True,
        }
    },
)
async def usage_import(request: Request, actor: str = PanelDep) -> dict[str, Any]:
    """Merge an exported usage document into relaymeter's store (duplicates are skipped)."""
    state = get_state(request)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    result = await files.import_chunks(
        state.db,
        state.writer,
        body(),
        name="cpa-panel import",
        source=files.DEFAULT_SOURCE,
        keep_raw=state.settings.store_raw_payloads,
    )
    if result.error:
        raise PanelError(400, result.error)
    if result.records == 0:
        raise PanelError(400, "the request body holds no usage records (send CPA's usage export JSON)")
    await audit.record(
        state.db,
        "usage.import",
        actor=actor,
        target="cpa-panel",
        detail=result.to_dict(),
        client_ip=client_ip(request),
    )
    total, failed = await _store_totals(state)
    return {
        "added": result.added,
        "skipped": result.skipped,
        "failed": result.failed,
        "format": result.format,
        "total_requests": total,
        "failed_requests": failed,
    }


# --- model prices ----------------------------------------------------------------------------


async def _prices(state: AppState) -> dict[str, Any]:
    """Effective prices of every model seen in usage, plus every user override."""
    pricer = await price_store.load_pricer(state.db)
    out: dict[str, Any] = {}
    names = set(await queries.models_in_use(state.db))
    names |= {(e.model, e.provider) for e in await price_store.load_entries(state.db, "override")}
    for model, provider in sorted(names):
        if not model or model in out:
            continue
        match = pricer.price(model, provider)
        if match is None:
            continue
        price = match.entry.price
        cache = price.cache_read if price.cache_read is not None else price.input
        out[model] = {
            "prompt": price.input / 1_000_000,
            "completion": price.output / 1_000_000,
            "cache": cache / 1_000_000,
        }
    return {"prices": out}


@router.get("/model-prices", response_model=CpaPricesOut, responses=_ERRORS)
async def get_model_prices(request: Request, _actor: str = PanelDep) -> dict[str, Any]:
    """Prices in USD per 1M tokens (prompt / completion / cache read) for the models in use."""
    return await _prices(get_state(request))


@router.put(
    "/model-prices",
    response_model=CpaPricesOut,
    responses={400: {"model": CpaError, "description": "a price is not valid"}, **_ERRORS},
)
async def put_model_prices(request: Request, body: CpaPricesIn, actor: str = PanelDep) -> dict[str, Any]:
    """Set user prices (overrides) for the listed models; other prices are left as they are."""
    state = get_state(request)
    parsed = {}
    for model, p in body.prices.items():
        name = model.strip()
        if not name or len(name) > 200:
            raise PanelError(400, f"model name {model[:40]!r}: 1 to 200 characters")
        try:
            parsed[name] = price_from_usd(
                input=str(p.prompt),
                output=str(p.completion),
                cache_read=None if p.cache is None else str(p.cache),
            )
        except PriceError as exc:
            raise PanelError(400, f"{name}: {exc}") from None
    for name, price in parsed.items():
        await price_store.set_override(state.db, name, "", price)
    if parsed:
        await reload_pricer(state)
        await audit.record(
            state.db,
            "prices.set",
            actor=actor,
            target=",".join(parsed)[:200],
            detail={"via": "cpa panel", "models": sorted(parsed)},
            client_ip=client_ip(request),
        )
    return await _prices(state)


# --- reverse proxy -----------------------------------------------------------------------------


class PanelProxy:
    """The pooled HTTP client that forwards other /v0/management calls to CPA."""

    name = "cpa-panel"

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0), follow_redirects=False)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.client.aclose()


def cpa_panel_service(state: AppState) -> PanelProxy | None:
    return PanelProxy(state) if state.settings.cpa_panel_url else None


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"], include_in_schema=False
)
async def proxy(path: str, request: Request, _actor: str = PanelDep) -> Response:
    state = get_state(request)
    base = state.settings.cpa_panel_url
    service = state.services.get("cpa-panel")
    if not base or not isinstance(service, PanelProxy):
        raise PanelError(
            503, "relaymeter is not connected to a CPA: set cpa_panel_url to use the rest of the panel"
        )
    target = normalize_base_url(base) + PREFIX + "/" + path
    if request.url.query:
        target += "?" + request.url.query
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
    upstream_key = await connection_key(state)
    if upstream_key:  # admins and keys accepted here reach CPA with the connection's own key
        headers = [(k, v) for k, v in headers if k.lower() not in ("authorization", "x-management-key")]
        headers.append(("Authorization", f"Bearer {upstream_key}"))
    headers.append(("X-Forwarded-For", client_ip(request)))
    body = await request.body()
    try:
        upstream = await service.client.send(
            service.client.build_request(
                request.method,
                target,
                headers=headers,
                content=body,
            ),
            stream=True,
        )
    except httpx.TimeoutException:
        raise PanelError(504, f"CPA at {base} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise PanelError(502, f"CPA at {base} is unreachable: {type(exc).__name__}") from None
    out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=out_headers,
        background=BackgroundTask(upstream.aclose),
    )


# --- CORS for the panel (a browser page served by CPA calls relaymeter) -------------------------------


class PanelCORS:
    """CORS for /v0/management only, from cpa_panel_cors_origins; other paths are untouched."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.any = "*" in origins
        self.origins = {o.rstrip("/") for o in origins}

    def _allowed(self, origin: str) -> bool:
        return self.any or origin.rstrip("/") in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if not origin or not self._allowed(origin):
            await self.app(scope, receive, send)
            return
        allow_origin = "*" if self.any else origin
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            response = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": allow_origin,
                    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                    "Access-Control-Allow-Headers": headers.get(
                        "access-control-request-headers", "Authorization, Content-Type, X-Management-Key"
                    ),
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
            await response(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if not k.lower().startswith(b"access-control-")
                ]
                raw += [
                    (b"access-control-allow-origin", allow_origin.encode("latin-1")),
                    (b"access-control-expose-headers", _EXPOSED.encode()),
                    (b"vary", b"Origin"),
                ]
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def install(app: FastAPI, origins: list[str]) -> None:
    """Add the panel routes, their error shape and their CORS handling to the app."""

    async def _panel_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PanelError)
        return FastJSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    app.add_exception_handler(PanelError, _panel_error)
    app.include_router(router)
    if origins:
        app.add_middleware(PanelCORS, origins=origins)
