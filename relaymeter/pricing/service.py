"""Service "pricing": keeps the writer's pricer current and runs one background reprice at a time.

Any process that changes prices bumps a version in the store; this service notices a new
version within ``check_interval_s`` (e.g. after `relaymeter prices set` in another
process) and swaps in a freshly loaded pricer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relaymeter.domain.windows import parse_time_ms, zone
from relaymeter.pricing.catalogue import Pricer
from relaymeter.state import AppState
from relaymeter.store import prices as price_store

log = logging.getLogger(__name__)
_DURATION = re.compile(r"^(\d+)\s*([mhdw])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_since(value: str, tz: str | None = None, now_ms: int | None = None) -> int:
    """Epoch ms from a duration back from now (``7d``, ``12h``, ``30m``, ``2w``), ISO time or epoch."""
    text = value.strip().lower()
    match = _DURATION.match(text)
    if match:
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        return now - int(match.group(1)) * _UNIT_MS[match.group(2)]
    return parse_time_ms(value, zone(tz))


async def reload_pricer(state: AppState) -> Pricer:
    """Load every stored price and install it as the writer's pricer (takes effect at once)."""
    pricer = await price_store.load_pricer(state.db)
    state.writer.pricer = pricer
    return pricer


def current_pricer(state: AppState) -> Pricer | None:
    pricer = state.writer.pricer
    return pricer if isinstance(pricer, Pricer) else None


@dataclass
class RepriceJob:
    id: int
    since_ms: int | None
    until_ms: int | None
    models: list[str]
    started_ms: int
    state: str = "running"  # running | done | failed
    done: int = 0
    total: int = 0
    finished_ms: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "models": self.models,
            "done": self.done,
            "total": self.total,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "error": self.error,
            "result": self.result,
        }


class JobRunning(Exception):
    def __init__(self, job: RepriceJob) -> None:
        super().__init__(f"reprice job {job.id} is still running ({job.done}/{job.total})")
        self.job = job


class PricingService:
    name = "pricing"

    def __init__(self, state: AppState, check_interval_s: float = 30.0) -> None:
        self.state = state
        self.check_interval_s = check_interval_s
        self._task: asyncio.Task[None] | None = None
        self.job: RepriceJob | None = None
        self._job_ids = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="pricing-watch")

    async def stop(self) -> None:
        for task in (self._task, self.job.task if self.job else None):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None

    async def check(self) -> bool:
        """Reload the pricer when the stored version changed; True when it did."""
        version = await price_store.get_version(self.state.db)
        current = current_pricer(self.state)
        if current is not None and current.version == version:
            return False
        await reload_pricer(self.state)
        log.info("prices reloaded (version %s)", version)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("checking the price version failed")

    def start_reprice(
        self, *, since_ms: int | None = None, until_ms: int | None = None, models: Sequence[str] = ()
    ) -> RepriceJob:
        if self.job is not None and self.job.state == "running":
            raise JobRunning(self.job)
        self._job_ids += 1
        job = RepriceJob(self._job_ids, since_ms, until_ms, list(models), time.time_ns() // 1_000_000)
        job.task = asyncio.create_task(self._run(job), name=f"reprice-{job.id}")
        self.job = job
        return job

    async def _run(self, job: RepriceJob) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            pricer = await reload_pricer(self.state)
            stats = await price_store.reprice(
                self.state.db,
                pricer,
                since_ms=job.since_ms,
                until_ms=job.until_ms,
                models=job.models,
                progress=progress,
            )
            job.result = stats.to_dict()
            job.state = "done"
        except asyncio.CancelledError:
            job.state, job.error = "failed", "cancelled (server stopping)"
            raise
        except Exception as exc:
            log.exception("reprice job %d failed", job.id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"[:500]
        finally:
            job.finished_ms = time.time_ns() // 1_000_000


def pricing_service(state: AppState) -> PricingService:
    return PricingService(state)
