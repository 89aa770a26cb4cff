"""Admin API for usage files: streaming import (POST /api/usage/import) and streaming JSONL
export (GET /api/usage/export) with the same range and filters as the analytics API."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from relaymeter.api.analytics import filters_dep, optional_range_dep
from relaymeter.api.auth import AdminDep, client_ip
from relaymeter.api.errors import ApiError
from relaymeter.domain.windows import TimeRange
from relaymeter.ingest import files
from relaymeter.state import get_state
from relaymeter.store import audit
from relaymeter.store.queries import Filters

router = APIRouter(prefix="/api/usage", tags=["usage files"])

_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.-]{0,79}$")


@router.post(
    "/import",
    openapi_extra={
        "requestBody": {
            "description": "the file itself as the body (JSONL, JSON or gzip); multipart uploads are not needed",
            "content": {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
)
async def import_usage(
    request: Request,
    name: str = Query(
        "upload", max_length=200, description="file name shown in the summary and dead letters"
    ),
    source: str = Query(
        files.DEFAULT_SOURCE,
        max_length=80,
        description="event source for records without their own (relaymeter exports keep theirs)",
    ),
    actor: str = AdminDep,
) -> dict[str, Any]:
    """Import relaymeter JSONL, CPA-Manager JSONL, raw CPA records or a legacy CPA usage export.

    The body is streamed (constant memory, any size); importing the same file twice adds
    nothing. Answers added / skipped / failed with the first failures and their lines.
    """
    state = get_state(request)
    if not _SOURCE_RE.match(source):
        raise ApiError(422, "validation_error", "source: use letters, digits, ':', '.', '_' or '-' (max 80)")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the file itself as the request body (e.g. curl --data-binary @usage.jsonl), not a multipart form",
        )
    result = await files.import_chunks(
        state.db,
        state.writer,
        request.stream(),
        name=name,
        source=source,
        keep_raw=state.settings.store_raw_payloads,
    )
    await audit.record(
        state.db,
        "usage.import",
        actor=actor,
        target=name,
        detail={k: v for k, v in result.to_dict().items() if k != "failures"},
        client_ip=client_ip(request),
    )
    if result.error is not None and not (result.added or result.skipped):
        raise ApiError(422, "import_refused", result.error, result=result.to_dict())
    return result.to_dict()


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one event per line"}},
)
async def export_usage(
    request: Request,
    rng: TimeRange | None = Depends(optional_range_dep),
    filters: Filters = Depends(filters_dep),
    raw: bool = Query(True, description="include each event's stored (redacted) raw payload"),
    actor: str = AdminDep,
) -> StreamingResponse:
    """Stream events as relaymeter JSONL (oldest first): all of them, or a range and filters.

    The file re-imports without duplicates, here or into another relaymeter.
    """
    state = get_state(request)
    start_ms = rng.start_ms if rng else None
    end_ms = rng.end_ms if rng else None
    await audit.record(
        state.db,
        "usage.export",
        actor=actor,
        detail={"start_ms": start_ms, "end_ms": end_ms},
        client_ip=client_ip(request),
    )
    label = rng.name if rng else "all"
    return StreamingResponse(
        files.export_jsonl(state.db, start_ms=start_ms, end_ms=end_ms, filters=filters, include_raw=raw),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="relaymeter-usage-{label}.jsonl"'},
    )
