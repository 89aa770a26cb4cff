"""Sticky-session bindings (session -> account until a time): in this process, or shared by workers.

A binding is a hint that keeps a conversation on one account so its prompt cache stays warm;
the scheduler checks the bound account is still eligible before using it. So the shared map
needs no lock: a lost or torn update only costs one cache miss, never a wrong limit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

LOCAL_MAX = 100_000


class SessionMap(Protocol):
    def get(self, session: str, now_ms: int) -> int | None:
        """The account bound to ``session``, if the binding has not expired."""

    def bind(self, session: str, account_id: int, until_ms: int) -> None: ...


class LocalSessions:
    """Bindings of one process, least recently used dropped past ``limit``."""

    def __init__(self, limit: int = LOCAL_MAX) -> None:
        self.limit = limit
        self.bound: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def get(self, session: str, now_ms: int) -> int | None:
        entry = self.bound.get(session)
        return entry[0] if entry is not None and entry[1] > now_ms else None

    def bind(self, session: str, account_id: int, until_ms: int) -> None:
        self.bound[session] = (account_id, until_ms)
        self.bound.move_to_end(session)
        while len(self.bound) > self.limit:
            self.bound.popitem(last=False)


def session_hash(session: str) -> int:
    """A stable, non-zero 63-bit hash (the same in every process, unlike ``hash()``)."""
    value = int.from_bytes(hashlib.blake2b(session.encode(), digest_size=8).digest(), "little") >> 1
    return value or 1


class SharedSessions:
    """Bindings in a region of int64 slots shared by the worker processes (``SharedTable.sessions``).

    Direct-mapped: a session's hash picks its entry (hash, account id + 1, until); a newer
    session with the same slot replaces it. A writer clears the hash first and sets it last,
    and a reader checks the hash before and after reading the rest, so a half-written entry
    reads as no binding.
    """

    def __init__(self, slots: memoryview, base: int, count: int) -> None:
        self.q = slots
        self.base = base
        self.count = count

    def _entry(self, h: int) -> int:
        return self.base + 3 * (h % self.count)

    def get(self, session: str, now_ms: int) -> int | None:
        h = session_hash(session)
        q, at = self.q, self._entry(h)
        if q[at] != h:
            return None
        account, until = q[at + 1], q[at + 2]
        if q[at] != h or account <= 0 or until <= now_ms:
            return None
        return account - 1

    def bind(self, session: str, account_id: int, until_ms: int) -> None:
        h = session_hash(session)
        q, at = self.q, self._entry(h)
        if q[at] == h and q[at + 1] == account_id + 1:
            q[at + 2] = until_ms  # the usual case: the same binding, later expiry
            return
        q[at] = 0
        q[at + 1] = account_id + 1
        q[at + 2] = until_ms
        q[at] = h
