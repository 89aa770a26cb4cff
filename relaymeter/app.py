"""ASGI app factory; the lifespan opens the store, migrates, and starts the writer and services."""

from __future__ import annotations

import gc
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from relaymeter import __version__
from relaymeter.api import accounts as accounts_api
from relaymeter.api import admin_misc, auth, cpa_panel, health, prices
from relaymeter.api import analytics as analytics_api
from relaymeter.api import collector as collector_api
from relaymeter.api import keys as keys_api
from relaymeter.api import metrics as metrics_api
from relaymeter.api import openapi as openapi_doc
from relaymeter.api import quota as quota_api
from relaymeter.api import usage_io as usage_io_api
from relaymeter.api.errors import install_error_handlers
from relaymeter.api.jsonresponse import FastJSONResponse
from relaymeter.config import Settings, load_settings
from relaymeter.ingest.writer import UsageWriter
from relaymeter.pricing.sync import prepare_pricer
from relaymeter.security import SecretBox, hash_password
from relaymeter.services import start_services, stop_services
from relaymeter.state import AppState
from relaymeter.store import admin as admin_store
from relaymeter.store import migrate
from relaymeter.store.db import Database
from relaymeter.web import install_web

log = logging.getLogger("relaymeter")


async def open_state(settings: Settings) -> AppState:
    """Open the database (migrating it), the secret box and the writer; start nothing else."""
    db = Database(settings.effective_database_url)
    await migrate.upgrade(db)
    box = SecretBox.from_settings(
        settings.secret_key.get_secret_value() if settings.secret_key else None, settings.key_file
    )
    writer = UsageWriter(
        db,
        batch_size=settings.writer_batch_size,
        linger_ms=settings.writer_linger_ms,
        max_retries=settings.writer_max_retries,
        pricer=await prepare_pricer(db),
    )
    return AppState(settings=settings, db=db, writer=writer, box=box, started_ms=time.time_ns() // 1_000_000)


async def ensure_admin_password(state: AppState) -> str | None:
    """First start without any admin password: make one, store its hash, return it to show once."""
    if state.settings.admin_password is not None:
        return None
    if await admin_store.get_password_hash(state.db):
        return None
    password = secrets.token_urlsafe(12)
    await admin_store.set_password_hash(state.db, hash_password(password))
    return password


def show_generated_password(generated: str | None) -> None:
    """Print a password ensure_admin_password() just generated. Printed, not logged: shown
    once on the console, never kept in log files."""
    if generated:
        print(
            f"relaymeter: no admin password was set; generated one (shown once): {generated}\n"
            "relaymeter: change it in Settings or with `relaymeter init --reset-password`",
            file=sys.stderr,
            flush=True,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await open_state(settings)
        app.state.rm = state
        show_generated_password(await ensure_admin_password(state))
        state.writer.start()
        services = await start_services(state)
        # The objects alive after start-up (modules, tables, caches) live as long as the process:
        # moved out of the collector's reach, a full collection no longer walks them all, which
        # stalled the event loop for 50-125 ms under gateway load (bench/README.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await stop_services(state, services)
            await state.writer.close()
            await state.db.dispose()

    app = FastAPI(
        title="relaymeter",
        version=__version__,
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
        # FastAPI's OpenTelemetry bridge probes the environment on every request; we don't use it.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(prices.router)
    app.include_router(quota_api.router)
    app.include_router(analytics_api.router)
    app.include_router(accounts_api.router)
    app.include_router(keys_api.router)
    app.include_router(collector_api.router)
    app.include_router(usage_io_api.router)
    if settings.gateway_enabled:
        from relaymeter.gateway.routes import install as install_gateway

        install_gateway(app)  # /v1/* relay routes, matched before every other route
    app.include_router(admin_misc.router)
    app.include_router(metrics_api.router)
    cpa_panel.install(app, settings.cpa_panel_cors_origins)
    openapi_doc.install(app)  # 422 responses documented with relaymeter's error body
    # The console is the router's fallback: it only answers paths no route above matched.
    install_web(app)
    return app
