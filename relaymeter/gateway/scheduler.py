"""Account selection: eligibility, priority, weighted least-loaded, sticky sessions, health, cooldown.

Eligible = enabled, serves the route and model, healthy (or due for a retry), not cooling
down, under its concurrency and daily caps. Among eligible accounts the highest ``priority``
number wins; within a priority the least loaded relative to its ``weight`` wins, ties broken
by smooth weighted round robin so sequential traffic still follows the weights.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from relaymeter.domain.limits import AccountCaps
from relaymeter.gateway.sessions import LocalSessions, SessionMap

# Route kinds an account may serve.
MESSAGES = "messages"
COUNT_TOKENS = "count_tokens"
CHAT = "chat"
RESPONSES = "responses"
MODELS = "models"

UNHEALTHY_RETRY_MS = 5 * 60_000
UNHEALTHY_RETRY_MAX_MS = 60 * 60_000
DEFAULT_RATE_LIMIT_COOLDOWN_MS = 60_000
OVERLOAD_COOLDOWN_MS = 10_000
ERROR_STREAK_COOLDOWN_MS = 30_000
ERROR_STREAK = 3


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def routes_served(provider: str, kind: str) -> frozenset[str]:
    """Which client routes an account can serve, by provider and credential kind."""
    if provider == "anthropic":
        return frozenset({MESSAGES, COUNT_TOKENS, MODELS})
    if provider == "openai":
        if kind == "oauth":  # ChatGPT / Codex subscription: the Codex Responses backend only
            return frozenset({RESPONSES})
        return frozenset({CHAT, RESPONSES, MODELS})
    if provider == "gemini":
        # Gemini API keys speak OpenAI Chat on Google's OpenAI-compatible endpoint. Gemini OAuth
        # (Code Assist) uses another wire format and is kept for quota views only.
        return frozenset() if kind == "oauth" else frozenset({CHAT, MODELS})
    if provider == "openai-compatible":
        return frozenset({CHAT, RESPONSES, MODELS})
    return frozenset()


def _match(patterns: Iterable[str], model: str) -> bool:
    for pattern in patterns:
        if pattern == model or (("*" in pattern or "?" in pattern) and fnmatch.fnmatchcase(model, pattern)):
            return True
    return False


@dataclass(eq=False)
class Account:
    id: int
    name: str
    provider: str
    kind: str
    base_url: str | None = None
    priority: int = 50
    weight: int = 1
    max_concurrency: int = 0
    enabled: bool = True
    disabled_by: str | None = None
    models: tuple[str, ...] | None = None
    model_map: dict[str, str] = field(default_factory=dict)
    daily_request_cap: int | None = None
    daily_token_cap: int | None = None
    daily_cost_cap_micros: int | None = None
    proxy_url: str | None = None
    email: str | None = None
    plan: str | None = None
    creds: dict[str, Any] = field(default_factory=dict)
    token_expires_ms: int | None = None
    updated_ms: int = 0
    credential_error: str | None = None  # credentials could not be decrypted
    # runtime state (kept across reloads of the same account)
    in_flight: int = 0
    health: str = "ok"  # ok | unhealthy
    health_reason: str | None = None
    retry_at_ms: int = 0
    strikes: int = 0
    error_streak: int = 0
    cooldown_until_ms: int = 0
    cooldown_reason: str | None = None
    cooldown_kind: str | None = None  # rate_limit | exhausted | overloaded | errors
    swrr: int = 0
    last_used_ms: int = 0
    requests: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.routes = routes_served(self.provider, self.kind)
        self.caps = AccountCaps(
            self.id,
            self.max_concurrency,
            self.daily_request_cap,
            self.daily_token_cap,
            self.daily_cost_cap_micros,
        )
        self.weight = max(1, int(self.weight or 1))

    def serves(self, route: str, model: str) -> bool:
        if route not in self.routes:
            return False
        if route == MODELS or self.models is None or not model:
            return True
        return _match(self.models, model) or _match(self.model_map, model)

    def map_model(self, model: str) -> str:
        mapped = self.model_map.get(model)
        if mapped is not None:
            return mapped
        for pattern, target in self.model_map.items():
            if ("*" in pattern or "?" in pattern) and fnmatch.fnmatchcase(model, pattern):
                return target
        return model

    def apply_config(self, new: Account) -> None:
        """Take the configuration of a freshly loaded copy, keeping this object's runtime state.

        Requests in flight hold this object, so it must stay the one the pool uses.
        """
        for name in _CONFIG_FIELDS:
            setattr(self, name, getattr(new, name))
        self.__post_init__()


_CONFIG_FIELDS = (
    "name",
    "provider",
    "kind",
    "base_url",
    "priority",
    "weight",
    "max_concurrency",
    "enabled",
    "disabled_by",
    "models",
    "model_map",
    "daily_request_cap",
    "daily_token_cap",
    "daily_cost_cap_micros",
    "proxy_url",
    "email",
    "plan",
    "creds",
    "token_expires_ms",
    "updated_ms",
    "credential_error",
)


CapCheck = Callable[[Account, int], "str | None"]


class AccountPool:
    """In-memory account state and the selection algorithm (no I/O)."""

    def __init__(self, *, sticky_ttl_ms: int = 3_600_000, clock: Callable[[], int] = now_ms) -> None:
        self.accounts: dict[int, Account] = {}
        # Which account each session is bound to; workers of one `serve` share theirs.
        self.sessions: SessionMap = LocalSessions()
        self.sticky_ttl_ms = sticky_ttl_ms
        self.clock = clock
        self.cap_check: CapCheck = lambda _acc, _now: None
        self.dirty: set[int] = set()  # accounts whose health changed (persisted in the background)

    # -- loading --------------------------------------------------------------------------

    def replace(self, accounts: Iterable[Account]) -> None:
        """Swap in freshly loaded accounts, keeping runtime state of the ones that remain."""
        fresh: dict[int, Account] = {}
        for acc in accounts:
            old = self.accounts.get(acc.id)
            if old is not None:
                fixed = old.health == "unhealthy" and (
                    old.creds != acc.creds or old.base_url != acc.base_url or old.proxy_url != acc.proxy_url
                )
                if old.creds.get("access_token") != acc.creds.get("access_token") and (
                    (old.token_expires_ms or 0) > (acc.token_expires_ms or 0)
                ):
                    # A token refreshed in memory is newer than what was read: keep it.
                    acc.creds, acc.token_expires_ms = old.creds, old.token_expires_ms
                old.apply_config(acc)
                acc = old
                if fixed:
                    # The admin fixed the account: let it try again at once.
                    acc.health, acc.health_reason, acc.strikes, acc.retry_at_ms = "ok", None, 0, 0
                    self.dirty.add(acc.id)
            fresh[acc.id] = acc
        self.accounts = fresh

    # -- selection --------------------------------------------------------------------------

    def unavailable_reason(self, acc: Account, route: str, model: str, now: int) -> str | None:
        """Why this account cannot take a request now (None = eligible)."""
        if not acc.enabled:
            return "disabled"
        if acc.credential_error:
            return acc.credential_error
        if not acc.serves(route, model):
            return "does not serve this model/route"
        if acc.health == "unhealthy" and now < acc.retry_at_ms:
            return f"unhealthy: {acc.health_reason or 'error'}"
        if acc.cooldown_until_ms > now:
            return f"cooling down until {_iso(acc.cooldown_until_ms)} ({acc.cooldown_reason or acc.cooldown_kind})"
        if acc.max_concurrency and acc.in_flight >= acc.max_concurrency:
            return f"all {acc.max_concurrency} concurrency slots in use"
        return self.cap_check(acc, now)

    def pick(
        self,
        route: str,
        model: str,
        *,
        session: str | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
        now: int | None = None,
    ) -> Account | None:
        now = self.clock() if now is None else now
        if session:
            bound = self.sessions.get(session, now)
            if bound is not None and bound not in exclude:
                acc = self.accounts.get(bound)
                if acc is not None and self.unavailable_reason(acc, route, model, now) is None:
                    self.sessions.bind(session, acc.id, now + self.sticky_ttl_ms)
                    return acc
        best_priority: int | None = None
        tier: list[Account] = []
        for acc in self.accounts.values():
            if acc.id in exclude or self.unavailable_reason(acc, route, model, now) is not None:
                continue
            if best_priority is None or acc.priority > best_priority:
                best_priority = acc.priority
                tier = [acc]
            elif acc.priority == best_priority:
                tier.append(acc)
        if not tier:
            return None
        chosen = tier[0] if len(tier) == 1 else self._least_loaded(tier)
        if session:
            self.sessions.bind(session, chosen.id, now + self.sticky_ttl_ms)
        return chosen

    @staticmethod
    def _least_loaded(tier: list[Account]) -> Account:
        # Load relative to weight; exact ties go to smooth weighted round robin.
        best_load: float | None = None
        ties: list[Account] = []
        for acc in tier:
            load = acc.in_flight / acc.weight
            if best_load is None or load < best_load:
                best_load = load
                ties = [acc]
            elif load == best_load:
                ties.append(acc)
        if len(ties) == 1:
            return ties[0]
        total = 0
        chosen = ties[0]
        for acc in ties:
            acc.swrr += acc.weight
            total += acc.weight
            if acc.swrr > chosen.swrr:
                chosen = acc
        chosen.swrr -= total
        return chosen

    def why_none(self, route: str, model: str, exclude: set[int] | frozenset[int] = frozenset()) -> str:
        """A message for the client when no account can take the request."""
        now = self.clock()
        serving = [a for a in self.accounts.values() if a.serves(route, model)]
        if not serving:
            what = f"model {model!r}" if model else "this endpoint"
            return f"no upstream account serves {what}"
        reasons = []
        for acc in serving:
            if acc.id in exclude:
                continue
            reason = self.unavailable_reason(acc, route, model, now)
            if reason:
                reasons.append(f"{acc.name}: {reason}")
        if not reasons:
            return "every account that serves this model failed for this request"
        shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        return f"no upstream account is available ({shown})"

    def next_available_ms(self, route: str, model: str) -> int | None:
        """Earliest time a cooling-down account that serves this model comes back."""
        times = [
            a.cooldown_until_ms
            for a in self.accounts.values()
            if a.enabled and a.serves(route, model) and a.cooldown_until_ms > self.clock()
        ]
        return min(times) if times else None

    # -- health -----------------------------------------------------------------------------

    def on_success(self, acc: Account) -> None:
        acc.error_streak = 0
        if acc.health != "ok" or acc.strikes:
            acc.health, acc.health_reason, acc.strikes, acc.retry_at_ms = "ok", None, 0, 0
            self.dirty.add(acc.id)

    def mark_unhealthy(self, acc: Account, reason: str, now: int | None = None) -> None:
        now = self.clock() if now is None else now
        acc.strikes += 1
        acc.health = "unhealthy"
        acc.health_reason = reason[:300]
        acc.retry_at_ms = now + min(UNHEALTHY_RETRY_MS * 2 ** (acc.strikes - 1), UNHEALTHY_RETRY_MAX_MS)
        self.dirty.add(acc.id)

    def on_status(self, acc: Account, status: int, headers: dict[str, str], message: str) -> None:
        """Health bookkeeping after an upstream answered with an error status."""
        now = self.clock()
        if status == 429:
            until = reset_from_headers(headers, now) or now + DEFAULT_RATE_LIMIT_COOLDOWN_MS
            self.set_cooldown(acc.id, until, f"429 {message}"[:200], "rate_limit")
        elif status == 529:
            until = reset_from_headers(headers, now) or now + OVERLOAD_COOLDOWN_MS
            self.set_cooldown(acc.id, until, "529 overloaded", "overloaded")
        elif status in (401, 403):
            self.mark_unhealthy(acc, f"{status} {message}", now)
        elif status >= 500 or status == 408:
            self.on_transport_error(acc, f"{status} {message}")

    def on_transport_error(self, acc: Account, message: str) -> None:
        acc.error_streak += 1
        if acc.error_streak >= ERROR_STREAK:
            acc.error_streak = 0
            self.set_cooldown(
                acc.id,
                self.clock() + ERROR_STREAK_COOLDOWN_MS,
                f"{ERROR_STREAK} errors in a row: {message}"[:200],
                "errors",
            )

    def set_cooldown(self, account_id: int, until_ms: int, reason: str, kind: str) -> None:
        acc = self.accounts.get(account_id)
        if acc is None:
            return
        # Never shorten a longer cooldown already in force (e.g. an exhausted weekly window).
        if acc.cooldown_until_ms > until_ms and acc.cooldown_kind == "exhausted" and kind != "exhausted":
            return
        acc.cooldown_until_ms = until_ms
        acc.cooldown_reason = reason
        acc.cooldown_kind = kind
        self.dirty.add(account_id)

    def clear_cooldown(self, account_id: int) -> None:
        acc = self.accounts.get(account_id)
        if acc is None:
            return
        acc.cooldown_until_ms, acc.cooldown_reason, acc.cooldown_kind = 0, None, None
        self.dirty.add(account_id)

    def health_rows(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Rows for store.accounts.save_health."""
        now = self.clock()
        rows = []
        for account_id in ids:
            acc = self.accounts.get(account_id)
            if acc is None:
                continue
            if acc.health == "unhealthy":
                health = "unhealthy"
            elif acc.cooldown_until_ms > now:
                health = "exhausted" if acc.cooldown_kind == "exhausted" else "cooldown"
            else:
                health = "ok"
            rows.append(
                {
                    "id": acc.id,
                    "health": health,
                    "health_reason": acc.health_reason if health == "unhealthy" else acc.cooldown_reason,
                    "cooldown_until_ms": acc.cooldown_until_ms or None,
                }
            )
        return rows


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _parse_reset(value: str, now: int) -> int | None:
    """A reset time from a header value: seconds, epoch seconds, RFC 3339, HTTP date or '1m30s'."""
    v = value.strip()
    if not v:
        return None
    try:
        number = float(v)
    except ValueError:
        number = None
    if number is not None:
        if number > 1_000_000_000:  # epoch seconds
            return int(number * 1000)
        return now + int(number * 1000)
    duration = _parse_duration_ms(v)
    if duration is not None:
        return now + duration
    try:
        return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        pass
    try:
        return int(parsedate_to_datetime(v).timestamp() * 1000)
    except (TypeError, ValueError, IndexError):
        return None


