"""The OpenAPI document as relaymeter really answers: validation errors (422) use relaymeter's
error body ``{"error": {"code", "message", "fields"}}``, not FastAPI's default ``detail`` list."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable reason, e.g. validation_error"},
                "message": {
                    "type": "string",
                    "description": "what is wrong and what to fix; starts with the field",
                },
                "fields": {
                    "type": "array",
                    "description": "every invalid field (validation errors only)",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}
_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def rewrite(spec: dict[str, Any]) -> dict[str, Any]:
    """Point every 422 response at ErrorResponse and drop FastAPI's unused validation schemas."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ERROR_SCHEMA
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "Validation error: the message names the field and says what to fix",
                    "content": {"application/json": {"schema": _REF}},
                }
    text = repr(spec["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}" not in text:
            schemas.pop(name, None)
    return spec


def install(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = rewrite(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
