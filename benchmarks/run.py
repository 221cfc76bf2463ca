"""Benchmark every way to run the classic detector, side by side, on the same data.

    python -m benchmarks.run [--quick] [--max-size N] [--out DIR] [--no-go]

Methods (warm: every pool and server is started once, before timing):
numpy in-process (the reference one-liner); multiprocessing.Pool;
ProcessPoolExecutor; joblib Parallel (loky); a Python gRPC service in its own
process called from Python; shmpool Pool.detect on an ndarray (copy-in) and
on pool.empty() data (zero-copy); and from Go (benchmarks/go): the shmpool
host adapter against `shmpool serve`, and a Go gRPC client calling the same
Python gRPC service.  Plus, as diagnostics, shmpool's kernel in-process and
`shmpool serve` called from Python.

For every size (10^3 .. 10^8, see --max-size) all methods get the same
array.  Each method's answer is checked against numpy's before it is timed
(a wrong answer aborts that method, with the reason in the report).  Then
warm-up calls, then rounds in which the methods take turns (the order
rotates), each timing a batch of calls one by one.  The Go rows run after
the Python ones (the other pools stopped, to free memory), on the same data,
taking turns among themselves.  Reported: p50/p99 per
call for 10^3 and 10^4, median time, elements/s and GB/s of input for the
larger sizes, the ratio to numpy measured in the same run, the two-pass
bandwidth floor (benchmarks/bandwidth.py), and the project's targets,
MET or NOT MET.  Output: DIR/results.md, DIR/results.png, DIR/results.json.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import glob
import math
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from . import bandwidth
from . import go_bench
from . import methods as M
from . import procs
from . import report
from . import workers as W

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
SMALL_SIZES = (1_000, 10_000)

# n -> (warm-up calls, rounds, calls per method per round, time budget in s per method):
# a method whose timed calls at that size have used the budget stops its rounds there
FULL_SCHEDULE = {10**3: (300, 10, 300, 10.0), 10**4: (200, 10, 200, 10.0), 10**5: (20, 10, 30, 20.0),
                 10**6: (3, 10, 5, 30.0), 10**7: (2, 9, 1, 40.0), 10**8: (1, 3, 1, 60.0)}
QUICK_SCHEDULE = {10**3: (50, 3, 100, 3.0), 10**4: (20, 3, 40, 3.0), 10**5: (3, 3, 5, 3.0),
                  10**6: (1, 3, 2, 3.0)}


class Settings:
    def __init__(self, args):
        self.quick = args.quick
        self.schedule = QUICK_SCHEDULE if args.quick else FULL_SCHEDULE
        sizes = sorted(self.schedule)
        if args.max_size is not None:
            sizes = [n for n in sizes if n <= args.max_size]
        self.sizes = sizes
        self.call_limit_s = 5.0 if args.quick else 60.0     # skip a size whose projected call is longer
        self.bw_bytes = (256 << 20) if args.quick else (1 << 30)
        self.bw_trials = 3 if args.quick else 7
        self.go = not args.no_go
        self.go_build_timeout = 900.0
        self.seed = args.seed
        self.counted: set[str] = set()      # methods the progress bar counts


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="sizes 10^3..10^6 and few repeats (about a minute; for CI)")
    ap.add_argument("--max-size", type=float, default=None, metavar="N",
                    help="largest array size to run (e.g. 1e7); default 10^8 (10^6 with --quick)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                    help=f"where results.md, results.png and results.json go (default {DEFAULT_OUT})")
    ap.add_argument("--no-go", action="store_true", help="skip the Go host rows")
    ap.add_argument("--seed", type=int, default=20240601, help="seed of the data")
    args = ap.parse_args(argv)
    if args.max_size is not None:
        args.max_size = int(args.max_size)
    return args


# -- machine -------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def machine_info(cores: int) -> dict:
    import psutil

    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("shmpool", "grpc", "joblib", "matplotlib"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    try:   # read-only: --no-optional-locks keeps git from refreshing the index
        st = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "shmpool",
                             "host_adapters", "pyproject.toml"], cwd=HERE.parent, capture_output=True,
                            text=True, timeout=10).stdout
        dirty = [line[3:] for line in st.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        dirty = []
    vm = psutil.virtual_memory()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu or platform.processor() or "unknown",
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "l3_cache": _read("/sys/devices/system/cpu/cpu0/cache/index3/size"),
        "loadavg_start": list(os.getloadavg()),
        "ram_total_gb": vm.total / 1e9,
        "ram_available_gb": vm.available / 1e9,
        "dev_shm_free_gb": _shm_free() / 1e9,
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "git_uncommitted": dirty,
        "argv": sys.argv,
    }


def _shm_free() -> int:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 0


def memory_problem(n: int) -> str | None:
    """Why n values do not fit now (None if they do).

    Peak use, counted generously in copies of the input: the data, numpy's
    temporaries, pickles in flight, the gRPC request/response copies on both
    sides, the Go process's copies; in /dev/shm the zero-copy buffer, the
    copy-in staging segment, joblib's memmaps and the Go segments.
    """
    import psutil

    b = 8 * n
    need_ram, need_shm = 12 * b, 5 * b
    avail, shm = psutil.virtual_memory().available, _shm_free()
    if avail < need_ram:
        return f"needs ~{need_ram / 1e9:.1f} GB of RAM, {avail / 1e9:.1f} GB available"
    if shm < need_shm:
        return f"needs ~{need_shm / 1e9:.1f} GB free in /dev/shm, {shm / 1e9:.1f} GB free"
    return None


def make_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, n])
    x = rng.standard_normal(n)
    x[[7, n // 3, n - 5]] += 50.0          # planted outliers, on top of the normal 4.6 % tail
    return x


# -- timing --------------------------------------------------------------------------

def timed_calls(fn, arg, calls: int, want: np.ndarray) -> list[int]:
    """Time *calls* calls one by one (ns); every answer must equal the checked one."""
    lat = []
    was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            got = fn(arg)
            t1 = time.perf_counter_ns()
            lat.append(t1 - t0)
            if len(got) != len(want) or not np.array_equal(got, want):
                raise W.Mismatch("a timed call's answer differs from the checked one")
            del got
    finally:
        if was:
            gc.enable()
    return lat


def summarize(lat_ns: list[int], n: int) -> dict:
    a = np.asarray(lat_ns, dtype=np.float64) / 1e9
    med = float(np.median(a))
    return {
        "calls": len(lat_ns),
        "p50_s": med,
        "p99_s": float(np.percentile(a, 99)),
        "mean_s": float(a.mean()),
        "min_s": float(a.min()),
        "median_s": med,
        "elements_per_s": n / med,
        "gb_per_s": 8 * n / med / 1e9,
    }


class Recorder:
    """Collects every method's per-size outcome into the JSON document."""

    def __init__(self):
        self.methods: dict[str, dict] = {}

    def declare(self, key, label, group, how, available=True, reason=""):
        self.methods[key] = {"key": key, "label": label, "group": group, "how": how,
                             "available": available, "reason": reason, "sizes": {}}

    def size(self, key, n) -> dict:
        return self.methods[key]["sizes"].setdefault(str(n), {"n": n})

    def unavailable(self, key, reason):
        self.methods[key]["available"] = False
        self.methods[key]["reason"] = reason


