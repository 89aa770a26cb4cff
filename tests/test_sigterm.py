"""SIGTERM while events are queued loses none of them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import func, select

from relaymeter.store.db import Database
from relaymeter.store.schema import usage_events

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until_serving(port: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


async def test_sigterm_with_a_full_queue_loses_nothing(tmp_path: Path) -> None:
    n = 60_000
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYMETER_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(  # noqa: ASYNC220 - start-up only, reads happen in threads
        [sys.executable, "-m", "tests.sigterm_child", str(tmp_path), str(port), str(n)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
        assert line.startswith(f"queued {n}"), line + (proc.stderr.read() if proc.stderr else "")
        assert int(line.split()[-1]) > n // 2
        await wait_until_serving(port)
        proc.send_signal(signal.SIGTERM)  # the writer is still busy with the queued events
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 180)
        rest = proc.stdout.read()
        assert "stopping with depth" in rest
        assert int(rest.split("stopping with depth")[1].split()[0]) > 0, (
            "queue was already empty: test proves nothing"
        )
        # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM is a clean exit here
        assert code in (0, -signal.SIGTERM), proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'relaymeter.db'}")
    async with db.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(usage_events))).scalar_one()
    await db.dispose()
    assert stored == n
