"""The single write path: an async queue drained in batches into store.events.insert_batch.

Producers on the request hot path call ``submit`` (never waits). Bulk producers (collector,
import) call ``write`` and await how many of their events were new. A failing batch is
retried with backoff; when it keeps failing it is split to find the records that can never
be stored, which go to dead letters. ``close`` flushes everything still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relaymeter.domain.events import UsageEvent, to_export_record
from relaymeter.domain.redact import redacted_json
from relaymeter.store import events as store_events
from relaymeter.store.db import Database

log = logging.getLogger(__name__)
PIPELINE = 2


class EventPricer(Protocol):
    """Sets cost_micros / price_missing on events before they are stored (in memory, no I/O)."""

    def apply(self, events: Sequence[UsageEvent]) -> None: ...


class _Group:
    """The events of one ``write()`` call: one future for all of them, resolved when the last
    one is stored (flags in call order) or failed."""

    __slots__ = ("error", "flags", "future", "remaining")

    def __init__(self, future: asyncio.Future[list[bool]], size: int) -> None:
        self.future = future
        self.flags = [False] * size
        self.remaining = size
        self.error: str | None = None

    def settle(self, index: int, new: bool | None, error: str | None = None) -> None:
        if error is not None:
            self.error = self.error or error
        elif new:
            self.flags[index] = True
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            if self.error is not None:
                self.future.set_exception(RuntimeError(self.error))
            else:
                self.future.set_result(self.flags)


# A queued event with the write() call it belongs to (None for submit()) and its index there;
# a plain tuple because submit() sits on the request hot path.
_Item = tuple[UsageEvent, _Group | None, int]


@dataclass
class WriterStats:
    written: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    last_error: str | None = None
    last_flush_ms: int | None = None
    batch_seconds: list[float] = field(default_factory=list)


class UsageWriter:
    def __init__(
        self,
        db: Database,
        *,
        batch_size: int = 1000,
        linger_ms: int = 50,
        max_retries: int = 5,
        retry_base_s: float = 0.2,
        pricer: EventPricer | None = None,
        high_water: int = 200_000,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000
        self.max_retries = max_retries
        self.retry_base_s = retry_base_s
        self.pricer = pricer
        self.high_water = high_water
        self.stats = WriterStats()
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._bulk_waiting = False
        self._writing = 0  # batches taken off the queue and not yet stored
        # Called with each committed batch's new events (in the writer task; must not block).
        self.listeners: list[Callable[[list[UsageEvent]], None]] = []

    # -- producers -------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def submit(self, event: UsageEvent) -> None:
        """Queue one event without waiting (hot path)."""
        if self._closing and self._task is None:
            raise RuntimeError("usage writer is closed")
        self._queue.append((event, None, 0))
        if not self._wakeup.is_set():
            self._signal()

    async def write(self, events: Sequence[UsageEvent]) -> list[bool]:
        """Queue events (waiting while the queue is over its high-water mark) and await their fate.

        Returns one flag per event: True when it was new, False when a duplicate. Raises when
        the events could not be stored (they were dead-lettered).
        """
        if not events:
            return []
        while len(self._queue) >= self.high_water and not self._closing:
            self._room.clear()
            await self._room.wait()
        group = _Group(asyncio.get_running_loop().create_future(), len(events))
        self._queue.extend((ev, group, i) for i, ev in enumerate(events))
        self._bulk_waiting = True  # someone awaits: write at once instead of lingering
        self._signal()
        return await group.future

    def _signal(self) -> None:
        self._drained.clear()
        self._wakeup.set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or dead-lettered)."""
        if not self._queue and not self._writing:
            return
        self._wakeup.set()
        await self._drained.wait()

    async def close(self) -> None:
        """Stop accepting waits, write everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._queue:  # never started or stopped early: write what is left inline
            await self._drain_all()

    async def _run(self) -> None:
        # Up to PIPELINE batches in flight: the next batch's CPU work (pricing, rows, rollup
        # increments) overlaps the current batch's database work; the store keeps them in order.
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._queue:
                    if inflight:
                        await asyncio.wait(inflight)
                        continue
                    self._drained.set()
                    self._room.set()
                    self._bulk_waiting = False
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if (
                    len(self._queue) < self.batch_size
                    and self.linger_s > 0
                    and not self._closing
                    and not self._bulk_waiting
                ):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._until_full(), self.linger_s)
                task = asyncio.create_task(self._write_one_batch())
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                if len(inflight) >= PIPELINE:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(0)  # let the new batch start its CPU work
        except asyncio.CancelledError:
            if inflight:
                await asyncio.wait(inflight)
            await self._drain_all()
            raise

    async def _until_full(self) -> None:
        while len(self._queue) < self.batch_size and not self._closing:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _drain_all(self) -> None:
        while self._queue:
            await self._write_one_batch()
        self._drained.set()
        self._room.set()

    # -- writing ---------------------------------------------------------------------------

    async def _write_one_batch(self) -> None:
        self._writing += 1
        try:
            await self._write_batch(
                [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            )
        finally:
            self._writing -= 1

    async def _write_batch(self, batch: list[_Item]) -> None:
        if len(self._queue) < self.high_water:
            self._room.set()
        started = time.perf_counter()
        try:
            await self._store(batch)
        except Exception as exc:  # never let the writer task die: fail the batch's waiters loudly
            log.exception("writer could not store or dead-letter a batch")
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
            for _event, group, index in batch:
                if group is not None:
                    group.settle(index, None, f"store failed: {exc}")
        elapsed = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.last_flush_ms = time.time_ns() // 1_000_000
        self.stats.batch_seconds = [*self.stats.batch_seconds[-99:], elapsed]

    async def _store(self, batch: list[_Item]) -> None:
        events = [item[0] for item in batch]
        if self.pricer is not None:
            try:
                self.pricer.apply(events)
            except Exception as exc:  # pricing must never lose an event
                log.exception("pricing failed; storing events unpriced")
                self.stats.last_error = f"pricing: {exc}"
        delay = self.retry_base_s
        for attempt in range(self.max_retries + 1):
            try:
                result = await store_events.insert_batch(self.db, events)
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if attempt < self.max_retries and not _is_data_error(exc):
                    self.stats.retries += 1
                    log.warning("writer batch failed (attempt %d): %s", attempt + 1, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                await self._split_or_dead_letter(batch, exc)
                return
            self._resolve(batch, result.inserted)
            return

    async def _split_or_dead_letter(self, batch: list[_Item], exc: BaseException) -> None:
        if len(batch) > 1:
            mid = len(batch) // 2
            await self._store(batch[:mid])
            await self._store(batch[mid:])
            return
        event, group, index = batch[0]
        reason = f"store failed: {type(exc).__name__}: {exc}"[:1000]
        raw = redacted_json(to_export_record(event))
        try:
            await store_events.add_dead_letters(self.db, event.source or "writer", [(reason, raw)])
            self.stats.dead_lettered += 1
        except Exception:
            log.exception("could not dead-letter event %s", event.event_hash)
        if group is not None:
            group.settle(index, None, reason)

    def _resolve(self, batch: list[_Item], inserted: list[bool]) -> None:
        new_events = []
        for (event, group, index), new in zip(batch, inserted, strict=True):
            if new:
                new_events.append(event)
            if group is not None:
                group.settle(index, new)
        self.stats.written += len(new_events)
        self.stats.duplicates += len(batch) - len(new_events)
        for listener in self.listeners:
            try:
                listener(new_events)
            except Exception:  # a listener (metrics) must never fail a stored batch
                log.exception("writer listener failed")


def _is_data_error(exc: BaseException) -> bool:
    """Errors that retrying the same data cannot fix (integrity, overflow, bad values)."""
    name = type(exc).__name__
    text = str(exc).lower()
    return name in ("IntegrityError", "DataError", "StatementError", "OverflowError", "ValueError") or (
        "out of range" in text or "too large" in text
    )
