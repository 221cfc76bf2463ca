"""Detectors: the split-detector interface, the classic k-sigma detector, loading by name.

A *split* detector runs over any number of chunks of one array in three steps,
which is how every pool and every host spreads a large array over workers::

    chunk 0 ──summarize──> summary 0 ─┐
    chunk 1 ──summarize──> summary 1 ─┼──combine (once)──> flag parameters
    ...                               ┘                          │
    chunk i ──flag(flag parameters)──> indices of chunk i + its start
    answer = the chunks' indices, concatenated in order

A summary and the flag parameters are a few float64 values, so they cross a
socket in one small packet (docs/LAYOUT.md 2.5).  One worker running a whole
array does the same three steps on one chunk (``SplitDetector.detect``).

``Classic`` is the built-in instance: ``|x[i] - mean| > k * std`` (population
std, strict ``>``).  ``reference`` is numpy's one-liner, its definition.  Its
summary is (n, mean, M2, non-finite count, first non-finite index):

    summarize  up to 65,536 values: numpy's own arithmetic (pairwise sums), so
               the answer is bit-identical to ``reference``; beyond, blocks of
               65,536 summed relative to the first block's mean (the error
               follows the data's spread, not its magnitude), merged exactly
               like chunks are
    combine    Chan et al.'s merge in chunk order, then the cut-off k*sqrt(M2/n)
    flag       |x - mean| > cut-off, NaN and inf never counted

shmpool/_native.c runs the same arithmetic in C (same operations in the same
order, so the same bits); the numpy code here is the fallback and the
reference for it.  A plain ``package.module:function`` detector runs whole on
one worker (``FunctionDetector``).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import layout as L
from ._backend.native import native
from .errors import DetectorError, NonFiniteError

BLOCK = 1 << 16          # values summed as one block: 512 KiB, sits in L2
NAN_POLICIES = ("raise", "omit", "propagate")
CLASSIC = "classic"
TUKEY = "tukey"


def reference(x, threshold: float = 2.0) -> np.ndarray:
    """numpy's one-liner: the definition of the classic detector."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.empty(0, dtype=np.int64)
    return np.where(np.abs(x - x.mean()) > threshold * x.std())[0]


class Params:
    """One call's parameters: ``p.threshold`` (any of the detector's names),
    ``p.nan_policy`` ("raise", "omit", "propagate") and ``p.base`` (where the
    chunk starts within the call; 0 for a whole call)."""

    __slots__ = ("_values", "nan_policy", "base")
    _values: dict[str, float]
    nan_policy: str
    base: int

    def __init__(self, values: Mapping[str, float], nan_policy: str = "raise", base: int = 0):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "nan_policy", nan_policy)
        object.__setattr__(self, "base", base)

    def __getattr__(self, name: str) -> float:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}; this call has {sorted(self._values)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Params are read-only")

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def as_dict(self) -> dict[str, float]:
        return dict(self._values)

    def _replace(self, **kw) -> Params:
        return Params(kw.get("values", self._values), kw.get("nan_policy", self.nan_policy),
                      kw.get("base", self.base))

    def __repr__(self):
        return f"Params({self._values}, nan_policy={self.nan_policy!r}, base={self.base})"


class SplitDetector:
    """Subclass this to write a detector that every pool and host can split.

    Set ``params`` (the per-call float parameters and their defaults, in the
    order hosts send them; at most 8) and ``summary_size`` (float64 values in
    one chunk's summary; at most 64), and implement:

    * ``summarize(x, p)``: a chunk's summary, ``summary_size`` floats.  *x* is
      a read-only float64 view of the chunk.
    * ``combine(summaries, p)``: *summaries* is a (chunks, summary_size)
      array in chunk order; return the flag parameters (at most 8 floats),
      or None when nothing can be flagged.  Runs once per call.
    * ``flag(x, cut, p)``: the indices of the chunk to report, relative to
      *x*, given *cut* (the flag parameters as a float64 array).

    Optionally ``check(p)`` raises ValueError for bad parameter values.  The
    answer for a whole array, ``detect(x, p)``, is the three on one chunk.
    Any exception reaches the caller as DetectorError with its traceback.
    """

    params: Mapping[str, float] = {}
    summary_size: int = 0

    def check(self, p: Params) -> None:
        """Raise ValueError when a parameter value is unusable."""

    def summarize(self, x: np.ndarray, p: Params) -> Sequence[float]:
        raise NotImplementedError

    def combine(self, summaries: np.ndarray, p: Params) -> Sequence[float] | None:
        raise NotImplementedError

    def flag(self, x: np.ndarray, cut: np.ndarray, p: Params) -> Any:
        raise NotImplementedError

    def detect(self, x: np.ndarray, p: Params) -> np.ndarray:
        cut = self.combine(np.asarray([self.summarize(x, p)], dtype=np.float64), p)
        if cut is None:
            return np.empty(0, dtype=np.int64)
        return check_indices(self.flag(x, np.asarray(cut, dtype=np.float64), p), len(x))


# -- the classic detector ---------------------------------------------------------

class Stats(NamedTuple):
    n: int = 0                 # finite values counted
    mean: float = 0.0
    m2: float = 0.0            # sum of squared deviations from mean
    nonfinite: int = 0         # NaN and inf values seen
    first_nonfinite: int = -1  # index of the first one (+ base), -1 if none


def merge(a: Stats, b: Stats) -> Stats:
    """Chan et al.'s pairwise update: the statistics of a followed by b
    (docs/LAYOUT.md 4.1, the same in every language)."""
    first = a.first_nonfinite if a.first_nonfinite >= 0 else b.first_nonfinite
    bad = a.nonfinite + b.nonfinite
    if b.n == 0:
        return Stats(a.n, a.mean, a.m2, bad, first)
    if a.n == 0:
        return Stats(b.n, b.mean, b.m2, bad, first)
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / n)
    return Stats(n, mean, m2, bad, first)


