"""The smoke tests an installed wheel runs (tests/test_install.py here, and
cibuildwheel in .github/workflows/wheels.yml): the package alone, no checkout."""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import shmpool
from shmpool import NonFiniteError, Pool, ReturnSegment, reference
from shmpool._backend.native import native
from shmpool.client import Client


def planted(seed, n=1000):
    x = np.random.default_rng(seed).random(n)
    x[[7, 113, 835]] += 97
    return x


def test_the_extension_is_there_when_expected():
    expect = os.environ.get("SHMPOOL_EXPECT_NATIVE")
    if expect is not None:
        assert (native is not None) == (expect == "1"), shmpool.__file__


def test_pool_whole_and_split_calls():
    with Pool(workers=2) as p:
        assert p.detect(planted(0)).tolist() == [7, 113, 835]
        big = np.random.default_rng(1).standard_normal(700_000)
        got = p.detect(big)
        assert got.size > 0 and np.all(np.diff(got) > 0)
        assert len(np.setxor1d(got, reference(big))) <= 2
        buf = p.empty(1000)
        buf[:] = planted(2)
        assert p.detect(buf).tolist() == [7, 113, 835]
        with ReturnSegment(8) as out:
            assert p.detect(planted(3), out=out).tolist() == [7, 113, 835]
        with pytest.raises(NonFiniteError):
            p.detect([1.0, float("nan")])


def test_tukey_built_in():
    from shmpool.detectors import tukey_reference
    x = np.random.default_rng(4).standard_t(3, 5000)
    with Pool(workers=1, detector="tukey") as p:
        assert p.detect(x).tolist() == tukey_reference(x).tolist()


def test_server_and_client():
    path = os.path.join(tempfile.mkdtemp(), "smoke.sock")
    proc = subprocess.Popen([sys.executable, "-m", "shmpool", "serve", "--socket", path,
                             "--workers", "2"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        with Client(path) as c:
            assert c.detect(planted(5)).tolist() == [7, 113, 835]
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
