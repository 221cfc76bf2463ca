"""Segments and processes: created, reused, and always cleaned up."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from conftest import our_segments, planted, worker_children
from shmpool import Pool, PoolClosed, ReturnSegment
from shmpool import layout as L
from shmpool._backend.segment import Segment, reap_orphans

PY = sys.executable


def run_script(body: str, **kw):
    return subprocess.run([PY, "-c", textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=120, **kw)


def test_close_removes_workers_and_segments():
    p = Pool(workers=2)
    pids = p.worker_pids()
    assert len(pids) == 2 and len(our_segments()) == 4     # input + result per slot
    p.detect(np.random.default_rng(0).standard_normal(600_000))   # borrows staging
    p.close()
    p.close()                                               # twice is fine
    assert our_segments() == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids)
    for call in (lambda: p.detect([1.0]), lambda: p.submit([1.0]), lambda: p.empty(3)):
        with pytest.raises(PoolClosed):
            call()


def test_exception_inside_with_block_cleans_up():
    with pytest.raises(KeyboardInterrupt):
        with Pool(workers=2) as p:
            p.detect(planted(0))
            raise KeyboardInterrupt
    assert p.closed and our_segments() == [] and worker_children() == []


def test_empty_arrays_release_their_segment_when_garbage():
    with Pool(workers=1) as p:
        base = len(our_segments())
        a = p.empty(1000)
        view = a[10:20]
        del a
        gc.collect()
        assert len(our_segments()) == base + 1      # the view keeps it
        del view
        gc.collect()
        assert len(our_segments()) == base


def test_empty_array_outlives_its_pool_as_plain_memory():
    with Pool(workers=1) as p:
        a = p.empty(100)
        a[:] = np.arange(100)
    assert our_segments() == []                     # name gone with the pool
    a[5] = 42.0                                     # mapping still valid
    assert a.sum() == np.arange(100).sum() - 5 + 42


def test_return_segment_lifecycle_is_the_callers(pool):
    seg = ReturnSegment(16)
    pool.detect(planted(1), out=seg)
    view = seg.indices
    seg.close()
    seg.close()
    assert view.tolist() == [7, 113, 835]           # a view survives close()
    assert seg.name in os.listdir("/dev/shm")       # close() is not unlink()
    seg.unlink()
    seg.unlink()
    assert seg.name not in os.listdir("/dev/shm")


def test_an_attaching_process_never_unlinks():
    """A process that only attaches (as workers and foreign readers do) leaves
    the creator's segment in place when it exits, on any Python version."""
    with Segment.create(4, L.KIND_DATA) as seg:
        seg.region()[:] = [1, 2, 3, 4]
        seg.set_count(4)
        r = run_script(f"""
            from shmpool._backend.segment import Segment
            s = Segment.attach({seg.name!r}, 1)
            print(s.region().sum())
        """)
        assert r.stdout.strip() == "10.0" and r.returncode == 0, r.stderr
        assert seg.name in os.listdir("/dev/shm")


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_no_resource_tracker_noise(start_method):
    r = run_script(f"""
        import numpy as np
        from shmpool import Pool
        if __name__ == "__main__":
            with Pool(workers=2, start_method={start_method!r}) as p:
                b = p.empty(10)
                b[:] = 1.0
                b[3] = 50.0
                print(p.detect(b).tolist(), p.detect(np.arange(700_000.0)).size)
    """)
    assert r.returncode == 0 and r.stdout.strip() == "[3] 0"
    assert r.stderr == ""          # no leaked-shared_memory warnings, no tracker tracebacks


def test_ctrl_c_in_a_host_cleans_up():
    proc = subprocess.Popen([PY, "-c", textwrap.dedent("""
        import numpy as np, sys
        from shmpool import Pool
        if __name__ == "__main__":
            with Pool(workers=2, detector="shmpool.testing:slow_on_13") as p:
                print(*p.worker_pids(), flush=True)
                p.detect(np.arange(13.0))
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [int(s) for s in proc.stdout.readline().split()]
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{proc.pid}-")]
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_killed_host_workers_exit_and_segments_are_reaped(start_method):
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from shmpool import Pool
        if __name__ == "__main__":
            p = Pool(workers=2, start_method={start_method!r})
            print(*p.worker_pids(), flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    pids = [int(s) for s in proc.stdout.readline().split()]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids), "workers outlived their host"
    left = [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{proc.pid}-")]
    assert len(left) == 4
    reaped = reap_orphans()
    assert sorted(left) == sorted(n for n in reaped if n.startswith(f"shmpool-{proc.pid}-"))
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{proc.pid}-")]


def test_reaper_spares_live_owners_and_foreign_names(tmp_path):
    with Segment.create(1, L.KIND_DATA) as mine:
        fake_dead = f"shmpool-{os.getpid()}-1-00112233aabbccdd"      # our pid, wrong start time
        other = "shmpool-not-an-owned-name"
        a_dir = f"shmpool-{os.getpid()}-1-00112233aabbccee"          # owned-looking, not a file
        for name in (fake_dead, other):
            with open(f"/dev/shm/{name}", "wb"):
                pass
        os.mkdir(f"/dev/shm/{a_dir}")
        try:
            reaped = reap_orphans()
            assert fake_dead in reaped and other not in reaped and mine.name not in reaped
            assert a_dir not in reaped and os.path.isdir(f"/dev/shm/{a_dir}")
            assert mine.name in os.listdir("/dev/shm")
        finally:
            os.unlink(f"/dev/shm/{other}")
            os.rmdir(f"/dev/shm/{a_dir}")


def test_cleanup_command_reaps_only_orphans():
    orphan = "shmpool-999999999-1-00112233aabbccdd"     # no such pid
    with open(f"/dev/shm/{orphan}", "wb"):
        pass
    with Segment.create(1, L.KIND_DATA) as live:
        r = subprocess.run([PY, "-m", "shmpool", "cleanup"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0
        assert f"unlinked /dev/shm/{orphan}" in r.stdout and live.name not in r.stdout
        assert not os.path.exists(f"/dev/shm/{orphan}")
        assert os.path.exists(f"/dev/shm/{live.name}")
