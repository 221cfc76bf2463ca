"""Memory-growth soak: ``shmpool soak``.

Drives pools with a steady mix of calls for a duration or a number of calls
and checks that, after a warm-up, nothing grows::

    shmpool soak --duration 20 --out soak-out                       # CI: ~20 s
    shmpool soak --duration 3600 --go-host host_adapters/go/bin/outliers --out soak-1h

The mix
    Sizes log-uniform from 10^2 to 10^6 values; copy-in (contiguous, strided,
    float32), zero-copy (slices of one long-lived ``pool.empty`` array, and
    fresh ``pool.empty`` arrays dropped after one call), answers written into
    a ``ReturnSegment``, ``pool.submit``; from ``--threads`` threads at once.
    Every ``--error-every``-th call fails on purpose (negative data to a pool
    of ``shmpool.testing:troublemaker`` -> DetectorError; NaN data ->
    NonFiniteError) and every ``--kill-every``-th call SIGKILLs a random
    worker (whichever call was using it raises WorkerDied and the pool starts
    a new one).  Worker 0 of every pool is never killed: it is the witness
    of a long-lived worker's memory.  With ``--go-host PATH`` the soak also
    starts its own ``shmpool serve``, runs the Go program against it over
    and over (from a helper process, so that the host's memory stays
    shmpool's) and makes ``Client`` calls to it from the Python threads (a
    connection per thread, and connections opened for one call).  A sample
    of the answers is compared with ``shmpool.reference``.

The samples (samples.csv, one row per process per sample)
    Every ``--sample-interval`` seconds each load thread (and the Go loop)
    parks between two calls, the host runs ``gc.collect()`` and
    ``malloc_trim(0)``, and for the host, the server, their forkservers and
    every worker the soak records (psutil, /proc/<pid>/status) RSS and its
    anonymous, file and shmem parts, open fds, threads, mapped shmpool
    segments, and the number and bytes of the ``/dev/shm`` segments the
    process owns (names ``shmpool-<pid>-``).  Workers are tracked by role
    (``pool/w1``), not by pid: the worker that replaces a killed one takes
    over its role and starts a new epoch of it.

The allocator
    glibc serves a freed 8 MB numpy temporary's successor from the heap once
    it has seen one (its mmap threshold rises with the largest block freed),
    so RSS climbs in steps to the peak of the temporaries: noise of 1-2 MiB
    that is not a leak.  The soak fixes the threshold at
    ``--malloc-mmap-threshold`` (64 KiB; in the host with mallopt, in the
    workers and the server through MALLOC_MMAP_THRESHOLD_); 0 keeps glibc's
    behaviour.  The host also settles during its first ~20,000 calls
    (pymalloc's arenas fill in; numpy's ``__array_interface__``, which
    ``detect`` reads, makes a one-time 0.9 MiB allocation after some 10^4
    calls), hence the warm-up below.

The verdict (``analyze``)
    The first ``--warmup`` of the calls (a fraction: 0.2) is warm-up and not
    judged, but at least ``--min-warmup-calls`` (20,000) and at most half:
    a short run judges its second half.  Then, per role:

    * anonymous RSS (heap, stacks, numpy temporaries: what a leak grows; the
      pages of shared segments are judged as segments): least-squares slope
      against the call count (one intercept per epoch), growth = slope x the
      calls after the warm-up; bound ``--max-rss-growth`` (1 MiB).  A role
      whose worker was replaced is reported, not judged (a fresh worker's
      first calls grow its heap, which is not a leak); the witnesses are.
    * fds other than segment mappings (Python's mmap keeps a dup of the fd),
      threads, segments, segment bytes other than the pools' staging caches
      (which legitimately hold up to 4 segments of varying size each), and
      mapped segments: the level (most common value) of the last quarter of
      the samples minus that of the first quarter; bound 0.  A worker caches up to MAPPINGS_KEPT
      mappings by design, so for workers the bound is that cap instead.

    Every check prints its slope per 10k calls.  Exit status: 0 flat,
    1 a bound was exceeded or a call failed unexpectedly (each is named),
    2 the soak could not be set up, 130 interrupted (SIGINT/SIGTERM; the
    samples so far are still analysed and written).
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import itertools
import json
import math
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

import numpy as np
import psutil

MIB = 1 << 20
SHM_DIR = "/dev/shm"
PER_CALLS = 10_000                      # slopes are reported per this many calls

# Documented defaults (README; `shmpool soak --help` repeats them).
DEFAULT_MAX_RSS_GROWTH_MIB = 1.0        # per process over the judged part of the run
DEFAULT_WARMUP = 0.2
DEFAULT_MIN_WARMUP_CALLS = 20_000
DEFAULT_MMAP_THRESHOLD = 1 << 16        # bytes; 0 leaves glibc's dynamic threshold alone
COUNT_WINDOW = 0.25                     # counts: levels of the first and last quarter
GO_ANSWER = "[7 113 835]"

SAMPLE_FIELDS = ["t", "calls", "role", "pid", "rss", "rss_anon", "rss_file", "rss_shmem",
                 "fds", "threads", "mappings", "segments", "segment_bytes", "staging_bytes"]


class SetupError(Exception):
    """The soak could not start (exit status 2)."""


# --------------------------------------------------------------------------------------
# configuration

@dataclasses.dataclass
class Bounds:
    """Allowed growth after the warm-up (see the module docstring)."""
    rss_bytes: float = DEFAULT_MAX_RSS_GROWTH_MIB * MIB
    fds: float = 0
    threads: float = 0
    segments: float = 0
    segment_bytes: float = 0
    mappings: float = 0


@dataclasses.dataclass
class Config:
    duration: float | None = None
    calls: int | None = None
    threads: int = 4
    workers: int = 2
    server_workers: int = 2
    out: str = "soak-out"
    go_host: str | None = None
    kill_every: int = 400
    error_every: int = 50
    seed: int = 0
    min_size: int = 100
    max_size: int = 1_000_000
    sample_interval: float | None = None
    warmup: float = DEFAULT_WARMUP
    min_warmup_calls: int = DEFAULT_MIN_WARMUP_CALLS
    progress: bool = True
    malloc_mmap_threshold: int = DEFAULT_MMAP_THRESHOLD
    bounds: Bounds = dataclasses.field(default_factory=Bounds)

    @classmethod
    def from_args(cls, a) -> "Config":
        """From the ``shmpool soak`` arguments (shmpool.__main__)."""
        bounds = Bounds(rss_bytes=a.max_rss_growth * MIB, fds=a.max_fd_growth,
                        threads=a.max_thread_growth, segments=a.max_segment_growth,
                        segment_bytes=a.max_segment_bytes_growth * MIB,
                        mappings=a.max_mapping_growth)
        duration = a.duration
        if duration is None and a.calls is None:
            duration = 60.0
        return cls(duration=duration, calls=a.calls, threads=a.threads, workers=a.workers,
                   server_workers=a.server_workers, out=a.out, go_host=a.go_host,
                   kill_every=a.kill_every, error_every=a.error_every, seed=a.seed,
                   min_size=a.min_size, max_size=a.max_size, sample_interval=a.sample_interval,
                   warmup=a.warmup, min_warmup_calls=a.min_warmup_calls,
                   progress=not a.no_progress, malloc_mmap_threshold=a.malloc_mmap_threshold,
                   bounds=bounds)

    def check(self) -> None:
        if self.duration is not None and self.duration <= 0:
            raise SetupError("--duration must be > 0")
        if self.calls is not None and self.calls <= 0:
            raise SetupError("--calls must be > 0")
        if self.threads < 1 or self.workers < 2 or self.server_workers < 2:
            raise SetupError("need --threads >= 1, and --workers and --server-workers >= 2 "
                             "(worker 0 is never killed; the others are)")
        if self.kill_every < 0 or self.error_every < 0:
            raise SetupError("--kill-every and --error-every must be >= 0 (0: never)")
        if not 14 <= self.min_size <= self.max_size:
            # troublemaker stalls for 30 s on exactly 13 values: stay clear of it
            raise SetupError("need 14 <= --min-size <= --max-size")
        if not 0 <= self.warmup < 1:
            raise SetupError("--warmup is a fraction in [0, 1)")
        if self.malloc_mmap_threshold < 0:
            raise SetupError("--malloc-mmap-threshold must be >= 0 (0: glibc's default)")
        if self.sample_interval is not None and self.sample_interval <= 0:
            raise SetupError("--sample-interval must be > 0")
        if self.go_host is not None:
            if not (os.path.isfile(self.go_host) and os.access(self.go_host, os.X_OK)):
                raise SetupError(f"--go-host {self.go_host!r} is not an executable file")

    def interval(self) -> float:
        if self.sample_interval is not None:
            return self.sample_interval
        if self.duration is None:
            return 0.5
        return min(max(self.duration / 150, 0.2), 5.0)


# --------------------------------------------------------------------------------------
# the allocator

M_MMAP_THRESHOLD = -3       # glibc <malloc.h>
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def _libc():
    try:
        import ctypes
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def trim_heap() -> None:
    """Hand the free pages of every malloc arena back to the OS (glibc's
    malloc_trim): what gc.collect() is to Python objects, for the C heap."""
    fn = getattr(_LIBC, "malloc_trim", None)
    if fn is not None:
        fn(0)


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the soak dies, even of SIGKILL."""
    _LIBC.prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG


