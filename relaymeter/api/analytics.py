"""Analytics JSON API: summary, time series, requests, key usage, account load, overview, health.

Every route (except /api/health) needs an admin session or bearer token. Time ranges are
``range=today|1h|5h|24h|7d|30d|custom`` (+ ``start``/``end`` for custom) in ``tz`` (default:
the configured zone); filters may repeat or be comma-separated (``model=a,b``).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from relaymeter import __version__, analytics
from relaymeter.api.auth import AdminDep
from relaymeter.api.errors import ApiError
from relaymeter.api.jsonresponse import FastJSONResponse
from relaymeter.domain.buckets import BUCKETS, default_bucket
from relaymeter.domain.windows import RANGE_NAMES, RangeError, TimeRange, parse_time_ms, resolve_range, zone
from relaymeter.state import AppState, get_state
from relaymeter.store.queries import Filters

router = APIRouter(prefix="/api", tags=["analytics"])

RangeName = Literal["today", "1h", "5h", "24h", "7d", "30d", "custom"]
GroupName = Literal["model", "account", "api_key", "endpoint", "provider", "source"]
assert set(RangeName.__args__) == set(RANGE_NAMES)  # type: ignore[attr-defined]


# --- response models --------------------------------------------------------------------------


class RangeOut(BaseModel):
    name: str = Field(description="today, 1h, 5h, 24h, 7d, 30d or custom")
    tz: str = Field(description="IANA zone the range and labels are computed in")
    start_ms: int = Field(description="inclusive start, epoch ms UTC")
    end_ms: int = Field(description="exclusive end, epoch ms UTC")
    start: str = Field(description="start as ISO 8601 in tz")
    end: str = Field(description="end as ISO 8601 in tz")


class FiltersOut(BaseModel):
    account: list[int]
    api_key: list[int]
    model: list[str]
    provider: list[str]
    endpoint: list[str]
    source: list[str]
    status: str | None


class MetricsOut(BaseModel):
    requests: int
    failures: int
    successes: int
    success_rate: float | None = Field(description="successes / requests; null without requests")
    input_tokens: int = Field(description="uncached input tokens")
    output_tokens: int = Field(description="output tokens, reasoning included")
    reasoning_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    total_tokens: int
    cost_micros: int = Field(description="cost in micro-USD")
    cost_usd: float
    avg_latency_ms: float | None
    p50_latency_ms: int | None = Field(description="estimated from the latency histogram")
    p95_latency_ms: int | None = Field(description="estimated from the latency histogram")
    avg_ttft_ms: float | None = Field(description="average time to first token")


class AccountBreakdown(MetricsOut):
    account_id: int
    name: str
    provider: str


class KeyBreakdown(MetricsOut):
    api_key_id: int
    name: str
    prefix: str


class ModelBreakdown(MetricsOut):
    model: str = Field(description="served (priced) model")


class EndpointBreakdown(MetricsOut):
    endpoint: str


class SummaryOut(BaseModel):
    range: RangeOut
    filters: FiltersOut
    totals: MetricsOut
    by_account: list[AccountBreakdown]
    by_api_key: list[KeyBreakdown]
    by_model: list[ModelBreakdown]
    by_endpoint: list[EndpointBreakdown]


class BucketOut(BaseModel):
    start_ms: int = Field(description="bucket start aligned in tz (the data is clipped to the range)")
    end_ms: int
    label: str = Field(description="bucket start as ISO 8601 in tz")


Number = int | float | None


class SeriesOut(BaseModel):
    key: int | str | None = Field(description="group value (id for account/api_key); null without group_by")
    name: str
    values: dict[str, list[Number]] = Field(description="metric -> one value per bucket")
    totals: dict[str, Number] = Field(description="metric -> value over the whole range")


class TimeseriesOut(BaseModel):
    range: RangeOut
    filters: FiltersOut
    bucket: str
    group_by: str | None
    metrics: list[str]
    buckets: list[BucketOut]
    series: list[SeriesOut]


class RequestItem(BaseModel):
    id: int
    ts_ms: int
    time: str = Field(description="ISO 8601 in the configured zone")
    source: str = Field(description="gateway, cpa:<name> or import")
    request_id: str
    account_id: int
    account_name: str | None
    account_label: str
    auth_index: str
    api_key_id: int
    api_key_name: str | None
    api_key_prefix: str | None
    provider: str
    endpoint: str
    method: str
    path: str
    model: str = Field(description="model as requested")
    actual_model: str = Field(description="model that served the request")
    served_model: str
    stream: bool | None
    status_code: int | None
    failed: bool
    error_kind: str | None
    error_message: str | None = Field(description="failure reason (redacted; truncated in lists)")
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cache_creation_1h_tokens: int
    total_tokens: int
    latency_ms: int | None
    ttft_ms: int | None
    cost_micros: int
    cost_usd: float
    price_missing: bool
    service_tier: str | None
    client_ip: str | None
    user_agent: str | None


class RequestsPage(BaseModel):
    range: RangeOut | None
    filters: FiltersOut
    limit: int
    items: list[RequestItem]
    next_cursor: str | None = Field(description="pass as cursor= for the next (older) page; null at the end")


class RequestDetail(RequestItem):
    event_hash: str
    ingested_ms: int
    raw: Any = Field(description="the stored raw record, redacted; null when raw payloads are not kept")


class PeriodUsage(BaseModel):
    start_ms: int
    resets_ms: int | None
    requests: int
    failures: int
    successes: int
    success_rate: float | None
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_micros: int
    cost_usd: float
    limit_micros: int | None
    limit_usd: float | None
    remaining_micros: int | None
    used_ratio: float | None = Field(description="cost / limit; null without a limit")
    over_limit: bool


class TotalSpend(BaseModel):
    cost_micros: int | None = Field(
        description="spend since the first event (only for keys with a total limit)"
    )
    limit_micros: int | None
    remaining_micros: int | None
    used_ratio: float | None


class KeyUsageItem(BaseModel):
    api_key_id: int
    name: str
    prefix: str
    origin: str
    enabled: bool
    revoked: bool
    expires_ms: int | None
    last_used_ms: int | None
    rpm: int
    tpm: int
    max_concurrency: int
    concurrency_in_use: int | None = Field(description="live value from the gateway; null when unknown")
    rpm_used: float | None = Field(
        description="requests in the last minute (gateway, live); null when unknown"
    )
    tpm_used: float | None = Field(description="tokens in the last minute (gateway, live); null when unknown")
    today: PeriodUsage
    week: PeriodUsage
    month: PeriodUsage
    total: TotalSpend


class KeysUsageOut(BaseModel):
    generated_ms: int
    tz: str
    week_start: str
    items: list[KeyUsageItem]


class CapUsage(BaseModel):
    used: int
    cap: int | None
    remaining: int | None
    ratio: float | None


class AccountCaps(BaseModel):
    requests: CapUsage
    tokens: CapUsage
    cost_micros: CapUsage


class AccountToday(BaseModel):
    requests: int
    failures: int
    success_rate: float | None
    total_tokens: int
    cost_micros: int
    cost_usd: float
    avg_latency_ms: float | None


class Concurrency(BaseModel):
    current: int | None = Field(description="requests in flight now (gateway); null when unknown")
    max: int | None


class AccountLoadItem(BaseModel):
    account_id: int
    name: str
    origin: str
    provider: str
    kind: str
    plan: str | None
    enabled: bool
    priority: int | None
    weight: int | None
    health: str
    health_reason: str | None
    cooldown_until_ms: int | None
    last_used_ms: int | None
    today: AccountToday
    caps: AccountCaps
    load_rate: float | None = Field(
        description="highest of the cap ratios and concurrency use; null when none apply"
    )
    overloaded: bool = Field(description="load_rate > 0.8")
    idle: bool = Field(description="load_rate < 0.2, or no request today when load_rate is null")
    share_of_requests: float | None = Field(description="this account's part of today's requests")
    concurrency: Concurrency
    available: bool | None = Field(
        description="the gateway can pick this account now; null without a gateway"
    )
    unavailable_reason: str | None = Field(description="why the gateway cannot pick it (cooldown, cap, ...)")


class LoadTotals(BaseModel):
    accounts: int
    enabled: int
    healthy: int
    overloaded: int
    idle: int


class AccountsLoadOut(BaseModel):
    generated_ms: int
    tz: str
    day_start_ms: int
    totals: LoadTotals
    items: list[AccountLoadItem]


class Kpis(BaseModel):
    accounts_total: int
    accounts_enabled: int
    accounts_healthy: int
    accounts_overloaded: int
    requests_today: int
    failures_today: int
    success_rate_today: float | None
    tokens_today: int
    input_tokens_today: int
    output_tokens_today: int
    cost_today_micros: int
    cost_today_usd: float
    active_api_keys_today: int
    avg_latency_ms_today: float | None
    p95_latency_ms_today: int | None


class CompactMetrics(BaseModel):
    requests: int
    failures: int
    success_rate: float | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    total_tokens: int
    cost_micros: int
    cost_usd: float


class DayPoint(CompactMetrics):
    date: str = Field(description="YYYY-MM-DD in tz")
    start_ms: int


class HourPoint(CompactMetrics):
    hour: str = Field(description="HH:MM in tz")
    start_ms: int


class ModelShare(BaseModel):
    model: str
    total_tokens: int
    requests: int
    cost_micros: int
    cost_usd: float
    share: float | None


class TopKey(CompactMetrics):
    api_key_id: int
    name: str
    prefix: str


class AccountBrief(BaseModel):
    account_id: int
    name: str
    provider: str
    health: str
    enabled: bool
    load_rate: float | None
    overloaded: bool
    idle: bool
    requests_today: int


class OverviewOut(BaseModel):
    generated_ms: int
    tz: str
    today: RangeOut
    kpis: Kpis
    trend_7d: list[DayPoint] = Field(description="the last 7 calendar days, oldest first, today included")
    hourly_today: list[HourPoint]
    tokens_by_model: list[ModelShare]
    top_keys: list[TopKey] = Field(description="today's top API keys by cost")
    accounts: list[AccountBrief]
    recent_requests: list[RequestItem]


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    uptime_s: int
    database: bool
    writer: bool
    writer_queue: int
    services: list[str]


# --- parameters ------------------------------------------------------------------------------------


def bad_param(field: str, message: str) -> ApiError:
    return ApiError(
        422, "validation_error", f"{field}: {message}", fields=[{"field": field, "message": message}]
    )


def state_tz(state: AppState, tz: str | None) -> str:
    """The zone name to use: the query's tz, else the configured one (validated)."""
    name = tz or state.settings.timezone
    try:
        zone(name)
    except RangeError as exc:
        raise bad_param("tz", str(exc)) from None
    return name


