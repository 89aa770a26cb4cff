"""One CPA connection's consumer: lease, spool replay, config checks, then pop -> spool (durable)
-> normalize -> single write path -> unspool, with backoff and jitter on errors.

Auth failures stop the connection for good (CPA bans an address after five bad keys); a
poll interval that would let CPA expire records is refused before anything is popped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relaymeter.domain.events import UsageEvent
from relaymeter.ingest.cliproxy import metrics
from relaymeter.ingest.cliproxy.management import (
    AuthFileInfo,
    CPAAuthError,
    CPABannedError,
    CPAError,
    CPAForbiddenError,
    CPANotFoundError,
    CPAUnavailableError,
    ManagementClient,
    PopResult,
    normalize_base_url,
)
from relaymeter.ingest.cliproxy.records import RecordNormalizer
from relaymeter.ingest.cliproxy.resp import RespQueue
from relaymeter.ingest.cliproxy.status import ConnectionStatus
from relaymeter.ingest.writer import UsageWriter
from relaymeter.store import collector as store
from relaymeter.store.db import Database

log = logging.getLogger(__name__)

MODES = ("auto", "http", "resp")
LEASE_TTL_MS = 30_000
ACCOUNTS_REFRESH_S = 300.0
UNKNOWN_ACCOUNT_REFRESH_S = 60.0
CONFIG_RECHECK_S = 300.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
ONCE_MAX_ATTEMPTS = 3
# Batches being parsed and stored while the next one is popped and spooled (they are already
# durable in the spool, so overlapping them risks nothing).
MAX_INFLIGHT = 3
# Env hook for the crash-recovery test: after a batch is spooled (or stored), write a marker
# file and hang so the test can kill -9 the process at exactly that point.
HOLD_ENV = "RELAYMETER_TEST_COLLECTOR_HOLD"


class ConfigRefused(Exception):
    """A connection setting that would lose records or cannot work; stop and report it."""


class LeaseLost(Exception):
    """Another process took this CPA's consumer lease."""


@dataclass(slots=True)
class ConnectionSettings:
    name: str
    base_url: str
    management_key: str
    mode: str = "auto"
    batch_size: int = 1000
    poll_interval_ms: int = 2000
    verify_tls: bool = True

    @property
    def source(self) -> str:
        return f"cpa:{self.name}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def lease_name(base_url: str) -> str:
    """One lease per CPA instance (its normalized URL), whatever the connection is called."""
    name = "cpa:" + normalize_base_url(base_url)
    if len(name) > 120:
        name = "cpa:" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return name


def check_poll_interval(poll_interval_ms: int, retention_s: int) -> None:
    """Refuse a poll interval that gives CPA's queue pruning a chance to drop records.

    Records live ``retention_s`` in CPA; a poll every P seconds (plus the time a slow batch
    takes) must stay well inside that, so P may be at most half the retention.
    """
    limit_ms = retention_s * 1000 // 2
    if poll_interval_ms > limit_ms:
        raise ConfigRefused(
            f"poll interval {poll_interval_ms / 1000:g} s is unsafe: this CPA keeps queued usage "
            f"records for {retention_s} s (redis-usage-queue-retention-seconds), so records could "
            f"expire before they are read. Use a poll interval of at most {limit_ms / 1000:g} s, "
            "or raise redis-usage-queue-retention-seconds in CPA's config (max 3600)"
        )


