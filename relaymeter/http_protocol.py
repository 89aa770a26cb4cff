"""The HTTP/1.1 protocol relaymeter's uvicorn servers run: httptools, with the writes a request
makes in one event-loop step sent to the socket as one.

uvicorn writes a response's head and its body with one send each, and a relayed gateway
response usually has both at once: two sends on loopback or the LAN cost a syscall, a TCP
segment and a wake-up of the client more than one (about a tenth of the gateway's CPU per
request, bench/README.md). Writes are queued and go out together once the step ends, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class CoalescingTransport:
    """Wraps a transport: ``write`` queues, and the queue is sent in one write at the end of the step."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if not self._transport.is_closing():  # the client left meanwhile: nothing to send to
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


if HttpToolsProtocol is not None:

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol writing through a ``CoalescingTransport``."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # Flow control (pause/resume reading) keeps the real transport; writes go through here.
            self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]


def http_protocol() -> Any:
    """The ``http`` argument for uvicorn.Config / uvicorn.run."""
    return CoalescingHttpToolsProtocol if HttpToolsProtocol is not None else "auto"
