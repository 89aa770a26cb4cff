"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 13:17:10.141633
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("origin", sa.String(length=80), server_default="gateway", nullable=False),
        sa.Column("external_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=40), server_default="", nullable=False),
        sa.Column("kind", sa.String(length=20), server_default="api_key", nullable=False),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("plan", sa.String(length=60), nullable=True),
        sa.Column("email", sa.String(length=200), nullable=True),
        sa.Column("credentials_enc", sa.Text(), nullable=True),
        sa.Column("token_expires_ms", sa.BigInteger(), nullable=True),
        sa.Column("priority", sa.Integer(), server_default="50", nullable=False),
        sa.Column("weight", sa.Integer(), server_default="1", nullable=False),
        sa.Column("max_concurrency", sa.Integer(), server_default="0", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("disabled_by", sa.String(length=20), nullable=True),
        sa.Column("models_json", sa.Text(), nullable=True),
        sa.Column("model_map_json", sa.Text(), nullable=True),
        sa.Column("daily_request_cap", sa.BigInteger(), nullable=True),
        sa.Column("daily_token_cap", sa.BigInteger(), nullable=True),
        sa.Column("daily_cost_cap_micros", sa.BigInteger(), nullable=True),
        sa.Column("proxy_url", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("health", sa.String(length=20), server_default="ok", nullable=False),
        sa.Column("health_reason", sa.Text(), nullable=True),
        sa.Column("cooldown_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_used_ms", sa.BigInteger(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("origin", "external_id", name=op.f("uq_accounts_origin_external_id")),
    )
    op.create_table(
        "admin_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_admin_sessions")),
    )
    op.create_table(
        "api_keys",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("origin", sa.String(length=20), server_default="gateway", nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=40), server_default="", nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("remark", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("revoked", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=True),
        sa.Column("models_json", sa.Text(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rpm", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tpm", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("daily_limit_micros", sa.BigInteger(), nullable=True),
        sa.Column("weekly_limit_micros", sa.BigInteger(), nullable=True),
        sa.Column("monthly_limit_micros", sa.BigInteger(), nullable=True),
        sa.Column("total_limit_micros", sa.BigInteger(), nullable=True),
        sa.Column("last_used_ms", sa.BigInteger(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "audit_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("action", sa.String(length=120), nullable=False),
        sa.Column("target", sa.String(length=200), server_default="", nullable=False),
        sa.Column("detail_json", sa.Text(), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_ts_ms"), ["ts_ms"], unique=False)

    op.create_table(
        "collector_spool",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("connection", sa.String(length=80), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collector_spool")),
    )
    with op.batch_alter_table("collector_spool", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_collector_spool_connection_id"), ["connection", "id"], unique=False
        )

    op.create_table(
        "cpa_connections",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("management_key_enc", sa.Text(), nullable=False),
        sa.Column("mode", sa.String(length=10), server_default="auto", nullable=False),
        sa.Column("batch_size", sa.Integer(), server_default="500", nullable=False),
        sa.Column("poll_interval_ms", sa.Integer(), server_default="2000", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cpa_connections")),
        sa.UniqueConstraint("name", name=op.f("uq_cpa_connections_name")),
    )
    op.create_table(
        "dead_letters",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_letters_created_ms"), ["created_ms"], unique=False)

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "model_prices",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("provider", sa.String(length=60), server_default="", nullable=False),
        sa.Column("input_per_mtok_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_per_mtok_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_read_per_mtok_micros", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_5m_per_mtok_micros", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_1h_per_mtok_micros", sa.BigInteger(), nullable=True),
        sa.Column("tier_threshold_tokens", sa.BigInteger(), nullable=True),
        sa.Column("tier_input_per_mtok_micros", sa.BigInteger(), nullable=True),
        sa.Column("tier_output_per_mtok_micros", sa.BigInteger(), nullable=True),
        sa.Column("tier_cache_read_per_mtok_micros", sa.BigInteger(), nullable=True),
        sa.Column("tier_cache_write_per_mtok_micros", sa.BigInteger(), nullable=True),
        sa.Column("service_tiers_json", sa.Text(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_prices")),
        sa.UniqueConstraint("model", "origin", name=op.f("uq_model_prices_model_origin")),
    )
    op.create_table(
        "quota_snapshots",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("window", sa.String(length=80), nullable=False),
        sa.Column("used_percent", sa.Float(), nullable=True),
        sa.Column("remaining", sa.BigInteger(), nullable=True),
        sa.Column("limit_value", sa.BigInteger(), nullable=True),
        sa.Column("resets_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("window_seconds", sa.BigInteger(), nullable=True),
        sa.Column("limit_reached", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("extra_json", sa.Text(), nullable=True),
        sa.Column("fetched_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_snapshots")),
    )
    with op.batch_alter_table("quota_snapshots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_quota_snapshots_account_id_window_fetched_ms"),
            ["account_id", "window", "fetched_ms"],
            unique=False,
        )

    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("value_json", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day_ms", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failures", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_creation_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_creation_1h_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latency_sum_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latency_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("ttft_sum_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("ttft_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b0", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b1", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b2", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b3", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b4", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b5", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b6", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b7", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b8", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b9", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b10", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b11", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b12", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b13", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b14", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b15", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b16", sa.BigInteger(), server_default="0", nullable=False),
        sa.UniqueConstraint(
            "day_ms",
            "account_id",
            "api_key_id",
            "model",
            "endpoint",
            "source",
            "provider",
            "failed",
            name=op.f("uq_usage_daily_day_ms_account_id_api_key_id_model_endpoint_source_provider_failed"),
        ),
    )

    op.create_table(
        "usage_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("event_key", sa.BigInteger(), nullable=False),
        sa.Column("event_hash", sa.String(length=64), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=80), server_default="", nullable=False),
        sa.Column("request_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("account_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("account_label", sa.String(length=200), server_default="", nullable=False),
        sa.Column("auth_index", sa.String(length=64), server_default="", nullable=False),
        sa.Column("source_hash", sa.String(length=64), server_default="", nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("api_key_hash", sa.String(length=64), server_default="", nullable=False),
        sa.Column("provider", sa.String(length=40), server_default="", nullable=False),
        sa.Column("endpoint", sa.String(length=200), server_default="", nullable=False),
        sa.Column("method", sa.String(length=16), server_default="", nullable=False),
        sa.Column("path", sa.String(length=200), server_default="", nullable=False),
        sa.Column("model", sa.String(length=200), server_default="", nullable=False),
        sa.Column("actual_model", sa.String(length=200), server_default="", nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("failed", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("error_kind", sa.String(length=60), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_creation_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_creation_1h_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latency_ms", sa.BigInteger(), nullable=True),
        sa.Column("ttft_ms", sa.BigInteger(), nullable=True),
        sa.Column("cost_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("price_missing", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("service_tier", sa.String(length=40), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("raw_json", sa.Text(), nullable=True),
        sa.Column("ingested_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_events_event_key"), ["event_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_usage_events_ts_ms"), ["ts_ms"], unique=False)
        if op.get_bind().dialect.name == "postgresql":
            batch_op.create_index("uq_usage_events_event_hash_pg", ["event_hash"], unique=True)

    op.create_table(
        "usage_hourly",
        sa.Column("hour_ms", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failures", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_creation_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_creation_1h_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latency_sum_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latency_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("ttft_sum_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("ttft_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b0", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b1", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b2", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b3", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b4", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b5", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b6", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b7", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b8", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b9", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b10", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b11", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b12", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b13", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b14", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b15", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lat_b16", sa.BigInteger(), server_default="0", nullable=False),
        sa.UniqueConstraint(
            "hour_ms",
            "account_id",
            "api_key_id",
            "model",
            "endpoint",
            "source",
            "provider",
            "failed",
            name=op.f("uq_usage_hourly_hour_ms_account_id_api_key_id_model_endpoint_source_provider_failed"),
        ),
    )


def downgrade() -> None:
    op.drop_table("usage_hourly")
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        if op.get_bind().dialect.name == "postgresql":
            batch_op.drop_index("uq_usage_events_event_hash_pg")
        batch_op.drop_index(batch_op.f("ix_usage_events_ts_ms"))
        batch_op.drop_index(batch_op.f("ix_usage_events_event_key"))

    op.drop_table("usage_events")

    op.drop_table("usage_daily")
    op.drop_table("settings")
    with op.batch_alter_table("quota_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quota_snapshots_account_id_window_fetched_ms"))

    op.drop_table("quota_snapshots")
    op.drop_table("model_prices")
    op.drop_table("leases")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_letters_created_ms"))

    op.drop_table("dead_letters")
    op.drop_table("cpa_connections")
    with op.batch_alter_table("collector_spool", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_collector_spool_connection_id"))

    op.drop_table("collector_spool")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_ts_ms"))

    op.drop_table("audit_log")
    op.drop_table("api_keys")
    op.drop_table("admin_sessions")
    op.drop_table("accounts")
