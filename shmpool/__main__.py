"""The shmpool command line (also: python -m shmpool)."""

from __future__ import annotations

import argparse
import sys
import time


def _per_call(fn, seconds: float = 0.5) -> float:
    """Median seconds per call of fn over repeated batches, after a warm-up."""
    import statistics
    for _ in range(50):
        fn()
    batches: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(batches) < 5:
        t0 = time.perf_counter()
        for _ in range(100):
            fn()
        batches.append((time.perf_counter() - t0) / 100)
    return statistics.median(batches)


def _demo(args) -> int:
    import numpy as np

    from . import Pool, reference

    rng = np.random.default_rng(args.seed)
    x = rng.random(1000)
    x[[7, 113, 835]] += 97
    t0 = time.perf_counter()
    with Pool(workers=args.workers) as pool:
        started = time.perf_counter() - t0
        idx = pool.detect(x)
        pool_call = _per_call(lambda: pool.detect(x))
        numpy_call = _per_call(lambda: reference(x))
        big = pool.empty(10_000_000)
        big[:] = rng.standard_normal(len(big))
        pool.detect(big)                       # first touch of the workers' mappings
        t1 = time.perf_counter()
        n_big = len(pool.detect(big))
        big_time = time.perf_counter() - t1
        t2 = time.perf_counter()
        reference(big)
        numpy_big = time.perf_counter() - t2
        workers = pool.workers
        del big
    print(f"outliers: {idx.tolist()}")
    print(f"pool start: {started * 1e3:.0f} ms with {workers} workers")
    print(f"1,000 floats, warm, median per call: pool {pool_call * 1e6:.1f} us, "
          f"in-process numpy {numpy_call * 1e6:.1f} us ({pool_call / numpy_call:.1f}x numpy)")
    print(f"10^7 floats in shared memory: pool {big_time * 1e3:.1f} ms, in-process numpy "
          f"{numpy_big * 1e3:.1f} ms ({numpy_big / big_time:.1f}x faster), {n_big} outliers")
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

    return serve(socket_path=args.socket, workers=args.workers, detector=args.detector or ["classic"],
                 threshold=args.threshold, nan_policy=args.nan_policy, timeout=args.timeout,
                 memory_limit=args.memory_limit)


