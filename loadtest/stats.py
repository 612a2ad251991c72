"""Percentiles and rates over time: the small arithmetic the reports need."""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Sequence

SERIES_BUCKET_SECONDS = 0.5


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100) by linear interpolation; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary_ms(seconds: Iterable[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds of durations given in seconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


def rate_series(
    times: Iterable[float], start: float, bucket: float = SERIES_BUCKET_SECONDS
) -> list[tuple[float, float]]:
    """Events per second in ``bucket``-wide slots from ``start``: (slot start, rate)."""
    counts: dict[int, int] = {}
    for t in times:
        slot = int((t - start) // bucket)
        counts[slot] = counts.get(slot, 0) + 1
    if not counts:
        return []
    first, last = min(0, min(counts)), max(counts)
    return [(k * bucket, counts.get(k, 0) / bucket) for k in range(first, last + 1)]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
