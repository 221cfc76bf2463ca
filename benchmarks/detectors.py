"""Detectors the benchmark loads into shmpool's workers by name.

``numpy_oneliner``
    The classic detector as a plain function: numpy's one-liner, exactly what
    the cgo-embedded CPython runs in process.  Served by ``shmpool serve
    --detector benchmarks.detectors:numpy_oneliner`` for the Go row that
    compares the worker round trip with the embed running the same code.

``ZScoreSplit`` and ``zscore_whole`` (the plug-in rows, shmpool issue 12)
    A user's own split detector: ``|x - mean| > threshold * std`` computed
    from its own summary, ``(n, mean, M2, min, max)`` per chunk, merged
    (Chan et al.) in ``combine``.  The min and max are there for an early
    exit: when every value of the call lies within the cut-off, ``combine``
    returns None and no worker runs the flag pass at all.  ``zscore_whole`` is
    the same detector as a plain function (shmpool runs it whole, on one
    worker), so the two rows differ only in the split.  Finite data only: a
    NaN or inf raises ValueError in combine.  ``zscore_reference`` is numpy's
    answer for the same rule, which both are checked against.
"""

from __future__ import annotations

import math

import numpy as np

from shmpool.detectors import Params, SplitDetector

ZSCORE_THRESHOLD = 3.0


def numpy_oneliner(x, threshold=2.0):
    """np.where(np.abs(x - x.mean()) > threshold * x.std())[0]"""
    return np.where(np.abs(x - x.mean()) > threshold * x.std())[0]


class ZScoreSplit(SplitDetector):
    """|x - mean| > threshold * std from per-chunk (n, mean, M2, min, max)."""

    params = {"threshold": ZSCORE_THRESHOLD}
    summary_size = 5

    def check(self, p: Params) -> None:
        k = p.threshold
        if not (math.isfinite(k) and k >= 0):
            raise ValueError(f"threshold must be finite and >= 0, got {k!r}")

    def summarize(self, x, p):
        n = len(x)
        if n == 0:
            return (0.0, 0.0, 0.0, math.inf, -math.inf)
        mean = float(x.mean())
        d = x - mean
        return (float(n), mean, float(np.dot(d, d)), float(x.min()), float(x.max()))

    def combine(self, summaries, p):
        n, mean, m2 = 0.0, 0.0, 0.0
        lo, hi = math.inf, -math.inf
        for nb, mb, qb, a, b in np.asarray(summaries, dtype=np.float64).tolist():
            lo, hi = min(lo, a), max(hi, b)
            if nb == 0:
                continue
            if n == 0:
                n, mean, m2 = nb, mb, qb
                continue
            t = n + nb
            d = mb - mean
            mean += d * (nb / t)
            m2 += qb + d * d * (n * nb / t)
            n = t
        if n == 0:
            return None
        cut = p.threshold * math.sqrt(m2 / n)
        if not (math.isfinite(mean) and math.isfinite(cut) and math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("ZScoreSplit takes finite data only")
        if hi - mean <= cut and mean - lo <= cut:
            return None                      # nothing can be flagged: no flag pass
        return (mean, cut)

    def flag(self, x, cut, p):
        return np.flatnonzero(np.abs(x - cut[0]) > cut[1])


_WHOLE = ZScoreSplit()


def zscore_whole(x, threshold=ZSCORE_THRESHOLD):
    """ZScoreSplit as a plain function: shmpool runs it whole, on one worker."""
    return _WHOLE.detect(x, Params({"threshold": float(threshold)}))


def zscore_reference(x, threshold=ZSCORE_THRESHOLD):
    """numpy's answer for the same rule, to check both plug-in rows against."""
    return np.where(np.abs(x - x.mean()) > threshold * x.std())[0]


NUMPY_ONELINER = "benchmarks.detectors:numpy_oneliner"
ZSCORE_SPLIT = "benchmarks.detectors:ZScoreSplit"
ZSCORE_WHOLE = "benchmarks.detectors:zscore_whole"
