"""A detector of your own that shmpool splits across workers: spikes.

Flags the values whose magnitude exceeds k times the signal's RMS, the usual
first test for spikes in vibration, audio or sensor data: |x[i]| > k * RMS(x).

Two phases over chunks, as shmpool.SplitDetector asks:

    summarize  each chunk:  [count, sum of squares, NaN/inf seen]
    combine    once:        cut = k * sqrt(total sum of squares / total count)
    flag       each chunk:  indices where |x| > cut

Load it by name wherever shmpool runs a detector:

    Pool(detector="spikes:Spikes")                        # Python, with this file on sys.path
    PYTHONPATH=examples shmpool serve --detector spikes:Spikes
    client.DetectWith(x, shmpool.Options{Detector: "spikes:Spikes"})   // Go
"""

import math

import numpy as np

from shmpool import NonFiniteError, SplitDetector


class Spikes(SplitDetector):
    params = {"k": 4.0}          # per-call parameters and their defaults
    summary_size = 3             # floats in one chunk's summary

    def check(self, p):
        if not (math.isfinite(p.k) and p.k > 0):
            raise ValueError(f"k must be finite and > 0, got {p.k!r}")

    def summarize(self, x, p):   # each chunk (x is a read-only view)
        finite = np.isfinite(x)
        kept = x[finite]
        return [len(kept), float(np.dot(kept, kept)), len(x) - len(kept)]

    def combine(self, summaries, p):          # once, over all the chunks' summaries
        n, sumsq, bad = summaries.sum(axis=0)
        if bad and p.nan_policy == "raise":
            raise NonFiniteError(f"{int(bad)} NaN or inf value(s) in the data")
        if n == 0 or (bad and p.nan_policy == "propagate"):
            return None          # nothing can be flagged: the answer is empty
        return [p.k * math.sqrt(sumsq / n)]   # the flag parameters

    def flag(self, x, cut, p):                # each chunk: indices relative to x
        return np.flatnonzero(np.abs(x) > cut[0])