def projected_call_s(rec: Recorder, key: str, n: int) -> tuple[float, int] | None:
    """Linear projection of one call at n from the largest size already timed."""
    done = [(int(k), v["median_s"]) for k, v in rec.methods[key]["sizes"].items()
            if "median_s" in v and int(k) < n]
    if not done:
        return None
    n0, t0 = max(done)
    return t0 * n / n0, n0


# -- the run -------------------------------------------------------------------------

def run_size(n: int, x: np.ndarray, check, meths: list[M.Method], rec: Recorder, st: Settings, bar) -> None:
    warmup, rounds, calls, budget = st.schedule[n]
    active = []   # (method, arg, checked answer)
    for m in meths:
        if not m.available:
            if m.key in st.counted:
                bar.update(rounds)
            continue
        s = rec.size(m.key, n)
        proj = projected_call_s(rec, m.key, n)
        if proj is not None and proj[0] > st.call_limit_s:
            s["skipped"] = (f"projected {proj[0]:.1f} s per call (linear from n={proj[1]:,}) exceeds the "
                            f"{st.call_limit_s:.0f} s limit")
            bar.update(rounds)
            continue
        bar.set_postfix_str(f"n={n:,} check {m.key}")
        arg = None
        try:
            arg = m.prepare(x)
            got = m.call(arg)
            check(got)
        except W.Mismatch as e:
            s["correct"] = False
            s["error"] = f"correctness check failed: {e}"
            m.available = False
            rec.unavailable(m.key, f"aborted: correctness check failed at n={n:,}: {e}")
            if arg is not None:
                m.release(arg)
            bar.update(rounds)
            continue
        except Exception as e:  # noqa: BLE001 - one method's failure is reported, not fatal
            s["error"] = f"{type(e).__name__}: {e}"
            if arg is not None:
                try:
                    m.release(arg)
                except Exception:  # noqa: BLE001
                    pass
            bar.update(rounds)
            continue
        s["correct"] = True
        s["found"] = int(len(got))
        active.append([m, arg, np.array(got, copy=True), [], 0.0, False])
    try:
        for entry in active:
            m, arg = entry[0], entry[1]
            bar.set_postfix_str(f"n={n:,} warm-up {m.key}")
            try:
                for _ in range(warmup):
                    m.call(arg)
            except Exception as e:  # noqa: BLE001
                rec.size(m.key, n)["error"] = f"warm-up call failed: {type(e).__name__}: {e}"
                entry[5] = True
        for r in range(rounds):
            for k in range(len(active)):
                entry = active[(r + k) % len(active)]
                m, arg, want, lat, spent, stopped = entry
                bar.update(1)
                if stopped:
                    continue
                bar.set_postfix_str(f"n={n:,} round {r + 1}/{rounds} {m.key}")
                try:
                    t = timed_calls(m.call, arg, calls, want)
                except W.Mismatch as e:
                    s = rec.size(m.key, n)
                    s["correct"] = False
                    s["error"] = f"correctness check failed: {e}"
                    m.available = False
                    rec.unavailable(m.key, f"aborted: {e} (n={n:,})")
                    entry[5] = True
                    lat.clear()
                    continue
                except Exception as e:  # noqa: BLE001
                    rec.size(m.key, n)["error"] = f"timed call failed: {type(e).__name__}: {e}"
                    entry[5] = True
                    lat.clear()
                    continue
                lat.extend(t)
                entry[4] = spent = spent + sum(t) / 1e9
                if spent > budget and r + 1 < rounds:
                    entry[5] = True
                    rec.size(m.key, n)["note"] = (f"stopped after {len(lat)} calls: its {budget:.0f} s "
                                                  f"budget at this size was used")
        for m, arg, want, lat, spent, stopped in active:
            if lat:
                rec.size(m.key, n).update(summarize(lat, n), lat_ns=lat)
    finally:
        for entry in active:
            try:
                entry[0].release(entry[1])
            except Exception:  # noqa: BLE001
                pass
            entry[1] = None