def _parse_duration_ms(text: str) -> int | None:
    """OpenAI-style durations: '20ms', '1s', '6m0s', '1h2m3.5s'."""
    total = 0.0
    number = ""
    i = 0
    matched = False
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        if not number:
            return None
        unit = "ms" if text.startswith("ms", i) else ch
        factor = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}.get(unit)
        if factor is None:
            return None
        try:
            total += float(number) * factor
        except ValueError:
            return None
        matched = True
        number = ""
        i += len(unit)
    if number or not matched:
        return None
    return int(total)


_RESET_HEADERS = (
    "retry-after-ms",
    "retry-after",
    "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-codex-primary-reset-after-seconds",
)


def reset_from_headers(headers: dict[str, str], now: int) -> int | None:
    """When a rate-limited account may be used again, from retry-after or provider reset headers.

    ``retry-after`` wins; otherwise the latest reset among the limits that are used up
    (remaining 0, or Anthropic's unified status 'rejected'); otherwise the earliest reset.
    """
    if "retry-after-ms" in headers:
        try:
            return now + int(float(headers["retry-after-ms"]))
        except ValueError:
            pass
    retry = headers.get("retry-after")
    if retry:
        reset = _parse_reset(retry, now)
        if reset is not None and reset > now:
            return reset
    exhausted: list[int] = []
    others: list[int] = []
    for name in _RESET_HEADERS[2:]:
        value = headers.get(name)
        if not value:
            continue
        reset = _parse_reset(value, now)
        if reset is None or reset <= now:
            continue
        if name == "anthropic-ratelimit-unified-reset":
            used_up = headers.get("anthropic-ratelimit-unified-status", "").lower() == "rejected"
        elif name.startswith("x-ratelimit-reset-"):
            used_up = headers.get("x-ratelimit-remaining-" + name[len("x-ratelimit-reset-") :]) == "0"
        else:
            used_up = headers.get(name.replace("-reset", "-remaining")) == "0"
        (exhausted if used_up else others).append(reset)
    if exhausted:
        return max(exhausted)
    return min(others) if others else None
