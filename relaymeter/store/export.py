"""Reading usage events out in time order, in pages (keyset on ts_ms, id), for JSONL export.

Each page is its own short read, so an export of any size runs in constant memory and never
holds a long transaction open against the writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import and_, func, or_, select

from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.queries import Filters
from relaymeter.store.schema import accounts, api_keys, usage_events

EXPORT_PAGE = 2000


def _base_where(start_ms: int | None, end_ms: int | None, filters: Filters) -> list[Any]:
    e = usage_events.c
    where: list[Any] = queries._filter_clauses(e, filters, queries._served_model())
    if start_ms is not None:
        where.append(e.ts_ms >= start_ms)
    if end_ms is not None:
        where.append(e.ts_ms < end_ms)
    return where


async def iter_event_pages(
    db: Database,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    filters: Filters = Filters(),
    page: int = EXPORT_PAGE,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Pages of event rows (dicts keyed like UsageEvent fields), oldest first.

    ``account_label`` is the account's current name when the event has an account, and
    ``api_key_prefix`` the key's display prefix, so a re-import names things the same way.
    """
    e = usage_events.c
    cols = [
        *[c for c in usage_events.c if c.name not in ("event_key", "ingested_ms", "account_label")],
        func.coalesce(accounts.c.name, e.account_label).label("account_label"),
        func.coalesce(api_keys.c.prefix, "").label("api_key_prefix"),
    ]
    joined = usage_events.outerjoin(accounts, accounts.c.id == e.account_id).outerjoin(
        api_keys, api_keys.c.id == e.api_key_id
    )
    where = _base_where(start_ms, end_ms, filters)
    last: tuple[int, int] | None = None
    while True:
        clauses = list(where)
        if last is not None:
            clauses.append(or_(e.ts_ms > last[0], and_(e.ts_ms == last[0], e.id > last[1])))
        stmt = select(*cols).select_from(joined).where(*clauses).order_by(e.ts_ms, e.id).limit(page)
        async with db.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(stmt)]
        if not rows:
            return
        yield rows
        if len(rows) < page:
            return
        last = (int(rows[-1]["ts_ms"]), int(rows[-1]["id"]))


async def count_events(
    db: Database, *, start_ms: int | None = None, end_ms: int | None = None, filters: Filters = Filters()
) -> int:
    stmt = select(func.count()).select_from(usage_events).where(*_base_where(start_ms, end_ms, filters))
    async with db.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())
