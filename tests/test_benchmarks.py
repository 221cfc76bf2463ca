"""The benchmark suite runs, checks every method before timing it, and writes its outputs.

No timing assertions: the machine is shared and noisy.  Two ``python -m
benchmarks.run --quick`` runs (one without Go, with every Python row; one
with the Go host and the cgo embed, a few Python rows, sizes up to 10^4)
are held to the outputs' shape: the table, the plot and the JSON exist,
every method's correctness check passed at every size, ratios are numbers,
every target has a verdict, the idle measurement and the commit are there,
and nothing is left running or in /dev/shm.  The rest exercises the driver's
checks without processes: a wrong answer aborts its method before timing, in
Python and in the Go programs' results.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
# every Python row but RayPool, whose local cluster alone takes 7-15 s to start on the 2-core VM
# (tests/test_ray.py covers RayPool; the full benchmark runs its row)
PYTHON_METHODS = ["numpy", "shmpool_kernel", "mp_pool", "process_pool_executor", "joblib", "grpc",
                  "shmpool_copy", "shmpool_zero_copy", "shmpool_serve_python", "plugin_split", "plugin_whole"]
GO_METHODS = ["go_shmpool", "go_shmpool_buffer", "go_numpy_detector", "go_grpc"]
EMBED_METHODS = ["embed_nogil", "embed_gil"]
# the --methods of the Go run: the rows its targets compare with, and the gRPC service go_grpc calls
GO_RUN_PYTHON = ["numpy", "shmpool_copy", "shmpool_zero_copy", "grpc"]
TARGET_IDS = {"go_1e3_vs_embed": 1, "go_numpy_1e3_vs_embed": 2, "go_numpy_1e6_vs_embed": 2,
              "go_1e7_vs_pool_copy": 3, "pool_copy_1e3_vs_numpy": 4, "pool_zero_1e3_vs_numpy": 4,
              "go_4g_vs_1g": 5, "go_4g_vs_embed_gil": 5, "zero_copy_1e7_vs_floor": 6, "idle_cpu": 7}


def embed_possible() -> bool:
    from benchmarks import embed_bench
    return shutil.which("go") is not None and embed_bench.build_flags()[0] is not None


def run_quick(tmp_path, *extra, timeout=300):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    doc = json.loads((out / "results.json").read_text())
    return out, doc, proc


def assert_method_ok(doc, key):
    m = doc["methods"][key]
    assert m["available"], f"{key} unavailable: {m['reason']}"
    assert doc["sizes"], "no sizes ran"
    numpy_sizes = doc["methods"]["numpy"]["sizes"]
    for n in doc["sizes"]:
        s = m["sizes"][str(n)]
        assert s.get("correct") is True, f"{key} at n={n}: {s.get('error') or s.get('skipped')}"
        assert s["found"] > 0
        assert s["calls"] > 0 and len(s["lat_ns"]) == s["calls"]
        for field in ("p50_s", "p99_s", "median_s", "elements_per_s", "gb_per_s", "ratio_vs_numpy",
                      "speedup_vs_numpy"):
            v = s[field]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (key, n, field, v)
        assert s["ratio_vs_numpy"] == pytest.approx(s["median_s"] / numpy_sizes[str(n)]["median_s"])


def assert_outputs(out, doc, proc, keys):
    md = (out / "results.md").read_text()
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "## Latency per call, small arrays" in md and "## Physical floor" in md
    for key in ("cpu_model", "cores", "date"):
        assert doc["meta"][key]
    assert doc["meta"]["versions"]["numpy"] == np.__version__
    assert doc["meta"]["versions"]["python"] in md and doc["meta"]["cpu_model"] in md
    # the commit (HEAD when the run started: others may commit meanwhile), in the JSON and the header
    commit = doc["meta"]["git_commit"]
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?", commit), commit
    known = subprocess.run(["git", "cat-file", "-e", commit.split("+")[0] + "^{commit}"], cwd=REPO)
    assert known.returncode == 0, commit
    assert f"**Commit:** `{commit}`" in md
    assert ("+dirty" in commit) == bool(doc["meta"]["git_uncommitted"])
    bw = doc["bandwidth"]["gb_s"]
    assert isinstance(bw, float) and bw > 0
    for n in doc["sizes"]:
        assert doc["floor"][str(n)]["floor_s"] > 0
    for key in keys:
        assert_method_ok(doc, key)
        assert doc["methods"][key]["label"] in md
    # every target, with a verdict, in the JSON, the table and the printed summary
    targets = {t["id"]: t for t in doc["targets"]}
    assert {tid: t["bullet"] for tid, t in targets.items()} == TARGET_IDS
    assert "| # | target | measured | result |" in md
    for t in doc["targets"]:
        assert t["met"] in (True, False, None)
        assert (t["met"] is None) == (t["measured"] == "not measured"), t
        word = "MET" if t["met"] is True else "NOT MET" if t["met"] is False else "NOT MEASURED"
        assert f"**{word}** |" in md
        assert f"{t['bullet']}. [{word}] {t['target']}" in proc.stdout
        if t["met"] is None:
            assert t["detail"], t                       # says why
    for tid in ("pool_copy_1e3_vs_numpy", "pool_zero_1e3_vs_numpy", "idle_cpu"):
        assert targets[tid]["met"] in (True, False), targets[tid]
    for tid in ("go_1e7_vs_pool_copy", "zero_copy_1e7_vs_floor"):
        assert targets[tid]["met"] is None and "not in this run" in targets[tid]["detail"]
    # the idle measurement
    idle = doc["idle"]
    assert idle["quick"] is True and idle["seconds"] >= 1.0
    for side in ("server", "pool"):
        part = idle[side]
        assert part["percent_of_core"] >= 0 and part["exited"] == 0
        roles = [p["role"] for p in part["processes"]]
        assert roles.count("worker") == 2 and roles.count("zygote") == 1, roles
    assert "server" in [p["role"] for p in idle["server"]["processes"]]
    assert "## Idle CPU" in md
    # nothing left behind
    assert doc["leftover_segments"] == []
    tmpdir = doc["meta"]["tmpdir"]
    assert not Path(tmpdir).exists()
    for p in psutil.process_iter(["cmdline"]):
        assert tmpdir not in " ".join(p.info["cmdline"] or []), p
    return md


def assert_no_files_of(pid: int) -> None:
    left = [f for f in os.listdir("/dev/shm") if f.startswith(f"shmpool-{pid}-")
            or f.startswith(f"shmpool-bench-{pid}-")]
    assert left == [], left


def test_quick_run_without_go(tmp_path):
    out, doc, proc = run_quick(tmp_path, "--no-go", "--methods", ",".join(PYTHON_METHODS))
    assert doc["sizes"] == [10**3, 10**4, 10**5, 10**6]
    md = assert_outputs(out, doc, proc, PYTHON_METHODS)
    pk = doc["parallel_kernel"]
    assert pk["n"] == 10**6 and pk["total_s"] > 0 and pk["pool_detect_s"] > 0
    assert pk["total_s"] == pk["pass1_s"] + pk["pass2_s"]
    assert "in turns with these trials" in md
    assert doc["hotspots"]["big"]["zero_copy_detect_s"] > 0 and doc["hotspots"]["n1000_profile"]["top"]
    for key in GO_METHODS + EMBED_METHODS:
        assert not doc["methods"][key]["available"]
        assert "--no-go" in doc["methods"][key]["reason"]
    assert "--methods" in doc["methods"]["ray"]["reason"] and "--methods" in md
    targets = {t["id"]: t for t in doc["targets"]}
    for tid in ("go_1e3_vs_embed", "go_numpy_1e3_vs_embed", "go_numpy_1e6_vs_embed", "go_4g_vs_1g",
                "go_4g_vs_embed_gil"):
        assert targets[tid]["met"] is None and "--no-go" in targets[tid]["detail"], targets[tid]
    # the plug-in: split and whole agreed (checked before timing) at every size
    assert "## A user's own detector (shmpool issue 12)" in md
    for n in doc["sizes"]:
        assert doc["methods"]["plugin_split"]["sizes"][str(n)]["found"] == \
            doc["methods"]["plugin_whole"]["sizes"][str(n)]["found"]
    assert_no_files_of(doc["meta"]["pid"])


def test_quick_run_with_go(tmp_path):
    assert shutil.which("go"), "go is required (the README's set-up uses it)"
    embed = embed_possible()
    out, doc, proc = run_quick(tmp_path, "--max-size", "1e4", "--methods", ",".join(GO_RUN_PYTHON),
                               "--idle-seconds", "1")
    assert doc["sizes"] == [10**3, 10**4]
    md = assert_outputs(out, doc, proc, GO_RUN_PYTHON + GO_METHODS + (EMBED_METHODS if embed else []))
    assert doc["meta"]["go_version"].startswith("go version")
    assert doc["go_info"]["detectors"] == ["classic", "benchmarks.detectors:numpy_oneliner"]
    for key in ("mp_pool", "joblib", "ray", "plugin_split"):
        assert "--methods" in doc["methods"][key]["reason"]
    targets = {t["id"]: t for t in doc["targets"]}
    assert targets["go_numpy_1e6_vs_embed"]["met"] is None
    # calls/s of one Go Client with 1 and 4 goroutines
    runs = doc["concurrency"]["runs"]
    for g in ("1", "4"):
        assert runs["go_shmpool"][g]["calls_per_s"] > 0 and not runs["go_shmpool"][g]["errors"]
    assert targets["go_4g_vs_1g"]["met"] in (True, False)
    assert_no_files_of(doc["meta"]["pid"])
    if embed:
        for tid in ("go_1e3_vs_embed", "go_numpy_1e3_vs_embed", "go_4g_vs_embed_gil"):
            assert targets[tid]["met"] in (True, False), targets[tid]
        for g in ("1", "4"):
            assert runs["embed_gil"][g]["calls_per_s"] > 0 and not runs["embed_gil"][g]["errors"]
        leak = {r["method"]: r for r in doc["concurrency"]["leak"]}
        assert set(leak) == set(EMBED_METHODS)
        for r in leak.values():
            assert not r.get("error") and r["blocks_before"] > 0 and r["rss_after"] > 0
        assert "## The anchor: CPython embedded in Go (cgo)" in md
        assert "CGO_LDFLAGS" in md
    else:
        for key in EMBED_METHODS:
            assert not doc["methods"][key]["available"] and doc["methods"][key]["reason"]
        assert targets["go_1e3_vs_embed"]["met"] is None


# -- the driver's own logic, without the full run ------------------------------------------

class _Bar:
    def update(self, k=1):
        pass

    def set_postfix_str(self, s):
        pass


def _settings():
    from benchmarks import run as R
    return R.Settings(R.parse_args(["--quick"]))


def test_wrong_answer_aborts_the_method_before_timing():
    from benchmarks import methods as M
    from benchmarks import run as R
    from benchmarks import workers as W

    class Wrong(M.Method):
        key, label = "wrong", "wrong on purpose"
        calls = 0

        def call(self, x):
            Wrong.calls += 1
            return W.one_liner(x)[1:]          # drops an outlier

    class Raises(M.Method):
        key, label = "raises", "raises on purpose"

        def call(self, x):
            raise RuntimeError("boom")

    class VerifyFails(M.Method):
        key, label = "verify", "right answer, fails its own further check"
        calls = 0

        def call(self, x):
            VerifyFails.calls += 1
            return W.one_liner(x)

        def verify(self, arg, got):
            raise W.Mismatch("split and whole differ")

    class OtherRule(M.Method):
        key, label, answer = "zscore", "answers the z-score rule", "zscore"

        def call(self, x):
            from benchmarks.detectors import zscore_reference
            return zscore_reference(x)

    rec = R.Recorder()
    meths = [M.Numpy(), Wrong(), Raises(), VerifyFails(), OtherRule()]
    for m in meths:
        rec.declare(m.key, m.label, m.group, m.how)
    st = _settings()
    st.counted = {m.key for m in meths}
    n = 1000
    x = R.make_data(n, 1)
    ref = W.one_liner(x)
    mean, cut = float(x.mean()), 2 * float(x.std())
    scale = max(float(np.abs(x).max()), cut)
    R.run_size(n, x, R.Checks(x, ref, mean, cut, scale), meths, rec, st, _Bar())

    wrong = rec.methods["wrong"]
    assert not wrong["available"] and "correctness check failed" in wrong["reason"]
    assert wrong["sizes"]["1000"]["correct"] is False and "median_s" not in wrong["sizes"]["1000"]
    assert Wrong.calls == 1                    # checked once, never timed
    raises = rec.methods["raises"]["sizes"]["1000"]
    assert "RuntimeError: boom" in raises["error"] and "median_s" not in raises
    verify = rec.methods["verify"]
    assert not verify["available"] and "split and whole differ" in verify["reason"]
    assert VerifyFails.calls == 1 and "median_s" not in verify["sizes"]["1000"]
    for key in ("numpy", "zscore"):
        s = rec.methods[key]["sizes"]["1000"]
        assert s["correct"] is True and s["calls"] == st.schedule[n][1] * st.schedule[n][2]
    # and the report says why
    from benchmarks import report
    assert "correctness check failed" in report._why(wrong, wrong["sizes"]["1000"])


def test_wrong_answer_in_a_go_program_aborts_its_row():
    """The Go programs check before timing; what they report reaches the row (stubbed runner)."""
    from benchmarks import embed_bench, go_bench
    from benchmarks import run as R

    class Stub:
        available = True

        def __init__(self, results):
            self.results, self.plans = results, []

        def run(self, plan, tag, timeout):
            self.plans.append(plan)
            return {"results": self.results}, []

    n = 1000
    go = Stub([{"method": "go_shmpool", "n": n, "correct": False, "lat_ns": [],
                "error": "correctness check failed: answer differs from numpy's at more than 2 indices"},
               {"method": "go_shmpool_buffer", "n": n, "correct": True, "found": 5, "lat_ns": [1000, 2000]}])
    emb = Stub([{"method": "embed_nogil", "n": n, "correct": True, "found": 5, "lat_ns": [900, 1100]},
                {"method": "embed_gil", "n": n, "correct": True, "found": 5, "lat_ns": [1500]}])
    rec = R.Recorder()
    for key, label, how in go_bench.METHODS + embed_bench.METHODS:
        rec.declare(key, label, "go", how)
    st = _settings()

    class Files:
        def size_plan(self, *a):
            return {"n": n}

    Files.n = n
    R.go_embed_size(go, emb, Files(), None, rec, st, _Bar(), {})
    s = rec.methods["go_shmpool"]["sizes"]["1000"]
    assert s["correct"] is False and "median_s" not in s and "correctness check failed" in s["error"]
    assert not rec.methods["go_shmpool"]["available"]
    assert rec.methods["go_shmpool_buffer"]["sizes"]["1000"]["median_s"] == pytest.approx(1.5e-6)
    assert rec.methods["embed_nogil"]["sizes"]["1000"]["correct"] is True
    assert go.plans[0]["methods"] == [k for k, _, _ in go_bench.METHODS]


@pytest.mark.skipif(not embed_possible(), reason="no Go, or no Python headers / libpython for cgo")
def test_embed_program_refuses_a_wrong_answer(tmp_path):
    """The real cgo program: numpy's answer passes its check, a corrupted one fails it, untimed."""
    from benchmarks import embed_bench, go_bench
    from benchmarks import run as R
    from benchmarks import workers as W

    emb = embed_bench.EmbedRunner(str(tmp_path))
    assert emb.build(600), emb.reason
    x = R.make_data(1000, 3)
    ref = W.one_liner(x)
    mean, cut = float(x.mean()), 2 * float(x.std())
    good = go_bench.DataFiles(str(tmp_path), 1000, x, ref, mean, cut, max(float(np.abs(x).max()), cut))
    plan = {"sizes": [good.size_plan(2, 1, 5, 1.0)]}
    out, errors = emb.run(plan, "good", 120)
    assert errors == [] and "numpy" in out["versions"]
    for r in out["results"]:
        assert r["correct"] and r["found"] == len(ref) and len(r["lat_ns"]) == 5, r
    ref[:-1].astype("<i8").tofile(good.ref)                  # drop an outlier
    out, errors = emb.run(plan, "bad", 120)
    for r in out["results"]:
        assert not r["correct"] and "correctness check failed" in r["error"] and r["lat_ns"] == [], r


