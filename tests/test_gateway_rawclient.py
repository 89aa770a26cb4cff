"""The lean upstream client: keep-alive reuse, stale pooled connections, framing, gzip, timeouts."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import pytest

from relaymeter.gateway.rawclient import RawClient
from relaymeter.gateway.upstream import UpstreamError

Handler = Callable[[bytes, asyncio.StreamWriter], "asyncio.Future[None] | None"]


class Server:
    """A tiny HTTP/1.1 server whose answer per request is scripted by the test."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.answer: Callable[[bytes], bytes | None] = lambda _req: None
        self.close_after = False
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                out = self.answer(head + body)
                if out is None:  # hang: never answer
                    await asyncio.sleep(3600)
                    return
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    yield srv
    srv.server.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_keep_alive_reuses_one_connection(server: Server) -> None:
    server.answer = lambda req: ok(b'{"n":%d}' % len(server.requests))
    client = RawClient()
    try:
        for n in (1, 2, 3):
            resp = await client.send(
                "POST", server.url + "/v1/messages?beta=true", {"x-api-key": "k"}, b"{}", None
            )
            assert resp.status == 200
            assert await resp.read() == b'{"n":%d}' % n
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/messages?beta=true HTTP/1.1\r\n")
        assert b"x-api-key: k\r\n" in first and b"content-length: 2\r\n" in first
    finally:
        await client.close()


async def test_interim_responses_are_skipped(server: Server) -> None:
    server.answer = lambda req: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")
    client = RawClient()
    try:
        for _ in range(2):
            resp = await client.send("POST", server.url + "/x", {}, b"{}", None)
            assert resp.status == 200
            assert await resp.read() == b"final"
        assert server.connections == 1
    finally:
        await client.close()


async def test_stale_pooled_connection_is_retried_on_a_fresh_one(server: Server) -> None:
    server.answer = lambda req: ok(b"done")
    server.close_after = True  # the upstream drops every connection after answering
    client = RawClient()
    try:
        for _ in range(3):
            resp = await client.send("POST", server.url + "/x", {}, b"{}", None)
            assert await resp.read() == b"done"
        assert server.connections == 3
    finally:
        await client.close()


async def test_chunked_stream_arrives_in_order_and_gzip_is_decoded(server: Server) -> None:
    events = [b"data: %d\n\n" % i for i in range(5)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    server.answer = lambda req: (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunked
    )
    packed = gzip.compress(b'{"ok":true}')
    client = RawClient()
    try:
        resp = await client.send("POST", server.url + "/s", {}, b"{}", None)
        assert resp.headers["content-type"] == "text/event-stream"
        got = b"".join([chunk async for chunk in resp.chunks()])
        assert got == b"".join(events)
        server.answer = lambda req: ok(packed, b"content-encoding: gzip\r\n")
        resp = await client.send("GET", server.url + "/j", {}, None, None)
        assert await resp.read() == b'{"ok":true}'
        assert b"content-length" not in server.requests[-1]
    finally:
        await client.close()


async def test_body_until_close_and_errors(server: Server) -> None:
    server.answer = lambda req: b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
    server.close_after = True
    client = RawClient(connect_timeout_s=2, read_timeout_s=0.3)
    try:
        resp = await client.send("POST", server.url + "/e", {}, b"{}", None)
        assert await resp.read() == b"until the end"
        server.answer = lambda req: None  # never answers: read timeout
        with pytest.raises(UpstreamError, match="read timeout"):
            await client.send("POST", server.url + "/hang", {}, b"{}", None)
        with pytest.raises(UpstreamError, match="line break"):
            await client.send("POST", server.url + "/x", {"x": "a\r\nb"}, b"{}", None)
        with pytest.raises(UpstreamError, match="connecting"):
            await client.send("POST", "http://127.0.0.1:1/x", {}, b"{}", None)
    finally:
        await client.close()
