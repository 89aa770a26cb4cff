"""Popped queue records -> UsageEvents and dead letters, inline or in a worker process.

normalize() is most of a collector's CPU; running it in a worker process leaves the event
loop's process free for popping, spooling and the write path, so the two overlap on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from relaymeter.domain.events import NormalizeError, UsageEvent, normalize_row
from relaymeter.domain.redact import redact

log = logging.getLogger(__name__)
DeadLetter = tuple[str, str]  # (reason, redacted raw text)
Row = tuple[Any, ...]  # a UsageEvent's values in EVENT_FIELDS order: UsageEvent(*row)
MIN_BATCH_FOR_WORKER = 64  # smaller batches cost more to ship than to normalize here


def normalize_records(
    items: Sequence[Any], *, source: str, received_ms: int | None, keep_raw: bool
) -> tuple[list[UsageEvent], list[DeadLetter]]:
    """Events for the records that normalize, a dead letter (reason, raw) for each that does not.

    Items are raw JSON texts (HTTP queue) or already parsed values (RESP, spool replays).
    """
    rows, bad = normalize_rows(items, source=source, received_ms=received_ms, keep_raw=keep_raw)
    return [UsageEvent(*row) for row in rows], bad


def normalize_rows(
    items: Sequence[Any], *, source: str, received_ms: int | None, keep_raw: bool
) -> tuple[list[Row], list[DeadLetter]]:
    """normalize_records() with each event as a plain tuple (what a worker process ships)."""
    rows: list[Row] = []
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
            rows.append(normalize_row(obj, source=source, received_ms=received_ms, keep_raw=keep_raw))
        except NormalizeError as exc:
            bad.append((str(exc), redacted_text(obj, raw)))
        except Exception as exc:  # a record must never stop the collector
            bad.append((f"normalize failed: {type(exc).__name__}: {exc}", redacted_text(obj, raw)))
    return rows, bad


def redacted_text(obj: Any, raw: str | None) -> str:
    if isinstance(obj, dict | list):
        try:
            return orjson.dumps(redact(obj), default=str).decode()
        except TypeError:
            pass
    return raw if raw is not None else orjson.dumps(obj, default=str).decode()


@contextlib.contextmanager
def _parent_main_hidden() -> Iterator[None]:
    """While worker processes are started: spawn would run the parent's ``__main__`` module
    again in each (for the CLI, importing the whole app: seconds of CPU and of waiting for the
    first batch), and the workers need nothing from it, so let them see none."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__
    try:
        yield
    finally:
        sys.modules["__main__"] = main


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
    batch: Sequence[Any] | str, source: str, received_ms: int | None, keep_raw: bool
) -> tuple[list[Row], list[DeadLetter]]:
    """normalize_rows in a worker process. ``batch`` is the records, or the JSON array text
    they were parsed from (one string pickles far cheaper than a thousand dicts)."""
    # The records and events of a batch form no reference cycles: collecting while they are
    # built would only traverse them again and again.
    gc.disable()
    try:
        items = orjson.loads(batch) if isinstance(batch, str) else batch
        return normalize_rows(items, source=source, received_ms=received_ms, keep_raw=keep_raw)
    finally:
        gc.enable()


class RecordNormalizer:
    """normalize_records in ``workers`` worker processes (0 = inline), shared by the collectors
    of one process. A worker that dies is replaced by inline work, never by lost records."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker processes now rather than at the first batch (each takes a moment
        to start and import this module). Without them, records are normalized inline."""
        try:
            self._executor()
        except Exception as exc:
            log.warning(
                "cannot start normalize worker processes (%s); normalizing in the collector's process", exc
            )
            self.close()
            self.workers = 0

    def _executor(self) -> ProcessPoolExecutor | None:
        if self.workers > 0 and self._pool is None:
            # spawn, not fork: the parent runs an event loop and database threads.
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent
            )
            with _parent_main_hidden():
                for _ in range(self.workers):
                    self._pool.submit(os.getpid)  # a submit while no worker is idle starts one
        return self._pool

    def ships(self, count: int) -> bool:
        """Whether a batch of ``count`` records goes to a worker process (which can take the
        batch as its JSON array text, so the caller need not keep the parsed records)."""
        return self.workers > 0 and count >= MIN_BATCH_FOR_WORKER

    async def __call__(
        self,
        items: Sequence[Any] | None,
        *,
        source: str,
        received_ms: int | None,
        keep_raw: bool,
        body: str | None = None,
    ) -> tuple[list[UsageEvent], list[DeadLetter]]:
        """Events and dead letters for ``items``. ``body``, when given, is their JSON array text
        (as received from CPA's HTTP usage queue): a worker is sent that instead, and ``items``
        may then be None (a caller that ships() the batch need not keep them parsed)."""
        if items is None:
            if body is None:
                raise ValueError("give the records or their JSON array text")
            count = -1  # unknown until parsed; only given for batches that ships() accepted
        else:
            count = len(items)
        pool = self._executor() if count < 0 or self.ships(count) else None
        if pool is not None:
            batch: Sequence[Any] | str = body if body is not None else list(items or ())
            loop = asyncio.get_running_loop()
            try:
                rows, bad = await loop.run_in_executor(
                    pool, _normalize_in_worker, batch, source, received_ms, keep_raw
                )
                return [UsageEvent(*row) for row in rows], bad
            except BrokenProcessPool:
                log.warning("normalize worker process died; normalizing in the collector's process")
                self.close()
                self.workers = 0
        if items is None:
            assert body is not None
            items = _array_items(body)
        return normalize_records(items, source=source, received_ms=received_ms, keep_raw=keep_raw)

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (for status and benchmarks)."""
        return list(self._pool._processes) if self._pool is not None else []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _array_items(body: str) -> list[Any]:
    items = orjson.loads(body)
    if not isinstance(items, list):
        raise ValueError("a batch body must be a JSON array text")
    return items
