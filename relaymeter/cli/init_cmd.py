"""`relaymeter init`: create the data dir, key file, database and the admin password."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from relaymeter.cli import common


def init(
    reset_password: Annotated[
        bool, typer.Option("--reset-password", help="replace the admin password")
    ] = False,
    password: Annotated[
        str | None, typer.Option("--password", help="use this password instead of generating one")
    ] = None,
) -> None:
    """Prepare relaymeter: data dir, 0600 key file, migrated database, admin password (shown once)."""
    from relaymeter.security import hash_password
    from relaymeter.store import admin as admin_store
    from relaymeter.store import audit

    cfg = common.settings()

    async def go() -> None:
        async with common.open_app_state(cfg, start_writer=False) as state:
            common.console.print(f"data dir: {cfg.data_dir}", highlight=False)
            common.console.print(f"database: {cfg.effective_database_url}", highlight=False)
            common.console.print(f"key file: {cfg.key_file}", highlight=False)
            if cfg.admin_password is not None and not reset_password:
                common.console.print("admin password: taken from RELAYMETER_ADMIN_PASSWORD")
                return
            existing = await admin_store.get_password_hash(state.db)
            if existing and not reset_password:
                common.console.print("admin password: already set (use --reset-password to replace it)")
                return
            new_password = password or secrets.token_urlsafe(12)
            if len(new_password) < 8:
                common.fail("--password must be at least 8 characters")
            await admin_store.set_password_hash(state.db, hash_password(new_password))
            await admin_store.delete_all_sessions(state.db)
            await audit.record(state.db, "admin.password_set", actor="cli")
            if password:
                common.console.print("admin password: set")
            else:
                common.console.print(f"admin password (shown once): [bold]{new_password}[/]", highlight=False)

    common.run(go())