def fix_mmap_threshold(nbytes: int) -> str:
    """Serve every allocation of *nbytes* or more with its own mmap, in this
    process (mallopt) and in the processes it starts from now on (glibc's
    environment variable): freed arrays then leave RSS at once, instead of
    staying in the heap up to a high-water mark that glibc's dynamic
    threshold raises in steps (the peak numpy temporary seen so far), so
    anonymous RSS follows the memory actually in use.  Returns a note."""
    if nbytes <= 0:
        return "glibc's dynamic mmap threshold kept (--malloc-mmap-threshold 0)"
    os.environ[MMAP_ENV] = str(nbytes)
    fn = getattr(_LIBC, "mallopt", None)
    ok = fn is not None and fn(M_MMAP_THRESHOLD, nbytes) == 1
    if not ok:
        return "mallopt(M_MMAP_THRESHOLD) unavailable: the host keeps its allocator's defaults"
    return f"malloc mmap threshold fixed at {nbytes} bytes (host, workers, server)"


# --------------------------------------------------------------------------------------
# sampling

_STATUS_KEYS = {b"RssAnon:": "rss_anon", b"RssFile:": "rss_file", b"RssShmem:": "rss_shmem"}


def _memory(pid: int) -> dict:
    """The parts of RSS in bytes, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in _STATUS_KEYS:
                out[_STATUS_KEYS[parts[0]]] = int(parts[1]) * 1024
    return out


def _mappings(pid: int) -> int:
    """Distinct shmpool segments mapped into *pid* (unlinked ones included)."""
    names = set()
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            i = line.find(b"/dev/shm/shmpool-")
            if i >= 0:
                names.add(line[i:].split()[0])
    return len(names)


def shm_usage() -> dict[int, tuple[int, int]]:
    """owner pid -> (segments, bytes) of the shmpool segments in /dev/shm."""
    usage: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    try:
        entries = os.scandir(SHM_DIR)
    except FileNotFoundError:
        return {}
    with entries:
        for e in entries:
            m = re.match(r"shmpool-(\d+)-", e.name)
            if m is None:
                continue
            try:
                size = e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            u = usage[int(m.group(1))]
            u[0] += 1
            u[1] += size
    return {pid: (u[0], u[1]) for pid, u in usage.items()}


def segments_of(pid: int) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(f"shmpool-{pid}-")]


def sample_process(pid: int) -> dict | None:
    """One process's numbers, or None if it is gone."""
    try:
        p = psutil.Process(pid)
        row = {"rss": p.memory_info().rss, "fds": p.num_fds(), "threads": p.num_threads()}
        row.update(_memory(pid))
        row["mappings"] = _mappings(pid)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError):
        return None
    return row


