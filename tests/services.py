"""Reachability of the real services tests use; skip locally, fail under CI=true."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

PG_URL = os.environ.get("RELAYMETER_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RELAYMETER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(name: str, ok: bool, how: str) -> None:
    """Skip (locally) or fail (CI=true) a test whose service is missing."""
    if ok:
        return
    message = f"{name} is not reachable ({how})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


def require_postgres() -> None:
    require("PostgreSQL", _reachable("127.0.0.1", 5432), "127.0.0.1:5432, database test")


def require_redis() -> None:
    require("Redis", _reachable("127.0.0.1", 6379), "127.0.0.1:6379")


def require_chromium() -> str:
    path = "/usr/bin/chromium"
    require("chromium", os.path.exists(path), "install Debian's chromium package (make browser-deps)")
    return path


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
