"""The collector service: one ConnectionRunner task per enabled CPA connection in the store.

It follows the cpa_connections table (reload() after a change through the API or CLI, and a
periodic check for changes made by another process), so connections can be added, edited
or removed while relaymeter runs. One failing connection never stalls another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relaymeter.ingest.cliproxy import metrics
from relaymeter.ingest.cliproxy.records import RecordNormalizer
from relaymeter.ingest.cliproxy.runner import ConnectionRunner, ConnectionSettings, process_holder
from relaymeter.ingest.cliproxy.status import ConnectionStatus
from relaymeter.state import AppState
from relaymeter.store import collector as store
from relaymeter.store.collector import CPAConnectionRow

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 15.0
STOP_GRACE_S = 15.0


@dataclass
class _Slot:
    row: CPAConnectionRow
    runner: ConnectionRunner | None
    task: asyncio.Task[ConnectionStatus] | None
    status: ConnectionStatus


def settings_from_row(state: AppState, row: CPAConnectionRow) -> ConnectionSettings:
    """Decrypt the management key; ValueError when the secret key changed since it was saved."""
    return ConnectionSettings(
        name=row.name,
        base_url=row.base_url,
        management_key=state.box.decrypt(row.management_key_enc),
        mode=row.mode,
        batch_size=row.batch_size,
        poll_interval_ms=row.poll_interval_ms,
    )


class CollectorService:
    """Runs the CPA connections of the store; ``status()`` reports each one."""

    name = "collector"

    def __init__(
        self,
        state: AppState,
        *,
        only: Sequence[str] | None = None,
        reconcile_interval_s: float = RECONCILE_INTERVAL_S,
    ) -> None:
        self.state = state
        self.only = set(only) if only else None
        self.reconcile_interval_s = reconcile_interval_s
        self.holder = process_holder()
        self.normalizer = RecordNormalizer(state.settings.collector_normalize_workers)
        self._slots: dict[int, _Slot] = {}
        self._lock = asyncio.Lock()
        self._reconciler: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        if self.reconcile_interval_s > 0:
            self._reconciler = asyncio.create_task(self._reconcile_loop(), name="collector-reconcile")

    async def stop(self) -> None:
        self._stopping = True
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
            self._reconciler = None
        async with self._lock:
            await self._stop_slots(list(self._slots.values()))
        self.normalizer.close()

    async def run_once(self) -> list[ConnectionStatus]:
        """Drain each enabled connection once (replaying its spool first), then return."""
        runners = []
        for row in await store.list_connections(self.state.db):
            if not self._wanted(row) or not (row.enabled or self.only):
                continue
            try:
                runner = self._runner(row)
            except ValueError as exc:
                status = _status_for(row, "config_error")
                status.last_error = str(exc)
                self._slots[row.id] = _Slot(row, None, None, status)
                continue
            self._slots[row.id] = _Slot(row, runner, None, runner.status)
            runners.append(runner)
        try:
            await asyncio.gather(*(r.run(once=True) for r in runners))
        finally:
            self.normalizer.close()
        return [s.status for s in sorted(self._slots.values(), key=lambda s: s.row.name)]

    async def wait(self) -> None:
        """Block until every running connection has stopped (e.g. all auth_failed)."""
        while True:
            tasks = [s.task for s in self._slots.values() if s.task is not None and not s.task.done()]
            if not tasks:
                return
            await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)

    # -- following the table -----------------------------------------------------------------

    def _wanted(self, row: CPAConnectionRow) -> bool:
        return self.only is None or row.name in self.only

    async def reload(self) -> None:
        """Start, restart or stop runners so they match the cpa_connections table."""
        if self._stopping:
            return
        rows = {r.id: r for r in await store.list_connections(self.state.db) if self._wanted(r)}
        async with self._lock:
            gone = [s for cid, s in self._slots.items() if cid not in rows]
            changed = [
                s
                for cid, s in self._slots.items()
                if cid in rows and rows[cid].updated_ms != s.row.updated_ms
            ]
            await self._stop_slots(gone + changed)
            for slot in gone:
                self._slots.pop(slot.row.id, None)
                if slot.row.name not in {r.name for r in rows.values()}:
                    metrics.forget(slot.row.name)
            for cid, row in rows.items():
                current = self._slots.get(cid)
                if current is not None and current.row.updated_ms == row.updated_ms:
                    continue
                self._slots[cid] = self._start_slot(row)

    async def restart(self, connection_id: int) -> bool:
        """Restart one connection (after fixing its key, or to retry an auth failure)."""
        async with self._lock:
            slot = self._slots.get(connection_id)
            if slot is None:
                return False
            await self._stop_slots([slot])
            row = await store.get_connection(self.state.db, connection_id=connection_id)
            if row is None:
                self._slots.pop(connection_id, None)
                return False
            self._slots[connection_id] = self._start_slot(row)
            return True

    async def stop_connection(self, connection_id: int) -> None:
        """Stop one connection (its batch in hand finishes); reload() starts it again."""
        async with self._lock:
            slot = self._slots.pop(connection_id, None)
            if slot is not None:
                await self._stop_slots([slot])

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval_s)
            try:
                await self.reload()
            except Exception:
                log.exception("collector: reloading connections failed")

    def _runner(self, row: CPAConnectionRow) -> ConnectionRunner:
        return ConnectionRunner(
            settings_from_row(self.state, row),
            db=self.state.db,
            writer=self.state.writer,
            holder=self.holder,
            keep_raw=self.state.settings.store_raw_payloads,
            normalizer=self.normalizer,
        )

    def _start_slot(self, row: CPAConnectionRow) -> _Slot:
        if not row.enabled:
            return _Slot(row, None, None, _status_for(row, "disabled"))
        try:
            runner = self._runner(row)
        except ValueError as exc:
            status = _status_for(row, "config_error")
            status.last_error = (
                f"{exc}: save the management key again (relaymeter cpa edit {row.name} --key -)"
                if "decrypt" in str(exc)
                else str(exc)
            )
            status.last_error_kind = "config_error"
            return _Slot(row, None, None, status)
        task = asyncio.create_task(runner.run(), name=f"collector:{row.name}")
        return _Slot(row, runner, task, runner.status)

    async def _stop_slots(self, slots: list[_Slot]) -> None:
        for slot in slots:
            if slot.runner is not None:
                slot.runner.stop()
        tasks = [s.task for s in slots if s.task is not None and not s.task.done()]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- status --------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """One dict per connection (see ConnectionStatus), ordered by name."""
        out = []
        for slot in sorted(self._slots.values(), key=lambda s: s.row.name):
            item = slot.status.to_dict()
            item["id"] = slot.row.id
            item["enabled"] = slot.row.enabled
            out.append(item)
        return out

    def status_of(self, connection_id: int) -> dict[str, Any] | None:
        for item in self.status():
            if item["id"] == connection_id:
                return item
        return None


def _status_for(row: CPAConnectionRow, state: str) -> ConnectionStatus:
    return ConnectionStatus(
        name=row.name,
        base_url=row.base_url,
        mode=row.mode,
        state=state,
        poll_interval_ms=row.poll_interval_ms,
        batch_size=row.batch_size,
    )


def collector_factory(state: AppState) -> CollectorService | None:
    """Service factory for `relaymeter serve`: on unless collector_enabled is false."""
    if not state.settings.collector_enabled:
        return None
    return CollectorService(state)