class Roles:
    """Stable names for a group of replaceable processes: a new pid takes the
    lowest-numbered role whose process is gone."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.pids: list[int | None] = []

    def assign(self, live) -> dict[int, str]:
        live = set(live)
        self.pids = [p if p in live else None for p in self.pids]
        for pid in sorted(live - set(self.pids)):
            if None in self.pids:
                self.pids[self.pids.index(None)] = pid
            else:
                self.pids.append(pid)
        return {pid: f"{self.prefix}/w{i}" for i, pid in enumerate(self.pids) if pid is not None}

    def witness(self) -> int | None:
        return self.pids[0] if self.pids else None


def _helper_role(proc: psutil.Process) -> str | None:
    """'forkserver' or 'resource_tracker' for multiprocessing's helper processes."""
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for name in ("forkserver", "resource_tracker"):
        if name in cmd:
            return name
    return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------------------
# analysis

def warmup_end(final_calls: float, fraction: float = DEFAULT_WARMUP,
               min_calls: int = DEFAULT_MIN_WARMUP_CALLS) -> float:
    """Calls of warm-up: a fraction of the run, at least min_calls, at most half."""
    return min(max(fraction * final_calls, min_calls), 0.5 * final_calls)


def within_slope(x, y, epochs=None) -> float | None:
    """Least-squares slope of y on x with one intercept per epoch (with a
    single epoch: the ordinary fit); None when no epoch has two distinct x."""
    if epochs is None:
        epochs = [0] * len(x)
    groups = defaultdict(list)
    for xi, yi, e in zip(x, y, epochs):
        groups[e].append((float(xi), float(yi)))
    sxx = sxy = 0.0
    for pts in groups.values():
        if len(pts) < 2:
            continue
        a = np.array(pts)
        xc = a[:, 0] - a[:, 0].mean()
        yc = a[:, 1] - a[:, 1].mean()
        sxx += float(xc @ xc)
        sxy += float(xc @ yc)
    if sxx <= 0:
        return None
    return sxy / sxx


def level(values) -> float:
    """The most common value (ties: the largest): the level a count rests at,
    whatever its dips (a killed worker not yet replaced) and spikes."""
    vals, counts = np.unique(np.asarray(values, dtype=float), return_counts=True)
    return float(vals[counts == counts.max()].max())


