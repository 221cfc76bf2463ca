"""soak.png: the samples as a picture that agrees with the verdict.

Six panels against the call count: anonymous RSS, RSS, fds, threads, own
segments and their bytes; the warm-up is grey.  In the anonymous-RSS panel
each process is shifted so that its fitted line, extrapolated back to call
0, starts at 0: the dashed line then ends, at the last call, at exactly the
growth the verdict compares with the bound (the red dotted lines), so a
dashed line that ends outside them is growth, in the text as in the picture.
The title is the verdict.

Needs matplotlib (``pip install 'shmpool[soak]'``); without it ``plot``
raises ``PlotUnavailable`` and the soak says that no picture was written.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .analysis import Report, Verdict, decide
from .config import MIB, PER_CALLS, Bounds

INSTALL_HINT = "pip install 'shmpool[soak]'"


class PlotUnavailable(Exception):
    """matplotlib cannot be imported."""


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable(f"matplotlib is not installed ({INSTALL_HINT})") from e
    return plt


def _num(v) -> float:
    return float(v) if v not in ("", None) else 0.0


def _columns(rs: list[dict]):
    """column(name) -> that metric of *rs* as a float array (0 where missing)."""
    return lambda k: np.array([r.get(k, 0.0) for r in rs], dtype=float)


def _title(report: Report, verdict: Verdict) -> str:
    if verdict.word == "TOO SHORT TO JUDGE":
        return (f"TOO SHORT TO JUDGE: {report.final_calls:,.0f} calls, "
                f"{report.needed_calls:,} needed")
    return verdict.headline


def plot(path: str, rows: list[dict], report: Report, bounds: Bounds | None = None,
         verdict: Verdict | None = None) -> None:
    """Draw *rows* (as analysed in *report*) to *path*; raises PlotUnavailable."""
    plt = _pyplot()
    bounds = bounds or Bounds()
    verdict = verdict or decide(report)
    warm, final = report.warmup_calls, report.final_calls
    bound = bounds.rss_bytes / MIB
    by_role: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_role[r["role"]].append({k: (v if k == "role" else _num(v)) for k, v in r.items()})
    fig, axes = plt.subplots(3, 2, figsize=(15, 12), sharex=True)
    (a_rss, a_tot), (a_fds, a_thr), (a_seg, a_bytes) = axes
    shown = [bound, -bound]                 # the y values the RSS panel must show
    for role in sorted(by_role):
        rs = sorted(by_role[role], key=lambda r: r["calls"])
        x = np.array([r["calls"] for r in rs])
        col = _columns(rs)
        anon = col("rss_anon") / MIB
        post = x >= warm
        c = report.check(role, "rss_anon")
        slope = None                        # MiB per call, where the fit is drawn
        if c is not None and c.slope_per_10k is not None and c.epochs == 1 and post.sum() > 1:
            slope = c.slope_per_10k / PER_CALLS / MIB
            base = anon[post].mean() - slope * x[post].mean()       # the fit at call 0
            label = (f"{role}: {c.slope_per_10k / 1024:+.1f} KiB/10k calls -> "
                     f"{c.value / MIB:+.2f} MiB")
        else:
            base = anon[post][0] if post.any() else anon[0]
            label = role + (f" (replaced {c.epochs - 1}x, not judged)" if c is not None
                            and c.epochs > 1 else "")
        line, = a_rss.plot(x, anon - base, ".-", ms=2, lw=0.7, label=label)
        if post.any():
            shown += [float((anon[post] - base).min()), float((anon[post] - base).max())]
        if slope is not None:
            a_rss.plot([0, final], [0, slope * final], "--", color=line.get_color(), lw=1.4)
            shown.append(slope * final)
        a_tot.plot(x, col("rss") / MIB, ".-", ms=2, lw=0.7, label=role)
        a_fds.plot(x, col("fds") - col("shm_fds") - col("held_sockets"), ".-", ms=2, lw=0.7,
                   label=role)
        a_thr.plot(x, col("threads"), ".-", ms=2, lw=0.7, label=role)
        if col("segments").any():
            line, = a_seg.plot(x, col("segments") - col("held_segments"), "-", lw=1.5,
                               label=f"{role}: other (judged)")
            a_seg.plot(x, col("segments"), ".", ms=2, color=line.get_color(), label=f"{role}: all")
            line, = a_bytes.plot(x, (col("segment_bytes") - col("held_bytes")) / MIB, "-", lw=1.5,
                                 label=f"{role}: other (judged)")
            a_bytes.plot(x, col("segment_bytes") / MIB, ".", ms=2, color=line.get_color(),
                         label=f"{role}: all")
    for y in (bound, -bound):
        a_rss.axhline(y, color="r", lw=0.9, ls=":")
    lo, hi = min(shown), max(shown)
    a_rss.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    titles = [f"anonymous RSS (MiB), each shifted so that its fit (dashed, extrapolated over the "
              f"run) starts at 0;\nred: the bound, \u00b1{bound:g} MiB: a dashed line ending "
              f"beyond it is growth",
              "RSS (MiB; includes shared-memory pages)",
              "open fds other than segments and lane connections", "threads",
              "own segments in /dev/shm (other: not held by lanes or staging caches)",
              "own segment bytes (MiB)"]
    for ax, title in zip(axes.flat, titles):
        ax.axvspan(0, warm, color="0.92", zorder=0)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("calls")
    a_rss.legend(fontsize=7, loc="best")
    a_tot.legend(fontsize=7, ncol=2)
    a_seg.legend(fontsize=7)
    a_bytes.legend(fontsize=7)
    fig.suptitle(f"shmpool soak, {final:,.0f} calls: {_title(report, verdict)}   (grey: warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def try_plot(path: str, rows: list[dict], report: Report, bounds: Bounds | None = None,
             verdict: Verdict | None = None) -> str:
    """plot(), never raising: '' when *path* was written, else why it was not."""
    try:
        plot(path, rows, report, bounds, verdict)
    except PlotUnavailable as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - the verdict does not depend on the picture
        return f"{type(e).__name__}: {e}"
    return ""
