"""index usage_hourly_dim by (dim, value, hour_ms): which hours hold events of one key / account

Revision ID: 0003_dim_lookup
Revises: 0002_dim_rollups
Create Date: 2026-11-23 14:40:00
"""

from alembic import op

revision = "0003_dim_lookup"
down_revision = "0002_dim_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_hourly_dim", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_hourly_dim_dim_value_hour_ms", ["dim", "value", "hour_ms"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_hourly_dim", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_hourly_dim_dim_value_hour_ms")
