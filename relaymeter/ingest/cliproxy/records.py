"""Popped queue records -> UsageEvents and dead letters, inline or in a worker process.

normalize() is most of a collector's CPU; running it in a worker process leaves the event
loop's process free for popping, spooling and the write path, so the two overlap on two cores.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from operator import attrgetter
from typing import Any

import orjson

from relaymeter.domain.events import EVENT_FIELDS, NormalizeError, UsageEvent, normalize
from relaymeter.domain.redact import redact

log = logging.getLogger(__name__)
DeadLetter = tuple[str, str]  # (reason, redacted raw text)
MIN_BATCH_FOR_WORKER = 64  # smaller batches cost more to ship than to normalize here
_event_fields = attrgetter(*EVENT_FIELDS)


def normalize_records(
    items: Sequence[Any], *, source: str, received_ms: int | None, keep_raw: bool
) -> tuple[list[UsageEvent], list[DeadLetter]]:
    """Events for the records that normalize, a dead letter (reason, raw) for each that does not.

    Items are raw JSON texts (HTTP queue) or already parsed values (RESP, spool replays).
    """
    events: list[UsageEvent] = []
    bad: list[DeadLetter] = []
    for item in items:
        raw: str | None = None
        obj = item
        if isinstance(item, str):
            raw = item
            try:
                obj = orjson.loads(item)
            except orjson.JSONDecodeError as exc:
                bad.append((f"record is not valid JSON: {exc}", item))
                continue
        try:
            events.append(normalize(obj, source=source, received_ms=received_ms, keep_raw=keep_raw))
        except NormalizeError as exc:
            bad.append((str(exc), redacted_text(obj, raw)))
        except Exception as exc:  # a record must never stop the collector
            bad.append((f"normalize failed: {type(exc).__name__}: {exc}", redacted_text(obj, raw)))
    return events, bad


def redacted_text(obj: Any, raw: str | None) -> str:
    if isinstance(obj, dict | list):
        try:
            return orjson.dumps(redact(obj), default=str).decode()
        except TypeError:
            pass
    return raw if raw is not None else orjson.dumps(obj, default=str).decode()


def _exit_with_parent() -> None:
    """Worker initializer: end this process when its parent dies (even by SIGKILL), which the
    pool's pipes alone would not notice."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _normalize_in_worker(
    items: Sequence[Any], source: str, received_ms: int | None, keep_raw: bool
) -> tuple[list[tuple[Any, ...]], list[DeadLetter]]:
    events, bad = normalize_records(items, source=source, received_ms=received_ms, keep_raw=keep_raw)
    return [_event_fields(ev) for ev in events], bad  # plain tuples pickle far cheaper than objects


class RecordNormalizer:
    """normalize_records in ``workers`` worker processes (0 = inline), shared by the collectors
    of one process. A worker that dies is replaced by inline work, never by lost records."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor | None:
        if self.workers > 0 and self._pool is None:
            # spawn, not fork: the parent runs an event loop and database threads.
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent
            )
        return self._pool

    async def __call__(
        self, items: Sequence[Any], *, source: str, received_ms: int | None, keep_raw: bool
    ) -> tuple[list[UsageEvent], list[DeadLetter]]:
        pool = self._executor() if len(items) >= MIN_BATCH_FOR_WORKER else None
        if pool is not None:
            loop = asyncio.get_running_loop()
            try:
                rows, bad = await loop.run_in_executor(
                    pool, _normalize_in_worker, list(items), source, received_ms, keep_raw
                )
                return [UsageEvent(*row) for row in rows], bad
            except BrokenProcessPool:
                log.warning("normalize worker process died; normalizing in the collector's process")
                self.close()
                self.workers = 0
        return normalize_records(items, source=source, received_ms=received_ms, keep_raw=keep_raw)

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (for status and benchmarks)."""
        return list(self._pool._processes) if self._pool is not None else []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
