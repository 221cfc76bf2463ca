"""A pool of detector worker processes fed through shared memory.

Data flow of one ``Pool.detect(x)``::

    caller thread (host)                              worker process i
    --------------------                              ----------------
    x ──copy──> lane i's input segment ── mapped read-only ──> view of x
    (or x already lives in one: pool.empty(n), zero-copy)
                DETECT (docs/LAYOUT.md) ──lane i (socket pair)──>  detector(view): the
                                                                   classic in C, others Python
                                                                     │ int64 indices
                lane i's result segment <──── mapped read-write ─────┘
                <──lane i── reply (count, or error + traceback)
    result segment ──> ndarray the caller owns (or the caller's ReturnSegment)

Who does what:

* The pool is one more host of the protocol every host speaks: it starts its
  workers (_backend.workers, by a zygote that never imports ``__main__``)
  and holds one lane to each.
* The calling thread does its own I/O; a call takes lanes by token, so no
  interrupt can leak one.  A small array goes to one lane; a large one is
  split over several (summaries, one combine, flags: _host.run_split), with
  a number of chunks that depends on the size and the pool, never on load.
* A worker that dies, overruns its timeout or is interrupted mid-call fails
  only the calls it held; its lane starts a new worker when next taken.
* The pool creates, and alone unlinks, every segment it uses; a caller's
  ReturnSegment is the caller's.  A forked child never touches its parent's
  workers or segments: using the pool there raises BrokenPool.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from . import detectors
from . import layout as L
from ._backend import segment as seg_mod
from ._backend.launch import START_METHODS
from ._backend.segment import Segment, reap_orphans
from ._backend.workers import Workers, killed_starting
from ._forms import CallForms
from ._host import (
    LANE_INPUT,
    LANE_RESULT,
    Lane,
    LaneBroken,
    Lanes,
    LaneTimeout,
    Staging,
    Token,
    deadline_of,
    destroy_owned,
    died,
    gather,
    owned_segment,
    result_capacity,
    run_split,
    run_whole,
    too_small_message,
)
from .errors import BrokenPool, DetectTimeout, PoolClosed, ResultTooSmall, WorkerDied
from .returns import ReturnSegment

STAGING_KEPT = 4           # large input segments kept for reuse
DRAIN_SECONDS = 2.0        # how long a failed split call waits for its other workers' replies


class Pool(CallForms):
    """Detector workers on shared memory.

    ``Pool(workers=None, *, detector="classic", threshold=None, nan_policy="raise",
    start_method="forkserver", timeout=None, startup_timeout=60.0,
    memory_limit=None)``.  Every method is safe to call from many threads at
    once.  Use it as a context manager, or call close().

    *detector* is ``"classic"`` (|x - mean| > threshold * std), a
    ``"package.module:name"`` naming a SplitDetector (split over workers like
    the classic one) or a plain function (run whole on one worker), or a list
    of these (the first is the default; ``detect(detector=...)`` picks one).
    *threshold*, when given, replaces the default of every detector's
    ``threshold`` parameter; otherwise each keeps its own (classic: 2.0).
    *nan_policy* ("raise", "omit", "propagate") says what NaN and inf mean;
    see docs/LAYOUT.md 4.2.  *timeout* (seconds, None or inf for none) bounds
    every call.  *memory_limit* (bytes) caps each worker's own allocations
    (RLIMIT_DATA): a detector that exceeds it raises MemoryError in its
    worker, reported as DetectorError.  *start_method* is "forkserver" (a
    preloaded zygote; the default), "spawn" or "fork".
    """

    _closed = True               # a half-built pool is a closed one
    _finalizer = None
    _workers: Workers = None  # type: ignore[assignment]   # None only while half-built
    _owner_pid = 0
    _forked = False              # set in a forked child (os.register_at_fork)
    _policy = 0

    def __init__(self, workers: int | None = None, *, detector: str | list[str] = detectors.CLASSIC,
                 threshold: float | None = None, nan_policy: str = "raise",
                 start_method: str | None = None, timeout: float | None = None,
                 startup_timeout: float = 60.0, memory_limit: int | None = None):
        if workers is None:
            workers = len(os.sched_getaffinity(0))
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.specs = check_specs(detector)
        self.detector = self.specs[0]
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.nan_policy = check_policy(nan_policy)
        self._policy = L.POLICY_CODES[self.nan_policy]
        self.workers = workers
        self.timeout = check_timeout(timeout)
        self.startup_timeout = startup_timeout
        if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit <= 0):
            raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
        self.memory_limit = memory_limit
        method = start_method or "forkserver"
        if method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {method!r}")
        self.start_method = method
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()                 # worker (re)starts
        self._owned: set[str] = set()                 # every segment name this pool must unlink
        self._staging = Staging(self._owned, STAGING_KEPT)
        self._shared: dict[int, tuple[int, Segment]] = {}   # address -> (end, segment of empty())
        self._rows: list[L.DetectorRow] = []
        self._lanes = Lanes([])
        self._workers = Workers(workers, {
            "specs": self.specs, "defaults": threshold_defaults(self.threshold),
            "nan_policy": self.nan_policy, "memory_limit": memory_limit, "timeout": None},
            method, startup_timeout)
        self._closed = False
        self._finalizer = weakref.finalize(self, _emergency_cleanup, self._owner_pid,
                                           self._owned, self._workers)
        _POOLS.add(self)
        reap_orphans()
        try:
            self._lanes.all.extend(self._start_lane(i) for i in range(workers))
        except BaseException:
            self.close()
            raise

    # -- public API ---------------------------------------------------------------

    def detect(self, x, *, out: ReturnSegment | None = None, timeout: float | None = None,
               threshold: float | None = None, nan_policy: str | None = None,
               detector: str | None = None, params: Mapping[str, float] | None = None
               ) -> NDArray[np.int64]:
        """Indices of the outliers in the 1-D real array *x*, ascending.

        *detector* picks one of the pool's detectors by name (default: the
        first); *params* sets its parameters for this call by name
        (``threshold=k`` is short for ``params={"threshold": k}``).  Returns a
        new int64 ndarray, or, with ``out=``, a read-only view of the indices
        written into that ReturnSegment (ResultTooSmall if it cannot hold
        them: its count is then 0 and its contents unspecified).
        """
        x = as_real_1d(x)
        row = 0 if detector is None else self._row(detector)
        values = () if threshold is None and params is None else self._params(row, threshold, params)
        policy = self._policy if nan_policy is None else L.POLICY_CODES[check_policy(nan_policy)]
        if out is not None and not isinstance(out, ReturnSegment):
            raise TypeError(f"out must be a ReturnSegment, not {type(out).__name__}")
        if timeout is None and self.timeout is None:
            deadline = None
        else:
            deadline = deadline_of(self.timeout if timeout is None else check_timeout(timeout))
        if self._forked or self._closed:
            self._check_usable()
        n = len(x)
        if n == 0:
            if out is not None:
                out._seg.set_result(0, L.Status.OK, 0)
                return out.indices
            return np.empty(0, dtype=np.int64)
        k = 1 if n < L.SPLIT_MIN or not self._rows[row].split else L.split_count(n, self.workers)
        token = Token()
        try:
            lanes = self._take(token, k, deadline)
            if k == 1:
                answer = self._whole(token, lanes[0], x, out, row, policy, values, deadline)
            else:
                answer = self._split(token, lanes, x, out, row, policy, values, deadline)
        except WorkerDied:
            self._settle(token, drain=True)    # a split call's other workers are fine
            raise
        except BaseException:
            self._settle(token)
            raise
        self._lanes.give_back(lanes)      # (an interrupt here: they come back with the token)
        if token.staged:
            self._settle(token)
        return answer

    def empty(self, n: int) -> np.ndarray:
        """A float64 array of length *n* living in shared memory.

        Fill it in place; ``detect`` on it (or on a contiguous slice of it)
        copies nothing.  Its segment is unlinked when the array (with every
        view of it) is garbage, or when the pool closes.
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        self._check_usable()
        seg = self._new_segment(int(n), L.KIND_DATA)
        seg.set_count(int(n))
        arr = seg.new_view()
        addr = arr.__array_interface__["data"][0]
        with self._lock:
            self._shared[addr] = (addr + 8 * int(n), seg)
        weakref.finalize(arr.base, _drop_shared, weakref.ref(self), addr)
        return arr

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers and unlink every segment the pool created.

        Calls in flight get *timeout* seconds to finish, then their workers
        are killed and they raise PoolClosed.  Safe to call twice.
        """
        if os.getpid() != self._owner_pid:
            self._closed = True           # a forked child's copy: the parent's to close
            return
        lanes = self._lanes
        if self._closed and lanes.closed:
            return
        self._closed = True
        lanes.close()
        _wait_idle(lanes, timeout)
        if self._workers is not None:
            self._workers.close()         # ends the calls still running: they raise PoolClosed
        _wait_idle(lanes, 5.0)
        for lane in lanes.all:
            lane.close()
        with self._lock:
            shared, self._shared = list(self._shared.values()), {}
        self._staging.clear()
        for _end, segment in shared:
            self._destroy(segment)        # live arrays keep their mapping, not the name
        self._stop_executor()
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(timeout=10.0 if exc_type is None else 1.0)

    def __repr__(self):
        state = "closed" if self._closed else f"workers={self.workers}"
        given = "" if self.threshold is None else f" threshold={self.threshold}"
        return f"<shmpool.Pool {state} detector={self.detector!r}{given}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def detectors(self) -> list[L.DetectorRow]:
        """The detector table the workers serve (docs/LAYOUT.md 2.5)."""
        return list(self._rows)

    def worker_pids(self) -> list[int]:
        """Pids of the live workers (for monitoring and tests)."""
        return self._workers.pids() if self._workers is not None else []

    @property
    def _parallelism(self) -> int:
        return self.workers

    # -- lanes --------------------------------------------------------------------

    def _start_lane(self, i: int, replacing: bool = False) -> Lane:
        """Start worker i and a lane to it: INFO tells its pid and the table.
        *replacing*: see Workers.start."""
        with self._lock:
            pid = self._workers.start(i, replacing).pid
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        lane = Lane(ours, i)
        try:
            try:
                with self._lock:
                    self._workers.give(i, theirs.fileno(), i, os.getpid())
            finally:
                theirs.close()
            got = lane.exchange(lane.packet(L.Op.INFO, 0, 0, 0, 0, 0),
                                time.monotonic() + self.startup_timeout)
            info = lane.reply(got)
            lane.pid = int(info.values[L.INFO_PID]) if info.values else (pid or 0)
            if not self._rows:
                self._rows = L.parse_table(info.message)
            lane.data = self._new_segment(LANE_INPUT, L.KIND_DATA)
            lane.result = self._new_segment(LANE_RESULT, L.KIND_RESULT)
        except BaseException as e:
            lane.sock.close()
            how = self._workers.stop(i)
            if replacing and isinstance(e, (LaneBroken, OSError)) and how.startswith("killed"):
                raise killed_starting(i, pid, how) from None
            if isinstance(e, (LaneBroken, LaneTimeout)):
                raise BrokenPool(f"worker {i} did not answer: {e}") from None
            raise
        return lane

    def _take(self, token: Token, want: int, deadline: float | None) -> list[Lane]:
        lanes = self._lanes.take(token, want, deadline, self._closed_error)
        for lane in lanes:
            if lane.pending or lane.fd < 0 or want > 1:
                if lane.pending:                 # an interrupted call left a reply coming
                    self._retire(lane)
                if lane.fd < 0:                  # retired: a new worker for it
                    self._restart(lane)
                elif want > 1 and not lane.alive():   # died while idle (whole calls retry instead)
                    self._retire(lane)
                    self._restart(lane)
        return lanes

    def _restart(self, lane: Lane) -> None:
        fresh = self._start_lane(lane.index, replacing=True)
        lane.sock, lane.fd, lane.pid = fresh.sock, fresh.fd, fresh.pid
        lane.pending, lane.template = 0, None
        for old in (lane.data, lane.result):
            if old is not None:
                self._destroy(old)
        lane.data, lane.result = fresh.data, fresh.result

    def _retire(self, lane: Lane) -> str:
        """Kill the lane's worker (its state is unknown); how it ended."""
        if lane.fd < 0:
            return "stopped"
        lane.sock.close()
        lane.fd = -1
        how = self._workers.stop(lane.index, kill=True) if self._workers is not None else "stopped"
        lane.pending = 0
        return how

    def _settle(self, token: Token, drain: bool = False) -> None:
        """After a call, however it ended: retire lanes left mid-exchange (or,
        with *drain*, first wait a moment for their replies), release all.
        (Lanes also come back by themselves when the token dies: see Lanes.)"""
        try:
            for lane in self._lanes.held_by(token):
                if drain and lane.pending and lane.fd >= 0 and not lane.doomed:
                    _drain(lane, time.monotonic() + DRAIN_SECONDS)
                if lane.pending or lane.doomed:
                    self._retire(lane)
                    lane.doomed = False
            self._staging.release(token)
        finally:
            self._lanes.release(token)

    def _closed_error(self) -> Exception:
        return PoolClosed("the pool is closed")

    def _check_usable(self) -> None:
        if self._forked or os.getpid() != self._owner_pid:
            raise BrokenPool(f"this Pool belongs to process {self._owner_pid}; a forked child "
                             "cannot use its parent's workers: create a Pool in the child")
        if self._closed:
            raise PoolClosed("the pool is closed")

    def _failed(self, e: LaneBroken | LaneTimeout) -> Exception:
        """The error a call raises when its lane broke or timed out."""
        lane = e.lane
        if isinstance(e, LaneTimeout):
            self._retire(lane)
            if self._closed:
                return PoolClosed("the pool was closed while the call ran")
            return DetectTimeout("detect did not finish in time; its worker was stopped and "
                                 "will be replaced")
        if not e.sent and not self._closed:
            return e                       # nothing ran: the caller may retry once
        how = self._retire(lane)
        if self._closed:
            return PoolClosed("the pool was closed while the call ran")
        return died(lane, how)

    # -- calls --------------------------------------------------------------------

    def _row(self, detector: str | None) -> int:
        if detector is None:
            return 0
        for i, row in enumerate(self._rows):
            if row.name == detector:
                return i
        raise ValueError(f"detector {detector!r} is not one of this pool's: "
                         f"{[r.name for r in self._rows]}")

    def _params(self, row: int, threshold, params) -> tuple:
        """The request's parameters, in the row's order; NaN leaves the default."""
        return request_params(self._rows[row], threshold, params)

    def _whole(self, token: Token, lane: Lane, x: np.ndarray, out: ReturnSegment | None,
               row: int, policy: int, params, deadline) -> np.ndarray:
        retried = False
        data_name, start, own = self._place(token, x, lane)
        while True:
            target = out._seg if out is not None else lane.result
            try:
                count, needed = run_whole(lane, data_name, start, len(x), target, row, policy,
                                          params, deadline, own)
            except (LaneBroken, LaneTimeout) as e:
                err = self._failed(e)
                if err is e and not retried:     # its worker had died while idle: once more
                    retried = True
                    self._retire(lane)
                    old_input = lane.data.name
                    self._restart(lane)          # a new lane input (staging stays ours)
                    if data_name == old_input:
                        data_name, start, own = self._place(token, x, lane)
                    continue
                raise err from None
            if count == needed:
                break
            if out is not None:
                raise ResultTooSmall(too_small_message(needed, out.capacity), needed, out.capacity)
            self._grow(lane, needed)
            own = None                           # x is in the lane's input already
        if out is not None:
            return out.indices
        return lane.result.region()[:count].copy()

    def _split(self, token: Token, lanes: list[Lane], x: np.ndarray, out: ReturnSegment | None,
               row: int, policy: int, params, deadline) -> np.ndarray:
        data_name, start, place = self._place_split(token, x)
        try:
            parts = run_split(lanes, data_name, start, len(x), row, policy, params, deadline,
                              self._grow, place)
        except (LaneBroken, LaneTimeout) as e:
            if isinstance(e, LaneBroken):
                e.sent = True                    # the call had begun: never retried
            raise self._failed(e) from None
        if out is None:
            return gather(parts, None)
        gather(parts, out._seg)
        return out.indices

    # -- segments -----------------------------------------------------------------

    def _new_segment(self, capacity: int, kind: int) -> Segment:
        return owned_segment(self._owned, capacity, kind)

    def _destroy(self, segment: Segment) -> None:
        destroy_owned(self._owned, segment)

    def _grow(self, lane: Lane, needed: int) -> None:
        old = lane.result
        lane.result = self._new_segment(result_capacity(needed), L.KIND_RESULT)
        lane.template = None
        if old is not None:
            self._destroy(old)

    def _shared_place(self, x: np.ndarray) -> tuple[str, int] | None:
        """(segment, first element) when x lives in a segment of empty()."""
        if not self._shared or x.dtype != np.float64 or x.strides[0] != 8:
            return None
        addr = x.__array_interface__["data"][0]
        with self._lock:
            for begin, (end, segment) in self._shared.items():
                if begin <= addr and addr + 8 * len(x) <= end and (addr - begin) % 8 == 0:
                    return segment.name, (addr - begin) // 8
        return None

    def _place(self, token: Token, x: np.ndarray, lane: Lane):
        """Where the worker reads x: (segment name, first element, x when
        run_whole is to copy it into the lane's own input)."""
        shared = self._shared_place(x)
        if shared is not None:
            return shared[0], shared[1], None
        n = len(x)
        if n <= LANE_INPUT:
            if x.dtype == np.float64 and x.flags.c_contiguous:
                return lane.data.name, 0, x
            segment = lane.data
        else:
            segment = self._staging.take(token, n)
        np.copyto(segment.region()[:n], x, casting="unsafe")
        segment.set_count(n)
        return segment.name, 0, None

    def _place_split(self, token: Token, x: np.ndarray):
        shared = self._shared_place(x)
        if shared is not None:
            return shared[0], shared[1], None
        n = len(x)
        staging = self._staging.take(token, n)
        staging.set_count(n)
        region = staging.region()

        def place(_i: int, a: int, b: int) -> None:
            np.copyto(region[a:b], x[a:b], casting="unsafe")

        return staging.name, 0, place


