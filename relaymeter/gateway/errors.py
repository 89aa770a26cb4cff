"""Error responses in the client's dialect: Anthropic error JSON or OpenAI error JSON."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

ANTHROPIC = "anthropic"
OPENAI = "openai"

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_response(
    dialect: str,
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """A JSON error body the route's official SDK understands, with the right status."""
    if dialect == ANTHROPIC:
        err: dict[str, Any] = {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}
        if extra:
            err.update(extra)
        body: dict[str, Any] = {"type": "error", "error": err}
    else:
        err = {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": None,
            "code": code,
        }
        if extra:
            err.update(extra)
        body = {"error": err}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)
