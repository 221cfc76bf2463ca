"""The load: pools, an optional server, the calling threads and the kills.

``Load.setup`` makes a ``Pool`` (``--workers``), a pool of
``shmpool.testing:troublemaker`` and, with ``--go-host``, a ``shmpool serve``
of its own (server.py; the Go loop: gohost.py).  ``Load.start`` starts
``--threads`` threads, each making calls from a fixed mix (see MIX) until
``stop``; ``pause`` parks them all (and the Go loop) between two calls so
that a sample sees a quiet system, ``resume`` lets them go on.

Every ``--error-every``-th call fails on purpose (negative data to the
troublemaker -> DetectorError; NaN data -> NonFiniteError) and every
``--kill-every``-th call SIGKILLs a random worker other than a witness.
A worker of the main pool is killed only while no call is split over that
pool's workers (``SplitGate``): the pool retires the other workers of a
split call whose replies were still pending when one died, and the witness
would go with them (the faults suite covers kills mid-split).  A server
worker killed while the server hands it a new connection closes that
connection before INFO (or the server, failing to hand it over, refuses it
BUSY): the Go program and the Client report a connection failure, which the
soak counts as ``*_lost_at_handoff``.
Anything else that goes wrong is an unexpected failure: counted in
``stats["unexpected"]`` and described in ``failures`` (the first 20).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from ..layout import SPLIT_MIN
from .allocator import MMAP_ENV, fix_mmap_threshold
from .config import Config, SetupError
from .gohost import GoDriver, lost_at_handoff
from .sampling import Watch, segments_of
from .server import SoakServer

if TYPE_CHECKING:
    from .. import Pool

# The calls (weights out of 100): copy-in (contiguous, strided, float32),
# zero-copy (slices of one long-lived pool.empty array; fresh pool.empty
# arrays dropped after one call), answers into a ReturnSegment, submit(),
# the troublemaker pool, and with a server: Client calls on the thread's
# connection and on a connection opened for the one call.
MIX = [("copy", 35), ("copy_strided", 4), ("copy_f32", 4), ("shared", 22),
       ("fresh_empty", 5), ("out", 10), ("submit", 5), ("trouble", 8)]
CLIENT_MIX = [("client", 12), ("client_new", 2)]
VERIFY_MAX = 65536              # answers up to this size are compared with reference()
VERIFY_SHARE = 0.2              # ... this share of them


class _NoError(Exception):
    """A call that had to fail did not."""


class SplitGate:
    """Calls that may be split over a pool's workers pass through ``inside()``;
    ``closed()`` waits until none is in flight and keeps new ones out."""

    def __init__(self):
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextlib.contextmanager
    def inside(self):
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def closed(self, timeout: float):
        """Yields whether every split call is out (False after *timeout*)."""
        with self._cond:
            self._closed = True
            ok = self._cond.wait_for(lambda: self._inside == 0, timeout)
        try:
            yield ok
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


def _start_submit_threads(pool, x) -> None:
    """The submit() executor starts its threads lazily, up to its maximum, as
    calls find none idle: start them all now, or they would read as thread
    growth later.  Each of max_threads jobs, submitted once the one before has
    started, holds its thread until all are running."""
    pool.submit(x).result()                     # makes the executor
    ex = getattr(pool, "_executor", None)
    n = getattr(ex, "max_threads", None)
    if ex is None or not isinstance(n, int):    # another executor: many calls at once
        for f in [pool.submit(x) for _ in range(4 * pool.workers + 4)]:
            f.result()
        return
    everyone = threading.Barrier(n + 1)

    def hold(started: threading.Event) -> None:
        started.set()
        everyone.wait(30)

    futs = []
    for _ in range(n):
        started = threading.Event()
        futs.append(ex.submit(hold, started))
        started.wait(30)
    everyone.wait(30)
    for f in futs:
        f.result()


def _wait_gone(pid: int, timeout: float) -> None:
    """Until *pid* has exited (its descriptors closed: a zombie or gone)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b") ", 1)[1][:1] in (b"Z", b"X"):
                    return
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.001)


