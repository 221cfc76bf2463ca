"""The classic detector's arithmetic: the C kernel, its numpy fallback and numpy
itself give the same bits where docs/LAYOUT.md 4.1 says they must."""

import math

import numpy as np
import pytest

from shmpool import detectors as D
from shmpool._backend.native import native

needs_native = pytest.mark.skipif(native is None, reason="the C extension is not built here")

SIZES = [1, 2, 7, 8, 9, 127, 128, 129, 1000, 4097, 65535, 65536, 65537, 131072 + 5, 1_000_003]
DATA = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "shifted": lambda rng, n: 1e9 + 1e-3 * rng.standard_normal(n),
    "lognormal": lambda rng, n: rng.lognormal(size=n),
    "drifting": lambda rng, n: np.linspace(-1e6, 1e6, n) + rng.standard_normal(n),
    "integers": lambda rng, n: rng.integers(-5, 5, n).astype(np.float64),
}


@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("n", SIZES)
def test_fallback_stats_are_numpys_up_to_one_block(n, kind):
    x = DATA[kind](np.random.default_rng(n), n)
    s = D._finite_stats(x)
    if n <= D.BLOCK:
        assert s.mean == x.mean() and math.sqrt(s.m2 / n) == x.std()
    else:
        assert s.n == n and math.isfinite(s.mean) and s.m2 >= 0


@needs_native
@pytest.mark.parametrize("kind", DATA)
@pytest.mark.parametrize("n", SIZES)
def test_c_kernel_equals_the_fallback_bit_for_bit(n, kind):
    x = DATA[kind](np.random.default_rng(n + 1), n)
    assert native.chunk_stats(x) == tuple(D._finite_stats(x)[:3])
    s = D._finite_stats(x)
    cut = 1.7 * math.sqrt(s.m2 / n)
    out = np.empty(n + 8, dtype=np.int64)
    total = native.flag_into(x, s.mean, cut, 11, out)
    with np.errstate(invalid="ignore"):
        expected = np.flatnonzero(np.abs(x - s.mean) > cut) + 11
    assert out[:total].tolist() == expected.tolist()


@needs_native
@pytest.mark.parametrize("room", [0, 1, 3, 7, 8, 9, 100])
def test_flag_pass_never_writes_past_its_room_and_counts_all(room):
    rng = np.random.default_rng(room)
    x = rng.standard_normal(10_001)
    x[::50] = 40.0
    out = np.full(room + 16, -7, dtype=np.int64)
    total = native.flag_into(x, 0.0, 3.0, 0, out[:room])
    expected = np.flatnonzero(np.abs(x) > 3.0)
    assert total == len(expected)
    assert out[:min(room, total)].tolist() == expected[:room].tolist()
    assert (out[room:] == -7).all()


@pytest.mark.parametrize("n", [100, 70_000])
def test_non_finite_values_go_the_counting_path(n):
    x = np.random.default_rng(0).standard_normal(n)
    x[[3, n - 2]] = [np.nan, -np.inf]
    if native is not None:
        assert native.chunk_stats(x) is None
    s = D.chunk_stats(x, "raise", base=1000)
    assert (s.n, s.nonfinite, s.first_nonfinite) == (0, 2, 1003)
    kept = D.chunk_stats(x, "omit")
    finite = x[np.isfinite(x)]
    assert kept.n == n - 2 and kept.nonfinite == 2
    if n <= D.BLOCK:
        assert kept.mean == finite.mean()


def test_nan_and_inf_never_flagged():
    x = np.array([0.0, np.nan, np.inf, -np.inf, 10.0, -10.0, 0.5])
    out = np.empty(10, dtype=np.int64)
    assert D.flag_into(x, 0.0, 1.0, 0, out) == 2 and out[:2].tolist() == [4, 5]


def test_merge_is_chans_formula():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(1000), rng.standard_normal(333) + 5
    whole = D.merge(D._finite_stats(a), D._finite_stats(b))
    both = np.r_[a, b]
    assert whole.n == 1333
    assert math.isclose(whole.mean, both.mean(), rel_tol=1e-14)
    assert math.isclose(whole.m2, ((both - both.mean()) ** 2).sum(), rel_tol=1e-12)


def test_classic_split_equals_whole_for_one_chunk_and_is_close_for_several():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(600_000)
    c = D.Classic()
    p = D.Params({"threshold": 2.0}, "raise")
    whole = c.detect(x, p)
    chunks = [(0, 300_000), (300_000, 600_000)]
    sums = np.array([c.summarize(x[a:b], p._replace(base=a)) for a, b in chunks])
    cut = c.combine(sums, p)
    split = np.concatenate([c.flag(x[a:b], np.array(cut), p) + a for a, b in chunks])
    assert len(np.setxor1d(whole, split)) <= 2
