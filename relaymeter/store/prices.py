"""model_prices rows (override > synced > snapshot), the price version, and event repricing.

Repricing streams usage_events in id order in small write transactions: each batch
recomputes cost_micros / price_missing, updates the changed rows, and corrects
usage_hourly by subtracting the old increments and adding the new ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, delete, func, or_, select, update

from relaymeter.domain.pricing import Price, parse_multiplier
from relaymeter.pricing.catalogue import PricedEntry, Pricer
from relaymeter.store.db import Database
from relaymeter.store.events import apply_increments, dialect_insert
from relaymeter.store.increments import SLOT_MS, Increments
from relaymeter.store.schema import model_prices, settings, usage_events, usage_hourly

VERSION_KEY = "pricing.version"
SNAPSHOT_DIGEST_KEY = "pricing.snapshot_digest"

_PRICE_COLUMNS = {
    "input": "input_per_mtok_micros",
    "output": "output_per_mtok_micros",
    "cache_read": "cache_read_per_mtok_micros",
    "cache_write_5m": "cache_write_5m_per_mtok_micros",
    "cache_write_1h": "cache_write_1h_per_mtok_micros",
    "tier_threshold": "tier_threshold_tokens",
    "tier_input": "tier_input_per_mtok_micros",
    "tier_output": "tier_output_per_mtok_micros",
    "tier_cache_read": "tier_cache_read_per_mtok_micros",
    "tier_cache_write": "tier_cache_write_per_mtok_micros",
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _fmt_mult(value: Fraction) -> str:
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def price_to_row(price: Price) -> dict[str, Any]:
    row: dict[str, Any] = {col: getattr(price, attr) for attr, col in _PRICE_COLUMNS.items()}
    row["service_tiers_json"] = (
        orjson.dumps({name: _fmt_mult(m) for name, m in price.service_tiers}).decode()
        if price.service_tiers
        else None
    )
    return row


def price_from_row(row: Any) -> Price:
    m = row._mapping if hasattr(row, "_mapping") else row
    tiers: list[tuple[str, Fraction]] = []
    if m["service_tiers_json"]:
        try:
            raw = orjson.loads(m["service_tiers_json"])
            if isinstance(raw, dict):
                for name, value in raw.items():
                    tiers.append((str(name).lower(), parse_multiplier(value, f"service tier {name}")))
        except (orjson.JSONDecodeError, ValueError):
            tiers = []
    values = {attr: m[col] for attr, col in _PRICE_COLUMNS.items()}
    values["input"] = int(values["input"] or 0)
    values["output"] = int(values["output"] or 0)
    return Price(**values, service_tiers=tuple(sorted(tiers)))


def _entry_from_row(row: Any) -> PricedEntry:
    m = row._mapping
    return PricedEntry(m["model"], m["provider"], m["origin"], price_from_row(row), int(m["updated_ms"]))


async def load_entries(db: Database, origin: str | None = None) -> list[PricedEntry]:
    stmt = select(model_prices).order_by(model_prices.c.model, model_prices.c.origin)
    if origin:
        stmt = stmt.where(model_prices.c.origin == origin)
    async with db.connect() as conn:
        return [_entry_from_row(r) for r in await conn.execute(stmt)]


async def get_version(db: Database) -> str | None:
    async with db.connect() as conn:
        row = (await conn.execute(select(settings.c.value_json).where(settings.c.key == VERSION_KEY))).first()
    return str(orjson.loads(row[0])) if row else None


async def _set_setting(db: Database, conn: Any, key: str, value: Any) -> None:
    now = _now_ms()
    stmt = dialect_insert(db, settings).values(
        key=key, value_json=orjson.dumps(value).decode(), updated_ms=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"], set_={"value_json": stmt.excluded.value_json, "updated_ms": now}
    )
    await conn.execute(stmt)


async def _bump_version(db: Database, conn: Any) -> None:
    """Every price change writes a new version, so other processes know to reload."""
    await _set_setting(db, conn, VERSION_KEY, str(time.time_ns()))


async def load_pricer(db: Database) -> Pricer:
    version = await get_version(db)
    return Pricer.from_entries(await load_entries(db), version)


@dataclass(slots=True)
class ReplaceStats:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0


async def replace_origin(
    db: Database, origin: str, entries: Sequence[PricedEntry], *, digest: str | None = None
) -> ReplaceStats:
    """Make the rows of one origin ('synced' / 'snapshot') exactly ``entries``, in one transaction."""
    stats = ReplaceStats()
    now = _now_ms()
    wanted: dict[str, PricedEntry] = {}
    for e in entries:
        wanted[e.model] = e
    async with db.begin() as conn:
        existing: dict[str, tuple[int, Price, str]] = {}
        for r in await conn.execute(select(model_prices).where(model_prices.c.origin == origin)):
            existing[r._mapping["model"]] = (int(r._mapping["id"]), price_from_row(r), r._mapping["provider"])
        gone = [row_id for model, (row_id, _p, _prov) in existing.items() if model not in wanted]
        for start in range(0, len(gone), 500):
            await conn.execute(delete(model_prices).where(model_prices.c.id.in_(gone[start : start + 500])))
        stats.removed = len(gone)
        upserts: list[dict[str, Any]] = []
        for model, e in wanted.items():
            old = existing.get(model)
            if old is not None and old[1] == e.price and old[2] == e.provider:
                stats.unchanged += 1
                continue
            if old is None:
                stats.added += 1
            else:
                stats.updated += 1
            upserts.append(
                {
                    "model": model,
                    "origin": origin,
                    "provider": e.provider,
                    **price_to_row(e.price),
                    "updated_ms": now,
                }
            )
        if upserts:
            stmt = dialect_insert(db, model_prices)
            stmt = stmt.on_conflict_do_update(
                index_elements=["model", "origin"],
                set_={
                    c: stmt.excluded[c]
                    for c in ("provider", *_PRICE_COLUMNS.values(), "service_tiers_json", "updated_ms")
                },
            )
            for start in range(0, len(upserts), 500):
                await conn.execute(stmt, upserts[start : start + 500])
        if digest is not None:
            await _set_setting(db, conn, SNAPSHOT_DIGEST_KEY, digest)
        if upserts or gone:
            await _bump_version(db, conn)
    return stats


async def snapshot_digest(db: Database) -> str | None:
    async with db.connect() as conn:
        row = (
            await conn.execute(select(settings.c.value_json).where(settings.c.key == SNAPSHOT_DIGEST_KEY))
        ).first()
    return str(orjson.loads(row[0])) if row else None


async def set_override(db: Database, model: str, provider: str, price: Price) -> bool:
    """Create or replace the user's price for a model; True when it was new."""
    now = _now_ms()
    row = {
        "model": model,
        "origin": "override",
        "provider": provider,
        **price_to_row(price),
        "updated_ms": now,
    }
    async with db.begin() as conn:
        existed = (
            await conn.execute(
                select(model_prices.c.id).where(
                    model_prices.c.model == model, model_prices.c.origin == "override"
                )
            )
        ).first()
        stmt = dialect_insert(db, model_prices).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["model", "origin"],
            set_={k: v for k, v in row.items() if k not in ("model", "origin")},
        )
        await conn.execute(stmt)
        await _bump_version(db, conn)
    return existed is None


