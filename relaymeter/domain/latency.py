"""Fixed latency histogram buckets shared by rollups and quantile estimates."""

from __future__ import annotations

from collections.abc import Sequence

# Upper bounds (inclusive) in milliseconds; the last bucket is open-ended.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
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
LATENCY_BUCKET_COUNT = len(LATENCY_BOUNDS_MS) + 1


def bucket_index(latency_ms: int) -> int:
    """Index of the histogram bucket that holds ``latency_ms``."""
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            return i
    return LATENCY_BUCKET_COUNT - 1


def quantile(buckets: Sequence[int], q: float) -> int | None:
    """Estimate the q-quantile (0..1) from bucket counts by linear interpolation."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            low = 0 if i == 0 else LATENCY_BOUNDS_MS[i - 1]
            high = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else low * 2
            frac = (rank - seen) / count
            return int(low + (high - low) * max(0.0, min(1.0, frac)))
        seen += count
    return LATENCY_BOUNDS_MS[-1] * 2
