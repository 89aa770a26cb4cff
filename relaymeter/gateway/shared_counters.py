"""Admission counters shared by the worker processes of one `relaymeter serve` (no Redis needed).

The figures live in a memory-mapped file of int64 slots; every change happens under an
exclusive ``flock`` held for a few microseconds, never across an ``await``, and runs the same
rules as the in-memory counters (``Counters``) on the record loaded from the file, so limits
are exact across processes. Each worker also records its own share of the in-flight slots and
reservations, so the supervisor gives back what a crashed worker held.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from datetime import tzinfo
from pathlib import Path
from typing import Any

from relaymeter.domain.limits import PERIODS, AccountCaps, Denial, KeyLimits
from relaymeter.gateway.counters import AccountState, Counters, KeyState, _release_local
from relaymeter.gateway.sessions import SharedSessions

MAGIC = 0x524D_4757_0002  # "RMGW" v2 (v2 added the session bindings)
_HEADER = 8
# key record: id+1, in_flight, reserved, rpm minute/curr/prev, tpm minute/curr/prev, then per
# period (window start + 1, micros); 0 in a window start means "nothing counted yet".
_K_ID, _K_INFLIGHT, _K_RESERVED, _K_RPM, _K_TPM, _K_SPEND = 0, 1, 2, 3, 6, 9
KEY_FIELDS = _K_SPEND + 2 * len(PERIODS)
# account record: id+1, in_flight, day start, requests, tokens, cost
ACC_FIELDS = 6
_KEY = struct.Struct(f"={KEY_FIELDS}q")
_ACC = struct.Struct(f"={ACC_FIELDS}q")
_KEY_HEAD = struct.Struct(f"={_K_SPEND - _K_INFLIGHT}q")  # in_flight .. tpm, without the spend


def _key_head(state: KeyState) -> tuple[int, ...]:
    """A key record's fields from in_flight to tpm (the _KEY_HEAD layout)."""
    rpm, tpm = state.rpm, state.tpm
    return (state.in_flight, state.reserved, rpm.minute, rpm.curr, rpm.prev, tpm.minute, tpm.curr, tpm.prev)


_SPEND_FIELDS = tuple((period, _K_SPEND + 2 * i) for i, period in enumerate(PERIODS))
_NO_SPEND = [0] * (2 * len(PERIODS))


class SharedTable:
    """The file layout: header, key records, account records, per-worker shares, session bindings."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool = False,
        workers: int = 1,
        keys: int = 16384,
        accounts: int = 4096,
        sessions: int = 131072,
    ):
        self.path = path
        if create:
            shares = workers * (2 * keys + accounts)
            size = 8 * (_HEADER + keys * KEY_FIELDS + accounts * ACC_FIELDS + shares + 3 * sessions)
            with open(path, "wb") as fh:
                fh.truncate(size)
        self.fd = os.open(path, os.O_RDWR)
        self.mm = mmap.mmap(self.fd, 0)
        self.q = memoryview(self.mm).cast("q")
        if create:
            self.q[0], self.q[1], self.q[2], self.q[3], self.q[4] = MAGIC, keys, accounts, workers, sessions
        if self.q[0] != MAGIC:
            raise RuntimeError(f"{path} is not a relaymeter counters file")
        self.keys, self.accounts, self.workers, self.sessions = self.q[1], self.q[2], self.q[3], self.q[4]
        self.acc_base = _HEADER + self.keys * KEY_FIELDS
        self.share_base = self.acc_base + self.accounts * ACC_FIELDS
        # Sticky-session bindings (gateway.sessions.SharedSessions): 3 slots each, no lock.
        self.session_base = self.share_base + self.workers * (2 * self.keys + self.accounts)
        self._key_slots: dict[int, int] = {}
        self._acc_slots: dict[int, int] = {}

    def close(self) -> None:
        self.q.release()
        self.mm.close()
        os.close(self.fd)

    def session_bindings(self) -> SharedSessions:
        """The sticky-session region of this mapping (lock-free; see gateway.sessions)."""
        return SharedSessions(self.q, self.session_base, self.sessions)

    def lock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock()
        try:
            yield
        finally:
            self.unlock()

    def _slot(self, ident: int, base: int, width: int, count: int, cache: dict[int, int]) -> int:
        """Offset of the record of ``ident`` (found or claimed by linear probing; under the lock)."""
        offset = cache.get(ident)
        if offset is not None:
            return offset
        q = self.q
        for i in range(count):
            offset = base + ((ident + i) % count) * width
            held = q[offset]
            if held == ident + 1 or held == 0:
                q[offset] = ident + 1
                cache[ident] = offset
                return offset
        raise RuntimeError("shared counters table is full")

    def key_offset(self, key_id: int) -> int:
        return self._slot(key_id, _HEADER, KEY_FIELDS, self.keys, self._key_slots)

    def acc_offset(self, account_id: int) -> int:
        return self._slot(account_id, self.acc_base, ACC_FIELDS, self.accounts, self._acc_slots)

    def share(self, worker: int, key_offset: int) -> int:
        """Offset of a worker's (in_flight, reserved) share of one key record."""
        index = (key_offset - _HEADER) // KEY_FIELDS
        return self.share_base + worker * (2 * self.keys + self.accounts) + 2 * index

    def acc_share(self, worker: int, acc_offset: int) -> int:
        index = (acc_offset - self.acc_base) // ACC_FIELDS
        return self.share_base + worker * (2 * self.keys + self.accounts) + 2 * self.keys + index

    def release_worker(self, worker: int) -> None:
        """Give back the slots and reservations a (dead) worker still held."""
        q = self.q
        with self.locked():
            base = self.share_base + worker * (2 * self.keys + self.accounts)
            for index in range(self.keys):
                at = base + 2 * index
                if q[at] or q[at + 1]:
                    record = _HEADER + index * KEY_FIELDS
                    q[record + _K_INFLIGHT] = max(0, q[record + _K_INFLIGHT] - q[at])
                    q[record + _K_RESERVED] = max(0, q[record + _K_RESERVED] - q[at + 1])
                    q[at] = q[at + 1] = 0
            for index in range(self.accounts):
                at = base + 2 * self.keys + index
                if q[at]:
                    record = self.acc_base + index * ACC_FIELDS
                    q[record + 1] = max(0, q[record + 1] - q[at])
                    q[at] = 0


