"""A fake CLIProxyAPI on 127.0.0.1: management API (HTTP) and the RESP usage queue on ONE port.

Speaks the wire formats of protocols/cliproxyapi.md: a connection whose first byte is ``*`` is
RESP (AUTH, RPOP/LPOP usage [count], -NOAUTH, -ERR invalid management key), anything else is
HTTP/1.1 (/v0/management/config, usage-statistics-enabled, usage-queue, auth-files, api-call).
Five failed key attempts from one address ban it (403 / -ERR ... banned). Faults for tests:
``drop_next_pop`` cuts the connection mid-batch after the records have been popped, like a
real network failure would. Run standalone with ``python -m tests.fakes.cpa --records N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

BAN_AFTER = 5
BAN_MESSAGE = "IP banned due to too many failed attempts. Try again in 29m59s"
HTTP_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    502: "Bad Gateway",
}


def make_record(i: int, **overrides: Any) -> dict[str, Any]:
    """A current-version CPA usage record, unique per ``i``."""
    second, frac = divmod(i, 1000)
    record: dict[str, Any] = {
        "timestamp": f"2026-11-20T17:{(second // 60) % 60:02d}:{second % 60:02d}.{frac:03d}456789+08:00",
        "latency_ms": 800 + i % 4000,
        "ttft_ms": 120 + i % 700,
        "source": f"user{i % 7}@example.com",
        "auth_index": f"{i % 7:016x}",
        "access_token_sha256": "9f2c" * 16,
        "client_ip": "127.0.0.1",
        "x_forwarded_for": "",
        "user_agent": "claude-cli/2.1.3",
        "tokens": {
            "input_tokens": 1000 + i % 500,
            "output_tokens": 300 + i % 200,
            "reasoning_tokens": 0,
            "cached_tokens": 0,
            "cache_read_tokens": 4000,
            "cache_read_tokens_present": True,
            "cache_creation_tokens": 200,
            "cache_creation_5m_tokens": 200,
            "cache_creation_1h_tokens": 0,
            "total_tokens": 5500 + i % 700,
        },
        "failed": False,
        "generate": True,
        "stream": True,
        "fail": {"status_code": 200, "body": ""},
        "response_headers": {"Anthropic-Ratelimit-Unified-5h-Utilization": ["0.42"]},
        "accounting_version": 2,
        "token_breakdown": {},
        "provider": "claude",
        "executor_type": "claude",
        "model": "claude-sonnet-4-5-20250929",
        "alias": "claude-sonnet-4-5",
        "endpoint": "POST /v1/messages",
        "auth_type": "oauth",
        "api_key": f"sk-client-key-{i % 3}-abcdefgh",
        "request_id": f"{i:08x}"[-8:],
        "reasoning_effort": "",
        "service_tier": "",
        "response_service_tier": "",
    }
    record.update(overrides)
    return record


def make_auth_file(index: int, *, provider: str = "claude", plan: str | None = None) -> dict[str, Any]:
    email = f"user{index}@example.com"
    entry: dict[str, Any] = {
        "id": f"{provider}-{email}.json",
        "auth_index": f"{index:016x}",
        "name": f"{provider}-{email}.json",
        "type": provider,
        "provider": provider,
        "label": email,
        "status": "active",
        "status_message": "",
        "disabled": False,
        "unavailable": False,
        "email": email,
        "account_type": "oauth",
        "priority": 0,
        "success": 10,
        "failed": 0,
    }
    if provider == "codex":
        entry["id_token"] = {"chatgpt_account_id": f"acct-{index}", "plan_type": plan or "plus"}
    elif plan:
        entry["plan_type"] = plan
    return entry


@dataclass
class FakeCPA:
    management_key: str | None = "mgmt-secret"
    http_queue: bool = True  # False: an older CPA without GET /usage-queue (404)
    retention_s: int = 60
    publishing: bool = True
    version: str = "7.3.1"
    host: str = "127.0.0.1"
    port: int = 0
    queue: deque[tuple[float, str]] = field(default_factory=deque)
    auth_files: list[dict[str, Any]] = field(default_factory=list)
    api_call_handler: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    banned: set[str] = field(default_factory=set)
    # Cut the connection of the next pop after this many complete records were sent
    # (the whole batch is already gone from the queue, as with a real CPA).
    drop_next_pop: int | None = None
    popped_total: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)  # (protocol, command or path)
    extra_config: dict[str, Any] = field(default_factory=dict)
    _server: asyncio.base_events.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _invalid: set[str] = field(default_factory=set)  # pushed raw texts that are not JSON

    # -- test helpers --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def publish(self, record: dict[str, Any]) -> bool:
        """What CPA does after a request: enqueue only when usage publishing is enabled."""
        if not self.publishing:
            return False
        self.push(record)
        return True

    def push(self, record: dict[str, Any] | str) -> None:
        """Enqueue a record (a str is enqueued verbatim, e.g. malformed JSON)."""
        raw = record if isinstance(record, str) else orjson.dumps(record).decode()
        if isinstance(record, str):
            try:
                orjson.loads(raw)
            except orjson.JSONDecodeError:
                self._invalid.add(raw)
        self.queue.append((time.monotonic(), raw))

    def push_many(self, records: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        self.queue.extend((now, orjson.dumps(r).decode()) for r in records)

    def pop(self, count: int) -> list[str]:
        self._prune()
        out = []
        while self.queue and len(out) < count:
            out.append(self.queue.popleft()[1])
        self.popped_total += len(out)
        return out

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.retention_s
        while self.queue and self.queue[0][0] < cutoff:
            self.queue.popleft()

    def config(self) -> dict[str, Any]:
        return {
            "host": "",
            "port": self.port,
            "debug": False,
            "usage-statistics-enabled": self.publishing,
            "redis-usage-queue-retention-seconds": self.retention_s,
            "request-retry": 3,
            **self.extra_config,
        }

    # -- server ----------------------------------------------------------------------------------

    async def start(self) -> FakeCPA:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=2**20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeCPA:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        try:
            first = await reader.read(1)
            if not first:
                return
            if first == b"*":
                await self._serve_resp(first, reader, writer, ip)
            else:
                await self._serve_http(first, reader, writer, ip)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    # -- auth ------------------------------------------------------------------------------------

    def _check_key(self, ip: str, given: str | None) -> str | None:
        """None when accepted, else the error: 'missing', 'invalid' or 'banned'."""
        if ip in self.banned:
            return "banned"
        if not given:
            return "missing"
        if given == self.management_key:
            self.failures.pop(ip, None)
            return None
        self.failures[ip] = self.failures.get(ip, 0) + 1
        if self.failures[ip] >= BAN_AFTER:
            self.banned.add(ip)
        return "invalid"

    # -- RESP ------------------------------------------------------------------------------------

    async def _serve_resp(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str
    ) -> None:
        authed = False
        pending = first
        while True:
            args = await _read_resp_command(reader, pending)
            pending = b""
            if args is None:
                return
            name = args[0].upper() if args else ""
            self.log.append(("resp", name))
            if name == "AUTH":
                if len(args) not in (2, 3):
                    writer.write(b"-ERR wrong number of arguments for 'auth' command\r\n")
                else:
                    verdict = self._check_key(ip, args[-1])
                    if verdict is None:
                        authed = True
                        writer.write(b"+OK\r\n")
                    elif verdict == "banned":
                        writer.write(f"-ERR {BAN_MESSAGE}\r\n".encode())
                    else:
                        writer.write(b"-ERR invalid management key\r\n")
            elif not authed:
                writer.write(b"-NOAUTH Authentication required.\r\n")
            elif name in ("RPOP", "LPOP"):
                if len(args) < 2 or len(args) > 3:
                    writer.write(f"-ERR wrong number of arguments for '{name.lower()}' command\r\n".encode())
                elif args[1] != "usage":
                    writer.write(b"-ERR unsupported channel\r\n")
                elif len(args) == 3:
                    try:
                        count = int(args[2])
                    except ValueError:
                        count = 0
                    if count < 1:
                        writer.write(b"-ERR value is out of range, must be positive\r\n")
                    else:
                        items = self.pop(count)
                        if await self._resp_array(writer, items):
                            return
                else:
                    items = self.pop(1)
                    writer.write(_bulk(items[0]) if items else b"$-1\r\n")
            else:
                writer.write(f"-ERR unknown command '{args[0] if args else ''}'\r\n".encode())
            await writer.drain()

    async def _resp_array(self, writer: asyncio.StreamWriter, items: list[str]) -> bool:
        """Write an array reply; True when the connection was cut on purpose mid-batch."""
        drop = self.drop_next_pop
        if drop is not None and items:
            self.drop_next_pop = None
            writer.write(f"*{len(items)}\r\n".encode())
            for item in items[:drop]:
                writer.write(_bulk(item))
            partial = _bulk(items[drop]) if drop < len(items) else b""
            writer.write(partial[: len(partial) // 2])
            await writer.drain()
            writer.transport.abort()
            return True
        writer.write(f"*{len(items)}\r\n".encode() + b"".join(_bulk(i) for i in items))
        return False

    # -- HTTP ------------------------------------------------------------------------------------

    async def _serve_http(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str
    ) -> None:
        pending = first
        while True:
            head = pending + await reader.readuntil(b"\r\n\r\n")
            pending = b""
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
            close = headers.get("connection", "").lower() == "close"
            if await self._route(method.upper(), target, headers, body, writer, ip):
                return  # connection cut on purpose
            await writer.drain()
            if close:
                return
            if reader.at_eof():
                return
            nxt = await reader.read(1)
            if not nxt:
                return
            pending = nxt

    def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: Any,
        *,
        management: bool = True,
        raw: bytes | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        payload = raw if raw is not None else orjson.dumps(body)
        head = [f"HTTP/1.1 {status} {HTTP_REASONS.get(status, 'Status')}"]
        head.append(f"Content-Type: {content_type}")
        head.append(f"Content-Length: {len(payload)}")
        if management:
            head += [
                f"X-CPA-VERSION: {self.version}",
                "X-CPA-COMMIT: 0123abcd",
                "X-CPA-BUILD-DATE: 2026-11-01T00:00:00Z",
            ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

    async def _route(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
        ip: str,
    ) -> bool:
        parts = urlsplit(target)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        self.log.append(("http", f"{method} {path}"))
        prefix = "/v0/management"
        if not path.startswith(prefix + "/"):
            self._respond(
                writer, 404, None, management=False, raw=b"404 page not found", content_type="text/plain"
            )
            return False
        if self.management_key is None:
            self._respond(
                writer, 404, None, management=False, raw=b"404 page not found", content_type="text/plain"
            )
            return False
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
        given = given or headers.get("x-management-key", "").strip()
        verdict = self._check_key(ip, given)
        if verdict == "banned":
            self._respond(writer, 403, {"error": BAN_MESSAGE})
            return False
        if verdict == "missing":
            self._respond(writer, 401, {"error": "missing management key"})
            return False
        if verdict == "invalid":
            self._respond(writer, 401, {"error": "invalid management key"})
            return False
        route = path[len(prefix) :]
        if route == "/config" and method == "GET":
            self._respond(writer, 200, self.config())
        elif route == "/usage-statistics-enabled":
            if method == "GET":
                self._respond(writer, 200, {"usage-statistics-enabled": self.publishing})
            elif method in ("PUT", "PATCH"):
                try:
                    value = orjson.loads(body).get("value")
                except (orjson.JSONDecodeError, AttributeError):
                    value = None
                if not isinstance(value, bool):
                    self._respond(writer, 400, {"error": "invalid body"})
                else:
                    self.publishing = value
                    self._respond(writer, 200, {"status": "ok"})
            else:
                self._respond(writer, 405, {"error": "method not allowed"})
        elif route == "/usage-queue" and method == "GET":
            if not self.http_queue:
                self._respond(
                    writer, 404, None, management=False, raw=b"404 page not found", content_type="text/plain"
                )
                return False
            try:
                count = int(query.get("count", ["1"])[0])
            except ValueError:
                count = 0
            if count < 1:
                self._respond(writer, 400, {"error": "count must be a positive integer"})
                return False
            items = self.pop(count)
            # CPA puts a record that is not valid JSON into the array as a JSON string.
            encoded = [orjson.dumps(i) if i in self._invalid else i.encode() for i in items]
            full = b"[" + b",".join(encoded) + b"]"
            drop = self.drop_next_pop
            if drop is not None and items:
                self.drop_next_pop = None
                sent = b"[" + b",".join(encoded[:drop])
                if drop < len(encoded):
                    sent += (b"," if drop else b"") + encoded[drop][: len(encoded[drop]) // 2]
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                    f"Content-Length: {len(full)}\r\nX-CPA-VERSION: {self.version}\r\n\r\n"
                )
                writer.write(head.encode() + sent)
                await writer.drain()
                writer.transport.abort()
                return True
            self._respond(writer, 200, None, raw=full)
        elif route == "/auth-files" and method == "GET":
            files = self.auth_files
            if query.get("name"):
                files = [f for f in files if f.get("name") == query["name"][0]]
            if query.get("auth_index"):
                files = [f for f in files if f.get("auth_index") == query["auth_index"][0]]
            self._respond(writer, 200, {"files": files})
        elif route == "/api-call" and method == "POST":
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError:
                request = None
            if not isinstance(request, dict):
                self._respond(writer, 400, {"error": "invalid body"})
            elif not any(f.get("auth_index") == request.get("auth_index") for f in self.auth_files):
                self._respond(writer, 400, {"error": "auth token not found"})
            elif self.api_call_handler is not None:
                status, answer = self.api_call_handler(request)
                self._respond(writer, status, answer)
            else:
                self._respond(writer, 200, {"status_code": 200, "header": {}, "body": "{}"})
        else:
            self._respond(
                writer, 404, None, management=False, raw=b"404 page not found", content_type="text/plain"
            )
        return False


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$" + str(len(data)).encode() + b"\r\n" + data + b"\r\n"


async def _read_resp_command(reader: asyncio.StreamReader, pending: bytes) -> list[str] | None:
    """One client command (an array of bulk strings)."""
    try:
        line = pending + await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        return None
    if not line.startswith(b"*"):
        return line.decode("utf-8", "replace").strip().split()
    count = int(line[1:-2])
    args: list[str] = []
    for _ in range(count):
        header = await reader.readuntil(b"\r\n")
        if not header.startswith(b"$"):
            return None
        size = int(header[1:-2])
        data = await reader.readexactly(size + 2)
        args.append(data[:-2].decode("utf-8", "replace"))
    return args


class FakeCPAThread:
    """A FakeCPA running on its own event loop in a thread (benchmarks, subprocess tests)."""

    def __init__(self, fake: FakeCPA) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.fake.start())
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> FakeCPA:
        self._thread.start()
        self._ready.wait(10)
        return self.fake

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the fake's loop and return its result."""
        done: asyncio.Future[Any] = asyncio.run_coroutine_threadsafe(_call(fn), self.loop)  # type: ignore[assignment]
        return done.result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake CLIProxyAPI on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="mgmt-secret")
    parser.add_argument("--records", type=int, default=0, help="queue this many records at start")
    parser.add_argument("--retention", type=int, default=3600)
    parser.add_argument("--no-http-queue", action="store_true", help="behave like CPA < 6.10.8 (RESP only)")
    args = parser.parse_args()

    async def run() -> None:
        fake = FakeCPA(
            management_key=args.key,
            port=args.port,
            retention_s=args.retention,
            http_queue=not args.no_http_queue,
        )
        fake.auth_files = [make_auth_file(i) for i in range(7)]
        fake.push_many([make_record(i) for i in range(args.records)])
        await fake.start()
        print(fake.port, flush=True)
        await asyncio.Event().wait()  # until killed

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
