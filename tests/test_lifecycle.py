"""Segments and processes: created, reused, and always cleaned up; forks,
PID namespaces and scripts of every shape."""

import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import psutil
import pytest

from conftest import ended, our_segments, planted, wait_until, worker_children
from shmpool import Pool, PoolClosed, ReturnSegment
from shmpool import layout as L
from shmpool._backend.segment import Segment, owner, reap_orphans

PY = sys.executable


def run_script(body: str, **kw):
    return subprocess.run([PY, "-c", textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=120, **kw)


def mapped_by(pid: int, name: str) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return f"/dev/shm/{name}" in f.read()


def test_close_removes_workers_and_segments():
    p = Pool(workers=2)
    pids = p.worker_pids()
    assert len(pids) == 2 and len(our_segments()) == 4     # input + result per lane
    p.detect(np.random.default_rng(0).standard_normal(600_000))   # borrows staging
    p.close()
    p.close()                                               # twice is fine
    assert our_segments() == []
    assert wait_until(lambda: all(ended(pid) for pid in pids), 2)
    for call in (lambda: p.detect([1.0]), lambda: p.submit([1.0]), lambda: p.empty(3)):
        with pytest.raises(PoolClosed):
            call()


def test_exception_inside_with_block_cleans_up():
    with pytest.raises(KeyboardInterrupt):
        with Pool(workers=2) as p:
            p.detect(planted(0))
            raise KeyboardInterrupt
    assert p.closed and our_segments() == [] and worker_children() == []


def test_empty_arrays_release_their_segment_and_workers_their_mapping():
    """A dropped empty() buffer was kept mapped by idle workers (issue 10.15)."""
    with Pool(workers=2) as p:
        base = len(our_segments())
        a = p.empty(100_000)
        a[:] = planted(1, n=100_000, at=(5, 500, 50_000))
        assert p.detect(a).tolist() == [5, 500, 50_000]
        name = [n for n in our_segments() if mapped_by(p.worker_pids()[0], n)
                or mapped_by(p.worker_pids()[1], n)]
        view = a[10:20]
        del a
        gc.collect()
        assert len(our_segments()) == base + 1      # the view keeps it
        del view
        gc.collect()
        assert len(our_segments()) == base
        gone = [n for n in name if not os.path.exists(f"/dev/shm/{n}")]
        assert gone, "the buffer's segment was never mapped by a worker"
        assert wait_until(lambda: not any(mapped_by(pid, n) for pid in p.worker_pids()
                                          for n in gone), 2.5), "an idle worker kept it mapped"


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


def test_an_unlinked_return_segment_is_unmapped_by_workers():
    """Five closed and unlinked 128 MiB ReturnSegments still held 630 MiB of
    /dev/shm until pool.close() (issue 10.14)."""
    with Pool(workers=1) as p:
        [pid] = p.worker_pids()
        seg = ReturnSegment(1 << 20)
        p.detect(planted(2), out=seg)
        assert mapped_by(pid, seg.name)
        seg.close()
        seg.unlink()
        assert wait_until(lambda: not mapped_by(pid, seg.name), 2.5)


def test_an_unclosed_return_segment_warns_and_unlinks_unless_detached():
    """A ReturnSegment dropped without unlink() left its file silently (10.17)."""
    seg = ReturnSegment(8)
    name = seg.name
    with pytest.warns(ResourceWarning, match="unclosed ReturnSegment"):
        del seg
        gc.collect()
    assert not os.path.exists(f"/dev/shm/{name}")
    kept = ReturnSegment(8)
    shared = kept.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del kept
        gc.collect()
    assert os.path.exists(f"/dev/shm/{shared}")
    other = ReturnSegment.attach(shared)          # whoever ends up with it unlinks it
    other.close()
    other.unlink()
    assert not os.path.exists(f"/dev/shm/{shared}")


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
def test_no_resource_tracker_or_other_noise(start_method):
    r = run_script(f"""
        import numpy as np
        from shmpool import Pool
        with Pool(workers=2, start_method={start_method!r}) as p:
            b = p.empty(10)
            b[:] = 1.0
            b[3] = 50.0
            print(p.detect(b).tolist(), p.detect(np.arange(700_000.0)).size)
    """)
    assert r.returncode == 0 and r.stdout.strip() == "[3] 0", r.stderr
    assert r.stderr == ""          # no leaked-shared_memory warnings, no tracebacks


# -- scripts of every shape (issue 11.6) ------------------------------------------

NO_GUARD = """
import numpy as np
from shmpool import Pool
x = np.random.default_rng(0).random(1000)
x[[7, 113, 835]] += 97
with Pool(workers=2) as p:
    print(p.detect(x).tolist())
    print(len(p.detect(np.random.default_rng(1).standard_normal(600_000))) > 0)
"""


@pytest.mark.parametrize("how", ["script", "-c", "stdin", "repl"])
def test_a_pool_needs_no_main_guard(tmp_path, how):
    """No `if __name__ == "__main__"`: a script, python -c, code piped to
    python -, and the REPL all work; workers never import __main__."""
    if how == "script":
        path = tmp_path / "no_guard.py"
        path.write_text(NO_GUARD)
        r = subprocess.run([PY, str(path)], capture_output=True, text=True, timeout=120)
    elif how == "-c":
        r = subprocess.run([PY, "-c", NO_GUARD], capture_output=True, text=True, timeout=120)
    elif how == "stdin":
        r = subprocess.run([PY, "-"], input=NO_GUARD, capture_output=True, text=True, timeout=120)
    else:
        lines = "\n".join(["import numpy as np", "from shmpool import Pool",
                           "x = np.random.default_rng(0).random(1000)", "x[[7, 113, 835]] += 97",
                           "p = Pool(workers=2)", "print(p.detect(x).tolist())",
                           "print(len(p.detect(np.random.default_rng(1).standard_normal(600_000))) > 0)",
                           "p.close()", ""])
        r = subprocess.run([PY, "-i", "-q"], input=lines, capture_output=True, text=True,
                           timeout=120)
    out = [ln.strip(">. ") for ln in r.stdout.splitlines() if ln.strip(">. ")]
    assert out == ["[7, 113, 835]", "True"], (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr


# -- forks -----------------------------------------------------------------------

FORK = """
import os, sys
import numpy as np
from shmpool import BrokenPool, Pool
x = np.random.default_rng(0).random(1000)
x[[7, 113, 835]] += 97
big = np.random.default_rng(1).standard_normal(600_000)
with Pool(workers=2) as p:
    buf = p.empty(1000)
    buf[:] = x
    expected_big = p.detect(big)
    before = sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{os.getpid()}-"))
    pid = os.fork()
    if pid == 0:
        try:
            p.detect(x)
            print("child: no error", flush=True)
        except BrokenPool as e:
            print("child: BrokenPool", "forked child" in str(e), flush=True)
        with Pool(workers=1) as own:           # a pool of its own works
            print("child own:", own.detect(x).tolist(), flush=True)
        sys.exit(0)                           # exit handlers run: they must not touch the parent's
    os.waitpid(pid, 0)
    after = sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{os.getpid()}-"))
    print("segments kept:", before == after, flush=True)
    print("parent:", p.detect(x).tolist(), p.detect(buf).tolist(),
          np.array_equal(p.detect(big), expected_big), flush=True)
"""


def test_a_forked_child_never_touches_its_parents_pool():
    """A child that forks after Pool() and exits destroyed the parent's pool
    (issue 10.1): now the child gets BrokenPool from the parent's pool, can
    have a pool of its own, and the parent goes on untouched."""
    r = run_script(FORK)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "child: BrokenPool True", "child own: [7, 113, 835]", "segments kept: True",
        "parent: [7, 113, 835] [7, 113, 835] True"], (r.stdout, r.stderr)


# -- killed hosts and the reaper ---------------------------------------------------

def test_ctrl_c_in_a_host_cleans_up():
    proc = subprocess.Popen([PY, "-c", textwrap.dedent("""
        import numpy as np, sys
        from shmpool import Pool
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
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 5)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_killed_host_workers_exit_and_segments_are_reaped(start_method):
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from shmpool import Pool
        p = Pool(workers=2, start_method={start_method!r})
        print(*p.worker_pids(), flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    pids = [int(s) for s in proc.stdout.readline().split()]
    mine = [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{proc.pid}-")]
    assert len(mine) == 5                          # 2 lanes x 2 segments + the owner file
    proc.kill()
    proc.wait()
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 5), \
        "workers outlived their host"
    reap_orphans()            # whoever reaps first (another shmpool process may), all go
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{proc.pid}-")]


HOLD = """
import os, sys, time
from shmpool._backend.segment import Segment
seg = Segment.create(10, 1)
print(seg.name, flush=True)
sys.stdin.readline()
"""


def test_the_reaper_decides_by_the_owner_lock_not_by_pid():
    """Reaping looked up the owner's pid, so a pool in another PID namespace
    (where its pid means nothing here) lost its live segments (issue 10.2)."""
    holder = subprocess.Popen([PY, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    name = holder.stdout.readline().strip()
    tag = L.OWNED_NAME_RE.fullmatch(name).group(1)
    # the same owner lock under a name whose pid exists nowhere: what another
    # namespace's owner looks like from here
    alias = f"shmpool-999999999-{tag.split('-')[1]}"
    os.link(f"/dev/shm/{L.owner_lock_name(tag)}", f"/dev/shm/{alias}-owner")
    seg_alias = f"{alias}-0011223344556677"
    with open(f"/dev/shm/{seg_alias}", "wb"):
        pass
    try:
        reaped = reap_orphans()
        assert name not in reaped and seg_alias not in reaped
        assert os.path.exists(f"/dev/shm/{name}") and os.path.exists(f"/dev/shm/{seg_alias}")
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
        holder_dead = reap_orphans()               # its lock died with it
        assert seg_alias in holder_dead or not os.path.exists(f"/dev/shm/{seg_alias}")
        assert not os.path.exists(f"/dev/shm/{alias}-owner")
    finally:
        for n in (f"{alias}-owner", seg_alias):
            try:
                os.unlink(f"/dev/shm/{n}")
            except FileNotFoundError:
                pass


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs unshare and root to make a PID namespace")
def test_a_pool_in_another_pid_namespace_keeps_its_segments():
    """The real thing: a Pool in a new PID namespace sharing /dev/shm, and a
    reaper here (issue 10.2)."""
    script = textwrap.dedent("""
        import os, sys
        from shmpool import Pool
        with Pool(workers=1) as p:
            print(os.getpid(), flush=True)
            sys.stdin.readline()
            print(p.detect([0.0] * 50 + [9.0]).tolist(), flush=True)
    """)
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", PY, "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    inner = proc.stdout.readline().strip()
    assert inner, proc.stderr.read()
    theirs = [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{inner}-")]
    assert theirs
    reap_orphans()
    assert all(os.path.exists(f"/dev/shm/{n}") for n in theirs)
    proc.stdin.write("\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert out.strip() == "[50]", err


def test_reaper_spares_live_owners_and_foreign_names():
    with Segment.create(1, L.KIND_DATA) as mine:
        dead_owner = "123456789-0badc0de"
        dead = f"shmpool-{dead_owner}-00112233aabbccdd"
        other = "shmpool-not-an-owned-name"
        no_owner_file = "shmpool-12-0fedcba9-00112233aabbccdd"   # never reaped without one
        a_dir = f"shmpool-{dead_owner}-00112233aabbccee"          # owned-looking, not a file
        for n in (L.owner_lock_name(dead_owner), dead, other, no_owner_file):
            with open(f"/dev/shm/{n}", "wb"):
                pass
        os.mkdir(f"/dev/shm/{a_dir}")
        try:
            reaped = reap_orphans()
            assert dead in reaped and not os.path.exists(f"/dev/shm/{dead}")
            assert not os.path.exists(f"/dev/shm/{L.owner_lock_name(dead_owner)}")
            assert other not in reaped and no_owner_file not in reaped and mine.name not in reaped
            assert a_dir not in reaped and os.path.isdir(f"/dev/shm/{a_dir}")
            assert os.path.exists(f"/dev/shm/{mine.name}")
            assert os.path.exists(f"/dev/shm/{L.owner_lock_name(owner())}")
        finally:
            for n in (other, no_owner_file):
                os.unlink(f"/dev/shm/{n}")
            os.rmdir(f"/dev/shm/{a_dir}")


def test_cleanup_command_reaps_only_orphans():
    dead_owner = "999999999-00c0ffee"
    orphan = f"shmpool-{dead_owner}-00112233aabbccdd"
    for n in (L.owner_lock_name(dead_owner), orphan):
        with open(f"/dev/shm/{n}", "wb"):
            pass
    with Segment.create(1, L.KIND_DATA) as live:
        r = subprocess.run([PY, "-m", "shmpool", "cleanup"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0
        assert f"unlinked /dev/shm/{orphan}" in r.stdout and live.name not in r.stdout
        assert not os.path.exists(f"/dev/shm/{orphan}")
        assert os.path.exists(f"/dev/shm/{live.name}")



def test_thousands_of_dropped_buffers_cost_no_call():
    """Each dropped empty() buffer queued a message for every worker, drained
    only when that worker was next used; 3,000 of them overflowed a socket
    and killed a healthy worker (issue 10.3).  Workers now follow segments
    by themselves: nothing is queued."""
    with Pool(workers=2) as p:
        pids = p.worker_pids()
        x = planted(0, n=100, at=(5, 50, 95))
        for _ in range(3000):
            b = p.empty(100)
            b[:] = x
            assert p.detect(b).tolist() == [5, 50, 95]       # small calls: one worker
            del b
        big = np.random.default_rng(2).standard_normal(600_000)
        assert len(p.detect(big)) > 0                         # a split call uses both
        assert p.worker_pids() == pids                        # no worker was killed
        for pid in pids:
            with open(f"/proc/{pid}/maps") as f:
                assert f.read().count("/dev/shm/shmpool-") <= 2 * 64


def test_without_an_interpreter_to_run_the_error_says_what_to_do():
    r = run_script("""
        import sys
        from shmpool import BrokenPool, Pool
        sys.executable = ""                      # as in some embedding applications
        try:
            Pool(workers=1)
        except BrokenPool as e:
            print("BrokenPool:", e)
        with Pool(workers=1, start_method="fork") as p:
            print(p.detect([0.0] * 30 + [9.0]).tolist())
    """)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert "sys.executable" in first and "start_method='fork'" in first
    assert second == "[30]"


MALLOC_PROBE = """
import ctypes, numpy as np
from shmpool._backend.worker import keep_temporaries
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
keep_temporaries()
before = libc.mallinfo2().hblkhd
x = np.ones(1 << 17)
print(libc.mallinfo2().hblkhd - before >= x.nbytes)
"""


@pytest.mark.parametrize("env,mapped", [({}, "False"), ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "True")],
                         ids=["workers keep 1 MiB blocks in the heap", "the environment's choice wins"])
def test_workers_malloc_tuning_yields_to_the_environment(env, mapped):
    """Workers raise glibc's mmap threshold so numpy temporaries are reused;
    a threshold set in the environment (the soak pins one) stays as set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    r = run_script(MALLOC_PROBE, env=dict(clean, **env))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [mapped]
