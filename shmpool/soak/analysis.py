"""The verdict: from the samples (rows of SAMPLE_FIELDS) to checks and a status.

``analyze`` cuts off the warm-up, fits and measures every process's series
and returns a ``Report`` of ``Check``s; ``decide`` turns a report and the
load's unexpected failures into a ``Verdict``: FLAT (exit 0), FAILED (1) or
TOO SHORT TO JUDGE (3).  The rules, with their numbers, are in the package
docstring (``python -m pydoc shmpool.soak``); ``report.explain`` prints how a
verdict followed from them.  Pure functions of the rows: the tests feed them
synthetic series.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

import numpy as np

from .config import DEFAULT_MIN_WARMUP_CALLS, DEFAULT_WARMUP, MIB, PER_CALLS, Bounds
from .sampling import SAMPLE_FIELDS

COUNT_WINDOW = 0.25         # counts: levels of the first and the last quarter of the judged part
MIN_ROLE_SAMPLES = 4        # a process with fewer samples after the warm-up is not judged
MIN_JUDGED_SAMPLES = 10     # ... and a run whose host has fewer is too short to judge

FLAT, FAILED, TOO_SHORT = 0, 1, 3       # exit statuses


def default_mappings_cap() -> int:
    """How many segment mappings a worker keeps at most (docs/LAYOUT.md 1.5)."""
    try:
        from .._backend.mappings import MAX
        return MAX
    except ImportError:         # pragma: no cover - the fallback is part of the package
        return 64


# -- the pieces ------------------------------------------------------------------------

def warmup_end(final_calls: float, fraction: float = DEFAULT_WARMUP,
               min_calls: int = DEFAULT_MIN_WARMUP_CALLS) -> float:
    """Calls of warm-up: a fraction of the run, at least min_calls, at most half."""
    return min(max(fraction * final_calls, min_calls), 0.5 * final_calls)


def calls_needed(fraction: float = DEFAULT_WARMUP, min_warmup_calls: int = DEFAULT_MIN_WARMUP_CALLS,
                 min_judged_calls: int | None = None) -> int:
    """The shortest run (in calls) that is judged: its warm-up gets its full
    minimum (which needs at least twice that, the warm-up being at most
    half the run) and at least *min_judged_calls* (default: as many as the
    warm-up's minimum) are left after it."""
    judged = min_warmup_calls if min_judged_calls is None else min_judged_calls
    return int(max(2 * min_warmup_calls, min_warmup_calls + judged,
                   math.ceil(judged / (1 - min(fraction, 0.5)))))


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


# -- checks and the report ----------------------------------------------------------------

@dataclasses.dataclass
class Check:
    role: str
    metric: str
    method: str              # "fit": slope x span; "window": growth of the level; "cap": maximum
    value: float             # growth (fit, window) or maximum (cap)
    bound: float
    slope_per_10k: float | None
    samples: int
    epochs: int = 1
    first: float = 0.0       # median at the start / end of the judged part
    last: float = 0.0
    judged: bool = True
    why: str = ""
    span: float = 0.0        # fit: the calls the slope is extrapolated over (the whole run)

    @property
    def ok(self) -> bool:
        return not self.judged or self.value <= self.bound

    @property
    def over(self) -> bool:
        """Beyond the bound, judged or not."""
        return self.value > self.bound

    @property
    def in_bytes(self) -> bool:
        return self.metric.startswith(("rss", "segment_bytes"))

    def fmt(self, v: float, sign: bool = False) -> str:
        if self.in_bytes:
            return f"{v / MIB:+.3f} MiB" if sign else f"{v / MIB:.3f} MiB"
        return f"{v:+g}" if sign else f"{v:g}"

    def how(self) -> str:
        """How the value follows from the samples, e.g. 'slope +0.010 MiB per 10k
        calls x 400,000 calls = +0.400 MiB'."""
        if self.method == "fit":
            if self.slope_per_10k is None:
                return "no slope (fewer than two distinct call counts)"
            return (f"slope {self.fmt(self.slope_per_10k, True)} per 10k calls x "
                    f"{self.span:,.0f} calls = {self.fmt(self.value, True)}")
        if self.method == "window":
            return (f"level {self.fmt(self.first)} -> {self.fmt(self.last)}: "
                    f"growth {self.fmt(self.value, True)}")
        return f"maximum {self.fmt(self.value)}"

    def describe(self) -> str:
        rel = ">" if self.over else "<="
        return f"{self.role} {self.metric}: {self.how()} {rel} bound {self.fmt(self.bound)}"


@dataclasses.dataclass
class Report:
    checks: list[Check]
    warmup_calls: float
    final_calls: float
    notes: list[str] = dataclasses.field(default_factory=list)
    needed_calls: int = 0            # the shortest run that is judged
    too_short: str = ""              # why the run is too short to judge ("" if it is not)

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


def _normalize(r: dict) -> dict:
    """A row as numbers, with the judged quantities: each count less what is
    held by design (Load.held)."""
    out: dict[str, Any] = {k: (r.get(k) if k == "role" else _num(r.get(k))) for k in SAMPLE_FIELDS}
    if r.get("held_bytes") in ("", None):         # CSVs of before: the staging caches only
        out["held_bytes"] = _num(r.get("staging_bytes"))
    # rows without shm_fds (CSVs of before) count one fd per mapping, as Python's mmap keeps
    shm = r.get("shm_fds")
    out["fds_other"] = (out["fds"] - out["held_sockets"]
                        - (out["mappings"] if shm in ("", None) else out["shm_fds"]))
    out["segments_other"] = out["segments"] - out["held_segments"]
    out["segment_bytes_other"] = out["segment_bytes"] - out["held_bytes"]
    out["mappings_other"] = out["mappings"] - out["held_segments"]
    return out


def _check(role: str, rs: list[dict], metric: str, method: str, bound: float, span: float = 0.0,
           judged: bool = True, why: str = "") -> Check:
    """One process's check of one metric over its judged samples *rs*."""
    x = [r["calls"] for r in rs]
    y = [r[metric] for r in rs]
    pids = [r["pid"] for r in rs]
    slope = within_slope(x, y, pids)
    if method == "fit":
        value = 0.0 if slope is None else slope * span
        w = min(3, len(y))
        first, last = float(np.median(y[:w])), float(np.median(y[-w:]))
    elif method == "window":
        value = window_growth(y)
        w = min(max(5, math.ceil(COUNT_WINDOW * len(y))), max(1, len(y) // 2))
        first, last = level(y[:w]), level(y[-w:])
    else:
        value = float(max(y))
        first, last = float(y[0]), float(y[-1])
    return Check(role, metric, method, value, bound,
                 None if slope is None else slope * PER_CALLS, len(rs), len(set(pids)),
                 first, last, judged, why, span if method == "fit" else 0.0)


def analyze(rows: list[dict], bounds: Bounds | None = None, warmup: float = DEFAULT_WARMUP,
            min_warmup_calls: int = DEFAULT_MIN_WARMUP_CALLS,
            mappings_cap: int | None = None, min_judged_calls: int | None = None,
            retired=frozenset()) -> Report:
    """Judge the samples: Checks per role and metric.  *rows* are dicts with
    the SAMPLE_FIELDS (numbers may be strings, as read back from the CSV);
    *retired*: pids of workers that their pool stopped itself (Load.retired),
    whose replacement is no crash."""
    bounds = bounds or Bounds()
    cap = default_mappings_cap() if mappings_cap is None else mappings_cap
    needed = calls_needed(warmup, min_warmup_calls, min_judged_calls)
    rows = [_normalize(r) for r in rows]
    if not rows:
        return Report([], 0, 0, ["no samples"], needed, "no samples")
    final = max(r["calls"] for r in rows)
    warm = warmup_end(final, warmup, min_warmup_calls)
    by_role = defaultdict(list)
    for r in rows:
        if r["calls"] >= warm:
            by_role[r["role"]].append(r)
    host_samples = len(by_role.get("host", ()))
    too_short = ""
    if final < needed:
        judged_min = min_warmup_calls if min_judged_calls is None else min_judged_calls
        too_short = (f"{final:,.0f} calls, at least {needed:,} needed (a warm-up of at least "
                     f"{min_warmup_calls:,} calls, --min-warmup-calls, and at least "
                     f"{judged_min:,} judged after it)")
    elif host_samples < MIN_JUDGED_SAMPLES:
        too_short = (f"{host_samples} samples of the host after the warm-up, at least "
                     f"{MIN_JUDGED_SAMPLES} needed (--sample-interval)")
    checks: list[Check] = []
    notes: list[str] = []
    for role in sorted(by_role):
        rs = sorted(by_role[role], key=lambda r: (r["calls"], r["t"]))
        if len(rs) < MIN_ROLE_SAMPLES:
            notes.append(f"{role}: {len(rs)} sample(s) after the warm-up, not judged")
            continue
        pids = [r["pid"] for r in rs]
        epochs = len(set(pids))
        if epochs > 1:
            judged, why = False, (f"worker replaced {epochs - 1} time(s): slope within its "
                                  f"lives, reported only")
        elif too_short:
            judged, why = False, "run too short to judge"
        else:
            judged, why = True, ""
        checks += [
            _check(role, rs, "rss_anon", "fit", bounds.rss_bytes, final, judged, why),
            _check(role, rs, "rss", "fit", bounds.rss_bytes, final, False,
                   "includes shared-memory pages: reported only"),
            _check(role, rs, "fds_other", "window", bounds.fds),
            _check(role, rs, "threads", "window", bounds.threads),
            _check(role, rs, "segments_other", "window", bounds.segments),
            _check(role, rs, "segment_bytes_other", "window", bounds.segment_bytes),
            (_check(role, rs, "mappings", "cap", cap + bounds.mappings) if "/w" in role else
             _check(role, rs, "mappings_other", "window", bounds.mappings)),
        ]
        if role.endswith("/w0"):          # the witness, never killed by the soak
            lives = list(dict.fromkeys(pids))
            by_pool = sum(1 for pid in lives[:-1] if int(pid) in retired)
            if by_pool:
                notes.append(f"{role}: stopped {by_pool} time(s) by its own pool (a lane left "
                             f"in an unknown state, e.g. with a reply pending when another "
                             f"worker of the same call died): not counted as a crash")
            checks.append(Check(role, "restarts", "cap", epochs - 1 - by_pool, 0, None, len(rs),
                                epochs, why="worker 0 is never killed by the soak: a restart "
                                            "its pool did not make is a crash"))
    return Report(checks, warm, final, notes, needed, too_short)


# -- the verdict -----------------------------------------------------------------------

@dataclasses.dataclass
class Verdict:
    status: int              # FLAT, FAILED or TOO_SHORT (the exit status)
    word: str                # "flat", "FAILED", "TOO SHORT TO JUDGE"
    headline: str            # one line saying why
    problems: list[str]      # FAILED: each bound exceeded and each unexpected failure


def decide(report: Report, failures=(), interrupted: bool = False) -> Verdict:
    """FAILED if a judged check is beyond its bound, a call failed unexpectedly
    or the run was interrupted; else TOO SHORT TO JUDGE if the run is; else FLAT."""
    growth = report.failed
    problems = [c.describe() for c in growth] + list(failures)
    if interrupted:
        problems.append("interrupted")
    if problems:
        what = [f"growth in {c.role} {c.metric}" for c in growth[:3]]
        if len(growth) > 3:
            what.append(f"{len(growth) - 3} more bound(s) exceeded")
        rest = len(problems) - len(growth)
        if rest:
            what.append(f"{rest} other problem(s)")
        return Verdict(FAILED, "FAILED", "FAILED: " + ", ".join(what), problems)
    if report.too_short:
        return Verdict(TOO_SHORT, "TOO SHORT TO JUDGE",
                       f"too short to judge: {report.too_short}", [])
    return Verdict(FLAT, "flat", "flat: every bound holds", [])
