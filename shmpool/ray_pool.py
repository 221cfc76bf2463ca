"""RayPool: the same ``detect`` on a Ray cluster, past one machine's cores.

    caller                        Ray object store                Ray tasks (any node)
    ------                        ----------------                --------------------
    x ──ray.put (once)──────────> x: shared memory on each node ─> summarize(x[a:b]) per chunk
    combine once  <──────────────────────────────────────────────  summaries
    flag parameters ─────────────────────────────────────────────> flag(x[a:b])      per chunk
    concatenate   <──────────────────────────────────────────────  indices + a

Any split detector (``shmpool.detectors.SplitDetector``: the classic one,
the Tukey one, or the user's own) is split by the rule every shmpool host
uses (shmpool.layout.split_count / split, with the cluster's CPUs as the
lanes), through the detector's own summarize / combine / flag, so with the
same number of chunks the answers equal the local Pool's.  A plain
function runs whole in one task.  Ray is used only when the caller says
so: pass ``address=`` or call ``ray.init`` first.

Requires the extra: ``pip install 'shmpool[ray]'`` (from a checkout:
``pip install '.[ray]'``).
"""

from __future__ import annotations

import functools

import numpy as np

from . import detectors
from . import layout as L
from ._forms import CallForms
from .errors import DetectorError, DetectTimeout, PoolClosed, RemoteTraceback, ShmpoolError, WorkerDied
from .pool import as_real_1d, check_policy, check_specs, check_threshold, request_params, threshold_defaults


@functools.lru_cache(maxsize=16)
def _row(spec: str, threshold: float | None) -> detectors.Row:
    """The loaded detector: once per Ray worker process, not once per task."""
    return detectors.load(spec, threshold_defaults(threshold))


def _contiguous(x) -> np.ndarray:
    return np.ascontiguousarray(as_real_1d(x), dtype=np.float64)


def _summarize_task(x, a, b, spec, threshold, values, policy):
    row = _row(spec, threshold)
    p = row.params(values, policy, a)
    return detectors.check_summary(row.impl.summarize(x[a:b], p), row.summary_size, spec)


def _flag_task(x, a, b, spec, threshold, values, policy, cut):
    row = _row(spec, threshold)
    p = row.params(values, policy, a)
    part = x[a:b]
    idx = detectors.check_indices(row.impl.flag(part, np.asarray(cut, dtype=np.float64), p),
                                  len(part))
    return idx + a


def _detect_task(x, spec, threshold, values, policy):
    row = _row(spec, threshold)
    return row.detect(x, row.params(values, policy))


class RayPool(CallForms):
    """Detector tasks on Ray, with the local Pool's surface.

    ``RayPool(address=None, *, detector="classic", threshold=None,
    nan_policy="raise", chunks=None, max_retries=3)``.  *chunks* (the lanes
    of the split rule) defaults to the cluster's CPU count.  A task whose Ray
    worker dies is retried up to *max_retries* times, then the call raises
    WorkerDied.  ``put(x)`` stores an input once for any number of zero-copy
    detects; there is no ``empty()``, since Ray's objects are immutable.
    """

    _closed = True

    def __init__(self, address: str | None = None, *, detector: str = detectors.CLASSIC,
                 threshold: float | None = None, nan_policy: str = "raise", chunks: int | None = None,
                 max_retries: int = 3):
        try:
            import ray
        except ImportError:
            raise ImportError("RayPool needs Ray: pip install 'shmpool[ray]' "
                              "(from a checkout: pip install '.[ray]')") from None
        [self.detector] = check_specs(detector)
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.nan_policy = check_policy(nan_policy)
        self._table = _row(self.detector, self.threshold)   # imports it here too: checks it early
        self._ray = ray
        self._owns_ray = False
        if address is not None:
            if ray.is_initialized():
                raise ValueError("Ray is already initialised in this process; "
                                 "drop address= to use that cluster")
            ray.init(address=address)
            self._owns_ray = True
        elif not ray.is_initialized():
            raise ValueError("RayPool runs only on a cluster chosen explicitly: "
                             "pass address=... or call ray.init(...) first")
        self.chunks = chunks or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._summarize = ray.remote(max_retries=max_retries)(_summarize_task)
        self._flag = ray.remote(max_retries=max_retries)(_flag_task)
        self._detect = ray.remote(max_retries=max_retries)(_detect_task)
        self._closed = False

    def put(self, x):
        """Store x once in Ray's object store; detect() reads it zero-copy."""
        return self._ray.put(_contiguous(x))

    def detect(self, x, *, timeout: float | None = None, threshold: float | None = None,
               nan_policy: str | None = None, params=None) -> np.ndarray:
        """Indices of the outliers of x (an array-like, or a ref from put());
        *params* and *threshold* as for Pool.detect."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        values = request_params(self._table.table_row(), threshold, params)
        policy = self.nan_policy if nan_policy is None else check_policy(nan_policy)
        if isinstance(x, self._ray.ObjectRef):
            ref, n = x, len(self._ray.get(x))      # a zero-copy view on this node
        else:
            x = _contiguous(x)
            ref, n = self._ray.put(x), len(x)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        row = self._table
        try:
            p = row.params(values, policy)
        except ValueError as e:
            raise ValueError(str(e)) from None
        k = L.split_count(n, self.chunks) if row.split else 1
        args = (self.detector, self.threshold, values, policy)
        if k == 1:
            return np.asarray(self._get(self._detect.remote(ref, *args), timeout), dtype=np.int64)
        chunks = L.split(n, k)
        summaries = self._get([self._summarize.remote(ref, a, b, *args) for a, b in chunks],
                              timeout)
        try:
            cut = detectors.check_cut(row.impl.combine(np.asarray(summaries, dtype=np.float64), p),
                                      row.spec)
        except ShmpoolError:
            raise
        except Exception as e:  # noqa: BLE001 - the detector's own combine raised
            import traceback
            raise DetectorError(str(e), type(e).__name__,
                                "".join(traceback.format_exception(e))) from None
        if cut is None:
            return np.empty(0, dtype=np.int64)
        parts = self._get([self._flag.remote(ref, a, b, *args, cut) for a, b in chunks], timeout)
        return np.concatenate(parts).astype(np.int64, copy=False)

    def _get(self, refs, timeout):
        ray = self._ray
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            for r in refs if isinstance(refs, list) else [refs]:
                ray.cancel(r, force=True)
            raise DetectTimeout(f"Ray tasks did not finish within {timeout} s; cancelled") from None
        except ray.exceptions.RayTaskError as e:
            raise _translate(e) from RemoteTraceback(str(e))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as e:
            raise WorkerDied(f"a Ray worker died during the call (after retries): {e}") from None

    @property
    def _parallelism(self) -> int:
        return self.chunks

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_executor()
        if self._owns_ray:
            self._ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed


def _translate(e) -> ShmpoolError:
    """A failed Ray task as the error the local Pool raises for the same fault."""
    cause = getattr(e, "cause", None)
    tb = str(e)
    if isinstance(cause, ShmpoolError):
        return cause
    if cause is not None:
        return DetectorError(str(cause), type(cause).__name__, tb)
    return DetectorError(tb, type(e).__name__, tb)
