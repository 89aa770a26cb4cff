"""`relaymeter serve`: run the gateway, API, console and background services."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from relaymeter.cli import common


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="bind port (default 8320)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="server processes sharing the port (default: the workers setting, 1)"),
    ] = None,
) -> None:
    """Start relaymeter (gateway, admin API, web console, collector)."""
    import uvicorn

    from relaymeter.app import create_app
    from relaymeter.http_protocol import http_protocol
    from relaymeter.logs import setup_logging

    cfg = common.settings(host=host, port=port)
    if not is_loopback(cfg.host) and cfg.admin_password is None and not _stored_password_exists(cfg):
        common.fail(
            f"refusing to bind {cfg.host}: no admin password is set. Run `relaymeter init` "
            "or set RELAYMETER_ADMIN_PASSWORD, or bind 127.0.0.1"
        )
    setup_logging(cfg.log_level, cfg.log_format)
    count = workers if workers is not None else cfg.workers
    if count < 1:
        common.fail("--workers must be at least 1")
    if count > 1:
        from relaymeter.workers import serve_workers

        common.console.print(
            f"relaymeter listening on http://{cfg.host}:{cfg.port} ({count} worker processes)",
            highlight=False,
        )
        try:
            code = serve_workers(cfg, count)
        except OSError as exc:
            common.fail(f"cannot serve on {cfg.host}:{cfg.port}: {exc}")
        raise typer.Exit(code)
    common.console.print(f"relaymeter listening on http://{cfg.host}:{cfg.port}", highlight=False)
    uvicorn.run(
        create_app(cfg),
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        http=http_protocol(),
    )


def _stored_password_exists(cfg: object) -> bool:
    from relaymeter.config import Settings
    from relaymeter.store import admin as admin_store
    from relaymeter.store.db import Database

    assert isinstance(cfg, Settings)

    async def check() -> bool:
        db = Database(cfg.effective_database_url)
        try:
            from relaymeter.store import migrate

            await migrate.upgrade(db)
            return bool(await admin_store.get_password_hash(db))
        finally:
            await db.dispose()

    return common.run(check())
