"""RayPool: the same detect on a local Ray (ray.init(num_cpus=2)).

Skipped only when the extra is not installed; CI installs it."""

import asyncio
import os
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'shmpool[ray]'")

from conftest import planted  # noqa: E402
from shmpool import DetectorError, NonFiniteError, Pool, WorkerDied  # noqa: E402
from shmpool.ray_pool import RayPool  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    assert not ray.is_initialized()
    with pytest.raises(ValueError, match="explicitly"):
        RayPool()                     # never silently: no cluster chosen yet
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=400 * 2**20,
             log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": examples}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def rpool(cluster):
    with RayPool() as p:
        yield p


def test_planted_outliers(rpool):
    assert rpool.chunks == 2
    for seed in range(3):
        assert rpool.detect(planted(seed)).tolist() == [7, 113, 835]


def test_identical_to_the_local_pool_on_a_split_array(rpool):
    x = np.random.default_rng(4).lognormal(size=1_500_001)
    with Pool(workers=2) as local:
        expected = local.detect(x)
    got = rpool.detect(x)
    assert got.dtype == np.int64 and np.array_equal(got, expected)
    ref = rpool.put(x)                       # put once, read zero-copy by every task
    assert np.array_equal(rpool.detect(ref), expected)
    with Pool(workers=2) as local:
        assert np.array_equal(rpool.detect(ref, threshold=3.0), local.detect(x, threshold=3.0))


def test_threshold_and_nan_policy(rpool):
    x = np.r_[np.zeros(30), 50.0, np.nan]
    with pytest.raises(NonFiniteError, match="non-finite"):
        rpool.detect(x)
    assert rpool.detect(x, nan_policy="omit").tolist() == [30]
    big = np.zeros(600_000)
    big[[3, 500_000]] = 1.0
    big[400_000] = np.inf
    with pytest.raises(NonFiniteError, match="index 400000"):
        rpool.detect(big)
    assert rpool.detect(big, nan_policy="omit").tolist() == [3, 500_000]


def test_bad_input_same_errors_as_local(rpool):
    with pytest.raises(TypeError, match="complex"):
        rpool.detect(np.array([1j]))
    with pytest.raises(ValueError, match="1-D"):
        rpool.detect(np.zeros((2, 2)))
    assert rpool.detect([]).tolist() == []


def test_detector_error_carries_type_message_traceback(cluster):
    with RayPool(detector="shmpool.testing:fail_on_negative") as p:
        with pytest.raises(DetectorError) as e:
            p.detect([1.0, -3.0])
        assert e.value.remote_type == "ValueError" and "negative value -3.0" in str(e.value)
        assert "fail_on_negative" in str(e.value.__cause__)
        assert p.detect(planted(2)).tolist() == [7, 113, 835]


def test_custom_detector_by_name(cluster):
    with RayPool(detector="shmpool.testing:above", threshold=0.5) as p:
        assert p.detect([0.1, 0.9, 0.2, 0.7]).tolist() == [1, 3]


def test_a_dead_ray_worker_fails_the_call_never_hangs(cluster):
    with RayPool(detector="shmpool.testing:sigkill_self", max_retries=1) as p:
        with pytest.raises(WorkerDied, match="died"):
            p.detect([1.0, 2.0], timeout=120)


def test_submit_and_asyncio(rpool):
    futs = [rpool.submit(planted(s)) for s in range(6)]
    assert [f.result(timeout=120).tolist() for f in futs] == [[7, 113, 835]] * 6

    async def main():
        return await asyncio.gather(*(rpool.detect_async(planted(s)) for s in range(4)))

    assert [r.tolist() for r in asyncio.run(main())] == [[7, 113, 835]] * 4


@pytest.mark.parametrize("spec,params", [("tukey", {}), ("spikes:Spikes", {"k": 3.0})])
def test_split_detectors_split_the_same_on_ray(cluster, spec, params):
    """Issue 12: RayPool splits any SplitDetector by the rule the local Pool
    uses, so with the same chunks the answers are identical."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "examples"))
    x = np.random.default_rng(6).standard_t(4, 1_200_001)
    with Pool(workers=2, detector=spec) as local:
        expected = local.detect(x, params=params)
    with RayPool(detector=spec, chunks=2) as rp:
        got = rp.detect(x, params=params) if params else rp.detect(x)
    assert len(expected) > 100 and np.array_equal(got, expected)
