"""`relaymeter serve --workers N`: N server processes on one port, supervised by this process.

Each worker binds the port with SO_REUSEPORT, so the kernel spreads connections over them.
The store is migrated (and a first admin password made) once here, before any worker starts.
Gateway limits stay exact across workers: through Redis when ``redis_url`` is set, otherwise
through a shared counters file (``gateway.shared_counters``) whose in-flight shares of a worker
that died are given back before it is restarted. The CPA collector runs in worker 0 only.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from relaymeter.config import Settings

log = logging.getLogger("relaymeter")
FAST_EXIT_S = 30.0  # a worker that dies this soon after its start is a configuration problem


def bind_reuseport(host: str, port: int) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def _worker(settings: Settings, index: int, table_path: str | None) -> None:
    import uvicorn

    from relaymeter.app import create_app
    from relaymeter.gateway import shared_counters
    from relaymeter.http_protocol import http_protocol
    from relaymeter.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    if table_path:
        shared_counters.activate(Path(table_path), index)
    if index > 0:
        settings = settings.model_copy(update={"collector_enabled": False})
    sock = bind_reuseport(settings.host, settings.port)
    config = uvicorn.Config(
        create_app(settings),
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        http=http_protocol(),
    )
    uvicorn.Server(config).run(sockets=[sock])


async def _prepare(settings: Settings) -> None:
    from relaymeter.app import ensure_admin_password, open_state, show_generated_password

    state = await open_state(settings)
    try:
        show_generated_password(await ensure_admin_password(state))
    finally:
        await state.db.dispose()


def serve_workers(settings: Settings, workers: int) -> int:
    """Run and supervise ``workers`` server processes until SIGTERM / SIGINT; returns an exit code."""
    from relaymeter.gateway.shared_counters import SharedTable

    bind_reuseport(settings.host, settings.port).close()  # fail here, once, if the port is taken
    asyncio.run(_prepare(settings))
    table: SharedTable | None = None
    table_path: str | None = None
    if not settings.redis_url and settings.gateway_enabled:
        shm = Path("/dev/shm")
        fd, table_path = tempfile.mkstemp(prefix="relaymeter-counters-", dir=shm if shm.is_dir() else None)
        os.close(fd)
        table = SharedTable(Path(table_path), create=True, workers=workers)
    context = multiprocessing.get_context("spawn")
    procs: dict[int, BaseProcess] = {}
    started: dict[int, float] = {}

    def start(index: int) -> None:
        proc = context.Process(
            target=_worker, args=(settings, index, table_path), name=f"relaymeter-worker-{index}"
        )
        proc.start()
        procs[index] = proc
        started[index] = time.monotonic()

    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        for index in range(workers):
            start(index)
        while not stopping:
            wait([p.sentinel for p in procs.values()], timeout=0.5)
            for index, proc in list(procs.items()):
                if proc.is_alive() or stopping:
                    continue
                if table is not None:
                    table.release_worker(index)
                if time.monotonic() - started[index] < FAST_EXIT_S:
                    log.error("worker %d exited at once (code %s); stopping", index, proc.exitcode)
                    stopping, code = True, 1
                    break
                log.warning("worker %d exited (code %s); restarting it", index, proc.exitcode)
                start(index)
    finally:
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.join(40)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if table is not None:
            table.close()
        if table_path:
            Path(table_path).unlink(missing_ok=True)
    return code
