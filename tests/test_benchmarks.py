"""The benchmark suite runs, checks every method, and writes its outputs.

No timing assertions: the machine is shared and noisy.  These run
``python -m benchmarks.run --quick`` (once without and once with the Go host)
and hold the outputs to their shape: the table, the plot and the JSON exist,
every method's correctness check passed at every size, ratios are numbers,
every target has a verdict, and nothing is left running or in /dev/shm.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON_METHODS = ["numpy", "shmpool_kernel", "mp_pool", "process_pool_executor", "joblib", "grpc",
                  "shmpool_copy", "shmpool_zero_copy", "shmpool_serve_python", "ray"]
GO_METHODS = ["go_shmpool", "go_shmpool_buffer", "go_grpc"]


def run_quick(tmp_path, *extra, timeout=900):
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
    for n in doc["sizes"]:
        s = m["sizes"][str(n)]
        assert s.get("correct") is True, f"{key} at n={n}: {s.get('error') or s.get('skipped')}"
        assert s["calls"] > 0 and len(s["lat_ns"]) == s["calls"]
        for field in ("p50_s", "p99_s", "median_s", "elements_per_s", "gb_per_s", "ratio_vs_numpy",
                      "speedup_vs_numpy"):
            v = s[field]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (key, n, field, v)
        assert s["ratio_vs_numpy"] == pytest.approx(s["median_s"] / doc["methods"]["numpy"]["sizes"][str(n)]["median_s"])


def assert_outputs(out, doc, proc, keys):
    md = (out / "results.md").read_text()
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| target | measured | result |" in md
    assert "## Latency per call, small arrays" in md and "## Throughput, large arrays" in md
    assert "## Physical floor" in md
    for key in ("cpu_model", "cores", "date"):
        assert doc["meta"][key]
    assert doc["meta"]["versions"]["numpy"] == np.__version__
    assert doc["meta"]["versions"]["python"] in md and doc["meta"]["cpu_model"] in md
    bw = doc["bandwidth"]["gb_s"]
    assert isinstance(bw, float) and bw > 0
    for n in doc["sizes"]:
        assert doc["floor"][str(n)]["floor_s"] > 0
    for key in keys:
        assert_method_ok(doc, key)
        assert doc["methods"][key]["label"] in md
    # every target has a verdict; the 1,000-float ones are measured in --quick
    verdicts = {t["id"]: t["met"] for t in doc["targets"]}
    assert len(verdicts) == 7
    for tid in ("n1e3_vs_numpy", "n1e3_vs_mp", "n1e3_vs_grpc"):
        assert verdicts[tid] in (True, False), doc["targets"]
    for t in doc["targets"]:
        word = "MET" if t["met"] is True else "NOT MET" if t["met"] is False else "NOT MEASURED"
        assert f"**{word}**" in md
        assert f"[{word}] {t['target']}" in proc.stdout
    # nothing left behind
    assert doc["leftover_segments"] == []
    tmpdir = doc["meta"]["tmpdir"]
    assert not Path(tmpdir).exists()
    for p in psutil.process_iter(["cmdline"]):
        assert tmpdir not in " ".join(p.info["cmdline"] or []), p


def test_quick_run_without_go(tmp_path):
    out, doc, proc = run_quick(tmp_path, "--no-go")
    assert doc["sizes"] == [10**3, 10**4, 10**5, 10**6]
    assert_outputs(out, doc, proc, PYTHON_METHODS)
    assert doc["parallel_kernel"]["n"] == 10**6 and doc["parallel_kernel"]["total_s"] > 0
    assert doc["hotspots"]["big"]["zero_copy_detect_s"] > 0 and doc["hotspots"]["n1000_profile"]["top"]
    for key in GO_METHODS:
        assert not doc["methods"][key]["available"]
        assert "--no-go" in doc["methods"][key]["reason"]
    assert {t["id"]: t["met"] for t in doc["targets"]}["go_n1e3_vs_grpc"] is None


def test_quick_run_with_go(tmp_path):
    assert shutil.which("go"), "go is required (the README's set-up uses it)"
    out, doc, proc = run_quick(tmp_path, "--max-size", "1e5")
    assert doc["sizes"] == [10**3, 10**4, 10**5]
    # RayPool is held to its row in the run above; here the Go rows are the point
    assert_outputs(out, doc, proc, [m for m in PYTHON_METHODS if m != "ray"] + GO_METHODS)
    assert {t["id"]: t["met"] for t in doc["targets"]}["go_n1e3_vs_grpc"] in (True, False)
    assert doc["meta"]["go_version"].startswith("go version")


# -- the driver's own logic, without processes ----------------------------------------------

class _Bar:
    def update(self, k=1):
        pass

    def set_postfix_str(self, s):
        pass


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

    rec = R.Recorder()
    meths = [M.Numpy(), Wrong(), Raises()]
    for m in meths:
        rec.declare(m.key, m.label, m.group, m.how)
    args = R.parse_args(["--quick"])
    st = R.Settings(args)
    st.counted = {m.key for m in meths}
    n = 1000
    x = R.make_data(n, 1)
    ref = W.one_liner(x)
    mean, cut = float(x.mean()), 2 * float(x.std())
    scale = max(float(np.abs(x).max()), cut)
    R.run_size(n, x, lambda got: W.check_answer(got, x, ref, mean, cut, scale), meths, rec, st, _Bar())

    wrong = rec.methods["wrong"]
    assert not wrong["available"] and "correctness check failed" in wrong["reason"]
    assert wrong["sizes"]["1000"]["correct"] is False and "median_s" not in wrong["sizes"]["1000"]
    assert Wrong.calls == 1                    # checked once, never timed
    raises = rec.methods["raises"]["sizes"]["1000"]
    assert "RuntimeError: boom" in raises["error"] and "median_s" not in raises
    assert rec.methods["numpy"]["sizes"]["1000"]["correct"] is True
    assert rec.methods["numpy"]["sizes"]["1000"]["calls"] == st.schedule[n][1] * st.schedule[n][2]


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
