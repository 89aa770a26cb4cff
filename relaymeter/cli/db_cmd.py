"""`relaymeter db upgrade|current`: schema migrations from the command line."""

from __future__ import annotations

import typer

from relaymeter.cli import common

app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


@app.command("upgrade")
def upgrade() -> None:
    """Apply pending migrations."""
    from relaymeter.store import migrate
    from relaymeter.store.db import Database

    cfg = common.settings()

    async def go() -> None:
        db = Database(cfg.effective_database_url)
        try:
            before = await migrate.current_revision(db)
            await migrate.upgrade(db)
            after = await migrate.current_revision(db)
        finally:
            await db.dispose()
        common.console.print(f"database at revision {after} (was {before or 'empty'})", highlight=False)

    common.run(go())


@app.command("current")
def current() -> None:
    """Print the current and the latest schema revision."""
    from relaymeter.store import migrate
    from relaymeter.store.db import Database

    cfg = common.settings()

    async def go() -> None:
        db = Database(cfg.effective_database_url)
        try:
            rev = await migrate.current_revision(db)
        finally:
            await db.dispose()
        common.console.print(f"current: {rev or 'empty'}  head: {migrate.head_revision()}", highlight=False)

    common.run(go())


from relaymeter.cli import storage_cmd  # noqa: E402

app.command("stats")(storage_cmd.stats)
app.command("vacuum")(storage_cmd.vacuum)
