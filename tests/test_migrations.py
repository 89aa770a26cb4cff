"""Migrations: one head, and a migrated database matches the table definitions exactly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from relaymeter.cli import app
from relaymeter.store import migrate
from relaymeter.store.db import Database
from relaymeter.store.schema import metadata

PG_ONLY_INDEXES = {"uq_usage_events_event_hash_pg"}


def test_single_head() -> None:
    heads = ScriptDirectory.from_config(migrate.alembic_config()).get_heads()
    assert len(heads) == 1, f"several migration heads: {heads}; re-point down_revision"


async def test_migrated_schema_matches_metadata(db: Database) -> None:
    def diff(sync_conn: object) -> list[object]:
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": False})  # type: ignore[arg-type]
        return compare_metadata(ctx, metadata)

    async with db.connect() as conn:
        changes = await conn.run_sync(diff)
    relevant = [
        c
        for c in changes
        if not (
            db.is_sqlite and isinstance(c, tuple) and c[0] == "add_index" and c[1].name in PG_ONLY_INDEXES
        )
    ]
    assert relevant == [], f"schema.py and the migrations disagree: {relevant}"
    assert await migrate.is_current(db)


def test_db_upgrade_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"RELAYMETER_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["--config", str(tmp_path / "none.toml"), "db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert f"revision {migrate.head_revision()}" in result.output
    assert "(was empty)" in result.output
    again = runner.invoke(app, ["--config", str(tmp_path / "none.toml"), "db", "current"], env=env)
    assert f"current: {migrate.head_revision()}" in again.output
