"""per-dimension rollups per UTC month (usage_monthly_dim), filled from usage_daily_dim; the
lookup index of usage_hourly_dim leads with value (led by dim, the query planner also chose it
for whole-hour reads and scanned every hour of a dimension)

Revision ID: 0004_monthly_dim
Revises: 0003_dim_lookup
Create Date: 2026-11-23 15:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_monthly_dim"
down_revision = "0003_dim_lookup"
branch_labels = None
depends_on = None

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


def upgrade() -> None:
    # IF EXISTS: stores that ran an earlier draft of this change already have the new index.
    op.execute("DROP INDEX IF EXISTS ix_usage_hourly_dim_dim_value_hour_ms")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_usage_hourly_dim_value_dim_hour_ms ON usage_hourly_dim (value, dim, hour_ms)"
    )
    op.create_table(
        "usage_monthly_dim",
        sa.Column("month_ms", sa.BigInteger(), nullable=False),
        sa.Column("dim", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        *[sa.Column(c, sa.BigInteger(), server_default="0", nullable=False) for c in SUMS],
        sa.UniqueConstraint("month_ms", "dim", "value", name="uq_usage_monthly_dim_month_ms_dim_value"),
    )
    bind = op.get_bind()
    days = [int(r[0]) for r in bind.execute(sa.text("SELECT DISTINCT day_ms FROM usage_daily_dim"))]
    months: dict[int, list[int]] = {}
    for day in days:
        months.setdefault(month_start(day), []).append(day)
    sums = ", ".join(SUMS)
    totals = ", ".join(f"SUM({c})" for c in SUMS)
    for month, members in sorted(months.items()):
        op.execute(
            f"INSERT INTO usage_monthly_dim (month_ms, dim, value, {sums}) "
            f"SELECT {month}, dim, value, {totals} FROM usage_daily_dim "
            f"WHERE day_ms IN ({', '.join(str(d) for d in members)}) GROUP BY dim, value"
        )


def month_start(ts_ms: int) -> int:
    from datetime import UTC, datetime

    d = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp() * 1000)


def downgrade() -> None:
    op.drop_table("usage_monthly_dim")
    with op.batch_alter_table("usage_hourly_dim", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_hourly_dim_value_dim_hour_ms")
        batch_op.create_index(
            "ix_usage_hourly_dim_dim_value_hour_ms", ["dim", "value", "hour_ms"], unique=False
        )
