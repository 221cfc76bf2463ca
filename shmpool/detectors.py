"""The detectors: the classic k-sigma kernel, its split/combine, custom loading.

The classic detector flags ``i`` where ``|x[i] - mean(x)| > k * std(x)``
(population std, strict ``>``).  ``reference`` is numpy's one-liner, the
answer every test compares against.  The kernel here computes the same thing
in two read passes over 64K-element blocks that stay in cache:

    pass 1  chunk_stats      per block: sum -> block mean -> sum of squared
                             deviations; blocks merged with Chan's formula
                             (fused in C beyond one block: shmpool/_kernel.c)
    combine combine/limits   merge the chunks' (n, mean, M2) exactly once and
                             derive the cut-off k * sqrt(M2 / n)
    pass 2  flag_into        |x - mean| > cut-off -> indices, written straight
                             into the result segment (C, one read of x)

A pool splits a big array into chunks, runs pass 1 on each chunk in its own
worker, combines on the host, then runs pass 2 per chunk.  One worker running
the whole array does the same three steps.  Both pools and every worker use
these functions; there is no second copy of the arithmetic.

Up to one block (65,536 values) the arithmetic is numpy's own, operation for
operation (pass 2 in shmpool/_kernel.c does the same subtract, fabs and
compare), so the answer is bit-identical to ``reference``.  Beyond that the
blocks' statistics are merged in another order than numpy's pairwise sum, so
the two can differ only for values within a few ulps of the cut-off
(``assert_matches_reference`` in the tests bounds that band).
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Callable, NamedTuple

import numpy as np

from . import _kernel
from .errors import DetectorError, NonFiniteError

BLOCK = 1 << 16          # elements per block: 512 KiB, sits in L2
NAN_POLICIES = ("raise", "omit", "propagate")
CLASSIC = "classic"


def reference(x, threshold: float = 2.0) -> np.ndarray:
    """numpy's one-liner: the definition of the classic detector."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.abs(x - x.mean()) > threshold * x.std())[0]


class Stats(NamedTuple):
    n: int = 0                 # finite values counted
    mean: float = 0.0
    m2: float = 0.0            # sum of squared deviations from mean
    nonfinite: int = 0         # NaN and inf values seen
    first_nonfinite: int = -1  # index of the first one, relative to the chunk base


def merge(a: Stats, b: Stats, b_offset: int = 0) -> Stats:
    """Chan et al.'s pairwise update: the statistics of a followed by b."""
    first = a.first_nonfinite
    if first < 0 and b.first_nonfinite >= 0:
        first = b.first_nonfinite + b_offset
    if b.n == 0:
        return a._replace(nonfinite=a.nonfinite + b.nonfinite, first_nonfinite=first)
    if a.n == 0:
        return Stats(b.n, b.mean, b.m2, a.nonfinite + b.nonfinite, first)
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / n)
    return Stats(n, mean, m2, a.nonfinite + b.nonfinite, first)


def chunk_stats(x: np.ndarray, nan_policy: str) -> Stats:
    """Pass 1 over one chunk (a contiguous 1-D float64 array)."""
    if len(x) > BLOCK:
        fast = _kernel.chunk_stats(x)        # None when some value is NaN or inf
        if fast is not None:
            return Stats(*fast)
    acc = Stats()
    for i in range(0, len(x), BLOCK):
        b = x[i:i + BLOCK]
        s = float(b.sum())
        bad = 0
        first = -1
        if not math.isfinite(s):
            finite = np.isfinite(b)
            bad = len(b) - int(np.count_nonzero(finite))
            if bad:
                first = i + int(np.argmin(finite))
                if nan_policy != "omit":
                    acc = merge(acc, Stats(0, 0.0, 0.0, bad, first))
                    continue
                b = b[finite]
                s = float(b.sum())
        nb = len(b)
        if nb == 0:
            acc = merge(acc, Stats(0, 0.0, 0.0, bad, first))
            continue
        mb = s / nb
        d = b - mb
        np.multiply(d, d, out=d)    # numpy's own var() arithmetic: bit-equal up to one block
        acc = merge(acc, Stats(nb, mb, float(d.sum()), bad, first))
    return acc