def _soak(args) -> int:
    from . import soak

    return soak.run(soak.Config.from_args(args))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="shmpool", description="Outlier detection on a pool of worker processes fed "
        "through POSIX shared memory (also: python -m shmpool COMMAND).",
        epilog="Run 'shmpool COMMAND --help' for a command's options.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                            title="commands")

    d = sub.add_parser("demo", help="find the planted outliers and time a warm pool against "
                       "in-process numpy")
    d.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per core)")
    d.add_argument("--seed", type=int, default=0, help="seed of the random data (default 0)")
    d.set_defaults(fn=_demo)

    s = sub.add_parser("serve", help="run a pool behind a Unix socket for non-Python hosts")
    s.add_argument("--socket", default=None, help="socket path (default: $SHMPOOL_SOCKET, "
                   "else /tmp/shmpool-<uid>.sock)")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    s.add_argument("--detector", action="append", default=None, metavar="NAME",
                   help="'classic', 'tukey' or 'package.module:name'; repeat to serve several "
                        "(the first is the default); default: classic")
    s.add_argument("--threshold", type=float, default=None,
                   help="default k of every detector with a threshold parameter (default: each "
                        "detector's own; the classic detector flags |x - mean| > k * std, k = 2)")
    s.add_argument("--nan-policy", default="raise", choices=["raise", "omit", "propagate"],
                   help="what NaN and inf mean when a request does not say (default raise)")
    s.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="per-call limit in seconds; a call over it gets TIMEOUT and its worker "
                        "is replaced (default: none)")
    s.add_argument("--memory-limit", type=int, default=None, metavar="BYTES",
                   help="bytes each worker may allocate (RLIMIT_DATA); beyond it a call fails")
    s.set_defaults(fn=_serve)

    c = sub.add_parser("cleanup", help="unlink this user's segments whose owner is gone (its "
                       "lock file says so, in any PID namespace)")
    c.set_defaults(fn=_cleanup)

    k = sub.add_parser("soak", help="drive pools with a steady mix of calls and check that "
                       "memory, fds, threads and segments stay flat (exit 1 if not)",
                       description="Memory-growth soak: a mix of calls (sizes 10^2..10^6, "
                       "copy-in and zero-copy, threads, detector errors, worker kills; with "
                       "--go-host also a server and the Go host), sampled for RSS, fds, "
                       "threads and /dev/shm segments; exit 0 when flat after the warm-up, "
                       "1 when a bound is exceeded, 2 on setup errors, 3 when the run was too "
                       "short to judge (at least the warm-up twice over).  The method: "
                       "python -m pydoc shmpool.soak")
    k.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="run this long (default 480 s unless --calls is given)")
    k.add_argument("--calls", type=int, default=None, metavar="N",
                   help="stop after N detect calls (with --duration: whichever comes first)")
    k.add_argument("--threads", type=int, default=4, help="calling threads (default 4)")
    k.add_argument("--workers", type=int, default=2, help="workers of the main pool (default 2)")
    k.add_argument("--kill-every", type=int, default=400, metavar="N",
                   help="SIGKILL a random worker every N calls (default 400; 0: never)")
    k.add_argument("--error-every", type=int, default=50, metavar="N",
                   help="make every N-th call fail on purpose (default 50; 0: never)")
    k.add_argument("--min-size", type=int, default=100, help="smallest call (default 100)")
    k.add_argument("--max-size", type=int, default=1_000_000,
                   help="largest call (default 1000000)")
    k.add_argument("--seed", type=int, default=0, help="seed of the call mix (default 0)")
    k.add_argument("--go-host", default=None, metavar="PATH",
                   help="also run this program (host_adapters/go/bin/outliers) in a loop "
                        "against a shmpool serve the soak starts, beside Python Client calls")
    k.add_argument("--server-workers", type=int, default=2,
                   help="workers of that server (default 2)")
    k.add_argument("--out", default="soak-out", metavar="DIR",
                   help="where samples.csv, soak.png, summary.json, summary.txt go "
                        "(default ./soak-out)")
    k.add_argument("--sample-interval", type=float, default=None, metavar="SECONDS",
                   help="default: duration/150 within [0.2, 5] s; 0.5 s with only --calls")
    k.add_argument("--warmup", type=float, default=0.2, metavar="FRACTION",
                   help="leading fraction of the calls that is not judged (default 0.2)")
    k.add_argument("--min-warmup-calls", type=int, default=20_000, metavar="N",
                   help="the warm-up: at least N calls, at most half (default 20000; a host's "
                        "anonymous RSS settles over its first ~300k calls, 2-3 minutes here, "
                        "so judge runs of 8 minutes or more)")
    k.add_argument("--min-judged-calls", type=int, default=None, metavar="N",
                   help="calls after the warm-up a verdict needs (default: the warm-up's)")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    k.add_argument("--malloc-mmap-threshold", type=int, default=65536, metavar="BYTES",
                   help="glibc: allocations this big get their own mmap, so freed numpy "
                        "temporaries leave RSS (default 65536; 0: keep glibc's dynamic "
                        "threshold, whose steps read as RSS growth)")
    k.add_argument("--max-rss-growth", type=float, default=1.0, metavar="MIB",
                   help="bound on each process's anonymous-RSS growth: the slope fitted "
                        "after the warm-up times the run's calls (default 1)")
    k.add_argument("--max-fd-growth", type=int, default=0, metavar="N", help="default 0")
    k.add_argument("--max-thread-growth", type=int, default=0, metavar="N", help="default 0")
    k.add_argument("--max-segment-growth", type=int, default=0, metavar="N",
                   help="/dev/shm segments per owning process (default 0)")
    k.add_argument("--max-segment-bytes-growth", type=float, default=0.0, metavar="MIB",
                   help="default 0")
    k.add_argument("--max-mapping-growth", type=int, default=0, metavar="N",
                   help="shmpool segments mapped into a process (default 0)")
    k.set_defaults(fn=_soak)

    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
