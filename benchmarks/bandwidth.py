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

measure_parallel_kernel forks: call it before the driver starts threads.
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


def _kernel_child(mm, lo, hi, barrier, conn, trials):
    import math

    from shmpool import detectors

    x = np.frombuffer(mm, dtype=np.float64)[lo:hi]
    try:
        for _ in range(trials + 1):                # the first is a warm-up
            barrier.wait()
            t0 = time.perf_counter()
            s = detectors.chunk_stats(x, "raise")
            barrier.wait()                         # pass 2 needs every chunk's statistics
            t1 = time.perf_counter()
            detectors.flag(x, s.mean, 2.0 * math.sqrt(s.m2 / s.n), lo)
            t2 = time.perf_counter()
            conn.send((t0, t1, t2))
    finally:
        del x
        conn.close()


def measure_parallel_kernel(n: int, procs: int, trials: int, seed: int = 0) -> dict:
    """shmpool's two kernel passes on one chunk per process, all processes at once, no IPC.

    What a pool's workers compute for one split detect, without the pool: the
    lower bound of the zero-copy path for this kernel.  Forks: call before threads.
    """
    mm = mmap.mmap(-1, 8 * n)
    try:
        a = np.frombuffer(mm, dtype=np.float64)
        a[:] = np.random.default_rng(seed).standard_normal(n)
        del a
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(procs)
        b = [(n * i // procs) // 8 * 8 for i in range(procs)] + [n]
        pipes, workers = [], []
        for i in range(procs):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_kernel_child, args=(mm, b[i], b[i + 1], barrier, w, trials), daemon=True)
            p.start()
            w.close()
            pipes.append(r)
            workers.append(p)
        try:
            p1, p2 = [], []
            for t in range(trials + 1):
                spans = [r.recv() for r in pipes]
                if t:
                    p1.append(max(s[1] for s in spans) - min(s[0] for s in spans))
                    p2.append(max(s[2] for s in spans) - max(s[1] for s in spans))
        finally:
            _reap(workers, pipes)
    finally:
        mm.close()
    return {"n": n, "processes": procs, "trials": trials, "pass1_s": float(np.median(p1)),
            "pass2_s": float(np.median(p2)), "total_s": float(np.median(p1) + np.median(p2))}
