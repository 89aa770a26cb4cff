"""Admission counters: concurrency, rate (RPM / TPM) and spend, per API key and per account.

``MemoryCounters`` serve one instance. ``RedisCounters`` keep the same state in Redis, changed
only by Lua scripts (atomic), with concurrency slots held as leases that expire unless the
holder renews them, so a crashed instance never leaks a slot and several instances behind a
load balancer enforce one limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from relaymeter.domain.limits import (
    FOREVER_MS,
    MINUTE_MS,
    PERIODS,
    AccountCaps,
    Denial,
    KeyLimits,
    PeriodClock,
    Window,
    account_cap_reason,
    budget_denial,
    concurrency_denial,
    minute_of,
    rate_denial,
    sliding_count,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Rate:
    minute: int = 0
    curr: int = 0
    prev: int = 0

    def roll(self, minute: int) -> None:
        if minute == self.minute:
            return
        self.prev = self.curr if minute == self.minute + 1 else 0
        self.curr = 0
        self.minute = minute

    def used(self, now_ms: int) -> float:
        self.roll(minute_of(now_ms))
        return sliding_count(self.prev, self.curr, now_ms)


@dataclass(slots=True)
class KeyState:
    in_flight: int = 0
    reserved: int = 0
    leases: dict[str, int] = field(default_factory=dict)  # lease -> reserved micros
    rpm: _Rate = field(default_factory=_Rate)
    tpm: _Rate = field(default_factory=_Rate)
    spend: dict[str, list[int]] = field(default_factory=dict)  # period -> [window start, micros]

    def spent(self, period: str, window: Window) -> int:
        slot = self.spend.get(period)
        if slot is None or slot[0] != window.start_ms:
            return 0
        return slot[1]

    def add_spend(self, period: str, window: Window, micros: int) -> None:
        slot = self.spend.get(period)
        if slot is None or slot[0] != window.start_ms:
            self.spend[period] = [window.start_ms, micros]
        else:
            slot[1] += micros


@dataclass(slots=True)
class AccountState:
    in_flight: int = 0
    day_start: int = 0
    requests: int = 0
    tokens: int = 0
    cost: int = 0

    def roll(self, day: Window) -> None:
        if self.day_start != day.start_ms:
            self.day_start = day.start_ms
            self.requests = self.tokens = self.cost = 0


class Counters:
    """Base: the in-memory view every backend keeps (exact in memory, a cache over Redis)."""

    backend = "memory"

    def __init__(self, tz: tzinfo, week_start: str = "monday") -> None:
        self.clock = PeriodClock(tz, week_start)
        self.tz = tz
        self.keys: dict[int, KeyState] = {}
        self.accounts: dict[int, AccountState] = {}

    def key_state(self, key_id: int) -> KeyState:
        state = self.keys.get(key_id)
        if state is None:
            state = self.keys[key_id] = KeyState()
        return state

    def account_state(self, account_id: int, now_ms: int) -> AccountState:
        state = self.accounts.get(account_id)
        if state is None:
            state = self.accounts[account_id] = AccountState()
        state.roll(self.clock.day(now_ms))
        return state

    # -- views (sync, cheap) -----------------------------------------------------------

    def key_view(self, key_id: int, now_ms: int) -> dict[str, Any]:
        state = self.key_state(key_id)
        windows = self.clock.windows(now_ms)
        return {
            "in_flight": state.in_flight,
            "reserved_micros": state.reserved,
            "rpm_used": round(state.rpm.used(now_ms), 1),
            "tpm_used": round(state.tpm.used(now_ms), 1),
            "spend_micros": {p: state.spent(p, windows[p]) for p in PERIODS},
            "resets_ms": {p: (windows[p].end_ms if p != "total" else None) for p in PERIODS},
        }

    def account_view(self, account_id: int, now_ms: int) -> AccountState:
        return self.account_state(account_id, now_ms)

    def account_cap_reason(self, caps: AccountCaps, now_ms: int) -> str | None:
        if not caps.has_daily_caps:
            return None  # nothing to check (the scheduler asks for every candidate, every request)
        state = self.account_state(caps.account_id, now_ms)
        return account_cap_reason(caps, state.requests, state.tokens, state.cost)

    # -- seeding ------------------------------------------------------------------------

    async def seed(
        self,
        key_spend: dict[int, dict[str, int]],
        account_day: dict[int, tuple[int, int, int]],
        now_ms: int,
    ) -> None:
        """Spend so far from the store (on start): replaces the in-memory figures."""
        windows = self.clock.windows(now_ms)
        for key_id, periods in key_spend.items():
            state = self.key_state(key_id)
            for period, micros in periods.items():
                state.spend[period] = [windows[period].start_ms, micros]
        day = windows["day"]
        for account_id, (requests, tokens, cost) in account_day.items():
            acc = self.account_state(account_id, now_ms)
            acc.day_start = day.start_ms
            acc.requests, acc.tokens, acc.cost = requests, tokens, cost

    # -- admission (memory implementation; Redis overrides) --------------------------------

    async def admit_key(self, limits: KeyLimits, lease: str, reserve: int, now_ms: int) -> Denial | None:
        state = self.key_state(limits.key_id)
        denial = concurrency_denial(state.in_flight, limits.max_concurrency)
        if denial is None and limits.rpm:
            denial = rate_denial("rpm", state.rpm.used(now_ms), limits.rpm, now_ms, self.tz)
        if denial is None and limits.tpm:
            denial = rate_denial("tpm", state.tpm.used(now_ms), limits.tpm, now_ms, self.tz)
        if denial is None and limits.budgets:
            windows = self.clock.windows(now_ms)
            for period, limit in limits.budgets.items():
                window = windows[period]
                denial = budget_denial(
                    period, limit, state.spent(period, window), state.reserved, window, self.tz
                )
                if denial is not None:
                    break
        if denial is not None:
            return denial
        state.in_flight += 1
        state.reserved += reserve
        state.leases[lease] = reserve
        state.rpm.roll(minute_of(now_ms))
        state.rpm.curr += 1
        return None

    async def finish_key(self, limits: KeyLimits, lease: str, cost: int, tokens: int, now_ms: int) -> None:
        state = self.key_state(limits.key_id)
        self._finish_key_local(state, lease, cost, tokens, now_ms)

    def _finish_key_local(self, state: KeyState, lease: str, cost: int, tokens: int, now_ms: int) -> None:
        reserve = state.leases.pop(lease, None)
        if reserve is not None:
            state.in_flight -= 1
            state.reserved -= reserve
        if cost:
            windows = self.clock.windows(now_ms)
            for period in PERIODS:
                state.add_spend(period, windows[period], cost)
        if tokens:
            state.tpm.roll(minute_of(now_ms))
            state.tpm.curr += tokens

    async def acquire_account(self, caps: AccountCaps, lease: str, now_ms: int) -> str | None:
        state = self.account_state(caps.account_id, now_ms)
        if caps.max_concurrency and state.in_flight >= caps.max_concurrency:
            return f"all {caps.max_concurrency} concurrency slots in use"
        reason = account_cap_reason(caps, state.requests, state.tokens, state.cost)
        if reason:
            return reason
        state.in_flight += 1
        state.requests += 1
        return None

    async def release_account(
        self, caps: AccountCaps, lease: str, *, served: bool, tokens: int, cost: int, now_ms: int
    ) -> None:
        _release_local(self.account_state(caps.account_id, now_ms), served, tokens, cost)

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
        """A request ended after it was served: give back its account slot (``caps``, when it
        held one) and its key lease, counting its tokens and cost (``release_account`` with
        ``served=True``, then ``finish_key``; one step for backends that can do both at once)."""
        if caps is not None:
            await self.release_account(caps, acc_lease, served=True, tokens=tokens, cost=cost, now_ms=now_ms)
        await self.finish_key(limits, lease, cost, tokens, now_ms)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _release_local(state: AccountState, served: bool, tokens: int, cost: int) -> None:
    state.in_flight = max(0, state.in_flight - 1)
    if not served:
        state.requests = max(0, state.requests - 1)
    state.tokens += tokens
    state.cost += cost


MemoryCounters = Counters


# --- Redis ----------------------------------------------------------------------------------

_ADMIT_KEY = """
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #expired do redis.call('HDEL', KEYS[2], expired[i]) end
end
local inflight = redis.call('ZCARD', KEYS[1])
local maxc = tonumber(ARGV[4])
if maxc > 0 and inflight >= maxc then return {'concurrency', tostring(inflight)} end
local frac = tonumber(ARGV[7]) / 1000000
local rpm = tonumber(ARGV[5])
if rpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0') * (1 - frac) + tonumber(redis.call('GET', KEYS[3]) or '0')
  if used >= rpm then return {'rpm', tostring(used)} end
