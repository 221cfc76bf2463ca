"""What Pool.detect answers: the acceptance data, parity with numpy, inputs."""

import numpy as np
import pytest

from conftest import assert_detect_ok, exact_answer, planted
from shmpool import DetectorError, NonFiniteError, Pool, ResultTooSmall, ReturnSegment, reference
from shmpool._host import LANE_INPUT
from shmpool.layout import SPLIT_MIN

assert_matches_reference = assert_detect_ok


@pytest.mark.parametrize("seed", range(25))
def test_planted_outliers_any_seed(pool, seed):
    x = planted(seed)
    assert pool.detect(x).tolist() == [7, 113, 835]
    assert pool.detect(x, threshold=3).tolist() == [7, 113, 835]


def test_planted_outliers_every_start_method(any_pool):
    assert any_pool.detect(planted(0)).tolist() == [7, 113, 835]


@pytest.mark.parametrize("n,k,expected", [
    (5, 2.0, []), (6, 2.0, [5]), (10, 3.0, []), (11, 3.0, [10])])
def test_threshold_floor_is_strict(pool, n, k, expected):
    x = np.zeros(n)
    x[-1] = 1.0
    assert pool.detect(x, threshold=k).tolist() == expected
    assert reference(x, k).tolist() == expected


def test_negative_values_are_ordinary_data(pool):
    assert pool.detect(np.r_[np.zeros(50), -100.0]).tolist() == [50]
    x = np.r_[np.zeros(50), -1.0]
    assert pool.detect(x).tolist() == reference(x).tolist() == [50]


@pytest.mark.parametrize("x", [[], [3.5], [1.0] * 100], ids=["empty", "single", "constant"])
def test_degenerate_inputs_have_no_outliers(pool, x, recwarn):
    got = pool.detect(x)
    assert got.dtype == np.int64 and got.tolist() == []
    assert not [w for w in recwarn if "empty slice" in str(w.message)]


SIZES = [1, 2, 3, 7, 64, 1000, 65535, 65536, 65537, LANE_INPUT + 1, SPLIT_MIN - 1,
         SPLIT_MIN, SPLIT_MIN + 13, 1_000_003, 10_000_000]


@pytest.mark.parametrize("n", SIZES)
def test_parity_with_numpy(pool, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n) * 3 + 10
    assert_matches_reference(pool.detect(x), x)
    assert_matches_reference(pool.detect(x, threshold=1.5), x, 1.5)


@pytest.mark.parametrize("n", [SPLIT_MIN, 777_777])
def test_parity_zero_copy_and_uneven_chunks(pool, n):
    rng = np.random.default_rng(5)
    buf = pool.empty(n)
    buf[:] = rng.lognormal(size=n)          # skewed: chunks differ in mean
    assert_matches_reference(pool.detect(buf), buf)
    part = buf[12_345:]                      # starts mid-segment, odd length
    assert_matches_reference(pool.detect(part), part)


def test_parity_band_is_exercised_near_the_cut():
    """Values placed on the cut-off itself stay within the documented band."""
    from shmpool.detectors import classic
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300_001)
    _exact, m, cut = exact_answer(x)
    x[:50] = m + cut * (1 + np.linspace(-1e-15, 1e-15, 50))
    assert_matches_reference(classic(x, 2.0, "raise"), x)


@pytest.mark.parametrize("n", [65_537, 200_003, SPLIT_MIN * 3 + 5])
@pytest.mark.parametrize("offset,spread", [(1e9, 1e-3), (-3e7, 1e-6), (1e12, 1.0)])
def test_precision_follows_the_spread_not_the_magnitude(pool, n, offset, spread):
    """Data far from zero with a small spread (issue 10.18: at n = 65,537 and
    1e9 + N(0, 1e-3), 16 indices used to differ from the exact answer by up
    to 8.8e-4 of the cut-off)."""
    rng = np.random.default_rng(n)
    x = offset + spread * rng.standard_normal(n)
    assert_detect_ok(pool.detect(x), x)      # within 2 ulp(mean) + 1e-12 * cut of the exact


def test_custom_detector_indices_come_back_ascending_and_unique():
    """A custom detector's [3, 1, 1, 2] comes back as [1, 2, 3] (issue 10.19)."""
    with Pool(workers=1, detector="shmpool.testing:unsorted") as p:
        assert p.detect(np.zeros(10)).tolist() == [1, 2, 3]


def test_more_than_a_million_outliers_come_back_whole(pool):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(2_000_000)
    got = pool.detect(x, threshold=0.5)
    assert got.size > 1_048_576
    assert_matches_reference(got, x, 0.5)


