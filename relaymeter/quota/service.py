"""Service "quota": refreshes provider windows on an interval and on demand, and tells the gateway.

- Refresh runs are single-flight: a caller that arrives while one runs waits for it and gets
  its report. A forced refresh skips accounts asked less than ``quota_force_cooldown_s`` ago
  (and says when they may be asked again); every account is fetched at most once at a time,
  with at most ``quota_max_parallel`` provider calls in flight.
- The scheduled refresh skips accounts whose account-wide window is exhausted until that
  window's reset, then asks again.
- An exhausted window (100%, or the provider says the limit is reached) puts a gateway
  account in an "exhausted" cooldown until the reset; room again clears it.
- The gateway hands every upstream response's headers to ``observe_headers`` (sync, cheap):
  rate-limit windows of API-key accounts come from there, stored at most once a minute per
  window unless they change; a 429 triggers ``on_rate_limited`` -> a refresh of that account.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from relaymeter.quota import metrics
from relaymeter.quota.fetchers import (
    FetchResult,
    QuotaTarget,
    classify,
    cpa_target,
    error_text,
    gateway_target,
    now_ms,
    parse_usage,
    usage_request,
)
from relaymeter.quota.parse import (
    FIVE_HOUR_S,
    SEVEN_DAY_S,
    ParseError,
    Window,
    exhausted_until,
    parse_headers,
)
from relaymeter.state import AppState
from relaymeter.store import quotas as quota_store
from relaymeter.store.quotas import SnapshotRow

log = logging.getLogger(__name__)

FIRST_RUN_DELAY_S = 30.0  # let the server settle before the first scheduled refresh
HEADER_PERSIST_MS = 60_000  # an unchanged header window is stored at most once a minute
RATE_LIMITED_GAP_MS = 60_000  # at most one 429-triggered refresh per account per minute
HISTORY_DAYS = 90
LOCAL_WINDOWS = {"five_hour": FIVE_HOUR_S * 1000, "seven_day": SEVEN_DAY_S * 1000}


@dataclass(slots=True)
class AccountStatus:
    last_attempt_ms: int = 0
    last_success_ms: int = 0
    last_status: str | None = None  # ok | rejected | error
    last_error: str | None = None
    http_status: int | None = None


@dataclass
class RefreshReport:
    started_ms: int
    finished_ms: int = 0
    force: bool = False
    joined: bool = False  # this caller waited for a refresh another caller started
    results: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return {
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "force": self.force,
            "joined": self.joined,
            "counts": counts,
            "results": self.results,
        }


class QuotaService:
    name = "quota"

    def __init__(
        self,
        state: AppState,
        *,
        clock: Callable[[], int] = now_ms,
        bases: dict[str, str] | None = None,
        first_run_delay_s: float = FIRST_RUN_DELAY_S,
    ) -> None:
        self.state = state
        self.clock = clock
        self.bases = dict(bases or {})
        self.first_run_delay_s = first_run_delay_s
        self.semaphore = asyncio.Semaphore(state.settings.quota_max_parallel)
        self.status: dict[int, AccountStatus] = {}
        self.exhausted: dict[int, int] = {}  # account -> until (ms) of an exhausted account window
        self.provider_calls = 0
        self.joins = 0  # callers that waited for a refresh someone else started
        self.last_run: RefreshReport | None = None
        self._run_task: asyncio.Task[RefreshReport] | None = None
        self._inflight: dict[int, asyncio.Task[FetchResult]] = {}
        self._header_seen: dict[tuple[int, str], tuple[Any, ...]] = {}
        self._pending: list[SnapshotRow] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._own_client: Any = None
        self._own_pool: Any = None
        self._own_refresher: Any = None
        self._last_prune_ms = 0

    @property
    def interval_ms(self) -> int:
        return int(self.state.settings.quota_refresh_interval_s) * 1000

    @property
    def cooldown_ms(self) -> int:
        return int(self.state.settings.quota_force_cooldown_s) * 1000

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._schedule(), name="quota-refresh"),
            asyncio.create_task(self._flush_loop(), name="quota-headers"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush_headers()
        await self.close()

    async def close(self) -> None:
        if self._own_client is not None:
            with contextlib.suppress(Exception):
                await self._own_client.close()
            self._own_client = None

    async def _schedule(self) -> None:
        await asyncio.sleep(self.first_run_delay_s)
        while True:
            try:
                await self.refresh(force=False)
                await self._maybe_prune()
            except Exception:
                log.exception("scheduled quota refresh failed")
            await asyncio.sleep(self.interval_ms / 1000)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            try:
                await self.flush_headers()
            except Exception as exc:
                log.warning("saving rate-limit header snapshots failed: %s", exc)

    async def _maybe_prune(self) -> None:
        now = self.clock()
        if now - self._last_prune_ms < 3_600_000:
            return
        self._last_prune_ms = now
        await quota_store.prune(self.state.db, now - HISTORY_DAYS * 86_400_000)

    # -- gateway bridge ------------------------------------------------------------------------

    def gateway(self) -> Any:
        from relaymeter.gateway.service import GatewayService

        service = self.state.services.get("gateway")
        return service if isinstance(service, GatewayService) else None

    async def _gateway_handles(self, account_id: int) -> tuple[Any, Any, Any]:
        """(Account, TokenRefresher, UpstreamClient) of a gateway account: the live ones if the
        gateway runs in this process (refreshed tokens then reach the pool), else our own."""
        gw = self.gateway()
        if gw is not None and account_id in gw.pool.accounts:
            return gw.pool.accounts[account_id], gw.oauth, gw.client()
        from relaymeter.gateway.oauth import TokenRefresher
        from relaymeter.gateway.scheduler import AccountPool
        from relaymeter.gateway.service import account_from_row
        from relaymeter.gateway.upstream import make_client
        from relaymeter.store import accounts as account_store

        if self._own_client is None:
            s = self.state.settings
            self._own_client = make_client(
                s.gateway_http_client, s.upstream_connect_timeout_s, min(s.upstream_timeout_s, 60.0)
            )
            self._own_pool = AccountPool()
            client = self._own_client
            self._own_refresher = TokenRefresher(
                self.state.db, self.state.box, self._own_pool, lambda: client
            )
        row = await account_store.get_account(self.state.db, account_id)
        if row is None:
            return None, None, None
        acc = self._own_pool.accounts.get(account_id)
        if acc is None or acc.updated_ms != int(row.get("updated_ms") or 0):
            acc = account_from_row(row, self.state.box)
            self._own_pool.accounts[account_id] = acc
        return acc, self._own_refresher, self._own_client

    # -- targets -------------------------------------------------------------------------------

    async def targets(
        self, account_ids: Sequence[int] | None = None
    ) -> tuple[list[QuotaTarget], list[dict[str, Any]]]:
        """Every account whose windows relaymeter can read, plus problems found on the way."""
        from relaymeter.store import accounts as account_store

        wanted = set(account_ids) if account_ids is not None else None
        problems: list[dict[str, Any]] = []
        rows = await account_store.list_accounts(
            self.state.db, ids=list(wanted) if wanted is not None else None
        )
        out: list[QuotaTarget] = []
        for row in rows:
            creds: dict[str, Any] = {}
            if row.get("credentials_enc"):
                try:
                    creds = orjson.loads(self.state.box.decrypt(row["credentials_enc"]))
                except (ValueError, orjson.JSONDecodeError):
                    creds = {}
            out.append(gateway_target(row, creds))
        if wanted is None or wanted - {t.account_id for t in out}:
            cpa_targets, cpa_problems = await self._cpa_targets()
            problems.extend(cpa_problems)
            out.extend(t for t in cpa_targets if wanted is None or t.account_id in wanted)
        return out, problems

    async def _cpa_targets(self) -> tuple[list[QuotaTarget], list[dict[str, Any]]]:
        from relaymeter.ingest.cliproxy.management import CPAError, ManagementClient
        from relaymeter.store import collector as collector_store

        targets: list[QuotaTarget] = []
        problems: list[dict[str, Any]] = []
        for conn in await collector_store.list_connections(self.state.db, enabled_only=True):
            try:
                key = self.state.box.decrypt(conn.management_key_enc)
            except ValueError as exc:
                problems.append({"connection": conn.name, "message": str(exc)})
                continue
            try:
                async with ManagementClient(conn.base_url, key, timeout=20.0) as cpa:
                    infos = await cpa.auth_file_infos()
            except CPAError as exc:
                problems.append({"connection": conn.name, "message": str(exc)})
                continue
            for info in infos.values():
                account_id = await quota_store.ensure_observed_account(
                    self.state.db,
                    f"cpa:{conn.name}",
                    info.auth_index,
                    name=info.display_name,
                    provider=info.provider,
                    plan=info.plan,
                    email=info.email,
                )
                targets.append(cpa_target(account_id, conn.name, info))
        return targets, problems

    # -- fetching ------------------------------------------------------------------------------

    async def fetch(self, target: QuotaTarget) -> FetchResult:
        """Fetch one account's windows (deduplicated: one call per account at a time), store and apply."""
        running = self._inflight.get(target.account_id)
        if running is not None and not running.done():
            return await asyncio.shield(running)
        task = asyncio.create_task(self._fetch_and_record(target))
        self._inflight[target.account_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            if self._inflight.get(target.account_id) is task and task.done():
                self._inflight.pop(target.account_id, None)

    async def _fetch_and_record(self, target: QuotaTarget) -> FetchResult:
        status = self.status.setdefault(target.account_id, AccountStatus())
        async with self.semaphore:
            status.last_attempt_ms = self.clock()
            try:
                result = await (self._fetch_cpa(target) if target.via_cpa else self._fetch_direct(target))
            except Exception as exc:  # a fetch must never break the refresh of other accounts
                log.exception("quota fetch of %s failed", target.name)
                result = FetchResult(target.account_id, "error", message=f"{type(exc).__name__}: {exc}"[:300])
        result.fetched_ms = self.clock()
        metrics.FETCHES.labels(result.status).inc()
        status.last_status = result.status
        status.http_status = result.http_status
        if result.status == "ok" and result.report is not None:
            status.last_success_ms = result.fetched_ms
            status.last_error = None
            await self._record(target, result)
        else:
            status.last_error = result.message
        return result

    async def _fetch_direct(self, target: QuotaTarget) -> FetchResult:
        from relaymeter.gateway.oauth import RefreshError, access_token
        from relaymeter.gateway.upstream import UpstreamError

        acc, refresher, client = await self._gateway_handles(target.account_id)
        if acc is None:
            return FetchResult(target.account_id, "error", message="account not found")
        if acc.credential_error:
            return FetchResult(target.account_id, "error", message=acc.credential_error)
        method, url, headers, body = usage_request(target, self.bases)
        refreshed = False
        try:
            token = await refresher.token_for(acc)
        except RefreshError as exc:
            return FetchResult(
                target.account_id, _refresh_outcome(exc), message=f"token refresh failed: {exc}"
            )
        for attempt in range(2):
            send_headers = {**headers, "authorization": f"Bearer {token}"}
            try:
                self.provider_calls += 1
                resp = await client.send(method, url, send_headers, body, acc.proxy_url)
                raw = await resp.read()
            except UpstreamError as exc:
                return FetchResult(target.account_id, "error", message=f"usage endpoint unreachable: {exc}")
            if resp.status == 401 and attempt == 0 and acc.creds.get("refresh_token"):
                # The token expired early or was revoked: refresh it and ask once more.
                try:
                    await refresher.refresh(acc, force=True)
                except RefreshError as exc:
                    return FetchResult(
                        target.account_id,
                        _refresh_outcome(exc),
                        http_status=401,
                        message=f"token refresh failed: {exc}",
                    )
                token, refreshed = access_token(acc), True
                continue
            break
        return self._result(target, resp.status, raw, "oauth_usage", refreshed)

    async def _fetch_cpa(self, target: QuotaTarget) -> FetchResult:
        from relaymeter.ingest.cliproxy.management import CPAError, ManagementClient
        from relaymeter.store import collector as collector_store

        conn = await collector_store.get_connection(self.state.db, name=target.connection)
        if conn is None:
            return FetchResult(
                target.account_id, "error", message=f"CPA connection {target.connection} is gone"
            )
        method, url, headers, body = usage_request(target, self.bases)
        headers["authorization"] = "Bearer $TOKEN$"
        try:
            key = self.state.box.decrypt(conn.management_key_enc)
            async with ManagementClient(conn.base_url, key, timeout=30.0) as cpa:
                self.provider_calls += 1
                answer = await cpa.api_call(
                    target.auth_index or "", method, url, header=headers, data=body.decode() if body else None
                )
        except CPAError as exc:
            text = str(exc)
            rejected = exc.status == 400 and ("refresh failed" in text or "token not found" in text)
            return FetchResult(
                target.account_id,
                "rejected" if rejected else "error",
                message=text[:300],
                origin="cpa_api_call",
            )
        except ValueError as exc:
            return FetchResult(target.account_id, "error", message=str(exc), origin="cpa_api_call")
        return self._result(target, answer.status_code, answer.body.encode(), "cpa_api_call", False)

    def _result(
        self, target: QuotaTarget, status: int, raw: bytes, origin: str, refreshed: bool
    ) -> FetchResult:
        if status >= 400:
            return FetchResult(
                target.account_id,
                classify(status),
                http_status=status,
                message=f"usage endpoint answered {status}: {error_text(raw)}",
                origin=origin,
                refreshed_token=refreshed,
            )
        try:
            report = parse_usage(target.quota_kind or "", raw, self.clock())
        except ParseError as exc:
            return FetchResult(
                target.account_id, "error", http_status=status, message=str(exc), origin=origin
            )
        return FetchResult(
            target.account_id,
            "ok",
            report=report,
            http_status=status,
            origin=origin,
            refreshed_token=refreshed,
        )

    async def _record(self, target: QuotaTarget, result: FetchResult) -> None:
        assert result.report is not None
        info = dict(result.report.info)
        rows = [
            SnapshotRow(
                account_id=target.account_id,
                window=w.name,
                used_percent=w.used_percent,
                remaining=w.remaining,
                limit_value=w.limit_value,
                resets_at_ms=w.resets_at_ms,
                window_seconds=w.window_seconds,
                limit_reached=w.limit_reached,
                origin=result.origin,
                extra={**w.extra, **({"account": info} if info else {})} or None,
                fetched_ms=result.fetched_ms,
            )
            for w in result.report.windows
        ]
        if not rows:  # remember that the provider was asked even when it listed no window
            rows = [
                SnapshotRow(
                    target.account_id,
                    "none",
                    None,
                    None,
                    None,
                    None,
                    None,
                    False,
                    result.origin,
                    info or None,
                    result.fetched_ms,
                )
            ]
        await quota_store.insert_snapshots(self.state.db, rows)
        self._publish(target.name, result.report.windows)
        self.apply_windows(target.account_id, result.report.windows, from_headers=False)

    def _publish(self, account: str, windows: list[Window]) -> None:
        for w in windows:
            if w.used_percent is not None:
                metrics.USED_PERCENT.labels(account, w.name).set(w.used_percent)
            if w.resets_at_ms is not None:
                metrics.RESETS_AT.labels(account, w.name).set(w.resets_at_ms / 1000)

    def apply_windows(self, account_id: int, windows: list[Window], *, from_headers: bool) -> None:
        """Cool an exhausted account down until its reset (gateway + our own schedule), or clear it."""
        now = self.clock()
        hit = exhausted_until(windows, now)
        gw = self.gateway()
        acc = gw.pool.accounts.get(account_id) if gw is not None else None
        if hit is not None:
            until, reason = hit
            # Unknown reset: look again at the next refresh (headers: in a minute).
            until = until or now + (HEADER_PERSIST_MS if from_headers else self.interval_ms)
            self.exhausted[account_id] = until
            if acc is not None:
                gw.set_cooldown(account_id, until, reason, "exhausted")
            return
        if from_headers and not any(
            w.name in ("five_hour", "seven_day", "primary", "secondary") for w in windows
        ):
            return  # per-minute API limits say nothing about the account-wide windows
        self.exhausted.pop(account_id, None)
        if acc is not None and acc.cooldown_kind == "exhausted" and acc.cooldown_until_ms > now:
            gw.clear_cooldown(account_id)

    # -- refresh runs --------------------------------------------------------------------------

    async def refresh(self, *, force: bool = True, account_ids: Sequence[int] | None = None) -> RefreshReport:
        """Refresh windows now (single-flight: joins a refresh that is already running)."""
        running = self._run_task
        if running is not None and not running.done():
            self.joins += 1
            report = await asyncio.shield(running)
            return RefreshReport(report.started_ms, report.finished_ms, report.force, True, report.results)
        task = asyncio.create_task(self._run(force, account_ids))
        self._run_task = task
        return await asyncio.shield(task)

    async def _run(self, force: bool, account_ids: Sequence[int] | None) -> RefreshReport:
        report = RefreshReport(started_ms=self.clock(), force=force)
        targets, problems = await self.targets(account_ids)
        for problem in problems:
            report.results.append(
                {
                    "account_id": None,
                    "name": problem["connection"],
                    "status": "error",
                    "message": problem["message"],
                }
            )
        fetchable = [t for t in targets if t.quota_kind is not None]
        stored = (
            await quota_store.last_fetched(self.state.db, [t.account_id for t in fetchable])
            if fetchable
            else {}
        )
        now = self.clock()
        due: list[QuotaTarget] = []
        for t in targets:
            entry: dict[str, Any] = {"account_id": t.account_id, "name": t.name, "origin": t.origin}
            if t.quota_kind is None:
                if account_ids is not None:
                    report.results.append(
                        {**entry, "status": "headers_only", "message": "windows come from relayed responses"}
                    )
                continue
            last = max(
                self.status.get(t.account_id, AccountStatus()).last_attempt_ms, stored.get(t.account_id, 0)
            )
            if force:
                wait_ms = last + self.cooldown_ms - now if last else 0
                if wait_ms > 0:
                    report.results.append(
                        {
                            **entry,
                            "status": "skipped",
                            "retry_after_s": -(-wait_ms // 1000),
                            "message": f"asked {(now - last) // 1000} s ago; next refresh allowed in {-(-wait_ms // 1000)} s",
                        }
                    )
                    continue
            else:
                if not t.enabled or t.cpa_disabled:
                    continue
                until = self.exhausted.get(t.account_id, 0)
                if until > now:
                    report.results.append(
                        {
                            **entry,
                            "status": "skipped",
                            "message": "window exhausted until its reset",
                            "until_ms": until,
                        }
                    )
                    continue
                if last and now - last < self.interval_ms * 0.9:
                    continue
            due.append(t)
        results = await asyncio.gather(*(self.fetch(t) for t in due))
        for t, res in zip(due, results, strict=True):
            item: dict[str, Any] = {
                "account_id": t.account_id,
                "name": t.name,
                "origin": t.origin,
                "status": res.status,
            }
            if res.message:
                item["message"] = res.message
            if res.http_status is not None:
                item["http_status"] = res.http_status
            if res.report is not None:
                item["windows"] = len(res.report.windows)
            if res.refreshed_token:
                item["refreshed_token"] = True
            report.results.append(item)
        report.finished_ms = self.clock()
        self.last_run = report
        return report

    def next_allowed_in_s(self, account_id: int, stored_last: int = 0) -> int:
        last = max(self.status.get(account_id, AccountStatus()).last_attempt_ms, stored_last)
        wait_ms = last + self.cooldown_ms - self.clock() if last else 0
        return max(0, -(-wait_ms // 1000))

    # -- passive: headers of relayed responses --------------------------------------------------

    def observe_headers(self, account_id: int, provider: str, status: int, headers: Any) -> None:
        """Called by the gateway after every upstream response; never raises, never waits."""
        try:
            now = self.clock()
            windows = parse_headers(headers, now)
            if not windows:
                return
            for w in windows:
                key = (account_id, w.name)
                shape = (
                    round(w.used_percent or 0.0),
                    w.remaining,
                    (w.resets_at_ms or 0) // 60_000,
                    w.limit_reached,
                )
                seen = self._header_seen.get(key)
                if seen is not None and seen[0] == shape and now - seen[1] < HEADER_PERSIST_MS:
                    continue
                self._header_seen[key] = (shape, now)
                self._pending.append(
                    SnapshotRow(
                        account_id,
                        w.name,
                        w.used_percent,
                        w.remaining,
                        w.limit_value,
                        w.resets_at_ms,
                        w.window_seconds,
                        w.limit_reached,
                        "headers",
                        {**w.extra, "provider": provider, "status": status},
                        now,
                    )
                )
            if len(self._pending) > 10_000:  # the store is unreachable: keep the newest
                del self._pending[: len(self._pending) - 10_000]
            gw = self.gateway()
            acc = gw.pool.accounts.get(account_id) if gw is not None else None
            if acc is not None:
                self._publish(acc.name, windows)
            self.apply_windows(account_id, windows, from_headers=True)
        except Exception:
            log.exception("reading rate-limit headers failed")

    def on_rate_limited(self, account_id: int) -> None:
        """After a 429: refresh that account's windows soon (at most once a minute)."""
        status = self.status.get(account_id)
        if status is not None and self.clock() - status.last_attempt_ms < RATE_LIMITED_GAP_MS:
            return
        running = self._inflight.get(account_id)
        if running is not None and not running.done():
            return
        self.status.setdefault(account_id, AccountStatus()).last_attempt_ms = self.clock()

        async def go() -> None:
            targets, _ = await self.targets([account_id])
            for t in targets:
                if t.quota_kind is not None:
                    await self.fetch(t)

        task = asyncio.create_task(go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush_headers(self) -> int:
        rows, self._pending = self._pending, []
        if rows:
            try:
                await quota_store.insert_snapshots(self.state.db, rows)
            except Exception:
                self._pending = rows + self._pending
                raise
        return len(rows)

    # -- views ---------------------------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        """Latest window per account, our own 5 h / 7 d usage, fetch status and cooldowns."""
        from relaymeter.store import accounts as account_store

        await self.flush_headers()
        now = self.clock()
        latest = await quota_store.latest(self.state.db)
        gateway_rows = await account_store.list_accounts(self.state.db)
        ids = {int(r["id"]) for r in gateway_rows} | {int(r["account_id"]) for r in latest} | set(self.status)
        accounts = await quota_store.accounts_by_id(self.state.db, ids)
        stored_last = await quota_store.last_fetched(self.state.db, list(ids))
        by_account: dict[int, list[dict[str, Any]]] = {}
        for row in latest:
            by_account.setdefault(int(row["account_id"]), []).append(row)
        starts: dict[str, dict[int, int]] = {name: {} for name in LOCAL_WINDOWS}
        aligned: dict[tuple[int, str], bool] = {}
        for account_id in ids:
            resets = {r["window"]: r["resets_at_ms"] for r in by_account.get(account_id, [])}
            for name, length in LOCAL_WINDOWS.items():
                reset = resets.get(name)
                if reset is not None and now < reset <= now + length:
                    starts[name][account_id] = reset - length
                    aligned[(account_id, name)] = True
                else:
                    starts[name][account_id] = now + 1 - length
        local = {
            name: await quota_store.local_usage(self.state.db, spans, now + 1)
            for name, spans in starts.items()
        }
        gw = self.gateway()
        items = []
        for account_id in sorted(ids, key=lambda i: (str(accounts.get(i, {}).get("name", "")).lower(), i)):
            acc = accounts.get(account_id)
            if acc is None:
                continue
            windows = []
            info: dict[str, Any] = {}
            for row in by_account.get(account_id, []):
                if row["window"] == "none":
                    continue
                extra = dict(row.get("extra") or {})
                if isinstance(extra.get("account"), dict):
                    info = extra.pop("account")
                used = row["used_percent"]
                windows.append(
                    {
                        "window": row["window"],
                        "used_percent": used,
                        "remaining_percent": None if used is None else max(0.0, 100.0 - used),
                        "remaining": row["remaining"],
                        "limit": row["limit_value"],
                        "resets_at_ms": row["resets_at_ms"],
                        "window_seconds": row["window_seconds"],
                        "limit_reached": row["limit_reached"] or (used is not None and used >= 100),
                        "origin": row["origin"],
                        "fetched_ms": row["fetched_ms"],
                        "extra": extra,
                    }
                )
            status = self.status.get(account_id)
            live = gw.pool.accounts.get(account_id) if gw is not None else None
            cooldown = None
            if live is not None and live.cooldown_until_ms > now:
                cooldown = {
                    "until_ms": live.cooldown_until_ms,
                    "kind": live.cooldown_kind,
                    "reason": live.cooldown_reason,
                }
            items.append(
                {
                    "account_id": account_id,
                    "name": acc["name"],
                    "origin": acc["origin"],
                    "provider": acc["provider"],
                    "kind": acc["kind"],
                    "enabled": bool(acc["enabled"]),
                    "disabled_by": acc["disabled_by"],
                    "plan": info.get("plan") or acc["plan"],
                    "email": acc["email"],
                    "info": info,
                    "windows": windows,
                    "fetched_ms": stored_last.get(account_id),
                    "last_attempt_ms": status.last_attempt_ms if status else None,
                    "last_status": status.last_status if status else None,
                    "last_error": status.last_error if status else None,
                    "next_refresh_allowed_in_s": self.next_allowed_in_s(
                        account_id, stored_last.get(account_id, 0)
                    ),
                    "exhausted_until_ms": self.exhausted.get(account_id)
                    if self.exhausted.get(account_id, 0) > now
                    else None,
                    "cooldown": cooldown,
                    "local": {
                        name: {
                            "start_ms": starts[name][account_id],
                            "end_ms": now,
                            "aligned_to_reset": aligned.get((account_id, name), False),
                            **local[name].get(
                                account_id, {"requests": 0, "total_tokens": 0, "cost_micros": 0}
                            ),
                        }
                        for name in LOCAL_WINDOWS
                    },
                }
            )
        running = self._run_task is not None and not self._run_task.done()
        return {
            "generated_ms": now,
            "refresh": {
                "running": running,
                "interval_s": self.interval_ms // 1000,
                "force_cooldown_s": self.cooldown_ms // 1000,
                "last_run_ms": self.last_run.finished_ms if self.last_run else None,
            },
            "accounts": items,
        }


def _refresh_outcome(exc: Exception) -> str:
    """A refresh the token endpoint refused means dead credentials; anything else may pass."""
    text = str(exc)
    if (
        "answered 400" in text
        or "answered 401" in text
        or "answered 403" in text
        or "no refresh token" in text
    ):
        return "rejected"
    return "error"


def quota_service(state: AppState) -> QuotaService:
    return QuotaService(state)
