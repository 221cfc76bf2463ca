"""The ways to run a detector that the benchmark times in Python.

Each method is started once (warm pools, a running server), then for every
size ``prepare(x)`` gives the argument of ``call`` (for the zero-copy path: a
``pool.empty`` array holding x), and ``call`` runs one detection and returns
the indices.  ``stop`` releases everything the method started.

``answer`` names the rule a method's indices are checked against before it is
timed: "classic" (numpy's one-liner, threshold 2) for all but the plug-in
rows, which run benchmarks.detectors' z-score detector ("zscore", threshold
3).  ``verify(arg, got)`` may check more (the split plug-in row: equal to the
whole one).
"""

from __future__ import annotations

import concurrent.futures
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from . import detectors as D
from . import procs
from . import workers as W


class Method:
    key = ""
    label = ""
    group = "python"         # "python", "plugin", "diagnostic" (or "go", "embed", see run.py)
    how = ""                 # one line for the report: what exactly is timed
    answer = "classic"       # the rule the answer is checked against (run.py: CHECKS)

    def __init__(self):
        self.available = True
        self.reason = ""

    def start(self) -> None:
        pass

    def prepare(self, x: np.ndarray):
        return x

    def call(self, arg) -> np.ndarray:
        raise NotImplementedError

    def release(self, arg) -> None:
        pass

    def verify(self, arg, got) -> None:
        """Further checks of a correct answer before timing; raise workers.Mismatch."""

    def stop(self) -> None:
        pass


class Numpy(Method):
    key = "numpy"
    label = "numpy in-process"
    how = "np.where(np.abs(x - x.mean()) > 2 * x.std())[0] in the calling process (1 core)"

    def call(self, x):
        return W.one_liner(x)


class Kernel(Method):
    key = "shmpool_kernel"
    label = "shmpool kernel in-process (diagnostic)"
    group = "diagnostic"
    how = ("shmpool.detectors.classic(x) in the calling process, 1 core, no IPC: what one worker "
           "computes for a small array")

    def call(self, x):
        from shmpool import detectors
        return detectors.classic(x)


def _split_note(cores: int) -> str:
    return (f"below 2^18 values: one task running the one-liner; from 2^18: {cores} chunks, "
            f"two rounds (stats, merge, flag) with shmpool's chunk kernels")