class SharedCounters(Counters):
    """``Counters`` whose figures live in a ``SharedTable`` (leases stay in this process)."""

    backend = "shared"

    def __init__(self, table: SharedTable, worker: int, tz: tzinfo, week_start: str = "monday") -> None:
        super().__init__(tz, week_start)
        self.table = table
        self.worker = worker

    # -- records <-> local state (under the lock) ----------------------------------------------

    def _load_key(self, key_id: int, at: int) -> KeyState:
        state = self.keys.get(key_id)
        if state is None:
            state = self.keys[key_id] = KeyState()
        r = _KEY.unpack_from(self.table.mm, 8 * at)
        state.in_flight, state.reserved = r[_K_INFLIGHT], r[_K_RESERVED]
        rpm, tpm = state.rpm, state.tpm
        rpm.minute, rpm.curr, rpm.prev = r[_K_RPM], r[_K_RPM + 1], r[_K_RPM + 2]
        tpm.minute, tpm.curr, tpm.prev = r[_K_TPM], r[_K_TPM + 1], r[_K_TPM + 2]
        state.spend = {period: [r[i] - 1, r[i + 1]] for period, i in _SPEND_FIELDS if r[i]}
        return state

    def key_state(self, key_id: int) -> KeyState:
        return self._load_key(key_id, self.table.key_offset(key_id))

    def _store_key(
        self, key_id: int, state: KeyState, d_in_flight: int = 0, d_reserved: int = 0, at: int = -1
    ) -> None:
        table = self.table
        if at < 0:
            at = table.key_offset(key_id)
        spend = state.spend
        if spend:
            periods: list[int] = []
            for period in PERIODS:
                slot = spend.get(period)
                periods += (slot[0] + 1, slot[1]) if slot else (0, 0)
        else:
            periods = _NO_SPEND
        _KEY.pack_into(table.mm, 8 * at, key_id + 1, *_key_head(state), *periods)
        if d_in_flight or d_reserved:
            q = table.q
            share = table.share(self.worker, at)
            q[share] += d_in_flight
            q[share + 1] += d_reserved

    def _load_account(self, account_id: int, at: int, now_ms: int) -> AccountState:
        state = self.accounts.get(account_id)
        if state is None:
            state = self.accounts[account_id] = AccountState()
        _id, state.in_flight, state.day_start, state.requests, state.tokens, state.cost = _ACC.unpack_from(
            self.table.mm, 8 * at
        )
        state.roll(self.clock.day(now_ms))
        return state

    def account_state(self, account_id: int, now_ms: int) -> AccountState:
        return self._load_account(account_id, self.table.acc_offset(account_id), now_ms)

    def _store_account(
        self, account_id: int, state: AccountState, d_in_flight: int = 0, at: int = -1
    ) -> None:
        table = self.table
        if at < 0:
            at = table.acc_offset(account_id)
        _ACC.pack_into(
            table.mm,
            8 * at,
            account_id + 1,
            state.in_flight,
            state.day_start,
            state.requests,
            state.tokens,
            state.cost,
        )
        if d_in_flight:
            table.q[table.acc_share(self.worker, at)] += d_in_flight

    # -- views and admission: the base rules, under the lock ----------------------------------

    def key_view(self, key_id: int, now_ms: int) -> dict[str, Any]:
        with self.table.locked():
            return super().key_view(key_id, now_ms)

    def account_view(self, account_id: int, now_ms: int) -> AccountState:
        with self.table.locked():
            return self.account_state(account_id, now_ms)

    def account_cap_reason(self, caps: AccountCaps, now_ms: int) -> str | None:
        if not caps.has_daily_caps:
            return None  # no lock for nothing to check
        with self.table.locked():
            return super().account_cap_reason(caps, now_ms)

    async def seed(
        self,
        key_spend: dict[int, dict[str, int]],
        account_day: dict[int, tuple[int, int, int]],
        now_ms: int,
    ) -> None:
        """Spend so far from the store: replaces the shared figures (like ``Counters.seed``)."""
        windows = self.clock.windows(now_ms)
        day = windows["day"]
        with self.table.locked():
            for key_id, periods in key_spend.items():
                state = self.key_state(key_id)
                for period, micros in periods.items():
                    state.spend[period] = [windows[period].start_ms, micros]
                self._store_key(key_id, state)
            for account_id, (requests, tokens, cost) in account_day.items():
                acc = self.account_state(account_id, now_ms)
                acc.day_start = day.start_ms
                acc.requests, acc.tokens, acc.cost = requests, tokens, cost
                self._store_account(account_id, acc)

    async def admit_key(self, limits: KeyLimits, lease: str, reserve: int, now_ms: int) -> Denial | None:
        table = self.table
        table.lock()
        try:
            denial = await super().admit_key(limits, lease, reserve, now_ms)  # never suspends
            if denial is None:
                # Admission changes the in-flight figures and the rates, never the spend.
                state = self.keys[limits.key_id]
                at = table.key_offset(limits.key_id)
                _KEY_HEAD.pack_into(table.mm, 8 * (at + _K_INFLIGHT), *_key_head(state))
                share = table.share(self.worker, at)
                table.q[share] += 1
                table.q[share + 1] += reserve
        finally:
            table.unlock()
        return denial

    async def finish_key(self, limits: KeyLimits, lease: str, cost: int, tokens: int, now_ms: int) -> None:
        self.table.lock()
        try:
            self._finish_key_shared(limits.key_id, lease, cost, tokens, now_ms)
        finally:
            self.table.unlock()

    def _finish_key_shared(self, key_id: int, lease: str, cost: int, tokens: int, now_ms: int) -> None:
        at = self.table.key_offset(key_id)
        state = self._load_key(key_id, at)
        reserve = state.leases.get(lease)
        self._finish_key_local(state, lease, cost, tokens, now_ms)
        held = reserve is not None
        self._store_key(key_id, state, -1 if held else 0, -(reserve or 0), at)

    async def acquire_account(self, caps: AccountCaps, lease: str, now_ms: int) -> str | None:
        self.table.lock()
        try:
            reason = await super().acquire_account(caps, lease, now_ms)  # never suspends
            if reason is None:
                self._store_account(caps.account_id, self.accounts[caps.account_id], 1)
        finally:
            self.table.unlock()
        return reason

    async def release_account(
        self, caps: AccountCaps, lease: str, *, served: bool, tokens: int, cost: int, now_ms: int
    ) -> None:
        self.table.lock()
        try:
            self._release_account_shared(caps.account_id, served, tokens, cost, now_ms)
        finally:
            self.table.unlock()

    def _release_account_shared(
        self, account_id: int, served: bool, tokens: int, cost: int, now_ms: int
    ) -> None:
        at = self.table.acc_offset(account_id)
        state = self._load_account(account_id, at, now_ms)
        _release_local(state, served, tokens, cost)
        self._store_account(account_id, state, -1, at)

    async def finish(
        self,
        limits: KeyLimits,
        lease: str,
        caps: AccountCaps | None,
        acc_lease: str,
        *,
        tokens: int,
        cost: int,
        now_ms: int,
    ) -> None:
        """``release_account`` (served) and ``finish_key`` under one hold of the lock."""
        self.table.lock()
        try:
            if caps is not None:
                self._release_account_shared(caps.account_id, True, tokens, cost, now_ms)
            self._finish_key_shared(limits.key_id, lease, cost, tokens, now_ms)
        finally:
            self.table.unlock()

    async def close(self) -> None:
        return None


# The supervisor of `relaymeter serve --workers N` sets this in each worker before the app starts.
_active: tuple[SharedTable, int] | None = None


def activate(path: Path, worker: int) -> None:
    """Use the shared table at ``path`` as this process's gateway counters (worker ``worker``)."""
    global _active
    _active = (SharedTable(path), worker)


def active() -> tuple[SharedTable, int] | None:
    return _active