def go_size(go: go_bench.GoRunner, n, x, ref, mean, cut, scale, grpc_socket, rec, st, bar, doc) -> None:
    warmup, rounds, calls, budget = st.schedule[n]
    todo = []
    for key, _, _ in go_bench.METHODS:
        proj = projected_call_s(rec, key, n)
        if proj is not None and proj[0] > st.call_limit_s:
            rec.size(key, n)["skipped"] = (f"projected {proj[0]:.1f} s per call (linear from "
                                           f"n={proj[1]:,}) exceeds the {st.call_limit_s:.0f} s limit")
        else:
            todo.append(key)
    bar.set_postfix_str(f"n={n:,} Go")
    if todo:
        # budget: the Go program may use its rounds' worth of time for every method
        timeout = 120.0 + 3 * len(todo) * (budget + (warmup + 2) * st.call_limit_s)
        first = "go_ping_ns" not in doc
        results, errors, ping = go.run_size(n, x, ref, mean, cut, scale, warmup, rounds, calls, budget,
                                            grpc_socket, timeout, ping_calls=(300 if st.quick else 3000) if first else 0)
        if first and ping:
            doc["go_ping_ns"] = ping
        for key in todo:
            s = rec.size(key, n)
            r = results.get(key)
            if r is None:
                s["error"] = "; ".join(errors) or "no result from the Go program"
                continue
            s["correct"] = bool(r.get("correct"))
            if r.get("found") is not None and r.get("correct"):
                s["found"] = r["found"]
            if r.get("error"):
                s["error"] = r["error"]
                if "correctness check failed" in r["error"]:
                    rec.unavailable(key, f"aborted: {r['error']} (n={n:,})")
            if r.get("note"):
                s["note"] = r["note"]
            if r.get("lat_ns") and s["correct"]:
                s.update(summarize(r["lat_ns"], n), lat_ns=r["lat_ns"])
        if errors:
            rec.methods["go_shmpool"].setdefault("go_errors", []).extend(errors)
    bar.update(1)