def _resolve(state: AppState, name: str, start: str | None, end: str | None, tz: str | None) -> TimeRange:
    tz_name = state_tz(state, tz)
    tzi = zone(tz_name)
    for field, value in (("start", start), ("end", end)):
        if value is not None:
            try:
                parse_time_ms(value, tzi)
            except RangeError as exc:
                raise bad_param(field, str(exc)) from None
    if name == "custom" and not start:
        raise bad_param("start", "a custom range needs start (ISO 8601 or epoch ms), and optionally end")
    if name != "custom" and (start or end):
        name = "custom"
    try:
        return resolve_range(name, tz=tz_name, start=start, end=end)
    except RangeError as exc:
        raise bad_param("end" if "after start" in str(exc) else "range", str(exc)) from None


_RANGE_DOC = "today, 1h, 5h, 24h, 7d, 30d or custom (custom needs start; start/end imply custom)"
_TIME_DOC = "ISO 8601 date or date-time (in tz when it has no offset) or epoch milliseconds"


def range_dep(
    request: Request,
    range_: RangeName = Query("today", alias="range", description=_RANGE_DOC),
    start: str | None = Query(None, max_length=64, description=_TIME_DOC),
    end: str | None = Query(None, max_length=64, description=_TIME_DOC),
    tz: str | None = Query(None, max_length=64, description="IANA time zone (default: the configured one)"),
) -> TimeRange:
    return _resolve(get_state(request), range_, start, end, tz)