def test_check_answer_allows_only_the_rounding_band():
    from benchmarks.workers import Mismatch, check_answer, one_liner

    x = np.array([0.0] * 9 + [1.0])
    ref = one_liner(x)
    mean, cut, scale = float(x.mean()), 2 * float(x.std()), 1.0
    check_answer(ref, x, ref, mean, cut, scale)
    with pytest.raises(Mismatch, match="not at the cut-off"):
        check_answer(np.array([0, 9]), x, ref, mean, cut, scale)
    with pytest.raises(Mismatch, match="ascending"):
        check_answer(np.array([9, 9]), x, ref, mean, cut, scale)
    # an index whose |x - mean| is the cut-off (to 1e-12 of the scale) may go either way
    check_answer(np.array([8, 9]), x, ref, mean, abs(x[8] - mean) * (1 + 1e-13), scale)
    check_answer(np.array([], dtype=np.int64), x, ref, mean, abs(x[9] - mean) * (1 - 1e-13), scale)
    with pytest.raises(Mismatch, match="not at the cut-off"):
        check_answer(np.array([8, 9]), x, ref, mean, abs(x[8] - mean) * (1 + 1e-9), scale)
    with pytest.raises(Mismatch, match="more than 2|at 3 indices"):
        check_answer(np.array([0, 1, 2, 9]), x, ref, mean, cut, scale)


def test_plugin_detector_split_equals_whole_and_numpy():
    """benchmarks.detectors.ZScoreSplit over chunks (as a pool splits it) = whole = numpy's rule."""
    from benchmarks import detectors as D
    from shmpool import layout
    from shmpool.detectors import Params

    rng = np.random.default_rng(5)
    x = rng.standard_normal(300_000)
    x[[3, 1000, 299_000]] += 40
    d = D.ZScoreSplit()
    p = Params({"threshold": 3.0})
    chunks = layout.split(len(x), 2)
    cut = d.combine(np.array([d.summarize(x[a:b], p) for a, b in chunks]), p)
    split = np.concatenate([d.flag(x[a:b], np.asarray(cut), p) + a for a, b in chunks])
    whole = D.zscore_whole(x)
    assert np.array_equal(split, whole) and np.array_equal(whole, D.zscore_reference(x))
    assert d.combine(np.array([d.summarize(np.zeros(10) + 1.0, p)]), p) is None   # nothing to flag
    assert np.array_equal(D.numpy_oneliner(x), np.where(np.abs(x - x.mean()) > 2 * x.std())[0])
