"""change counters of the rollups per UTC hour and day (usage_versions), bumped by the write
path; in-memory copies of closed rollup units are checked against them

Revision ID: 0006_usage_versions
Revises: 0005_15m_dim
Create Date: 2026-11-23 19:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_usage_versions"
down_revision = "0005_15m_dim"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_versions",
        sa.Column("level", sa.String(1), nullable=False),
        sa.Column("unit_ms", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("level", "unit_ms"),
    )


def downgrade() -> None:
    op.drop_table("usage_versions")
