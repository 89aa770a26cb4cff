"""Lean HTTP/1.1 upstream client: asyncio protocol + httptools parser, keep-alive pool per origin.

The relay's per-request cost is dominated by the HTTP client; this one does only what a relay
needs (one write per request, body chunks handed over as they arrive, gzip/deflate decoding)
and measured several times cheaper than aiohttp per request (see bench/README.md). Requests
through a proxy go to aiohttp, which speaks HTTP and SOCKS proxies.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools

from relaymeter.gateway.upstream import AiohttpClient, UpstreamError, UpstreamResponse

IDLE_TTL_S = 30.0  # an idle pooled connection older than this is closed, not reused
MAX_IDLE_PER_ORIGIN = 1024
HIGH_WATER = 1 << 20  # pause reading the upstream when this much body is waiting for the client
_Origin = tuple[str, str, int]


class _Target:
    __slots__ = ("head", "origin", "path")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"unsupported upstream URL: {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        self.origin: _Origin = (scheme, parts.hostname, port)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self.head = f"host: {host if default else f'{host}:{port}'}\r\n"


class _Conn(asyncio.Protocol):
    """One upstream connection; serves one request at a time."""

    def __init__(self, client: RawClient, origin: _Origin) -> None:
        self.client = client
        self.origin = origin
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.resp: RawResponse | None = None
        self.got_bytes = False
        self.last_data = 0.0
        self.informational = False  # inside a 1xx interim response (skipped)

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_data = time.monotonic()
        if self.resp is None:  # unsolicited bytes on an idle connection: unusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid HTTP response from upstream: {exc}")

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.resp
        if resp is not None and not resp.complete:
            if resp.status and resp.until_eof:
                self.on_message_complete()  # body delimited by the end of the connection
            else:
                detail = f": {exc}" if exc else ""
                self._fail(f"the upstream closed the connection{detail}", early=not self.got_bytes)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.resp is not None
        self.resp.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the answer follows
            self.informational = True
            resp.raw_headers.clear()
            return
        resp.status = status
        resp.on_headers()

    def on_body(self, body: bytes) -> None:
        assert self.resp is not None
        self.resp.on_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        resp = self.resp
        if resp is None or resp.complete:
            return
        resp.complete = True
        resp.on_complete()
        self.resp = None
        if self.parser.should_keep_alive() and not self.closed and resp.reusable:
            self.client.release(self)
        else:
            self.close()

    # helpers
    def _fail(self, message: str, *, early: bool = False) -> None:
        resp = self.resp
        self.close()
        if resp is not None:
            resp.on_error(UpstreamError(message), early=early)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class RawResponse:
    """The upstream's answer: status and headers once parsed, the body as it arrives."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_decoder",
        "_error",
        "_pausable",
        "_size",
        "_waiter",
        "complete",
        "early_error",
        "headers",
        "raw_headers",
        "reusable",
        "status",
        "until_eof",
    )

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.reusable = True
        self.until_eof = False
        self.early_error = False
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._pausable = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None

    # fed by the connection
    def on_headers(self) -> None:
        headers = self.headers
        for name, value in self.raw_headers:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: zlib or gzip framing detected from the header; raw deflate handled on error.
            self._decoder = zlib.decompressobj(47)
        self.until_eof = "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error:
                if self._size or self._chunks:
                    raise
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                body = self._decoder.decompress(body)
            if not body:
                return
        self._chunks.append(body)
        self._size += len(body)
        if self._size > HIGH_WATER and self._pausable:
            self._conn.transport.pause_reading()
        self._wake()

    def on_complete(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._cancel_timer()
        self._wake()

    def on_error(self, error: UpstreamError, *, early: bool = False) -> None:
        if self._error is None:
            self._error = error
            self.early_error = early
        self._cancel_timer()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _cancel_timer(self) -> None:
        self._conn.client.busy.discard(self)

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def wait_headers(self) -> None:
        while not self.status and self._error is None:
            await self._wait()
        if self._error is not None and not self.status:
            raise self._error

    # UpstreamResponse interface
    async def read(self) -> bytes:
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def chunks(self) -> RawResponse:
        self._pausable = True
        return self

    def __aiter__(self) -> RawResponse:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                if len(self._chunks) == 1:
                    data = self._chunks.popleft()
                else:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                if self._size > HIGH_WATER and not self.complete:
                    self._conn.last_data = time.monotonic()  # the client was slow, not the upstream
                    self._conn.transport.resume_reading()
                self._size = 0
                return data
            if self.complete:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def buffered(self) -> bool:
        """True when the next chunk (or the end) is available without waiting."""
        return bool(self._chunks) or self.complete or self._error is not None

    async def close(self) -> None:
        if not self.complete:
            self.reusable = False
            self._cancel_timer()
            self._conn.resp = None
            self._conn.close()


class RawClient:
    """Pooled keep-alive HTTP/1.1 connections per origin; proxied requests go through aiohttp."""

    name = "raw"

    def __init__(self, connect_timeout_s: float = 10.0, read_timeout_s: float = 600.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: dict[_Origin, deque[_Conn]] = {}
        self._targets: dict[str, _Target] = {}
        self._ssl: ssl.SSLContext | None = None
        self._proxied: AiohttpClient | None = None
        self._all: set[_Conn] = set()
        self.busy: set[RawResponse] = set()  # waiting for upstream data (read timeout applies)
        self._sweeper: asyncio.Task[None] | None = None

    async def _sweep(self) -> None:
        """Fail responses the upstream sent nothing for during the read timeout (one timer for all)."""
        timeout = self.read_timeout_s
        while self.busy:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for resp in [r for r in self.busy if now - r._conn.last_data >= timeout]:
                self.busy.discard(resp)
                resp._conn._fail(f"no data from the upstream for {timeout:g} s (read timeout)")

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) > 10_000:
                self._targets.clear()
            self._targets[url] = target
        return target

    def release(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.origin, deque())
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _pooled(self, origin: _Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # most recently used first: the least likely to be closed
            if not conn.closed and now - conn.idle_since < IDLE_TTL_S:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin) -> _Conn:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _transport, conn = await loop.create_connection(
                    lambda: _Conn(self, origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"connecting to {host}:{port} failed: {type(exc).__name__}: {exc}") from exc
        self._all.add(conn)
        if len(self._all) > 4 * MAX_IDLE_PER_ORIGIN:
            self._all = {c for c in self._all if not c.closed}
        return conn

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, proxy: str | None
    ) -> UpstreamResponse:
        if proxy:
            if self._proxied is None:
                self._proxied = AiohttpClient(self.connect_timeout_s, self.read_timeout_s)
            return await self._proxied.send(method, url, headers, body, proxy)
        target = self._target(url)
        parts = [f"{method} {target.path} HTTP/1.1\r\n", target.head]
        for name, value in headers.items():
            if name != "host":
                if "\n" in value or "\r" in value:
                    raise UpstreamError(f"header {name!r} has a line break")
                parts.append(f"{name}: {value}\r\n")
        if body is not None:
            parts.append(f"content-length: {len(body)}\r\n")
        parts.append("\r\n")
        try:
            head = "".join(parts).encode("latin-1")
        except UnicodeEncodeError as exc:
            raise UpstreamError(f"a request header is not latin-1: {exc}") from exc
        payload = head + body if body else head
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            conn = self._pooled(target.origin) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(target.origin)
                if conn.closed:
                    raise UpstreamError("the upstream closed the connection at once")
            resp = RawResponse(conn)
            conn.resp = resp
            conn.got_bytes = False
            conn.last_data = time.monotonic()
            conn.transport.write(payload)
            self.busy.add(resp)
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = loop.create_task(self._sweep())
            try:
                await resp.wait_headers()
            except UpstreamError:
                if reused and resp.early_error:
                    continue  # the pooled connection was closed by the upstream meanwhile: retry fresh
                raise
            except BaseException:
                await resp.close()
                raise
            return resp
        raise UpstreamError("the upstream closed the connection")  # pragma: no cover

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.busy.clear()
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        if self._proxied is not None:
            await self._proxied.close()
            self._proxied = None
