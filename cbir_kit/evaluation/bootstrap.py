"""Stage 6, evaluation: is one configuration really better than another? A paired bootstrap (notebook 03).

Two configurations run on the same queries give per-query values a_q (the first) and b_q (the
other), e.g. each query's AP.  The difference of their means is d = mean_q (b_q - a_q).  The
paired bootstrap draws the queries with replacement B times (the same draw for both, so each
query's pair stays together), recomputes d on each draw, and reports the central ``confidence``
share of those B values as the interval (the percentile method; scipy.stats.bootstrap does the
resampling).  When the interval contains 0 the two are *not distinguishable* on these queries:
the difference is within what the choice of queries alone would produce.

Queries whose value is NaN in either run (no relevant item: no AP) are left out.  Per query, a
win is b_q > a_q, a loss b_q < a_q and a tie |b_q - a_q| <= 1e-12.  The seed makes reruns print
the same interval.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap

from ..errors import CbirError

TIE = 1e-12


def paired_difference(first, other, confidence: float = 0.95, n_resamples: int = 10_000,
                      seed: int = 0) -> dict:
    """Mean of ``other - first`` over queries, its paired bootstrap interval and win/tie/loss counts."""
    first, other = np.asarray(first, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if first.shape != other.shape or first.ndim != 1:
        raise CbirError(f"paired values must be two 1-D arrays over the same queries; got shapes "
                        f"{first.shape} and {other.shape}")
    if not 0.0 < confidence < 1.0:
        raise CbirError(f"confidence={confidence!r} must lie strictly between 0 and 1")
    both = np.isfinite(first) & np.isfinite(other)
    d = other[both] - first[both]
    if len(d) < 2:
        raise CbirError("a paired bootstrap needs at least two queries with a value in both runs")
    if np.all(d == d[0]):   # every resample gives the same mean: the interval is that point
        low = high = float(d[0])
    else:
        ci = bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                       vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {"difference": float(d.mean()), "low": low, "high": high, "confidence": confidence,
            "n_queries": int(len(d)), "wins": int((d > TIE).sum()), "ties": int((np.abs(d) <= TIE).sum()),
            "losses": int((d < -TIE).sum()), "distinguishable": not low <= 0.0 <= high}