class _ArrayLike:
    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def test_anything_with_array_works(pool):
    assert pool.detect(_ArrayLike(planted(2))).tolist() == [7, 113, 835]
    pandas = pytest.importorskip("pandas")
    assert pool.detect(pandas.Series(planted(3))).tolist() == [7, 113, 835]


def test_masked_arrays_are_refused_not_silently_unmasked(pool):
    """A masked 1e6 was reported as an outlier (issue 11.8): refuse, and say
    how to pass the data."""
    x = np.ma.masked_array(np.r_[np.zeros(50), 1e6], mask=[False] * 50 + [True])
    with pytest.raises(TypeError, match="masked"):
        pool.detect(x)
    assert pool.detect(x.compressed()).tolist() == []
    unmasked = np.ma.masked_array(planted(1))            # no value masked: plain data
    assert pool.detect(unmasked).tolist() == [7, 113, 835]


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.float32, np.float16])
def test_other_real_dtypes_are_converted(pool, dtype):
    x = np.zeros(40, dtype=dtype)
    x[17] = 100
    assert pool.detect(x).tolist() == [17]


def test_lists_and_non_contiguous_input(pool):
    x = planted(1, n=2000, at=(14, 226, 1670))
    assert pool.detect(x[::2]).tolist() == [7, 113, 835]
    assert pool.detect(list(x[::2])).tolist() == [7, 113, 835]
    assert pool.detect(x[::-1]).tolist() == sorted(1999 - np.array([14, 226, 1670]))


@pytest.mark.parametrize("bad,exc,words", [
    (None, TypeError, "None"),
    ("abc", TypeError, "str"),
    (np.array(["a", "b"]), TypeError, "strings"),
    (np.array([1, "x", None], dtype=object), TypeError, "objects"),
    (np.array([1 + 2j, 3j]), TypeError, "complex"),
    (np.zeros((3, 3)), ValueError, "1-D"),
    (np.float64(3.0), ValueError, "1-D"),
    ([[1.0, 2.0], [3.0]], ValueError, "array"),
])
def test_bad_input_is_refused_by_name(pool, bad, exc, words):
    with pytest.raises(exc, match=words):
        pool.detect(bad)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(threshold=-1), ValueError), (dict(threshold=float("nan")), ValueError),
    (dict(threshold="2"), TypeError), (dict(nan_policy="ignore"), ValueError),
    (dict(out=np.empty(3)), TypeError)])
def test_bad_arguments_are_refused(pool, kwargs, exc):
    with pytest.raises(exc):
        pool.detect([1.0, 2.0], **kwargs)


class TestNanPolicy:
    x = np.r_[np.zeros(30), 50.0, np.nan, np.zeros(5), np.inf]

    def test_raise_is_the_default_and_names_the_problem(self, pool):
        with pytest.raises(NonFiniteError, match=r"2 non-finite.*index 31") as e:
            pool.detect(self.x)
        assert isinstance(e.value, ValueError)

    def test_omit_skips_them(self, pool):
        finite = np.isfinite(self.x)
        expected = np.flatnonzero(finite)[reference(self.x[finite])]
        assert pool.detect(self.x, nan_policy="omit").tolist() == expected.tolist() == [30]

    def test_propagate_is_numpys_answer(self, pool):
        with np.errstate(invalid="ignore"):
            assert reference(self.x).tolist() == []
        assert pool.detect(self.x, nan_policy="propagate").tolist() == []

    @pytest.mark.parametrize("policy", ["raise", "omit", "propagate"])
    def test_chunked_calls_agree(self, pool, policy):
        big = np.zeros(SPLIT_MIN * 2)
        big[[5, SPLIT_MIN + 9]] = 1e3
        big[SPLIT_MIN + 100] = np.nan
        if policy == "raise":
            with pytest.raises(NonFiniteError, match=f"index {SPLIT_MIN + 100}"):
                pool.detect(big)
        else:
            expected = [5, SPLIT_MIN + 9] if policy == "omit" else []
            assert pool.detect(big, nan_policy=policy).tolist() == expected

    def test_overflowing_statistics(self, pool):
        x = np.r_[np.zeros(10), 1e200]
        with pytest.raises(NonFiniteError, match="overflows"):
            pool.detect(x)
        with np.errstate(over="ignore"):
            assert pool.detect(x, nan_policy="omit").tolist() == reference(x).tolist() == []

    def test_subnormal_and_huge_finite_values(self, pool):
        # Squares of subnormals underflow to 0, so std is 0 and every value
        # unequal to the mean is beyond the cut-off: numpy's answer too.
        x = np.r_[np.full(20, 5e-324), 1e-300]
        assert pool.detect(x).tolist() == reference(x).tolist() == list(range(21))
        y = np.r_[np.zeros(20), 1e150]
        assert pool.detect(y).tolist() == reference(y).tolist() == [20]
        z = np.r_[np.full(20, -1e308), 1e308]     # the sum overflows: raise, or numpy's []
        with pytest.raises(NonFiniteError, match="overflows"):
            pool.detect(z)
        with np.errstate(all="ignore"):
            assert pool.detect(z, nan_policy="propagate").tolist() == reference(z).tolist() == []


