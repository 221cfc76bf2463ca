"""What the generic process pools run, and the correctness check.

The pools (multiprocessing.Pool, ProcessPoolExecutor, joblib) get the array
pickled (joblib: memmapped) into a worker.  Below SPLIT_MIN values one task
runs numpy's one-liner on the whole array.  From SPLIT_MIN on, the array is
split into one chunk per worker and detected in two rounds, as shmpool does:
every worker computes its chunk's statistics (shmpool's own chunk_stats), the
caller merges them, then every worker flags its chunk (detectors.flag).
So for large arrays the pools run the very kernel shmpool's workers run, and
the comparison is of the transport alone.
"""

from __future__ import annotations

import numpy as np

from shmpool import detectors, layout
from shmpool.layout import SPLIT_MIN

THRESHOLD = 2.0
POLICY = "raise"


def one_liner(x: np.ndarray) -> np.ndarray:
    """The reference: numpy's classic detector, in this process."""
    return np.where(np.abs(x - x.mean()) > THRESHOLD * x.std())[0]


def task_detect(x: np.ndarray) -> np.ndarray:
    return one_liner(x)


def task_stats(chunk: np.ndarray, base: int) -> tuple:
    return tuple(detectors.chunk_stats(chunk, POLICY, base))


def task_threshold(chunk: np.ndarray, mean: float, cut: float, base: int) -> np.ndarray:
    return detectors.flag(chunk, mean, cut, base)


def chunk_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """shmpool's split (docs/LAYOUT.md 5): boundaries on multiples of 8."""
    return layout.split(n, parts)


def split_detect(x: np.ndarray, parts: int, map_stats, map_threshold) -> np.ndarray:
    """Two rounds over *parts* chunks; map_* run a task over a list of argument tuples."""
    chunks = chunk_bounds(len(x), parts)
    stats = map_stats([(x[a:b], a) for a, b in chunks])
    total = detectors.Stats()
    for s in stats:
        total = detectors.merge(total, detectors.Stats(*s))
    lim = detectors.limits(total, THRESHOLD, POLICY)
    if lim is None:
        return np.empty(0, dtype=np.int64)
    parts_idx = map_threshold([(x[a:b], lim[0], lim[1], a) for a, b in chunks])
    return np.concatenate(parts_idx).astype(np.int64, copy=False)


def wants_split(n: int) -> bool:
    return n >= SPLIT_MIN


class Mismatch(AssertionError):
    pass


def check_answer(got, x: np.ndarray, ref: np.ndarray, mean: float, cut: float, scale: float) -> None:
    """Raise Mismatch unless *got* is numpy's answer *ref*, up to the rounding band.

    Equal, or differing only at values whose |x - mean| is within 1e-12
    (relative to the data's scale) of the cut-off, and at most 2 of them: the
    rule of tests/test_detect.py::assert_matches_reference.
    """
    got = np.asarray(got)
    if got.ndim != 1 or got.dtype.kind not in "iu":
        raise Mismatch(f"answer is a {got.ndim}-D {got.dtype} array, not 1-D integer indices")
    if got.size > 1 and not np.all(np.diff(got) > 0):
        raise Mismatch("indices are not ascending and unique")
    if got.size == ref.size and np.array_equal(got, ref):
        return
    diff = np.setxor1d(got, ref)
    if diff.size > 2:
        raise Mismatch(f"answer differs from numpy's at {diff.size} indices (first {diff[:5].tolist()}; "
                       f"{got.size} found, numpy {ref.size})")
    if diff.size and (diff.min() < 0 or diff.max() >= len(x)):
        raise Mismatch(f"index outside [0, {len(x)}): {diff.tolist()}")
    dist = np.abs(x[diff] - mean)
    if not np.all(np.abs(dist - cut) <= 1e-12 * scale):
        raise Mismatch(f"answer differs from numpy's at {diff.tolist()}, not at the cut-off "
                       f"(|x-mean|={dist.tolist()}, cut={cut!r})")