async def delete_override(db: Database, model: str) -> bool:
    async with db.begin() as conn:
        res = await conn.execute(
            delete(model_prices).where(model_prices.c.model == model, model_prices.c.origin == "override")
        )
        if not res.rowcount:
            return False
        await _bump_version(db, conn)
    return True


async def seen_models(db: Database) -> list[dict[str, Any]]:
    """Models (as served) and providers with billable tokens in the hourly rollups."""
    h = usage_hourly.c
    stmt = (
        select(
            h.model,
            h.provider,
            func.sum(h.requests),
            func.sum(h.total_tokens),
            func.sum(h.cost_micros),
            func.min(h.hour_ms),
            func.max(h.hour_ms),
        )
        .group_by(h.model, h.provider)
        .having(func.sum(h.total_tokens) > 0)
    )
    async with db.connect() as conn:
        return [
            {
                "model": r[0],
                "provider": r[1],
                "requests": int(r[2] or 0),
                "total_tokens": int(r[3] or 0),
                "cost_micros": int(r[4] or 0),
                "first_hour_ms": int(r[5]),
                "last_hour_ms": int(r[6]),
            }
            for r in await conn.execute(stmt)
        ]


# --- repricing ------------------------------------------------------------------------------

_REPRICE_COLUMNS = (
    "id",
    "ts_ms",
    "account_id",
    "api_key_id",
    "model",
    "actual_model",
    "endpoint",
    "source",
    "provider",
    "failed",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "cost_micros",
    "price_missing",
    "service_tier",
)


@dataclass(slots=True)
class RepriceStats:
    total: int = 0  # events in scope when the run started
    scanned: int = 0
    changed: int = 0
    newly_priced: int = 0
    now_missing: int = 0  # events in scope still without a price
    cost_before_micros: int = 0
    cost_after_micros: int = 0
    missing_models: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "scanned": self.scanned,
            "changed": self.changed,
            "newly_priced": self.newly_priced,
            "still_missing": self.now_missing,
            "cost_before_micros": self.cost_before_micros,
            "cost_after_micros": self.cost_after_micros,
            "cost_delta_micros": self.cost_after_micros - self.cost_before_micros,
            "missing_models": dict(sorted(self.missing_models.items(), key=lambda kv: -kv[1])[:50]),
        }


def _scope(since_ms: int | None, until_ms: int | None, models: Sequence[str]) -> list[Any]:
    e = usage_events.c
    clauses: list[Any] = []
    if since_ms is not None:
        clauses.append(e.ts_ms >= since_ms)
    if until_ms is not None:
        clauses.append(e.ts_ms < until_ms)
    if models:
        names = list(models)
        clauses.append(or_(e.actual_model.in_(names), and_(e.actual_model == "", e.model.in_(names))))
    return clauses


