"""Workers that die, launchers that die, interrupts: each fails only its own call."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from conftest import START_METHODS, ended, our_segments, planted, wait_until
from shmpool import DetectorError, DetectTimeout, Pool, PoolClosed, WorkerDied
from shmpool._backend import launch

# (detector that dies, words the error must contain): the ways to die
CRASHES = [
    ("shmpool.testing:sigkill_self", "SIGKILL"),
    ("shmpool.testing:segfault", "SIGSEGV"),
    ("shmpool.testing:exit_now", "exited with code 3"),
]


@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("detector,words", CRASHES, ids=[c[1] for c in CRASHES])
def test_a_dying_detector_fails_only_its_call(start_method, detector, words, capfd):
    with Pool(workers=2, detector=detector, start_method=start_method) as p:
        pids = set(p.worker_pids())
        with pytest.raises(WorkerDied, match=words):
            p.detect([1.0, 2.0, 3.0])
        assert len(set(p.worker_pids())) == 1          # the survivor; the dead one is gone
        with pytest.raises(WorkerDied, match=words):   # the lane restarts and serves again
            p.detect([1.0, 2.0, 3.0])
        assert set(p.worker_pids()) != pids
    assert "Fatal Python error" not in capfd.readouterr().err   # a passing run prints nothing alarming


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
    for pid in pool.worker_pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    big = np.random.default_rng(1).standard_normal(600_000)
    assert len(pool.detect(big)) > 0                   # a split call finds them dead first


def kill_quietly(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_random_kills_during_split_calls_never_give_a_wrong_answer():
    """SIGKILL at random moments of big split calls: an error or the right
    answer, never a partial one; the pool keeps serving."""
    rng = np.random.default_rng(0)
    before = set(our_segments())
    with Pool(workers=2) as p:
        buf = p.empty(4_000_000)
        buf[:] = rng.standard_normal(len(buf))
        expected = p.detect(buf)
        outcomes = {"died": 0, "ok": 0}
        for trial in range(12):
            victims = p.worker_pids()[:1 + trial % 2]
            killer = threading.Timer(random.uniform(0, 0.03), kill_quietly, [victims])
            killer.start()
            try:
                got = p.detect(buf if trial % 3 else np.array(buf))
            except WorkerDied:
                outcomes["died"] += 1
            else:
                assert np.array_equal(got, expected)
                outcomes["ok"] += 1
            killer.join()
            assert wait_until(lambda v=victims: all(ended(q) for q in v), 2)
        assert np.array_equal(p.detect(buf), expected)
        del buf
    assert sum(outcomes.values()) == 12
    assert set(our_segments()) <= before


def test_a_detector_exception_whose_str_raises_is_still_a_detector_error():
    """It used to kill the worker: the caller got WorkerDied (issue 10.10)."""
    with Pool(workers=1, detector="shmpool.testing:raises_unprintable") as p:
        pid = p.worker_pids()
        with pytest.raises(DetectorError, match="whose str.. raised") as e:
            p.detect([1.0, 2.0])
        assert e.value.remote_type == "BadStr" and "raises_unprintable" in str(e.value.__cause__)
        assert p.worker_pids() == pid                  # the worker lives on


def test_a_dead_zygote_neither_hides_nor_spares_a_stuck_worker():
    """With multiprocessing's forkserver dead, a stuck worker survived both
    DetectTimeout and close() (issue 10.11).  Workers are held by pidfds."""
    with Pool(workers=1, detector="shmpool.testing:slow_on_13") as p:
        [stuck] = p.worker_pids()
        os.kill(launch.zygote_pid(), signal.SIGKILL)
        with pytest.raises(DetectTimeout, match="stopped"):
            p.detect(np.arange(13.0), timeout=0.5)
        assert ended(stuck)
        assert p.detect(planted(1)).tolist() == [7, 113, 835]     # a new zygote, a new worker
        fut = p.submit(np.arange(13.0))
        time.sleep(0.3)
        [again] = p.worker_pids()
        os.kill(launch.zygote_pid(), signal.SIGKILL)
        t0 = time.monotonic()
        p.close(timeout=0.2)
        assert time.monotonic() - t0 < 5
        with pytest.raises(PoolClosed, match="closed while the call ran"):
            fut.result(timeout=5)
    assert wait_until(lambda: ended(again), 2)            # stopped by its pid, launcher dead


def interrupt_at(k: int, root: str):
    """A profiler that raises KeyboardInterrupt at the k-th point of shmpool
    code where CPython would run a pending Ctrl-C handler: entering a function,
    or just after a C function returns."""
    seen = [0]

    def profiler(frame, event, arg):
        if event in ("call", "c_return") and frame.f_code.co_filename.startswith(root):
            seen[0] += 1
            if seen[0] == k:
                raise KeyboardInterrupt
    return profiler, seen


def test_an_interrupt_at_any_point_never_leaks_a_worker():
    """A Ctrl-C at every point of the detect path where one can land, one run
    each (issue 10.12: an unlucky one left a worker busy for good, so every
    later call waited forever): the next call works at once, on one worker."""
    import shmpool
    root = os.path.dirname(shmpool.__file__)
    with Pool(workers=1) as p:
        x = planted(0)
        big = np.random.default_rng(1).standard_normal(300_000)
        points = {}
        for name, data in (("small", x), ("split", big), ("zero-copy", p.empty(1000))):
            if name == "zero-copy":
                data[:] = x
            k = 0
            while True:
                k += 1
                profiler, seen = interrupt_at(k, root)
                sys.setprofile(profiler)
                try:
                    p.detect(data, timeout=30)
                    finished = True
                except KeyboardInterrupt:
                    finished = False
                finally:
                    sys.setprofile(None)
                assert p._lock.acquire(timeout=5), f"{name}: point {k} left the pool's lock held"
                p._lock.release()
                t0 = time.monotonic()
                assert p.detect(x, timeout=10).tolist() == [7, 113, 835], f"{name}: point {k}"
                assert time.monotonic() - t0 < 5, f"{name}: point {k} slowed the next call"
                assert p._lanes.busy() == 0, f"{name}: point {k} leaked a lane"
                if finished:
                    break
            points[name] = k
        assert min(points.values()) > 20, points      # every point of each path was tried
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5


SCRIPT_ENDS_WITH_A_CALL_IN_FLIGHT = """
import numpy as np
from shmpool import Pool
p = Pool(workers=1, detector="shmpool.testing:slow_on_13")
f = p.submit(np.arange(13.0))
import time; time.sleep(0.3)
print("exiting", flush=True)
"""


def test_interpreter_exit_does_not_wait_for_a_call_in_flight():
    """The script waited 30 s for the call to finish (issue 10.13)."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", SCRIPT_ENDS_WITH_A_CALL_IN_FLIGHT],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "exiting", r.stderr
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in r.stderr, r.stderr