end
local tpm = tonumber(ARGV[6])
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[6]) or '0') * (1 - frac) + tonumber(redis.call('GET', KEYS[5]) or '0')
  if used >= tpm then return {'tpm', tostring(used)} end
end
local reserved = 0
local vals = redis.call('HVALS', KEYS[2])
for i = 1, #vals do reserved = reserved + tonumber(vals[i]) end
for i = 0, 3 do
  local lim = tonumber(ARGV[9 + i])
  if lim >= 0 then
    local spent = tonumber(redis.call('GET', KEYS[7 + i]) or '0')
    if spent + reserved >= lim then return {'budget', tostring(i), tostring(spent), tostring(reserved)} end
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[13])
redis.call('PEXPIRE', KEYS[2], ARGV[13])
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], 180000)
return {'ok', tostring(inflight + 1), tostring(reserved + tonumber(ARGV[8]))}
"""

_FINISH_KEY = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local cost = tonumber(ARGV[2])
if cost > 0 then
  for i = 0, 3 do
    redis.call('INCRBY', KEYS[3 + i], cost)
    local expire_at = tonumber(ARGV[4 + i])
    if expire_at > 0 then redis.call('PEXPIREAT', KEYS[3 + i], expire_at) end
  end
end
local tokens = tonumber(ARGV[3])
if tokens > 0 then
  redis.call('INCRBY', KEYS[7], tokens)
  redis.call('PEXPIRE', KEYS[7], 180000)
end
return removed
"""