def _sum(x: np.ndarray) -> float:
    return float(np.add.reduce(x))        # 0.0 + numpy's pairwise sum


def _finite_stats(x: np.ndarray) -> Stats | None:
    """Stats of a chunk without NaN/inf, or None if it has some (or a sum
    overflows).  Mirrors _native.chunk_stats operation for operation."""
    n = len(x)
    if n <= BLOCK:
        s = _sum(x)
        if not math.isfinite(s):
            return None
        mean = s / n
        d = x - mean
        np.multiply(d, d, out=d)
        return Stats(n, mean, _sum(d))
    shift = _sum(x[:BLOCK]) / BLOCK
    if not math.isfinite(shift):
        return None
    acc = Stats()
    for i in range(0, n, BLOCK):
        d = x[i:i + BLOCK] - shift
        s = _sum(d)
        if not math.isfinite(s):
            return None
        mb = s / len(d)
        d -= mb
        np.multiply(d, d, out=d)
        acc = merge(acc, Stats(len(d), mb, _sum(d)))
    return Stats(acc.n, shift + acc.mean, acc.m2)


def chunk_stats(x: np.ndarray, nan_policy: str, base: int = 0) -> Stats:
    """The classic summary of one chunk (a contiguous float64 array)."""
    n = len(x)
    if n == 0:
        return Stats()
    fast = native.chunk_stats(x) if native is not None else _finite_stats(x)
    if fast is not None:
        return Stats(*fast)
    finite = np.isfinite(x)
    good = int(np.count_nonzero(finite))
    bad = n - good
    if bad == 0:                      # finite values whose sums overflow
        return _overflowing_stats(x)
    first = base + int(np.argmin(finite))
    if nan_policy != "omit":
        return Stats(0, 0.0, 0.0, bad, first)
    kept = _finite_stats(x[finite]) if good else Stats()
    if kept is None:
        kept = _overflowing_stats(x[finite])
    return Stats(kept.n, kept.mean, kept.m2, bad, first)


def _overflowing_stats(x: np.ndarray) -> Stats:
    """Finite values whose statistics overflow float64: numpy's inf/NaN, for
    combine to turn into NonFiniteError (raise) or an empty answer."""
    with np.errstate(all="ignore"):
        mean = _sum(x) / len(x)
        d = x - mean
        return Stats(len(x), mean, _sum(d * d))


def limits(total: Stats, threshold: float, nan_policy: str) -> tuple[float, float] | None:
    """(mean, cut-off) for the flag pass, or None when no index can be flagged."""
    if total.nonfinite:
        if nan_policy == "raise":
            raise NonFiniteError(
                f"input holds {total.nonfinite} non-finite value(s) (NaN or inf), the first at "
                f"index {total.first_nonfinite}; pass nan_policy='omit' to skip them or "
                f"'propagate' for numpy's result")
        if nan_policy == "propagate":
            return None
    if total.n == 0:
        return None
    cut = threshold * math.sqrt(total.m2 / total.n) if total.m2 >= 0 else math.nan
    if not (math.isfinite(total.mean) and math.isfinite(cut)):
        if nan_policy == "raise":
            raise NonFiniteError("the mean or standard deviation overflows float64 (values of "
                                 "magnitude above ~1e154); rescale the data")
        return None
    return total.mean, cut


