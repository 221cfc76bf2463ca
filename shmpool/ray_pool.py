"""RayPool: the same ``detect`` on a Ray cluster, past one machine's cores.

    caller                        Ray object store                Ray tasks (any node)
    ------                        ----------------                --------------------
    x ──ray.put (once)──────────> x: shared memory on each node ─> stats(x[a:b])  per chunk
    combine once  <──────────────────────────────────────────────  (n, mean, M2)
    mean, cut ───────────────────────────────────────────────────> flag(x[a:b])   per chunk
    concatenate   <──────────────────────────────────────────────  indices

The arithmetic (split, pass 1, combine, pass 2) is shmpool.detectors', the
same functions the local Pool's workers run, so with the same number of
chunks the answers are identical.  Tasks read an input that was put once
zero-copy from their node's object store.  Ray is used only when the caller
says so: pass ``address=`` or call ``ray.init`` first.

Requires the extra: ``pip install 'shmpool[ray]'``.
"""

from __future__ import annotations

import numpy as np

from . import detectors
from ._forms import CallForms
from .errors import (DetectorError, DetectTimeout, PoolClosed, RemoteTraceback,
                     ShmpoolError, WorkerDied)
from .pool import SPLIT_MIN, _as_real_1d, _check_policy, _check_settings, _check_threshold


def _stats_task(x, a, b, nan_policy):
    return tuple(detectors.chunk_stats(x[a:b], nan_policy))


def _flag_task(x, a, b, mean, cut, nan_policy):
    return detectors.chunk_threshold(x[a:b], mean, cut, a, nan_policy)


def _detect_task(x, threshold, nan_policy, spec):
    if spec == detectors.CLASSIC:
        return detectors.classic(x, threshold, nan_policy)
    return detectors.check_indices(detectors.load(spec)(x, threshold), len(x))


class RayPool(CallForms):
    """Detector tasks on Ray, with the local Pool's surface.

    ``RayPool(address=None, *, detector="classic", threshold=2.0,
    nan_policy="raise", chunks=None, max_retries=3)``.  *chunks* defaults to
    the cluster's CPU count.  A task whose Ray worker dies is retried up to
    *max_retries* times, then the call raises WorkerDied.  ``put(x)`` stores an
    input once for any number of zero-copy detects; there is no ``empty()``,
    since objects in Ray's store are immutable once put.
    """

    _closed = True

    def __init__(self, address: str | None = None, *, detector: str = detectors.CLASSIC,
                 threshold: float = 2.0, nan_policy: str = "raise", chunks: int | None = None,
                 max_retries: int = 3):
        try:
            import ray
        except ImportError:
            raise ImportError("RayPool needs Ray: pip install 'shmpool[ray]'") from None
        self.detector, self.threshold, self.nan_policy = _check_settings(detector, threshold, nan_policy)
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
        opts = dict(max_retries=max_retries)
        self._stats = ray.remote(**opts)(_stats_task)
        self._flag = ray.remote(**opts)(_flag_task)
        self._detect = ray.remote(**opts)(_detect_task)
        self._closed = False

    def put(self, x):
        """Store x once in Ray's object store; detect() reads it zero-copy."""
        return self._ray.put(np.ascontiguousarray(_as_real_1d(x), dtype=np.float64))

    def detect(self, x, *, timeout: float | None = None, threshold: float | None = None,
               nan_policy: str | None = None) -> np.ndarray:
        """Indices of the outliers of x (an array-like, or a ref from put())."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        k = self.threshold if threshold is None else _check_threshold(threshold)
        policy = self.nan_policy if nan_policy is None else _check_policy(nan_policy)
        if isinstance(x, self._ray.ObjectRef):
            ref, n = x, len(self._ray.get(x))      # a zero-copy view on this node
        else:
            ref, n = self.put(x), len(x)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        if self.detector != detectors.CLASSIC or n < SPLIT_MIN or self.chunks == 1:
            return np.asarray(self._get(self._detect.remote(ref, k, policy, self.detector), timeout))

        def stats(chunks):
            parts = self._get([self._stats.remote(ref, a, b, policy) for a, b in chunks], timeout)
            return [detectors.Stats(*p) for p in parts]

        def flag(chunks, mean, cut):
            return self._get([self._flag.remote(ref, a, b, mean, cut, policy) for a, b in chunks],
                             timeout)

        parts = detectors.two_phase(detectors.split(n, self.chunks), k, policy, stats, flag)
        if not parts:
            return np.empty(0, dtype=np.int64)
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
        self._stop_executor(wait=True)
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
