"""Detectors of the user's own and the second built-in: split like the classic
one by every pool and host, with per-call parameters (issue 12)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import planted
from serverutil import ServerProcess
from shmpool import DetectorError, InvalidParameter, NonFiniteError, Pool
from shmpool import detectors as D
from shmpool.client import Client
from shmpool.layout import SPLIT_MIN

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = str(ROOT / "examples")
GO_DIR = ROOT / "host_adapters" / "go"
sys.path.insert(0, EXAMPLES)
from spikes import Spikes  # noqa: E402


@pytest.fixture(scope="module")
def both():
    with Pool(workers=2, detector=["classic", "tukey", "spikes:Spikes",
                                   "shmpool.testing:two_params"]) as p:
        yield p


def spiky(n, seed=7):
    """What host_adapters/go/cmd/spikes makes: splitmix64 - 0.5, 40 planted."""
    sys.path.insert(0, str(ROOT / "tests" / "vectors"))
    from make_vectors import splitmix
    x = splitmix(n, seed) - 0.5
    x[11::100_003] += 40
    return x


# -- the second built-in: Tukey's fences -------------------------------------------

@pytest.mark.parametrize("n", [10, 1000, 65_537, SPLIT_MIN - 1])
def test_tukey_whole_equals_numpys_quartiles(both, n):
    rng = np.random.default_rng(n)
    x = rng.standard_t(3, n)                      # heavy tails: many fence crossings
    assert both.detect(x, detector="tukey").tolist() == D.tukey_reference(x).tolist()
    assert both.detect(x, detector="tukey", params={"k": 3}).tolist() == \
        D.tukey_reference(x, 3).tolist()


@pytest.mark.parametrize("shape", ["normal", "sorted", "two_modes"])
def test_tukey_split_is_within_its_documented_rank_tolerance(both, shape):
    """Split over chunks, each estimated quartile's rank is within N/60 + k of
    the exact one's, and indices differ only between the two fences."""
    rng = np.random.default_rng(1)
    n = 900_001
    x = rng.standard_normal(n)
    if shape == "sorted":
        x.sort()                                   # chunks with nothing in common
    elif shape == "two_modes":
        x[: n // 3] += 8
    got = both.detect(x, detector="tukey")
    row = D.load("tukey")
    p = row.params((), "raise")
    k = len(D.L.split(n, D.L.split_count(n, 2)))
    sums = np.array([row.impl.summarize(x[a:b], p) for a, b in D.L.split(n, k)])
    lo, hi = row.impl.combine(sums, p)
    exact = D.tukey_reference(x)
    q1, q3 = np.quantile(x, [0.25, 0.75])
    xs = np.sort(x)
    for est, q in ((D._merged_quantile(sums, 0.25), 0.25), (D._merged_quantile(sums, 0.75), 0.75)):
        rank = np.searchsorted(xs, est)
        assert abs(rank - q * n) <= n / 60 + k + 1
    diff = np.setxor1d(got, exact)
    e_lo, e_hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    between = ((x[diff] >= min(lo, e_lo)) & (x[diff] <= max(lo, e_lo))) | \
              ((x[diff] >= min(hi, e_hi)) & (x[diff] <= max(hi, e_hi)))
    assert between.all()
    assert np.array_equal(got, np.flatnonzero((x < lo) | (x > hi)))


def test_tukey_finds_what_the_z_score_misses(both):
    """Why a second built-in: past a fifth of the data, huge values inflate the
    std until the z-score flags none of them; the quartiles barely move."""
    x = np.random.default_rng(2).standard_normal(10_000)
    x[:2200] = 1e4
    assert both.detect(x).tolist() == []
    assert set(range(2200)) <= set(both.detect(x, detector="tukey").tolist())


def test_tukey_nan_policies(both):
    x = np.r_[np.random.default_rng(3).standard_normal(100), 50.0, np.nan]
    with pytest.raises(NonFiniteError, match="index 101"):
        both.detect(x, detector="tukey")
    assert both.detect(x, detector="tukey", nan_policy="omit").tolist() == \
        D.tukey_reference(x[:101]).tolist()
    assert both.detect(x, detector="tukey", nan_policy="propagate").tolist() == []


# -- the worked example: a detector of the user's own -------------------------------

@pytest.mark.parametrize("n", [1000, 2_000_003])
def test_the_users_detector_split_equals_the_whole_array_at_once(both, n):
    x = spiky(n)
    whole = Spikes().detect(x, D.Params({"k": 4.0}, "raise"))
    assert len(whole) == len(range(11, n, 100_003)) and len(whole) >= 1
    assert both.detect(x, detector="spikes:Spikes").tolist() == whole.tolist()
    buf = both.empty(n)
    buf[:] = x
    assert both.detect(buf, detector="spikes:Spikes").tolist() == whole.tolist()


def test_the_users_detector_from_go_through_a_server(tmp_path):
    """examples/spikes.py served by name, called from Go, split across the
    server's workers: the same indices as the whole array at once."""
    binary = tmp_path / "spikes"
    build = subprocess.run(["go", "build", "-o", str(binary), "./cmd/spikes"], cwd=GO_DIR,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, PYTHONPATH=EXAMPLES)
    s = ServerProcess(tmp_path / "p.sock", "--workers", "2", "--detector", "spikes:Spikes",
                      "--detector", "classic", env=env).start()
    try:
        n = 2_000_003
        out = subprocess.run([str(binary), "-socket", s.path, "-n", str(n), "-k", "4"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        whole = Spikes().detect(spiky(n), D.Params({"k": 4.0}, "raise"))
        assert out.stdout.split("[")[0].strip() == str(len(whole))
        assert out.stdout.split("[")[1].strip("]\n").split() == [str(i) for i in whole[:5]]
        with Client(s.path) as c:                         # and a Python host, splitting too
            assert c.detect(spiky(n), detector="spikes:Spikes").tolist() == whole.tolist()
    finally:
        assert s.stop() == 0


# -- parameters and errors ----------------------------------------------------------

def test_per_call_parameters_by_name(both):
    x = np.array([0.5, 1.5, 2.5, 3.5])
    assert both.detect(x, detector="shmpool.testing:two_params").tolist() == [2, 3]
    assert both.detect(x, detector="shmpool.testing:two_params",
                       params={"floor": 3.0}).tolist() == [3]
    assert both.detect(x, detector="shmpool.testing:two_params", threshold=1.0,
                       params={"floor": 0.0}).tolist() == [1, 2, 3]
    assert [r.params for r in both.detectors] == [
        (("threshold", 2.0),), (("k", 1.5),), (("k", 4.0),), (("threshold", 2.0), ("floor", 0.0))]
    with pytest.raises(TypeError, match="no parameter"):
        both.detect(x, params={"nope": 1.0})
    with pytest.raises(InvalidParameter, match="k must be"):
        both.detect(x, detector="tukey", params={"k": -2})
    with pytest.raises(ValueError, match="not one of this pool's"):
        both.detect(x, detector="zscore")


def test_a_detectors_own_default_holds_unless_the_pool_sets_one(tmp_path):
    """A SplitDetector's declared threshold (3.0) is its default; only an
    explicit threshold= of the pool or server replaces it, for every row."""
    x = np.random.default_rng(3).standard_normal(SPLIT_MIN + 5)      # split
    x[[10, 2000, 300_000 % len(x)]] = [2.5, -2.7, 3.5]
    mine = "shmpool.testing:ClassicAtThree"
    with Pool(workers=2, detector=["classic", mine]) as p:
        assert [r.params for r in p.detectors] == [(("threshold", 2.0),), (("threshold", 3.0),)]
        assert np.array_equal(p.detect(x, detector=mine), D.reference(x, 3.0))
        assert np.array_equal(p.detect(x), D.reference(x, 2.0))
        assert "threshold" not in repr(p)
    with Pool(workers=2, detector=["classic", mine], threshold=2.5) as p:
        assert [r.params for r in p.detectors] == [(("threshold", 2.5),)] * 2
        assert np.array_equal(p.detect(x, detector=mine), D.reference(x, 2.5))
    server = ServerProcess(tmp_path / "s.sock", "--workers", "2", "--detector", "classic",
                           "--detector", mine).start()
    try:
        with Client(server.path) as c:
            assert [r.params for r in c.rows] == [(("threshold", 2.0),), (("threshold", 3.0),)]
            assert np.array_equal(c.detect(x, detector=mine), D.reference(x, 3.0))
    finally:
        server.stop()
    assert "each its own threshold" in server.proc.stderr.read()


@pytest.mark.parametrize("which,words", [
    ("FailsInSummarize", "ArithmeticError: summarize failed"),
    ("FailsInCombine", "LookupError: combine failed"),
    ("FailsInFlag", "RuntimeError: flag failed"),
    ("WrongSummarySize", "summarize returned 2 values"),
])
def test_a_plugin_that_raises_in_any_phase_is_a_detector_error(which, words):
    """Any phase, split or whole: DetectorError with the remote traceback, no
    partial answer, and the next call works."""
    with Pool(workers=2, detector=[f"shmpool.testing:{which}", "classic"]) as p:
        big = np.random.default_rng(4).standard_normal(600_000)
        for x in (big, planted(0)):
            if which in ("FailsInSummarize", "FailsInFlag") and len(x) < SPLIT_MIN:
                continue                               # those fail in a second chunk only
            with pytest.raises(DetectorError, match=words) as e:
                p.detect(x)
            if which != "WrongSummarySize":
                assert which[7:].lower() in str(e.value.__cause__).lower()
        assert p.detect(planted(1), detector="classic").tolist() == [7, 113, 835]
