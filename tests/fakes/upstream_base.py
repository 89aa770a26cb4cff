"""Shared plumbing of the fake upstreams: a raw ASGI app with scripted failures and request capture."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Scripted:
    """A canned answer for the next matching request (status, JSON body, headers, or a drop)."""

    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    break_stream_after: int | None = None  # stream this many events, then cut the connection


class FakeUpstream:
    """Base of the Anthropic / OpenAI fakes: routing, capture, concurrency tracking, failures."""

    def __init__(self, *, delay_s: float = 0.0, chunks: int = 3, capture: bool = True) -> None:
        self.delay_s = delay_s
        self.chunks = chunks
        self.capture = capture
        self.requests: list[Captured] = []
        self.script: list[Scripted] = []
        self.valid_credentials: set[str] | None = None  # None = accept any credential
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold: asyncio.Event | None = None  # streams wait on this before the final events
        self.stream_started = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.calls = 0

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = body.decode(errors="replace")
        self.calls += 1
        if self.capture:
            self.requests.append(Captured(scope["method"], scope["path"], headers, doc))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.handle(scope["method"], scope["path"], headers, doc, send, receive)
        finally:
            self.in_flight -= 1

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: Any, send: Send, receive: Receive
    ) -> None:
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------

    def next_script(self) -> Scripted | None:
        return self.script.pop(0) if self.script else None

    def credential(self, headers: dict[str, str]) -> str:
        if headers.get("x-api-key"):
            return headers["x-api-key"]
        auth = headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else ""

    async def json(self, send: Send, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(doc)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    async def sse(
        self,
        send: Send,
        receive: Receive,
        events: list[bytes],
        headers: dict[str, str] | None = None,
        *,
        hold_before: int | None = None,
        break_after: int | None = None,
    ) -> None:
        """Send SSE events; optionally wait on ``self.hold`` before event ``hold_before``."""
        raw = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        watcher = asyncio.create_task(self._watch(receive))
        try:
            for i, event in enumerate(events):
                if break_after is not None and i >= break_after:
                    raise ConnectionAbortedError("scripted stream break")
                if hold_before is not None and i == hold_before:
                    self.stream_started.set()
                    if self.hold is not None:
                        await self.hold.wait()
                if self.disconnected.is_set():
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    async def _watch(self, receive: Receive) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()

    async def scripted(self, send: Send, script: Scripted) -> bool:
        """Answer with a scripted failure; False when the script is a stream break (handled later)."""
        if script.break_stream_after is not None:
            return False
        if script.drop:
            raise ConnectionResetError("scripted drop")
        await self.json(send, script.status, script.body, script.headers)
        return True

    async def maybe_delay(self) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)


def sse_event(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    if event:
        return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve_asgi(
    app: Any, *, lifespan: str = "off", port: int | None = None, http: Any = "auto"
) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 inside the running loop; yields its base URL.
    relaymeter's own apps pass ``http=http_protocol()``, the protocol `relaymeter serve` runs."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan=lifespan,  # type: ignore[arg-type]
        access_log=False,
        timeout_graceful_shutdown=2,
        http=http,
    )
    server = uvicorn.Server(config)
    # _serve: like serve() without taking over the process's signal handlers.
    task = asyncio.create_task(server._serve())
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited before it started")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