# -- module helpers -----------------------------------------------------------------

_POOLS: weakref.WeakSet = weakref.WeakSet()


def _forked_child() -> None:
    """In a forked child: the parent's pools are not ours.  Close our copies
    of their sockets so the parent's workers still see end-of-file when the
    parent goes; never signal, close or unlink anything of theirs."""
    for pool in list(_POOLS):
        pool._forked = True
        for lane in pool._lanes.all:
            try:
                lane.sock.close()
            except OSError:
                pass
        if pool._workers is not None:
            for slot in pool._workers.slots:
                if slot.ctrl is not None:
                    slot.ctrl.close()
                if slot.proc is not None:
                    slot.proc.close()
        pool._lanes.mutex = threading.Lock()
        pool._lanes.waiters = []
        pool._lock = threading.Lock()


os.register_at_fork(after_in_child=_forked_child)


def _drain(lane: Lane, deadline: float) -> None:
    """Read the replies still owed to a lane, so its healthy worker is kept."""
    try:
        while lane.pending:
            lane.recv(deadline)
    except (LaneBroken, LaneTimeout):
        pass                               # retired by the caller: pending is still set


def _wait_idle(lanes: Lanes, timeout: float) -> None:
    end = time.monotonic() + timeout
    while lanes.busy() and time.monotonic() < end:
        time.sleep(0.005)


