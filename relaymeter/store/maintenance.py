"""Database statistics (sizes, row counts) and space reclaim: SQLite incremental vacuum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.engine import make_url

from relaymeter.store.db import Database
from relaymeter.store.schema import dead_letters as dead_letters_table
from relaymeter.store.schema import metadata, usage_events

AUTO_VACUUM_MODES = {0: "none", 1: "full", 2: "incremental"}


def file_sizes(path: Path | None) -> dict[str, int]:
    """Bytes of the SQLite file and its -wal / -shm companions (a stat call each, no reads)."""
    if path is None:
        return {}
    out = {}
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        out["db" + suffix.replace("-", "_")] = p.stat().st_size if p.exists() else 0
    return out


def sqlite_path(db: Database) -> Path | None:
    if not db.is_sqlite:
        return None
    name = make_url(db.url).database or ""
    return None if name in ("", ":memory:") else Path(name).expanduser()


async def row_counts(db: Database) -> dict[str, int]:
    out: dict[str, int] = {}
    async with db.connect() as conn:
        for name, table in sorted(metadata.tables.items()):
            out[name] = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    return out


async def event_span(db: Database) -> tuple[int | None, int | None]:
    """(oldest, newest) event time in epoch ms, or (None, None) when there are no events."""
    async with db.connect() as conn:
        row = (
            await conn.execute(select(func.min(usage_events.c.ts_ms), func.max(usage_events.c.ts_ms)))
        ).one()
    return (int(row[0]) if row[0] is not None else None, int(row[1]) if row[1] is not None else None)


async def table_sizes(db: Database) -> dict[str, int]:
    """Bytes per table including its indexes (SQLite: dbstat; PostgreSQL: pg_total_relation_size)."""
    names = sorted(metadata.tables)
    out: dict[str, int] = {}
    async with db.connect() as conn:
        if db.is_sqlite:
            index_owner = {
                str(r[0]): str(r[1])
                for r in await conn.exec_driver_sql(
                    "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"
                )
            }
            try:
                rows = await conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            except Exception:  # SQLite built without the dbstat table
                return {}
            for name, size in rows:
                owner = index_owner.get(str(name), str(name))
                if owner in metadata.tables:
                    out[owner] = out.get(owner, 0) + int(size or 0)
        else:
            for name in names:
                size = (await conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": name})).scalar()
                out[name] = int(size or 0)
    return out


async def sqlite_pragmas(db: Database) -> dict[str, int]:
    if not db.is_sqlite:
        return {}
    out: dict[str, int] = {}
    async with db.connect() as conn:
        for name in ("page_size", "page_count", "freelist_count", "auto_vacuum"):
            out[name] = int((await conn.exec_driver_sql(f"PRAGMA {name}")).scalar() or 0)
    return out


async def stats(db: Database, *, sizes: bool = True) -> dict[str, Any]:
    """Everything `relaymeter db stats` shows."""
    oldest, newest = await event_span(db)
    out: dict[str, Any] = {
        "backend": db.dialect,
        "rows": await row_counts(db),
        "oldest_event_ms": oldest,
        "newest_event_ms": newest,
        "table_bytes": await table_sizes(db) if sizes else {},
    }
    path = sqlite_path(db)
    if db.is_sqlite:
        pragmas = await sqlite_pragmas(db)
        files = file_sizes(path)
        out["sqlite"] = {
            "path": str(path) if path else None,
            "file_bytes": files,
            "page_size": pragmas["page_size"],
            "page_count": pragmas["page_count"],
            "free_pages": pragmas["freelist_count"],
            "free_bytes": pragmas["freelist_count"] * pragmas["page_size"],
            "auto_vacuum": AUTO_VACUUM_MODES.get(pragmas["auto_vacuum"], str(pragmas["auto_vacuum"])),
        }
        out["total_bytes"] = sum(files.values()) if files else pragmas["page_count"] * pragmas["page_size"]
    else:
        async with db.connect() as conn:
            out["total_bytes"] = int(
                (await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar() or 0
            )
    return out


async def ts_after_oldest(db: Database, n: int) -> int | None:
    """ts_ms of the (n+1)-th oldest event: deleting everything before it removes about n rows."""
    e = usage_events.c
    async with db.connect() as conn:
        row = (await conn.execute(select(e.ts_ms).order_by(e.ts_ms).offset(n).limit(1))).first()
    return int(row[0]) if row else None


async def incremental_vacuum(db: Database, pages: int) -> int:
    """Give up to ``pages`` free pages back to the file system (SQLite, auto_vacuum=incremental).

    Returns the number of pages released; 0 on PostgreSQL (autovacuum does this) or when
    the SQLite file was created without incremental auto-vacuum.
    """
    if not db.is_sqlite:
        return 0
    async with db.begin() as conn:
        mode = int((await conn.exec_driver_sql("PRAGMA auto_vacuum")).scalar() or 0)
        if mode != 2:
            return 0
        before = int((await conn.exec_driver_sql("PRAGMA freelist_count")).scalar() or 0)
        if before == 0:
            return 0
        # Each step of this pragma frees one page and the Python driver steps a statement
        # without result columns only once, so free the pages one statement at a time.
        for _ in range(min(before, max(1, int(pages)))):
            await conn.exec_driver_sql("PRAGMA incremental_vacuum(1)")
        after = int((await conn.exec_driver_sql("PRAGMA freelist_count")).scalar() or 0)
    return max(before - after, 0)


async def vacuum(db: Database) -> dict[str, int]:
    """Rebuild the whole file (SQLite VACUUM, switching on incremental auto-vacuum) or VACUUM
    ANALYZE on PostgreSQL. Blocks writers while it runs: meant for `relaymeter db vacuum`."""
    path = sqlite_path(db)
    before = sum(file_sizes(path).values())
    if db.is_sqlite:
        async with db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.execute("PRAGMA auto_vacuum=INCREMENTAL")
            await driver.execute("VACUUM")
            await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        async with db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
    after = sum(file_sizes(path).values())
    return {"bytes_before": before, "bytes_after": after}


async def dead_letters(
    db: Database, *, limit: int = 100, before_id: int | None = None, source: str | None = None
) -> list[dict[str, Any]]:
    """Dead letters newest first, keyset-paginated by id."""
    t = dead_letters_table.c
    stmt = select(dead_letters_table).order_by(t.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(t.id < before_id)
    if source is not None:
        stmt = stmt.where(t.source == source)
    async with db.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def dead_letter(db: Database, item_id: int) -> dict[str, Any] | None:
    async with db.connect() as conn:
        row = (
            await conn.execute(select(dead_letters_table).where(dead_letters_table.c.id == item_id))
        ).first()
    return dict(row._mapping) if row else None


async def delete_dead_letters(
    db: Database, *, source: str | None = None, before_ms: int | None = None, ids: list[int] | None = None
) -> int:
    t = dead_letters_table.c
    stmt = delete(dead_letters_table)
    if source is not None:
        stmt = stmt.where(t.source == source)
    if before_ms is not None:
        stmt = stmt.where(t.created_ms < before_ms)
    if ids:
        stmt = stmt.where(t.id.in_(ids))
    async with db.begin() as conn:
        return int((await conn.execute(stmt)).rowcount or 0)
