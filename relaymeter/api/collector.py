"""Admin API of the CPA collector: status, connection CRUD, connection test, restart and
CPA usage publishing toggle. Management keys are accepted, never returned."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from relaymeter.api.auth import AdminDep, client_ip
from relaymeter.api.errors import ApiError
from relaymeter.api.params import RowId
from relaymeter.ingest.cliproxy import connections as conn_admin
from relaymeter.ingest.cliproxy.checks import check_cpa
from relaymeter.ingest.cliproxy.management import CPAError, ManagementClient
from relaymeter.ingest.cliproxy.status import ConnectionStatus
from relaymeter.state import AppState, get_state
from relaymeter.store import audit
from relaymeter.store import collector as store
from relaymeter.store import events as store_events
from relaymeter.store.collector import CPAConnectionRow

router = APIRouter(prefix="/api/collector", tags=["collector"])

Mode = Literal["auto", "http", "resp"]


class ConnectionCreate(BaseModel):
    name: str = Field(..., min_length=1, max_length=64, description="becomes the event source cpa:<name>")
    base_url: str = Field(
        ..., min_length=1, max_length=500, description="CPA API URL, e.g. http://127.0.0.1:8317"
    )
    management_key: str = Field(..., min_length=1, max_length=500, description="CPA management key")
    mode: Mode = "auto"
    batch_size: int = Field(conn_admin.DEFAULT_BATCH, ge=1, le=conn_admin.MAX_BATCH)
    poll_interval_ms: int = Field(2000, ge=conn_admin.MIN_POLL_MS, le=conn_admin.MAX_POLL_MS)
    enabled: bool = True
    check: bool = Field(True, description="check URL, key and retention against CPA before saving")
    enable_publishing: bool = Field(False, description="turn CPA's usage publishing on when it is off")


class ConnectionUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=64)
    base_url: str | None = Field(None, min_length=1, max_length=500)
    management_key: str | None = Field(None, min_length=1, max_length=500)
    mode: Mode | None = None
    batch_size: int | None = Field(None, ge=1, le=conn_admin.MAX_BATCH)
    poll_interval_ms: int | None = Field(None, ge=conn_admin.MIN_POLL_MS, le=conn_admin.MAX_POLL_MS)
    enabled: bool | None = None
    check: bool = True
    enable_publishing: bool = False


class PublishingBody(BaseModel):
    enabled: bool


def _status_map(state: AppState) -> dict[int, dict[str, Any]]:
    service = state.services.get("collector")
    if service is None:
        return {}
    return {int(item["id"]): item for item in service.status()}


def _offline_status(state: AppState, row: CPAConnectionRow) -> dict[str, Any]:
    """Status of a connection no collector in this process runs."""
    status = ConnectionStatus(
        name=row.name,
        base_url=row.base_url,
        mode=row.mode,
        poll_interval_ms=row.poll_interval_ms,
        batch_size=row.batch_size,
        state="disabled" if not row.enabled else "not_running",
    )
    item = status.to_dict()
    if row.enabled:
        item["last_error"] = (
            "the collector is off in this process (collector_enabled = false); run `relaymeter collect`"
            if not state.settings.collector_enabled
            else "not started yet"
        )
    item["id"] = row.id
    item["enabled"] = row.enabled
    return item


async def _connection_view(
    state: AppState, row: CPAConnectionRow, statuses: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    return {**row.public(), "status": statuses.get(row.id) or _offline_status(state, row)}


async def _get_row(state: AppState, connection_id: int) -> CPAConnectionRow:
    row = await store.get_connection(state.db, connection_id=connection_id)
    if row is None:
        raise ApiError(404, "not_found", f"no CPA connection with id {connection_id}")
    return row


async def _audit(
    request: Request, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    await audit.record(
        get_state(request).db,
        f"cpa_connection.{action}",
        actor=actor,
        target=target,
        detail=detail,
        client_ip=client_ip(request),
    )


def _translate(exc: Exception) -> ApiError:
    if isinstance(exc, conn_admin.ConnectionInvalid):
        return ApiError(422, "validation_error", str(exc), fields=[{"field": exc.field, "message": str(exc)}])
    if isinstance(exc, conn_admin.ConnectionExists | conn_admin.ConnectionConflict):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, conn_admin.CheckFailed):
        result = exc.result
        status = (
            422
            if result.error_kind == "config_error"
            else 400
            if result.error_kind in ("auth_failed", "banned")
            else 502
        )
        return ApiError(
            status,
            f"cpa_{result.error_kind or 'error'}",
            f"CPA check failed, nothing saved: {result.error} (save anyway with check=false)",
            check=result.to_dict(),
        )
    if isinstance(exc, LookupError):
        return ApiError(404, "not_found", str(exc))
    raise exc


@router.get("/status")
async def collector_status(request: Request, actor: str = AdminDep) -> dict[str, Any]:
    """Every connection's state, transport, totals, last consumed/inserted and last error."""
    state = get_state(request)
    statuses = _status_map(state)
    rows = await store.list_connections(state.db)
    spool = await store.spool_counts(state.db)
    items = []
    for row in rows:
        item = statuses.get(row.id) or _offline_status(state, row)
        item = dict(item)
        item["spooled_batches"] = spool.get(row.name, 0)  # popped, not yet confirmed stored
        item["dead_letters_stored"] = await store_events.count_dead_letters(state.db, f"cpa:{row.name}")
        items.append(item)
    return {
        "collector_enabled": state.settings.collector_enabled,
        "running": "collector" in state.services,
        "connections": items,
    }