def flag_into(x: np.ndarray, mean: float, cut: float, base: int, out: np.ndarray) -> int:
    """Write base + i for each |x[i] - mean| > cut into *out* (int64) while it
    has room; return how many there are in all.  NaN and inf never count."""
    if native is not None:
        return native.flag_into(x, mean, cut, base, out)
    with np.errstate(invalid="ignore"):
        d = np.abs(x - mean)
        idx = np.flatnonzero((d > cut) & (d < math.inf))
    k = min(len(idx), len(out))
    np.add(idx[:k], base, out=out[:k])
    return len(idx)


def flag(x: np.ndarray, mean: float, cut: float, base: int = 0) -> np.ndarray:
    """The flag pass as a new ascending int64 array."""
    out = np.empty(len(x) // 16 + 16, dtype=np.int64)
    total = flag_into(x, mean, cut, base, out)
    if total > len(out):
        out = np.empty(total, dtype=np.int64)
        flag_into(x, mean, cut, base, out)
    return out[:total]


class Classic(SplitDetector):
    """|x[i] - mean(x)| > threshold * std(x): the classic detector, split."""

    name = CLASSIC
    params = {"threshold": 2.0}
    summary_size = L.CLASSIC_SUMMARY_SIZE

    def check(self, p: Params) -> None:
        k = p.threshold
        if not (math.isfinite(k) and k >= 0):
            raise ValueError(f"threshold must be finite and >= 0, got {k!r}")

    def summarize(self, x, p):
        s = chunk_stats(x, p.nan_policy, p.base)
        return (float(s.n), s.mean, s.m2, float(s.nonfinite), float(s.first_nonfinite))

    def combine(self, summaries, p):
        total = Stats()
        for n, mean, m2, bad, first in np.asarray(summaries, dtype=np.float64).tolist():
            total = merge(total, Stats(int(n), mean, m2, int(bad), int(first)))
        lim = limits(total, p.threshold, p.nan_policy)
        return None if lim is None else lim

    def flag(self, x, cut, p):
        return flag(x, float(cut[0]), float(cut[1]))

    def flag_into(self, x, cut, base: int, out: np.ndarray) -> int:
        """The flag pass writing straight into a result region."""
        return flag_into(x, float(cut[0]), float(cut[1]), base, out)

    def detect(self, x, p):
        lim = limits(chunk_stats(x, p.nan_policy, p.base), p.threshold, p.nan_policy)
        if lim is None:
            return np.empty(0, dtype=np.int64)
        return flag(x, *lim)


def classic(x, threshold: float = 2.0, nan_policy: str = "raise") -> np.ndarray:
    """The whole classic detector in this process."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    return Classic().detect(x, Params({"threshold": threshold}, nan_policy))


# -- Tukey's fences ---------------------------------------------------------------

GRID = 60                # quantiles per chunk summary: 0, 1/60, ..., 1 (the quartiles included)


def _finite_part(x: np.ndarray, p: Params) -> tuple[np.ndarray, int, int]:
    """(the values the statistics use, non-finite count, first non-finite index + base)."""
    finite = np.isfinite(x)
    bad = len(x) - int(np.count_nonzero(finite))
    if not bad:
        return x, 0, -1
    first = p.base + int(np.argmin(finite))
    return (x[finite] if p.nan_policy == "omit" else x[:0]), bad, first


def _nonfinite_limits(bad: int, first: int, p: Params) -> bool:
    """Apply the nan_policy to non-finite values seen; True when nothing can be flagged."""
    if bad and p.nan_policy == "raise":
        raise NonFiniteError(
            f"input holds {bad} non-finite value(s) (NaN or inf), the first at index {first}; "
            f"pass nan_policy='omit' to skip them or 'propagate' for numpy's result")
    return bool(bad) and p.nan_policy == "propagate"


class Tukey(SplitDetector):
    """Tukey's fences: x < Q1 - k * IQR or x > Q3 + k * IQR (k = 1.5 by default).

    Robust where the classic z-score is not: a few huge outliers inflate the
    standard deviation and hide each other, but barely move the quartiles.
    Each chunk's summary is its count and its quantiles at 0, 1/60, ..., 1
    (numpy's linear method).  One chunk: the quartiles are numpy's own, so
    the answer equals ``tukey_reference``.  Several: the chunks' quantile
    curves are merged into one distribution function and inverted at 1/4 and
    3/4, so each estimated quartile's rank is within N/60 + k of the exact
    one's (k chunks, N values): an index can differ from the exact answer only
    for values between the exact and the estimated fence.
    """

    name = TUKEY
    params = {"k": 1.5}
    summary_size = GRID + 4                 # n, non-finite, first, then GRID + 1 quantiles

    def check(self, p: Params) -> None:
        if not (math.isfinite(p.k) and p.k >= 0):
            raise ValueError(f"k must be finite and >= 0, got {p.k!r}")

    def summarize(self, x, p):
        values, bad, first = _finite_part(x, p)
        head = [float(len(values)), float(bad), float(first)]
        if len(values) == 0:
            return head + [0.0] * (GRID + 1)
        return head + np.quantile(values, np.linspace(0.0, 1.0, GRID + 1)).tolist()

    def combine(self, summaries, p):
        s = np.asarray(summaries, dtype=np.float64)
        n, bad = s[:, 0], int(s[:, 1].sum())
        firsts = [int(f) for f in s[:, 2] if f >= 0]
        if _nonfinite_limits(bad, firsts[0] if firsts else -1, p):
            return None
        used = s[n > 0]
        if len(used) == 0:
            return None
        if len(used) == 1:
            q1, q3 = used[0, 3 + GRID // 4], used[0, 3 + 3 * GRID // 4]
        else:
            q1, q3 = _merged_quantile(used, 0.25), _merged_quantile(used, 0.75)
        iqr = q3 - q1
        return (q1 - p.k * iqr, q3 + p.k * iqr)

    def flag(self, x, cut, p):
        with np.errstate(invalid="ignore"):
            return np.flatnonzero((x < cut[0]) | (x > cut[1]))


def _merged_quantile(used: np.ndarray, q: float) -> float:
    """The value where the chunks' merged distribution function reaches q:
    each chunk's function is linear between its summary's quantiles."""
    n = used[:, 0]
    grids = used[:, 3:]
    probs = np.linspace(0.0, 1.0, GRID + 1)
    total = n.sum()

    def cdf(t: float) -> float:
        return float(sum(ni * np.interp(t, g, probs, left=0.0, right=1.0)
                         for ni, g in zip(n, grids)) / total)

    lo, hi = float(grids[:, 0].min()), float(grids[:, -1].max())
    for _ in range(200):                    # bisection to the last representable step
        mid = lo + (hi - lo) / 2
        if mid in (lo, hi):
            break
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return hi


def tukey_reference(x, k: float = 1.5) -> np.ndarray:
    """Tukey's fences in numpy, over the whole array at once."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.empty(0, dtype=np.int64)
    q1, q3 = np.quantile(x, [0.25, 0.75])
    iqr = q3 - q1
    return np.flatnonzero((x < q1 - k * iqr) | (x > q3 + k * iqr))


BUILT_IN = {CLASSIC: Classic, TUKEY: Tukey}


# -- loading by name --------------------------------------------------------------

class FunctionDetector:
    """A plain ``fn(x, **params)`` returning indices: runs whole, on one worker.

    Its parameters are its keyword parameters with a real default (and
    ``threshold`` whatever its default), passed as floats; it gets
    ``nan_policy=`` too if it has such a parameter."""

    summary_size = 0

    def __init__(self, fn, spec: str):
        self.fn, self.spec = fn, spec
        self.params: dict[str, float] = {}
        self.takes_policy = False
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return
        for i, (name, prm) in enumerate(sig.parameters.items()):
            if i == 0 or prm.kind in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD):
                continue
            if name == "nan_policy":
                self.takes_policy = True
            elif name == "threshold":
                d = prm.default
                self.params[name] = float(d) if _is_real(d) else 2.0
            elif _is_real(prm.default):
                self.params[name] = float(prm.default)

    def check(self, p: Params) -> None:
        pass

    def keywords(self, p: Params) -> dict[str, Any]:
        """The function's keyword arguments for parameters *p*."""
        kw: dict[str, Any] = p.as_dict()
        if self.takes_policy:
            kw["nan_policy"] = p.nan_policy
        return kw

    def detect(self, x, p: Params) -> np.ndarray:
        return check_indices(self.fn(x, **self.keywords(p)), len(x))


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Row:
    """A detector as a worker serves it: its spec, the object, its defaults."""

    def __init__(self, spec: str, impl, defaults: Mapping[str, float]):
        self.spec, self.impl = spec, impl
        self.split = isinstance(impl, SplitDetector)
        self.defaults = {k: float(defaults.get(k, v)) for k, v in impl.params.items()}
        if len(self.defaults) > L.MAX_PARAMS:
            raise TypeError(f"detector {spec!r} has {len(self.defaults)} parameters; "
                            f"the limit is {L.MAX_PARAMS}")
        size = int(getattr(impl, "summary_size", 0)) if self.split else 0
        if self.split and not 1 <= size <= L.MAX_REPLY_VALUES:
            raise TypeError(f"detector {spec!r}: summary_size must be 1..{L.MAX_REPLY_VALUES}, "
                            f"got {size}")
        self.summary_size = size

    def detect(self, x: np.ndarray, p: Params) -> np.ndarray:
        """The whole detector over x, every value the detector returns checked."""
        impl = self.impl
        if not self.split or type(impl) is Classic:
            return impl.detect(x, p)
        summary = check_summary(impl.summarize(x, p), self.summary_size, self.spec)
        cut = check_cut(impl.combine(np.asarray([summary], dtype=np.float64), p), self.spec)
        if cut is None:
            return np.empty(0, dtype=np.int64)
        return check_indices(impl.flag(x, np.asarray(cut, dtype=np.float64), p), len(x))

    def table_row(self) -> L.DetectorRow:
        return L.DetectorRow(self.spec, self.split, self.summary_size, tuple(self.defaults.items()))

    def params(self, values: Sequence[float], nan_policy: str, base: int = 0) -> Params:
        """Params from a request's values: NaN or missing means the default."""
        named = {}
        for i, (name, default) in enumerate(self.defaults.items()):
            v = values[i] if i < len(values) else math.nan
            named[name] = default if math.isnan(v) else float(v)
        p = Params(named, nan_policy, base)
        self.impl.check(p)
        return p


def check_spec(spec: str) -> None:
    """Reject a malformed ``"package.module:name"`` before any worker starts."""
    if not isinstance(spec, str):
        raise TypeError(f"detector must be 'classic', 'tukey' or 'module:name', not "
                        f"{type(spec).__name__}")
    if spec in (CLASSIC, TUKEY):
        return
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn or not all(p.isidentifier() for p in mod.split(".") + fn.split(".")):
        raise ValueError(f"detector {spec!r} is not 'classic', 'tukey' or 'package.module:name'")


def load(spec: str, defaults: Mapping[str, float] | None = None) -> Row:
    """Import a detector by name: a SplitDetector subclass or instance, or a
    plain function.  *defaults* override parameter defaults by name (a
    pool's ``threshold=`` applies to every detector with a threshold)."""
    check_spec(spec)
    if spec in BUILT_IN:
        return Row(spec, BUILT_IN[spec](), defaults or {})
    mod_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, SplitDetector):
        obj = obj()
    if not isinstance(obj, SplitDetector):
        if not callable(obj):
            raise TypeError(f"detector {spec!r} is neither a SplitDetector nor callable")
        obj = FunctionDetector(obj, spec)
    return Row(spec, obj, defaults or {})


