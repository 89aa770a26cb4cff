"""Admin API for prices: list, missing, match, set / delete overrides, sync, and background reprice."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from relaymeter.api.auth import AdminDep, client_ip
from relaymeter.api.errors import ApiError
from relaymeter.domain.pricing import PriceError, price_from_usd, price_to_usd
from relaymeter.domain.windows import RangeError
from relaymeter.pricing import sync as price_sync
from relaymeter.pricing.catalogue import ORIGINS, PricedEntry, merge_origins
from relaymeter.pricing.service import JobRunning, PricingService, parse_since, reload_pricer
from relaymeter.state import AppState, get_state
from relaymeter.store import audit
from relaymeter.store import prices as price_store

router = APIRouter(prefix="/api/prices", tags=["prices"])


def entry_dict(entry: PricedEntry, shadows: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": entry.model,
        "provider": entry.provider,
        "origin": entry.origin,
        "updated_ms": entry.updated_ms,
        **price_to_usd(entry.price),
    }
    if shadows is not None:
        out["shadows"] = shadows
    return out


@router.get("")
async def list_prices(
    request: Request,
    q: str | None = Query(None, max_length=200, description="substring of the model name"),
    origin: str | None = Query(None, description="only rows of this origin: override, synced, snapshot"),
    all_rows: bool = Query(False, alias="all", description="every row, not only the effective price"),
    limit: int = Query(200, ge=1, le=5000),
    offset: int = Query(0, ge=0),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Prices in USD per 1M tokens; by default the effective one per model (override > synced > snapshot)."""
    state = get_state(request)
    if origin is not None and origin not in ORIGINS:
        raise ApiError(422, "validation_error", f"origin: use one of {', '.join(ORIGINS)}")
    entries = await price_store.load_entries(state.db, origin)
    needle = (q or "").strip().lower()
    if needle:
        entries = [e for e in entries if needle in e.model.lower()]
    if all_rows or origin:
        items = [entry_dict(e) for e in entries]
    else:
        by_model: dict[str, list[str]] = {}
        for e in entries:
            by_model.setdefault(e.model.lower(), []).append(e.origin)
        effective = merge_origins(entries)
        items = [
            entry_dict(e, sorted((o for o in by_model[k] if o != e.origin), key=ORIGINS.index))
            for k, e in sorted(effective.items())
        ]
    return {"total": len(items), "items": items[offset : offset + limit]}


@router.get("/missing")
async def missing_prices(request: Request, _actor: str = AdminDep) -> dict[str, Any]:
    """Models seen in stored usage (with tokens) that have no price, most used first."""
    state = get_state(request)
    pricer = await price_store.load_pricer(state.db)
    items = [
        m for m in await price_store.seen_models(state.db) if pricer.price(m["model"], m["provider"]) is None
    ]
    items.sort(key=lambda m: (-m["total_tokens"], m["model"]))
    return {"total": len(items), "items": items}