def optional_range_dep(
    request: Request,
    range_: RangeName | None = Query(
        None, alias="range", description=_RANGE_DOC + "; default: no time bound"
    ),
    start: str | None = Query(None, max_length=64, description=_TIME_DOC),
    end: str | None = Query(None, max_length=64, description=_TIME_DOC),
    tz: str | None = Query(None, max_length=64, description="IANA time zone (default: the configured one)"),
) -> TimeRange | None:
    state = get_state(request)
    if range_ is None and not start and not end:
        state_tz(state, tz)
        return None
    if range_ is None and end and not start:
        # Only an upper bound: everything before end.
        tz_name = state_tz(state, tz)
        try:
            end_ms = parse_time_ms(end, zone(tz_name))
        except RangeError as exc:
            raise bad_param("end", str(exc)) from None
        return TimeRange("custom", 0, end_ms, tz_name)
    return _resolve(state, range_ or "custom", start, end, tz)


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def _ids(field: str, values: list[str] | None) -> tuple[int, ...]:
    out = []
    for v in _split(values):
        if not v.isdigit() or len(v) > 18:
            raise bad_param(field, f"{v[:40]!r} is not an id (use the numeric id, e.g. {field}=3)")
        out.append(int(v))
    return tuple(out)


_MULTI = "repeat the parameter or separate values with commas"


