"""Shared fixtures: pools per start method, answer checks, the leak check, the
deadlock guard."""

import faulthandler
import math
import os
import sys
import time

import numpy as np
import psutil
import pytest

from shmpool import Pool, reference
from shmpool import layout as L

START_METHODS = ["forkserver", "spawn", "fork"]
GUARD_SECONDS = 180
ONE_BLOCK = 1 << 16


def shm_files():
    return set(n for n in os.listdir("/dev/shm") if n.startswith("shmpool-"))


def ended(pid: int) -> bool:
    """The process is gone or a zombie: its sockets and mappings are closed."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(cond, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def our_segments():
    """Segments in /dev/shm created by this test process (not its owner file)."""
    prefix = f"shmpool-{os.getpid()}-"
    return sorted(n for n in shm_files() if n.startswith(prefix) and not n.endswith("-owner"))


def orphans(names):
    """Those of *names* whose owner is dead (what a reaper would remove)."""
    import fcntl
    dead = []
    for name in names:
        m = L.OWNED_NAME_RE.fullmatch(name)
        if m is None:
            continue
        try:
            fd = os.open(f"/dev/shm/{L.owner_lock_name(m.group(1))}", os.O_RDONLY)
        except FileNotFoundError:
            dead.append(name)            # an owner file already gone: left behind
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            dead.append(name)
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(dead)


def worker_children(of=None):
    """Live descendants of this process (or *of*) other than the process-wide zygote."""
    found = []
    for p in psutil.Process(of).children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE or p.name() == "shmpool-zygote":
                continue
        except psutil.NoSuchProcess:
            continue
        found.append(p)
    return found


@pytest.fixture(autouse=True)
def deadlock_guard(request):
    """A test that hangs dumps every thread's traceback and ends the run."""
    marker = request.node.get_closest_marker("slow")
    faulthandler.dump_traceback_later(GUARD_SECONDS * (5 if marker else 1), exit=True,
                                      file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """The run leaves no segment of its own, and no orphan it made, and no process.
    Live shmpool processes beside the run (another suite, a benchmark) are
    theirs: their segments are neither counted nor touched."""
    before = shm_files()
    yield
    import gc
    gc.collect()
    assert our_segments() == [], "segments left in /dev/shm"
    assert orphans(shm_files() - before) == [], "orphaned segments left in /dev/shm"
    assert worker_children() == [], "processes left running"


@pytest.fixture(scope="module")
def pool():
    with Pool(workers=2) as p:
        yield p


@pytest.fixture(params=START_METHODS, scope="module")
def any_pool(request):
    with Pool(workers=2, start_method=request.param) as p:
        yield p


def planted(seed, n=1000, at=(7, 113, 835)):
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    x[list(at)] += 97
    return x


def exact_answer(x, k=2.0):
    """The classic detector with (nearly) exact statistics: the mean from a
    correctly rounded sum, the variance corrected for that mean's rounding."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    m = math.fsum(x) / n
    d = x - m
    var = math.fsum(d * d) / n - (math.fsum(d) / n) ** 2
    cut = k * math.sqrt(max(var, 0.0))
    return np.flatnonzero(np.abs(d) > cut), m, cut


def assert_detect_ok(got, x, k=2.0):
    """Up to 65,536 values: numpy's answer, bit for bit.  Beyond: the exact
    answer, except for values within the documented band of the cut-off,
    2 ulp(mean) + 1e-12 * k * std (docs/LAYOUT.md 4.1): relative to the
    data's spread, not its magnitude."""
    x = np.asarray(x, dtype=np.float64)
    assert got.dtype == np.int64
    assert got.size < 2 or np.all(np.diff(got) > 0), "indices must be ascending and unique"
    if len(x) <= ONE_BLOCK:
        assert got.tolist() == reference(x, k).tolist()
        return
    exact, m, cut = exact_answer(x, k)
    diff = np.setxor1d(got, exact)
    if diff.size:
        band = 2 * np.spacing(abs(m)) + 1e-12 * cut
        off = np.abs(np.abs(x[diff] - m) - cut)
        assert np.all(off <= band), (diff[:10], off.max(), band)