def check_indices(result, n: int) -> np.ndarray:
    """A detector's answer as ascending, unique int64 indices in [0, n), or DetectorError."""
    try:
        idx = np.asarray(result)
    except Exception as e:  # noqa: BLE001 - anything the user returned
        raise DetectorError(f"detector returned {type(result).__name__}, not indices: {e}",
                            "TypeError") from None
    if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
        raise DetectorError(f"detector returned a {idx.ndim}-D {idx.dtype} array; "
                            "1-D integer indices are required", "TypeError")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx.min() if idx.min() < 0 else idx.max())
        raise DetectorError(f"detector returned index {bad} outside [0, {n})", "IndexError")
    if idx.size > 1 and not np.all(idx[1:] > idx[:-1]):
        idx = np.unique(idx)           # the promise is ascending and unique
    return idx


def check_summary(values, size: int, spec: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except Exception as e:  # noqa: BLE001 - anything the user returned
        raise DetectorError(f"{spec}: summarize returned {type(values).__name__}, not floats: {e}",
                            "TypeError") from None
    if len(out) != size:
        raise DetectorError(f"{spec}: summarize returned {len(out)} values; its summary_size "
                            f"is {size}", "ValueError")
    return out


def check_cut(values, spec: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        out = tuple(float(v) for v in values)
    except Exception as e:  # noqa: BLE001 - anything the user returned
        raise DetectorError(f"{spec}: combine returned {type(values).__name__}, not floats: {e}",
                            "TypeError") from None
    if len(out) > L.MAX_PARAMS:
        raise DetectorError(f"{spec}: combine returned {len(out)} values; at most "
                            f"{L.MAX_PARAMS} flag parameters fit a request", "ValueError")
    return out or None          # no flag parameters: the answer is empty
