"""The app starts, answers liveness/readiness and protects admin routes."""

from __future__ import annotations

from collections.abc import Callable

from relaymeter.config import Settings
from tests.conftest import running_app


async def test_healthz_readyz_and_login(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_app, client):
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": True, "migrations": True, "writer": True}
        assert (await client.get("/api/auth/me")).json() == {"authenticated": False}
        bad = await client.post("/api/auth/login", json={"password": "nope"})
        assert bad.status_code == 401
        assert bad.json()["error"]["code"] == "invalid_password"
        good = await client.post("/api/auth/login", json={"password": "test-admin-password"})
        assert good.status_code == 200
        assert "httponly" in good.headers["set-cookie"].lower()
        assert (await client.get("/api/auth/me")).json() == {"authenticated": True}
