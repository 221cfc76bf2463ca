"""``run``: the soak from start to verdict.

Checks the settings (exit 2 on a bad one), sets up the load (exit 2 if it
cannot), samples every ``Config.interval()`` seconds with the load parked,
shows progress, and on the end of the duration or the call count (or
SIGINT/SIGTERM: exit 130, the samples so far still judged) stops
everything, then judges samples.csv, draws soak.png when matplotlib is
there, writes the summaries and prints the verdict.  Exit status: 0 flat,
1 failed, 3 too short to judge.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .analysis import analyze, decide, default_mappings_cap
from .config import MIB, Config, SetupError
from .load import Load
from .plot import try_plot
from .progress import progress
from .report import SampleLog, explain, format_report, read_csv, write_summary
from .sampling import take_sample

OUTPUTS = ("samples.csv", "soak.png", "summary.txt", "summary.json")


class _Run:
    """The sampling loop around a Load."""

    def __init__(self, cfg: Config, load: Load, log: SampleLog):
        self.cfg, self.load, self.log = cfg, load, log
        self.samples = 0
        self.elapsed = 0.0
        self.last_host: dict | None = None
        self.t0 = time.monotonic()

    def sample(self) -> None:
        """One sample of every process (call it with the load parked)."""
        rows = take_sample(self.load.watch, self.load.done, time.monotonic() - self.t0,
                           self.load.held())
        self.log.write(rows)
        self.samples += 1
        self.last_host = next((r for r in rows if r["role"] == "host"), self.last_host)

    def status(self) -> str:
        s = self.load.stats
        host = ("" if self.last_host is None else
                f", host anon {self.last_host['rss_anon'] / MIB:.1f} MiB")
        return (f"{self.load.done:,} calls{host}, kills {s['kills']}, "
                f"errors {s['errors_raised']}, unexpected {s['unexpected']}")

    def run(self) -> None:
        cfg, load = self.cfg, self.load
        self.sample()                         # the baseline; names the witnesses
        load.start()
        shown = progress(cfg.progress, cfg.duration, cfg.calls)
        interval = cfg.interval()
        start = time.monotonic()
        next_sample = start + interval
        try:
            while True:
                now = time.monotonic()
                finished = ((cfg.duration is not None and now - start >= cfg.duration)
                            or (cfg.calls is not None and load.done >= cfg.calls)
                            or load.active == 0)
                if now >= next_sample or finished:
                    load.pause()
                    self.sample()
                    load.resume(go=not finished)
                    next_sample = max(next_sample + interval, time.monotonic() + interval / 4)
                shown.update(now - start, load.done, self.status(), force=finished)
                if finished:
                    break
                time.sleep(min(0.1, max(0.0, next_sample - time.monotonic())))
        finally:
            self.elapsed = time.monotonic() - start
            shown.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(cfg: Config) -> int:
    """Run the soak, write the outputs, print the verdict; returns the exit status."""
    try:
        cfg.check()
        os.makedirs(cfg.out, exist_ok=True)
        for name in OUTPUTS:              # never leave an older run's file to be taken for ours
            try:
                os.unlink(os.path.join(cfg.out, name))
            except FileNotFoundError:
                pass
    except (SetupError, OSError) as e:
        print(f"shmpool soak: {e}", file=sys.stderr)
        return 2
    load = Load(cfg)
    log = SampleLog(os.path.join(cfg.out, "samples.csv"))
    loop = _Run(cfg, load, log)
    interrupted = False
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _interrupt)   # clean up on SIGTERM too
    try:
        try:
            load.setup()
            loop.run()
        except SetupError as e:
            print(f"shmpool soak: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            interrupted = True
        finally:
            load.teardown()
            log.close()
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if loop.samples == 0:
        print("shmpool soak: interrupted before the first sample", file=sys.stderr)
        return 130
    status = finish(cfg, load, loop.samples, loop.elapsed, interrupted)
    return 130 if interrupted else status


def finish(cfg: Config, load: Load, samples: int, elapsed: float,
           interrupted: bool = False) -> int:
    """Judge samples.csv, draw, write the summaries, print; returns the status."""
    out = cfg.out
    csv_path = os.path.join(out, "samples.csv")
    png_path = os.path.join(out, "soak.png")
    rows = read_csv(csv_path)
    cap = default_mappings_cap()
    report = analyze(rows, cfg.bounds, cfg.warmup, cfg.min_warmup_calls, cap,
                     cfg.min_judged_calls, load.retired)
    report.notes.extend(load.notes)
    stats = dict(load.stats)
    if cfg.kill_every and not stats.get("kills"):
        report.notes.append("note: no worker was killed (run shorter than --kill-every calls)")
    if cfg.error_every and not stats.get("errors_raised"):
        report.notes.append("note: no error was raised (run shorter than --error-every calls)")
    verdict = decide(report, load.failures, interrupted)
    why_no_png = try_plot(png_path, rows, report, cfg.bounds, verdict)
    files = {"samples.csv": "written"}
    if why_no_png:
        files["soak.png"] = f"not written: {why_no_png}"
    else:
        files["soak.png"] = "written"
    text = (format_report(report, stats, full=False) + "\n\n"
            + explain(report, verdict, cfg.bounds, stats, cap))
    write_summary(out, report, verdict, stats, cfg, elapsed, samples, text,
                  dict(files, **{"summary.txt": "written", "summary.json": "written"}))
    print(text)
    written = [csv_path] + ([] if why_no_png else [png_path])
    written += [os.path.join(out, "summary.txt"), os.path.join(out, "summary.json")]
    print("wrote " + ", ".join(written))
    if why_no_png:
        print(f"soak.png not written: {why_no_png}")
    return verdict.status
