"""Benchmark shmpool against its targets: every way to run the classic detector, side by side.

    python -m benchmarks.run [--quick] [--max-size N] [--out DIR] [--no-go] [--no-embed]
                             [--methods KEY,...] [--idle-seconds S]

Python methods (warm: every pool and server is started once, before timing):
numpy in-process (the reference one-liner); multiprocessing.Pool;
ProcessPoolExecutor; joblib Parallel (loky); a Python gRPC service in its own
process; shmpool Pool.detect on an ndarray (copy-in) and on pool.empty() data
(zero-copy); RayPool (if Ray is installed); a user's SplitDetector split over
the workers against the same detector as a plain function on one worker (the
plug-in rows).  Go (benchmarks/go): the shmpool adapter's Detect, DetectBuffer
and DetectWith a module:function numpy detector against `shmpool serve`, and
grpc-go calling the Python gRPC service; and the anchor of every Go row,
CPython embedded in Go with cgo calling numpy in process (benchmarks/go/embed),
with and without taking the GIL per call.  Then calls/s of one Go Client
shared by 1 and by 4 goroutines, and of the GIL-taking embed; and the CPU
that an idle `shmpool serve` and an idle Pool use.

For every size (10^3 .. 10^8, see --max-size) all methods get the same
array.  Each method's answer is checked against numpy's before it is timed
(a wrong answer aborts that method, with the reason in the report).  Then
warm-up calls, then rounds in which the methods take turns (the order
rotates), each timing a batch of calls one by one.  The Go and embed rows
run after the Python ones (the other pools stopped, to free memory), on the
same data; the two programs take turns in passes.  Reported: p50/p99 per call
for 10^3 and 10^4, median time, elements/s and GB/s of input for the larger
sizes, ratios to numpy measured in the same run, the two-pass bandwidth floor
(benchmarks/bandwidth.py), and the project's targets, MET / NOT MET / NOT
MEASURED.  Output: DIR/results.md, DIR/results.png, DIR/results.json.
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

from . import bandwidth, embed_bench, go_bench, idle, procs, report
from . import detectors as D
from . import methods as M
from . import workers as W

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
SMALL_SIZES = (1_000, 10_000)

# n -> (warm-up calls, rounds, calls per method per round, time budget in s per method):
# a method whose timed calls at that size have used the budget stops its rounds there
FULL_SCHEDULE = {10**3: (300, 10, 300, 10.0), 10**4: (200, 10, 200, 10.0), 10**5: (20, 10, 30, 20.0),
                 10**6: (3, 10, 5, 30.0), 10**7: (2, 9, 1, 40.0), 10**8: (1, 3, 1, 60.0)}
QUICK_SCHEDULE = {10**3: (30, 2, 60, 0.6), 10**4: (10, 2, 20, 0.6), 10**5: (2, 2, 4, 0.6),
                  10**6: (1, 2, 2, 0.6)}

# calls/s at 1,000 floats: (passes, rounds per pass, seconds per goroutine count per round)
FULL_CONCURRENCY = (2, 3, 1.5)
QUICK_CONCURRENCY = (1, 1, 0.3)
GOROUTINES = [1, 4]


class Settings:
    def __init__(self, args):
        self.quick = args.quick
        self.schedule = QUICK_SCHEDULE if args.quick else FULL_SCHEDULE
        sizes = sorted(self.schedule)
        if args.max_size is not None:
            sizes = [n for n in sizes if n <= args.max_size]
        self.sizes = sizes
        self.call_limit_s = 5.0 if args.quick else 60.0     # skip a size whose projected call is longer
        self.bw_bytes = (128 << 20) if args.quick else (1 << 30)
        self.bw_trials = 2 if args.quick else 7
        self.go = not args.no_go
        self.embed = self.go and not args.no_embed
        self.go_build_timeout = 900.0
        self.passes = 1 if args.quick else 2        # Go and embed programs take turns this many times
        self.concurrency = QUICK_CONCURRENCY if args.quick else FULL_CONCURRENCY
        self.leak_calls = 5_000 if args.quick else 200_000
        self.idle_seconds = (args.idle_seconds if args.idle_seconds is not None
                             else 2.0 if args.quick else 10.0)
        self.methods = args.methods
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
    ap.add_argument("--no-go", action="store_true", help="skip the Go rows (the Go host and the cgo embed)")
    ap.add_argument("--no-embed", action="store_true", help="skip the cgo-embedded CPython rows only")
    ap.add_argument("--methods", default=None, metavar="KEY,...",
                    help="run only these Python methods (keys as in results.json; numpy always runs)")
    ap.add_argument("--idle-seconds", type=float, default=None, metavar="S",
                    help="length of the idle-CPU window (default 10; 2 with --quick)")
    ap.add_argument("--seed", type=int, default=20240601, help="seed of the data")
    args = ap.parse_args(argv)
    if args.max_size is not None:
        args.max_size = int(args.max_size)
    if args.methods is not None:
        args.methods = {k.strip() for k in args.methods.split(",") if k.strip()} | {"numpy"}
    return args


# -- machine -------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def git_state(out_dir: Path | None = None) -> tuple[str, list[str]]:
    """(short commit, with "+dirty" when the tree differs from it; the differing paths).

    The tree is read at the start of the run; the output directory (results of
    an earlier run) does not count."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "", []
    if not commit:
        return "", []
    skip = []
    for d in {DEFAULT_OUT, out_dir}:
        if d is None:
            continue
        try:
            skip.append(str(Path(d).resolve().relative_to(HERE.parent)).rstrip("/") + "/")
        except ValueError:
            pass
    try:   # read-only: --no-optional-locks keeps git from refreshing the index
        st = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=all"],
                            cwd=HERE.parent, capture_output=True, text=True, timeout=30).stdout
        dirty = [line[3:] for line in st.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        dirty = []
    dirty = [p for p in dirty if not any(p.startswith(k) for k in skip)]
    return commit + ("+dirty" if dirty else ""), dirty


def machine_info(cores: int, out_dir: Path | None = None) -> dict:
    import psutil

    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("shmpool", "grpc", "joblib", "matplotlib", "ray"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = "not installed"
    commit, dirty = git_state(out_dir)
    vm = psutil.virtual_memory()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
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
    copy-in staging segment, the plug-in rows' buffers, joblib's memmaps and
    the Go segments.
    """
    import psutil

    b = 8 * n
    need_ram, need_shm = 12 * b, 7 * b
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

    def available_as(self, methods, runner):
        """The rows of a Go program's METHODS, available as its runner is, else with the runner's reason."""
        for key, _, _ in methods:
            self.methods[key]["available"] = runner.available
            self.methods[key]["reason"] = "" if runner.available else runner.reason


def projected_call_s(rec: Recorder, key: str, n: int) -> tuple[float, int] | None:
    """Linear projection of one call at n from the largest size already timed."""
    done = [(int(k), v["median_s"]) for k, v in rec.methods[key]["sizes"].items()
            if "median_s" in v and int(k) < n]
    if not done:
        return None
    n0, t0 = max(done)
    return t0 * n / n0, n0


# -- the run -------------------------------------------------------------------------

class Checks:
    """The correctness checks of one size, by the rule a method answers ("classic", "zscore")."""

    def __init__(self, x: np.ndarray, ref: np.ndarray, mean: float, cut: float, scale: float):
        self.x = x
        self.rules = {"classic": (ref, mean, cut, scale)}

    def rule(self, kind: str):
        if kind not in self.rules:
            if kind != "zscore":
                raise KeyError(kind)
            x = self.x
            mean, cut = float(x.mean()), D.ZSCORE_THRESHOLD * float(x.std())
            self.rules[kind] = (D.zscore_reference(x), mean, cut, max(float(np.abs(x).max()), cut))
        return self.rules[kind]

    def __call__(self, kind: str, got) -> None:
        ref, mean, cut, scale = self.rule(kind)
        W.check_answer(got, self.x, ref, mean, cut, scale)


def run_size(n: int, x: np.ndarray, checks, meths: list[M.Method], rec: Recorder, st: Settings, bar) -> None:
    """Check, warm up and time every available method at one size (methods taking turns).

    *checks(kind, got)* raises workers.Mismatch unless *got* is the answer of rule *kind*
    (a method's ``answer``); ``m.verify(arg, got)`` may check more."""
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
            checks(m.answer, got)
            m.verify(arg, got)
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
                    rec.size(m.key, n)["note"] = (f"stopped after {len(lat)} calls: its {budget:.1f} s "
                                                  f"budget at this size was used")
        for m, _arg, _want, lat, _spent, _stopped in active:
            if lat:
                rec.size(m.key, n).update(summarize(lat, n), lat_ns=lat)
    finally:
        for entry in active:
            try:
                entry[0].release(entry[1])
            except Exception:  # noqa: BLE001
                pass
            entry[1] = None


def _record_program(rec: Recorder, n: int, results: dict, keys: list[str], errors: list[str],
                    merged: dict) -> None:
    """Fold one pass of a Go program's per-size results into *merged* (key -> result)."""
    for key in keys:
        r = results.get(key)
        m = merged.setdefault(key, {"lat_ns": [], "errors": []})
        if r is None:
            m["errors"].append("; ".join(errors) or "no result from the program")
            continue
        if r.get("error"):
            m["errors"].append(r["error"])
            if "correctness check failed" in r["error"] or "differs from the checked one" in r["error"]:
                m["wrong"] = True
        m["correct"] = bool(r.get("correct")) and m.get("correct", True) and not m.get("wrong")
        if r.get("correct") and r.get("found") is not None:
            m["found"] = r["found"]
        if r.get("note"):
            m["note"] = r["note"]
        if r.get("correct"):
            m["lat_ns"].extend(r.get("lat_ns") or [])


def go_embed_size(go: go_bench.GoRunner, emb: embed_bench.EmbedRunner, files: go_bench.DataFiles,
                  grpc_socket, rec: Recorder, st: Settings, bar, doc) -> None:
    """The Go program and the embed program at one size, taking turns in passes."""
    n = files.n
    warmup, rounds, calls, budget = st.schedule[n]
    runners = []
    if go.available:
        runners.append(("go", go, [k for k, _, _ in go_bench.METHODS]))
    if emb.available:
        runners.append(("embed", emb, [k for k, _, _ in embed_bench.METHODS]))
    todo = {}
    for tag, _runner, keys in runners:
        todo[tag] = []
        for key in keys:
            if not rec.methods[key]["available"]:
                continue
            proj = projected_call_s(rec, key, n)
            if proj is not None and proj[0] > st.call_limit_s:
                rec.size(key, n)["skipped"] = (f"projected {proj[0]:.1f} s per call (linear from "
                                               f"n={proj[1]:,}) exceeds the {st.call_limit_s:.0f} s limit")
            else:
                todo[tag].append(key)
    passes = st.passes if rounds >= 2 * st.passes else 1
    merged: dict = {}
    for p in range(passes):
        order = runners if p % 2 == 0 else runners[::-1]
        r_this = rounds // passes + (1 if p < rounds % passes else 0)
        for tag, runner, _keys in order:
            if not todo.get(tag):
                continue
            bar.set_postfix_str(f"n={n:,} {tag} pass {p + 1}/{passes}")
            timeout = 120.0 + 3 * len(todo[tag]) * (budget / passes + (warmup + 2) * st.call_limit_s)
            plan = {"methods": todo[tag], "sizes": [files.size_plan(warmup, r_this, calls, budget / passes)]}
            if tag == "go":
                first = "go_ping_ns" not in doc
                plan["ping_calls"] = ((300 if st.quick else 3000) if first else 0)
                plan["grpc_target"] = f"unix://{os.path.abspath(grpc_socket)}" if grpc_socket else ""
                out, errors = runner.run(plan, f"{n}-{p}", timeout)
                if out is not None and first and out.get("ping_ns"):
                    doc["go_ping_ns"] = out["ping_ns"]
                if out is not None:
                    doc.setdefault("go_info", {"workers": out.get("workers"),
                                               "detectors": out.get("detectors"),
                                               "gomaxprocs": out.get("gomaxprocs")})
            else:
                out, errors = runner.run(plan, f"{n}-{p}", timeout)
            results = {r["method"]: r for r in (out or {}).get("results", []) if r["n"] == n}
            _record_program(rec, n, results, todo[tag], errors, merged)
            if errors:
                doc.setdefault("program_errors", []).extend(f"{tag} n={n:,}: {e}" for e in errors)
    for key, m in merged.items():
        s = rec.size(key, n)
        s["correct"] = bool(m.get("correct")) and not m.get("wrong")
        if m.get("found") is not None and s["correct"]:
            s["found"] = m["found"]
        if m["errors"]:
            s["error"] = "; ".join(dict.fromkeys(m["errors"]))
            if m.get("wrong"):
                rec.unavailable(key, f"aborted: {s['error']} (n={n:,})")
        if m.get("note"):
            s["note"] = m["note"]
        if m["lat_ns"] and s["correct"]:
            s.update(summarize(m["lat_ns"], n), lat_ns=m["lat_ns"])
            s["passes"] = passes
    bar.update(1)


def concurrency(go: go_bench.GoRunner, emb: embed_bench.EmbedRunner, files: go_bench.DataFiles,
                st: Settings, bar) -> dict:
    """calls/s at 1,000 floats: one Go Client shared by 1 and 4 goroutines, and the GIL-taking
    embed from 1 and 4 goroutines; the two programs take turns; plus the embed's leak check."""
    passes, rounds, seconds = st.concurrency
    out: dict = {"n": files.n, "goroutines": GOROUTINES, "passes": passes, "rounds_per_pass": rounds,
                 "seconds_per_round": seconds, "runs": {}, "errors": []}
    runners = [r for r in (("go", go), ("embed", emb)) if r[1].available]
    for p in range(passes):
        for tag, runner in (runners if p % 2 == 0 else runners[::-1]):
            bar.set_postfix_str(f"calls/s {tag} pass {p + 1}/{passes}")
            plan = {"methods": [], "sizes": [], "concurrency": files.conc_plan(GOROUTINES, rounds, seconds)}
            if tag == "embed" and p == 0 and st.leak_calls:
                plan.update(methods=[k for k, _, _ in embed_bench.METHODS], leak_calls=st.leak_calls,
                            leak_n=files.n, leak_data_file=files.data)
            timeout = 120.0 + 2 * len(GOROUTINES) * rounds * seconds + st.leak_calls * 2e-3
            res, errors = runner.run(plan, f"conc-{p}", timeout)
            out["errors"].extend(f"{tag}: {e}" for e in errors)
            for c in (res or {}).get("concurrency", []):
                key = "go_shmpool" if tag == "go" else c["method"]
                row = out["runs"].setdefault(key, {}).setdefault(str(c["goroutines"]),
                                                                 {"calls": 0, "seconds": 0.0, "errors": []})
                row["calls"] += c["calls"]
                row["seconds"] += c["seconds"]
                if c.get("error"):
                    row["errors"].append(c["error"])
            if res is not None and res.get("leak"):
                out["leak"] = res["leak"]
    for rows in out["runs"].values():
        for row in rows.values():
            ok = row["seconds"] > 0 and not row["errors"]
            row["calls_per_s"] = row["calls"] / row["seconds"] if ok else None
    bar.update(1)
    return out


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


def alternate(pk: bandwidth.ParallelKernel, detect, trials: int) -> dict:
    """The kernel on every core without the pool, and pool.detect, in turns (one warm-up each)."""
    p1, p2, pool_s = [], [], []
    for t in range(trials + 1):
        a, b = pk.trial()
        t0 = time.perf_counter()
        detect()
        d = time.perf_counter() - t0
        if t:
            p1.append(a)
            p2.append(b)
            pool_s.append(d)
    return {"n": pk.n, "processes": pk.procs, "trials": trials, "pass1_s": float(np.median(p1)),
            "pass2_s": float(np.median(p2)), "total_s": float(np.median(p1) + np.median(p2)),
            "pool_detect_s": float(np.median(pool_s))}


def hotspots(holder: M.PoolHolder, serve: go_bench.Serve, sizes: list[int], seed: int, quick: bool,
             pk: bandwidth.ParallelKernel | None = None) -> dict:
    """Where shmpool's time goes: host-side profile of a small call, per-worker kernel cost
    of a large one, the same kernel on all cores without the pool (pk), and the copy-in cost."""

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
            "note": ("cProfile of the host side of pool.detect(x), x an ndarray of 1,000 floats; the time "
                     "in the lane's exchange (send/recv) is the wait for the worker (its kernel plus the "
                     "socket round trip); cProfile inflates every Python-level call"),
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
        t_thr = med(lambda: detectors.flag(half, mean, cut), reps)
        buf = pool.empty(big)
        try:
            t_copy = med(lambda: np.copyto(buf, x), reps)
            t_zc = med(lambda: pool.detect(buf), reps)
            if pk is not None and pk.n == big:
                out["parallel_kernel"] = alternate(pk, lambda: pool.detect(buf), reps + 2)
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
            "note": (f"chunk_stats and flag over one half of the {big:,} values, in this process "
                     f"(what each of 2 workers does, measured alone, so without the other worker competing "
                     f"for memory bandwidth); copy_in = np.copyto of the whole input into a pool.empty "
                     f"segment (what the copy-in path adds)"),
        }
    return out


def stop_methods(meths: list[M.Method]) -> None:
    """Stop each method; one that fails is reported, and the others are still stopped."""
    for m in meths:
        try:
            m.stop()
        except Exception as e:  # noqa: BLE001
            print(f"stopping {m.key}: {e}", file=sys.stderr)


def leftover_shm(pids: set[int]) -> list[str]:
    """Files of ours still in /dev/shm.  This process's owner lock file (docs/LAYOUT.md 1.4) is
    not one: it lives as long as the process and goes at its exit."""
    patterns = ("/dev/shm/shmpool-{}-*", "/dev/shm/joblib_memmapping_folder_{}_*", "/dev/shm/sem.loky-{}-*",
                "/dev/shm/shmpool-bench-{}-*")
    me = os.getpid()
    return sorted(p for pid in pids for pat in patterns for p in glob.glob(pat.format(pid))
                  if not (pid == me and p.endswith("-owner")))


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
    meta = machine_info(cores, out_dir)
    meta["mode"] = "quick" if st.quick else "full"
    meta["pid"] = os.getpid()
    phases = meta["phases_s"] = {}
    last = [t_start]

    def phase(name):
        """Note how long the phase that ends now took (results.json: meta.phases_s)."""
        now = time.monotonic()
        phases[name] = round(phases.get(name, 0.0) + now - last[0], 2)
        last[0] = now
    print(f"shmpool benchmark ({meta['mode']}) at {meta['git_commit'] or '?'}: {cores} cores, "
          f"{meta['cpu_model']}, load {meta['loadavg_start'][0]:.2f}; sizes "
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
    parallel_kernel: dict | None = None
    pk = None                     # its trials alternate with pool.detect later (hotspots)
    if big is not None and memory_problem(big) is None:
        try:
            pk = bandwidth.ParallelKernel(big, cores, st.seed)
        except Exception as e:  # noqa: BLE001
            parallel_kernel = {"error": f"{type(e).__name__}: {e}"}
    phase("bandwidth and parallel kernel")

    from tqdm import tqdm

    tmpdir = M.make_tmpdir()
    meta["tmpdir"] = tmpdir
    # cleans up if this process is killed outright (see _janitor.py)
    procs.spawn([sys.executable, "-m", "benchmarks._janitor", str(os.getpid()), tmpdir], os.devnull)
    rec = Recorder()
    holder = M.PoolHolder(cores)
    plugin_holder = M.PoolHolder(cores, detector=[D.ZSCORE_SPLIT, D.ZSCORE_WHOLE],
                                 threshold=D.ZSCORE_THRESHOLD)
    serve = go_bench.Serve(tmpdir, cores)
    meths: list[M.Method] = [M.Numpy(), M.Kernel(), M.MpPool(cores), M.Executor(cores), M.Joblib(cores),
                             M.Grpc(cores, tmpdir), M.ShmpoolCopy(holder), M.ShmpoolZero(holder),
                             M.ServeClient(serve), M.Ray(cores), M.PluginSplit(plugin_holder),
                             M.PluginWhole(plugin_holder)]
    grpc_m = next(m for m in meths if isinstance(m, M.Grpc))
    go = go_bench.GoRunner(tmpdir, serve)
    emb = embed_bench.EmbedRunner(tmpdir)
    for m in meths:
        rec.declare(m.key, m.label, m.group, m.how)
        if st.methods is not None and m.key not in st.methods:
            m.available = False
            rec.unavailable(m.key, "skipped (--methods)")
    for key, label, how in go_bench.METHODS:
        rec.declare(key, label, "go", how, available=False,
                    reason="skipped (--no-go)" if not st.go else "not started")
    for key, label, how in embed_bench.METHODS:
        rec.declare(key, label, "embed", how, available=False,
                    reason="skipped (--no-go)" if not st.go else "skipped (--no-embed)" if not st.embed
                    else "not started")
    doc = {"meta": meta, "bandwidth": bw, "parallel_kernel": parallel_kernel, "sizes": st.sizes, "settings": {
        "schedule": {str(n): dict(zip(("warmup", "rounds", "calls", "budget_s"), st.schedule[n]))
                     for n in st.sizes},
        "call_limit_s": st.call_limit_s,
        "passes": st.passes,
        "workers": cores}, "size_skips": {}, "methods": rec.methods}
    my_pids = {os.getpid()}
    status = 0
    try:
        # 2. start everything (servers first: they take longest)
        print("starting pools and servers ...", file=sys.stderr)
        for m in meths:
            if not m.available:
                continue
            t0 = time.monotonic()
            try:
                m.start()
            except Exception as e:  # noqa: BLE001
                m.available = False
                rec.unavailable(m.key, f"could not start: {type(e).__name__}: {e}")
            rec.methods[m.key]["start_s"] = round(time.monotonic() - t0, 2)
        for h in (holder, plugin_holder):
            if h.pool is not None:
                my_pids.update(h.pool.worker_pids())
        phase("start Python methods")
        if st.go:
            print("building benchmarks/go and benchmarks/go/embed, starting `shmpool serve` ...",
                  file=sys.stderr)
            if not serve.available:
                serve.start()
            if go.build(st.go_build_timeout):
                go.ready()
            meta["go_version"] = go.go_version
            rec.available_as(go_bench.METHODS, go)
            if go.available and not grpc_m.available:
                skipped = st.methods is not None and "grpc" not in st.methods
                rec.unavailable("go_grpc", "the Python gRPC service is not running"
                                + (" (--methods)" if skipped else ""))
            if st.embed:
                emb.build(st.go_build_timeout)
                meta["embed_build"] = emb.flags
                rec.available_as(embed_bench.METHODS, emb)
            phase("build Go programs, start serve")

        st.counted = {m.key for m in meths if m.available}
        n_python = len(st.counted)
        go_any = go.available or emb.available
        go_step = 1 if go_any else 0           # per size, and once for the calls/s
        total = sum(st.schedule[n][1] * n_python + go_step for n in st.sizes) + go_step
        # no bar when stderr is not a terminal (CI logs)
        bar = tqdm(total=total, desc="benchmark", unit="batch", file=sys.stderr, dynamic_ncols=True,
                   disable=None)

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
                run_size(n, x, Checks(x, ref, mean, cut, scale), meths, rec, st, bar)
                del x, ref
                gc.collect()
                phase(f"Python methods n={n:.0e}")

            # 4. the bandwidth again (the floor takes the best), then where shmpool's time goes
            bar.set_postfix_str("bandwidth")
            bw_runs.append(measure_bw("after the rounds"))
            doc["bandwidth"] = bandwidth.combine(bw_runs)
            phase("bandwidth again")
            bar.set_postfix_str("profiling shmpool")
            try:
                doc["hotspots"] = hotspots(holder, serve, st.sizes, st.seed, st.quick, pk)
                doc["parallel_kernel"] = doc["hotspots"].pop("parallel_kernel", parallel_kernel)
            except Exception as e:  # noqa: BLE001
                doc["hotspots"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            phase("hotspots")

            # 5. the Go host and the embed, on the same data (regenerated from the seed); they need
            # only the gRPC service and `shmpool serve`, so everything else is stopped first
            stop_methods([m for m in meths if m is not grpc_m])
            holder.close()
            plugin_holder.close()
            gc.collect()
            phase("stop Python methods")
            if go_any:
                for n in st.sizes:
                    why = doc["size_skips"].get(str(n)) or (memory_problem(n) if n >= 10**7 else None)
                    if why:
                        for key, _, _ in go_bench.METHODS + embed_bench.METHODS:
                            rec.size(key, n)["skipped"] = f"size skipped: {why}"
                        bar.update(1)
                        continue
                    x, ref, mean, cut, scale = size_data(n)
                    files = go_bench.DataFiles(tmpdir, n, x, ref, mean, cut, scale)
                    del x, ref
                    try:
                        go_embed_size(go, emb, files, grpc_m.socket if grpc_m.available else None,
                                      rec, st, bar, doc)
                        phase(f"Go and embed n={n:.0e}")
                        if n == 1000:
                            doc["concurrency"] = concurrency(go, emb, files, st, bar)
                            phase("calls/s with goroutines")
                    finally:
                        files.remove()
                    gc.collect()
                meta["embed_versions"] = emb.versions
                meta["embed_malloc_tuned"] = emb.malloc_tuned
        finally:
            bar.close()

        # 6. idle CPU: a fresh server and a fresh pool, everything else stopped
        stop_methods(meths)
        serve.stop()
        phase("stop servers")
        print(f"idle CPU: a `shmpool serve --workers 2` and a Pool(workers=2), {st.idle_seconds:g} s ...",
              file=sys.stderr)
        doc["idle"] = idle.measure(tmpdir, st.idle_seconds)
        doc["idle"]["quick"] = st.quick
        phase("idle CPU")
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        meta["interrupted"] = True
        status = 130
    finally:
        stop_methods(meths)
        holder.close()
        plugin_holder.close()
        serve.stop()
        if pk is not None:
            pk.close()
        procs.stop_all()
        shutil.rmtree(tmpdir, ignore_errors=True)
        phase("clean up")

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
