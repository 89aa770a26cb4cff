"""Table definitions (SQLAlchemy Core) shared by SQLite and PostgreSQL.

Units: times are epoch milliseconds UTC (BigInteger), money is micro-USD (BigInteger),
tokens are integers. Dimension columns used in rollup keys are NOT NULL (0 or '' for
"unknown") so that unique keys and upserts behave the same on both backends.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from relaymeter.domain.latency import LATENCY_BUCKET_COUNT

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Integer primary keys: BigInteger on PostgreSQL, INTEGER (rowid alias) on SQLite.
IdType = BigInteger().with_variant(Integer(), "sqlite")

TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "total_tokens",
)


def _tokens() -> list[Column[int]]:
    return [Column(name, BigInteger, nullable=False, server_default="0") for name in TOKEN_COLUMNS]


# Upstream accounts: gateway accounts (origin 'gateway') and accounts observed through a
# CPA connection or an import (origin 'cpa:<name>' / 'import', external_id = auth_index or
# a source hash). Observed rows are created by the write path on first sight.
accounts = Table(
    "accounts",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("origin", String(80), nullable=False, server_default="gateway"),
    Column("external_id", String(128), nullable=False, server_default=""),
    Column("name", String(200), nullable=False),
    Column("provider", String(40), nullable=False, server_default=""),
    Column("kind", String(20), nullable=False, server_default="api_key"),  # api_key | oauth | observed
    Column("base_url", Text, nullable=True),
    Column("plan", String(60), nullable=True),
    Column("email", String(200), nullable=True),
    Column("credentials_enc", Text, nullable=True),  # Fernet token of a JSON object
    Column("token_expires_ms", BigInteger, nullable=True),
    Column("priority", Integer, nullable=False, server_default="50"),
    Column("weight", Integer, nullable=False, server_default="1"),
    Column("max_concurrency", Integer, nullable=False, server_default="0"),  # 0 = unlimited
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("disabled_by", String(20), nullable=True),  # 'user' | 'system' (auto checks never undo 'user')
    Column("models_json", Text, nullable=True),  # allow-list, JSON array
    Column("model_map_json", Text, nullable=True),  # requested -> actual, JSON object
    Column("daily_request_cap", BigInteger, nullable=True),
    Column("daily_token_cap", BigInteger, nullable=True),
    Column("daily_cost_cap_micros", BigInteger, nullable=True),
    Column("proxy_url", Text, nullable=True),
    Column("note", Text, nullable=True),
    Column(
        "health", String(20), nullable=False, server_default="ok"
    ),  # ok | cooldown | unhealthy | exhausted
    Column("health_reason", Text, nullable=True),
    Column("cooldown_until_ms", BigInteger, nullable=True),
    Column("last_used_ms", BigInteger, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("origin", "external_id"),
)

# Client API keys (users). Gateway keys are created here (origin 'gateway'); keys seen in
# CPA records are observed (origin 'observed', no secret ever known, only the hash).
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("origin", String(20), nullable=False, server_default="gateway"),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(40), nullable=False, server_default=""),
    Column("name", String(200), nullable=False),
    Column("remark", Text, nullable=True),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("revoked", Boolean, nullable=False, server_default="0"),
    Column("expires_ms", BigInteger, nullable=True),
    Column("models_json", Text, nullable=True),
    Column("max_concurrency", Integer, nullable=False, server_default="0"),
    Column("rpm", Integer, nullable=False, server_default="0"),
    Column("tpm", BigInteger, nullable=False, server_default="0"),
    Column("daily_limit_micros", BigInteger, nullable=True),
    Column("weekly_limit_micros", BigInteger, nullable=True),
    Column("monthly_limit_micros", BigInteger, nullable=True),
    Column("total_limit_micros", BigInteger, nullable=True),
    Column("last_used_ms", BigInteger, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

usage_events = Table(
    "usage_events",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    # event_key = first 8 bytes of event_hash as a signed int64: a small index that makes
    # dedup lookups cheap on SQLite; the write path compares full hashes (see store/events.py).
    Column("event_key", BigInteger, nullable=False),
    Column("event_hash", String(64), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("source", String(80), nullable=False, server_default=""),  # gateway | cpa:<name> | import
    Column("request_id", String(128), nullable=False, server_default=""),
    Column("account_id", BigInteger, nullable=False, server_default="0"),
    Column("account_label", String(200), nullable=False, server_default=""),
    Column("auth_index", String(64), nullable=False, server_default=""),
    Column("source_hash", String(64), nullable=False, server_default=""),
    Column("api_key_id", BigInteger, nullable=False, server_default="0"),
    Column("api_key_hash", String(64), nullable=False, server_default=""),
    Column("provider", String(40), nullable=False, server_default=""),
    Column("endpoint", String(200), nullable=False, server_default=""),
    Column("method", String(16), nullable=False, server_default=""),
    Column("path", String(200), nullable=False, server_default=""),
    Column("model", String(200), nullable=False, server_default=""),  # as requested (alias)
    Column("actual_model", String(200), nullable=False, server_default=""),  # as served (priced)
    Column("stream", Boolean, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("failed", Boolean, nullable=False, server_default="0"),
    Column("error_kind", String(60), nullable=True),
    Column("error_message", Text, nullable=True),
    *_tokens(),
    Column("latency_ms", BigInteger, nullable=True),
    Column("ttft_ms", BigInteger, nullable=True),
    Column("cost_micros", BigInteger, nullable=False, server_default="0"),
    Column("price_missing", Boolean, nullable=False, server_default="0"),
    Column("service_tier", String(40), nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("user_agent", Text, nullable=True),
    Column("raw_json", Text, nullable=True),  # redacted
    Column("ingested_ms", BigInteger, nullable=False),
    Index(None, "event_key"),
    Index(None, "ts_ms"),
    # PostgreSQL may have several writers: there the database enforces uniqueness itself.
    Index("uq_usage_events_event_hash_pg", "event_hash", unique=True).ddl_if(dialect="postgresql"),
)

latency_bucket_columns = [f"lat_b{i}" for i in range(LATENCY_BUCKET_COUNT)]


# The additive columns every rollup table carries (counts, tokens, cost, latency histogram), in
# table order: the write path's increments and the queries' sums use the same order.
ROLLUP_SCALAR_COLUMNS = (
    "requests",
    "failures",
    *TOKEN_COLUMNS,
    "cost_micros",
    "latency_sum_ms",
    "latency_count",
    "ttft_sum_ms",
    "ttft_count",
)
ROLLUP_SUM_COLUMNS = (*ROLLUP_SCALAR_COLUMNS, *latency_bucket_columns)


def _rollup_sums() -> list[Column[int]]:
    return [Column(name, BigInteger, nullable=False, server_default="0") for name in ROLLUP_SUM_COLUMNS]


def _rollup_table(name: str, time_column: str) -> Table:
    return Table(
        name,
        metadata,
        Column(time_column, BigInteger, nullable=False),
        Column("account_id", BigInteger, nullable=False),
        Column("api_key_id", BigInteger, nullable=False),
        Column("model", String(200), nullable=False),
        Column("endpoint", String(200), nullable=False),
        Column("source", String(80), nullable=False),
        Column("provider", String(40), nullable=False),
        Column("failed", Boolean, nullable=False),
        *_rollup_sums(),
        # Time leads the unique key, so range scans need no other index (fewer index writes).
        UniqueConstraint(
            time_column, "account_id", "api_key_id", "model", "endpoint", "source", "provider", "failed"
        ),
    )


# Rollups: one row per hour (UTC day) and dimension combination; ``failures`` equals
# ``requests`` on rows whose ``failed`` key is true (a column so sums stay simple).
# Summaries read usage_daily for whole UTC days, usage_hourly for whole hours at the
# edges and raw events only for the partial hours at both ends.
usage_hourly = _rollup_table("usage_hourly", "hour_ms")
usage_daily = _rollup_table("usage_daily", "day_ms")


def _dim_rollup_table(name: str, time_column: str) -> Table:
    return Table(
        name,
        metadata,
        Column(time_column, BigInteger, nullable=False),
        Column("dim", String(16), nullable=False),
        Column("value", String(200), nullable=False),
        *_rollup_sums(),
        UniqueConstraint(time_column, "dim", "value"),
    )


# Per-dimension rollups (store/increments.py): the same sums as usage_hourly / usage_daily,
# but keyed by ONE dimension at a time (dim = '*' for all, account_id, api_key_id, model,
# endpoint, provider or source; value = that dimension's value as text), successes and
# failures together. Totals and single-dimension breakdowns read these: far fewer rows.
usage_hourly_dim = _dim_rollup_table("usage_hourly_dim", "hour_ms")
# Which hours hold events of one account / key / model: lets request lists filtered by a
# rarely used value skip straight to those hours. It leads with value so the query planner
# only uses it when values are given (whole-hour reads keep the unique index).
Index(
    "ix_usage_hourly_dim_value_dim_hour_ms",
    usage_hourly_dim.c.value,
    usage_hourly_dim.c.dim,
    usage_hourly_dim.c.hour_ms,
)
usage_daily_dim = _dim_rollup_table("usage_daily_dim", "day_ms")
usage_monthly_dim = _dim_rollup_table("usage_monthly_dim", "month_ms")  # month_ms: UTC month start
# The same per 15 minutes (slot_ms: slot start). Every zone offset in use is a multiple of 15
# minutes, so local hour and day edges that fall inside a UTC hour are whole slots here.
usage_15m_dim = _dim_rollup_table("usage_15m_dim", "slot_ms")

# Change counters of the rollups: the write path adds one to the UTC hour ('h') and day ('d')
# of every rollup row it changes, in the same transaction; in-memory copies of closed units
# (store/rollup_cache.py) compare them before use.
usage_versions = Table(
    "usage_versions",
    metadata,
    Column("level", String(1), nullable=False),
    Column("unit_ms", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    PrimaryKeyConstraint("level", "unit_ms"),
)

# Price rows per model and origin: 'override' (user) > 'synced' > 'snapshot' (shipped).
model_prices = Table(
    "model_prices",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("origin", String(20), nullable=False),
    Column("provider", String(60), nullable=False, server_default=""),
    # Prices are micro-USD per 1M tokens (== USD per token * 1e12 / 1e6), integers.
    Column("input_per_mtok_micros", BigInteger, nullable=False, server_default="0"),
    Column("output_per_mtok_micros", BigInteger, nullable=False, server_default="0"),
    Column("cache_read_per_mtok_micros", BigInteger, nullable=True),
    Column("cache_write_5m_per_mtok_micros", BigInteger, nullable=True),
    Column("cache_write_1h_per_mtok_micros", BigInteger, nullable=True),
    Column("tier_threshold_tokens", BigInteger, nullable=True),
    Column("tier_input_per_mtok_micros", BigInteger, nullable=True),
    Column("tier_output_per_mtok_micros", BigInteger, nullable=True),
    Column("tier_cache_read_per_mtok_micros", BigInteger, nullable=True),
    Column("tier_cache_write_per_mtok_micros", BigInteger, nullable=True),
    Column("service_tiers_json", Text, nullable=True),  # {"priority": 2.0, "flex": 0.5}
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("model", "origin"),
)

quota_snapshots = Table(
    "quota_snapshots",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("account_id", BigInteger, nullable=False),
    Column("window", String(80), nullable=False),  # five_hour | seven_day | seven_day_opus | ...
    Column("used_percent", Float, nullable=True),
    Column("remaining", BigInteger, nullable=True),
    Column("limit_value", BigInteger, nullable=True),
    Column("resets_at_ms", BigInteger, nullable=True),
    Column("window_seconds", BigInteger, nullable=True),
    Column("limit_reached", Boolean, nullable=False, server_default="0"),
    Column("origin", String(20), nullable=False),  # oauth_usage | headers | cpa_api_call
    Column("extra_json", Text, nullable=True),
    Column("fetched_ms", BigInteger, nullable=False),
    Index(None, "account_id", "window", "fetched_ms"),
)

cpa_connections = Table(
    "cpa_connections",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("name", String(80), nullable=False, unique=True),
    Column("base_url", Text, nullable=False),
    Column("management_key_enc", Text, nullable=False),
    Column("mode", String(10), nullable=False, server_default="auto"),  # auto | http | resp
    Column("batch_size", Integer, nullable=False, server_default="500"),
    Column("poll_interval_ms", Integer, nullable=False, server_default="2000"),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Raw records popped from a CPA queue, written (and committed) before they are parsed, and
# deleted once their events are durable. Rows left here after a crash are replayed on start.
collector_spool = Table(
    "collector_spool",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("connection", String(80), nullable=False),
    Column("raw", Text, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Index(None, "connection", "id"),
)

# Named leases (one CPA consumer per instance across processes).
leases = Table(
    "leases",
    metadata,
    Column("name", String(120), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(120), primary_key=True),
    Column("value_json", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("source", String(80), nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=False),  # redacted
    Column("created_ms", BigInteger, nullable=False),
    Index(None, "created_ms"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("actor", String(120), nullable=False),
    Column("action", String(120), nullable=False),
    Column("target", String(200), nullable=False, server_default=""),
    Column("detail_json", Text, nullable=True),
    Column("client_ip", String(64), nullable=True),
    Index(None, "ts_ms"),
)

admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("client_ip", String(64), nullable=True),
)

__all__ = [
    "ROLLUP_SCALAR_COLUMNS",
    "ROLLUP_SUM_COLUMNS",
    "TOKEN_COLUMNS",
    "accounts",
    "admin_sessions",
    "api_keys",
    "audit_log",
    "collector_spool",
    "cpa_connections",
    "dead_letters",
    "latency_bucket_columns",
    "leases",
    "metadata",
    "model_prices",
    "quota_snapshots",
    "settings",
    "usage_15m_dim",
    "usage_daily",
    "usage_daily_dim",
    "usage_events",
    "usage_hourly",
    "usage_hourly_dim",
    "usage_monthly_dim",
    "usage_versions",
]

ROLLUP_KEY_COLUMNS = (
    "hour_ms",
    "account_id",
    "api_key_id",
    "model",
    "endpoint",
    "source",
    "provider",
    "failed",
)
