"""per-dimension rollups per 15 minutes (usage_15m_dim), filled from the raw events that exist
(hours whose raw events retention already deleted get no rows: queries read those partial
hours from raw events, as before, and find the same nothing)

Revision ID: 0005_15m_dim
Revises: 0004_monthly_dim
Create Date: 2026-11-23 16:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_15m_dim"
down_revision = "0004_monthly_dim"
branch_labels = None
depends_on = None

DIMS = ("account_id", "api_key_id", "model", "endpoint", "provider", "source")
TOKENS = (
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "total_tokens",
)
LATENCY_BOUNDS_MS = (
    100,
    250,
    500,
    1000,
    2000,
    3000,
    5000,
    7500,
    10000,
    15000,
    20000,
    30000,
    45000,
    60000,
    120000,
    300000,
)
SUMS = (
    "requests",
    "failures",
    *TOKENS,
    "cost_micros",
    "latency_sum_ms",
    "latency_count",
    "ttft_sum_ms",
    "ttft_count",
    *[f"lat_b{i}" for i in range(len(LATENCY_BOUNDS_MS) + 1)],
)
SLOT_MS = 900_000
CHUNK_MS = 7 * 86_400_000  # events aggregated a week at a time (bounded sorts)


def _event_sums() -> list[str]:
    """SQL aggregates over usage_events in SUMS order (what the write path adds per event)."""
    out = [
        "COUNT(*)",
        "SUM(CASE WHEN failed THEN 1 ELSE 0 END)",
        *[f"SUM({t})" for t in TOKENS],
        "SUM(cost_micros)",
        "COALESCE(SUM(latency_ms), 0)",
        "COUNT(latency_ms)",
        "COALESCE(SUM(ttft_ms), 0)",
        "COUNT(ttft_ms)",
    ]
    low = None
    for high in (*LATENCY_BOUNDS_MS, None):
        cond = " AND ".join(
            c
            for c in (
                f"latency_ms > {low}" if low is not None else "",
                f"latency_ms <= {high}" if high else "",
            )
            if c
        )
        out.append(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)")
        low = high
    return out


def upgrade() -> None:
    op.create_table(
        "usage_15m_dim",
        sa.Column("slot_ms", sa.BigInteger(), nullable=False),
        sa.Column("dim", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        *[sa.Column(c, sa.BigInteger(), server_default="0", nullable=False) for c in SUMS],
        sa.UniqueConstraint("slot_ms", "dim", "value", name="uq_usage_15m_dim_slot_ms_dim_value"),
    )
    bind = op.get_bind()
    lo, hi = bind.execute(sa.text("SELECT MIN(ts_ms), MAX(ts_ms) FROM usage_events")).one()
    if lo is None:
        return
    # Full-key sums per slot into a scratch table first (one pass over the events), then one
    # row per slot and dimension value from it: seven passes over far fewer rows.
    op.execute(
        "CREATE TEMPORARY TABLE tmp_15m (slot_ms BIGINT, account_id BIGINT, api_key_id BIGINT, "
        "model VARCHAR(200), endpoint VARCHAR(200), provider VARCHAR(40), source VARCHAR(80), "
        f"{', '.join(f'{c} BIGINT' for c in SUMS)})"
    )
    served = "CASE WHEN actual_model != '' THEN actual_model ELSE model END"
    start = int(lo) - int(lo) % CHUNK_MS
    while start <= int(hi):
        end = start + CHUNK_MS
        op.execute(
            f"INSERT INTO tmp_15m SELECT ts_ms - ts_ms % {SLOT_MS}, account_id, api_key_id, {served}, "
            f"endpoint, provider, source, {', '.join(_event_sums())} FROM usage_events "
            f"WHERE ts_ms >= {start} AND ts_ms < {end} "
            f"GROUP BY ts_ms - ts_ms % {SLOT_MS}, account_id, api_key_id, {served}, endpoint, provider, source"
        )
        start = end
    sums = ", ".join(SUMS)
    totals = ", ".join(f"SUM({c})" for c in SUMS)
    for dim in ("*", *DIMS):
        value = "''" if dim == "*" else f"CAST({dim} AS VARCHAR(200))"
        group = "slot_ms" if dim == "*" else f"slot_ms, {dim}"
        op.execute(
            f"INSERT INTO usage_15m_dim (slot_ms, dim, value, {sums}) "
            f"SELECT slot_ms, '{dim}', {value}, {totals} FROM tmp_15m GROUP BY {group}"
        )
    op.execute("DROP TABLE tmp_15m")


def downgrade() -> None:
    op.drop_table("usage_15m_dim")
