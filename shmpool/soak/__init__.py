"""Memory-growth soak: ``shmpool soak``.

Drives pools with a steady mix of calls for a duration or a number of calls
and checks that, after a warm-up, nothing grows::

    shmpool soak --duration 60 --out soak-out                       # judged from 40,000 calls
    shmpool soak --duration 3600 --go-host host_adapters/go/bin/outliers --out soak-1h

Without the ``soak`` extra (``pip install 'shmpool[soak]'``: tqdm and
matplotlib) it still runs: a plain progress line on stderr instead of the
bar, and no soak.png (it says so); samples.csv and the summaries are always
written.

The load (``load.py``, ``server.py``, ``gohost.py``)
    Sizes log-uniform from 10^2 to 10^6 values; copy-in (contiguous, strided,
    float32), zero-copy (slices of one long-lived ``pool.empty`` array, and
    fresh ``pool.empty`` arrays dropped after one call), answers written into
    a ``ReturnSegment``, ``pool.submit``; from ``--threads`` threads at once.
    Every ``--error-every``-th call fails on purpose (negative data to a pool
    of ``shmpool.testing:troublemaker`` -> DetectorError; NaN data ->
    NonFiniteError) and every ``--kill-every``-th call SIGKILLs a random
    worker (whichever call was using it raises WorkerDied and the pool starts
    a new one).  Worker 0 of every pool is never killed: it is the witness
    of a long-lived worker's memory.  (A worker of the main pool is killed
    only while no call is split over that pool's workers: the pool retires
    the other workers of a split call whose replies were pending when one
    died, the witness with them.)  With ``--go-host PATH`` the soak also
    starts its own ``shmpool serve``, runs the Go program against it over
    and over (from a helper process, so that the host's memory stays
    shmpool's) and makes ``Client`` calls to it from the Python threads (a
    Client per thread, and Clients opened for one call); the soak kills the
    server's workers too (a connection whose worker was killed while the
    server handed it over closes before INFO, or is refused BUSY: counted as
    lost at hand-off).
    A sample of the answers is compared with ``shmpool.reference``; every
    other outcome is an unexpected failure.

The samples (``sampling.py``; samples.csv, one row per process per sample)
    Every ``--sample-interval`` seconds each load thread (and the Go loop)
    parks between two calls, the host runs ``gc.collect()`` and
    ``malloc_trim(0)``, and for the host, its zygote (``shmpool-zygote``),
    every worker, and the server with its zygote and workers, the soak
    records from /proc: RSS and its anonymous, file and shmem parts, threads,
    open fds and how many of them are shmpool segments, mapped shmpool
    segments, and the number and bytes of the ``/dev/shm`` segments the
    process owns (names ``shmpool-<pid>-``).  It also counts, from the
    objects that hold them, what varies by design: the segments, bytes and
    connections of the host's lanes (pools' and Clients': a Client dials
    lanes as calls need them and drops those whose worker died; a lane's
    result segment grows with the largest answer) and staging caches, and
    the Client connections each server worker serves (``held_*``).
    Workers are tracked by role (``pool/w1``), not by pid: the worker that
    replaces a killed one takes over its role and starts a new epoch of it.

The allocator (``allocator.py``)
    glibc serves a freed 8 MB numpy temporary's successor from the heap once
    it has seen one (its mmap threshold rises with the largest block freed),
    so RSS climbs in steps to the peak of the temporaries: noise of 1-2 MiB
    that is not a leak.  The soak fixes the threshold at
    ``--malloc-mmap-threshold`` (64 KiB; in the host with mallopt, in the
    workers and the server through MALLOC_MMAP_THRESHOLD_); 0 keeps glibc's
    behaviour.  The host also settles during its first ~20,000 calls
    (pymalloc's arenas fill in, caches reach their size), hence the
    warm-up below.

The verdict (``analysis.py``; ``report.py`` prints how it follows from the numbers)
    The first ``--warmup`` of the calls (a fraction: 0.2) is warm-up and not
    judged, but at least ``--min-warmup-calls`` (W, 20,000) and at most half
    the run.  A run is judged only if the whole minimum warm-up fits in half
    of it and at least ``Config.min_judged_calls`` (J, default W) calls come
    after the warm-up, that is from max(2W, W + J, J / (1 - warmup)) calls
    on: 40,000 by default (about 30-40 s here), and with at least 10 samples
    of the host after the warm-up.  Then, per process (role):

    * anonymous RSS (heap, stacks, numpy temporaries: what a leak grows; the
      pages of shared segments are judged as segments): the least-squares
      slope after the warm-up against the call count (one intercept per
      epoch), extrapolated over the whole run: growth = slope x the run's
      calls, which must stay within ``--max-rss-growth`` (1 MiB).  The slope
      printed per 10k calls, the growth and the dashed line in soak.png are
      the same number, so a line that climbs past the bound is never "flat".
      A role whose worker was replaced is reported, not judged (a fresh
      worker's first calls grow its heap, which is not a leak); the
      witnesses are.
    * fds other than segments (Python's mmap keeps a dup of the fd it maps,
      the native mapping cache does not), threads, own segments, their
      bytes, and mapped segments, each less what is held by design (above):
      the level (most common value) of the last quarter of the judged
      samples minus that of the first quarter; bounds ``--max-fd-growth``,
      ``--max-thread-growth``, ``--max-segment-growth``,
      ``--max-segment-bytes-growth``, ``--max-mapping-growth``: all 0.  A
      worker keeps up to 64 mappings by design (``_backend.mappings.MAX``,
      C: ``CACHE_MAX``), so for workers the bound on mappings is that cap
      instead.  A witness must not restart.

    Exit status and verdict:

    * 1, FAILED: a judged check exceeds its bound (each is named, with the
      numbers), a call failed unexpectedly, something was left in /dev/shm,
      or the run was interrupted;
    * 3, TOO SHORT TO JUDGE: otherwise, if the run is shorter than the
      minimum above (it says how many calls it had and how many it needed).
      Its counts are still checked (a count that grows fails it), but its
      anonymous RSS is reported, not judged: the warm-up could not be told
      from a leak.  Not a pass;
    * 0, flat: every bound holds in a run long enough to judge;
    * 2: the soak could not be set up; 130: interrupted (SIGINT/SIGTERM; the
      samples so far are still analysed and written).

The package: ``config`` (settings), ``allocator``, ``load``, ``server`` and ``gohost``
(the load), ``sampling``, ``analysis`` (the verdict), ``report`` (csv, text
and json), ``plot`` (soak.png), ``progress``, ``runner`` (``run``).
"""

