"""Liveness (/healthz) and readiness (/readyz: database, migrations, writer)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from relaymeter import __version__
from relaymeter.api.jsonresponse import FastJSONResponse
from relaymeter.state import get_state
from relaymeter.store import migrate

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
async def readyz(request: Request) -> FastJSONResponse:
    state = get_state(request)
    db_ok = await state.db.ping()
    migrations_ok = db_ok and await migrate.is_current(state.db)
    writer_ok = state.writer.alive
    ready = db_ok and migrations_ok and writer_ok
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {"database": db_ok, "migrations": migrations_ok, "writer": writer_ok},
        "writer_queue": state.writer.depth,
    }
    return FastJSONResponse(body, status_code=200 if ready else 503)
