"""Shared path and query parameter types for the admin API."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

# A row id in a path: positive and inside a 64-bit integer, so out-of-range ids get a 422.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1, description="row id")]