async def count_events(
    db: Database, since_ms: int | None = None, until_ms: int | None = None, models: Sequence[str] = ()
) -> int:
    async with db.connect() as conn:
        stmt = select(func.count()).select_from(usage_events).where(*_scope(since_ms, until_ms, models))
        return int((await conn.execute(stmt)).scalar_one())


def _sqlite_batch_query(
    since_ms: int | None, until_ms: int | None, models: Sequence[str]
) -> tuple[str, tuple[Any, ...]]:
    """The batch read for SQLite as driver SQL: (sql, params after last_id and before the limit)."""
    where = ["id > ?"]
    params: list[Any] = []
    if since_ms is not None:
        where.append("ts_ms >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("ts_ms < ?")
        params.append(until_ms)
    if models:
        marks = ", ".join("?" for _ in models)
        where.append(f"(actual_model IN ({marks}) OR (actual_model = '' AND model IN ({marks})))")
        params.extend([*models, *models])
    sql = (
        f"SELECT {', '.join(_REPRICE_COLUMNS)} FROM usage_events "
        f"WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
    )
    return sql, tuple(params)


ProgressFn = Callable[[int, int], None]


async def reprice(
    db: Database,
    pricer: Pricer,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    models: Sequence[str] = (),
    batch_size: int = 5000,
    progress: ProgressFn | None = None,
) -> RepriceStats:
    """Recompute cost_micros / price_missing of stored events and fix the rollups to match.

    Each batch is one write transaction: read the events (locked on PostgreSQL), price them,
    update the changed ones, and apply the cost difference (new increment minus old) to the
    rollup rows of their keys, so usage_hourly always equals the sum over raw events.
    """
    stats = RepriceStats(total=await count_events(db, since_ms, until_ms, models))
    if progress:
        progress(0, stats.total)
    e = usage_events.c
    cols = [e[c] for c in _REPRICE_COLUMNS]
    scope = _scope(since_ms, until_ms, models)
    sqlite_sql, sqlite_params = _sqlite_batch_query(since_ms, until_ms, models)
    cost_of = pricer.cost_of
    last_id = 0
    while True:
        async with db.begin() as conn:
            rows: Sequence[Any]
            if db.is_sqlite:  # plain tuples from the driver: the read is a third of the work
                rows = (await conn.exec_driver_sql(sqlite_sql, (last_id, *sqlite_params, batch_size))).all()
            else:
                stmt = select(*cols).where(e.id > last_id, *scope).order_by(e.id).limit(batch_size)
                rows = (await conn.execute(stmt.with_for_update())).all()
            if not rows:
                break
            last_id = int(rows[-1][0])
            deltas: dict[tuple[Any, ...], int] = {}
            updates: list[tuple[int, bool, int]] = []
            for (  # type: ignore[misc]  # Row typing: 18 plain columns
                row_id,
                ts_ms,
                account_id,
                api_key_id,
                model,
                actual_model,
                endpoint,
                source,
                provider,
                failed,
                inp,
                out,
                cache_read,
                cache_creation,
                cache_1h,
                old_cost,
                old_missing,
                tier,
            ) in rows:
                served = actual_model or model
                new_cost, new_missing = cost_of(
                    served, provider, inp, out, cache_read, cache_creation, cache_1h, tier
                )
                stats.cost_before_micros += old_cost
                stats.cost_after_micros += new_cost
                if new_missing:
                    stats.now_missing += 1
                    stats.missing_models[served] = stats.missing_models.get(served, 0) + 1
                if new_cost == old_cost and new_missing == bool(old_missing):
                    continue
                if old_missing and not new_missing:
                    stats.newly_priced += 1
                updates.append((new_cost, new_missing, row_id))
                if new_cost != old_cost:
                    key = (
                        ts_ms - ts_ms % SLOT_MS,
                        account_id,
                        api_key_id,
                        served,
                        endpoint,
                        source,
                        provider,
                        bool(failed),
                    )
                    deltas[key] = deltas.get(key, 0) + new_cost - old_cost
            if updates:
                stats.changed += len(updates)
                if db.is_sqlite:
                    await conn.exec_driver_sql(
                        "UPDATE usage_events SET cost_micros = ?, price_missing = ? WHERE id = ?", updates
                    )
                else:
                    await conn.execute(
                        update(usage_events)
                        .where(usage_events.c.id == bindparam("b_id"))
                        .values(cost_micros=bindparam("b_cost"), price_missing=bindparam("b_missing")),
                        [{"b_cost": c, "b_missing": m, "b_id": i} for c, m, i in updates],
                    )
                await apply_increments(db, conn, Increments.from_cost_deltas(deltas))
        stats.scanned += len(rows)
        if progress:
            progress(stats.scanned, max(stats.total, stats.scanned))
        if len(rows) < batch_size:
            break
    return stats