def _drop_shared(pool_ref, addr: int) -> None:
    pool = pool_ref()
    if pool is None or os.getpid() != pool._owner_pid:
        return
    with pool._lock:
        entry = pool._shared.pop(addr, None)
    if entry is not None:
        pool._destroy(entry[1])


def _emergency_cleanup(owner_pid: int, owned: set[str], workers: Workers) -> None:
    """Runs if a pool is garbage-collected or the interpreter exits unclosed."""
    if os.getpid() != owner_pid:
        return                           # a forked child: nothing here is ours
    try:
        workers.close(wait=1.0)
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
    for name in list(owned):
        seg_mod.unlink_name(name)
    owned.clear()


def request_params(row: L.DetectorRow, threshold=None, params=None) -> tuple:
    """A call's parameters by name as the request carries them: in the row's
    order, NaN for those left at their default."""
    given = dict(params or {})
    if threshold is not None:
        if "threshold" in given:
            raise TypeError("give threshold= or params={'threshold': ...}, not both")
        given["threshold"] = check_threshold(threshold)
    if not given:
        return ()
    names = [p for p, _ in row.params]
    unknown = set(given) - set(names)
    if unknown:
        raise TypeError(f"detector {row.name!r} has no parameter {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(names) or 'none'}")
    values = []
    for name in names:
        v = given.get(name, math.nan)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"parameter {name} must be a real number, not {type(v).__name__}")
        values.append(float(v))
    return tuple(values)