CTRL_C_DURING_START = """
import sys, time
from shmpool import Pool
print("starting", flush=True)
try:
    Pool(workers=2, startup_timeout=60)
    time.sleep(30)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_while_a_pool_starts_prints_no_worker_noise():
    """A terminal's Ctrl-C reaches the whole foreground group; workers and
    the zygote live in their own session and say nothing (issue 10.21)."""
    for delay in (0.05, 0.15, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", CTRL_C_DURING_START], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdout.readline().strip() == "starting"
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)           # what the terminal does
        out, err = proc.communicate(timeout=30)
        assert proc.returncode in (130, -signal.SIGINT, 1), err
        assert "BrokenPipeError" not in err and "Traceback" not in err.replace(
            "KeyboardInterrupt", ""), err


def test_a_worker_dying_mid_split_spares_its_healthy_sibling():
    """The soak found the pool retiring a split call's healthy worker, whose
    reply was merely still coming, along with the dead one."""
    with Pool(workers=2) as p:
        big = np.random.default_rng(3).standard_normal(4_000_000)
        keeper = p._lanes.all[0].pid
        died = 0
        for _ in range(6):
            victim = p._lanes.all[1].pid
            killer = threading.Timer(0.002, kill_quietly, [[victim]])
            killer.start()
            try:
                p.detect(big)
            except WorkerDied:
                died += 1
            killer.join()
            assert p._lanes.all[0].pid == keeper and psutil.pid_exists(keeper)
        assert died >= 1                               # the kills did land mid-call
        assert p.detect(planted(1), detector="classic").tolist() == [7, 113, 835]


@pytest.mark.parametrize("moment", ["while it loads", "before its first reply"])
def test_a_replacement_killed_while_it_starts_fails_only_that_call(monkeypatch, moment):
    """The soak found a replacement worker SIGKILLed while it started turning
    the call into BrokenPool: the call lost a worker, the pool did not."""
    from shmpool._backend.workers import Workers

    armed = []

    def kill_first(slot):
        if armed:
            armed.clear()
            os.kill(slot.proc.pid, signal.SIGKILL)

    ready, give = Workers._ready, Workers.give

    def ready_then(self, slot, replacing):
        if moment == "while it loads":
            kill_first(slot)
        return ready(self, slot, replacing)

    def give_then(self, i, *args):
        if moment == "before its first reply":
            kill_first(self.slots[i])
        return give(self, i, *args)

    monkeypatch.setattr(Workers, "_ready", ready_then)
    monkeypatch.setattr(Workers, "give", give_then)
    with Pool(workers=1) as p:
        first = p.worker_pids()
        os.kill(first[0], signal.SIGKILL)          # dies idle: the next call replaces it
        # its end of the lane closed (a zombie's other threads may still hold it)
        assert wait_until(lambda: not p._lanes.all[0].alive(), 2)
        armed.append(True)
        with pytest.raises(WorkerDied, match=r"worker 0 \(pid \d+\) was killed by SIGKILL "
                                             r"while it started; the next call starts another"):
            p.detect(planted(0))
        assert not armed                            # the kill did land on the replacement
        assert p.detect(planted(1)).tolist() == [7, 113, 835]
        assert len(p.worker_pids()) == 1 and p.worker_pids() != first
