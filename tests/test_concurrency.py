"""Many callers at once: threads, futures, asyncio, timeouts."""

import asyncio
import concurrent.futures
import math
import threading
import time

import numpy as np
import pytest

from conftest import assert_detect_ok, planted
from shmpool import DetectTimeout, Pool, PoolClosed
from shmpool.layout import SPLIT_MIN


def test_eight_threads_five_hundred_calls_each(pool):
    errors = []

    def caller(t):
        rng = np.random.default_rng(t)
        for i in range(500):
            at = sorted(rng.choice(np.arange(1, 999), 3, replace=False).tolist())
            x = rng.random(1000)
            x[at] += 97
            got = pool.detect(x).tolist()
            if got != at:
                errors.append((t, i, got, at))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_large_and_small_calls_interleave(pool):
    rng = np.random.default_rng(1)
    big = rng.standard_normal(SPLIT_MIN * 3)
    expected_big = pool.detect(big)
    assert_detect_ok(expected_big, big)

    def run(i):
        if i % 4 == 0:
            return np.array_equal(pool.detect(big), expected_big)
        return pool.detect(planted(i)).tolist() == [7, 113, 835]

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        assert all(ex.map(run, range(60)))


def test_submit_returns_futures(pool):
    futures = [pool.submit(planted(s)) for s in range(50)]
    assert [f.result(timeout=30).tolist() for f in futures] == [[7, 113, 835]] * 50


def test_asyncio_form(pool):
    async def main():
        return await asyncio.gather(*(pool.detect_async(planted(s)) for s in range(20)))

    assert [r.tolist() for r in asyncio.run(main())] == [[7, 113, 835]] * 20


def test_timeout_stops_the_worker_and_the_pool_goes_on():
    with Pool(workers=1, detector="shmpool.testing:slow_on_13") as p:
        before = p.worker_pids()
        t0 = time.monotonic()
        with pytest.raises(DetectTimeout, match="did not finish") as e:
            p.detect(np.arange(13.0), timeout=0.5)
        assert isinstance(e.value, TimeoutError)
        assert time.monotonic() - t0 < 5
        assert p.detect(planted(0)).tolist() == [7, 113, 835]
        assert p.worker_pids() != before


def test_timeout_waiting_for_a_busy_pool():
    with Pool(workers=1, detector="shmpool.testing:slow_on_13") as p:
        slow = p.submit(np.arange(13.0), timeout=3)
        time.sleep(0.3)
        with pytest.raises(DetectTimeout, match="idle worker"):
            p.detect(planted(0), timeout=0.3)
        with pytest.raises(DetectTimeout):
            slow.result()


def test_close_while_calls_are_running():
    p = Pool(workers=2, detector="shmpool.testing:slow_on_13")
    futures = [p.submit(np.arange(13.0)) for _ in range(2)]
    time.sleep(0.3)
    t0 = time.monotonic()
    p.close(timeout=0.5)
    assert time.monotonic() - t0 < 10
    for f in futures:
        with pytest.raises(PoolClosed):
            f.result(timeout=10)
    with pytest.raises(PoolClosed):
        p.detect([1.0, 2.0])


@pytest.mark.parametrize("timeout", [None, math.inf, 3e6, 1e300])
def test_any_timeout_up_to_inf_means_what_it_says(timeout):
    """A timeout of 3e6 s or inf raised OverflowError and killed a healthy
    worker (issue 10.9); now each is a deadline, or none."""
    with Pool(workers=1, timeout=timeout) as p:
        pids = p.worker_pids()
        assert p.detect(planted(1)).tolist() == [7, 113, 835]
        assert p.detect(planted(2), timeout=timeout).tolist() == [7, 113, 835]
        assert p.worker_pids() == pids


@pytest.mark.parametrize("bad", [-1, math.nan, "5"])
def test_bad_timeouts_are_refused(pool, bad):
    with pytest.raises((ValueError, TypeError)):
        pool.detect([1.0, 2.0], timeout=bad)


def test_map_answers_in_order_with_a_bounded_number_in_flight(pool):
    """pool.map (issue 11.7): Executor.map's order and timeout, but never more
    than in_flight calls submitted ahead of the consumer."""
    pulled = []

    def arrays():
        for s in range(40):
            pulled.append(s)
            yield planted(s)

    it = pool.map(arrays(), in_flight=3)
    first = next(it)
    assert first.tolist() == [7, 113, 835]
    assert len(pulled) <= 4                       # 3 in flight + the one being taken
    rest = list(it)
    assert len(rest) == 39 and all(r.tolist() == [7, 113, 835] for r in rest)


def test_map_timeout_counts_from_the_call():
    with Pool(workers=1, detector="shmpool.testing:slow_on_13") as p:
        it = p.map([np.arange(13.0), np.arange(5.0)], timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(DetectTimeout):
            next(it)
        assert time.monotonic() - t0 < 5
        p.close(timeout=0.1)                   # the slow call still runs: stop it
