"""A pool of detector worker processes fed through shared memory.

Data flow of one ``Pool.detect(x)``::

    caller thread (host)                              worker process
    --------------------                              --------------
    x ──copy──> data segment ─────────── mapped read-only ──> view of x
    (or x already lives in one:
     pool.empty(n), zero-copy)
                  request (fixed-size struct) ──socket──>  kernel(view)
                                                              │ int64 indices
                  result segment <──────── mapped read-write ─┘
                  <──socket── reply (count, or error + traceback)
    result segment ──> ndarray the caller owns (or the caller's ReturnSegment)

Who does what:

* The calling thread does its own I/O: it takes idle workers, writes the
  request to each worker's socket and blocks on the reply (the GIL is
  released), so there is no dispatcher thread to hop through.
* A small array goes to one worker.  A large one is split into one chunk per
  idle worker: every worker computes partial statistics of its chunk, the
  caller combines them once, and every worker then flags its chunk
  (shmpool.detectors holds that arithmetic).
* Each worker slot owns a small input segment and a result segment, reused
  for every call; large inputs borrow a staging segment from a small cache.
  Nothing on the hot path pickles, creates a segment or starts a process.
* A worker that dies or overruns its timeout fails only the calls it held;
  the slot starts a new worker when next used.
* The pool creates, and alone unlinks, every segment it uses; a caller's
  ReturnSegment is the caller's to close and unlink.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import select
import signal
import socket
import threading
import time
import weakref

import numpy as np

from . import detectors
from ._forms import CallForms
from . import layout as L
from ._backend import wire
from ._backend import worker as worker_mod
from ._backend.segment import Segment, _ident, reap_orphans
from ._backend.sockets import recv_spinning
from .errors import (BrokenPool, DetectTimeout, PoolClosed, ResultTooSmall,
                     ShmpoolError, WorkerDied, from_status)
from .returns import ReturnSegment

SPLIT_MIN = 1 << 18        # elements below which one worker takes the whole array
SLOT_INPUT = 1 << 16       # elements of each slot's own input segment
SLOT_RESULT = 1 << 16      # initial indices of each slot's result segment
STAGING_KEPT = 4           # large staging segments kept for reuse
SPIN_SECONDS = 250e-6      # spin for a reply this long before sleeping (see recv_spinning)


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class _Slot:
    """One worker position: a process, its socket, and the segments it reuses."""

    proc = None
    sock: socket.socket | None = None
    poller = None
    input: Segment | None = None
    result: Segment | None = None

    def __init__(self, index: int):
        self.index = index
        self.forget: list[str] = []   # segment names the worker should unmap


class Pool(CallForms):
    """Detector workers on shared memory.

    ``Pool(workers=None, detector="classic", threshold=2.0, nan_policy="raise",
    start_method="forkserver", timeout=None)``.  Every method is safe to call
    from many threads at once.  Use it as a context manager, or call close().

    *detector* is ``"classic"`` (|x - mean| > threshold * std) or
    ``"package.module:function"``, a function taking a read-only float64
    array (and ``threshold=`` if it has that parameter) and returning indices.
    *nan_policy* ("raise", "omit", "propagate") says what NaN and inf mean to
    the classic detector; see docs/LAYOUT.md section 4.  *memory_limit*
    (bytes) caps each worker's own allocations (RLIMIT_DATA): a detector that
    exceeds it raises MemoryError in its worker, reported as DetectorError.
    """

    _closed = True               # a half-built pool is a closed one
    _finalizer = None

    def __init__(self, workers: int | None = None, *, detector: str = detectors.CLASSIC,
                 threshold: float = 2.0, nan_policy: str = "raise",
                 start_method: str | None = None, timeout: float | None = None,
                 startup_timeout: float = 60.0, memory_limit: int | None = None):
        if workers is None:
            workers = len(os.sched_getaffinity(0))
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.detector, self.threshold, self.nan_policy = _check_settings(detector, threshold, nan_policy)
        self.workers = workers
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit <= 0):
            raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
        self.memory_limit = memory_limit
        self._ctx = multiprocessing.get_context(start_method or "forkserver")
        if self._ctx.get_start_method() == "forkserver":
            self._ctx.set_forkserver_preload(["numpy", "shmpool._backend.worker"])

        self._cond = threading.Condition()
        self._slots = [_Slot(i) for i in range(workers)]
        self._idle = list(self._slots)
        self._busy = 0
        self._staging: list[Segment] = []          # free large input segments
        self._shared: dict[int, tuple[int, Segment]] = {}   # address -> (end, segment of empty())
        self._owned: set[str] = set()               # every segment name this pool must unlink
        self._procs: list = []                      # every worker process, for the finalizer
        self._closed = False
        self._finalizer = weakref.finalize(self, _emergency_cleanup, self._owned, self._procs)
        reap_orphans()
        try:
            for slot in self._slots:
                self._start(slot)
        except BaseException:
            self.close()
            raise

    # -- public API ---------------------------------------------------------------

    def detect(self, x, *, out: ReturnSegment | None = None, timeout: float | None = None,
               threshold: float | None = None, nan_policy: str | None = None):
        """Indices of the outliers in the 1-D real array *x*, ascending.

        Returns a new int64 ndarray, or, with ``out=``, a read-only view of
        the indices written into that ReturnSegment (ResultTooSmall if it
        cannot hold them; the segment's count is then 0).
        """
        x = _as_real_1d(x)
        k = self.threshold if threshold is None else _check_threshold(threshold)
        policy = self.nan_policy if nan_policy is None else _check_policy(nan_policy)
        if out is not None and not isinstance(out, ReturnSegment):
            raise TypeError(f"out must be a ReturnSegment, not {type(out).__name__}")
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._closed:
            raise PoolClosed("the pool is closed")
        n = len(x)
        if n == 0:
            if out is not None:
                out._seg.set_result(L.Status.OK, 0, 0)
                return out.indices
            return np.empty(0, dtype=np.int64)
        split = self.detector == detectors.CLASSIC and n >= SPLIT_MIN
        want = min(self.workers, max(1, n // (SPLIT_MIN // 2))) if split else 1
        slots = self._acquire(want, deadline)
        try:
            data_name, start, staging = self._place(x, slots)
            try:
                return self._run(slots, data_name, start, n, out, k, policy, deadline, 0)
            finally:
                if staging is not None:
                    self._return_staging(staging)
        finally:
            self._release(slots)

    @property
    def _parallelism(self) -> int:
        return self.workers

    def empty(self, n: int) -> np.ndarray:
        """A float64 array of length *n* living in shared memory.

        Fill it in place; ``detect`` on it (or on a contiguous slice of it)
        copies nothing.  Its segment is unlinked when the array (with every
        view of it) is garbage, or when the pool closes.
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if self._closed:
            raise PoolClosed("the pool is closed")
        seg = self._new_segment(int(n), L.KIND_DATA)
        seg.set_count(int(n))
        arr = seg.new_view()
        addr = arr.__array_interface__["data"][0]
        with self._cond:
            self._shared[addr] = (addr + 8 * int(n), seg)
        weakref.finalize(arr.base, _drop_shared, weakref.ref(self), addr)
        return arr

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers and unlink every segment the pool created.

        Calls in flight get *timeout* seconds to finish, then their workers
        are killed and they raise PoolClosed.  Safe to call twice.
        """
        with self._cond:
            if self._closed and not self._slots:
                return
            self._closed = True
            self._cond.notify_all()
            end = time.monotonic() + timeout
            while self._busy and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
            busy = [s for s in self._slots if s not in self._idle]
        for slot in busy:                 # overran the grace period: end them
            if slot.proc is not None and slot.proc.is_alive():
                slot.proc.kill()
        with self._cond:
            end = time.monotonic() + 5.0
            while self._busy and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
            slots, self._slots, self._idle = self._slots, [], []
            shared, self._shared = list(self._shared.values()), {}
            staging, self._staging = self._staging, []
        for slot in slots:
            self._stop(slot)
            for seg in (slot.input, slot.result):
                if seg is not None:
                    self._destroy(seg)
        for seg in staging:
            self._destroy(seg)
        for _end, seg in shared:
            self._destroy(seg)             # live arrays keep their mapping, not the name
        self._stop_executor(wait=False)
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(timeout=10.0 if exc_type is None else 1.0)

    def __repr__(self):
        state = "closed" if self._closed else f"workers={self.workers}"
        return f"<shmpool.Pool {state} detector={self.detector!r} threshold={self.threshold}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        """Pids of the live workers (for monitoring and tests)."""
        return [s.proc.pid for s in list(self._slots) if s.proc is not None and s.proc.is_alive()]

    # -- slots --------------------------------------------------------------------

    def _acquire(self, want: int, deadline: float | None) -> list[_Slot]:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise PoolClosed("the pool is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DetectTimeout("timed out waiting for an idle worker")
                self._cond.wait(left)
            if self._closed:
                raise PoolClosed("the pool is closed")
            take = self._idle[-want:]
            del self._idle[-want:]
            self._busy += len(take)
        try:
            for slot in take:
                if slot.proc is not None and slot.poller.poll(0):
                    self._stop(slot)     # readable while idle: it died between calls
                if slot.proc is None:
                    self._start(slot)
        except BaseException:
            self._release(take)
            raise
        return take

    def _release(self, slots: list[_Slot]) -> None:
        with self._cond:
            self._busy -= len(slots)
            if not self._closed or self._slots:
                self._idle.extend(slots)
            self._cond.notify_all()

    def _start(self, slot: _Slot) -> None:
        if slot.input is None:
            slot.input = self._new_segment(SLOT_INPUT, L.KIND_DATA)
            slot.result = self._new_segment(SLOT_RESULT, L.KIND_RESULT)
        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            close_fds = []
            if self._ctx.get_start_method() == "fork":
                # A forked child inherits every host-side socket; it must close
                # them, or a dead host (or sibling) would never read as EOF.
                close_fds = [s.sock.fileno() for s in self._slots if s.sock is not None]
                close_fds.append(host.fileno())
            proc = self._ctx.Process(target=worker_mod.main, name=f"shmpool-worker-{slot.index}",
                                     args=(child, self.detector, _ident(), close_fds,
                                           self.memory_limit), daemon=True)
            proc.start()
        except BaseException:
            host.close()
            raise
        finally:
            child.close()
        self._procs.append(proc)
        slot.proc, slot.sock, slot.forget = proc, host, []
        try:
            host.settimeout(self.startup_timeout)
            ready = host.recv(wire.MAX_REP)
            host.setblocking(False)
            slot.poller = select.poll()
            slot.poller.register(host, select.POLLIN)
        except OSError as e:
            self._stop(slot)
            raise BrokenPool(f"worker did not start: {e}") from None
        if not ready:
            code = _reap(proc)
            self._stop(slot)
            raise BrokenPool(f"worker failed to start ({_signal_name(code)})")
        rep = wire.unpack_rep(ready)
        if rep.status != L.Status.OK:
            self._stop(slot)
            raise from_status(rep.status, rep.error_type, rep.message, rep.traceback)

    def _stop(self, slot: _Slot) -> int | None:
        """End the slot's worker (if any); returns its exit code."""
        proc, sock = slot.proc, slot.sock
        slot.proc = slot.sock = None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        code = None
        if proc is not None:
            code = _reap(proc)
            try:
                self._procs.remove(proc)
            except ValueError:
                pass
        return code

    def _retire(self, slot: _Slot, why: BaseException | None = None) -> ShmpoolError:
        """Kill the slot's worker after a failure; the slot restarts when next used."""
        proc = slot.proc
        if proc is not None and proc.is_alive() and why is not None:
            proc.kill()
        code = self._stop(slot)
        if self._closed:
            return PoolClosed("the pool was closed while the call ran")
        return WorkerDied(f"worker {slot.index} (pid {proc.pid if proc else '?'}) died during "
                          f"the call: {_signal_name(code)}")

    # -- segments -----------------------------------------------------------------

    def _new_segment(self, capacity: int, kind: int) -> Segment:
        seg = Segment.create(capacity, kind)
        self._owned.add(seg.name)
        return seg

    def _destroy(self, seg: Segment) -> None:
        """Unlink a segment of the pool's and ask every worker to unmap it."""
        seg.unlink()
        seg.close()
        self._owned.discard(seg.name)
        with self._cond:
            for slot in self._slots:
                if slot.proc is not None:
                    slot.forget.append(seg.name)

    def _place(self, x: np.ndarray, slots: list[_Slot]) -> tuple[str, int, Segment | None]:
        """Where the worker reads x: (segment name, first element, staging to return)."""
        if x.dtype == np.float64 and x.strides[0] == 8 and self._shared:
            addr = x.__array_interface__["data"][0]
            with self._cond:
                for start, (end, seg) in self._shared.items():
                    if start <= addr and addr + 8 * len(x) <= end and (addr - start) % 8 == 0:
                        return seg.name, (addr - start) // 8, None
        n = len(x)
        if len(slots) == 1 and n <= SLOT_INPUT:
            seg, staging = slots[0].input, None
        else:
            seg = staging = self._take_staging(n)
        np.copyto(seg.region()[:n], x, casting="same_kind")
        seg.set_count(n)
        return seg.name, 0, staging

    def _take_staging(self, n: int) -> Segment:
        with self._cond:
            fits = [s for s in self._staging if n <= s.capacity <= 2 * n]
            if fits:
                seg = min(fits, key=lambda s: s.capacity)
                self._staging.remove(seg)
                return seg
        return self._new_segment(-(-n // SLOT_INPUT) * SLOT_INPUT, L.KIND_DATA)

    def _return_staging(self, seg: Segment) -> None:
        with self._cond:
            if not self._closed:
                self._staging.append(seg)
                if len(self._staging) <= STAGING_KEPT:
                    return
                seg = self._staging.pop(0)
        self._destroy(seg)

    def _grow_result(self, slot: _Slot, needed: int) -> None:
        old = slot.result
        slot.result = self._new_segment(1 << max(needed - 1, 1).bit_length(), L.KIND_RESULT)
        self._destroy(old)

    # -- one call -----------------------------------------------------------------

    def _send(self, slot: _Slot, req: wire.Req) -> None:
        if slot.forget:
            names, slot.forget = slot.forget, []
            for a, b in zip(names[::2], names[1::2] + [""]):
                slot.sock.send(wire.pack_req(wire.Req(wire.FORGET, data_name=a, out_name=b)))
        slot.sock.send(wire.pack_req(req))

    def _recv(self, slot: _Slot, deadline: float | None) -> wire.Rep:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            buf = recv_spinning(slot.sock, slot.poller, wire.MAX_REP, SPIN_SECONDS,
                                None if left is None else math.ceil(left * 1000))
            if buf is None:
                raise TimeoutError
        except TimeoutError:
            self._retire(slot, TimeoutError())
            raise DetectTimeout("detect did not finish in time; its worker was stopped "
                                "and will be replaced") from None
        except OSError as e:
            buf = b""
            cause = e
        else:
            cause = None
        if not buf:
            raise self._retire(slot) from cause
        return wire.unpack_rep(buf)

    def _exchange_all(self, slots, reqs, deadline) -> list[wire.Rep]:
        """Send one request to each slot, then collect every reply.

        Every slot that was sent a request is drained or retired before this
        returns or raises, so no reply is ever left for the next call.
        """
        sent = []
        reps: list[wire.Rep | None] = [None] * len(slots)
        error: BaseException | None = None
        try:
            for slot, req in zip(slots, reqs):
                self._send(slot, req)
                sent.append(slot)
        except OSError:
            error = self._retire(slot)
        except BaseException as e:
            self._retire(slot, e)
            error = e
        for i, slot in enumerate(sent):
            if slot.sock is None:
                continue
            try:
                reps[i] = self._recv(slot, deadline)
            except ShmpoolError as e:
                error = error or e
            except BaseException as e:   # KeyboardInterrupt: the worker's state is unknown
                self._retire(slot, e)
                error = error or e
        if error is not None:
            raise error
        for rep in reps:
            if rep.status != L.Status.OK:
                raise from_status(rep.status, rep.error_type, rep.message, rep.traceback, rep.needed)
        return reps

    def _run(self, slots, data_name, start, n, out, k, policy, deadline, flags) -> np.ndarray:
        pcode = wire.POLICY_CODES[policy]
        if len(slots) == 1:
            slot = slots[0]
            target = out._seg if out is not None else slot.result
            [rep] = self._exchange_all(slots, [wire.Req(
                wire.DETECT, pcode, flags, start, n, threshold=k,
                data_name=data_name, out_name=target.name)], deadline)
            if out is not None:
                if not rep.fits:
                    raise ResultTooSmall(f"the answer has {rep.needed} indices; the return segment "
                                         f"holds {out.capacity}; count is 0, no index was written",
                                         rep.needed, out.capacity)
                return out.indices
            self._ensure_written(slot, rep, deadline)
            return slot.result.region()[:rep.needed].copy()

        def stats(chunks):
            reps = self._exchange_all(slots, [
                wire.Req(wire.STATS, pcode, flags, start + a, b - a, data_name=data_name)
                for a, b in chunks], deadline)
            return [detectors.Stats(r.n, r.mean, r.m2, r.nonfinite, r.first_nonfinite)
                    for r in reps]

        def flag(chunks, mean, cut):
            reps = self._exchange_all(slots, [
                wire.Req(wire.THRESH, pcode, flags, start + a, b - a, base=a, mean=mean, cut=cut,
                         data_name=data_name, out_name=slot.result.name)
                for slot, (a, b) in zip(slots, chunks)], deadline)
            for slot, rep in zip(slots, reps):
                self._ensure_written(slot, rep, deadline)
            return [(slot, rep.needed) for slot, rep in zip(slots, reps)]

        parts = detectors.two_phase(detectors.split(n, len(slots)), k, policy, stats, flag) or []
        needed = sum(c for _, c in parts)
        if out is None:
            result = np.empty(needed, dtype=np.int64)
            dest = result
        else:
            if needed > out.capacity:
                out._seg.set_result(L.Status.TOO_SMALL, 0, needed)
                raise ResultTooSmall(f"the answer has {needed} indices; the return segment "
                                     f"holds {out.capacity}; count is 0, no index was written",
                                     needed, out.capacity)
            dest = out._seg.region()
        pos = 0
        for slot, c in parts:
            dest[pos:pos + c] = slot.result.region()[:c]
            pos += c
        if out is None:
            return result
        out._seg.set_result(L.Status.OK, needed, needed)
        return out.indices

    def _ensure_written(self, slot: _Slot, rep: wire.Rep, deadline) -> None:
        """If the answer did not fit the slot's result segment, grow it and WRITE."""
        if rep.fits:
            return
        self._grow_result(slot, rep.needed)
        [rep] = self._exchange_all([slot], [wire.Req(wire.WRITE, out_name=slot.result.name)],
                                   deadline)
        if not rep.fits:
            raise ShmpoolError("grown result segment still too small")

    # -- for shmpool serve --------------------------------------------------------

    def detect_segments(self, data_name: str, start: int, count: int, out_name: str, *,
                        threshold: float | None = None, nan_policy: str | None = None,
                        timeout: float | None = None) -> tuple[int, int]:
        """Detect over a foreign host's segments, the worker writing straight
        into its result segment.  Returns (written, needed); written is 0 when
        the result segment is too small (its header says TOO_SMALL)."""
        k = self.threshold if threshold is None else _check_threshold(threshold)
        policy = self.nan_policy if nan_policy is None else _check_policy(nan_policy)
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        slots = self._acquire(1, deadline)
        try:
            [rep] = self._exchange_all(slots, [wire.Req(
                wire.DETECT, wire.POLICY_CODES[policy], wire.VERIFY, start, count, threshold=k,
                data_name=data_name, out_name=out_name)], deadline)
            return rep.written, rep.needed
        finally:
            self._release(slots)

    def forget_segments(self, names) -> None:
        """Ask every worker to unmap these (foreign) segments."""
        with self._cond:
            for slot in self._slots:
                if slot.proc is not None:
                    slot.forget.extend(names)


def _reap(proc) -> int | None:
    proc.join(2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)
    return proc.exitcode


def _drop_shared(pool_ref, addr: int) -> None:
    pool = pool_ref()
    if pool is None:
        return
    with pool._cond:
        entry = pool._shared.pop(addr, None)
    if entry is not None:
        pool._destroy(entry[1])


def _emergency_cleanup(owned: set[str], procs: list) -> None:
    """Runs if a pool is garbage-collected or the interpreter exits unclosed."""
    for proc in list(procs):
        try:
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    for name in list(owned):
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass
    owned.clear()


def _check_settings(detector, threshold, nan_policy) -> tuple[str, float, str]:
    """A pool's (detector, threshold, nan_policy), checked; shared by every pool."""
    detectors.check_spec(detector)
    return detector, _check_threshold(threshold), _check_policy(nan_policy)


def _check_threshold(k) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a real number, not {type(k).__name__}")
    k = float(k)
    if not (math.isfinite(k) and k >= 0):
        raise ValueError(f"threshold must be finite and >= 0, got {k!r}")
    return k


def _check_policy(p) -> str:
    if p not in detectors.NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {detectors.NAN_POLICIES}, got {p!r}")
    return p


def _as_real_1d(x) -> np.ndarray:
    """x as a 1-D real ndarray (not yet float64), or a TypeError/ValueError."""
    if x is None:
        raise TypeError("detect() needs a 1-D array of real numbers, got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"detect() needs a 1-D array of real numbers, got {type(x).__name__}")
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise ValueError(f"detect() cannot make an array of the input: {e}") from None
    kind = x.dtype.kind
    if kind == "c":
        raise TypeError(f"detect() needs real numbers; got complex dtype {x.dtype}")
    if kind not in "biuf":
        raise TypeError(f"detect() needs real numbers; got dtype {x.dtype} "
                        f"({'strings' if kind in 'SU' else 'objects' if kind == 'O' else x.dtype.name})")
    if x.ndim != 1:
        raise ValueError(f"detect() needs a 1-D array; got shape {x.shape}")
    return x
