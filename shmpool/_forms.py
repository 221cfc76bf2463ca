"""submit() and detect_async(), the same for every pool, on top of detect()."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from .errors import PoolClosed

_lock = threading.Lock()     # guards the lazy creation of each pool's executor


class CallForms:
    """Mixin: a pool with ``detect``, ``closed`` and ``_parallelism`` gains
    ``submit`` (a concurrent.futures.Future) and ``detect_async``."""

    _executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, x, **kwargs) -> concurrent.futures.Future:
        """detect() on a pool thread; do not modify x until the future is done."""
        with _lock:
            if self.closed:
                raise PoolClosed("the pool is closed")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=2 * self._parallelism + 2, thread_name_prefix="shmpool-submit")
            return self._executor.submit(self.detect, x, **kwargs)

    async def detect_async(self, x, **kwargs):
        """``await pool.detect_async(x)``: detect() without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(x, **kwargs))

    def _stop_executor(self, wait: bool) -> None:
        with _lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=wait, cancel_futures=True)