class Load:
    """Pools, an optional server, the load threads, the Go loop and the kills."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stats: Counter = Counter()
        self.failures: list[str] = []           # unexpected outcomes, the first 20
        self.notes: list[str] = []
        self.done = 0                           # completed detect calls of every kind
        self.pool: Pool | None = None
        self.trouble: Pool | None = None
        self.shared: np.ndarray | None = None
        self.server: SoakServer | None = None
        self.socket_path: str | None = None
        self.go: GoDriver | None = None
        self.watch = Watch({"pool": lambda: self._pools()[0].worker_pids(),
                            "trouble": lambda: self._pools()[1].worker_pids()},
                           server=self.server_pid)
        self._env_before: str | None = None
        self._go_counts = (0, 0, 0, 0, 0)
        self._lock = threading.Lock()
        self._kill_lock = threading.Lock()
        self._gate = SplitGate()                # kills of pool workers wait for split calls
        self._numbers = itertools.count(1)      # Python calls: schedule kills and errors
        self._stop = threading.Event()
        self._pause = threading.Condition()
        self._pausing = False
        self._parked = 0
        self._active = 0
        self._threads: list[threading.Thread] = []
        self._clients: list = []                # the load threads' Clients
        self.retired: set[int] = set()          # worker pids the pools stopped themselves

    # -- setup / teardown -------------------------------------------------------------

    def setup(self) -> None:
        from .. import Pool
        from ..errors import ShmpoolError

        cfg = self.cfg
        self._env_before = os.environ.get(MMAP_ENV)
        self.notes.append(fix_mmap_threshold(cfg.malloc_mmap_threshold))
        rng = np.random.default_rng(cfg.seed)
        n = cfg.max_size
        self.base = rng.standard_normal(2 * n + 1024)
        self.base[rng.integers(0, len(self.base), 64)] += 40.0   # a few clear outliers
        self.positive = np.abs(self.base[:n + 512]) + 1.0
        self.with_nan = self.base[:1000].copy()
        self.with_nan[rng.integers(0, 1000, 3)] = np.nan
        if cfg.go_host is not None:
            self.server = SoakServer(cfg.server_workers)
            self.socket_path = self.server.socket_path
            self.server.start(cfg.go_host)    # first, while this process has one thread
        try:
            self.pool = pool = Pool(workers=cfg.workers, nan_policy="raise")
            self.trouble = Pool(workers=2, detector="shmpool.testing:troublemaker")
            self.shared = shared = pool.empty(n + 1024)
            shared[:] = self.base[:len(shared)]
            _start_submit_threads(pool, self.base[:100])
            for p in (pool, self.trouble):
                self._watch_retirements(p)
        except (ShmpoolError, OSError, ValueError, threading.BrokenBarrierError) as e:
            raise SetupError(f"cannot start the pools: {e!r}") from e

    def _watch_retirements(self, pool) -> None:
        """Note the pids of the workers a pool stops itself (Pool._retire: a lane
        whose state is unknown, e.g. left with a reply pending when another
        worker of the same call died): the restart of a witness that its pool
        retired is reported, not taken for a crash."""
        retire = getattr(pool, "_retire", None)
        if not callable(retire):
            return

        def retiring(lane, _retire=retire):
            pid = getattr(lane, "pid", 0)
            if pid:
                self.retired.add(pid)
                witnesses = {roles.witness() for roles in self.watch.roles.values()}
                if pid in witnesses and len(self.notes) < 20:
                    self.notes.append(f"the pool stopped its witness (pid {pid}, pending "
                                      f"{getattr(lane, 'pending', '?')}) while handling "
                                      f"{sys.exc_info()[1]!r}")
            return _retire(lane)

        pool._retire = retiring

    def _pools(self) -> tuple[Pool, Pool]:
        assert self.pool is not None and self.trouble is not None, "Load.setup() first"
        return self.pool, self.trouble

    def server_pid(self) -> int | None:
        return self.server.pid if self.server is not None else None

    def held(self) -> dict[int, dict[str, int]]:
        """pid -> the segments (and their bytes) and sockets that vary in number
        and size by design, counted from the objects that hold them.  The
        host's: the pools' and Clients' staging segments (large inputs, a few
        kept for reuse, of the sizes recent calls needed) and the lanes of the
        pools and of the load threads' Clients (a connection each, an input
        segment and a result segment grown to the largest answer since its
        worker started; a Client dials lanes as calls need them and drops
        those whose worker died).  A server worker's: the connections of
        those Client lanes that it serves.  Everything else must stay put."""
        segments = nbytes = sockets = 0
        served: Counter = Counter()

        def count(seg) -> None:
            nonlocal segments, nbytes
            if seg is not None and not getattr(seg, "closed", False):
                segments += 1
                nbytes += getattr(seg, "size", 0)

        for owner in (self.pool, self.trouble, *self._clients):
            staging = getattr(owner, "_staging", None)
            for seg in staging.segments() if staging is not None else ():
                count(seg)
        for owner in (self.pool, self.trouble, *self._clients):
            for lane in list(getattr(getattr(owner, "_lanes", None), "all", ())):
                count(getattr(lane, "data", None))
                count(getattr(lane, "result", None))
                sock = getattr(lane, "sock", None)
                if sock is not None and sock.fileno() >= 0:
                    sockets += 1
                    if owner not in (self.pool, self.trouble):
                        served[getattr(lane, "pid", 0)] += 1
        held = {pid: {"held_sockets": n} for pid, n in served.items()}
        held[os.getpid()] = {"held_segments": segments, "held_bytes": nbytes,
                             "held_sockets": sockets}
        return held

    def teardown(self) -> None:
        """Stop everything; what did not stop cleanly goes to ``failures``."""
        self._stop.set()
        self.resume()
        if self.go is not None:
            self._go_pause()
            for problem in self.go.stop():
                self.failures.append(problem)
        for t in self._threads:
            t.join(120)
            if t.is_alive():
                self.failures.append(f"load thread {t.name} did not stop in 120 s")
        if self.server is not None:
            self.failures += self.server.stop()
        self.shared = None
        for p in (self.pool, self.trouble):
            if p is not None:
                p.close()
        gc.collect()
        left = [n for n in segments_of(os.getpid()) if not n.endswith("-owner")]
        if left:
            self.failures.append(f"{len(left)} segment(s) left in /dev/shm after the soak: "
                                 f"{left[:5]}")
        if self._env_before is None:
            os.environ.pop(MMAP_ENV, None)
        else:
            os.environ[MMAP_ENV] = self._env_before

    # -- running and pausing -----------------------------------------------------------

    def start(self) -> None:
        if self.cfg.go_host is not None and self.socket_path is not None:
            self.go = GoDriver(self.cfg.go_host, self.socket_path)
        self._active = self.cfg.threads
        for i in range(self.cfg.threads):
            t = threading.Thread(target=self._load, args=(i,), daemon=True, name=f"soak-load-{i}")
            t.start()
            self._threads.append(t)

    @property
    def active(self) -> int:
        """Load threads still running."""
        return self._active

    def pause(self, timeout: float = 120.0) -> None:
        """Park the Go loop and every load thread between two calls."""
        self._go_pause()
        with self._pause:
            self._pausing = True
            end = time.monotonic() + timeout
            while self._parked < self._active:
                left = end - time.monotonic()
                if left <= 0:
                    self._fail(f"load threads did not reach a checkpoint in {timeout:g} s")
                    return
                self._pause.wait(left)

    def resume(self, go: bool = True) -> None:
        with self._pause:
            self._pausing = False
            self._pause.notify_all()
        if go and self.go is not None and not self._stop.is_set():
            self.go.resume()

    def _checkpoint(self) -> None:
        with self._pause:
            if not self._pausing:
                return
            self._parked += 1
            self._pause.notify_all()
            while self._pausing:
                self._pause.wait()
            self._parked -= 1

    def _thread_done(self) -> None:
        with self._pause:
            self._active -= 1
            self._pause.notify_all()

    def _go_pause(self) -> None:
        """Park the Go loop between two runs and take over its counts."""
        if self.go is None:
            return
        got = self.go.pause()
        if got is None:
            self._fail("the Go loop did not pause within 120 s")
            return
        runs, ok, died, lost, bad, last = got
        before = self._go_counts
        with self._lock:
            self.done += runs - before[0]
            self.stats["go_ok"] += ok - before[1]
            self.stats["go_worker_died"] += died - before[2]
            self.stats["go_lost_at_handoff"] += lost - before[3]
            new_bad = bad - before[4]
            if new_bad:
                self.stats["unexpected"] += new_bad
                if len(self.failures) < 20:
                    self.failures.append(f"go host ({new_bad} run(s)): {last}")
            self._go_counts = (runs, ok, died, lost, bad)

    # -- calls ------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _fail(self, what: str) -> None:
        with self._lock:
            self.stats["unexpected"] += 1
            if len(self.failures) < 20:
                self.failures.append(what)

    def _worker_died(self, op: str, n: int, message: str) -> None:
        """A call's worker died: expected when the soak killed it (SIGKILL);
        a witness's death, or any other signal or exit, is a crash."""
        witnesses = {roles.witness() for roles in self.watch.roles.values()}
        pid = re.search(r"\(pid (\d+)\)", message)
        if pid is not None and int(pid.group(1)) in witnesses:
            self._fail(f"{op} n={n}: a witness died: {message}")
        elif "(pid" in message and "SIGKILL" not in message:
            self._fail(f"{op} n={n}: a worker died of something else than the soak's SIGKILL: "
                       f"{message}")
        else:
            self._count("worker_died")

    def _kill(self, r: random.Random) -> None:
        """SIGKILL a random worker, never a group's witness (role w0); one of the
        main pool's only while no call is split over its workers, and the
        next such call waits until it is dead."""
        with self._kill_lock:
            pids = self.watch.killable()
            if not pids:
                return
            victim = r.choice(pids)
            gate = (self._gate.closed(5.0) if victim in self._pools()[0].worker_pids()
                    else contextlib.nullcontext(True))
            with gate as clear:
                if not clear:
                    self._count("kills_skipped")
                    return
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    return
                self._count("kills")
                _wait_gone(victim, 2.0)

    def _size(self, r: random.Random) -> int:
        n = int(math.exp(r.uniform(math.log(self.cfg.min_size), math.log(self.cfg.max_size))))
        return 14 if n == 13 else n

    def _call(self, op: str, n: int, r: random.Random, ret, client):
        """Make one call; returns (input, answer) or raises."""
        if n >= SPLIT_MIN and op not in ("trouble", "trouble_negative") \
                and not op.startswith("client"):
            with self._gate.inside():
                return self._call_now(op, n, r, ret, client)
        return self._call_now(op, n, r, ret, client)

    def _call_now(self, op: str, n: int, r: random.Random, ret, client):
        from ..client import Client
        from ..errors import ResultTooSmall

        pool, trouble = self._pools()
        shared = self.shared
        assert shared is not None
        off = r.randrange(0, len(self.base) - 2 * n)
        x = self.base[off:off + n]
        if op == "copy":
            return x, pool.detect(x)
        if op == "copy_strided":
            x = self.base[off:off + 2 * n:2]
            return x, pool.detect(x)
        if op == "copy_f32":
            x32 = x.astype(np.float32)
            return x32, pool.detect(x32)          # reference() widens it the same way
        if op == "shared":
            off = r.randrange(0, len(shared) - n)
            x = shared[off:off + n]
            return x, pool.detect(x)
        if op == "fresh_empty":
            buf = pool.empty(n)
            buf[:] = x
            return x, pool.detect(buf)
        if op == "out":
            try:
                return x, pool.detect(x, out=ret).copy()
            except ResultTooSmall:
                self._count("result_too_small")
                return x, None
        if op == "submit":
            return x, pool.submit(x).result()
        if op == "trouble":
            start = off % (len(self.positive) - n)
            x = self.positive[start:start + n]
            return x, trouble.detect(x)
        if op == "client":
            return x, client.detect(x)
        if op == "client_new":
            with Client(self.socket_path) as c:
                return x, c.detect(x)
        # the calls that must fail
        if op == "trouble_negative":
            trouble.detect(x - 10.0)
        elif op == "nan":
            pool.detect(self.with_nan)
        elif op == "client_nan":
            client.detect(self.with_nan)
        else:
            raise AssertionError(op)
        raise _NoError(f"{op} n={n}: the call did not fail")

    def _load(self, idx: int) -> None:
        from .. import ReturnSegment, reference
        from ..client import Client
        from ..errors import DetectorError, NonFiniteError, ServerUnavailable, WorkerDied

        cfg = self.cfg
        r = random.Random(cfg.seed * 1000 + idx)
        ret = client = None
        try:
            ret = ReturnSegment(1 << 16)
            client = Client(self.socket_path) if self.socket_path else None
            if client is not None:
                with self._lock:
                    self._clients.append(client)
            names, weights = zip(*(MIX + (CLIENT_MIX if client is not None else [])))
            errors = ["trouble_negative", "nan"] + (["client_nan"] if client else [])
            # Prime: every kind of call once at the largest size, so that the
            # heap of this thread (and of the workers) meets its peak in warm-up.
            priming = [(op, cfg.max_size) for op in names + tuple(errors)]
            while not self._stop.is_set():
                self._checkpoint()
                if self._stop.is_set():
                    break
                if cfg.calls is not None and self.done >= cfg.calls:
                    break
                if priming:
                    op, n = priming.pop()
                else:
                    i = next(self._numbers)
                    if cfg.kill_every and i % cfg.kill_every == 0:
                        self._kill(r)
                    if cfg.error_every and i % cfg.error_every == 0:
                        op = errors[(i // cfg.error_every) % len(errors)]
                    else:
                        op = r.choices(names, weights)[0]
                    n = self._size(r)
                x = got = None
                try:
                    x, got = self._call(op, n, r, ret, client)
                except WorkerDied as e:
                    self._worker_died(op, n, str(e))
                except ServerUnavailable as e:
                    if op.startswith("client") and lost_at_handoff(str(e)):
                        self._count("client_lost_at_handoff")
                    else:
                        self._fail(f"{op} n={n}: ServerUnavailable: {e}")
                except NonFiniteError as e:
                    if op in ("nan", "client_nan"):
                        self._count("errors_raised")
                    else:
                        self._fail(f"{op} n={n}: NonFiniteError: {e}")
                except DetectorError as e:
                    if op == "trouble_negative" and e.remote_type == "ValueError":
                        self._count("errors_raised")
                    else:
                        self._fail(f"{op} n={n}: {type(e).__name__}: {e}")
                except Exception as e:  # noqa: BLE001 - every surprise is reported
                    self._fail(f"{op} n={n}: {type(e).__name__}: {e}")
                else:
                    self._count("ok")
                    if got is not None and n <= VERIFY_MAX and r.random() < VERIFY_SHARE:
                        self._count("verified")
                        if not np.array_equal(got, reference(x)):
                            self._fail(f"{op} n={n}: the answer differs from shmpool.reference")
                finally:
                    x = got = None
                    with self._lock:
                        self.done += 1
        except Exception as e:  # noqa: BLE001
            self._fail(f"load thread {idx}: {type(e).__name__}: {e}")
        finally:
            if ret is not None:
                ret.close()
                ret.unlink()
            if client is not None:
                with self._lock:
                    self._clients.remove(client)
                client.close()
            self._thread_done()
