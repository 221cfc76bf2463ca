"""Command line: ``shmpool demo | serve | cleanup`` (also ``python -m shmpool``)."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    import numpy as np

    from . import Pool, reference

    rng = np.random.default_rng(args.seed)
    x = rng.random(1000)
    x[[7, 113, 835]] += 97
    t0 = time.perf_counter()
    with Pool(workers=args.workers) as pool:
        t1 = time.perf_counter()
        idx = pool.detect(x)
        t2 = time.perf_counter()
        calls = 2000
        for _ in range(calls):
            pool.detect(x)
        t3 = time.perf_counter()
        big = pool.empty(10_000_000)
        big[:] = rng.standard_normal(len(big))
        pool.detect(big)                       # first touch of the workers' mappings
        t4 = time.perf_counter()
        n_big = len(pool.detect(big))
        t5 = time.perf_counter()
        del big
    print(f"outliers: {idx.tolist()}")
    print(f"pool start: {(t1 - t0) * 1e3:.1f} ms with {pool.workers} workers")
    print(f"first call: {(t2 - t1) * 1e6:.0f} us; then {(t3 - t2) / calls * 1e6:.1f} us per call "
          f"(1,000 floats, mean of {calls})")
    print(f"10^7 floats in shared memory: {(t5 - t4) * 1e3:.1f} ms, {n_big} outliers")
    t6 = time.perf_counter()
    reference(x)
    print(f"in-process numpy, 1,000 floats: {(time.perf_counter() - t6) * 1e6:.0f} us (one cold call)")
    return 0 if idx.tolist() == [7, 113, 835] else 1


def _cleanup(args) -> int:
    from ._backend.segment import reap_orphans

    reaped = reap_orphans()
    for name in reaped:
        print(f"unlinked /dev/shm/{name}")
    print(f"{len(reaped)} orphaned segment(s) removed", file=sys.stderr)
    return 0


def _serve(args) -> int:
    from .server import serve

    return serve(socket_path=args.socket, workers=args.workers, detector=args.detector,
                 threshold=args.threshold, nan_policy=args.nan_policy, timeout=args.timeout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shmpool", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="detect on the classic planted data and time it")
    d.add_argument("--workers", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=_demo)

    s = sub.add_parser("serve", help="run a pool behind a Unix socket for non-Python hosts")
    s.add_argument("--socket", default=None, help="socket path (default: $SHMPOOL_SOCKET, "
                   "else /tmp/shmpool-<uid>.sock)")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    s.add_argument("--detector", default="classic", help="'classic' or 'package.module:function'")
    s.add_argument("--threshold", type=float, default=2.0)
    s.add_argument("--nan-policy", default="raise", choices=["raise", "omit", "propagate"])
    s.add_argument("--timeout", type=float, default=None, help="per-call limit in seconds")
    s.set_defaults(fn=_serve)

    c = sub.add_parser("cleanup", help="unlink segments whose creating process is gone")
    c.set_defaults(fn=_cleanup)

    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
