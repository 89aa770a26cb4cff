"""`accounts check`: probe every account and recommend keep / disable / re-enable / remove.

OAuth accounts are probed through their usage endpoint (which also refreshes their windows);
API-key gateway accounts with a free request (the gateway's account test). Rules:

- remove: the credentials were rejected (401/403 after a token refresh, or the refresh
  itself was refused);
- disable: a weekly window is exhausted (the account cannot serve until it resets);
- re-enable: disabled by the system (``disabled_by='system'``) and there is room again;
  an account a person disabled (``disabled_by='user'``) is never re-enabled;
- keep: everything else (including probes that failed for a transient reason).

``apply`` acts on gateway accounts only; CPA-held accounts are managed in CPA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from relaymeter.quota.fetchers import QuotaTarget
from relaymeter.quota.parse import WEEKLY_WINDOWS
from relaymeter.quota.service import QuotaService
from relaymeter.state import AppState

ProgressFn = Callable[[int, int], None]


@dataclass(slots=True)
class CheckResult:
    account_id: int
    name: str
    origin: str
    provider: str
    enabled: bool
    disabled_by: str | None
    probe: str  # usage | request | none
    outcome: str  # ok | rejected | error | skipped
    message: str | None
    recommendation: str  # keep | disable | re-enable | remove
    reason: str
    applied: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="minutes")


def recommend(
    target: QuotaTarget,
    outcome: str,
    message: str | None,
    weekly_exhausted_until: int | None,
    weekly_known: bool,
) -> tuple[str, str]:
    """(recommendation, reason) from a probe outcome and the weekly window state."""
    if outcome == "rejected":
        return "remove", f"credentials rejected: {message or 'unauthorized'}"
    if weekly_exhausted_until is not None:
        when = _iso(weekly_exhausted_until) if weekly_exhausted_until else "an unknown time"
        if target.enabled:
            return "disable", f"weekly window exhausted until {when}"
        return "keep", f"disabled; weekly window exhausted until {when}"
    if not target.enabled:
        if target.disabled_by == "user":
            return "keep", "disabled by a person (never re-enabled automatically)"
        if target.disabled_by == "system" and outcome == "ok":
            return "re-enable", "room again in every window" if weekly_known else "credentials work again"
        if target.disabled_by == "system":
            return "keep", f"disabled by the system; probe {outcome}: {message or ''}".strip()
        return "keep", "disabled"
    if outcome == "error":
        return "keep", f"probe failed (not conclusive): {message or 'error'}"
    if outcome == "skipped":
        return "keep", message or "no probe available"
    return "keep", "ok"


async def _probe(
    state: AppState, service: QuotaService, target: QuotaTarget
) -> tuple[str, str, str | None, int | None, bool]:
    """(probe kind, outcome, message, weekly exhausted until (0 = unknown reset) or None, weekly known)."""
    if target.quota_kind is not None:
        result = await service.fetch(target)
        weekly_until: int | None = None
        weekly_known = False
        if result.report is not None:
            now = service.clock()
            for w in result.report.windows:
                if w.name in WEEKLY_WINDOWS:
                    weekly_known = True
                    if w.exhausted:
                        reset = w.resets_at_ms if w.resets_at_ms and w.resets_at_ms > now else 0
                        weekly_until = max(weekly_until or 0, reset)
        return "usage", result.status, result.message, weekly_until, weekly_known
    if target.origin == "gateway":
        from relaymeter.gateway.admin import AdminError, test_account

        try:
            tested = await test_account(state, target.account_id)
        except AdminError as exc:
            return "request", "error", str(exc), None, False
        status = tested.get("status")
        if tested.get("ok"):
            return "request", "ok", tested.get("message"), None, False
        outcome = "rejected" if status in (401, 403) else "error"
        return "request", outcome, tested.get("message"), None, False
    return "none", "skipped", "no probe for this account kind (API key held by CPA)", None, False


async def check_accounts(
    state: AppState,
    service: QuotaService,
    *,
    apply: bool = False,
    actor: str = "system",
    account_ids: list[int] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Probe accounts with bounded parallelism; recommend (and with ``apply`` act) per account."""
    from relaymeter.store import accounts as account_store
    from relaymeter.store import audit

    targets, problems = await service.targets(account_ids)
    total = len(targets)
    done = 0
    if progress:
        progress(0, total)
    limit = asyncio.Semaphore(state.settings.quota_max_parallel)

    async def one(target: QuotaTarget) -> CheckResult:
        nonlocal done
        async with limit:
            probe, outcome, message, weekly_until, weekly_known = await _probe(state, service, target)
        rec, reason = recommend(target, outcome, message, weekly_until, weekly_known)
        done += 1
        if progress:
            progress(done, total)
        return CheckResult(
            target.account_id,
            target.name,
            target.origin,
            target.provider,
            target.enabled,
            target.disabled_by,
            probe,
            outcome,
            message,
            rec,
            reason,
        )

    results = list(await asyncio.gather(*(one(t) for t in targets)))
    changed = False
    if apply:
        for r in results:
            if r.recommendation == "keep":
                continue
            if r.origin != "gateway":
                r.applied = "not applied: the account is managed in CPA"
                continue
            if r.recommendation == "disable":
                await account_store.set_enabled(state.db, r.account_id, False, by="system")
                r.applied = "disabled"
            elif r.recommendation == "re-enable":
                row = await account_store.get_account(state.db, r.account_id)
                if row is None or row.get("disabled_by") != "system":  # a person changed it meanwhile
                    r.applied = "not applied: no longer disabled by the system"
                    continue
                await account_store.set_enabled(state.db, r.account_id, True)
                r.applied = "enabled"
            elif r.recommendation == "remove":
                await account_store.delete_account(state.db, r.account_id)
                r.applied = "removed"
            changed = True
            await audit.record(
                state.db,
                f"accounts.check.{r.recommendation}",
                actor=actor,
                target=f"account {r.account_id} ({r.name})",
                detail={"reason": r.reason},
            )
        if changed:
            gw = service.gateway()
            if gw is not None:
                await gw.reload()
    counts: dict[str, int] = {}
    for r in results:
        counts[r.recommendation] = counts.get(r.recommendation, 0) + 1
    return {
        "applied": apply,
        "counts": counts,
        "results": [r.to_dict() for r in sorted(results, key=lambda r: (r.name.lower(), r.account_id))],
        "problems": problems,
    }