def window_growth(y, window: float = COUNT_WINDOW) -> float:
    """level() of the last `window` of y minus level() of the first (at least
    5 samples, at most half of them)."""
    y = np.asarray(y, dtype=float)
    w = min(max(5, math.ceil(window * len(y))), max(1, len(y) // 2))
    return level(y[-w:]) - level(y[:w])


@dataclasses.dataclass
class Check:
    role: str
    metric: str
    method: str              # "fit": fitted growth; "window": growth of the level; "cap": maximum
    value: float             # growth (fit, window) or maximum (cap)
    bound: float
    slope_per_10k: float | None
    samples: int
    epochs: int = 1
    first: float = 0.0       # median at the start / end of the judged part
    last: float = 0.0
    judged: bool = True
    why: str = ""

    @property
    def ok(self) -> bool:
        return not self.judged or self.value <= self.bound

    @property
    def in_bytes(self) -> bool:
        return self.metric.startswith(("rss", "segment_bytes"))

    def fmt(self, v: float, sign: bool = False) -> str:
        if self.in_bytes:
            return f"{v / MIB:+.3f} MiB" if sign else f"{v / MIB:.3f} MiB"
        return f"{v:+g}" if sign else f"{v:g}"

    def describe(self) -> str:
        slope = "n/a" if self.slope_per_10k is None else self.fmt(self.slope_per_10k, True)
        what = "maximum" if self.method == "cap" else "growth"
        return (f"{self.role} {self.metric}: {what} {self.fmt(self.value, self.method != 'cap')}"
                f" > bound {self.fmt(self.bound)} (slope {slope} per 10k calls; "
                f"{self.fmt(self.first)} -> {self.fmt(self.last)})")


@dataclasses.dataclass
class Report:
    checks: list[Check]
    warmup_calls: float
    final_calls: float
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def check(self, role: str, metric: str) -> Check | None:
        for c in self.checks:
            if c.role == role and c.metric == metric:
                return c
        return None


def _num(v) -> float:
    return float(v) if v not in ("", None) else 0.0


def analyze(rows: list[dict], bounds: Bounds | None = None, warmup: float = DEFAULT_WARMUP,
            min_warmup_calls: int = DEFAULT_MIN_WARMUP_CALLS,
            mappings_cap: int | None = None) -> Report:
    """Judge the samples: Checks per role and metric.  *rows* are dicts with
    the SAMPLE_FIELDS (numbers may be strings, as read back from the CSV)."""
    from ._backend.worker import MAPPINGS_KEPT

    bounds = bounds or Bounds()
    cap = MAPPINGS_KEPT if mappings_cap is None else mappings_cap
    rows = [{k: (r[k] if k == "role" else _num(r.get(k))) for k in SAMPLE_FIELDS} for r in rows]
    if not rows:
        return Report([], 0, 0, ["no samples"])
    final = max(r["calls"] for r in rows)
    warm = warmup_end(final, warmup, min_warmup_calls)
    by_role = defaultdict(list)
    for r in rows:
        if r["calls"] >= warm:
            by_role[r["role"]].append(r)
    checks, notes = [], []
    span = final - warm
    for role in sorted(by_role):
        rs = sorted(by_role[role], key=lambda r: (r["calls"], r["t"]))
        if len(rs) < 4:
            notes.append(f"{role}: {len(rs)} sample(s) after the warm-up, not judged")
            continue
        x = [r["calls"] for r in rs]
        pids = [r["pid"] for r in rs]
        epochs = len(set(pids))
        worker = "/w" in role

        def add(metric, method, y, bound, epoch_ids=None, judged=True, why=""):
            slope = within_slope(x, y, epoch_ids)
            if method == "fit":
                value = 0.0 if slope is None else slope * span
            elif method == "window":
                value = window_growth(y)
            else:
                value = float(max(y))
            w = min(3, len(y))
            checks.append(Check(role, metric, method, value, bound,
                                None if slope is None else slope * PER_CALLS, len(rs), epochs,
                                float(np.median(y[:w])), float(np.median(y[-w:])), judged, why))

        add("rss_anon", "fit", [r["rss_anon"] for r in rs], bounds.rss_bytes, pids,
            judged=epochs == 1,
            why="" if epochs == 1 else f"worker replaced {epochs - 1} time(s): slope within "
                                       f"its lives, reported only")
        add("rss", "fit", [r["rss"] for r in rs], 0, pids, judged=False,
            why="includes shared-memory pages: reported only")
        add("fds_other", "window", [r["fds"] - r["mappings"] for r in rs], bounds.fds)
        add("threads", "window", [r["threads"] for r in rs], bounds.threads)
        add("segments", "window", [r["segments"] for r in rs], bounds.segments)
        add("segment_bytes_fixed", "window", [r["segment_bytes"] - r["staging_bytes"] for r in rs],
            bounds.segment_bytes)
        if worker:
            add("mappings", "cap", [r["mappings"] for r in rs], cap + bounds.mappings)
        else:
            add("mappings", "window", [r["mappings"] for r in rs], bounds.mappings)
        if role.endswith("/w0"):          # the witness, never killed by the soak
            checks.append(Check(role, "restarts", "cap", epochs - 1, 0, None, len(rs), epochs,
                                why="worker 0 is never killed: a restart is a crash"))
    return Report(checks, warm, final, notes)


def format_report(report: Report, stats: dict | None = None, full: bool = True) -> str:
    """The verdict as text: every check (full), or one line per process."""
    lines = [f"calls: {report.final_calls:,.0f}; warm-up: the first {report.warmup_calls:,.0f}; "
             f"judged: the other {report.final_calls - report.warmup_calls:,.0f}"]
    if stats:
        lines.append("events: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    lines.append("")
    if full:
        lines.append(f"{'role':<24}{'metric':<21}{'start':>11}{'end':>11}{'slope/10k':>13}"
                     f"{'growth':>12}{'bound':>10}  verdict")
        for c in report.checks:
            if c.in_bytes:
                f = lambda v: f"{v / MIB:.2f}M"      # noqa: E731
                s = lambda v: f"{v / MIB:+.3f}M"     # noqa: E731
            else:
                f = lambda v: f"{v:g}"               # noqa: E731
                s = lambda v: f"{v:+.3f}"            # noqa: E731
            slope = "n/a" if c.slope_per_10k is None else s(c.slope_per_10k)
            value = f"max {c.value:g}" if c.method == "cap" else s(c.value)
            verdict = ("ok" if c.ok else "FAIL") if c.judged else "-"
            bound = f(c.bound) if c.judged else ""
            lines.append(f"{c.role:<24}{c.metric:<21}{f(c.first):>11}{f(c.last):>11}{slope:>13}"
                         f"{value:>12}{bound:>10}  {verdict}")
    else:
        lines.append(f"{'process':<24}{'anon RSS MiB':>18}{'KiB/10k calls':>15}{'growth MiB':>12}"
                     f"   {'fds thr seg MiB map':<22}verdict")
        roles = sorted({c.role for c in report.checks})
        for role in roles:
            by = {c.metric: c for c in report.checks if c.role == role}
            rss = by["rss_anon"]
            slope = "n/a" if rss.slope_per_10k is None else f"{rss.slope_per_10k / 1024:+.1f}"
            growth = (f"{rss.value / MIB:+.3f}" if rss.judged
                      else f"({rss.epochs - 1} new)")
            counts = " ".join(
                (f"<={by[m].value:g}" if by[m].method == "cap" else
                 f"{by[m].value / MIB:+.1f}" if by[m].in_bytes else f"{by[m].value:+g}")
                for m in ("fds_other", "threads", "segments", "segment_bytes_fixed", "mappings"))
            bad = [c.metric for c in by.values() if not c.ok]
            lines.append(f"{role:<24}{rss.first / MIB:>8.2f} -> {rss.last / MIB:<6.2f}"
                         f"{slope:>15}{growth:>12}   {counts:<22}"
                         f"{'FAIL: ' + ', '.join(bad) if bad else 'ok'}")
        lines.append("(anon RSS: start/end of the judged part, fitted slope and growth; "
                     "(n new): a killed worker's role, reported only; counts: growth, "
                     "'<=' the cap)")
    lines.extend(report.notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# output

def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(path: str, rows: list[dict], report: Report, bounds: Bounds | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bounds = bounds or Bounds()
    warm = report.warmup_calls
    by_role = defaultdict(list)
    for r in rows:
        by_role[r["role"]].append({k: (v if k == "role" else _num(v)) for k, v in r.items()})
    fig, axes = plt.subplots(3, 2, figsize=(15, 12), sharex=True)
    (a_rss, a_tot), (a_fds, a_thr), (a_seg, a_bytes) = axes
    for role in sorted(by_role):
        rs = sorted(by_role[role], key=lambda r: r["calls"])
        x = np.array([r["calls"] for r in rs])
        col = lambda k: np.array([r[k] for r in rs], dtype=float)  # noqa: E731
        anon = col("rss_anon")
        post = x >= warm
        base = anon[post][0] if post.any() else anon[0]
        line, = a_rss.plot(x, (anon - base) / MIB, ".-", ms=2, lw=0.7, label=role)
        c = report.check(role, "rss_anon")
        if c is not None and c.slope_per_10k is not None and c.epochs == 1 and post.sum() > 1:
            xp = x[post]
            fit = anon[post].mean() + c.slope_per_10k / PER_CALLS * (xp - xp.mean())
            a_rss.plot(xp, (fit - base) / MIB, "--", color=line.get_color(), lw=1.2)
        a_tot.plot(x, col("rss") / MIB, ".-", ms=2, lw=0.7, label=role)
        a_fds.plot(x, col("fds"), ".-", ms=2, lw=0.7, label=role)
        a_thr.plot(x, col("threads"), ".-", ms=2, lw=0.7, label=role)
        if col("segments").any():
            a_seg.plot(x, col("segments"), ".-", ms=2, lw=0.7, label=role)
            a_bytes.plot(x, col("segment_bytes") / MIB, ".-", ms=2, lw=0.7, label=f"{role}: all")
            a_bytes.plot(x, (col("segment_bytes") - col("staging_bytes")) / MIB, "-", lw=1.5,
                         label=f"{role}: without staging caches (judged)")
    for y in (bounds.rss_bytes / MIB, -bounds.rss_bytes / MIB):
        a_rss.axhline(y, color="r", lw=0.8, ls=":")
    lo, hi = -1.5 * bounds.rss_bytes / MIB, 1.5 * bounds.rss_bytes / MIB
    for ln in a_rss.get_lines():
        xd, yd = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
        if len(xd) and (xd >= warm).any():
            lo, hi = min(lo, yd[xd >= warm].min()), max(hi, yd[xd >= warm].max())
    a_rss.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    titles = ["anonymous RSS minus its value at the end of the warm-up (MiB; red: the bound, "
              "dashed: fit)", "RSS (MiB; includes shared-memory pages)", "open fds", "threads",
              "own segments in /dev/shm", "own segment bytes (MiB)"]
    for ax, title in zip(axes.flat, titles):
        ax.axvspan(0, warm, color="0.92", zorder=0)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("calls")
    a_tot.legend(fontsize=7, ncol=2)
    a_bytes.legend(fontsize=7)
    bad = report.failed
    verdict = "flat" if not bad else "GROWTH: " + ", ".join(f"{c.role} {c.metric}" for c in bad[:4])
    fig.suptitle(f"shmpool soak, {report.final_calls:,.0f} calls: {verdict}   (grey: warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# the load

def run_go(exe: str, socket_path: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the Go host once; also returns the segments it left behind."""
    proc = subprocess.Popen([exe, "-socket", socket_path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), segments_of(proc.pid)


def go_driver(exe: str, socket_path: str) -> None:
    """The Go loop, in a helper process of its own (so that the host's memory
    is shmpool's and not this loop's): runs *exe* over and over; on "p" from
    stdin it finishes the run in progress and answers with its counts
    ("runs ok worker_died bad last-problem"), on "r" it resumes, on "q" or
    end-of-file it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the host's; it sends "q"
    runs = ok = died = bad = 0
    last = ""
    paused = False
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], None if paused else 0)
        if readable:
            chunk = os.read(0, 4096)
            if not chunk:
                return
            pending += chunk
        while b"\n" in pending:
            cmd, pending = pending.split(b"\n", 1)
            if cmd == b"q":
                return
            paused = cmd == b"p"
            if paused:
                sys.stdout.write(f"{runs} {ok} {died} {bad} {json.dumps(last)}\n")
                sys.stdout.flush()
        if paused:
            continue
        out, left = run_go(exe, socket_path)
        runs += 1
        if out.returncode == 0 and out.stdout.strip() == GO_ANSWER:
            ok += 1
        elif "WORKER_DIED" in out.stderr:
            died += 1
        else:
            bad += 1
            last = (f"exit status {out.returncode}, stdout {out.stdout.strip()!r}, "
                    f"stderr {out.stderr.strip()[-500:]!r}")
        if left:
            bad += 1
            last = f"left {len(left)} segment(s) in /dev/shm: {left[:3]}"


class GoDriver:
    """The host's end of go_driver."""

    def __init__(self, exe: str, socket_path: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from shmpool.soak import go_driver; "
                                   "go_driver(sys.argv[1], sys.argv[2])", exe, socket_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _send(self, cmd: str) -> bool:
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def pause(self, timeout: float = 120.0):
        """(runs, ok, worker_died, bad, last problem), or None."""
        if not self._send("p"):
            return None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        if not line:
            return None
        runs, ok, died, bad, last = line.split(" ", 4)
        return int(runs), int(ok), int(died), int(bad), json.loads(last)

    def resume(self) -> None:
        self._send("r")

    def stop(self) -> list[str]:
        self._send("q")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return ["the Go loop did not stop in 60 s"]
        self.proc.stdout.close()
        return [] if code == 0 else [f"the Go loop exited with status {code}"]


class Soak:
    """Pools, an optional server, the load threads and the sampler."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stats: Counter = Counter()
        self.failures: list[str] = []           # unexpected outcomes, the first 20
        self.notes: list[str] = []
        self._env_before: str | None = None
        self.go: GoDriver | None = None
        self._go_counts = (0, 0, 0, 0)
        self._lock = threading.Lock()
        self._kill_lock = threading.Lock()
        self._numbers = itertools.count(1)      # Python calls: schedule kills and errors
        self.done = 0                           # completed detect calls of every kind
        self._stop = threading.Event()
        self._pause = threading.Condition()
        self._pausing = False
        self._parked = 0
        self._active = 0
        self._threads: list[threading.Thread] = []
        self.pool = self.trouble = self.shared = None
        self.server_proc: subprocess.Popen | None = None
        self.socket_path: str | None = None
        self._tmpdir: str | None = None
        self._roles = {"pool": Roles("pool"), "trouble": Roles("trouble"),
                       "server": Roles("server")}
        self._csv = self._writer = None
        self.samples = 0
        self.last_host: dict | None = None
        self.elapsed = 0.0
        self.t0 = time.monotonic()

    # -- setup / teardown -------------------------------------------------------------

    def setup(self) -> None:
        from . import Pool
        from .errors import ShmpoolError

        cfg = self.cfg
        self._csv = open(os.path.join(cfg.out, "samples.csv"), "w", newline="")
        self._writer = csv.DictWriter(self._csv, fieldnames=SAMPLE_FIELDS)
        self._writer.writeheader()
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
            self._start_server()          # first, while this process has one thread
        try:
            self.pool = Pool(workers=cfg.workers, nan_policy="raise")
            self.trouble = Pool(workers=2, detector="shmpool.testing:troublemaker")
            self.shared = self.pool.empty(n + 1024)
            self.shared[:] = self.base[:len(self.shared)]
            # The submit() executor starts its threads lazily, up to its maximum:
            # start them all now, or they would read as thread growth later.
            futs = [self.pool.submit(self.base[:100]) for _ in range(4 * cfg.workers + 4)]
            for f in futs:
                f.result()
        except (ShmpoolError, OSError, ValueError) as e:
            raise SetupError(f"cannot start the pools: {e}") from e

    def _start_server(self) -> None:
        from .client import Client

        self._tmpdir = tempfile.mkdtemp(prefix="shmpool-soak-")
        self.socket_path = os.path.join(self._tmpdir, "serve.sock")
        self._server_log = open(os.path.join(self._tmpdir, "serve.log"), "w+")
        self.server_proc = subprocess.Popen(
            [sys.executable, "-m", "shmpool", "serve", "--socket", self.socket_path,
             "--workers", str(self.cfg.server_workers)],
            stdout=self._server_log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if hasattr(_LIBC, "prctl") else None)
        end = time.monotonic() + 60
        while True:
            if self.server_proc.poll() is not None:
                raise SetupError(f"shmpool serve exited with {self.server_proc.returncode}: "
                                 f"{self._server_output()}")
            try:
                with Client(self.socket_path, timeout=5) as c:
                    c.ping()
                break
            except OSError:
                if time.monotonic() > end:
                    raise SetupError("shmpool serve did not come up in 60 s") from None
                time.sleep(0.05)
        out, _ = run_go(self.cfg.go_host, self.socket_path)
        if out.returncode != 0 or out.stdout.strip() != GO_ANSWER:
            raise SetupError(f"{self.cfg.go_host} -socket {self.socket_path}: exit status "
                             f"{out.returncode}, stdout {out.stdout.strip()!r}, "
                             f"stderr {out.stderr.strip()!r}; expected {GO_ANSWER}")

    def _server_output(self) -> str:
        self._server_log.flush()
        self._server_log.seek(0)
        return self._server_log.read()[-2000:]

    def teardown(self) -> None:
        self._stop.set()
        self._resume()
        if self.go is not None:
            self._go_pause()
            for problem in self.go.stop():
                self.failures.append(problem)
        for t in self._threads:
            t.join(120)
            if t.is_alive():
                self.failures.append(f"load thread {t.name} did not stop in 120 s")
        if self._csv is not None:
            self._csv.close()
        if self.server_proc is not None:
            if self.server_proc.poll() is None:
                self.server_proc.send_signal(signal.SIGTERM)
                try:
                    code = self.server_proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.server_proc.kill()
                    code = self.server_proc.wait()
                    self.failures.append("shmpool serve did not stop on SIGTERM in 30 s")
            else:
                code = self.server_proc.returncode
            if code != 0:
                self.failures.append(f"shmpool serve exited with {code}: {self._server_output()}")
            self._server_log.close()
        self.shared = None
        for p in (self.pool, self.trouble):
            if p is not None:
                p.close()
        gc.collect()
        left = segments_of(os.getpid())
        if self.server_proc is not None:
            left += segments_of(self.server_proc.pid)
        if left:
            self.failures.append(f"{len(left)} segment(s) left in /dev/shm after the soak: "
                                 f"{left[:5]}")
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        if self._env_before is None:
            os.environ.pop(MMAP_ENV, None)
        else:
            os.environ[MMAP_ENV] = self._env_before

    # -- pausing for a sample ------------------------------------------------------------

    def _checkpoint(self) -> None:
        with self._pause:
            if not self._pausing:
                return
            self._parked += 1
            self._pause.notify_all()
            while self._pausing:
                self._pause.wait()
            self._parked -= 1

    def _quiesce(self, timeout: float = 120.0) -> bool:
        with self._pause:
            self._pausing = True
            end = time.monotonic() + timeout
            while self._parked < self._active:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._pause.wait(left)
        return True

    def _resume(self) -> None:
        with self._pause:
            self._pausing = False
            self._pause.notify_all()

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
        runs, ok, died, bad, last = got
        with self._lock:
            self.done += runs - self._go_counts[0]
            self.stats["go_ok"] += ok - self._go_counts[1]
            self.stats["go_worker_died"] += died - self._go_counts[2]
            new_bad = bad - self._go_counts[3]
            if new_bad:
                self.stats["unexpected"] += new_bad
                if len(self.failures) < 20:
                    self.failures.append(f"go host ({new_bad} run(s)): {last}")
            self._go_counts = (runs, ok, died, bad)

    # -- processes and samples ------------------------------------------------------------

    def _server_tree(self) -> tuple[dict[int, str], list[int]]:
        """(pid -> role of the server and its helpers, live server worker pids)."""
        helpers, workers = {}, []
        if self.server_proc is None or self.server_proc.poll() is not None:
            return helpers, workers
        try:
            server = psutil.Process(self.server_proc.pid)
            helpers[server.pid] = "server"
            for child in server.children():
                role = _helper_role(child)
                if role is None:
                    continue
                helpers[child.pid] = f"server/{role}"
                if role == "forkserver":
                    workers += [g.pid for g in child.children() if _alive(g)]
        except psutil.NoSuchProcess:
            pass
        return helpers, workers

    def processes(self) -> dict[int, str]:
        """pid -> role of every process the soak watches (assigns worker roles)."""
        me = psutil.Process()
        found = {me.pid: "host"}
        for kind, pool in (("pool", self.pool), ("trouble", self.trouble)):
            found.update(self._roles[kind].assign(pool.worker_pids()))
        for child in me.children():
            role = _helper_role(child)
            if role is not None and child.pid not in found:
                found[child.pid] = f"host/{role}"
        helpers, workers = self._server_tree()
        found.update(helpers)
        found.update(self._roles["server"].assign(workers))
        return found

    def _staging_bytes(self) -> int:
        total = 0
        for pool in (self.pool, self.trouble):
            with pool._cond:
                total += sum(seg.size for seg in pool._staging)
        return total

    def sample(self) -> None:
        """Record every watched process (call with the load threads parked)."""
        gc.collect()
        trim_heap()
        t = time.monotonic() - self.t0
        usage = shm_usage()
        staging = self._staging_bytes()
        for pid, role in sorted(self.processes().items(), key=lambda kv: kv[1]):
            row = sample_process(pid)
            if row is None:
                continue
            segs, nbytes = usage.get(pid, (0, 0))
            row.update(t=round(t, 3), calls=self.done, role=role, pid=pid, segments=segs,
                       segment_bytes=nbytes, staging_bytes=staging if role == "host" else 0)
            self._writer.writerow(row)
            if role == "host":
                self.last_host = row
        self._csv.flush()
        self.samples += 1

    # -- calls ------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _fail(self, what: str) -> None:
        with self._lock:
            self.stats["unexpected"] += 1
            if len(self.failures) < 20:
                self.failures.append(what)

    def _kill(self, r: random.Random) -> None:
        """SIGKILL a random worker, never a pool's witness (role w0)."""
        with self._kill_lock:
            groups = [("pool", self.pool.worker_pids()), ("trouble", self.trouble.worker_pids())]
            if self.server_proc is not None:
                groups.append(("server", self._server_tree()[1]))
            pids = [pid for kind, live in groups for pid in live
                    if pid != self._roles[kind].witness()]
            if not pids:
                return
            try:
                os.kill(r.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                return
            self._count("kills")

    def _size(self, r: random.Random) -> int:
        n = int(math.exp(r.uniform(math.log(self.cfg.min_size), math.log(self.cfg.max_size))))
        return 14 if n == 13 else n

    def _call(self, op: str, n: int, r: random.Random, ret, client):
        """Make one call; returns (input as float64, answer) or raises."""
        from .client import Client
        from .errors import ResultTooSmall

        off = r.randrange(0, len(self.base) - 2 * n)
        x = self.base[off:off + n]
        if op == "copy":
            return x, self.pool.detect(x)
        if op == "copy_strided":
            x = self.base[off:off + 2 * n:2]
            return x, self.pool.detect(x)
        if op == "copy_f32":
            x32 = x.astype(np.float32)
            return x32, self.pool.detect(x32)          # reference() widens it the same way
        if op == "shared":
            off = r.randrange(0, len(self.shared) - n)
            x = self.shared[off:off + n]
            return x, self.pool.detect(x)
        if op == "fresh_empty":
            buf = self.pool.empty(n)
            buf[:] = x
            return x, self.pool.detect(buf)
        if op == "out":
            try:
                return x, self.pool.detect(x, out=ret).copy()
            except ResultTooSmall:
                self._count("result_too_small")
                return x, None
        if op == "submit":
            return x, self.pool.submit(x).result()
        if op == "trouble":
            start = off % (len(self.positive) - n)
            x = self.positive[start:start + n]
            return x, self.trouble.detect(x)
        if op == "client":
            return x, client.detect(x)
        if op == "client_new":
            with Client(self.socket_path) as c:
                return x, c.detect(x)
        # the calls that must fail
        if op == "trouble_negative":
            self.trouble.detect(x - 10.0)
        elif op == "nan":
            self.pool.detect(self.with_nan)
        elif op == "client_nan":
            client.detect(self.with_nan)
        else:
            raise AssertionError(op)
        raise _NoError(f"{op} n={n}: the call did not fail")

    def _load(self, idx: int) -> None:
        from . import ReturnSegment, reference
        from .client import Client
        from .errors import DetectorError, NonFiniteError, WorkerDied

        r = random.Random(self.cfg.seed * 1000 + idx)
        ret = client = None
        try:
            ret = ReturnSegment(1 << 16)
            client = Client(self.socket_path) if self.socket_path else None
            ops = [("copy", 35), ("copy_strided", 4), ("copy_f32", 4), ("shared", 22),
                   ("fresh_empty", 5), ("out", 10), ("submit", 5), ("trouble", 8)]
            if client is not None:
                ops += [("client", 12), ("client_new", 2)]
            names, weights = zip(*ops)
            errors = ["trouble_negative", "nan"] + (["client_nan"] if client else [])
            # Prime: every kind of call once at the largest size, so that the
            # heap of this thread (and of the workers) meets its peak in warm-up.
            priming = [(op, self.cfg.max_size) for op in names + tuple(errors)]
            while not self._stop.is_set():
                self._checkpoint()
                if self._stop.is_set():
                    break
                if self.cfg.calls is not None and self.done >= self.cfg.calls:
                    break
                if priming:
                    op, n = priming.pop()
                else:
                    i = next(self._numbers)
                    if self.cfg.kill_every and i % self.cfg.kill_every == 0:
                        self._kill(r)
                    if self.cfg.error_every and i % self.cfg.error_every == 0:
                        op = errors[(i // self.cfg.error_every) % len(errors)]
                    else:
                        op = r.choices(names, weights)[0]
                    n = self._size(r)
                try:
                    x, got = self._call(op, n, r, ret, client)
                except WorkerDied:
                    self._count("worker_died")
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
                    if got is not None and n <= 65536 and r.random() < 0.2:
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
                client.close()
            self._thread_done()

    # -- the run ----------------------------------------------------------------------

    def _progress(self):
        if not self.cfg.progress:
            return None
        from tqdm import tqdm
        if self.cfg.duration is None:
            return tqdm(total=self.cfg.calls, unit="call", dynamic_ncols=True, mininterval=1)
        return tqdm(total=round(self.cfg.duration), unit="s", dynamic_ncols=True, mininterval=1,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}<{remaining}"
                               "{postfix}]")

    def run(self) -> None:
        cfg = self.cfg
        self.sample()                         # the baseline; names the witnesses
        targets = [(self._load, (i,), f"soak-load-{i}") for i in range(cfg.threads)]
        if cfg.go_host is not None:
            self.go = GoDriver(cfg.go_host, self.socket_path)
        self._active = len(targets)
        for fn, args, name in targets:
            t = threading.Thread(target=fn, args=args, daemon=True, name=name)
            t.start()
            self._threads.append(t)
        bar = self._progress()
        interval = cfg.interval()
        start = time.monotonic()
        next_sample = start + interval
        try:
            while True:
                now = time.monotonic()
                finished = ((cfg.duration is not None and now - start >= cfg.duration)
                            or (cfg.calls is not None and self.done >= cfg.calls)
                            or self._active == 0)
                if now >= next_sample or finished:
                    self._go_pause()
                    if not self._quiesce():
                        self._fail("load threads did not reach a checkpoint in 120 s")
                    self.sample()
                    self._resume()
                    if self.go is not None and not finished:
                        self.go.resume()
                    next_sample = max(next_sample + interval, time.monotonic() + interval / 4)
                if bar is not None:
                    if self.last_host is not None:
                        bar.set_postfix_str(
                            f"{self.done:,} calls, host anon "
                            f"{self.last_host['rss_anon'] / MIB:.1f} MiB, "
                            f"kills {self.stats['kills']}, errors {self.stats['errors_raised']}, "
                            f"unexpected {self.stats['unexpected']}", refresh=False)
                    bar.n = (min(self.done, bar.total) if cfg.duration is None
                             else min(round(now - start), bar.total))
                    bar.refresh()
                if finished:
                    break
                time.sleep(min(0.1, max(0.0, next_sample - time.monotonic())))
        finally:
            self.elapsed = time.monotonic() - start
            if bar is not None:
                bar.close()


class _NoError(Exception):
    pass


def run(cfg: Config) -> int:
    """Run the soak, write the outputs, print the verdict; returns the exit status."""
    try:
        cfg.check()
        os.makedirs(cfg.out, exist_ok=True)
    except (SetupError, OSError) as e:
        print(f"shmpool soak: {e}", file=sys.stderr)
        return 2
    soak = Soak(cfg)
    interrupted = False
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _interrupt)   # clean up on SIGTERM too
    try:
        try:
            soak.setup()
            soak.run()
        except SetupError as e:
            print(f"shmpool soak: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            interrupted = True
        finally:
            soak.teardown()
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if soak.samples == 0:
        print("shmpool soak: interrupted before the first sample", file=sys.stderr)
        return 130
    status = finish(soak, cfg, interrupted)
    return 130 if interrupted else status


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def finish(soak: Soak, cfg: Config, interrupted: bool = False) -> int:
    csv_path = os.path.join(cfg.out, "samples.csv")
    png_path = os.path.join(cfg.out, "soak.png")
    rows = read_csv(csv_path)
    report = analyze(rows, cfg.bounds, cfg.warmup, cfg.min_warmup_calls)
    stats = dict(soak.stats)
    try:
        plot(png_path, rows, report, cfg.bounds)
    except Exception as e:  # noqa: BLE001 - the verdict does not depend on the picture
        print(f"shmpool soak: could not draw {png_path}: {e}", file=sys.stderr)
    report.notes.extend(soak.notes)
    problems = [c.describe() for c in report.failed] + soak.failures
    if interrupted:
        problems.append("interrupted")
    if cfg.kill_every and not stats.get("kills"):
        report.notes.append("note: no worker was killed (run shorter than --kill-every calls)")
    if cfg.error_every and not stats.get("errors_raised"):
        report.notes.append("note: no error was raised (run shorter than --error-every calls)")
    status = 1 if problems else 0
    rss = [c for c in report.checks if c.metric == "rss_anon" and c.slope_per_10k is not None]
    tail = ("anonymous-RSS slope, KiB per 10k calls: "
            + ", ".join(f"{c.role} {c.slope_per_10k / 1024:+.1f}" for c in rss))
    judged = [c for c in rss if c.judged]
    if judged:
        worst = max(judged, key=lambda c: c.value)
        tail += (f"\nlargest judged RSS growth: {worst.role} {worst.value / MIB:+.3f} MiB "
                 f"(bound {cfg.bounds.rss_bytes / MIB:g} MiB)")
    tail += "\n" + ("flat: every bound holds" if not problems else
                    "FAILED:\n" + "\n".join(f"  {p}" for p in problems))
    text = format_report(report, stats, full=False) + "\n\n" + tail
    summary = {
        "status": status, "elapsed_s": round(soak.elapsed, 2), "samples": soak.samples,
        "calls": report.final_calls, "warmup_calls": report.warmup_calls,
        "config": dataclasses.asdict(cfg), "stats": stats, "problems": problems,
        "checks": [dict(dataclasses.asdict(c), ok=c.ok) for c in report.checks],
        "notes": report.notes,
    }
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(cfg.out, "summary.txt"), "w") as f:
        f.write(format_report(report, stats, full=True) + "\n\n" + text + "\n")
    print(text)
    print(f"wrote {csv_path}, {png_path}, {os.path.join(cfg.out, 'summary.txt')}, summary.json")
    return status
