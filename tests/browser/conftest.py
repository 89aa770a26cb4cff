"""A real `relaymeter serve` on a free loopback port with a seeded store, and Debian's chromium."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.seed import seed
from tests.services import require, require_chromium

ROOT = Path(__file__).resolve().parents[2]
DIST_INDEX = ROOT / "relaymeter" / "web" / "dist" / "index.html"
ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "browser-test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def console_built() -> bool:
    return DIST_INDEX.exists() and "/assets/" in DIST_INDEX.read_text(encoding="utf-8", errors="replace")


class Server:
    def __init__(
        self, base_url: str, data_dir: Path, ids: dict[str, list[int]], proc: subprocess.Popen[bytes]
    ):
        self.base_url = base_url
        self.data_dir = data_dir
        self.ids = ids
        self.proc = proc

    @contextmanager
    def api(self) -> Iterator[httpx.Client]:
        """A logged-in HTTP client for reading the API the page shows."""
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            client.post("/api/auth/login", json={"password": PASSWORD}).raise_for_status()
            yield client


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_chromium()
    require("the built console", console_built(), "run `make ui` (needs Node.js 20+)")
    data_dir = tmp_path_factory.mktemp("console-data")
    ids = asyncio.run(seed(f"sqlite+aiosqlite:///{data_dir / 'relaymeter.db'}", events=3000))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYMETER_")}
    env.update(
        RELAYMETER_DATA_DIR=str(data_dir),
        RELAYMETER_ADMIN_PASSWORD=PASSWORD,
        RELAYMETER_LOG_LEVEL="warning",
    )
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaymeter", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"relaymeter serve exited: {(data_dir / 'serve.log').read_text()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("relaymeter serve did not become healthy in 60 s")
        time.sleep(0.2)
    try:
        yield Server(base, data_dir, ids, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")  # a live sync Playwright loop would break the async tests after it
def browser(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=require_chromium(),
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any, server: Server) -> Iterator[Callable[..., Any]]:
    """Factory for pages in fresh contexts; fails the test on any uncaught script error."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(
        *, color_scheme: str = "light", width: int = 1440, height: int = 900, locale: str = "en-US"
    ) -> Any:
        context = browser.new_context(
            base_url=server.base_url,
            viewport={"width": width, "height": height},
            color_scheme=color_scheme,
            locale=locale,
            timezone_id="UTC",
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def login(page: Any, next_path: str = "/") -> None:
    page.goto("/login" + (f"?next={next_path}" if next_path != "/" else ""))
    page.get_by_test_id("password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(lambda url: "/login" not in url)
