"""Workers that die: each way of dying fails only its own call."""

import os
import random
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from conftest import START_METHODS, our_segments, planted
from shmpool import Pool, WorkerDied, reference

# (detector that dies, words the error must contain)
CRASHES = [
    ("shmpool.testing:sigkill_self", "SIGKILL"),
    ("shmpool.testing:segfault", "SIGSEGV"),
    ("shmpool.testing:exit_now", "exited with code 3"),
]


@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("detector,words", CRASHES, ids=[c[1] for c in CRASHES])
def test_a_dying_detector_fails_only_its_call(start_method, detector, words):
    with Pool(workers=2, detector=detector, start_method=start_method) as p:
        pids = set(p.worker_pids())
        with pytest.raises(WorkerDied, match=words):
            p.detect([1.0, 2.0, 3.0])
        assert len(set(p.worker_pids())) == 1          # the survivor; the dead one is gone
        with pytest.raises(WorkerDied, match=words):   # the slot restarts and serves again
            p.detect([1.0, 2.0, 3.0])
        assert set(p.worker_pids()) != pids


@pytest.mark.parametrize("start_method", START_METHODS)
def test_sigkill_from_outside_during_a_call(start_method):
    with Pool(workers=2, detector="shmpool.testing:slow_on_13", start_method=start_method) as p:
        victim = p.worker_pids()
        fut = p.submit(np.arange(13.0))
        time.sleep(0.3)
        t0 = time.monotonic()
        for pid in victim:            # whichever took the call
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match="SIGKILL"):
            fut.result(timeout=10)
        assert time.monotonic() - t0 < 2.0
        assert p.detect(planted(3)).tolist() == [7, 113, 835]
        assert not set(victim) & set(p.worker_pids())


def test_a_worker_dying_between_calls_fails_no_call(pool):
    for pid in pool.worker_pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    for seed in range(4):
        assert pool.detect(planted(seed)).tolist() == [7, 113, 835]


def kill_quietly(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_random_kills_during_chunked_calls_never_give_a_wrong_answer():
    """SIGKILL at random moments of big split calls: an error or the right
    answer, never a partial one; the pool keeps serving."""
    rng = np.random.default_rng(0)
    before = set(our_segments())
    with Pool(workers=2) as p:
        buf = p.empty(4_000_000)
        buf[:] = rng.standard_normal(len(buf))
        expected = reference(buf)
        outcomes = {"died": 0, "ok": 0}
        for trial in range(12):
            pids = p.worker_pids()
            killer = threading.Timer(random.uniform(0, 0.03), kill_quietly, [pids[:1 + trial % 2]])
            killer.start()
            try:
                got = p.detect(buf if trial % 3 else np.array(buf))
            except WorkerDied:
                outcomes["died"] += 1
            else:
                assert np.array_equal(got, expected)
                outcomes["ok"] += 1
            killer.join()
            psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=0.5)
        assert np.array_equal(p.detect(buf), expected)
        del buf
    assert sum(outcomes.values()) == 12
    assert set(our_segments()) <= before