from .analysis import (
                       COUNT_WINDOW,
                       FAILED,
                       FLAT,
                       TOO_SHORT,
                       Check,
                       Report,
                       Verdict,
                       analyze,
                       calls_needed,
                       decide,
                       default_mappings_cap,
                       level,
                       warmup_end,
                       window_growth,
                       within_slope,
)
from .config import DEFAULT_MIN_WARMUP_CALLS, DEFAULT_WARMUP, MIB, PER_CALLS, Bounds, Config, SetupError
from .gohost import GO_ANSWER, GoDriver, go_driver
from .load import Load
from .plot import PlotUnavailable, plot, try_plot
from .report import SampleLog, explain, format_report, read_csv, write_summary
from .runner import finish, run
from .sampling import SAMPLE_FIELDS, Roles, Watch, read_process, shm_usage, take_sample

__all__ = [
    "Config", "Bounds", "SetupError", "run", "finish", "analyze", "decide", "Report", "Check",
    "Verdict", "FLAT", "FAILED", "TOO_SHORT", "calls_needed", "warmup_end", "within_slope",
    "level", "window_growth", "COUNT_WINDOW", "default_mappings_cap", "read_csv", "SampleLog",
    "format_report", "explain", "write_summary", "plot", "try_plot", "PlotUnavailable",
    "SAMPLE_FIELDS", "Roles", "Watch", "read_process", "shm_usage", "take_sample", "Load",
    "GoDriver", "go_driver", "GO_ANSWER", "MIB", "PER_CALLS", "DEFAULT_WARMUP",
    "DEFAULT_MIN_WARMUP_CALLS",
]