@router.get("/connections")
async def list_connections(request: Request, actor: str = AdminDep) -> dict[str, Any]:
    state = get_state(request)
    statuses = _status_map(state)
    rows = await store.list_connections(state.db)
    return {"connections": [await _connection_view(state, r, statuses) for r in rows]}


@router.post("/connections", status_code=201)
async def create_connection(
    body: ConnectionCreate, request: Request, actor: str = AdminDep
) -> dict[str, Any]:
    """Add a CPA connection (checked against CPA first unless check=false)."""
    state = get_state(request)
    values = body.model_dump(exclude={"check", "enable_publishing"})
    try:
        row, result = await conn_admin.add_connection(
            state, values, check=body.check, enable_publishing=body.enable_publishing
        )
    except Exception as exc:
        raise _translate(exc) from None
    await _audit(
        request,
        actor,
        "create",
        row.name,
        {"base_url": row.base_url, "mode": row.mode, "checked": body.check},
    )
    view = await _connection_view(state, row, _status_map(state))
    view["check"] = result.to_dict() if result else None
    return view


@router.get("/connections/{connection_id}")
async def get_connection(connection_id: RowId, request: Request, actor: str = AdminDep) -> dict[str, Any]:
    state = get_state(request)
    return await _connection_view(state, await _get_row(state, connection_id), _status_map(state))


@router.patch("/connections/{connection_id}")
async def update_connection(
    connection_id: RowId, body: ConnectionUpdate, request: Request, actor: str = AdminDep
) -> dict[str, Any]:
    """Change a connection; a running collector restarts it with the new settings."""
    state = get_state(request)
    values = body.model_dump(exclude={"check", "enable_publishing"}, exclude_none=True)
    try:
        row, result = await conn_admin.edit_connection(
            state, connection_id, values, check=body.check, enable_publishing=body.enable_publishing
        )
    except Exception as exc:
        raise _translate(exc) from None
    changed = sorted(k for k in values if k != "management_key") + (
        ["management_key"] if "management_key" in values else []
    )
    await _audit(request, actor, "update", row.name, {"changed": changed})
    view = await _connection_view(state, row, _status_map(state))
    view["check"] = result.to_dict() if result else None
    return view


@router.delete("/connections/{connection_id}")
async def delete_connection(connection_id: RowId, request: Request, actor: str = AdminDep) -> dict[str, Any]:
    """Remove a connection; records it still had spooled are stored first."""
    state = get_state(request)
    try:
        row, replayed = await conn_admin.remove_connection(state, connection_id)
    except Exception as exc:
        raise _translate(exc) from None
    await _audit(request, actor, "delete", row.name)
    return {"deleted": True, "name": row.name, "spooled_records_stored": replayed}


@router.post("/connections/{connection_id}/test")
async def test_connection(connection_id: RowId, request: Request, actor: str = AdminDep) -> dict[str, Any]:
    """Check URL, key, retention vs poll interval and the queue transport; pops nothing."""
    state = get_state(request)
    row = await _get_row(state, connection_id)
    try:
        key = state.box.decrypt(row.management_key_enc)
    except ValueError as exc:
        raise ApiError(409, "key_unreadable", f"{exc}; save the management key again") from None
    result = await check_cpa(row.base_url, key, mode=row.mode, poll_interval_ms=row.poll_interval_ms)
    return result.to_dict()


@router.post("/connections/{connection_id}/restart")
async def restart_connection(connection_id: RowId, request: Request, actor: str = AdminDep) -> dict[str, Any]:
    """Start a connection again (e.g. after fixing a refused key); its lease and spool are kept."""
    state = get_state(request)
    row = await _get_row(state, connection_id)
    service = state.services.get("collector")
    if service is None:
        raise ApiError(
            409, "collector_off", "the collector does not run in this process (collector_enabled = false)"
        )
    if not row.enabled:
        raise ApiError(409, "disabled", f"connection {row.name!r} is disabled; enable it first")
    await service.restart(connection_id)
    await _audit(request, actor, "restart", row.name)
    return {"restarted": True, "status": service.status_of(connection_id)}


@router.put("/connections/{connection_id}/publishing")
async def set_publishing(
    connection_id: RowId, body: PublishingBody, request: Request, actor: str = AdminDep
) -> dict[str, Any]:
    """Turn CPA's usage publishing (usage-statistics-enabled) on or off."""
    state = get_state(request)
    row = await _get_row(state, connection_id)
    try:
        key = state.box.decrypt(row.management_key_enc)
    except ValueError as exc:
        raise ApiError(409, "key_unreadable", f"{exc}; save the management key again") from None
    try:
        async with ManagementClient(row.base_url, key) as cpa:
            await cpa.set_usage_statistics_enabled(body.enabled)
            enabled = await cpa.usage_statistics_enabled()
    except CPAError as exc:
        status = 400 if exc.kind in ("auth_failed", "banned") else 502
        raise ApiError(status, f"cpa_{exc.kind}", str(exc)) from None
    await _audit(request, actor, "publishing", row.name, {"enabled": enabled})
    return {"name": row.name, "publishing_enabled": enabled}
