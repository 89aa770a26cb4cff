"""Admin API for client API keys: create (secret shown once), list, edit, enable/disable, revoke, delete."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response

from relaymeter.api.accounts import admin_call as _call
from relaymeter.api.auth import AdminDep, client_ip
from relaymeter.api.params import RowId
from relaymeter.gateway import admin
from relaymeter.state import get_state
from relaymeter.store import audit
from relaymeter.store import keys as key_store

router = APIRouter(prefix="/api/keys", tags=["keys"])


@router.get("")
async def list_keys(
    request: Request,
    origin: Literal["gateway", "observed", "all"] = Query(
        "all", description="observed = seen in CPA records"
    ),
    actor: str = AdminDep,
) -> dict[str, Any]:
    """Keys with live usage (in flight, RPM/TPM, spend per period); observed keys cannot authenticate."""
    state = get_state(request)
    rows = await key_store.list_keys(state.db, origin=None if origin == "all" else origin)
    return {
        "keys": [
            admin.key_view(r, admin.usage_of(state, r["id"]) if r["origin"] == "gateway" else None)
            for r in rows
        ]
    }


@router.get("/{key_id:int}")
async def get_key(request: Request, key_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    state = get_state(request)
    row = await _call(admin.get_key_row(state, key_id))
    return admin.key_view(row, admin.usage_of(state, key_id) if row["origin"] == "gateway" else None)


@router.post("", status_code=201)
async def create_key(request: Request, body: admin.KeyCreate, actor: str = AdminDep) -> dict[str, Any]:
    """Create a key. The secret is in this answer only: it is stored as a SHA-256 hash."""
    state = get_state(request)
    view, secret = await _call(admin.create_key(state, body))
    await audit.record(
        state.db,
        "key.create",
        actor=actor,
        target=f"key:{view['id']}",
        detail={"name": view["name"]},
        client_ip=client_ip(request),
    )
    return {"key": secret, "api_key": view, "note": "store this key now: it is shown only once"}


@router.patch("/{key_id:int}")
async def update_key(
    request: Request, key_id: RowId, body: admin.KeyUpdate, actor: str = AdminDep
) -> dict[str, Any]:
    state = get_state(request)
    view = await _call(admin.update_key(state, key_id, body))
    await audit.record(
        state.db,
        "key.update",
        actor=actor,
        target=f"key:{key_id}",
        detail={"fields": sorted(body.model_fields_set)},
        client_ip=client_ip(request),
    )
    return view


@router.post("/{key_id:int}/enable")
async def enable_key(request: Request, key_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    state = get_state(request)
    view = await _call(admin.set_key_enabled(state, key_id, True))
    await audit.record(
        state.db, "key.enable", actor=actor, target=f"key:{key_id}", client_ip=client_ip(request)
    )
    return view


@router.post("/{key_id:int}/disable")
async def disable_key(request: Request, key_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    state = get_state(request)
    view = await _call(admin.set_key_enabled(state, key_id, False))
    await audit.record(
        state.db, "key.disable", actor=actor, target=f"key:{key_id}", client_ip=client_ip(request)
    )
    return view


@router.post("/{key_id:int}/revoke")
async def revoke_key(request: Request, key_id: RowId, actor: str = AdminDep) -> dict[str, Any]:
    """Revoke for good: the key stops working at once and cannot be re-enabled."""
    state = get_state(request)
    view = await _call(admin.revoke_key(state, key_id))
    await audit.record(
        state.db, "key.revoke", actor=actor, target=f"key:{key_id}", client_ip=client_ip(request)
    )
    return view


@router.delete("/{key_id:int}", status_code=204)
async def delete_key(request: Request, key_id: RowId, actor: str = AdminDep) -> Response:
    state = get_state(request)
    await _call(admin.delete_key(state, key_id))
    await audit.record(
        state.db, "key.delete", actor=actor, target=f"key:{key_id}", client_ip=client_ip(request)
    )
    return Response(status_code=204)
