"""Admin API for quota windows: latest (optionally forced), refresh, history, and the account check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from relaymeter.api.auth import AdminDep, client_ip
from relaymeter.api.errors import ApiError
from relaymeter.domain.windows import RangeError, parse_time_ms, zone
from relaymeter.quota.health import check_accounts
from relaymeter.quota.service import QuotaService
from relaymeter.state import AppState, get_state
from relaymeter.store import audit
from relaymeter.store import quotas as quota_store

router = APIRouter(prefix="/api/quota", tags=["quota"])
MAX_ID = 2**63 - 1
AccountId = Annotated[int, Field(ge=1, le=MAX_ID)]


def _service(state: AppState) -> QuotaService:
    service = state.services.get("quota")
    if not isinstance(service, QuotaService):
        raise ApiError(503, "unavailable", "the quota service is not running")
    return service


@router.get("")
async def quota(
    request: Request,
    force: bool = Query(False, description="refresh from the providers first (per-account cooldown applies)"),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Latest window per account and window, our own 5 h / 7 d usage, and refresh status."""
    service = _service(get_state(request))
    refresh = (await service.refresh(force=True)).to_dict() if force else None
    out = await service.overview()
    if refresh is not None:
        out["refresh_report"] = refresh
    return out


class RefreshBody(BaseModel):
    accounts: list[AccountId] | None = Field(None, max_length=1000, description="account ids (default: all)")


@router.post("/refresh")
async def refresh_quota(
    request: Request, body: RefreshBody | None = None, actor: str = AdminDep
) -> dict[str, Any]:
    """Refresh windows now. Single-flight: a call while one runs waits for it and gets its report.

    Accounts asked less than ``quota_force_cooldown_s`` ago are skipped with ``retry_after_s``.
    """
    state = get_state(request)
    report = await _service(state).refresh(force=True, account_ids=body.accounts if body else None)
    if not report.joined:
        await audit.record(
            state.db,
            "quota.refresh",
            actor=actor,
            detail=report.to_dict()["counts"],
            client_ip=client_ip(request),
        )
    return report.to_dict()


@router.get("/history")
async def quota_history(
    request: Request,
    account: int = Query(ge=1, le=MAX_ID, description="account id"),
    window: str | None = Query(None, max_length=80),
    since: str | None = Query(None, max_length=60, description="ISO time or epoch ms"),
    until: str | None = Query(None, max_length=60),
    limit: int = Query(2000, ge=1, le=20_000),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Snapshots of one account over time, oldest first (for a utilization chart)."""
    state = get_state(request)
    tz = zone(state.settings.timezone)
    try:
        since_ms = parse_time_ms(since, tz) if since else None
        until_ms = parse_time_ms(until, tz) if until else None
    except RangeError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None
    rows = await quota_store.history(
        state.db, account, window=window, since_ms=since_ms, until_ms=until_ms, limit=limit
    )
    return {"account_id": account, "items": rows}


class CheckBody(BaseModel):
    apply: bool = Field(False, description="act on the recommendations (gateway accounts only)")
    accounts: list[AccountId] | None = Field(None, max_length=1000)


@router.post("/check")
async def check(request: Request, body: CheckBody | None = None, actor: str = AdminDep) -> dict[str, Any]:
    """Probe every account; recommend keep / disable / re-enable / remove (``apply`` acts)."""
    state = get_state(request)
    body = body or CheckBody()
    return await check_accounts(
        state, _service(state), apply=body.apply, actor=actor, account_ids=body.accounts
    )
