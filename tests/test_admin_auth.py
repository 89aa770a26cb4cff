"""Admin authentication: sessions, bearer token, throttling, password change, bind guard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relaymeter.api import auth
from relaymeter.cli import app as cli_app
from relaymeter.config import Settings
from tests.conftest import running_app


async def test_admin_routes_need_a_session_or_token(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(admin_token="tok-123456")) as (_app, client):
        protected = "/api/auth/password"
        body = {"current_password": "test-admin-password", "new_password": "another-password"}
        res = await client.post(protected, json=body)
        assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"
        res = await client.get("/api/auth/me", headers={"Authorization": "Bearer wrong"})
        assert res.json() == {"authenticated": False}
        res = await client.get("/api/auth/me", headers={"Authorization": "Bearer tok-123456"})
        assert res.json() == {"authenticated": True}


async def test_logout_ends_the_session(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_app, client):
        await client.post("/api/auth/login", json={"password": "test-admin-password"})
        assert (await client.get("/api/auth/me")).json()["authenticated"]
        await client.post("/api/auth/logout")
        assert not (await client.get("/api/auth/me")).json()["authenticated"]


async def test_repeated_failures_slow_down_then_lock(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []

    async def no_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(auth, "_sleep", no_sleep)
    monkeypatch.setattr(auth, "_throttle", auth.LoginThrottle())
    async with running_app(make_settings()) as (_app, client):
        for _ in range(auth.LOCK_FAILURES):
            assert (await client.post("/api/auth/login", json={"password": "bad"})).status_code == 401
        assert delays[: auth.FREE_FAILURES] == [0.0] * auth.FREE_FAILURES
        assert delays[-1] > delays[auth.FREE_FAILURES] > 0
        locked = await client.post("/api/auth/login", json={"password": "test-admin-password"})
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) > 0
        assert "try again" in locked.json()["error"]["message"]


async def test_generated_password_and_password_change(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(admin_password=None)
    async with running_app(settings) as (_app, client):
        printed = capsys.readouterr().err
        assert "generated one (shown once)" in printed
        password = printed.split("(shown once): ")[1].split()[0]
        assert (await client.post("/api/auth/login", json={"password": password})).status_code == 200
        short = await client.post(
            "/api/auth/password", json={"current_password": password, "new_password": "x"}
        )
        assert short.status_code == 422 and short.json()["error"]["fields"][0]["field"] == "new_password"
        ok = await client.post(
            "/api/auth/password", json={"current_password": password, "new_password": "a-new-password"}
        )
        assert ok.status_code == 200
        assert (await client.post("/api/auth/login", json={"password": password})).status_code == 401
        assert (await client.post("/api/auth/login", json={"password": "a-new-password"})).status_code == 200
    async with running_app(settings) as (_app, client):
        assert "generated" not in capsys.readouterr().err  # shown once only


def test_serve_refuses_a_public_bind_without_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_app,
        ["--config", str(tmp_path / "none.toml"), "serve", "--host", "0.0.0.0"],
        env={"RELAYMETER_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 1
    assert "refusing to bind 0.0.0.0: no admin password is set" in result.output


def test_init_sets_a_password_shown_once(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--config", str(tmp_path / "none.toml"), "init"]
    env = {"RELAYMETER_DATA_DIR": str(tmp_path)}
    first = runner.invoke(cli_app, args, env=env)
    assert first.exit_code == 0 and "admin password (shown once):" in first.output
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    second = runner.invoke(cli_app, args, env=env)
    assert "already set" in second.output
