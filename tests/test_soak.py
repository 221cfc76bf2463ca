"""The memory-growth soak: its verdict on synthetic samples (a flat run
passes, every kind of leak fails, a run too short to judge says so), its
degraded paths without tqdm and matplotlib, and the short CI form of
``shmpool soak`` on real pools, with and without the Go host."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shmpool import soak
from shmpool.__main__ import main as cli_main
from shmpool.soak import progress as soak_progress

ROOT = Path(__file__).resolve().parents[1]
GO_DIR = ROOT / "host_adapters" / "go"
MIB = soak.MIB
NO_PNG = "soak.png not written: matplotlib is not installed (pip install 'shmpool[soak]')"


# -- the verdict on synthetic samples -------------------------------------------------------

def series(role, n=200, calls_per_sample=100, pid=1000, start=0, **metrics):
    """n samples of one process; each metric is a constant or a function of the call count."""
    base = dict(rss=60 * MIB, rss_anon=40 * MIB, rss_file=10 * MIB, rss_shmem=10 * MIB,
                fds=20, shm_fds=4, threads=3, mappings=4, segments=4, segment_bytes=4 * MIB,
                held_segments=0, held_bytes=0, held_sockets=0)
    base.update(metrics)
    rows = []
    for i in range(n):
        calls = start + i * calls_per_sample
        row = {"t": calls / 1000, "calls": calls, "role": role,
               "pid": pid(calls) if callable(pid) else pid}
        for k, v in base.items():
            row[k] = v(calls) if callable(v) else v
        rows.append(row)
    return rows


def noise(seed, scale):
    rng = np.random.default_rng(seed)
    return lambda calls: scale * rng.standard_normal()


def flat_run(n=200, calls_per_sample=100, **host):
    wiggle = noise(1, 20_000)                     # +-20 kB of allocator noise
    rows = series("host", n, calls_per_sample, **{"rss_anon": lambda c: 80 * MIB + wiggle(c),
                                                   **host})
    rows += series("pool/w0", n, calls_per_sample, rss_anon=30 * MIB,
                   mappings=lambda c: 5 + c % 7, shm_fds=0, segments=0, segment_bytes=0)
    return rows


def judge(rows, **kw):
    """analyze() with a warm-up of at least 2,000 calls (these runs are 20,000
    calls long: judged from 4,000 calls on)."""
    return soak.analyze(rows, min_warmup_calls=2000, **kw)


def failed(report):
    return {(c.role, c.metric) for c in report.failed}


def test_a_flat_run_passes():
    report = judge(flat_run())
    assert report.failed == [] and not report.too_short
    host = report.check("host", "rss_anon")
    assert host.judged and abs(host.value) < 0.1 * MIB
    assert host.slope_per_10k is not None
    verdict = soak.decide(report)
    assert (verdict.status, verdict.word) == (soak.FLAT, "flat")


def test_a_flat_long_run_passes_with_the_default_minimums():
    # 400,000 calls, a sample every 2,000: judged from 40,000 on
    rows = flat_run(n=200, calls_per_sample=2000)
    report = soak.analyze(rows)
    assert report.needed_calls == 40_000 and not report.too_short
    assert report.warmup_calls == pytest.approx(0.2 * 398_000)
    assert soak.decide(report).status == soak.FLAT
    assert report.check("host", "rss_anon").judged


def test_a_warm_up_ramp_is_not_growth():
    # 40 MiB -> 80 MiB during the first fifth, then flat
    rows = flat_run()
    for r in rows:
        if r["role"] == "host" and r["calls"] < 4000:
            r["rss_anon"] = 40 * MIB + 40 * MIB * r["calls"] / 4000
    assert judge(rows).failed == []


def test_an_rss_leak_fails():
    # 2 MiB over the whole run: the slope (1 MiB per 10k calls) x the run's
    # 19,900 calls is 2 MiB, above the 1 MiB bound
    rows = flat_run(rss_anon=lambda c: 80 * MIB + 2 * MIB * c / 20_000)
    report = judge(rows)
    assert failed(report) == {("host", "rss_anon")}
    c = report.check("host", "rss_anon")
    assert c.slope_per_10k == pytest.approx(1 * MIB, rel=0.05)
    assert c.value == pytest.approx(c.slope_per_10k / 10_000 * 19_900)
    assert "host rss_anon: slope +1.000 MiB per 10k calls x 19,900 calls = +1.990 MiB > bound " \
           "1.000 MiB" in c.describe()
    verdict = soak.decide(report)
    assert verdict.status == soak.FAILED and "growth in host rss_anon" in verdict.headline
    # ... and a looser bound lets it pass
    assert judge(rows, bounds=soak.Bounds(rss_bytes=2.5 * MIB)).failed == []


def test_the_printed_slope_over_the_run_decides():
    """Issue 11.11: a slope whose growth over the judged part alone (0.8 x the
    run) stays under the bound, but over the whole run does not, is growth:
    the slope printed, the verdict and the picture say the same."""
    slope = 0.6 * MIB / 10_000                          # per call: 1.19 MiB over 19,900 calls
    rows = flat_run(rss_anon=lambda c: 80 * MIB + slope * c)
    report = judge(rows)
    c = report.check("host", "rss_anon")
    assert slope * (report.final_calls - report.warmup_calls) < MIB < c.value
    verdict = soak.decide(report)
    assert verdict.status == soak.FAILED and verdict.word != "flat"
    text = soak.explain(report, verdict, soak.Bounds())
    assert "+614.4 KiB/10k calls x 19,900 = +1.194 MiB > 1 MiB: GROWTH" in text
    assert text.splitlines()[-2].startswith("verdict: FAILED: growth in host rss_anon (exit 1)")


def test_a_small_leak_in_a_noisy_series_fails():
    wiggle = noise(2, 300_000)                    # +-300 kB of noise, 3 MiB leak
    rows = series("host", n=400, rss_anon=lambda c: 80 * MIB + 3 * MIB * c / 40_000 + wiggle(c))
    assert ("host", "rss_anon") in failed(judge(rows))


def test_a_run_too_short_to_judge_says_so():
    # 24,900 calls, a clear slope: with the default warm-up of 20,000 calls it
    # cannot be told from the warm-up; not flat, and not a pass
    rows = flat_run(n=250, rss_anon=lambda c: 80 * MIB + 0.5 * MIB * c / 10_000)
    report = soak.analyze(rows)
    assert report.too_short == ("24,900 calls, at least 40,000 needed (a warm-up of at least "
                                "20,000 calls, --min-warmup-calls, and at least 20,000 judged "
                                "after it)")
    host = report.check("host", "rss_anon")
    assert not host.judged and host.over and report.failed == []
    verdict = soak.decide(report)
    assert (verdict.status, verdict.word) == (soak.TOO_SHORT, "TOO SHORT TO JUDGE")
    assert verdict.headline.startswith("too short to judge: 24,900 calls, at least 40,000 needed")
    text = soak.explain(report, verdict, soak.Bounds())
    assert "= +1.245 MiB > 1 MiB: would be growth, but the run is too short to judge" in text
    assert "(exit 3)" in text
    # a flat run of the same length is too short just the same
    assert soak.decide(soak.analyze(flat_run(n=250))).status == soak.TOO_SHORT


def test_a_run_with_too_few_samples_is_too_short():
    rows = flat_run(n=12, calls_per_sample=5000)          # 55,000 calls, 8 samples judged
    report = soak.analyze(rows)
    assert report.final_calls >= report.needed_calls
    assert report.too_short.startswith("8 samples of the host after the warm-up, at least 10")
    assert soak.decide(report).status == soak.TOO_SHORT


def test_a_count_leak_fails_even_a_run_too_short_to_judge():
    rows = flat_run(n=250, fds=lambda c: 20 + c // 5000)
    report = soak.analyze(rows)
    assert report.too_short and failed(report) == {("host", "fds_other")}
    assert soak.decide(report).status == soak.FAILED


def test_calls_needed():
    assert soak.calls_needed() == 40_000
    assert soak.calls_needed(0.2, 20_000, 5_000) == 40_000       # the warm-up fits in half
    assert soak.calls_needed(0.2, 2_000, 40_000) == 50_000       # 40,000 = 0.8 x 50,000
    assert soak.calls_needed(0.2, 4_000, None) == 8_000
    assert soak.calls_needed(0.7, 1_000, 10_000) == 20_000       # the warm-up is at most half


def test_failures_fail_and_interruptions_fail():
    report = judge(flat_run())
    assert soak.decide(report, ["copy n=5: boom"]).problems == ["copy n=5: boom"]
    assert soak.decide(report, interrupted=True).status == soak.FAILED


@pytest.mark.parametrize("metric, leak", [
    ("fds", lambda c: 20 + c // 5000),
    ("threads", lambda c: 3 + c // 5000),
    ("segments", lambda c: 4 + c // 5000),
    ("segment_bytes", lambda c: 4 * MIB + (c // 5000) * 65536),
])
def test_count_leaks_fail(metric, leak):
    report = judge(flat_run(**{metric: leak}))
    judged = {"fds": "fds_other", "segments": "segments_other",
              "segment_bytes": "segment_bytes_other"}.get(metric, metric)
    assert failed(report) == {("host", judged)}


def test_count_dips_and_one_sample_spikes_are_not_growth():
    # a killed worker's slot not yet restarted: 2 fds fewer now and then,
    # twice right at the start of the judged part; a thread caught once
    rows = flat_run(fds=lambda c: 18 if c % 1700 < 200 or c in (4000, 4200) else 20,
                    threads=lambda c: 4 if c == 15_000 else 3)
    assert judge(rows).failed == []


def test_level_is_the_most_common_value():
    assert soak.level([12, 13, 13, 12]) == 13
    assert soak.level([5, 5, 5, 9]) == 5
    assert soak.window_growth([13] * 10 + [14] * 5 + [15] * 10 + [16] * 15) == 3


def test_segment_fds_are_not_other_fds():
    # Python's mmap keeps a dup of its fd: a worker caching one mapping more has an fd more
    wobble = lambda c: (c // 997) % 5      # noqa: E731
    rows = flat_run() + series("pool/w1", fds=lambda c: 12 + wobble(c),
                               shm_fds=lambda c: 3 + wobble(c), mappings=lambda c: 3 + wobble(c),
                               segments=0, segment_bytes=0)
    assert judge(rows).failed == []


def test_what_lanes_and_staging_hold_is_not_growth():
    # the host's lanes come and go (a Client dials them as calls need them),
    # the staging caches change size, a server worker serves more or fewer
    # connections: held by design, counted from their holders
    wobble = lambda c: (c // 100) * 7919 % 5           # noqa: E731 - 0..4
    held = dict(segments=lambda c: 10 + 2 * wobble(c), held_segments=lambda c: 2 * wobble(c),
                segment_bytes=lambda c: 4 * MIB + wobble(c) * 8 * MIB,
                held_bytes=lambda c: wobble(c) * 8 * MIB,
                mappings=lambda c: 9 + 2 * wobble(c),
                fds=lambda c: 30 + 3 * wobble(c), shm_fds=lambda c: 9 + 2 * wobble(c),
                held_sockets=wobble)
    rows = flat_run(**held) + series("server/w0", fds=lambda c: 6 + wobble(c), shm_fds=0,
                                     held_sockets=wobble, segments=0, segment_bytes=0)
    assert judge(rows).failed == []
    leaky = dict(held, segments=lambda c: 10 + 2 * wobble(c) + c // 4000)
    rows = flat_run(**leaky) + series("server/w0", fds=lambda c: 6 + wobble(c) + c // 4000,
                                      shm_fds=0, held_sockets=wobble, segments=0,
                                      segment_bytes=0)
    assert failed(judge(rows)) == {("host", "segments_other"), ("server/w0", "fds_other")}


def test_samples_of_before_are_still_read():
    # a samples.csv of the single-module soak: no shm_fds, no held_*, staging_bytes
    rows = flat_run(fds=lambda c: 16 + c % 3, mappings=lambda c: c % 3)
    for r in rows:
        for k in ("shm_fds", "held_segments", "held_bytes", "held_sockets"):
            del r[k]
        r["staging_bytes"] = 0
    assert judge(rows).failed == []


def test_a_replaced_worker_is_reported_not_judged():
    # killed every 3000 calls; each new worker starts lower and climbs 3 MiB
    def anon(c):
        return 30 * MIB + 3 * MIB * (c % 3000) / 3000
    rows = flat_run() + series("pool/w1", pid=lambda c: 2000 + c // 3000, rss_anon=anon,
                               segments=0, segment_bytes=0)
    report = judge(rows)
    assert report.failed == []
    c = report.check("pool/w1", "rss_anon")
    assert not c.judged and c.epochs > 1 and c.slope_per_10k > 0


def test_a_leaking_witness_worker_fails():
    rows = flat_run() + series("trouble/w0", rss_anon=lambda c: 30 * MIB + 2 * MIB * c / 20_000,
                               segments=0, segment_bytes=0)
    assert failed(judge(rows)) == {("trouble/w0", "rss_anon")}


def test_a_restarted_witness_fails():
    rows = flat_run() + series("trouble/w0", pid=lambda c: 3000 + (c > 9000), rss_anon=30 * MIB,
                               segments=0, segment_bytes=0)
    assert failed(judge(rows)) == {("trouble/w0", "restarts")}


def test_a_witness_its_pool_stopped_is_no_crash():
    rows = flat_run() + series("trouble/w0", pid=lambda c: 3000 + (c > 9000), rss_anon=30 * MIB,
                               segments=0, segment_bytes=0)
    report = judge(rows, retired={3000})
    assert report.failed == [] and report.check("trouble/w0", "restarts").value == 0
    assert not report.check("trouble/w0", "rss_anon").judged
    assert any("trouble/w0: stopped 1 time(s) by its own pool" in n for n in report.notes)


def test_worker_mappings_are_held_to_the_cache_cap():
    from shmpool._backend.mappings import MAX
    assert soak.default_mappings_cap() == MAX == 64
    assert judge(flat_run(), mappings_cap=32).failed == []
    rows = flat_run() + series("pool/w1", mappings=lambda c: 5 + c // 500, segments=0,
                               segment_bytes=0)
    assert ("pool/w1", "mappings") in failed(judge(rows, mappings_cap=32))
    assert ("pool/w1", "mappings") not in failed(judge(rows))          # at most 44 <= 64


def test_within_slope_ignores_the_jump_between_epochs():
    x = list(range(100))
    y = [(10 if i < 50 else 0) + 0.5 * (i % 50) for i in x]
    epochs = [i // 50 for i in x]
    assert soak.within_slope(x, y, epochs) == pytest.approx(0.5)
    assert soak.within_slope(x, y) < 0.5


def test_the_warm_up_is_a_fifth_at_least_min_calls_at_most_half():
    assert soak.warmup_end(100_000, 0.2, 2000) == 20_000
    assert soak.warmup_end(5000, 0.2, 2000) == 2000
    assert soak.warmup_end(3000, 0.2, 2000) == 1500


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=soak.SAMPLE_FIELDS)
        w.writeheader()
        w.writerows(rows)


def test_analyze_reads_the_csv_back_and_plots_it(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "samples.csv"
    write_csv(path, flat_run(rss_anon=lambda c: 80 * MIB + 2 * MIB * c / 20_000))
    report = judge(soak.read_csv(str(path)))
    assert failed(report) == {("host", "rss_anon")}
    soak.plot(str(tmp_path / "soak.png"), soak.read_csv(str(path)), report)
    assert (tmp_path / "soak.png").stat().st_size > 10_000


# -- without the soak extra (tqdm, matplotlib) ------------------------------------------------

def test_without_matplotlib_no_picture_and_it_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib: ImportError
    report = judge(flat_run())
    with pytest.raises(soak.PlotUnavailable):
        soak.plot(str(tmp_path / "soak.png"), flat_run(), report)
    why = soak.try_plot(str(tmp_path / "soak.png"), flat_run(), report)
    assert f"soak.png not written: {why}" == NO_PNG
    assert not (tmp_path / "soak.png").exists()


def test_without_tqdm_a_plain_progress_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)             # from tqdm import ...: ImportError
    shown = soak_progress.progress(True, 20.0, None)
    assert isinstance(shown, soak_progress.Plain) and shown.every == 5.0
    shown.stream = io.StringIO()
    shown.update(0.4, 10, "10 calls")                           # not yet: one line every 5 s
    shown.update(12.2, 15_000, "15,000 calls, kills 3", force=True)
    assert shown.stream.getvalue() == "shmpool soak: 12/20 s: 15,000 calls, kills 3\n"
    assert isinstance(soak_progress.progress(False, 20.0, None), soak_progress.Silent)


# -- the command line ---------------------------------------------------------------------------

def test_cli_defaults_are_the_documented_ones(monkeypatch):
    seen = []
    monkeypatch.setattr(soak, "run", lambda cfg: seen.append(cfg) or 0)
    assert cli_main(["soak"]) == 0
    assert seen == [soak.Config(duration=480.0)]
    cfg = seen[0]
    b = cfg.bounds
    assert (b.rss_bytes, b.fds, b.threads, b.segments, b.segment_bytes) == (MIB, 0, 0, 0, 0)
    assert (cfg.warmup, cfg.min_warmup_calls, cfg.min_judged_calls) == (0.2, 20_000, None)


def test_setup_errors_exit_2(tmp_path):
    assert soak.run(soak.Config(duration=1, out=str(tmp_path), go_host=str(tmp_path / "nope"),
                                progress=False)) == 2
    assert soak.run(soak.Config(duration=1, out=str(tmp_path), workers=1, progress=False)) == 2
    assert soak.run(soak.Config(duration=1, out=str(tmp_path), min_judged_calls=0,
                                progress=False)) == 2


def test_the_method_is_in_the_package_docstring():
    doc = soak.__doc__
    for words in ("The load", "The samples", "The allocator", "The verdict",
                  "TOO SHORT TO JUDGE", "slope x the run's"):
        assert words in doc


# -- the short soak on real pools -------------------------------------------------------------

def run_soak(out, *args, env=None, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "shmpool", "soak", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    path = out / "summary.json"
    return proc, json.loads(path.read_text()) if path.exists() else {}


def check_outputs(proc, summary, out, roles, status):
    """Everything but the picture; *status*: the verdict's exit status."""
    assert proc.returncode == status, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert summary["status"] == status and summary["problems"] == []
    with open(out / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen = {r["role"] for r in rows}
    assert roles <= seen, seen
    assert all(int(r["rss_anon"]) > 0 for r in rows)
    stats = summary["stats"]
    assert stats["kills"] > 0 and stats["worker_died"] > 0, stats
    assert stats["errors_raised"] > 0 and stats["verified"] > 0, stats
    assert stats.get("unexpected", 0) == 0
    checks = {(c["role"], c["metric"]): c for c in summary["checks"]}
    for role in roles:
        assert checks[role, "rss_anon"]["slope_per_10k"] is not None
    assert all(c["ok"] for c in summary["checks"]), [c for c in summary["checks"] if not c["ok"]]
    assert checks["pool/w0", "restarts"]["value"] == 0       # no crash of the witness
    assert "KiB/10k calls" in proc.stdout and "how the verdict follows" in proc.stdout
    text = (out / "summary.txt").read_text()
    assert text.startswith("calls:") and "slope/10k" in text
    return rows


def test_short_soak_without_the_extras(tmp_path):
    """No tqdm, no matplotlib (a module of each that raises ImportError first
    on the path): plain progress lines, no picture and the output says so;
    the samples and summaries all the same.  12 s is too short to judge: it
    says so and exits 3, after checking every count."""
    hide = tmp_path / "hide"
    hide.mkdir()
    for name in ("tqdm", "matplotlib"):
        (hide / f"{name}.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(ROOT)]))
    out = tmp_path / "soak"
    proc, summary = run_soak(out, "--duration", "12", env=env)
    rows = check_outputs(proc, summary, out, {"host", "host/zygote", "pool/w0", "pool/w1",
                                              "trouble/w0", "trouble/w1"}, soak.TOO_SHORT)
    assert summary["verdict"] == "TOO SHORT TO JUDGE"
    assert f"at least {soak.calls_needed():,} needed" in summary["too_short"]
    assert "verdict: too short to judge: " in proc.stdout and "(exit 3)" in proc.stdout
    assert not (out / "soak.png").exists()
    assert NO_PNG in proc.stdout.splitlines()
    assert "soak.png" not in next(ln for ln in proc.stdout.splitlines() if ln.startswith("wrote"))
    assert summary["files"]["soak.png"].startswith("not written: matplotlib is not installed")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("shmpool soak: ")]
    assert len(lines) >= 2 and " s: " in lines[0] and "calls" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    pid = int(next(r["pid"] for r in rows if r["role"] == "host"))
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{pid}-")]


@pytest.fixture(scope="module")
def go_outliers(tmp_path_factory):
    """cmd/outliers, built fresh (the Go build cache makes it quick); the one
    `make adapters` built when there is no Go toolchain."""
    go = shutil.which("go")
    if go is None:
        built = GO_DIR / "bin" / "outliers"
        assert built.exists(), "go, or `make adapters`, is required (the README's set-up)"
        return built
    exe = tmp_path_factory.mktemp("go") / "outliers"
    build = subprocess.run([go, "build", "-o", str(exe), "./cmd/outliers"], cwd=GO_DIR,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"cannot build cmd/outliers: {build.stderr[-2000:]}"
    return exe


def test_short_soak_with_the_go_host(tmp_path, go_outliers):
    out = tmp_path / "soak-go"
    proc, summary = run_soak(out, "--no-progress", "--duration", "12",
                             "--go-host", str(go_outliers))
    check_outputs(proc, summary, out, {"host", "pool/w0", "server", "server/zygote",
                                       "server/w0", "server/w1"}, soak.TOO_SHORT)
    assert summary["stats"]["go_ok"] > 0
    assert (out / "soak.png").stat().st_size > 10_000
    assert f"wrote {out / 'samples.csv'}, {out / 'soak.png'}" in proc.stdout
    assert proc.stderr == ""
