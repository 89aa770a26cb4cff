"""The gateway service: in-memory account pool and API-key cache, counters, HTTP client, background work.

Registered as service "gateway". Everything the request path needs is in memory: accounts
and keys are loaded at start, reloaded when an admin changes them (and polled, so CLI edits
and other instances' edits arrive within seconds), spend so far is seeded from the store.
Other services use ``set_cooldown``, ``clear_cooldown``, ``reload`` and ``snapshot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.limits import PERIODS, KeyLimits
from relaymeter.domain.redact import sha256_hex
from relaymeter.domain.windows import zone
from relaymeter.gateway import metrics, shared_counters
from relaymeter.gateway.counters import Counters, RedisCounters
from relaymeter.gateway.oauth import TokenRefresher
from relaymeter.gateway.scheduler import Account, AccountPool, _match
from relaymeter.gateway.upstream import UpstreamClient, make_client
from relaymeter.state import AppState
from relaymeter.store import accounts as account_store
from relaymeter.store import keys as key_store

log = logging.getLogger(__name__)

DEFAULT_RESERVE_OUTPUT_TOKENS = 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class KeyRecord:
    id: int
    name: str
    prefix: str
    key_hash: str
    enabled: bool
    revoked: bool
    expires_ms: int | None
    models: tuple[str, ...] | None
    limits: KeyLimits
    avg_cost: float = 0.0  # moving average of the cost of a request (budget reservations)

    def allows(self, model: str) -> bool:
        return self.models is None or _match(self.models, model)

    def refusal(self, now: int) -> str | None:
        if self.revoked:
            return "this API key was revoked"
        if not self.enabled:
            return "this API key is disabled"
        if self.expires_ms is not None and now >= self.expires_ms:
            return "this API key expired"
        return None


def key_record(row: dict[str, Any]) -> KeyRecord:
    budgets = {p: row[col] for p, col in key_store.LIMIT_COLUMNS.items() if row.get(col) is not None}
    models = row.get("models")
    return KeyRecord(
        id=int(row["id"]),
        name=row["name"],
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        enabled=bool(row["enabled"]),
        revoked=bool(row["revoked"]),
        expires_ms=row.get("expires_ms"),
        models=tuple(models) if models is not None else None,
        limits=KeyLimits(
            int(row["id"]),
            max_concurrency=int(row.get("max_concurrency") or 0),
            rpm=int(row.get("rpm") or 0),
            tpm=int(row.get("tpm") or 0),
            budgets=budgets,
        ),
    )


def account_from_row(row: dict[str, Any], box: Any) -> Account:
    creds: dict[str, Any] = {}
    error = None
    if row.get("credentials_enc"):
        try:
            creds = orjson.loads(box.decrypt(row["credentials_enc"]))
        except (ValueError, orjson.JSONDecodeError) as exc:
            error = f"credentials unreadable: {exc}"
    models = row.get("models")
    return Account(
        id=int(row["id"]),
        name=row["name"],
        provider=row["provider"],
        kind=row["kind"],
        base_url=row.get("base_url"),
        priority=int(row.get("priority") or 0),
        weight=int(row.get("weight") or 1),
        max_concurrency=int(row.get("max_concurrency") or 0),
        enabled=bool(row["enabled"]),
        disabled_by=row.get("disabled_by"),
        models=tuple(models) if models is not None else None,
        model_map=dict(row.get("model_map") or {}),
        daily_request_cap=row.get("daily_request_cap"),
        daily_token_cap=row.get("daily_token_cap"),
        daily_cost_cap_micros=row.get("daily_cost_cap_micros"),
        proxy_url=row.get("proxy_url"),
        email=row.get("email"),
        plan=row.get("plan"),
        creds=creds,
        token_expires_ms=row.get("token_expires_ms"),
        updated_ms=int(row.get("updated_ms") or 0),
        credential_error=error,
    )


class GatewayService:
    name = "gateway"

    def __init__(self, state: AppState, *, clock: Any = now_ms) -> None:
        self.state = state
        settings = state.settings
        self.settings = settings
        self.tz = zone(settings.timezone)
        self.clock = clock
        self.pool = AccountPool(sticky_ttl_ms=settings.gateway_sticky_ttl_s * 1000, clock=clock)
        self.counters: Counters
        if settings.redis_url:
            self.counters = RedisCounters(
                settings.redis_url,
                settings.redis_prefix,
                self.tz,
                settings.week_start,
                settings.gateway_lease_ttl_s,
            )
        elif shared_counters.active() is not None:
            table, worker = shared_counters.active()  # type: ignore[misc]
            self.counters = shared_counters.SharedCounters(table, worker, self.tz, settings.week_start)
            self.pool.sessions = table.session_bindings()
        else:
            self.counters = Counters(self.tz, settings.week_start)
        self.pool.cap_check = lambda acc, now: self.counters.account_cap_reason(acc.caps, now)
        self.keys_by_hash: dict[str, KeyRecord] = {}
        self.keys_by_id: dict[int, KeyRecord] = {}
        self._client: UpstreamClient | None = None
        self.oauth = TokenRefresher(
            state.db,
            state.box,
            self.pool,
            self.client,
            getattr(self.counters, "redis", None),
            settings.redis_prefix,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._fingerprint: tuple[Any, ...] | None = None
        self._reload_lock = asyncio.Lock()
        self.model_cache: dict[int, tuple[int, list[str]]] = {}  # account -> (fetched_ms, ids)
        self._refreshing: set[int] = set()
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def client(self) -> UpstreamClient:
        if self._client is None:
            self._client = make_client(
                self.settings.gateway_http_client,
                self.settings.upstream_connect_timeout_s,
                self.settings.upstream_timeout_s,
            )
        return self._client

    async def start(self) -> None:
        metrics.register(self)
        await self.counters.start()
        await self.reload()
        await self.seed_counters()
        self.client()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="gateway-reload"),
            asyncio.create_task(self._health_loop(), name="gateway-health"),
            asyncio.create_task(self._oauth_loop(), name="gateway-oauth"),
        ]

    async def stop(self) -> None:
        metrics.unregister(self)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush_health()
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self.counters.close()

    async def reload(self) -> None:
        """Re-read gateway accounts and API keys from the store (runtime state is kept)."""
        async with self._reload_lock:
            fingerprint = (
                *await account_store.fingerprint(self.state.db),
                *await key_store.fingerprint(self.state.db),
            )
            rows = await account_store.list_accounts(self.state.db)
            self.pool.replace(account_from_row(r, self.state.box) for r in rows)
            for row in rows:  # health persisted by an earlier run (cooldowns survive restarts)
                acc = self.pool.accounts[int(row["id"])]
                if acc.cooldown_until_ms == 0 and (row.get("cooldown_until_ms") or 0) > self.clock():
                    acc.cooldown_until_ms = int(row["cooldown_until_ms"])
                    acc.cooldown_kind = "exhausted" if row.get("health") == "exhausted" else "rate_limit"
                    acc.cooldown_reason = row.get("health_reason")
            key_rows = await key_store.list_keys(self.state.db, origin=key_store.GATEWAY)
            by_hash: dict[str, KeyRecord] = {}
            by_id: dict[int, KeyRecord] = {}
            for row in key_rows:
                record = key_record(row)
                old = self.keys_by_id.get(record.id)
                if old is not None:
                    record.avg_cost = old.avg_cost
                by_hash[record.key_hash] = record
                by_id[record.id] = record
            new_budget_keys = [
                k.id
                for k in by_id.values()
                if k.limits.has_budget
                and (k.id not in self.keys_by_id or not self.keys_by_id[k.id].limits.has_budget)
            ]
            self.keys_by_hash, self.keys_by_id = by_hash, by_id
            self._fingerprint = fingerprint
        if new_budget_keys and self._tasks:
            # A budget added while running: its spend so far comes from the store.
            await self.seed_counters(new_budget_keys, accounts=False)

    async def seed_counters(self, key_ids: list[int] | None = None, *, accounts: bool = True) -> None:
        now = self.clock()
        windows = self.counters.clock.windows(now)
        ids = (
            key_ids
            if key_ids is not None
            else [k.id for k in self.keys_by_id.values() if k.limits.has_budget]
        )
        spans = {p: (windows[p].start_ms, now + 1) for p in PERIODS}
        spend = await key_store.spend(self.state.db, ids, spans)
        day_usage: dict[int, tuple[int, int, int]] = {}
        if accounts:
            day = windows["day"]
            day_usage = await account_store.day_usage(self.state.db, day.start_ms, now + 1)
            for acc_id in self.pool.accounts:
                day_usage.setdefault(acc_id, (0, 0, 0))
        await self.counters.seed(spend, day_usage, now)

    async def _poll_loop(self) -> None:
        interval = self.settings.gateway_reload_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                fingerprint = (
                    *await account_store.fingerprint(self.state.db),
                    *await key_store.fingerprint(self.state.db),
                )
                if fingerprint != self._fingerprint:
                    await self.reload()
            except Exception as exc:
                log.warning("gateway reload failed: %s", exc)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            try:
                await self.flush_health()
            except Exception as exc:
                log.warning("saving account health failed: %s", exc)

    async def flush_health(self) -> None:
        if not self.pool.dirty:
            return
        ids, self.pool.dirty = self.pool.dirty, set()
        await account_store.save_health(self.state.db, self.pool.health_rows(ids))

    async def _oauth_loop(self) -> None:
        while True:
            try:
                await self.oauth.refresh_due()
            except Exception as exc:
                log.warning("background token refresh failed: %s", exc)
            await asyncio.sleep(60)

    # -- interface for other services -------------------------------------------------------

    def set_cooldown(self, account_id: int, until_ms: int, reason: str, kind: str) -> None:
        """Skip an account until ``until_ms``; kind is 'rate_limit' or 'exhausted'."""
        metrics.COOLDOWNS.labels(kind).inc()
        self.pool.set_cooldown(account_id, until_ms, reason, kind)

    def clear_cooldown(self, account_id: int) -> None:
        self.pool.clear_cooldown(account_id)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-account in-memory state: load, health, cooldown, today's use against daily caps."""
        now = self.clock()
        out = []
        for acc in self.pool.accounts.values():
            day = self.counters.account_view(acc.id, now)
            cooling = acc.cooldown_until_ms > now
            out.append(
                {
                    "id": acc.id,
                    "name": acc.name,
                    "provider": acc.provider,
                    "kind": acc.kind,
                    "enabled": acc.enabled,
                    "priority": acc.priority,
                    "weight": acc.weight,
                    "in_flight": acc.in_flight,
                    "in_flight_shared": day.in_flight,
                    "max_concurrency": acc.max_concurrency,
                    "health": acc.health,
                    "health_reason": acc.health_reason,
                    "retry_at_ms": acc.retry_at_ms or None,
                    "cooldown_until_ms": acc.cooldown_until_ms if cooling else None,
                    "cooldown_kind": acc.cooldown_kind if cooling else None,
                    "reason": (acc.cooldown_reason if cooling else None) or acc.health_reason,
                    "available": self.pool.unavailable_reason(acc, next(iter(acc.routes), ""), "", now)
                    is None
                    if acc.routes
                    else False,
                    "unavailable_reason": self.pool.unavailable_reason(
                        acc, next(iter(acc.routes), ""), "", now
                    )
                    if acc.routes
                    else "this provider/kind cannot be relayed",
                    "today": {
                        "requests": day.requests,
                        "tokens": day.tokens,
                        "cost_micros": day.cost,
                        "request_cap": acc.daily_request_cap,
                        "token_cap": acc.daily_token_cap,
                        "cost_cap_micros": acc.daily_cost_cap_micros,
                    },
                    "token_expires_ms": acc.token_expires_ms,
                    "last_used_ms": acc.last_used_ms or None,
                    "requests": acc.requests,
                    "failures": acc.failures,
                }
            )
        return out

    def key_usage(self, key_id: int) -> dict[str, Any]:
        """Live counters of one key: in flight, reservations, RPM/TPM, spend per period."""
        view = self.counters.key_view(key_id, self.clock())
        record = self.keys_by_id.get(key_id)
        if record is not None:
            view["limits"] = {
                "max_concurrency": record.limits.max_concurrency,
                "rpm": record.limits.rpm,
                "tpm": record.limits.tpm,
                "budget_micros": {p: record.limits.budgets.get(p) for p in PERIODS},
            }
        return view

    # -- request path helpers --------------------------------------------------------------------

    def reservation(self, key: KeyRecord, provider: str, model: str, body_len: int, max_tokens: Any) -> int:
        """Micro-USD a request reserves against its key's budgets while in flight."""
        if not key.limits.has_budget:
            return 0
        estimate = 0
        pricer = self.state.writer.pricer
        if pricer is not None:
            out = (
                max_tokens
                if isinstance(max_tokens, int) and max_tokens > 0
                else DEFAULT_RESERVE_OUTPUT_TOKENS
            )
            probe = UsageEvent(
                event_hash="",
                ts_ms=self.clock(),
                source="gateway",
                provider=provider,
                model=model,
                actual_model=model,
                input_tokens=body_len // 4,
                output_tokens=min(out, DEFAULT_RESERVE_OUTPUT_TOKENS * 4),
            )
            probe.recompute_total()
            try:
                pricer.apply([probe])
                estimate = probe.cost_micros
            except Exception:
                estimate = 0
        return max(estimate, int(key.avg_cost))

    def oauth_refresh_soon(self, acc: Account) -> None:
        """After a 401 on an OAuth account: refresh its token in the background (once at a time)."""
        if acc.id in self._refreshing:
            return
        self._refreshing.add(acc.id)

        async def run() -> None:
            try:
                await self.oauth.refresh(acc, force=True)
            except Exception as exc:
                log.warning("account %s: %s", acc.name, exc)
            finally:
                self._refreshing.discard(acc.id)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def lookup_key(self, secret: str) -> KeyRecord | None:
        return self.keys_by_hash.get(sha256_hex(secret))


def factory(state: AppState) -> GatewayService | None:
    if not state.settings.gateway_enabled:
        return None
    return GatewayService(state)
