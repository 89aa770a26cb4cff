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


_LOWS = (0, *LATENCY_BOUNDS_MS)
_HIGHS = (*LATENCY_BOUNDS_MS, LATENCY_BOUNDS_MS[-1] * 2)


def quantile(buckets: Sequence[int], q: float) -> int | None:
    """Estimate the q-quantile (0..1) from bucket counts by linear interpolation."""
    return quantiles(buckets, (q,))[0]


def quantiles(buckets: Sequence[int], qs: Sequence[float]) -> list[int | None]:
    """quantile() for several ascending q at once, in one pass over the buckets."""
    total = sum(buckets)
    if total <= 0:
        return [None] * len(qs)
    out: list[int | None] = []
    seen = 0
    i = 0
    last = len(buckets) - 1
    for q in qs:
        rank = q * total
        while i <= last:
            count = buckets[i]
            if count and seen + count >= rank:
                break
            seen += count
            i += 1
        else:
            out.append(_HIGHS[-1])
            continue
        low = _LOWS[i]
        frac = (rank - seen) / count
        out.append(int(low + (_HIGHS[i] - low) * (0.0 if frac < 0.0 else 1.0 if frac > 1.0 else frac)))
    return out
