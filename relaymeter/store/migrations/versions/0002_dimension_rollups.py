"""per-dimension rollups (usage_hourly_dim, usage_daily_dim), filled from usage_hourly

Revision ID: 0002_dim_rollups
Revises: 0001
Create Date: 2026-11-23 14:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_dim_rollups"
down_revision = "0001"
branch_labels = None
depends_on = None

DIMS = ("account_id", "api_key_id", "model", "endpoint", "provider", "source")
SUMS = (
    "requests",
    "failures",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "total_tokens",
    "cost_micros",
    "latency_sum_ms",
    "latency_count",
    "ttft_sum_ms",
    "ttft_count",
    *[f"lat_b{i}" for i in range(17)],
)


def _table(name: str, time_column: str) -> None:
    op.create_table(
        name,
        sa.Column(time_column, sa.BigInteger(), nullable=False),
        sa.Column("dim", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        *[sa.Column(c, sa.BigInteger(), server_default="0", nullable=False) for c in SUMS],
        sa.UniqueConstraint(time_column, "dim", "value", name=f"uq_{name}_{time_column}_dim_value"),
    )


def upgrade() -> None:
    _table("usage_hourly_dim", "hour_ms")
    _table("usage_daily_dim", "day_ms")
    sums = ", ".join(SUMS)
    totals = ", ".join(f"SUM({c})" for c in SUMS)
    for dim in ("*", *DIMS):
        value = "''" if dim == "*" else f"CAST({dim} AS VARCHAR(200))"
        group = "hour_ms" if dim == "*" else f"hour_ms, {dim}"
        op.execute(
            f"INSERT INTO usage_hourly_dim (hour_ms, dim, value, {sums}) "
            f"SELECT hour_ms, '{dim}', {value}, {totals} FROM usage_hourly GROUP BY {group}"
        )
    op.execute(
        f"INSERT INTO usage_daily_dim (day_ms, dim, value, {sums}) "
        f"SELECT hour_ms - hour_ms % 86400000, dim, value, {totals} FROM usage_hourly_dim "
        "GROUP BY hour_ms - hour_ms % 86400000, dim, value"
    )


def downgrade() -> None:
    op.drop_table("usage_daily_dim")
    op.drop_table("usage_hourly_dim")