def diag_size(sizes: list[int]) -> int | None:
    """The large size the diagnostics look at: 10^7 if it runs, else the largest >= 10^6."""
    if 10**7 in sizes:
        return 10**7
    return max((n for n in sizes if n >= 10**6), default=None)


def profile_per_call(call, calls: int) -> list[tuple[str, float, float, float]]:
    """cProfile *calls* runs of call(): (function, calls, own s, cumulative s)
    per run, heaviest own time first."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call()
    prof.disable()
    rows = [(f"{Path(file).name}:{line}({fn})" if line else fn, nc / calls, tt / calls, ct / calls)
            for (file, line, fn), (_cc, nc, tt, ct, _) in pstats.Stats(prof).stats.items()]
    return sorted(rows, key=lambda r: -r[2])


def hotspots(holder: M.PoolHolder, serve: go_bench.Serve, sizes: list[int], seed: int, quick: bool) -> dict:
    """Where shmpool's time goes: host-side profile of a small call, per-worker kernel cost
    of a large one, and the copy-in cost."""

    from shmpool import detectors

    out = {}
    pool = holder.pool
    if pool is None:
        return out

    def med(fn, reps):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    if 1000 in sizes:
        x = make_data(1000, seed)
        calls = 2000 if quick else 20000
        for _ in range(200):
            pool.detect(x)
        rows = [{"function": f, "calls_per_detect": nc, "tottime_us_per_detect": tt * 1e6,
                 "cumtime_us_per_detect": ct * 1e6}
                for f, nc, tt, ct in profile_per_call(lambda: pool.detect(x), calls)]
        out["n1000_profile"] = {
            "calls": calls,
            "note": ("cProfile of the host side of pool.detect(x), x an ndarray of 1,000 floats; the time in "
                     "recv_spinning/poll/recv is the wait for the worker (its kernel plus the socket round "
                     "trip); cProfile inflates every Python-level call"),
            "top": rows[:12],
        }
        out["n1000_kernel_s"] = med(lambda: detectors.classic(x), 2000)
        out["n1000_numpy_s"] = med(lambda: W.one_liner(x), 2000)
        out["n1000_copy_s"] = med(lambda: np.copyto(np.empty_like(x), x), 2000)
        if serve.available:
            from shmpool.client import Client
            with Client(serve.socket, timeout=60.0) as c:
                out["serve_ping_python_s"] = med(c.ping, 300 if quick else 3000)
    big = diag_size(sizes)
    if big is not None:
        x = make_data(big, seed)
        half = x[: big // 2]
        reps = 3 if quick else 7
        s = detectors.chunk_stats(half, "raise")
        t_stats = med(lambda: detectors.chunk_stats(half, "raise"), reps)
        mean, cut = s.mean, 2.0 * math.sqrt(s.m2 / s.n)
        t_thr = med(lambda: detectors.chunk_threshold(half, mean, cut, 0, "raise"), reps)
        buf = pool.empty(big)
        try:
            t_copy = med(lambda: np.copyto(buf, x), reps)
            t_zc = med(lambda: pool.detect(buf), reps)
            buf[:] = x
            rows = [{"function": f, "calls_per_detect": nc, "tottime_ms_per_detect": tt * 1e3}
                    for f, nc, tt, _ in profile_per_call(lambda: pool.detect(buf), reps)]
        finally:
            del buf
            gc.collect()
        out["big"] = {
            "n": big,
            "worker_stats_half_s": t_stats,
            "worker_threshold_half_s": t_thr,
            "worker_kernel_half_s": t_stats + t_thr,
            "kernel_full_1core_s": med(lambda: detectors.classic(x), reps),
            "copy_in_s": t_copy,
            "zero_copy_detect_s": t_zc,
            "host_profile_top": rows[:8],
            "note": (f"chunk_stats and chunk_threshold over one half of the {big:,} values, in this process "
                     f"(what each of 2 workers does, measured alone, so without the other worker competing "
                     f"for memory bandwidth); copy_in = np.copyto of the whole input into a pool.empty "
                     f"segment (what the copy-in path adds)"),
        }
    return out


def leftover_shm(pids: set[int]) -> list[str]:
    patterns = ("/dev/shm/shmpool-{}-*", "/dev/shm/joblib_memmapping_folder_{}_*", "/dev/shm/sem.loky-{}-*",
                "/dev/shm/shmpool-bench-{}-*")
    return sorted(p for pid in pids for pat in patterns for p in glob.glob(pat.format(pid)))


def main(argv=None) -> int:
    args = parse_args(argv)
    st = Settings(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    t_start = time.monotonic()
    cores = len(os.sched_getaffinity(0))
    meta = machine_info(cores)
    meta["mode"] = "quick" if st.quick else "full"
    print(f"shmpool benchmark ({meta['mode']}): {cores} cores, {meta['cpu_model']}; sizes "
          f"{', '.join(f'{n:.0e}' for n in st.sizes)}", file=sys.stderr)

    # 1. the bandwidth floor, first: it forks, before any thread exists
    bw_bytes = st.bw_bytes
    import psutil
    while bw_bytes > (64 << 20) and psutil.virtual_memory().available < 3 * bw_bytes:
        bw_bytes //= 2
    def measure_bw(when):
        print(f"measuring read bandwidth ({when}: {cores} processes, {bw_bytes / 2**30:.2f} GiB) ...",
              file=sys.stderr)
        try:
            return dict(bandwidth.measure(bw_bytes, cores, st.bw_trials), when=when)
        except Exception as e:  # noqa: BLE001
            return {"gb_s": None, "error": f"{type(e).__name__}: {e}", "when": when}

    bw_runs = [measure_bw("before the rounds")]
    bw = bandwidth.combine(bw_runs)
    big = diag_size(st.sizes)
    parallel_kernel = None
    if big is not None and memory_problem(big) is None:
        print(f"timing shmpool's kernel on {cores} processes at once, no IPC ...", file=sys.stderr)
        try:
            parallel_kernel = bandwidth.measure_parallel_kernel(big, cores, 3 if st.quick else 9, st.seed)
        except Exception as e:  # noqa: BLE001
            parallel_kernel = {"error": f"{type(e).__name__}: {e}"}

    from tqdm import tqdm

    tmpdir = M.make_tmpdir()
    meta["tmpdir"] = tmpdir
    # cleans up if this process is killed outright (see _janitor.py)
    procs.spawn([sys.executable, "-m", "benchmarks._janitor", str(os.getpid()), tmpdir], os.devnull)
    rec = Recorder()
    holder = M.PoolHolder(cores)
    serve = go_bench.Serve(tmpdir, cores)
    meths: list[M.Method] = [M.Numpy(), M.Kernel(), M.MpPool(cores), M.Executor(cores), M.Joblib(cores),
                             M.Grpc(cores, tmpdir), M.ShmpoolCopy(holder), M.ShmpoolZero(holder),
                             M.ServeClient(serve), M.Ray(cores)]
    grpc_m = next(m for m in meths if isinstance(m, M.Grpc))
    go = go_bench.GoRunner(tmpdir, serve)
    for m in meths:
        rec.declare(m.key, m.label, m.group, m.how)
    for key, label, how in go_bench.METHODS:
        rec.declare(key, label, "go", how, available=False,
                    reason="skipped (--no-go)" if not st.go else "not started")
    doc = {"meta": meta, "bandwidth": bw, "parallel_kernel": parallel_kernel, "sizes": st.sizes, "settings": {
        "schedule": {str(n): dict(zip(("warmup", "rounds", "calls", "budget_s"), st.schedule[n]))
                     for n in st.sizes},
        "call_limit_s": st.call_limit_s,
        "workers": cores}, "size_skips": {}, "methods": rec.methods}
    my_pids = {os.getpid()}
    status = 0
    try:
        # 2. start everything (servers first: they take longest)
        print("starting pools and servers ...", file=sys.stderr)
        for m in meths:
            try:
                m.start()
            except Exception as e:  # noqa: BLE001
                m.available = False
                rec.unavailable(m.key, f"could not start: {type(e).__name__}: {e}")
        if holder.pool is not None:
            my_pids.update(holder.pool.worker_pids())
        if st.go:
            print("building benchmarks/go and starting `shmpool serve` ...", file=sys.stderr)
            if go.build(st.go_build_timeout):
                go.ready()
            meta["go_version"] = go.go_version
            for key, _, _ in go_bench.METHODS:
                if go.available:
                    rec.methods[key]["available"] = True
                    rec.methods[key]["reason"] = ""
                else:
                    rec.unavailable(key, go.reason)
            if go.available and not grpc_m.available:
                rec.unavailable("go_grpc", "the Python gRPC service did not start")

        st.counted = {m.key for m in meths if m.available}
        n_python = len(st.counted)
        total = sum(st.schedule[n][1] * n_python + (1 if go.available else 0) for n in st.sizes)
        bar = tqdm(total=total, desc="benchmark", unit="batch", file=sys.stderr, dynamic_ncols=True)

        def size_data(n):
            bar.set_postfix_str(f"n={n:,} data")
            x = make_data(n, st.seed)
            mean, cut = float(x.mean()), 2.0 * float(x.std())
            return x, W.one_liner(x), mean, cut, max(float(np.abs(x).max()), cut)

        try:
            # 3. the Python methods, size by size, taking turns within a size
            for n in st.sizes:
                why = memory_problem(n) if n >= 10**7 else None
                if why:
                    doc["size_skips"][str(n)] = why
                    for key in rec.methods:
                        rec.size(key, n)["skipped"] = f"size skipped: {why}"
                    bar.update(st.schedule[n][1] * n_python)
                    continue
                x, ref, mean, cut, scale = size_data(n)

                def check(got, x=x, ref=ref, mean=mean, cut=cut, scale=scale):
                    W.check_answer(got, x, ref, mean, cut, scale)

                run_size(n, x, check, meths, rec, st, bar)
                del x, ref, check
                gc.collect()

            # 4. the bandwidth again (the floor takes the best), then where shmpool's time goes
            bar.set_postfix_str("bandwidth")
            bw_runs.append(measure_bw("after the rounds"))
            doc["bandwidth"] = bandwidth.combine(bw_runs)
            bar.set_postfix_str("profiling shmpool")
            try:
                doc["hotspots"] = hotspots(holder, serve, st.sizes, st.seed, st.quick)
            except Exception as e:  # noqa: BLE001
                doc["hotspots"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}

            # 5. the Go host, on the same data (regenerated from the seed); it needs only the
            # gRPC service and `shmpool serve`, so everything else is stopped first to free memory
            for m in meths:
                if m is not grpc_m:
                    try:
                        m.stop()
                    except Exception as e:  # noqa: BLE001
                        print(f"stopping {m.key}: {e}", file=sys.stderr)
            holder.close()
            gc.collect()
            if go.available:
                for n in st.sizes:
                    why = doc["size_skips"].get(str(n)) or (memory_problem(n) if n >= 10**7 else None)
                    if why:
                        for key, _, _ in go_bench.METHODS:
                            rec.size(key, n)["skipped"] = f"size skipped: {why}"
                        bar.update(1)
                        continue
                    x, ref, mean, cut, scale = size_data(n)
                    go_size(go, n, x, ref, mean, cut, scale,
                            grpc_m.socket if grpc_m.available else None, rec, st, bar, doc)
                    del x, ref
                    gc.collect()
        finally:
            bar.close()
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        meta["interrupted"] = True
        status = 130
    finally:
        for m in meths:
            try:
                m.stop()
            except Exception as e:  # noqa: BLE001
                print(f"stopping {m.key}: {e}", file=sys.stderr)
        holder.close()
        serve.stop()
        procs.stop_all()
        shutil.rmtree(tmpdir, ignore_errors=True)

    report.add_derived(doc)
    meta["duration_s"] = time.monotonic() - t_start
    meta["loadavg_end"] = list(os.getloadavg())
    left = leftover_shm(my_pids)
    doc["leftover_segments"] = left
    paths = report.write_all(doc, out_dir)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    print(report.targets_text(doc))
    if left:
        print(f"WARNING: segments left in /dev/shm: {left}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
