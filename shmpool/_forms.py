"""submit(), map() and detect_async(), the same for every pool, on top of detect().

The calls run on daemon threads of the pool's own (concurrent.futures'
ThreadPoolExecutor joins its threads at interpreter exit, so a script that
ends with a call in flight would wait for it): at exit the pool's cleanup
stops the workers, and a call still running fails at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DetectTimeout, PoolClosed

_lock = threading.Lock()     # guards the lazy creation of each pool's executor


class _Executor:
    """Threads that never hold up interpreter exit, started as calls need them."""

    def __init__(self, max_threads: int, name: str):
        self.max_threads, self.name = max_threads, name
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0
        self.stopped = False

    def submit(self, fn, *args, **kwargs) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            if self.stopped:
                raise PoolClosed("the pool is closed")
            self.jobs.put((fut, fn, args, kwargs))
            if self.idle == 0 and self.threads < self.max_threads:
                self.threads += 1
                threading.Thread(target=self._run, name=f"{self.name}-{self.threads}",
                                 daemon=True).start()
        return fut

    def _run(self) -> None:
        while True:
            with self.lock:
                self.idle += 1
            job = self.jobs.get()
            with self.lock:
                self.idle -= 1
            if job is None:
                return
            fut, fn, args, kwargs = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - delivered through the future
                fut.set_exception(e)
            else:
                fut.set_result(result)

    def shutdown(self) -> None:
        with self.lock:
            self.stopped = True
            threads = self.threads
        while True:                      # cancel what has not started
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in range(threads):
            self.jobs.put(None)


class CallForms:
    """Mixin: a pool with ``detect``, ``closed`` and ``_parallelism`` gains
    ``submit`` (a concurrent.futures.Future), ``map`` and ``detect_async``,
    with detect's keyword arguments."""

    _executor: _Executor | None = None

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    @property
    def _parallelism(self) -> int:
        raise NotImplementedError

    detect: Callable[..., NDArray[np.int64]]

    def submit(self, x: Any, *, timeout: float | None = None, threshold: float | None = None,
               nan_policy: str | None = None, detector: str | None = None,
               params: Mapping[str, float] | None = None, **kwargs: Any
               ) -> concurrent.futures.Future[NDArray[np.int64]]:
        """detect() on a pool thread; do not modify x until the future is done."""
        kwargs.update(_given(timeout=timeout, threshold=threshold, nan_policy=nan_policy,
                             detector=detector, params=params))
        with _lock:
            if self.closed:
                raise PoolClosed("the pool is closed")
            if self._executor is None:
                self._executor = _Executor(2 * self._parallelism + 2, "shmpool-submit")
            executor = self._executor
        return executor.submit(self.detect, x, **kwargs)

    def map(self, arrays: Iterable[Any], *, timeout: float | None = None,
            in_flight: int | None = None, threshold: float | None = None,
            nan_policy: str | None = None, detector: str | None = None,
            params: Mapping[str, float] | None = None) -> Iterator[NDArray[np.int64]]:
        """detect() over many arrays, answers in order (like Executor.map), with at
        most *in_flight* calls running at once (default: twice the workers).
        *timeout* counts from this call; a result not ready by then raises
        DetectTimeout (also a TimeoutError)."""
        kwargs = _given(threshold=threshold, nan_policy=nan_policy, detector=detector,
                        params=params)
        limit = in_flight or 2 * self._parallelism
        if limit < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight!r}")
        end = None if timeout is None else time.monotonic() + timeout
        source = iter(arrays)

        def results():
            window: collections.deque = collections.deque()
            try:
                for x in source:
                    window.append(self.submit(x, **kwargs))
                    if len(window) >= limit:
                        yield _result(window.popleft(), end)
                while window:
                    yield _result(window.popleft(), end)
            finally:
                for fut in window:
                    fut.cancel()

        return results()

    async def detect_async(self, x: Any, *, timeout: float | None = None,
                           threshold: float | None = None, nan_policy: str | None = None,
                           detector: str | None = None,
                           params: Mapping[str, float] | None = None) -> NDArray[np.int64]:
        """``await pool.detect_async(x)``: detect() without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(
            x, timeout=timeout, threshold=threshold, nan_policy=nan_policy, detector=detector,
            params=params))

    def _stop_executor(self) -> None:
        with _lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown()


def _given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments actually given (not None), passed on to detect()."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _result(fut: concurrent.futures.Future, end: float | None):
    try:
        return fut.result(None if end is None else max(0.0, end - time.monotonic()))
    except concurrent.futures.TimeoutError:
        raise DetectTimeout("map(): a result was not ready within the timeout") from None
