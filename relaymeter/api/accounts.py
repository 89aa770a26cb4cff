"""Admin API for gateway accounts: CRUD, enable/disable, test, import (CSV / JSON / CPA auth files), batch."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Query, Request, Response

from relaymeter.api.auth import AdminDep, client_ip
from relaymeter.api.errors import ApiError
from relaymeter.api.params import RowId
from relaymeter.gateway import admin
from relaymeter.state import get_state
from relaymeter.store import accounts as account_store
from relaymeter.store import audit

router = APIRouter(prefix="/api/accounts", tags=["accounts"])
T = TypeVar("T")
MAX_IMPORT_BYTES = 20 * 1024 * 1024


async def admin_call(awaitable: Awaitable[T]) -> T:
    """Await an admin operation, turning AdminError into the API error response."""
    try:
        return await awaitable
    except admin.AdminError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


def _runtime(request: Request) -> dict[int, dict[str, Any]]:
    service = get_state(request).services.get("gateway")
    return {item["id"]: item for item in service.snapshot()} if service is not None else {}


@router.get("")
async def list_accounts(
    request: Request,
    origin: Literal["gateway", "observed", "all"] = Query(
        "gateway", description="observed = seen via CPA/import"
    ),
    actor: str = AdminDep,
) -> dict[str, Any]:
    """Accounts with their live state (load, health, cooldown, today's use against caps)."""
    state = get_state(request)
    rows = await account_store.list_accounts(state.db, origin=None if origin != "gateway" else "gateway")
    if origin == "observed":
        rows = [r for r in rows if r["origin"] != "gateway"]
    runtime = _runtime(request)
    return {"accounts": [admin.account_view(r, state.box, runtime.get(r["id"])) for r in rows]}


@router.get("/{account_id:int}")
async def get_account(request: Request, account_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    state = get_state(request)
    row = await admin_call(admin.get_gateway_account(state, account_id))
    return admin.account_view(row, state.box, _runtime(request).get(account_id))


@router.post("", status_code=201)
async def create_account(
    request: Request, body: admin.AccountCreate, actor: str = AdminDep
) -> dict[str, Any]:
    """Add an upstream account; credentials are encrypted at rest and never returned."""
    state = get_state(request)
    view = await admin_call(admin.create_account(state, body))
    await audit.record(
        state.db,
        "account.create",
        actor=actor,
        target=f"account:{view['id']}",
        detail={"name": view["name"], "provider": view["provider"]},
        client_ip=client_ip(request),
    )
    return view


@router.patch("/{account_id:int}")
async def update_account(
    request: Request, account_id: RowId, body: admin.AccountUpdate, actor: str = AdminDep
) -> dict[str, Any]:
    state = get_state(request)
    view = await admin_call(admin.update_account(state, account_id, body))
    await audit.record(
        state.db,
        "account.update",
        actor=actor,
        target=f"account:{account_id}",
        detail={"fields": sorted(body.model_fields_set)},
        client_ip=client_ip(request),
    )
    return view


@router.post("/{account_id:int}/enable")
async def enable_account(request: Request, account_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    state = get_state(request)
    view = await admin_call(admin.set_account_enabled(state, account_id, True))
    await audit.record(
        state.db, "account.enable", actor=actor, target=f"account:{account_id}", client_ip=client_ip(request)
    )
    return view


@router.post("/{account_id:int}/disable")
async def disable_account(request: Request, account_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    """Disable by hand (disabled_by='user': automatic checks never re-enable it)."""
    state = get_state(request)
    view = await admin_call(admin.set_account_enabled(state, account_id, False))
    await audit.record(
        state.db, "account.disable", actor=actor, target=f"account:{account_id}", client_ip=client_ip(request)
    )
    return view


@router.delete("/{account_id:int}", status_code=204)
async def delete_account(request: Request, account_id: RowId, actor: str = AdminDep) -> Response:
    state = get_state(request)
    await admin_call(admin.delete_account(state, account_id))
    await audit.record(
        state.db, "account.delete", actor=actor, target=f"account:{account_id}", client_ip=client_ip(request)
    )
    return Response(status_code=204)


@router.post("/{account_id:int}/test")
async def test_account(request: Request, account_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    """Probe the account with a free request; a rejected credential marks it unhealthy."""
    return await admin_call(admin.test_account(get_state(request), account_id))


@router.post("/import")
async def import_accounts(
    request: Request,
    dry_run: bool = Query(False, description="preview: report what would be added, change nothing"),
    actor: str = AdminDep,
) -> dict[str, Any]:
    """Import accounts from CSV (header row), a JSON array of accounts, or CPA auth files.

    Send the file as the body (text/csv or application/json), or JSON
    ``{"content": "<file text>", "dry_run": true}``. Answers per row: added / skipped / failed.
    """
    state = get_state(request)
    raw = await request.body()
    if len(raw) > MAX_IMPORT_BYTES:
        raise ApiError(413, "too_large", f"import larger than {MAX_IMPORT_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the import must be UTF-8 text (CSV or JSON)") from None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("content"), str) and "provider" not in doc:
            text = doc["content"]
            dry_run = bool(doc.get("dry_run", dry_run))
    result = await admin_call(admin.import_accounts(state, text, dry_run=dry_run))
    if not dry_run and result["added"]:
        await audit.record(
            state.db,
            "account.import",
            actor=actor,
            target="accounts",
            detail={k: result[k] for k in ("added", "skipped", "failed")},
            client_ip=client_ip(request),
        )
    return result


@router.post("/batch")
async def batch_update(request: Request, body: admin.BatchBody, actor: str = AdminDep) -> dict[str, Any]:
    """Set daily caps / priority / weight / concurrency / enabled on all or selected accounts."""
    state = get_state(request)
    result = await admin_call(admin.batch_update(state, body))
    await audit.record(
        state.db,
        "account.batch",
        actor=actor,
        target="accounts" if body.all else f"accounts:{body.ids}",
        detail=result,
        client_ip=client_ip(request),
    )
    return result
