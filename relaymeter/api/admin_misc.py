"""Admin API: runtime settings, audit log, dead letters, storage statistics and retention."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from relaymeter import runtime_settings
from relaymeter.api.auth import AdminDep, client_ip
from relaymeter.api.errors import ApiError
from relaymeter.domain.redact import redact_text
from relaymeter.retention import RetentionService
from relaymeter.state import get_state
from relaymeter.store import audit, maintenance
from relaymeter.store import events as store_events

router = APIRouter(prefix="/api", tags=["admin"])


# --- models ---------------------------------------------------------------------------------------


class SettingItem(BaseModel):
    key: str
    value: Any
    config_value: Any = Field(description="value from env / config file / default, used when reset")
    source: str = Field(description="runtime (set here), env RELAYMETER_..., file <path> or default")
    editable: bool = Field(description="false when an environment variable pins the value")
    type: Literal["integer", "string", "boolean"]
    choices: list[str] | None
    description: str
    restart_note: str | None


class SettingsOut(BaseModel):
    items: list[SettingItem]
    values: dict[str, Any]


class SettingsPatch(BaseModel):
    """Only the fields present are changed."""

    model_config = ConfigDict(extra="forbid")

    retention_days: int | None = Field(None, ge=0, le=36500, description="0 keeps raw events forever")
    timezone: str | None = Field(None, min_length=1, max_length=64, description="IANA zone or 'local'")
    week_start: Literal["monday", "sunday", "saturday"] | None = None
    store_raw_payloads: bool | None = None


class AuditItem(BaseModel):
    id: int
    ts_ms: int
    actor: str
    action: str
    target: str
    detail: Any
    client_ip: str | None


class AuditPage(BaseModel):
    items: list[AuditItem]
    next_before_id: int | None = Field(description="pass as before_id for the next (older) page")


class DeadLetterItem(BaseModel):
    id: int
    source: str
    reason: str
    raw: str = Field(description="the record as received (redacted; truncated in lists)")
    raw_bytes: int
    created_ms: int


class DeadLetterPage(BaseModel):
    items: list[DeadLetterItem]
    total: int = Field(description="dead letters matching the source filter")
    next_before_id: int | None


class DeletedOut(BaseModel):
    deleted: int


class SqliteStats(BaseModel):
    path: str | None
    file_bytes: dict[str, int]
    page_size: int
    page_count: int
    free_pages: int
    free_bytes: int
    auto_vacuum: str


class RetentionResultOut(BaseModel):
    started_ms: int
    finished_ms: int
    cutoff_ms: int | None
    deleted: int
    pages_freed: int
    error: str | None
    skipped: str | None


class RetentionStatusOut(BaseModel):
    running: bool
    runs: int
    deleted_total: int
    last: RetentionResultOut | None


class StorageOut(BaseModel):
    backend: str
    rows: dict[str, int]
    oldest_event_ms: int | None
    newest_event_ms: int | None
    table_bytes: dict[str, int] = Field(
        description="bytes per table with its indexes (empty unless sizes=true)"
    )
    total_bytes: int
    sqlite: SqliteStats | None = None
    retention_days: int
    retention: RetentionStatusOut | None = Field(description="null when the retention service is not running")


# --- settings -------------------------------------------------------------------------------------


async def _settings_out(request: Request) -> dict[str, Any]:
    state = get_state(request)
    overrides = await runtime_settings.load_overrides(state)
    items = runtime_settings.describe(state.settings, overrides)
    return {"items": items, "values": {i["key"]: i["value"] for i in items}}


def _setting_error(exc: runtime_settings.RuntimeSettingError) -> ApiError:
    code = {404: "not_found", 409: "pinned_by_env"}.get(exc.status, "validation_error")
    return ApiError(exc.status, code, str(exc), fields=[{"field": exc.field, "message": exc.message}])


@router.get("/settings", response_model=SettingsOut)
async def get_settings(request: Request, _actor: str = AdminDep) -> dict[str, Any]:
    """Runtime options with their current value, where it comes from and whether it can change."""
    return await _settings_out(request)


@router.patch("/settings", response_model=SettingsOut)
async def patch_settings(request: Request, body: SettingsPatch, actor: str = AdminDep) -> dict[str, Any]:
    """Change runtime options (stored in the database, applied at once)."""
    state = get_state(request)
    values = body.model_dump(exclude_unset=True)
    if any(v is None for v in values.values()):
        field = next(k for k, v in values.items() if v is None)
        raise ApiError(
            422,
            "validation_error",
            f"{field}: null is not a value; use DELETE /api/settings/{field} to reset it",
            fields=[{"field": field, "message": "null is not a value"}],
        )
    try:
        cleaned = await runtime_settings.set_values(state, values)
    except runtime_settings.RuntimeSettingError as exc:
        raise _setting_error(exc) from None
    if cleaned:
        await audit.record(
            state.db,
            "settings.update",
            actor=actor,
            target=",".join(cleaned),
            detail=cleaned,
            client_ip=client_ip(request),
        )
    return await _settings_out(request)


@router.delete("/settings/{key}", response_model=SettingsOut)
async def reset_setting(
    request: Request,
    key: str = Path(max_length=64, description="runtime option to reset"),
    actor: str = AdminDep,
) -> dict[str, Any]:
    """Drop the runtime value of an option: the config file / env / default applies again."""
    state = get_state(request)
    try:
        await runtime_settings.reset(state, key)
    except runtime_settings.RuntimeSettingError as exc:
        raise _setting_error(exc) from None
    await audit.record(state.db, "settings.reset", actor=actor, target=key, client_ip=client_ip(request))
    return await _settings_out(request)


# --- audit log --------------------------------------------------------------------------------------


@router.get("/audit", response_model=AuditPage)
async def list_audit(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=2**62, description="next_before_id of the previous page"),
    action: str | None = Query(None, max_length=120, description="only this action, e.g. login.failed"),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Admin actions, newest first."""
    items = await audit.list_entries(
        get_state(request).db, limit=limit + 1, before_id=before_id, action=action
    )
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_before_id": items[-1]["id"] if more and items else None}


