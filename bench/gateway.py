"""Gateway overhead: relaymeter versus calling a fake upstream directly, in the same run.

Starts (all on 127.0.0.1) a fast fake Anthropic upstream twice (instant, and with a response
delay), relaymeter in front of both (one run per upstream HTTP client: raw, aiohttp, httpx, and
per process count: one process, and `relaymeter serve --workers 2`), and drives them with wrk
(C, with a Lua script for the POST body; falls back to a small aiohttp load generator when wrk
is missing). Reports requests/s, p50 / p99 latency and the CPU time
of the serving process per request (Linux /proc) per scenario, and the latency relaymeter adds.

    python bench/gateway.py                 # 5 s per scenario
    python bench/gateway.py --duration 3 --clients raw --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procstat import cpu_seconds  # bench/procstat.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token-0123456789"

# --- fake upstream: a minimal asyncio HTTP/1.1 server (keep-alive), so it is never the bottleneck


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return (
        b"event: " + event.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    )


USAGE = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 1000,
    "output_tokens": 7,
}
JSON_BODY = json.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [{"type": "text", "text": "Hello from the bench upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": USAGE,
    }
).encode()
SSE_EVENTS = [
    _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "model": "claude-bench",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**USAGE, "output_tokens": 1},
            },
        },
    ),
    _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    *[
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
        )
        for w in ("Hello ", "from the ", "bench upstream.")
    ],
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
    ),
    _sse("message_stop", {"type": "message_stop"}),
]
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_bench\r\ncontent-length: "
    + str(len(JSON_BODY)).encode()
    + b"\r\n\r\n"
    + JSON_BODY
)
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
SSE_CHUNKS = [b"%x\r\n%s\r\n" % (len(e), e) for e in SSE_EVENTS] + [b"0\r\n\r\n"]
SSE_RESPONSE = SSE_HEAD + b"".join(SSE_CHUNKS)
_CL = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


class UpstreamProtocol(asyncio.Protocol):
    delay_s = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CL.search(self.buf, 0, end + 2)
            length = int(match.group(1)) if match else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            stream = b'"stream":true' in body or b'"stream": true' in body
            if self.delay_s:
                asyncio.get_running_loop().call_later(self.delay_s, self.respond, stream)
            else:
                self.respond(stream)

    def respond(self, stream: bool) -> None:
        if self.transport.is_closing():
            return
        # One write per response: the canned bytes leave in one segment (cheap for both runs).
        self.transport.write(SSE_RESPONSE if stream else JSON_RESPONSE)


def serve_upstream(port: int, delay_ms: float) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    UpstreamProtocol.delay_s = delay_ms / 1000

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            UpstreamProtocol, "127.0.0.1", port, backlog=2048
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- relaymeter -----------------------------------------------------------------------------------


def serve_relay(port: int, client: str, data_dir: str, workers: int = 1) -> None:
    import uvicorn

    from relaymeter.app import create_app
    from relaymeter.config import load_settings
    from relaymeter.http_protocol import http_protocol

    settings = load_settings(
        Path(data_dir) / "none.toml",
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        admin_password="bench-password",
        gateway_http_client=client,
        log_level="warning",
        collector_enabled=False,
        port=port,
    )
    if workers > 1:
        from relaymeter.workers import serve_workers

        serve_workers(settings, workers)
        return
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=http_protocol(),  # as `relaymeter serve` runs it
        log_level="warning",
        access_log=False,
    )


# --- driver ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def spawn(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("RELAYMETER_")}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env)


def setup_relay(relay_port: int, instant_port: int, slow_port: int) -> str:
    import httpx

    with httpx.Client(
        base_url=f"http://127.0.0.1:{relay_port}", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as c:
        for name, port, model in (("instant", instant_port, "instant"), ("slow", slow_port, "slow")):
            res = c.post(
                "/api/accounts",
                json={
                    "name": name,
                    "provider": "anthropic",
                    "api_key": f"sk-bench-{name}",
                    "base_url": f"http://127.0.0.1:{port}",
                    "models": [model],
                },
            )
            res.raise_for_status()
        res = c.post("/api/keys", json={"name": "bench"})
        res.raise_for_status()
        return str(res.json()["key"])


LUA = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "{key}"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.body = '{body}'
"""


def request_body(model: str, stream: bool) -> str:
    return json.dumps(
        {
            "model": model,
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        },
        separators=(",", ":"),
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str, key: str, body: str, conns: int, threads: int, duration: float, tmp: Path
) -> dict[str, Any]:
    script = tmp / "bench.lua"
    script.write_text(LUA.format(key=key, body=body))
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url + "/v1/messages",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