class Backoff:
    """1 s doubling to 30 s, each delay jittered by +-20% so reconnects do not align."""

    def __init__(self, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return min(self.cap, delay * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        self.attempt = 0


def process_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def holder_is_dead(holder: str) -> bool:
    """A lease holder on this machine whose process no longer exists (crashed, killed)."""
    parts = holder.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ConnectionRunner:
    """Consumes one CPA's usage queue until stopped (or, with once=True, until it is empty)."""

    def __init__(
        self,
        cfg: ConnectionSettings,
        *,
        db: Database,
        writer: UsageWriter,
        holder: str,
        keep_raw: bool = True,
        lease_ttl_ms: int = LEASE_TTL_MS,
        resp_queue: RespQueue | None = None,
        normalizer: RecordNormalizer | None = None,
    ) -> None:
        """``resp_queue`` replaces the RESP endpoint derived from the CPA URL (e.g. a Redis
        list standing in for CPA's RESP side); it is then kept across reconnects.
        ``normalizer`` (shared, maybe with a worker process) turns records into events."""
        if cfg.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.cfg = cfg
        self.db = db
        self.writer = writer
        self.keep_raw = keep_raw
        self.normalizer = normalizer or RecordNormalizer()
        self.source = cfg.source
        self.holder = f"{holder}:{cfg.name}"
        self.lease = lease_name(cfg.base_url)
        self.lease_ttl_ms = lease_ttl_ms
        self.status = ConnectionStatus(
            name=cfg.name,
            base_url=normalize_base_url(cfg.base_url),
            mode=cfg.mode,
            poll_interval_ms=cfg.poll_interval_ms,
            batch_size=cfg.batch_size,
        )
        self._stop = asyncio.Event()
        self._backoff = Backoff()
        self._mgmt: ManagementClient | None = None
        self._resp: RespQueue | None = resp_queue
        self._resp_given = resp_queue is not None
        self._transport: str | None = None
        self._ready = False
        self._replayed = False
        self._lease_renewed = 0.0
        self._config_checked = 0.0
        self._accounts: dict[str, AuthFileInfo] = {}
        self._accounts_loaded = 0.0
        self._synced: set[str] = set()
        self._hold = os.environ.get(HOLD_ENV, "")
        self._inflight: list[asyncio.Task[None]] = []

    # -- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, then return from run()."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, once: bool = False) -> ConnectionStatus:
        st = self.status
        st.started_ms = now_ms()
        self.normalizer.start()  # its workers start up meanwhile
        try:
            if await self._acquire_lease(once=once):
                await self._consume(once=once)
        finally:
            await self._abandon_inflight()
            metrics.UP.labels(self.cfg.name).set(0)
            await self._close_transports()
            with contextlib.suppress(Exception):
                await asyncio.shield(store.release_lease(self.db, self.lease, self.holder))
            if st.state not in ("auth_failed", "banned", "config_error", "lease_wait", "failed"):
                st.state = "stopped"
            st.next_retry_ms = None
        return st

    # -- lease -------------------------------------------------------------------------------

    async def _acquire_lease(self, *, once: bool) -> bool:
        st = self.status
        while not self.stopping:
            try:
                lease = await store.acquire_lease(self.db, self.lease, self.holder, self.lease_ttl_ms)
                if not lease.acquired and holder_is_dead(lease.holder):
                    log.info(
                        "collector %s: taking over the lease of dead process %s", self.cfg.name, lease.holder
                    )
                    lease = await store.acquire_lease(
                        self.db, self.lease, self.holder, self.lease_ttl_ms, take_over_from=lease.holder
                    )
            except Exception as exc:
                self._error("store", f"cannot take the consumer lease: {exc}")
                if once:
                    st.state = "failed"
                    return False
                await self._sleep(self._backoff.next())
                continue
            if lease.acquired:
                self._lease_renewed = time.monotonic()
                st.lease_holder = None
                if st.state == "lease_wait":
                    st.state = "starting"
                return True
            st.state = "lease_wait"
            st.lease_holder = lease.holder
            st.last_error = (
                f"another relaymeter process ({lease.holder}) is consuming this CPA's usage queue; "
                "only one consumer per CPA is allowed, waiting for its lease to be released"
            )
            st.last_error_kind = "lease_held"
            st.last_error_ms = now_ms()
            if once:
                return False
            await self._sleep(self.lease_ttl_ms / 3000)
        return False

    async def _renew_lease(self) -> None:
        if time.monotonic() - self._lease_renewed < self.lease_ttl_ms / 3000:
            return
        lease = await store.acquire_lease(self.db, self.lease, self.holder, self.lease_ttl_ms)
        if not lease.acquired:
            raise LeaseLost(lease.holder)
        self._lease_renewed = time.monotonic()

    # -- main loop ---------------------------------------------------------------------------

    async def _consume(self, *, once: bool) -> None:
        st = self.status
        failures = 0
        while not self.stopping:
            try:
                await self._renew_lease()
                if not self._replayed:
                    await self._replay_spool()
                    self._replayed = True
                if not self._ready:
                    await self._setup()
                elif time.monotonic() - self._config_checked > CONFIG_RECHECK_S:
                    await self._check_config()
                count = await self._pop_once()
                self._backoff.reset()
                failures = 0
                st.next_retry_ms = None
                st.last_poll_ms = now_ms()
                metrics.LAST_SUCCESS.labels(self.cfg.name).set(time.time())
                metrics.UP.labels(self.cfg.name).set(1)
                if count >= self.cfg.batch_size:
                    st.state = "running"
                    continue  # a full batch: more is waiting, pop again at once
                await self._drain_inflight()
                st.state = "idle"
                if once:
                    return
                await self._refresh_accounts_if_due()
                await self._sleep(self.cfg.poll_interval_ms / 1000)
            except CPABannedError as exc:
                await self._abandon_inflight()
                self._terminal("banned", str(exc))
                return
            except CPAAuthError as exc:
                await self._abandon_inflight()
                self._terminal("auth_failed", str(exc))
                return
            except (ConfigRefused, CPAForbiddenError) as exc:
                await self._abandon_inflight()
                self._terminal("config_error", str(exc))
                return
            except LeaseLost as exc:
                await self._abandon_inflight()
                await self._close_transports()
                self._ready = False
                self._error("lease_lost", f"process {exc} took over this CPA's consumer lease")
                if not await self._acquire_lease(once=once):
                    return
                self._replayed = False
            except Exception as exc:
                kind = (
                    exc.kind if isinstance(exc, CPAError) else "store" if _is_store_error(exc) else "internal"
                )
                if kind == "internal":
                    log.exception("collector %s: unexpected error", self.cfg.name)
                delay = self._backoff.next()
                st.state = "backoff"
                st.next_retry_ms = now_ms() + int(delay * 1000)
                self._error(kind, str(exc) or type(exc).__name__)
                metrics.UP.labels(self.cfg.name).set(0)
                await self._abandon_inflight()
                await self._close_transports()
                self._ready = False
                failures += 1
                if once and failures >= ONCE_MAX_ATTEMPTS:
                    st.state = "failed"
                    st.next_retry_ms = None
                    return
                await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        """Wait (stoppable), renewing the lease meanwhile so long poll intervals keep it."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = min(remaining, self.lease_ttl_ms / 3000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), step)
            if self._lease_renewed and not self.stopping and time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    await self._renew_lease()

    def _error(self, kind: str, message: str) -> None:
        st = self.status
        st.errors_total += 1
        st.last_error = message[:1000]
        st.last_error_kind = kind
        st.last_error_ms = now_ms()
        metrics.ERRORS.labels(self.cfg.name, kind).inc()
        log.warning("collector %s: %s", self.cfg.name, message)

    def _terminal(self, state: str, message: str) -> None:
        self._error(state, message)
        self.status.state = state
        self.status.next_retry_ms = None
        log.error("collector %s stopped (%s): %s", self.cfg.name, state, message)

    # -- CPA side ----------------------------------------------------------------------------

    def _management(self) -> ManagementClient:
        if self._mgmt is None:
            self._mgmt = ManagementClient(
                self.cfg.base_url, self.cfg.management_key, verify=self.cfg.verify_tls
            )
        return self._mgmt

    def _resp_queue(self) -> RespQueue:
        if self._resp is None:
            self._resp = RespQueue.for_cpa(
                self.cfg.base_url, self.cfg.management_key, verify_tls=self.cfg.verify_tls
            )
        return self._resp

    async def _close_transports(self) -> None:
        if self._mgmt is not None:
            with contextlib.suppress(Exception):
                await self._mgmt.aclose()
            self._mgmt = None
        if self._resp is not None:
            await self._resp.close()
            if not self._resp_given:
                self._resp = None

    async def _setup(self) -> None:
        await self._check_config()
        await self._refresh_accounts(force=True)
        if self._transport is None:
            self._transport = "resp" if self.cfg.mode == "resp" else "http"
        self.status.transport = self._transport
        self._ready = True

    async def _check_config(self) -> None:
        mgmt = self._management()
        try:
            config = await mgmt.get_config()
        except CPANotFoundError:
            raise ConfigRefused(
                f"CPA at {mgmt.base_url} has no management API (404 on /v0/management/config): set "
                "remote-management.secret-key in CPA's config and use that key here"
            ) from None
        retention = await mgmt.retention_seconds(config)
        st = self.status
        st.retention_s = retention
        st.cpa_version = mgmt.version.version or st.cpa_version
        check_poll_interval(self.cfg.poll_interval_ms, retention)
        if "usage-statistics-enabled" in config:
            enabled = bool(config["usage-statistics-enabled"])
        else:
            enabled = await mgmt.usage_statistics_enabled()
        st.publishing_enabled = enabled
        st.warnings = [w for w in st.warnings if not w.startswith("CPA usage publishing is off")]
        if not enabled:
            st.warnings.append(
                "CPA usage publishing is off (usage-statistics-enabled: false), so CPA queues no "
                f"records. Turn it on: relaymeter cpa publishing {self.cfg.name} on"
            )
        self._config_checked = time.monotonic()

    async def _refresh_accounts_if_due(self) -> None:
        if time.monotonic() - self._accounts_loaded > ACCOUNTS_REFRESH_S:
            await self._refresh_accounts()

    async def _refresh_accounts(self, *, force: bool = False) -> None:
        """Reload /auth-files and name this connection's observed accounts after it."""
        if not force and time.monotonic() - self._accounts_loaded < UNKNOWN_ACCOUNT_REFRESH_S:
            return
        self._accounts_loaded = time.monotonic()
        try:
            infos = await self._management().auth_file_infos()
        except CPAAuthError:
            raise
        except CPAError as exc:
            # Naming accounts is a nicety: never let it stop collection.
            log.info("collector %s: auth-files unavailable: %s", self.cfg.name, exc)
            return
        self._accounts = infos
        if infos:
            # Rows that exist get their names now; accounts the write path creates later are
            # named right after their first events are stored (_name_new_accounts).
            await store.update_observed_accounts(
                self.db, self.source, [_account_values(i) for i in infos.values()]
            )

    async def _pop(self) -> PopResult:
        size = self.cfg.batch_size
        if self._transport == "resp":
            return await self._resp_queue().pop(size)
        try:
            # Records a worker process will normalize travel there as the text they came in.
            return await self._management().pop_usage(size, keep_items=not self.normalizer.ships(size))
        except CPANotFoundError:
            if self.cfg.mode != "auto":
                raise ConfigRefused(
                    "this CPA has no HTTP usage queue (GET /v0/management/usage-queue is 404; CPA "
                    "older than 6.10.8): use mode 'auto' or 'resp'"
                ) from None
            log.info("collector %s: no HTTP usage queue (older CPA), switching to RESP", self.cfg.name)
            self._transport = "resp"
            self.status.transport = "resp"
            return await self._resp_queue().pop(size)

    async def _pop_once(self) -> int:
        result = await self._pop()
        count = len(result)
        if not count:
            if result.truncated:
                raise CPAUnavailableError("the connection dropped before any record of the batch arrived")
            return 0
        received = now_ms()
        # The batch is durable before a single record of it is parsed.
        spool_id = (await store.spool_add(self.db, self.cfg.name, [result.spool_text()], received))[0]
        st = self.status
        st.consumed_total += count
        st.last_consumed_ms = received
        st.spool_pending += count
        metrics.RECORDS_CONSUMED.labels(self.cfg.name).inc(count)
        metrics.SPOOL_PENDING.labels(self.cfg.name).set(st.spool_pending)
        self._hold_if_asked("spooled")
        # A whole HTTP answer for a worker process travels on as its text (parsed there).
        body, truncated = result.body, result.truncated
        shipped = result.size is not None or (body is not None and self.normalizer.ships(count))
        items = None if shipped else result.items
        del result
        self._inflight.append(
            asyncio.create_task(self._process(spool_id, items, received, body=body, count=count))
        )
        del items
        if truncated:
            raise CPAUnavailableError(
                f"connection to CPA dropped mid-batch: kept the {count} complete records that "
                "arrived; CPA had already removed the rest of that batch from its queue"
            )
        while len(self._inflight) >= MAX_INFLIGHT or (self._inflight and self._inflight[0].done()):
            await self._inflight.pop(0)
        return count

    async def _drain_inflight(self) -> None:
        """Wait for the batches in hand; the first failure propagates (its rows stay spooled)."""
        while self._inflight:
            await self._inflight.pop(0)

    async def _abandon_inflight(self) -> None:
        """After an error: let in-hand batches finish, and replay whatever stayed spooled."""
        tasks, self._inflight = self._inflight, []
        for task in tasks:
            try:
                await task
            except Exception as exc:
                log.warning("collector %s: a batch stays spooled for replay: %s", self.cfg.name, exc)
        self._replayed = False

    # -- records -> events ---------------------------------------------------------------------

    async def replay_spool(self) -> int:
        """Store what an earlier run left spooled (no CPA needed); returns how many records."""
        before = self.status.replayed_total
        await self._replay_spool()
        return self.status.replayed_total - before

    async def _replay_spool(self) -> None:
        """Finish batches spooled by an earlier run that ended between pop and store."""
        after = 0
        replayed = 0
        while True:
            rows = await store.spool_pending(self.db, self.cfg.name, after_id=after)
            if not rows:
                break
            for row in rows:
                items = _spooled_items(row.raw)
                self.status.spool_pending += len(items)
                self.status.replayed_total += len(items)
                await self._process(row.id, items, row.received_ms)
                replayed += len(items)
            after = rows[-1].id
        if replayed:
            log.info("collector %s: replayed %d spooled records from an earlier run", self.cfg.name, replayed)

    async def _process(
        self,
        spool_id: int,
        items: Sequence[Any] | None,
        received_ms: int,
        *,
        body: str | None = None,
        count: int | None = None,
    ) -> None:
        """Normalize a spooled batch, store its events, then unspool it with its dead letters.

        ``body`` is the batch's JSON array text when it arrived whole (``items`` may then be
        None, and ``count`` says how many records it holds)."""
        if count is None:
            count = len(items) if items is not None else 0
        events, bad = await self.normalizer(
            items, source=self.source, received_ms=received_ms, keep_raw=self.keep_raw, body=body
        )
        for event in events:
            info = self._accounts.get(event.auth_index) if event.auth_index else None
            if info is not None:
                event.account_label = info.display_name
                if not event.provider:
                    event.provider = info.provider
        st = self.status
        flags: list[bool] = []
        if events:
            try:
                flags = await self.writer.write(events)
            except Exception as exc:
                if not await self.db.ping():
                    raise  # store down: the batch stays spooled and is replayed
                # The store is up, so the writer already dead-lettered the events it could not
                # store (with their full content) after its retries: nothing is lost.
                self._error("store", f"some events could not be stored and were dead-lettered: {exc}")
        self._hold_if_asked("stored")
        await store.spool_finish(self.db, self.cfg.name, self.source, [spool_id], bad)
        new = sum(flags)
        st.inserted_total += new
        st.duplicates_total += len(flags) - new
        st.dead_letters_total += len(bad)
        st.spool_pending = max(st.spool_pending - count, 0)
        metrics.EVENTS_INSERTED.labels(self.cfg.name).inc(new)
        metrics.EVENTS_DUPLICATE.labels(self.cfg.name).inc(len(flags) - new)
        metrics.DEAD_LETTERS.labels(self.cfg.name).inc(len(bad))
        metrics.SPOOL_PENDING.labels(self.cfg.name).set(st.spool_pending)
        if new:
            st.last_inserted_ms = now_ms()
        timed = [e.ts_ms for e in events if not e.time_from_receipt]
        if timed:
            st.lag_ms = max(0, now_ms() - max(timed))
            metrics.LAG_SECONDS.labels(self.cfg.name).set(st.lag_ms / 1000)
        if events:
            await self._name_new_accounts(events)

    async def _name_new_accounts(self, events: Sequence[UsageEvent]) -> None:
        fresh = {e.auth_index for e in events if e.auth_index and e.auth_index not in self._synced}
        if not fresh:
            return
        if any(i not in self._accounts for i in fresh) and self._ready:
            with contextlib.suppress(CPAError):
                await self._refresh_accounts()
        known = [self._accounts[i] for i in fresh if i in self._accounts]
        if known:
            await store.update_observed_accounts(self.db, self.source, [_account_values(i) for i in known])
            self._synced.update(i.auth_index for i in known)

    def _hold_if_asked(self, point: str) -> None:
        if not self._hold or not self._hold.startswith(point + ":"):
            return
        marker = self._hold.split(":", 1)[1]
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        while True:  # until the test kills this process
            time.sleep(1)


def _account_values(info: AuthFileInfo) -> dict[str, Any]:
    return {
        "external_id": info.auth_index,
        "name": info.display_name,
        "provider": info.provider,
        "plan": info.plan,
        "email": info.email,
    }


def _spooled_items(raw: str) -> list[Any]:
    """The items of a spooled batch (a JSON array text); anything else is one raw item."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [raw]
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else [raw]


def _is_store_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("sqlalchemy", "sqlite3", "asyncpg", "aiosqlite"))