def filters_dep(
    account: list[str] | None = Query(None, description=f"account ids; {_MULTI}"),
    api_key: list[str] | None = Query(None, description=f"API key ids; {_MULTI}"),
    model: list[str] | None = Query(None, description=f"served model names; {_MULTI}"),
    provider: list[str] | None = Query(None, description=f"providers (claude, codex, ...); {_MULTI}"),
    endpoint: list[str] | None = Query(None, description=f"endpoints such as 'POST /v1/messages'; {_MULTI}"),
    source: list[str] | None = Query(None, description=f"gateway, cpa:<name> or import; {_MULTI}"),
    status: Literal["success", "failed"] | None = Query(
        None, description="only successful or failed requests"
    ),
) -> Filters:
    return Filters(
        account_ids=_ids("account", account),
        api_key_ids=_ids("api_key", api_key),
        models=tuple(_split(model)),
        providers=tuple(_split(provider)),
        endpoints=tuple(_split(endpoint)),
        sources=tuple(_split(source)),
        status=status,
    )


# --- routes ----------------------------------------------------------------------------------------


@router.get("/health", response_model=HealthOut, tags=["health"])
async def api_health(request: Request) -> dict[str, Any]:
    """Public health for simple dashboards: database, writer and running services."""
    state = get_state(request)
    db_ok = await state.db.ping()
    writer_ok = state.writer.alive
    return {
        "status": "ok" if db_ok and writer_ok else "degraded",
        "version": __version__,
        "uptime_s": max(0, (time.time_ns() // 1_000_000 - state.started_ms) // 1000),
        "database": db_ok,
        "writer": writer_ok,
        "writer_queue": state.writer.depth,
        "services": sorted(state.services),
    }


@router.get("/summary", response_model=None, responses={200: {"model": SummaryOut}})
async def get_summary(
    request: Request,
    rng: TimeRange = Depends(range_dep),
    filters: Filters = Depends(filters_dep),
    top: int | None = Query(None, ge=1, le=1000, description="rows per breakdown (default: all)"),
    _actor: str = AdminDep,
) -> FastJSONResponse:
    """Totals and breakdowns by account, API key, model and endpoint for a range."""
    return FastJSONResponse(await analytics.summary(get_state(request).db, rng, filters, top=top))


@router.get("/timeseries", response_model=None, responses={200: {"model": TimeseriesOut}})
async def get_timeseries(
    request: Request,
    rng: TimeRange = Depends(range_dep),
    filters: Filters = Depends(filters_dep),
    bucket: Literal["5m", "hour", "day"] | None = Query(
        None, description="bucket size (default: 5m up to 2 h, hour up to 3 days, else day)"
    ),
    metric: list[str] | None = Query(
        None,
        description="metrics to return (default requests,total_tokens,cost_usd): "
        + ", ".join(analytics.METRIC_NAMES)
        + "; aliases tokens, cost, latency, errors, input, output",
    ),
    group_by: GroupName | None = Query(None, description="one series per value of this dimension"),
    top: int = Query(10, ge=1, le=50, description="series kept with group_by; the rest is summed as 'other'"),
    _actor: str = AdminDep,
) -> FastJSONResponse:
    """Per-bucket values for trend charts, optionally one series per model / account / key / ..."""
    names: list[str] = []
    for raw in _split(metric) or ["requests", "total_tokens", "cost_usd"]:
        name = analytics.METRIC_ALIASES.get(raw, raw)
        if name not in analytics.METRIC_NAMES:
            raise bad_param(
                "metric", f"unknown metric {raw[:40]!r}; use one of {', '.join(analytics.METRIC_NAMES)}"
            )
        if name not in names:
            names.append(name)
    chosen = bucket or default_bucket(rng.start_ms, rng.end_ms)
    assert chosen in BUCKETS
    try:
        data = await analytics.timeseries(
            get_state(request).db, rng, filters, bucket=chosen, metrics=names, group_by=group_by, top=top
        )
    except RangeError as exc:
        raise bad_param("bucket", str(exc)) from None
    return FastJSONResponse(data)


@router.get("/requests", response_model=RequestsPage)
async def list_requests(
    request: Request,
    rng: TimeRange | None = Depends(optional_range_dep),
    filters: Filters = Depends(filters_dep),
    limit: int = Query(50, ge=1, le=500, description="rows per page"),
    cursor: str | None = Query(None, max_length=100, description="next_cursor of the previous page"),
    request_id: str | None = Query(None, max_length=128, description="only events with this request id"),
    tz: str | None = Query(None, max_length=64, description="IANA zone of the time fields"),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """Recent requests, newest first, with failure reasons; keyset pagination via cursor."""
    state = get_state(request)
    tzi = zone(state_tz(state, tz))
    try:
        return await analytics.recent_requests(
            state.db, rng=rng, filters=filters, limit=limit, cursor=cursor, request_id=request_id, tz=tzi
        )
    except analytics.CursorError as exc:
        raise bad_param("cursor", str(exc)) from None


@router.get("/requests/{event_id}", response_model=RequestDetail)
async def get_request(
    request: Request,
    event_id: int = Path(ge=1, le=2**62, description="the id of a request (items[].id)"),
    tz: str | None = Query(None, max_length=64, description="IANA zone of the time fields"),
    _actor: str = AdminDep,
) -> dict[str, Any]:
    """One request in full, with its redacted raw record."""
    state = get_state(request)
    item = await analytics.request_detail(state.db, event_id, zone(state_tz(state, tz)))
    if item is None:
        raise ApiError(
            404, "not_found", f"no request with id {event_id} (it may have been removed by retention)"
        )
    return item


@router.get("/keys/usage", response_model=None, responses={200: {"model": KeysUsageOut}})
async def keys_usage(
    request: Request,
    origin: Literal["gateway", "observed"] | None = Query(None, description="only gateway or observed keys"),
    tz: str | None = Query(None, max_length=64, description="IANA zone of the calendar periods"),
    _actor: str = AdminDep,
) -> FastJSONResponse:
    """Per API key: today / this week / this month spend against its limits, requests, tokens."""
    state = get_state(request)
    tz_name = state_tz(state, tz)
    return FastJSONResponse(
        await analytics.keys_usage(
            state.db,
            tz=zone(tz_name),
            tz_name=tz_name,
            week_start=state.settings.week_start,
            origin=origin,
            services=state.services,
        )
    )


@router.get("/accounts/load", response_model=None, responses={200: {"model": AccountsLoadOut}})
async def accounts_load(
    request: Request,
    origin: str | None = Query(
        None, max_length=80, description="only accounts of this origin (gateway, cpa:<name>)"
    ),
    tz: str | None = Query(None, max_length=64, description="IANA zone of 'today'"),
    _actor: str = AdminDep,
) -> FastJSONResponse:
    """Per account: today's use against its daily caps, load rate, flags, concurrency, health."""
    state = get_state(request)
    tz_name = state_tz(state, tz)
    return FastJSONResponse(
        await analytics.accounts_load(
            state.db, tz=zone(tz_name), tz_name=tz_name, origin=origin, services=state.services
        )
    )


@router.get("/overview", response_model=None, responses={200: {"model": OverviewOut}})
async def get_overview(
    request: Request,
    tz: str | None = Query(None, max_length=64, description="IANA zone of 'today' and the trend"),
    top: int = Query(5, ge=1, le=50, description="top API keys listed"),
    recent: int = Query(10, ge=0, le=100, description="recent requests listed"),
    _actor: str = AdminDep,
) -> FastJSONResponse:
    """Everything the console's overview page shows, in one call."""
    state = get_state(request)
    tz_name = state_tz(state, tz)
    return FastJSONResponse(
        await analytics.overview(
            state.db, tz=zone(tz_name), tz_name=tz_name, services=state.services, top=top, recent=recent
        )
    )
