"""Retention: delete raw events older than retention_days in small batches, then give SQLite
space back with an incremental vacuum. Rollups are kept, so summaries of old periods stay.

Each batch is its own short write transaction with a pause after it, so the usage writer
(and any other writer) gets the database between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field

from relaymeter.domain.windows import DAY_MS, now_ms
from relaymeter.state import AppState
from relaymeter.store import events as store_events
from relaymeter.store import maintenance
from relaymeter.store.db import Database

log = logging.getLogger(__name__)

BATCH = 2000
PAUSE_S = 0.05
VACUUM_PAGES = 500  # ~2 MB per short transaction with 4 KiB pages
INTERVAL_S = 3600.0
FIRST_RUN_DELAY_S = 30.0


@dataclass
class RetentionResult:
    started_ms: int
    finished_ms: int = 0
    cutoff_ms: int | None = None
    deleted: int = 0
    pages_freed: int = 0
    error: str | None = None
    skipped: str | None = None


@dataclass
class RetentionStatus:
    last: RetentionResult | None = None
    running: bool = False
    runs: int = 0
    deleted_total: int = 0
    history: list[RetentionResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "running": self.running,
            "runs": self.runs,
            "deleted_total": self.deleted_total,
            "last": asdict(self.last) if self.last else None,
        }


async def purge(
    db: Database,
    cutoff_ms: int,
    *,
    batch: int = BATCH,
    pause_s: float = PAUSE_S,
    vacuum_pages: int = VACUUM_PAGES,
    stop: asyncio.Event | None = None,
) -> tuple[int, int]:
    """Delete events with ts_ms < cutoff (batch by batch) and reclaim space; (deleted, pages freed)."""
    deleted = 0
    while stop is None or not stop.is_set():
        # Advance the cutoff about one batch at a time so each delete_events_before call is
        # a single short transaction, and pause between them.
        step = await maintenance.ts_after_oldest(db, batch)
        if step is None or step >= cutoff_ms:
            deleted += await store_events.delete_events_before(db, cutoff_ms, batch=batch)
            break
        n = await store_events.delete_events_before(db, step, batch=batch)
        if n == 0:  # more than a batch of events share the oldest timestamp
            n = await store_events.delete_events_before(db, step + 1, batch=batch)
        deleted += n
        await asyncio.sleep(pause_s)
    freed = 0
    while stop is None or not stop.is_set():
        got = await maintenance.incremental_vacuum(db, vacuum_pages)
        freed += got
        if got < vacuum_pages:
            break
        await asyncio.sleep(pause_s)
    return deleted, freed


class RetentionService:
    """Runs purge() shortly after start and then every hour while retention_days > 0."""

    name = "retention"

    def __init__(
        self, state: AppState, *, interval_s: float = INTERVAL_S, first_delay_s: float = FIRST_RUN_DELAY_S
    ):
        self.state = state
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.status = RetentionStatus()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        delay = self.first_delay_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            await self.run_once()
            delay = self.interval_s

    async def run_once(self) -> RetentionResult:
        """One retention pass with the current retention_days (also used by the admin API)."""
        async with self._lock:
            result = RetentionResult(started_ms=now_ms())
            self.status.running = True
            try:
                days = self.state.settings.retention_days
                if days <= 0:
                    result.skipped = "retention_days is 0 (keep everything)"
                else:
                    result.cutoff_ms = now_ms() - days * DAY_MS
                    started = time.perf_counter()
                    result.deleted, result.pages_freed = await purge(
                        self.state.db, result.cutoff_ms, stop=self._stop
                    )
                    if result.deleted:
                        log.info(
                            "retention: deleted %d events older than %d days in %.1f s, freed %d pages",
                            result.deleted,
                            days,
                            time.perf_counter() - started,
                            result.pages_freed,
                        )
            except Exception as exc:  # keep the service alive; the next run retries
                log.exception("retention run failed")
                result.error = f"{type(exc).__name__}: {exc}"[:500]
            finally:
                result.finished_ms = now_ms()
                self.status.running = False
                self.status.runs += 1
                self.status.deleted_total += result.deleted
                self.status.last = result
            return result


def retention_service(state: AppState) -> RetentionService:
    return RetentionService(state)
