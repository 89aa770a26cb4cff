"""The HTTP protocol `relaymeter serve` runs: a response's head and body leave in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from relaymeter.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport, http_protocol

REQUEST = b"GET /x HTTP/1.1\r\nhost: test\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    """What the protocol sends, one item per write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8320), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _serve_one(app: Any, request: bytes) -> RecordingTransport:
    config = uvicorn.Config(app, http=http_protocol(), lifespan="off", log_level="warning")
    protocol = CoalescingHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(50):  # the app runs as a task; then the queued writes are flushed
        await asyncio.sleep(0)
    return transport


async def test_head_and_body_of_a_response_go_out_in_one_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})

    transport = await _serve_one(app, REQUEST)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 5" in head
    assert body == b"hello"
    assert not transport.closed  # keep-alive


async def test_a_stream_still_goes_out_chunk_by_chunk_in_order() -> None:
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await gate.wait()  # the next event is not there yet: what was written must not wait for it
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    task = asyncio.ensure_future(_serve_one(app, REQUEST))
    transport = await task
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"9\r\ndata: 1\n\n\r\n")
    gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.writes[1] == b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"


async def test_connection_close_sends_what_is_queued_first() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    transport = await _serve_one(app, REQUEST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
    assert transport.closed
    assert b"".join(transport.writes).endswith(b"\r\n\r\nok")


async def test_queued_writes_are_dropped_when_the_client_left_or_the_connection_aborts() -> None:
    loop = asyncio.get_running_loop()
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"a")
    transport.write(b"b")
    assert transport.get_write_buffer_size() == 2 and inner.writes == []
    inner.closed = True  # the client disconnected before the step ended
    await asyncio.sleep(0)
    assert inner.writes == []

    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"a")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.aborted and inner.writes == []
    assert transport.get_extra_info("peername") == ("127.0.0.1", 50000)  # the rest is the transport's