def check_specs(detector) -> list[str]:
    specs = [detector] if isinstance(detector, str) else detector
    if not isinstance(specs, (list, tuple)) or not specs:
        raise TypeError(f"detector must be a name or a list of names, not {type(detector).__name__}")
    for spec in specs:
        detectors.check_spec(spec)
    return list(specs)


def threshold_defaults(threshold: float | None) -> dict[str, float]:
    """The parameter defaults a pool's ``threshold=`` overrides: none when not given."""
    return {} if threshold is None else {"threshold": threshold}


def check_threshold(k) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a real number, not {type(k).__name__}")
    k = float(k)
    if not (math.isfinite(k) and k >= 0):
        raise ValueError(f"threshold must be finite and >= 0, got {k!r}")
    return k


def check_policy(p) -> str:
    if p not in detectors.NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {detectors.NAN_POLICIES}, got {p!r}")
    return p


def check_timeout(t) -> float | None:
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(t).__name__}")
    t = float(t)
    if not t >= 0:
        raise ValueError(f"timeout must be >= 0 seconds (or None, or inf), got {t!r}")
    return t


def as_real_1d(x) -> np.ndarray:
    """x as a 1-D real ndarray (not yet float64), or a TypeError/ValueError."""
    if type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1:
        return x                                     # the hot path
    if x is None:
        raise TypeError("detect() needs a 1-D array of real numbers, got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"detect() needs a 1-D array of real numbers, got {type(x).__name__}")
    if isinstance(x, np.ma.MaskedArray):
        if np.ma.getmask(x) is not np.ma.nomask and np.ma.getmask(x).any():
            raise TypeError("detect() does not take masked arrays: the mask would be ignored; "
                            "pass x.compressed() (the unmasked values) or x.filled(np.nan) "
                            "with nan_policy='omit'")
        x = np.ma.getdata(x)
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise ValueError(f"detect() cannot make an array of the input: {e}") from None
    kind = x.dtype.kind
    if kind == "c":
        raise TypeError(f"detect() needs real numbers; got complex dtype {x.dtype}")
    if kind not in "biuf":
        what = "strings" if kind in "SU" else "objects" if kind == "O" else x.dtype.name
        raise TypeError(f"detect() needs real numbers; got dtype {x.dtype} ({what})")
    if x.ndim != 1:
        raise ValueError(f"detect() needs a 1-D array; got shape {x.shape}")
    return x
