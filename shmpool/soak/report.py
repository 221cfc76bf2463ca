"""What the soak writes: samples.csv (as it goes), summary.txt, summary.json,
and the verdict on stdout with how it follows from the numbers.

``SampleLog`` appends sample rows to the CSV and ``read_csv`` reads them
back (the verdict is computed from the file, so a CSV from another run can be
re-judged with ``analyze(read_csv(path))``).  ``format_report`` is the table
of checks (every check, or one line per process), ``explain`` the reasoning
behind the verdict, ``write_summary`` the two summary files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

from .analysis import Report, Verdict
from .config import MIB, Bounds
from .sampling import SAMPLE_FIELDS


class SampleLog:
    """samples.csv, written row by row and flushed after every sample."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=SAMPLE_FIELDS)
        self._writer.writeheader()

    def write(self, rows: list[dict]) -> None:
        self._writer.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _kib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 1024:+.1f}"


def format_report(report: Report, stats: dict | None = None, full: bool = True) -> str:
    """The checks as a table: every check (full), or one line per process."""
    lines = [f"calls: {report.final_calls:,.0f}; warm-up: the first {report.warmup_calls:,.0f}; "
             f"judged: the other {report.final_calls - report.warmup_calls:,.0f} "
             f"(a run is judged from {report.needed_calls:,} calls on)"]
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
            value = (f"max {c.value:g}" if c.method == "cap" else
                     "" if c.metric == "rss" else s(c.value))      # rss: shared pages too
            verdict = ("ok" if c.ok else "FAIL") if c.judged else "-"
            bound = f(c.bound) if c.judged else ""
            lines.append(f"{c.role:<24}{c.metric:<21}{f(c.first):>11}{f(c.last):>11}{slope:>13}"
                         f"{value:>12}{bound:>10}  {verdict}")
        lines.append("(fit: growth = slope x the run's calls; window: level of the last quarter "
                     "minus the first; cap: the maximum; '-': reported, not judged)")
    else:
        lines.append(f"{'process':<24}{'anon RSS MiB':>18}{'KiB/10k calls':>15}"
                     f"{'x run MiB':>11}   {'fds thr seg MiB map':<22}verdict")
        for role in sorted({c.role for c in report.checks}):
            by = {c.metric: c for c in report.checks if c.role == role}
            rss = by["rss_anon"]
            growth = (f"({rss.epochs - 1} new)" if rss.epochs > 1 else f"{rss.value / MIB:+.3f}")
            counts = " ".join(
                (f"<={c.value:g}" if c.method == "cap" else
                 f"{c.value / MIB:+.1f}" if c.in_bytes else f"{c.value:+g}")
                for c in (by.get(m) for m in ("fds_other", "threads", "segments_other",
                                              "segment_bytes_other", "mappings", "mappings_other"))
                if c is not None)
            bad = [c.metric for c in by.values() if not c.ok]
            if bad:
                verdict = "FAIL: " + ", ".join(bad)
            elif not rss.judged and rss.epochs == 1:
                verdict = "counts ok; RSS not judged" + (" (over)" if rss.over else "")
            else:
                verdict = "ok"
            lines.append(f"{role:<24}{rss.first / MIB:>8.2f} -> {rss.last / MIB:<6.2f}"
                         f"{_kib(rss.slope_per_10k):>15}{growth:>11}   {counts:<22}{verdict}")
        lines.append("(anon RSS: start/end of the judged part, fitted slope, and the slope x "
                     "the run's calls; (n new): a killed worker's role, reported only; counts: "
                     "growth of the level, '<=' the maximum)")
    lines.extend(report.notes)
    return "\n".join(lines)


def explain(report: Report, verdict: Verdict, bounds: Bounds, stats: dict | None = None,
            mappings_cap: int | None = None) -> str:
    """How the verdict follows from the numbers, rule by rule."""
    stats = stats or {}
    bound = f"{bounds.rss_bytes / MIB:g} MiB"
    lines = ["how the verdict follows from the numbers:"]
    rss = [c for c in report.checks if c.metric == "rss_anon"]
    lines.append(f"  anonymous RSS, per process: the least-squares slope after the warm-up x "
                 f"the run's {report.final_calls:,.0f} calls must be <= {bound}:")
    for c in rss:
        head = f"    {c.role:<18}{_kib(c.slope_per_10k):>8} KiB/10k calls"
        if c.epochs > 1:
            lines.append(f"{head} (replaced {c.epochs - 1} time(s): reported, not judged)")
            continue
        rel = ">" if c.over else "<="
        tail = (("GROWTH" if c.over else "ok") if c.judged else
                "would be growth, but the run is too short to judge" if c.over else
                "within the bound, but the run is too short to judge")
        lines.append(f"{head} x {report.final_calls:,.0f} = {c.value / MIB:+.3f} MiB "
                     f"{rel} {bound}: {tail}")
    if not rss:
        lines.append("    (no process has enough samples after the warm-up)")
    counts = [c for c in report.checks if c.metric not in ("rss_anon", "rss")]
    cap = "" if mappings_cap is None else f"{mappings_cap:g}"
    lines.append(
        f"  counts: fds other than segments and lane connections (bound {bounds.fds:g}), "
        f"threads ({bounds.threads:g}), own segments ({bounds.segments:g}) and their bytes "
        f"({bounds.segment_bytes / MIB:g} MiB), mapped segments ({bounds.mappings:g}), each less "
        f"what lanes and staging caches hold: the level of the last quarter of the judged "
        f"samples minus the first quarter's; a worker's mappings: at most "
        f"{cap or 'the cache size'} + {bounds.mappings:g}; a witness (w0): no restart:")
    bad = [c for c in counts if not c.ok]
    if bad:
        lines += [f"    {c.describe()}: GROWTH" for c in bad]
    else:
        lines.append(f"    all {len(counts)} hold")
    lines.append(f"  calls: {stats.get('unexpected', 0)} unexpected failure(s); any is a failure")
    if report.too_short:
        lines.append(f"  the run: {report.too_short}; so anonymous RSS is reported, not judged")
    lines.append(f"verdict: {verdict.headline} (exit {verdict.status})")
    if verdict.problems:
        lines += [f"  {p}" for p in verdict.problems]
    return "\n".join(lines)


def write_summary(out: str, report: Report, verdict: Verdict, stats: dict, cfg, elapsed: float,
                  samples: int, text: str, files: dict[str, str]) -> None:
    """summary.txt (every check, then *text*) and summary.json."""
    summary = {
        "status": verdict.status, "verdict": verdict.word, "headline": verdict.headline,
        "elapsed_s": round(elapsed, 2), "samples": samples,
        "calls": report.final_calls, "warmup_calls": report.warmup_calls,
        "needed_calls": report.needed_calls, "too_short": report.too_short,
        "config": dataclasses.asdict(cfg), "stats": stats, "problems": verdict.problems,
        "checks": [dict(dataclasses.asdict(c), ok=c.ok) for c in report.checks],
        "notes": report.notes, "files": files,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(format_report(report, stats, full=True) + "\n\n" + text + "\n")