class MpPool(Method):
    key = "mp_pool"
    label = "multiprocessing.Pool"

    def __init__(self, cores: int):
        super().__init__()
        self.cores = cores
        self.pool = None
        self.how = f"warm Pool({cores}) (spawn), array pickled to the workers; " + _split_note(cores)

    def start(self):
        self.pool = multiprocessing.get_context("spawn").Pool(self.cores)
        self.pool.map(abs, range(4 * self.cores))

    def call(self, x):
        if not W.wants_split(len(x)):
            return self.pool.apply(W.task_detect, (x,))
        return W.split_detect(x, self.cores,
                              lambda a: self.pool.starmap(W.task_stats, a, chunksize=1),
                              lambda a: self.pool.starmap(W.task_threshold, a, chunksize=1))

    def stop(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


class Executor(Method):
    key = "process_pool_executor"
    label = "ProcessPoolExecutor"

    def __init__(self, cores: int):
        super().__init__()
        self.cores = cores
        self.ex = None
        self.how = (f"warm ProcessPoolExecutor({cores}) (spawn), array pickled to the workers; "
                    + _split_note(cores))

    def start(self):
        self.ex = concurrent.futures.ProcessPoolExecutor(
            self.cores, mp_context=multiprocessing.get_context("spawn"))
        list(self.ex.map(abs, range(4 * self.cores)))

    def _map(self, fn, args):
        futs = [self.ex.submit(fn, *a) for a in args]
        return [f.result() for f in futs]

    def call(self, x):
        if not W.wants_split(len(x)):
            return self.ex.submit(W.task_detect, x).result()
        return W.split_detect(x, self.cores, lambda a: self._map(W.task_stats, a),
                              lambda a: self._map(W.task_threshold, a))

    def stop(self):
        if self.ex is not None:
            self.ex.shutdown(wait=True, cancel_futures=True)
            self.ex = None


class Joblib(Method):
    key = "joblib"
    label = "joblib Parallel (loky)"

    def __init__(self, cores: int):
        super().__init__()
        self.cores = cores
        self.parallel = None
        self.how = (f"one Parallel(n_jobs={cores}, backend='loky') kept open (warm workers), automatic "
                    f"memmapping of arrays over 1 MB (max_nbytes='1M', mmap_mode='r'); "
                    + _split_note(cores) + "; note: joblib's result loop waits in time.sleep(0.01) steps "
                    "(joblib/parallel.py), which bounds its latency per call from below")

    def start(self):
        from joblib import Parallel, delayed
        self._delayed = delayed
        self.parallel = Parallel(n_jobs=self.cores, backend="loky", max_nbytes="1M", mmap_mode="r")
        self.parallel.__enter__()
        self.parallel(delayed(abs)(i) for i in range(4 * self.cores))

    def _map(self, fn, args):
        return self.parallel(self._delayed(fn)(*a) for a in args)

    def call(self, x):
        if not W.wants_split(len(x)):
            return self._map(W.task_detect, [(x,)])[0]
        return W.split_detect(x, self.cores, lambda a: self._map(W.task_stats, a),
                              lambda a: self._map(W.task_threshold, a))

    def stop(self):
        if self.parallel is not None:
            try:
                self.parallel.__exit__(None, None, None)
            finally:
                self.parallel = None
                from joblib.externals.loky import reusable_executor
                ex = reusable_executor._executor
                if ex is not None:
                    ex.shutdown(wait=True, kill_workers=True)
                # joblib's resource tracker removes its memmap folders a moment later; wait a
                # little for that, then remove what is still there (named after our pid)
                pattern = f"/dev/shm/joblib_memmapping_folder_{os.getpid()}_*"
                end = time.monotonic() + 1.5
                while glob.glob(pattern) and time.monotonic() < end:
                    time.sleep(0.1)
                for path in glob.glob(pattern):
                    shutil.rmtree(path, ignore_errors=True)


class Grpc(Method):
    key = "grpc"
    label = "gRPC service (Python client)"

    def __init__(self, cores: int, tmpdir: str):
        super().__init__()
        self.cores = cores
        self.tmpdir = tmpdir
        self.socket = os.path.join(tmpdir, "grpc.sock")
        self.log = os.path.join(tmpdir, "grpc-server.log")
        self.server = None
        self.client = None
        self.how = ("Python grpcio server in its own process (generic handler, identity (de)serializers, "
                    f"{cores} threads) over a Unix socket; raw float64 bytes in (x.tobytes()), raw int64 "
                    "bytes out; the service runs the one-liner")

    def start(self):
        from . import grpc_service
        self.server = procs.spawn([sys.executable, "-m", "benchmarks.grpc_service", "--socket", self.socket,
                                   "--threads", str(self.cores)], self.log)
        try:
            self.client = grpc_service.Client(self.socket, ready_timeout=60.0, proc=self.server)
        except Exception as e:  # noqa: BLE001 - reported with the server's log
            tail = procs.log_tail(self.log)
            raise RuntimeError(f"{e}{': ' + tail if tail else ''}") from None

    def call(self, x):
        return self.client.detect(x)

    def stop(self):
        try:
            if self.client is not None:
                self.client.close()
        finally:
            self.client = None
            procs.stop(self.server)
            self.server = None


class OnPool(Method):
    """A method on the shared pool of a PoolHolder, which starts it for the first of its methods."""

    def __init__(self, holder):
        super().__init__()
        self.holder = holder

    def start(self):
        self.holder.get()


class OnPoolBuffer(OnPool):
    """An OnPool method called on pool.empty() data: x copied in untimed, the workers read it in place."""

    def prepare(self, x):
        buf = self.holder.pool.empty(len(x))
        buf[:] = x
        return buf


class ShmpoolCopy(OnPool):
    key = "shmpool_copy"
    label = "shmpool Pool.detect, ndarray (copy-in)"
    how = "pool.detect(x) on an ordinary ndarray: the pool copies x into shared memory"

    def call(self, x):
        return self.holder.pool.detect(x)


class ShmpoolZero(OnPoolBuffer):
    key = "shmpool_zero_copy"
    label = "shmpool Pool.detect, pool.empty() (zero-copy)"
    how = "buf = pool.empty(n); buf[:] = x (untimed); pool.detect(buf): workers read buf in place"

    def call(self, buf):
        return self.holder.pool.detect(buf)


class ServeClient(Method):
    key = "shmpool_serve_python"
    label = "shmpool serve, Python client (diagnostic)"
    group = "diagnostic"
    how = ("shmpool.client.Client(socket).detect(x) against the same `shmpool serve` the Go host uses: "
           "copies x into the client's lane segment, one request straight to the worker the server "
           "handed the connection to (split over the workers from 2^18 values); the Python side of "
           "what the Go adapter does")

    def __init__(self, serve):
        super().__init__()
        self.serve = serve
        self.client = None

    def start(self):
        self.serve.start()
        if not self.serve.available:
            raise RuntimeError(self.serve.reason)
        from shmpool.client import Client
        self.client = Client(self.serve.socket, timeout=600.0)

    def call(self, x):
        return self.client.detect(x)

    def stop(self):
        if self.client is not None:
            self.client.close()
            self.client = None


class Ray(Method):
    key = "ray"
    label = "shmpool RayPool (local Ray)"
    how = ("shmpool.ray_pool.RayPool on ray.init(num_cpus=cores): x put once in Ray's object store "
           "(untimed), detect(ref) timed; split across cores from 2^18 values like the local pool")

    def __init__(self, cores: int):
        super().__init__()
        self.cores = cores
        self.pool = None
        self.ray = None

    def start(self):
        try:
            import ray
        except ImportError:
            raise RuntimeError("Ray is not installed (pip install 'shmpool[ray]')") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(num_cpus=self.cores, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, object_store_memory=2**30)
        from shmpool.ray_pool import RayPool
        self.pool = RayPool(chunks=self.cores)

    def prepare(self, x):
        return self.pool.put(x)

    def call(self, ref):
        return self.pool.detect(ref)

    def release(self, ref):
        del ref

    def stop(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()


class PluginSplit(OnPoolBuffer):
    key = "plugin_split"
    label = "plug-in SplitDetector, split over the workers"
    group = "plugin"
    answer = "zscore"
    how = (f"Pool(detector=[\"{D.ZSCORE_SPLIT}\", \"{D.ZSCORE_WHOLE}\"], threshold=3.0)"
           f".detect(buf) on pool.empty() data: a user's SplitDetector (z-score from its own "
           f"(n, mean, M2, min, max) summary), split over the workers from 2^18 values like the "
           f"classic one; its answer must equal numpy's rule and the whole-array row's before "
           f"timing")

    def call(self, buf):
        return self.holder.pool.detect(buf, detector=D.ZSCORE_SPLIT)

    def verify(self, buf, got):
        whole = self.holder.pool.detect(buf, detector=D.ZSCORE_WHOLE)
        if not np.array_equal(got, whole):
            raise W.Mismatch(f"the split answer ({len(got)} indices) differs from the same detector "
                             f"run whole ({len(whole)} indices)")


class PluginWhole(PluginSplit):
    key = "plugin_whole"
    label = "plug-in as a plain function, whole on one worker"
    how = (f"the same pool, detector=\"{D.ZSCORE_WHOLE}\": the same detector as a plain function "
           f"(its detect() of the whole array), which shmpool runs on one worker; pool.empty() data")

    def call(self, buf):
        return self.holder.pool.detect(buf, detector=D.ZSCORE_WHOLE)

    def verify(self, buf, got):
        pass


class PoolHolder:
    """One shmpool.Pool shared by some methods (the classic pool, or the plug-in pool)."""

    def __init__(self, cores: int, **kwargs):
        self.cores = cores
        self.kwargs = kwargs
        self.pool = None

    def get(self):
        if self.pool is None:
            from shmpool import Pool
            self.pool = Pool(workers=self.cores, **self.kwargs)
        return self.pool

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_tmpdir() -> str:
    return tempfile.mkdtemp(prefix="shmpool-bench-")