# --- dead letters -------------------------------------------------------------------------------------

LIST_RAW_CHARS = 2000


def _dead_letter(row: dict[str, Any], full: bool) -> dict[str, Any]:
    raw = redact_text(row["raw"] or "")
    return {
        "id": row["id"],
        "source": row["source"],
        "reason": row["reason"],
        "raw": raw if full else raw[:LIST_RAW_CHARS],
        "raw_bytes": len(raw.encode()),
        "created_ms": row["created_ms"],
    }


@router.get("/dead-letters", response_model=DeadLetterPage)
async def list_dead_letters(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=2**62, description="next_before_id of the previous page"),
    source: str | None = Query(None, max_length=80, description="only this source, e.g. cpa:main or import"),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Records that could not become events (parse errors, refused values), newest first."""
    db = get_state(request).db
    rows = await maintenance.dead_letters(db, limit=limit + 1, before_id=before_id, source=source)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_dead_letter(r, False) for r in rows],
        "total": await store_events.count_dead_letters(db, source),
        "next_before_id": rows[-1]["id"] if more and rows else None,
    }


@router.get("/dead-letters/{item_id}", response_model=DeadLetterItem)
async def get_dead_letter(
    request: Request, item_id: int = Path(ge=1, le=2**62), _actor: str = AdminDep
) -> dict[str, Any]:
    """One dead letter with its full raw record."""
    row = await maintenance.dead_letter(get_state(request).db, item_id)
    if row is None:
        raise ApiError(404, "not_found", f"no dead letter with id {item_id}")
    return _dead_letter(row, True)


@router.delete("/dead-letters", response_model=DeletedOut)
async def delete_dead_letters(
    request: Request,
    source: str | None = Query(None, max_length=80, description="only this source"),
    before_ms: int | None = Query(None, ge=0, le=2**62, description="only those created before this time"),
    ids: list[int] | None = Query(None, description="only these ids"),
    actor: str = AdminDep,
) -> dict[str, Any]:
    """Remove dead letters (all, or those matching the filters)."""
    state = get_state(request)
    n = await maintenance.delete_dead_letters(state.db, source=source, before_ms=before_ms, ids=ids)
    await audit.record(
        state.db,
        "dead_letters.delete",
        actor=actor,
        target=source or "",
        detail={"deleted": n, "before_ms": before_ms, "ids": ids},
        client_ip=client_ip(request),
    )
    return {"deleted": n}


# --- storage and retention ------------------------------------------------------------------------------


def _retention(request: Request) -> RetentionService | None:
    service = get_state(request).services.get("retention")
    return service if isinstance(service, RetentionService) else None


@router.get("/system/storage", response_model=StorageOut)
async def storage(
    request: Request,
    sizes: bool = Query(
        False, description="also measure bytes per table (reads every page: slow on big stores)"
    ),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Database size, row counts, event time span and the retention status."""
    state = get_state(request)
    data = await maintenance.stats(state.db, sizes=sizes)
    service = _retention(request)
    data["retention_days"] = state.settings.retention_days
    data["retention"] = service.status.to_dict() if service else None
    return data


@router.post("/system/retention/run", response_model=RetentionResultOut)
async def run_retention(request: Request, actor: str = AdminDep) -> dict[str, Any]:
    """Run retention now with the current retention_days (waits until it is done)."""
    state = get_state(request)
    service = _retention(request)
    if service is None:
        raise ApiError(503, "unavailable", "the retention service is not running")
    result = await service.run_once()
    await audit.record(
        state.db,
        "retention.run",
        actor=actor,
        detail={"deleted": result.deleted, "cutoff_ms": result.cutoff_ms},
        client_ip=client_ip(request),
    )
    return orjson.loads(orjson.dumps(result))
