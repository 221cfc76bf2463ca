"""Shared fixtures: pools per start method, the leak check, the deadlock guard."""

import faulthandler
import os
import sys

import numpy as np
import psutil
import pytest

from shmpool import Pool

START_METHODS = ["fork", "forkserver", "spawn"]
GUARD_SECONDS = 180


def our_segments():
    """Entries in /dev/shm created by this test process."""
    prefix = f"shmpool-{os.getpid()}-"
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


def worker_children():
    """Live descendants of this process other than multiprocessing's own
    helpers (the forkserver and the resource tracker it starts)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if p.status() == psutil.STATUS_ZOMBIE or "forkserver" in cmd or "resource_tracker" in cmd:
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
    yield
    import gc
    gc.collect()
    assert our_segments() == [], "segments left in /dev/shm"
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