_ACQUIRE_ACCOUNT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[1])
local maxc = tonumber(ARGV[4])
if maxc > 0 and inflight >= maxc then return {'concurrency', tostring(inflight)} end
local req = tonumber(redis.call('GET', KEYS[2]) or '0')
local tok = tonumber(redis.call('GET', KEYS[3]) or '0')
local cost = tonumber(redis.call('GET', KEYS[4]) or '0')
if tonumber(ARGV[5]) >= 0 and req >= tonumber(ARGV[5]) then return {'requests', tostring(req)} end
if tonumber(ARGV[6]) >= 0 and tok >= tonumber(ARGV[6]) then return {'tokens', tostring(tok)} end
if tonumber(ARGV[7]) >= 0 and cost >= tonumber(ARGV[7]) then return {'cost', tostring(cost)} end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('INCR', KEYS[2])
redis.call('PEXPIREAT', KEYS[2], ARGV[8])
return {'ok', tostring(inflight + 1), tostring(req + 1), tostring(tok), tostring(cost)}
"""

_RELEASE_ACCOUNT = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '0' then
  local left = redis.call('DECR', KEYS[2])
  if left < 0 then redis.call('SET', KEYS[2], 0) end
end
local expire_at = tonumber(ARGV[5])
if tonumber(ARGV[3]) > 0 then
  redis.call('INCRBY', KEYS[3], ARGV[3])
  redis.call('PEXPIREAT', KEYS[3], expire_at)
end
if tonumber(ARGV[4]) > 0 then
  redis.call('INCRBY', KEYS[4], ARGV[4])
  redis.call('PEXPIREAT', KEYS[4], expire_at)
end
return redis.call('ZCARD', KEYS[1])
"""

_PERIOD_INDEX = {0: "day", 1: "week", 2: "month", 3: "total"}
DAY_GRACE_MS = 86_400_000  # counters outlive their period by a day (views of "yesterday")