def split(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous chunks covering [0, n), boundaries on 64-byte multiples.
    Every pool splits this way, so equal k gives equal answers."""
    bounds = [(n * i // k) // 8 * 8 for i in range(k)] + [n]
    return list(zip(bounds[:-1], bounds[1:]))


def combine(parts: list[Stats], offsets: list[int]) -> Stats:
    total = Stats()
    for s, off in zip(parts, offsets):
        total = merge(total, s, off)
    return total


def limits(total: Stats, threshold: float, nan_policy: str) -> tuple[float, float] | None:
    """(mean, cut-off) for pass 2, or None when no index can be flagged.

    Raises NonFiniteError under nan_policy "raise" for NaN/inf in the data or
    statistics that overflow float64.
    """
    if total.nonfinite:
        if nan_policy == "raise":
            raise NonFiniteError(
                f"input holds {total.nonfinite} non-finite value(s) (NaN or inf), the first at "
                f"index {total.first_nonfinite}; pass nan_policy='omit' to skip them or "
                f"'propagate' for numpy's result", "NonFiniteError")
        if nan_policy == "propagate":
            return None          # numpy: mean/std become NaN, nothing compares greater
    if total.n == 0:
        return None
    cut = threshold * math.sqrt(total.m2 / total.n)
    if not (math.isfinite(total.mean) and math.isfinite(cut)):
        if nan_policy == "raise":
            raise NonFiniteError("the mean or standard deviation overflows float64 (values of "
                                 "magnitude above ~1e154); rescale the data", "NonFiniteError")
        return None
    return total.mean, cut


def flag_into(x: np.ndarray, mean: float, cut: float, base: int, nan_policy: str,
              out: np.ndarray) -> int:
    """Pass 2 over one chunk: write base + i for each |x[i] - mean| > cut into
    *out* (int64) while it has room; return how many there are in all.

    NaN and inf are never reported: pass 2 only sees them under "omit" (the
    other policies end at ``limits``)."""
    if out.dtype != np.int64:
        raise TypeError(f"out must be int64, not {out.dtype}")
    return _kernel.chunk_threshold(x, mean, cut, base, out)


def chunk_threshold(x: np.ndarray, mean: float, cut: float, base: int, nan_policy: str) -> np.ndarray:
    """Pass 2 over one chunk, as a new ascending int64 array."""
    out = np.empty(len(x) // 8 + 16, dtype=np.int64)
    total = flag_into(x, mean, cut, base, nan_policy, out)
    if total > len(out):
        out = np.empty(total, dtype=np.int64)
        flag_into(x, mean, cut, base, nan_policy, out)
    return out[:total]


def two_phase(chunks, threshold: float, nan_policy: str, stats, flag):
    """The split detector's control flow, shared by every pool.

    ``stats(chunks)`` runs pass 1 on each chunk (in parallel, wherever the
    pool runs things) and returns their Stats; they are combined exactly once;
    ``flag(chunks, mean, cut)`` runs pass 2 on each chunk and its result is
    returned.  None means no index can be flagged (or the input is empty).
    """
    parts = stats(chunks)
    lim = limits(combine(parts, [a for a, _ in chunks]), threshold, nan_policy)
    return None if lim is None else flag(chunks, *lim)


def classic(x: np.ndarray, threshold: float = 2.0, nan_policy: str = "raise") -> np.ndarray:
    """The whole classic detector in this process (both passes)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    lim = limits(chunk_stats(x, nan_policy), threshold, nan_policy)
    if lim is None:
        return np.empty(0, dtype=np.int64)
    return chunk_threshold(x, lim[0], lim[1], 0, nan_policy)


# -- user detectors -------------------------------------------------------------

def check_spec(spec: str) -> None:
    """Reject a malformed ``"package.module:function"`` before any worker starts."""
    if spec == CLASSIC:
        return
    if not isinstance(spec, str):
        raise TypeError(f"detector must be 'classic' or 'module:function', not {type(spec).__name__}")
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn or not all(p.isidentifier() for p in mod.split(".") + fn.split(".")):
        raise ValueError(f"detector {spec!r} is not 'classic' or 'package.module:function'")


def load(spec: str) -> Callable[[np.ndarray, float], np.ndarray]:
    """Import a user detector; the result is called as ``fn(x, threshold)``.

    The user's function receives a read-only float64 view of the segment and
    returns indices; it gets ``threshold=`` only if it has such a parameter.
    """
    check_spec(spec)
    mod_name, _, attr = spec.partition(":")
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"detector {spec!r} is not callable")
    try:
        takes_threshold = "threshold" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        takes_threshold = False
    if takes_threshold:
        return lambda x, threshold: obj(x, threshold=threshold)
    return lambda x, threshold: obj(x)


def check_indices(result, n: int) -> np.ndarray:
    """A user detector's return value as int64 indices, or DetectorError."""
    try:
        idx = np.asarray(result)
    except Exception as e:  # noqa: BLE001 - anything the user returned
        raise DetectorError(f"detector returned {type(result).__name__}, not indices: {e}", "TypeError")
    if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
        raise DetectorError(f"detector returned a {idx.ndim}-D {idx.dtype} array; "
                            "1-D integer indices are required", "TypeError")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DetectorError(f"detector returned index {int(idx.min() if idx.min() < 0 else idx.max())} "
                            f"outside [0, {n})", "IndexError")
    return idx
