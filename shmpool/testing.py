"""Detectors that misbehave on purpose, for shmpool's own tests and for
trying a deployment's error paths (``--detector shmpool.testing:...``)."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import numpy as np

from .detectors import Classic, SplitDetector, classic


def fail_on_negative(x, threshold=2.0):
    """The classic detector, but a ValueError when any value is negative."""
    if x.size and x.min() < 0:
        raise ValueError(f"negative value {float(x.min())!r} at index {int(np.argmin(x))}")
    return classic(x, threshold, "propagate")


def above(x, threshold=2.0):
    """Indices whose value exceeds threshold: a custom detector with a
    known answer."""
    return np.flatnonzero(x > threshold)


def write_into_input(x):
    """Tries to modify its input, which workers map read-only."""
    x[0] = 1.0
    return np.empty(0, dtype=np.int64)


def segfault(x):
    """Dies of SIGSEGV, as a buggy C extension would."""
    ctypes.string_at(0)


def sigkill_self(x):
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(x):
    os._exit(3)


def returns_2d(x):
    return np.zeros((2, 2), dtype=np.int64)


def returns_out_of_range(x):
    return np.array([len(x)], dtype=np.int64)


def allocate_forever(x):
    """Allocates without bound (run it under an RLIMIT_AS)."""
    hoard = []
    while True:
        hoard.append(np.ones(1 << 24))


def slow_on_13(x, threshold=2.0):
    """The classic detector, except that an input of 13 values takes 30 s
    (long enough to kill or time out the worker mid-call)."""
    if len(x) == 13:
        time.sleep(30)
    return classic(x, threshold, "raise")


def troublemaker(x, threshold=2.0):
    """The classic detector that raises ValueError on negative data and takes
    30 s over exactly 13 values: one server exercises both failure paths."""
    if len(x) == 13:
        time.sleep(30)
    return fail_on_negative(x, threshold)


def unsorted(x):
    """Indices out of order and repeated: shmpool sorts and deduplicates them."""
    return np.array([3, 1, 1, 2], dtype=np.int64)


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


def raises_unprintable(x):
    """Raises an exception whose __str__ itself raises."""
    raise BadStr()


def pause_on_7(x, threshold=2.0):
    """The classic detector, except that an input of 7 values takes 1 s."""
    if len(x) == 7:
        time.sleep(1)
    return classic(x, threshold, "raise")


class _Failing(SplitDetector):
    """A split detector (the classic one's arithmetic) that raises in one phase."""

    params = {"threshold": 2.0}
    summary_size = 5
    phase = ""

    def __init__(self):
        self.inner = Classic()

    def summarize(self, x, p):
        if self.phase == "summarize" and p.base > 0:      # only the second chunk's worker
            raise ArithmeticError("summarize failed on purpose")
        return self.inner.summarize(x, p)

    def combine(self, summaries, p):
        if self.phase == "combine":
            raise LookupError("combine failed on purpose")
        return self.inner.combine(summaries, p)

    def flag(self, x, cut, p):
        if self.phase == "flag" and p.base > 0:
            raise RuntimeError("flag failed on purpose")
        return self.inner.flag(x, cut, p)


class FailsInSummarize(_Failing):
    phase = "summarize"


class FailsInCombine(_Failing):
    phase = "combine"


class FailsInFlag(_Failing):
    phase = "flag"


class WrongSummarySize(_Failing):
    def summarize(self, x, p):
        return [1.0, 2.0]


def two_params(x, threshold=2.0, floor=0.0):
    """A plain function with two float parameters: |x| > max(threshold, floor)."""
    return np.flatnonzero(np.abs(x) > max(threshold, floor))


class ClassicAtThree(Classic):
    """The classic detector declaring a default threshold of its own (3.0)."""

    params = {"threshold": 3.0}