async def _py_load(url: str, key: str, body: str, conns: int, duration: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + duration
    headers = {"content-type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as session:

        async def worker() -> None:
            nonlocal bad
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.post(url + "/v1/messages", data=body, headers=headers) as resp:
                    await resp.read()
                    bad += resp.status >= 400
                latencies.append((time.perf_counter() - t0) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "non2xx": bad,
        "socket_errors": "",
    }


def load(
    url: str,
    key: str,
    body: str,
    conns: int,
    threads: int,
    duration: float,
    tmp: Path,
    server_pid: int | None = None,
) -> dict[str, Any]:
    before = cpu_seconds(server_pid) if server_pid else None
    if shutil.which("wrk"):
        res = run_wrk(url, key, body, conns, threads, duration, tmp)
    else:
        res = asyncio.run(_py_load(url, key, body, conns, duration))
    after = cpu_seconds(server_pid) if server_pid else None
    if before is not None and after is not None and res["rps"]:
        res["server_cpu_ms_per_req"] = round((after - before) * 1000 / (res["rps"] * duration), 3)
    return res


def _cpu(res: dict[str, Any]) -> str:
    value = res.get("server_cpu_ms_per_req")
    return f"  cpu {value:5.3f} ms/req" if value is not None else ""


def loop_lag_max_ms(relay_url: str) -> float | None:
    """relaymeter's largest event-loop lag since the previous scrape (of the process that answers).

    Tens of ms mean the serving process was short of CPU during the scenario (a busy or
    throttled machine shows up here at an unchanged CPU cost per request)."""
    import httpx

    try:
        text = httpx.get(relay_url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("relaymeter_event_loop_lag_max_seconds "):
            return round(float(line.split()[1]) * 1000, 1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument(
        "--clients", default="raw,aiohttp,httpx", help="upstream HTTP clients of relaymeter to compare"
    )
    parser.add_argument("--delay-ms", type=float, default=50.0, help="response delay of the slow upstream")
    parser.add_argument(
        "--concurrency", type=int, default=128, help="streaming clients against the slow upstream"
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="relaymeter server processes (relaymeter serve --workers N), comma-separated: each is one run",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", default="aiohttp", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.delay_ms)
        return
    if args.serve_relay:
        serve_relay(args.serve_relay, args.client, args.data_dir, int(args.workers))
        return

    generator = (
        "wrk " + subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1]
        if shutil.which("wrk")
        else "python aiohttp load generator (wrk not found)"
    )
    print(
        f"load generator: {generator}; {os.cpu_count()} CPUs; {args.duration:.0f} s per scenario; "
        f"relaymeter processes: {args.workers}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"generator": generator, "scenarios": {}}
    try:
        instant_port, slow_port = free_port(), free_port()
        procs.append(spawn("--serve-upstream", str(instant_port), "--delay-ms", "0"))
        procs.append(spawn("--serve-upstream", str(slow_port), "--delay-ms", str(args.delay_ms)))
        wait_port(instant_port)
        wait_port(slow_port)
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            direct_instant = f"http://127.0.0.1:{instant_port}"
            direct_slow = f"http://127.0.0.1:{slow_port}"
            d = args.duration
            scenarios = [
                # name, model, stream, connections, threads
                ("c1 json", "instant", False, 1, 1),
                ("c1 stream", "instant", True, 1, 1),
                (f"c{args.concurrency} stream {args.delay_ms:g}ms", "slow", True, args.concurrency, 2),
                ("max json", "instant", False, 64, 2),
                ("max stream", "instant", True, 64, 2),
            ]
            for name, model, stream, conns, threads in scenarios:
                url = direct_slow if model == "slow" else direct_instant
                upstream = procs[1] if model == "slow" else procs[0]
                res = load(url, "none", request_body(model, stream), conns, threads, d, tmp, upstream.pid)
                results["scenarios"].setdefault(name, {})["direct"] = res
                print(
                    f"  direct     {name:<22} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms{_cpu(res)}",
                    flush=True,
                )
            worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
            runs = [(c.strip(), w) for w in worker_counts for c in args.clients.split(",") if c.strip()]
            for client, workers in runs:
                label = client if workers == 1 else f"{client} w{workers}"
                relay_port = free_port()
                data_dir = tmp / f"relay-{client}-{workers}"
                relay = spawn(
                    "--serve-relay",
                    str(relay_port),
                    "--client",
                    client,
                    "--data-dir",
                    str(data_dir),
                    "--workers",
                    str(workers),
                )
                procs.append(relay)
                wait_port(relay_port, 60)
                key = setup_relay(relay_port, instant_port, slow_port)
                if workers > 1:
                    time.sleep(7)  # every worker sees the new accounts and key (reload poll, 5 s)
                relay_url = f"http://127.0.0.1:{relay_port}"
                load(relay_url, key, request_body("instant", False), 4, 1, 1, tmp)  # warm up pools
                for name, model, stream, conns, threads in scenarios:
                    loop_lag_max_ms(relay_url)  # resets the maximum
                    res = load(relay_url, key, request_body(model, stream), conns, threads, d, tmp, relay.pid)
                    res["loop_lag_max_ms"] = loop_lag_max_ms(relay_url)
                    results["scenarios"][name][label] = res
                    direct = results["scenarios"][name]["direct"]
                    extra = f"added p50 {res['p50_ms'] - direct['p50_ms']:+.2f} ms  throughput {res['rps'] / direct['rps']:6.1%} of direct"
                    if res["loop_lag_max_ms"] is not None:
                        extra += f"  loop lag max {res['loop_lag_max_ms']:.0f} ms"
                    errors = f"  non-2xx {res['non2xx']}" if res["non2xx"] else ""
                    print(
                        f"  {label:<10} {name:<22} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms{_cpu(res)}  {extra}{errors}",
                        flush=True,
                    )
                relay.terminate()
                relay.wait(30)
                procs.remove(relay)
        results["load_average_end"] = os.getloadavg()[0]
        print(f"load average at the end {results['load_average_end']:.2f}", flush=True)
        print(json.dumps(results, indent=1))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


if __name__ == "__main__":
    main()
