"""/v1/* relay routes: raw Starlette endpoints that authenticate, admit, pick an account and relay.

The response body is relayed as the upstream sent it (streamed chunk by chunk for SSE);
usage is read on the side. Failover to another account happens only before the first byte
reaches the client. Every admitted request ends as exactly one usage event handed to the
writer queue (never awaited), priced in memory so budgets see the cost at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.limits import Denial, fmt_reset
from relaymeter.domain.redact import redact_text, sha256_hex
from relaymeter.gateway import metrics
from relaymeter.gateway import usage_parsers as up
from relaymeter.gateway.errors import ANTHROPIC, OPENAI, error_response
from relaymeter.gateway.oauth import RefreshError
from relaymeter.gateway.scheduler import CHAT, COUNT_TOKENS, MESSAGES, MODELS, RESPONSES, Account
from relaymeter.gateway.service import GatewayService, KeyRecord
from relaymeter.gateway.upstream import (
    UpstreamError,
    UpstreamResponse,
    is_codex,
    request_headers,
    response_headers,
    upstream_url,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
RETRYABLE = frozenset({401, 403, 408, 429, 500, 502, 503, 504, 529})
MODEL_CACHE_MS = 10 * 60_000

_ROUTES = {
    MESSAGES: ("/v1/messages", ANTHROPIC, up.ANTHROPIC),
    COUNT_TOKENS: ("/v1/messages/count_tokens", ANTHROPIC, up.ANTHROPIC),
    CHAT: ("/v1/chat/completions", OPENAI, up.CHAT),
    RESPONSES: ("/v1/responses", OPENAI, up.RESPONSES),
}


_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)


def next_id() -> str:
    """A process-unique id (random per-process prefix + counter): cheaper than urandom per request."""
    return f"{_ID_PREFIX}{next(_id_counter):x}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RawResponse(Response):
    """A complete body with pre-encoded headers (skips Starlette's header building)."""

    def __init__(self, body: bytes, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.status_code = status
        self.background = None
        self.raw_headers = [*raw_headers, (b"content-length", str(len(body)).encode())]


@dataclass(slots=True, eq=False)
class Ctx:
    gw: GatewayService
    route: str
    path: str
    dialect: str
    parse_dialect: str
    key: KeyRecord
    model: str
    stream: bool
    body: bytes
    payload: dict[str, Any]
    lease: str
    request_id: str
    start_ms: int
    t0: int
    client_ip: str | None
    user_agent: str | None
    query: str
    headers: dict[str, str]
    session: str | None = None
    strip_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    account: Account | None = None
    acc_lease: str = ""
    mapped_model: str = ""
    ttft_ms: int | None = None
    done: bool = False


# --- entry points --------------------------------------------------------------------------


def _gateway(app: Any) -> GatewayService | None:
    # The state's dict directly: ``app.state.rm`` goes through State.__getattr__ after a failed
    # normal lookup (an AttributeError raised and caught on every request).
    rm = app.state._state.get("rm")
    service = rm.services.get("gateway") if rm is not None else None
    return service if isinstance(service, GatewayService) else None


def header_dict(scope: Scope) -> dict[str, str]:
    """The request headers as a dict (names lower-case; the first of repeated names wins)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1")
        if key not in out:
            out[key] = value.decode("latin-1")
    return out


def _authenticate(
    gw: GatewayService, headers: dict[str, str], dialect: str, route: str
) -> KeyRecord | Response:
    secret = headers.get("x-api-key")
    if not secret:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            secret = auth[7:].strip()
    if not secret:
        metrics.REJECTED.labels(route, "auth").inc()
        return error_response(
            dialect,
            401,
            "missing API key: send your relaymeter key as the x-api-key header or as Authorization: Bearer <key>",
            code="missing_api_key",
        )
    key = gw.lookup_key(secret)
    if key is None:
        metrics.REJECTED.labels(route, "auth").inc()
        return error_response(dialect, 401, "invalid API key", code="invalid_api_key")
    refusal = key.refusal(gw.clock())
    if refusal:
        metrics.REJECTED.labels(route, "auth").inc()
        return error_response(dialect, 401, refusal, code="invalid_api_key")
    return key


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left first."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                parts.append(chunk)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)
        elif message["type"] == "http.disconnect":
            return None


def _denial_response(gw: GatewayService, dialect: str, denial: Denial) -> Response:
    now = gw.clock()
    headers = {"x-relaymeter-limit": denial.limit}
    retry = denial.retry_after_s(now)
    if retry is not None:
        headers["retry-after"] = str(retry)
    extra: dict[str, Any] = {"limit": denial.limit}
    if denial.reset_ms is not None:
        extra["resets_at"] = fmt_reset(denial.reset_ms, gw.tz)
    code = "rate_limit_exceeded" if denial.status == 429 else "budget_exceeded"
    return error_response(dialect, denial.status, denial.message, code=code, headers=headers, extra=extra)


def _make_endpoint(route: str) -> Any:
    path, dialect, parse_dialect = _ROUTES[route]

    async def endpoint(request: Request) -> Response:
        return await handle(request.scope, request.receive)

    async def handle(scope: Scope, receive: Receive) -> Response:
        gw = _gateway(scope["app"])
        if gw is None:
            return error_response(dialect, 503, "the gateway is not running (gateway_enabled is off)")
        headers = header_dict(scope)
        auth = _authenticate(gw, headers, dialect, route)
        if isinstance(auth, Response):
            return auth
        key = auth
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return error_response(dialect, 413, f"request body larger than {MAX_BODY_BYTES // 2**20} MiB")
        body = await _read_body(receive)
        if body is None:
            return Response(status_code=499)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            metrics.REJECTED.labels(route, "bad_request").inc()
            return error_response(dialect, 400, f"request body is not valid JSON: {exc}", code="invalid_json")
        if not isinstance(payload, dict):
            return error_response(dialect, 400, "request body must be a JSON object", code="invalid_json")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            metrics.REJECTED.labels(route, "bad_request").inc()
            return error_response(dialect, 400, "model: a model name is required", code="missing_model")
        if not key.allows(model):
            metrics.REJECTED.labels(route, "model").inc()
            return error_response(
                dialect,
                403,
                f"this API key may not use model {model!r} (allowed: {', '.join(key.models or ())})",
                code="model_not_allowed",
            )
        stream = payload.get("stream") is True and route != COUNT_TOKENS
        now = gw.clock()
        lease = next_id()
        reserve = gw.reservation(
            key, "", model, len(body), payload.get("max_tokens") or payload.get("max_output_tokens")
        )
        try:
            denial = await gw.counters.admit_key(key.limits, lease, reserve, now)
        except Exception as exc:  # shared counters unreachable: refuse rather than run unlimited
            log.error("admission failed: %s", exc)
            return error_response(dialect, 503, f"limits store unavailable: {type(exc).__name__}")
        if denial is not None:
            metrics.REJECTED.labels(route, denial.limit).inc()
            return _denial_response(gw, dialect, denial)
        client = scope.get("client")
        ctx = Ctx(
            gw=gw,
            route=route,
            path=path,
            dialect=dialect,
            parse_dialect=parse_dialect,
            key=key,
            model=model,
            stream=stream,
            body=body,
            payload=payload,
            lease=lease,
            request_id="rm_" + lease,
            start_ms=now,
            t0=time.perf_counter_ns(),
            client_ip=client[0] if client else None,
            user_agent=headers.get("user-agent"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
        )
        if len(gw.pool.accounts) > 1:
            ctx.session = f"{key.id}:{session_key(route, payload, headers)}"
        if route == CHAT and stream:
            options = payload.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                ctx.extra["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
                ctx.strip_usage = True
        try:
            return await _relay(ctx)
        except BaseException:
            await _finalize(ctx, status=500, error_kind="gateway_error", error_message="internal error")
            raise

    endpoint.__name__ = f"relay_{route}"
    endpoint.handle = handle  # type: ignore[attr-defined]
    return endpoint


def session_key(route: str, payload: dict[str, Any], headers: Any) -> str:
    """The session a request belongs to (for sticky routing): explicit ids first, else a content hash."""
    for name in ("x-claude-code-session-id", "session_id", "x-session-id", "conversation_id"):
        value = headers.get(name)
        if value:
            return "h:" + value[:200]
    if route in (MESSAGES, COUNT_TOKENS):
        meta = payload.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("user_id"), str) and meta["user_id"]:
            return "u:" + meta["user_id"][:300]
    else:
        cache_key = payload.get("prompt_cache_key")
        if isinstance(cache_key, str) and cache_key:
            return "p:" + cache_key[:300]
    messages = payload.get("messages")
    if messages is None:
        messages = payload.get("input")
    system = payload.get("system") if route in (MESSAGES, COUNT_TOKENS) else payload.get("instructions")
    first = messages[:1] if isinstance(messages, list) else messages
    try:
        raw = orjson.dumps([system, first])
    except TypeError:
        raw = repr((system, first)).encode()
    return "m:" + hashlib.blake2b(raw, digest_size=12).hexdigest()


# --- relaying ------------------------------------------------------------------------------


def _upstream_body(ctx: Ctx, acc: Account) -> bytes:
    mapped = acc.map_model(ctx.model)
    ctx.mapped_model = mapped
    changes: dict[str, Any] = dict(ctx.extra)
    if mapped != ctx.model:
        changes["model"] = mapped
    if is_codex(acc) and ctx.route == RESPONSES:
        if not ctx.stream:
            changes["stream"] = True  # the Codex backend only streams; we aggregate for the client
        if ctx.payload.get("store") is not False:
            changes["store"] = False
    if not changes:
        return ctx.body
    return orjson.dumps({**ctx.payload, **changes})


def _observe(ctx: Ctx, acc: Account, status: int, headers: dict[str, str]) -> None:
    quota = ctx.gw.state.services.get("quota")
    if quota is None:
        return
    try:
        quota.observe_headers(acc.id, acc.provider, status, headers)
        if status == 429:
            hook = getattr(quota, "on_rate_limited", None)
            if hook is not None:
                hook(acc.id)
    except Exception:
        log.exception("quota hook failed")


async def _acquire(ctx: Ctx, acc: Account) -> bool:
    lease = next_id()
    try:
        reason = await ctx.gw.counters.acquire_account(acc.caps, lease, ctx.gw.clock())
    except Exception as exc:
        log.error("account admission failed: %s", exc)
        return False
    if reason is not None:
        return False
    ctx.account = acc
    ctx.acc_lease = lease
    acc.in_flight += 1
    return True


async def _release_attempt(ctx: Ctx, acc: Account) -> None:
    """Give back an account slot after an attempt that failed over (not served)."""
    acc.in_flight -= 1
    lease, ctx.account, ctx.acc_lease = ctx.acc_lease, None, ""
    with contextlib.suppress(Exception):
        await ctx.gw.counters.release_account(
            acc.caps, lease, served=False, tokens=0, cost=0, now_ms=ctx.gw.clock()
        )


async def _relay(ctx: Ctx) -> Response:
    gw = ctx.gw
    pool = gw.pool
    max_attempts = gw.settings.gateway_max_attempts
    exclude: set[int] = set()
    attempts = 0
    last_error: tuple[int, dict[str, str], bytes] | None = None
    last_exc: str | None = None
    while attempts < max_attempts:
        acc = pool.pick(ctx.route, ctx.model, session=ctx.session, exclude=exclude)
        if acc is None:
            break
        exclude.add(acc.id)
        if not await _acquire(ctx, acc):
            continue
        attempts += 1
        if attempts > 1:
            metrics.FAILOVERS.labels(ctx.route).inc()
        try:
            token = await gw.oauth.token_for(acc)
        except RefreshError as exc:
            last_exc = f"account {acc.name}: {exc}"
            await _release_attempt(ctx, acc)
            continue
        url = upstream_url(acc, ctx.route)
        if ctx.query:
            url += "?" + ctx.query
        headers = request_headers(acc, ctx.headers, token)
        body = _upstream_body(ctx, acc)
        acc.last_used_ms = ctx.start_ms
        try:
            resp = await gw.client().send("POST", url, headers, body, acc.proxy_url)
        except UpstreamError as exc:
            metrics.UPSTREAM_ERRORS.labels(acc.name, "connect").inc()
            pool.on_transport_error(acc, str(exc))
            last_exc = f"account {acc.name}: {exc}"
            await _release_attempt(ctx, acc)
            continue
        status = resp.status
        _observe(ctx, acc, status, resp.headers)
        if status >= 400:
            try:
                err_body = await resp.read()
            except UpstreamError as exc:
                err_body = str(exc).encode()
            message = up.error_message_of(err_body)
            metrics.UPSTREAM_ERRORS.labels(acc.name, str(status)).inc()
            pool.on_status(acc, status, resp.headers, message)
            if status == 401 and acc.kind == "oauth" and acc.creds.get("refresh_token"):
                gw.oauth_refresh_soon(acc)
            if status in RETRYABLE:
                last_error = (status, resp.headers, err_body)
                await _release_attempt(ctx, acc)
                continue
            await _finalize(ctx, status=status, error_kind="upstream_error", error_message=message)
            return RawResponse(err_body, status, response_headers(resp.headers))
        if ctx.stream:
            it = resp.chunks().__aiter__()
            try:
                first = await it.__anext__()
            except StopAsyncIteration:
                first = b""
            except UpstreamError as exc:
                metrics.UPSTREAM_ERRORS.labels(acc.name, "stream").inc()
                pool.on_transport_error(acc, str(exc))
                last_exc = f"account {acc.name}: {exc}"
                await resp.close()
                await _release_attempt(ctx, acc)
                continue
            pool.on_success(acc)
            tracker = up.StreamTracker(ctx.parse_dialect, strip_usage_chunk=ctx.strip_usage)
            return RelayStream(ctx, resp, it, first, tracker, status)
        try:
            raw = await resp.read()
        except UpstreamError as exc:
            metrics.UPSTREAM_ERRORS.labels(acc.name, "read").inc()
            pool.on_transport_error(acc, str(exc))
            last_exc = f"account {acc.name}: {exc}"
            await _release_attempt(ctx, acc)
            continue
        pool.on_success(acc)
        return await _complete_body(ctx, acc, resp, raw)
    # Nothing served the request.
    if last_error is not None:
        status, headers, err_body = last_error
        await _finalize(
            ctx, status=status, error_kind="upstream_error", error_message=up.error_message_of(err_body)
        )
        return RawResponse(err_body, status, response_headers(headers))
    if last_exc is not None:
        await _finalize(ctx, status=502, error_kind="upstream_unreachable", error_message=last_exc)
        return error_response(
            ctx.dialect, 502, f"upstream unreachable: {last_exc}", code="upstream_unreachable"
        )
    reason = pool.why_none(ctx.route, ctx.model)
    metrics.REJECTED.labels(ctx.route, "no_account").inc()
    await _finalize(ctx, status=503, error_kind="no_account", error_message=reason)
    headers_out: dict[str, str] = {}
    back = pool.next_available_ms(ctx.route, ctx.model)
    if back is not None:
        headers_out["retry-after"] = str(max(1, -(-(back - gw.clock()) // 1000)))
    return error_response(ctx.dialect, 503, reason, code="no_upstream_available", headers=headers_out)


async def _complete_body(ctx: Ctx, acc: Account, resp: UpstreamResponse, raw: bytes) -> Response:
    headers = resp.headers
    if is_codex(acc) and ctx.route == RESPONSES and not ctx.stream:
        # Aggregate the Codex stream into the JSON body a non-streaming client expects.
        tracker = up.StreamTracker(up.RESPONSES)
        tracker.feed(raw)
        tracker.finish()
        if tracker.final_response is None:
            message = tracker.error or "the upstream stream ended without a completed response"
            await _finalize(ctx, status=502, error_kind="upstream_error", error_message=message)
            return error_response(ctx.dialect, 502, message, code="upstream_error")
        raw = orjson.dumps(tracker.final_response)
        headers = {k: v for k, v in headers.items() if k != "content-type"}
        headers["content-type"] = "application/json"
        usage = tracker.usage
    else:
        usage, _doc = up.parse_body(ctx.parse_dialect, raw)
    ctx.ttft_ms = None
    await _finalize(ctx, status=resp.status, usage=usage)
    return RawResponse(raw, resp.status, response_headers(headers))


class RelayStream(Response):
    """Streams the upstream SSE body to the client; finalizes the event when it ends or the client leaves."""

    def __init__(
        self,
        ctx: Ctx,
        resp: UpstreamResponse,
        it: Any,
        first: bytes,
        tracker: up.StreamTracker,
        status: int,
    ) -> None:
        self.ctx = ctx
        self.resp = resp
        self.it = it
        self.first = first
        self.tracker = tracker
        self.status_code = status
        self.background = None
        self.raw_headers = response_headers(resp.headers)
        self.streaming = True
        self.cancelled = False
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self.ctx
        tracker = self.tracker
        it = self.it
        main: asyncio.Task[Any] | None = None  # this task, once a disconnect watcher runs
        # Clients that tell whether the next chunk is already here (the raw client) let a stream
        # that arrived whole go out in one body message, with no disconnect watcher at all.
        ready = it if hasattr(it, "buffered") else None
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if self.streaming and main is not None:
                        self.cancelled = True
                        main.cancel()
                    return

        error: str | None = None
        tail = b""
        ended = False
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            self.started = True
            chunk = self.first
            while True:
                data = tracker.feed(chunk)
                if ctx.ttft_ms is None and tracker.first_token:
                    ctx.ttft_ms = (time.perf_counter_ns() - ctx.t0) // 1_000_000
                if ready is not None and ready.buffered:
                    try:
                        chunk = await it.__anext__()
                    except StopAsyncIteration:
                        ended = True
                        await send({"type": "http.response.body", "body": data + tracker.finish()})
                        break
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                    continue
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                if watcher is None:
                    main = asyncio.current_task()
                    watcher = asyncio.create_task(watch())
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
            if not ended:
                tail = tracker.finish()
        except asyncio.CancelledError:
            if not self.cancelled:
                raise
            if main is not None:
                main.uncancel()
        except UpstreamError as exc:
            error = str(exc)
            tail = stream_error_event(
                ctx.parse_dialect, "the upstream stream broke off; the response is incomplete"
            )
            if ctx.account is not None:
                metrics.UPSTREAM_ERRORS.labels(ctx.account.name, "stream").inc()
        finally:
            self.streaming = False
            if watcher is not None:
                watcher.cancel()
            with contextlib.suppress(Exception):
                await self.resp.close()
            if not self.cancelled and not ended:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
            await self._finish(error)

    async def _finish(self, error: str | None) -> None:
        ctx = self.ctx
        tracker = self.tracker
        usage = tracker.usage
        if self.cancelled or error or not usage.seen:
            # What was streamed so far: keep reported counts, estimate what never came.
            usage.output = max(usage.output, tracker.deltas)
            if not usage.seen or (usage.input + usage.cache_read + usage.cache_creation) == 0:
                usage.input = max(usage.input, len(ctx.body) // 4)
        if self.cancelled:
            await _finalize(
                ctx,
                status=499,
                usage=usage,
                error_kind="cancelled",
                error_message=f"client disconnected after {tracker.bytes_seen} bytes; usage so far (estimated where not reported)",
            )
        elif error or tracker.error:
            await _finalize(
                ctx,
                status=self.status_code,
                usage=usage,
                error_kind="upstream_stream_error",
                error_message=error or tracker.error,
            )
        else:
            await _finalize(ctx, status=self.status_code, usage=usage)


def stream_error_event(dialect: str, message: str) -> bytes:
    """An SSE error event in the stream's own format (the SDKs raise on it)."""
    if dialect == up.ANTHROPIC:
        doc: dict[str, Any] = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + orjson.dumps(doc) + b"\n\n"
    if dialect == up.CHAT:
        doc = {
            "error": {
                "message": message,
                "type": "server_error",
                "param": None,
                "code": "upstream_stream_error",
            }
        }
        return b"data: " + orjson.dumps(doc) + b"\n\n"
    doc = {
        "type": "error",
        "code": "upstream_stream_error",
        "message": message,
        "param": None,
        "sequence_number": 0,
    }
    return b"event: error\ndata: " + orjson.dumps(doc) + b"\n\n"


async def _finalize(
    ctx: Ctx,
    *,
    status: int,
    usage: up.Usage | None = None,
    error_kind: str | None = None,
    error_message: str | None = None,
) -> None:
    """Release slots, count spend, and hand exactly one usage event to the writer."""
    if ctx.done:
        return
    ctx.done = True
    gw = ctx.gw
    now = gw.clock()
    acc = ctx.account
    usage = usage or up.Usage()
    failed = error_kind is not None or status >= 400
    event = UsageEvent(
        event_hash=sha256_hex("gateway|" + ctx.request_id),
        ts_ms=ctx.start_ms,
        source="gateway",
        request_id=ctx.request_id,
        account_id=acc.id if acc else 0,
        account_label=acc.name if acc else "",
        api_key_id=ctx.key.id,
        api_key_hash=ctx.key.key_hash,
        api_key_prefix=ctx.key.prefix,
        provider=acc.provider if acc else "",
        endpoint=f"POST {ctx.path}",
        method="POST",
        path=ctx.path,
        model=ctx.model,
        actual_model=usage.model or ctx.mapped_model or ctx.model,
        stream=ctx.stream,
        status_code=status,
        failed=failed,
        error_kind=error_kind or ("upstream_error" if failed else None),
        error_message=redact_text(error_message)[:2000] if error_message else None,
        input_tokens=usage.input,
        output_tokens=usage.output,
        reasoning_tokens=usage.reasoning,
        cache_read_tokens=usage.cache_read,
        cache_creation_tokens=usage.cache_creation,
        cache_creation_1h_tokens=usage.cache_creation_1h,
        latency_ms=(time.perf_counter_ns() - ctx.t0) // 1_000_000,
        ttft_ms=ctx.ttft_ms,
        service_tier=usage.service_tier,
        client_ip=ctx.client_ip,
        user_agent=ctx.user_agent[:500] if ctx.user_agent else None,
    )
    event.recompute_total()
    if usage.raw is not None and gw.settings.store_raw_payloads:
        event.raw_json = orjson.dumps({"usage": usage.raw}).decode()
    pricer = gw.state.writer.pricer
    if pricer is not None and event.total_tokens:
        try:
            pricer.apply([event])
        except Exception:
            log.exception("pricing a gateway event failed")
    cost = event.cost_micros
    tokens = event.total_tokens
    try:
        if acc is not None:
            acc.in_flight -= 1
            acc.requests += 1
            if failed:
                acc.failures += 1
        await gw.counters.finish(
            ctx.key.limits,
            ctx.lease,
            acc.caps if acc is not None else None,
            ctx.acc_lease,
            tokens=tokens,
            cost=cost,
            now_ms=now,
        )
    except Exception as exc:  # Redis down: the leases expire on their own
        log.error("releasing counters failed: %s", exc)
    finally:
        if cost:
            key = ctx.key
            key.avg_cost = cost if key.avg_cost == 0 else key.avg_cost * 0.8 + cost * 0.2
        metrics.request_done(
            ctx.route, "cancelled" if error_kind == "cancelled" else ("error" if failed else "ok")
        )
        try:
            gw.state.writer.submit(event)
        except RuntimeError:
            log.error("usage writer closed; event %s not recorded", ctx.request_id)


# --- /v1/models ---------------------------------------------------------------------------------


async def _fetch_models(gw: GatewayService, acc: Account) -> list[str]:
    cached = gw.model_cache.get(acc.id)
    now = gw.clock()
    if cached is not None and now - cached[0] < MODEL_CACHE_MS:
        return cached[1]
    ids: list[str] = []
    try:
        token = await gw.oauth.token_for(acc)
        headers = request_headers(acc, {}, token)
        resp = await gw.client().send("GET", upstream_url(acc, MODELS), headers, None, acc.proxy_url)
        raw = await resp.read()
        if resp.status == 200:
            doc = orjson.loads(raw)
            data = doc.get("data") if isinstance(doc, dict) else None
            if isinstance(data, list):
                ids = [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]
    except (UpstreamError, RefreshError, orjson.JSONDecodeError) as exc:
        log.info("listing models of account %s failed: %s", acc.name, exc)
    gw.model_cache[acc.id] = (now, ids)
    return ids


async def _model_ids(gw: GatewayService, key: KeyRecord, dialect: str) -> list[tuple[str, str]]:
    wanted = {MESSAGES} if dialect == ANTHROPIC else {CHAT, RESPONSES}
    found: dict[str, str] = {}
    for acc in list(gw.pool.accounts.values()):
        if not acc.enabled or not (acc.routes & wanted):
            continue
        names: list[str] = []
        if acc.models is None:
            if MODELS in acc.routes:
                names.extend(await _fetch_models(gw, acc))
        else:
            names.extend(m for m in acc.models if "*" not in m and "?" not in m)
        names.extend(m for m in acc.model_map if "*" not in m and "?" not in m)
        for name in names:
            found.setdefault(name, acc.provider)
    return sorted((m, p) for m, p in found.items() if key.allows(m))


async def models_endpoint(request: Request) -> Response:
    dialect = ANTHROPIC if "anthropic-version" in request.headers else OPENAI
    gw = _gateway(request.app)
    if gw is None:
        return error_response(dialect, 503, "the gateway is not running (gateway_enabled is off)")
    auth = _authenticate(gw, header_dict(request.scope), dialect, MODELS)
    if isinstance(auth, Response):
        return auth
    models = await _model_ids(gw, auth, dialect)
    wanted = request.path_params.get("model_id")
    if wanted is not None:
        models = [(m, p) for m, p in models if m == wanted]
        if not models:
            return error_response(
                dialect, 404, f"model {wanted!r} is not available to this key", code="model_not_found"
            )
    if dialect == ANTHROPIC:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
            for m, _p in models
        ]
        if wanted is not None:
            return Response(orjson.dumps(data[0]), media_type="application/json")
        body: dict[str, Any] = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    else:
        items = [{"id": m, "object": "model", "created": 0, "owned_by": p or "relaymeter"} for m, p in models]
        if wanted is not None:
            return Response(orjson.dumps(items[0]), media_type="application/json")
        body = {"object": "list", "data": items}
    return Response(orjson.dumps(body), media_type="application/json")


def gateway_routes() -> list[BaseRoute]:
    """The relay routes, to be placed first in the app's router (hot path)."""
    return [
        Route("/v1/messages", _make_endpoint(MESSAGES), methods=["POST"]),
        Route("/v1/messages/count_tokens", _make_endpoint(COUNT_TOKENS), methods=["POST"]),
        Route("/v1/chat/completions", _make_endpoint(CHAT), methods=["POST"]),
        Route("/v1/responses", _make_endpoint(RESPONSES), methods=["POST"]),
        Route("/v1/models", models_endpoint, methods=["GET"]),
        Route("/v1/models/{model_id:path}", models_endpoint, methods=["GET"]),
    ]


class GatewayDispatch:
    """Outermost ASGI layer: /v1/* relay requests go straight to their handler.

    The relay routes are the hot path, so they skip the framework's middleware stack, route
    table and request object; everything else goes on to the app unchanged.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.table: dict[tuple[str, str], Any] = {
            ("POST", "/v1/messages"): _make_endpoint(MESSAGES).handle,
            ("POST", "/v1/messages/count_tokens"): _make_endpoint(COUNT_TOKENS).handle,
            ("POST", "/v1/chat/completions"): _make_endpoint(CHAT).handle,
            ("POST", "/v1/responses"): _make_endpoint(RESPONSES).handle,
            ("GET", "/v1/models"): _models_handle,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            path = scope["path"]
            handle = self.table.get((scope["method"], path))
            if handle is None:
                path = path.rstrip("/") or "/"
                handle = self.table.get((scope["method"], path))
            if handle is None and scope["method"] == "GET" and path.startswith("/v1/models/"):
                handle = _models_handle
                scope["path_params"] = {"model_id": path[len("/v1/models/") :]}
            if handle is not None:
                await _serve(handle, scope, receive, send)
                return
        await self.inner(scope, receive, send)


async def _models_handle(scope: Scope, receive: Receive) -> Response:
    return await models_endpoint(Request(scope, receive))


async def _serve(handle: Any, scope: Scope, receive: Receive, send: Send) -> None:
    response: Response | None = None
    try:
        response = await handle(scope, receive)
        await response(scope, receive, send)
    except Exception:
        log.exception("gateway request failed")
        if response is None or not getattr(response, "started", True):
            dialect = OPENAI if scope["path"].startswith(("/v1/chat", "/v1/responses")) else ANTHROPIC
            await error_response(dialect, 500, "internal error in relaymeter (see its log)")(
                scope, receive, send
            )


def install(app: Any) -> None:
    """Register the relay routes: as routes (first in the table) and as the outermost ASGI layer."""
    app.router.routes[0:0] = gateway_routes()
    build = app.build_middleware_stack

    def build_with_gateway() -> Any:
        return GatewayDispatch(build())

    app.build_middleware_stack = build_with_gateway
