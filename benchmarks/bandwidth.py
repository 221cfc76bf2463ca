"""Measure the machine's multi-core read bandwidth, for the physical floor.

Method: an array of float64 (default 1 GiB, several times the last-level
cache, so it is read from DRAM) lives in a /dev/shm file.  One spawned
process per core maps it, takes an equal slice, reads it once untimed
(page-table warm-up), then, for every trial, waits at a barrier with the
others and reduces its slice (np.maximum.reduce, then separately
np.add.reduce).  A trial's bandwidth is the bytes of the whole array over the
wall time from the first process's start to the last one's finish.  The
driver measures before and after the timed rounds; the best trial of the
faster reduction is the bandwidth; the floor for n values is two read
passes, 2 * 8n bytes, at that bandwidth.

ParallelKernel forks: create it before the driver starts threads.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time

import numpy as np

KERNELS = {"np.maximum.reduce": np.maximum.reduce, "np.add.reduce": np.add.reduce}


def _reap(workers, pipes) -> None:
    """Join the measuring processes (killing any that hang) and close their pipes."""
    for p in workers:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()
    for r in pipes:
        r.close()

def _reader(path, lo, hi, barrier, conn, trials):
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    a = np.frombuffer(mm, dtype=np.float64)[lo:hi]
    try:
        for fn in KERNELS.values():
            fn(a)                                  # untimed first pass
            for _ in range(trials):
                barrier.wait()
                t0 = time.perf_counter()
                fn(a)
                t1 = time.perf_counter()
                conn.send((t0, t1))
    finally:
        del a
        mm.close()
        conn.close()


def shm_path() -> str:
    """The measurement's array: a file in /dev/shm named after this process (the janitor knows it)."""
    return f"/dev/shm/shmpool-bench-{os.getpid()}-bandwidth"


def measure(nbytes: int, procs: int, trials: int) -> dict:
    """Spawned processes (safe with threads running) read slices of one /dev/shm file."""
    n = nbytes // 8
    path = shm_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, 8 * n)
            mm = mmap.mmap(fd, 8 * n)
        finally:
            os.close(fd)
        arr = np.frombuffer(mm, dtype=np.float64)
        arr[:] = np.arange(n, dtype=np.float64) % 1024.0
        del arr
        mm.close()
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(procs)
        bounds = [n * i // procs for i in range(procs + 1)]
        pipes, workers = [], []
        try:
            for i in range(procs):
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_reader, args=(path, bounds[i], bounds[i + 1], barrier, w, trials),
                                daemon=True)
                p.start()
                w.close()
                pipes.append(r)
                workers.append(p)
            per_kernel = {}
            for name in KERNELS:
                bws = []
                for _ in range(trials):
                    spans = [r.recv() for r in pipes]
                    wall = max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans)
                    bws.append(8 * n / wall)
                per_kernel[name] = {"best_gb_s": max(bws) / 1e9, "median_gb_s": float(np.median(bws)) / 1e9,
                                    "trials_gb_s": [b / 1e9 for b in bws]}
        finally:
            _reap(workers, pipes)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    best_kernel = max(per_kernel, key=lambda k: per_kernel[k]["best_gb_s"])
    return {"gb_s": per_kernel[best_kernel]["best_gb_s"], "kernel": best_kernel, "kernels": per_kernel,
            "processes": procs, "array_bytes": 8 * n, "trials": trials}


def combine(runs: list[dict]) -> dict:
    """The floor's bandwidth: the best of the measurements (taken before and after the timed rounds)."""
    ok = [r for r in runs if r.get("gb_s")]
    if not ok:
        return {"gb_s": None, "error": "; ".join(r.get("error", "?") for r in runs), "method": "failed",
                "runs": runs}
    best = max(ok, key=lambda r: r["gb_s"])
    measured = ", ".join(f"{r['gb_s']:.1f}" for r in ok)
    procs, n, trials = best["processes"], best["array_bytes"] // 8, best["trials"]
    return {
        "gb_s": best["gb_s"],
        "kernel": best["kernel"],
        "kernels": best["kernels"],
        "runs": runs,
        "method": (f"{procs} processes each reduce an equal slice of one {8 * n / 2**30:.2f} GiB float64 "
                   f"array in shared memory (/dev/shm), started together at a barrier (np.maximum.reduce "
                   f"and np.add.reduce, {trials} trials each, after one untimed pass); bandwidth = array "
                   f"bytes / (last finish - first start). Measured before and after the timed rounds "
                   f"({measured} GB/s), since a neighbour on the "
                   f"machine can hold it down at any moment; the best trial of the faster reduction "
                   f"({best['kernel']}) overall is used. Floor(n) = 2 passes * 8n bytes / bandwidth."),
    }


def floor_seconds(n: int, gb_s: float) -> float:
    return 2 * 8 * n / (gb_s * 1e9)


def _kernel_child(mm, lo, hi, conn):
    import math

    from shmpool import detectors

    x = np.frombuffer(mm, dtype=np.float64)[lo:hi]
    try:
        while conn.recv():                         # pass 1
            s = detectors.chunk_stats(x, "raise")
            conn.send(None)
            conn.recv()                            # pass 2, when every chunk has its statistics
            detectors.flag(x, s.mean, 2.0 * math.sqrt(s.m2 / s.n), lo)
            conn.send(None)
    except EOFError:
        pass
    finally:
        del x
        conn.close()


class ParallelKernel:
    """shmpool's two kernel passes on one chunk per process, all processes at
    once: what a pool's workers compute for one split detect, without the
    pool.  The processes are forked at once (call before the driver starts
    threads) and wait; ``trial()`` later runs the passes, started and
    collected through a pipe per process as the pool's messages are, so that
    trials can alternate with ``pool.detect`` calls and both meet the machine
    in the same state (a 2-core VM's speed drifts by tens of percent within
    a minute)."""

    def __init__(self, n: int, procs: int, seed: int = 0):
        self.n, self.procs = n, procs
        self.mm = mmap.mmap(-1, 8 * n)
        self.pipes: list = []
        self.workers: list = []
        a = np.frombuffer(self.mm, dtype=np.float64)
        a[:] = np.random.default_rng(seed).standard_normal(n)
        del a
        ctx = multiprocessing.get_context("fork")
        b = [(n * i // procs) // 8 * 8 for i in range(procs)] + [n]
        for i in range(procs):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_kernel_child, args=(self.mm, b[i], b[i + 1], theirs), daemon=True)
            p.start()
            theirs.close()
            self.pipes.append(mine)
            self.workers.append(p)

    def trial(self) -> tuple[float, float]:
        """(pass 1, pass 2) seconds, from the first start to the last finish of each."""
        t0 = time.perf_counter()
        for c in self.pipes:
            c.send(True)
        for c in self.pipes:
            c.recv()
        t1 = time.perf_counter()
        for c in self.pipes:
            c.send(True)
        for c in self.pipes:
            c.recv()
        return t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        for c in self.pipes:
            try:
                c.send(False)
            except OSError:
                pass
        _reap(self.workers, self.pipes)
        self.workers, self.pipes = [], []
        self.mm.close()
