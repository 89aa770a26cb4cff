"""Web console: time until the overview shows its numbers, in chromium, against a big store.

    .venv/bin/python bench/analytics.py --events 10000000          # builds bench/data/analytics-10m/ once
    .venv/bin/python bench/console.py --data bench/data/analytics-10m --loads 10

Starts `relaymeter serve` on a free loopback port over the store in --data (collector off),
logs in with Debian's chromium (headless), then loads the overview --loads times: once in a
fresh browser context (cold: nothing cached) and then warm (assets from the HTTP cache, as for
an operator who keeps the console open). For each load it records the time from navigation start
until the KPI numbers are painted (a performance mark the overview sets after the first frame
with data), the same as seen by the test driver, the /api/overview call's own duration
(Resource Timing), and how many data calls the page made. Prints p50 / p95.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-console-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYMETER_")}
    env.update(
        RELAYMETER_DATA_DIR=str(data),
        RELAYMETER_ADMIN_PASSWORD=PASSWORD,
        RELAYMETER_COLLECTOR_ENABLED="false",
        RELAYMETER_LOG_LEVEL="warning",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaymeter", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"relaymeter serve exited; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("relaymeter serve did not start in 120 s")


def one_load(page: Any) -> dict[str, float]:
    calls: list[str] = []

    def on_request(req: Any) -> None:
        if "/api/" in req.url and not any(
            p in req.url for p in ("/api/auth/", "/api/health", "/api/settings")
        ):
            calls.append(req.url)

    page.on("request", on_request)
    start = time.perf_counter()
    page.goto("/")
    page.locator("[data-testid=kpi-requests] [data-testid=kpi-value]").wait_for()
    shown_ms = (time.perf_counter() - start) * 1000
    page.remove_listener("request", on_request)
    page.wait_for_function("() => performance.getEntriesByName('rm:overview-painted').length > 0")
    api_ms, painted_ms = page.evaluate(
        """() => {
            const e = performance.getEntriesByType('resource').filter(r => r.name.includes('/api/overview')).pop()
            const p = performance.getEntriesByName('rm:overview-painted')[0]
            return [e ? e.responseEnd - e.requestStart : -1, p ? p.startTime : -1]
        }"""
    )
    return {
        "shown_ms": shown_ms,
        "painted_ms": float(painted_ms),
        "api_ms": float(api_ms),
        "calls": float(len(calls)),
    }


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"{name:34s} p50 {statistics.median(values):8.1f}   p95 {p95:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="data dir holding relaymeter.db")
    parser.add_argument("--loads", type=int, default=10, help="warm loads after the cold one")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if not (args.data / "relaymeter.db").exists():
        raise SystemExit(f"{args.data}/relaymeter.db not found: build it with bench/analytics.py first")
    if not (ROOT / "relaymeter" / "web" / "dist" / "index.html").exists():
        raise SystemExit("the console is not built: run `make ui`")
    from playwright.sync_api import sync_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp()) / "serve.log"
    proc = start_server(args.data, port, log)
    try:
        with httpx.Client(base_url=base, timeout=120) as api:
            api.post("/api/auth/login", json={"password": PASSWORD}).raise_for_status()
            count = api.get("/api/system/storage").json()["rows"].get("usage_events", 0)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=args.chromium,
                headless=True,
                args=["--no-sandbox", "--disable-background-networking"],
            )
            context = browser.new_context(base_url=base, viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.goto("/login")
            page.locator("[data-testid=password]").fill(PASSWORD)
            page.locator("[data-testid=login-submit]").click()
            page.wait_for_url(f"{base}/")
            page.locator("[data-testid=kpi-requests] [data-testid=kpi-value]").wait_for(timeout=120_000)
            # Cold: a new context with the session cookie but an empty HTTP cache.
            cold_ctx = browser.new_context(
                base_url=base, viewport={"width": 1440, "height": 900}, storage_state=context.storage_state()
            )
            cold = one_load(cold_ctx.new_page())
            cold_ctx.close()
            warm = [one_load(page) for _ in range(args.loads)]
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"overview page over {count:,} events ({args.loads} warm loads, chromium headless, 1440x900)")
    print(
        f"{'cold load: numbers painted':34s} {cold['painted_ms']:8.1f} ms   "
        f"(/api/overview {cold['api_ms']:.1f} ms; seen by the driver {cold['shown_ms']:.1f} ms)"
    )
    print(summary("warm load: numbers painted (ms)", [w["painted_ms"] for w in warm]))
    print(summary("warm load: seen by the driver (ms)", [w["shown_ms"] for w in warm]))
    print(summary("warm load: /api/overview (ms)", [w["api_ms"] for w in warm]))
    print(f"{'data calls per load':34s} {max(w['calls'] for w in [cold, *warm]):8.0f}")


if __name__ == "__main__":
    main()