class RedisCounters(Counters):
    """Counters in Redis; the in-memory state is a cache refreshed from script results."""

    backend = "redis"

    def __init__(
        self, url: str, prefix: str, tz: tzinfo, week_start: str = "monday", lease_ttl_s: int = 60
    ) -> None:
        super().__init__(tz, week_start)
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url, decode_responses=True)
        self.prefix = prefix.rstrip(":")
        self.lease_ttl_ms = lease_ttl_s * 1000
        self._admit = self.redis.register_script(_ADMIT_KEY)
        self._finish = self.redis.register_script(_FINISH_KEY)
        self._acquire = self.redis.register_script(_ACQUIRE_ACCOUNT)
        self._release = self.redis.register_script(_RELEASE_ACCOUNT)
        self._held: dict[str, str] = {}  # lease -> zset key holding it (renewed while held)
        self._task: asyncio.Task[None] | None = None
        self._known_keys: set[int] = set()
        self._known_accounts: set[int] = set()

    # key names
    def _k(self, key_id: int, part: str) -> str:
        return f"{self.prefix}:gw:key:{key_id}:{part}"

    def _a(self, account_id: int, part: str) -> str:
        return f"{self.prefix}:gw:acc:{account_id}:{part}"

    def _spend_keys(self, key_id: int, windows: dict[str, Window]) -> list[str]:
        return [self._k(key_id, f"spend:{p}:{windows[p].start_ms}") for p in PERIODS]

    def _day_keys(self, account_id: int, day: Window) -> list[str]:
        return [self._a(account_id, f"{what}:{day.start_ms}") for what in ("req", "tok", "cost")]

    async def start(self) -> None:
        await self.redis.ping()
        self._task = asyncio.create_task(self._renew_loop(), name="gateway-lease-renewal")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._held:
            # Give back the slots this instance still holds (graceful shutdown).
            with contextlib.suppress(Exception):
                pipe = self.redis.pipeline(transaction=False)
                for lease, zkey in self._held.items():
                    pipe.zrem(zkey, lease)
                await pipe.execute()
        await self.redis.aclose()

    async def seed(
        self,
        key_spend: dict[int, dict[str, int]],
        account_day: dict[int, tuple[int, int, int]],
        now_ms: int,
    ) -> None:
        """Initialise Redis counters from the store where they do not exist yet (SET NX)."""
        windows = self.clock.windows(now_ms)
        pipe = self.redis.pipeline(transaction=False)
        for key_id, periods in key_spend.items():
            self._known_keys.add(key_id)
            for period, micros in periods.items():
                name = self._k(key_id, f"spend:{period}:{windows[period].start_ms}")
                end = windows[period].end_ms
                if end < FOREVER_MS:
                    pipe.set(name, micros, nx=True, pxat=end + DAY_GRACE_MS)
                else:
                    pipe.set(name, micros, nx=True)
        day = windows["day"]
        for account_id, values in account_day.items():
            self._known_accounts.add(account_id)
            for name, value in zip(self._day_keys(account_id, day), values, strict=True):
                pipe.set(name, value, nx=True, pxat=day.end_ms + DAY_GRACE_MS)
        await pipe.execute()
        await self.refresh_views(now_ms)

    async def refresh_views(self, now_ms: int) -> None:
        """Pull the shared figures into the in-memory views (snapshot, admin API)."""
        windows = self.clock.windows(now_ms)
        key_ids = sorted(self._known_keys)
        account_ids = sorted(self._known_accounts)
        if not key_ids and not account_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key_id in key_ids:
            pipe.mget(self._spend_keys(key_id, windows))
            pipe.zcount(self._k(key_id, "conc"), now_ms, "+inf")
            pipe.hvals(self._k(key_id, "resv"))
        for account_id in account_ids:
            pipe.mget(self._day_keys(account_id, windows["day"]))
            pipe.zcount(self._a(account_id, "conc"), now_ms, "+inf")
        results = await pipe.execute()
        i = 0
        for key_id in key_ids:
            spend, in_flight, reserved = results[i], results[i + 1], results[i + 2]
            i += 3
            state = self.key_state(key_id)
            for period, value in zip(PERIODS, spend, strict=True):
                state.spend[period] = [windows[period].start_ms, int(value or 0)]
            state.in_flight = max(int(in_flight), len(state.leases))
            state.reserved = sum(int(v) for v in reserved)
        for account_id in account_ids:
            day_values, in_flight = results[i], results[i + 1]
            i += 2
            acc = self.account_state(account_id, now_ms)
            acc.requests, acc.tokens, acc.cost = (int(v or 0) for v in day_values)
            acc.in_flight = int(in_flight)

    async def _renew_loop(self) -> None:
        interval = max(1.0, self.lease_ttl_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            try:
                now = _now_ms()
                if self._held:
                    pipe = self.redis.pipeline(transaction=False)
                    expiry = now + self.lease_ttl_ms
                    for lease, zkey in list(self._held.items()):
                        pipe.zadd(zkey, {lease: expiry}, xx=True)
                    await pipe.execute()
                await self.refresh_views(now)
            except Exception as exc:  # keep renewing; Redis may come back
                log.warning("gateway lease renewal failed: %s", exc)

    async def admit_key(self, limits: KeyLimits, lease: str, reserve: int, now_ms: int) -> Denial | None:
        windows = self.clock.windows(now_ms)
        minute = minute_of(now_ms)
        kid = limits.key_id
        self._known_keys.add(kid)
        keys = [
            self._k(kid, "conc"),
            self._k(kid, "resv"),
            self._k(kid, f"rpm:{minute}"),
            self._k(kid, f"rpm:{minute - 1}"),
            self._k(kid, f"tpm:{minute}"),
            self._k(kid, f"tpm:{minute - 1}"),
            *self._spend_keys(kid, windows),
        ]
        budgets = [limits.budgets.get(p) for p in PERIODS]
        frac = int((now_ms % MINUTE_MS) / MINUTE_MS * 1_000_000)
        args: list[Any] = [
            now_ms,
            lease,
            now_ms + self.lease_ttl_ms,
            limits.max_concurrency,
            limits.rpm,
            limits.tpm,
            frac,
            reserve,
            *[-1 if b is None else b for b in budgets],
            self.lease_ttl_ms * 2,
        ]
        result = await self._admit(keys=keys, args=args)
        state = self.key_state(kid)
        verdict = result[0]
        if verdict == "ok":
            self._held[lease] = keys[0]
            state.leases[lease] = reserve
            state.in_flight = int(result[1])
            state.reserved = int(result[2])
            return None
        if verdict == "concurrency":
            state.in_flight = int(result[1])
            return concurrency_denial(int(result[1]), limits.max_concurrency)
        if verdict in ("rpm", "tpm"):
            limit = limits.rpm if verdict == "rpm" else limits.tpm
            return rate_denial(verdict, max(float(result[1]), limit), limit, now_ms, self.tz)
        period = _PERIOD_INDEX[int(result[1])]
        spent, reserved = int(result[2]), int(result[3])
        state.spend[period] = [windows[period].start_ms, spent]
        return budget_denial(
            period, budgets[int(result[1])], spent, reserved, windows[period], self.tz
        ) or Denial(f"budget_{period}", f"{period} budget exhausted", 402, windows[period].end_ms)

    async def finish_key(self, limits: KeyLimits, lease: str, cost: int, tokens: int, now_ms: int) -> None:
        windows = self.clock.windows(now_ms)
        kid = limits.key_id
        self._held.pop(lease, None)
        keys = [
            self._k(kid, "conc"),
            self._k(kid, "resv"),
            *self._spend_keys(kid, windows),
            self._k(kid, f"tpm:{minute_of(now_ms)}"),
        ]
        expiries = [
            (windows[p].end_ms + DAY_GRACE_MS) if windows[p].end_ms < FOREVER_MS else 0 for p in PERIODS
        ]
        await self._finish(keys=keys, args=[lease, cost, tokens, *expiries])
        self._finish_key_local(self.key_state(kid), lease, cost, tokens, now_ms)

    async def acquire_account(self, caps: AccountCaps, lease: str, now_ms: int) -> str | None:
        day = self.clock.day(now_ms)
        aid = caps.account_id
        self._known_accounts.add(aid)
        zkey = self._a(aid, "conc")
        keys = [zkey, *self._day_keys(aid, day)]

        def cap(v: int | None) -> int:
            return -1 if v is None else v

        args: list[Any] = [
            now_ms,
            lease,
            now_ms + self.lease_ttl_ms,
            caps.max_concurrency,
            cap(caps.daily_requests),
            cap(caps.daily_tokens),
            cap(caps.daily_cost_micros),
            day.end_ms + DAY_GRACE_MS,
            self.lease_ttl_ms * 2,
        ]
        result = await self._acquire(keys=keys, args=args)
        state = self.account_state(aid, now_ms)
        if result[0] == "ok":
            self._held[lease] = zkey
            state.in_flight = int(result[1])
            state.requests, state.tokens, state.cost = int(result[2]), int(result[3]), int(result[4])
            return None
        if result[0] == "concurrency":
            state.in_flight = int(result[1])
            return f"all {caps.max_concurrency} concurrency slots in use"
        return f"daily {result[0]} cap reached ({result[1]})"

    async def release_account(
        self, caps: AccountCaps, lease: str, *, served: bool, tokens: int, cost: int, now_ms: int
    ) -> None:
        day = self.clock.day(now_ms)
        aid = caps.account_id
        self._held.pop(lease, None)
        keys = [self._a(aid, "conc"), *self._day_keys(aid, day)]
        in_flight = await self._release(
            keys=keys, args=[lease, "1" if served else "0", tokens, cost, day.end_ms + DAY_GRACE_MS]
        )
        state = self.account_state(aid, now_ms)
        state.in_flight = int(in_flight)
        if not served:
            state.requests = max(0, state.requests - 1)
        state.tokens += tokens
        state.cost += cost


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000