def test_zero_copy_array_lives_in_shared_memory(pool):
    buf = pool.empty(5000)
    assert buf.dtype == np.float64 and buf.shape == (5000,) and buf.flags.writeable
    buf[:] = planted(4, n=5000, at=(1, 2000, 4999))
    assert pool.detect(buf).tolist() == [1, 2000, 4999]
    buf[2000] = 0.5                       # changes in place are seen by the next call
    assert pool.detect(buf).tolist() == [1, 4999]
    assert pool.detect(buf[1000:]).tolist() == [3999]


def test_return_segment_reused_and_too_small(pool):
    with ReturnSegment(8) as out:
        got = pool.detect(planted(5), out=out)
        assert got.tolist() == [7, 113, 835] and out.count == 3 and out.status == 0
        x = np.zeros(100)
        x[[1, 2, 3, 4, 5, 6, 7, 8, 9]] = 50        # 9 outliers, capacity 8
        x[50:] = 0.001
        with pytest.raises(ResultTooSmall, match="9 indices.*count is 0.*unspecified") as e:
            pool.detect(x, out=out)
        assert (e.value.needed, e.value.capacity) == (9, 8)
        assert out.count == 0 and out.needed == 9 and out.status == 7
        assert pool.detect(planted(6), out=out).tolist() == [7, 113, 835]
    assert out.closed


def test_return_segment_with_a_chunked_call(pool):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(SPLIT_MIN * 2)
    ref = reference(x)
    with ReturnSegment(len(ref)) as out:
        assert_matches_reference(pool.detect(x, out=out).copy(), x)
    with ReturnSegment(10) as small:
        with pytest.raises(ResultTooSmall):
            pool.detect(x, out=small)


def test_custom_detector_by_name():
    with Pool(workers=1, detector="shmpool.testing:above", threshold=0.5) as p:
        assert p.detect([0.1, 0.9, 0.2, 0.7]).tolist() == [1, 3]
        assert p.detect([0.1, 0.9, 0.2, 0.7], threshold=0.8).tolist() == [1]


@pytest.mark.parametrize("n", [1000, LANE_INPUT * 3])
def test_an_answer_that_outgrows_the_result_segment_copies_x_once(n):
    """A whole call whose answer does not fit asks again with a larger result
    segment, reading the same input: a large x is staged once, not per try."""
    with Pool(workers=1, detector="shmpool.testing:above") as p:
        x = np.arange(1.0, n + 1)                   # every value is above 0
        assert np.array_equal(p.detect(x, threshold=0.0), np.arange(n))
        assert len(p._staging.segments()) == (1 if n > LANE_INPUT else 0)
        assert np.array_equal(p.detect(x[::2], threshold=0.0), np.arange(len(x[::2])))


def test_custom_detector_sees_read_only_data():
    with Pool(workers=1, detector="shmpool.testing:write_into_input") as p:
        with pytest.raises(DetectorError, match="read-only") as e:
            p.detect([1.0, 2.0])
        assert e.value.remote_type == "ValueError"


@pytest.mark.parametrize("spec,words", [
    ("shmpool.testing:returns_2d", "2-D"),
    ("shmpool.testing:returns_out_of_range", "outside"),
])
def test_custom_detector_bad_return_values(spec, words):
    with Pool(workers=1, detector=spec) as p:
        with pytest.raises(DetectorError, match=words):
            p.detect([1.0, 2.0, 3.0])


def test_detector_exception_carries_type_message_and_traceback():
    with Pool(workers=1, detector="shmpool.testing:fail_on_negative") as p:
        with pytest.raises(DetectorError) as e:
            p.detect([1.0, -2.0, 3.0])
        assert e.value.remote_type == "ValueError"
        assert "negative value -2.0 at index 1" in str(e.value)
        assert "fail_on_negative" in str(e.value.__cause__)       # the remote traceback
        assert p.detect(planted(0)).tolist() == [7, 113, 835]     # the next call works


@pytest.mark.parametrize("spec,exc", [
    ("no_such_module_xyz:f", DetectorError), ("shmpool.testing:nope", DetectorError),
    ("not a spec", ValueError), ("mod:", ValueError), (42, TypeError)])
def test_bad_detector_specs_fail_at_construction(spec, exc):
    with pytest.raises(exc):
        Pool(workers=1, detector=spec)