@router.get("/match")
async def match_price(
    request: Request,
    model: str = Query(min_length=1, max_length=200),
    provider: str = Query("", max_length=60),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Which catalogue entry prices a model name (and how it was matched)."""
    state = get_state(request)
    pricer = await price_store.load_pricer(state.db)
    found = pricer.price(model, provider)
    if found is None:
        return {"model": model, "matched": False}
    return {
        "model": model,
        "matched": True,
        "key": found.key,
        "how": found.how,
        "price": entry_dict(found.entry),
    }


class PriceBody(BaseModel):
    """USD per 1M tokens. Cache prices left out bill at the input price (5m write) / 5m price (1h)."""

    provider: str = Field("", max_length=60)
    input: Decimal = Field(ge=0, description="USD per 1M uncached input tokens")
    output: Decimal = Field(ge=0, description="USD per 1M output tokens (reasoning included)")
    cache_read: Decimal | None = Field(None, ge=0)
    cache_write_5m: Decimal | None = Field(None, ge=0)
    cache_write_1h: Decimal | None = Field(None, ge=0)
    tier_threshold: int | None = Field(None, ge=1, description="prompt tokens above which tier prices apply")
    tier_input: Decimal | None = Field(None, ge=0)
    tier_output: Decimal | None = Field(None, ge=0)
    tier_cache_read: Decimal | None = Field(None, ge=0)
    tier_cache_write: Decimal | None = Field(None, ge=0)
    service_tiers: dict[str, Decimal] = Field(
        default_factory=dict, description='e.g. {"priority": 2, "flex": 0.5}'
    )


async def _after_change(state: AppState) -> None:
    await reload_pricer(state)


@router.put("/{model:path}")
async def set_price(model: str, body: PriceBody, request: Request, actor: str = AdminDep) -> dict[str, Any]:
    """Set the user's price for a model (an override beats synced and shipped prices)."""
    state = get_state(request)
    name = model.strip()
    if not name or len(name) > 200:
        raise ApiError(422, "validation_error", "model: 1 to 200 characters")
    try:
        price = price_from_usd(**body.model_dump(exclude={"provider"}))
    except PriceError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None
    created = await price_store.set_override(state.db, name, body.provider.strip(), price)
    await _after_change(state)
    await audit.record(
        state.db,
        "prices.set",
        actor=actor,
        target=name,
        detail=body.model_dump(mode="json"),
        client_ip=client_ip(request),
    )
    entry = PricedEntry(name, body.provider.strip(), "override", price)
    return {"created": created, "price": entry_dict(entry), "hint": "run a reprice to update stored costs"}


@router.delete("/{model:path}")
async def delete_price(model: str, request: Request, actor: str = AdminDep) -> dict[str, Any]:
    """Remove the user's override; the synced or shipped price applies again."""
    state = get_state(request)
    if not await price_store.delete_override(state.db, model.strip()):
        raise ApiError(404, "not_found", f"no price override for model {model!r}")
    await _after_change(state)
    await audit.record(state.db, "prices.delete", actor=actor, target=model, client_ip=client_ip(request))
    return {"deleted": True}


class SyncBody(BaseModel):
    url: str | None = Field(None, max_length=2000, description="default: the configured pricing_sync_url")
    catalogue: dict[str, Any] | None = Field(None, description="the LiteLLM JSON itself instead of a URL")


@router.post("/sync")
async def sync_prices(
    request: Request, body: SyncBody | None = None, actor: str = AdminDep
) -> dict[str, Any]:
    """Replace the synced prices with LiteLLM's catalogue (from a URL or the JSON in the body)."""
    state = get_state(request)
    body = body or SyncBody()
    try:
        if body.catalogue is not None:
            result = await price_sync.sync_content(state.db, orjson.dumps(body.catalogue), "request body")
        else:
            url = body.url or state.settings.pricing_sync_url
            try:
                content = await price_sync.fetch_url(url)
            except price_sync.SyncError as exc:
                raise ApiError(502, "fetch_failed", str(exc)) from None
            result = await price_sync.sync_content(state.db, content, url)
    except price_sync.SyncError as exc:
        raise ApiError(400, "invalid_catalogue", str(exc)) from None
    await _after_change(state)
    await audit.record(
        state.db,
        "prices.sync",
        actor=actor,
        target=result.source[:200],
        detail=result.to_dict(),
        client_ip=client_ip(request),
    )
    return result.to_dict()


class RepriceBody(BaseModel):
    since: str | None = Field(
        None, max_length=60, description="ISO time, epoch ms, or a duration like 7d / 12h"
    )
    until: str | None = Field(None, max_length=60)
    models: list[str] = Field(default_factory=list, max_length=500)


def _service(state: AppState) -> PricingService:
    service = state.services.get("pricing")
    if not isinstance(service, PricingService):
        raise ApiError(503, "unavailable", "the pricing service is not running")
    return service


@router.post("/reprice", status_code=202)
async def start_reprice(
    request: Request, body: RepriceBody | None = None, actor: str = AdminDep
) -> dict[str, Any]:
    """Recompute stored costs and rollups with the current prices, in the background."""
    state = get_state(request)
    body = body or RepriceBody()
    try:
        since_ms = parse_since(body.since, state.settings.timezone) if body.since else None
        until_ms = parse_since(body.until, state.settings.timezone) if body.until else None
    except RangeError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ApiError(422, "validation_error", "until: must be after since")
    try:
        job = _service(state).start_reprice(since_ms=since_ms, until_ms=until_ms, models=body.models)
    except JobRunning as exc:
        raise ApiError(409, "reprice_running", str(exc), job=exc.job.to_dict()) from None
    await audit.record(
        state.db,
        "prices.reprice",
        actor=actor,
        detail=body.model_dump(mode="json"),
        client_ip=client_ip(request),
    )
    return job.to_dict()


@router.get("/reprice")
async def reprice_status(request: Request, _actor: str = AdminDep) -> dict[str, Any]:
    """The running or last reprice job ({"state": "idle"} when none ran since start)."""
    job = _service(get_state(request)).job
    return job.to_dict() if job else {"state": "idle"}
