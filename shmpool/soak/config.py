"""What a soak was asked to do: ``Config`` (from ``shmpool soak``'s options),
the ``Bounds`` its verdict holds the numbers to, and ``SetupError``.

Nothing here runs anything; ``Config.check`` refuses settings the soak
cannot honour (exit status 2)."""

from __future__ import annotations

import dataclasses
import os

MIB = 1 << 20
PER_CALLS = 10_000                      # slopes are reported per this many calls

# Documented defaults (README; `shmpool soak --help` repeats them).
DEFAULT_MAX_RSS_GROWTH_MIB = 1.0        # per process, the fitted slope over the whole run
DEFAULT_WARMUP = 0.2
DEFAULT_MIN_WARMUP_CALLS = 20_000
DEFAULT_MMAP_THRESHOLD = 1 << 16        # bytes; 0 leaves glibc's dynamic threshold alone


class SetupError(Exception):
    """The soak could not start (exit status 2)."""


@dataclasses.dataclass
class Bounds:
    """Allowed growth after the warm-up (see the package docstring)."""
    rss_bytes: float = DEFAULT_MAX_RSS_GROWTH_MIB * MIB
    fds: float = 0
    threads: float = 0
    segments: float = 0
    segment_bytes: float = 0
    mappings: float = 0


@dataclasses.dataclass
class Config:
    duration: float | None = None
    calls: int | None = None
    threads: int = 4
    workers: int = 2
    server_workers: int = 2
    out: str = "soak-out"
    go_host: str | None = None
    kill_every: int = 400
    error_every: int = 50
    seed: int = 0
    min_size: int = 100
    max_size: int = 1_000_000
    sample_interval: float | None = None
    warmup: float = DEFAULT_WARMUP
    min_warmup_calls: int = DEFAULT_MIN_WARMUP_CALLS
    progress: bool = True
    malloc_mmap_threshold: int = DEFAULT_MMAP_THRESHOLD
    bounds: Bounds = dataclasses.field(default_factory=Bounds)
    # Calls the judged part needs at the least; None: as many as the warm-up's minimum.
    min_judged_calls: int | None = None

    @classmethod
    def from_args(cls, a) -> Config:
        """From the ``shmpool soak`` arguments (shmpool.__main__)."""
        bounds = Bounds(rss_bytes=a.max_rss_growth * MIB, fds=a.max_fd_growth,
                        threads=a.max_thread_growth, segments=a.max_segment_growth,
                        segment_bytes=a.max_segment_bytes_growth * MIB,
                        mappings=a.max_mapping_growth)
        duration = a.duration
        if duration is None and a.calls is None:
            duration = 480.0
        return cls(duration=duration, calls=a.calls, threads=a.threads, workers=a.workers,
                   server_workers=a.server_workers, out=a.out, go_host=a.go_host,
                   kill_every=a.kill_every, error_every=a.error_every, seed=a.seed,
                   min_size=a.min_size, max_size=a.max_size, sample_interval=a.sample_interval,
                   warmup=a.warmup, min_warmup_calls=a.min_warmup_calls,
                   progress=not a.no_progress, malloc_mmap_threshold=a.malloc_mmap_threshold,
                   bounds=bounds, min_judged_calls=getattr(a, "min_judged_calls", None))

    def check(self) -> None:
        if self.duration is not None and self.duration <= 0:
            raise SetupError("--duration must be > 0")
        if self.calls is not None and self.calls <= 0:
            raise SetupError("--calls must be > 0")
        if self.threads < 1 or self.workers < 2 or self.server_workers < 2:
            raise SetupError("need --threads >= 1, and --workers and --server-workers >= 2 "
                             "(worker 0 is never killed; the others are)")
        if self.kill_every < 0 or self.error_every < 0:
            raise SetupError("--kill-every and --error-every must be >= 0 (0: never)")
        if not 14 <= self.min_size <= self.max_size:
            # troublemaker stalls for 30 s on exactly 13 values: stay clear of it
            raise SetupError("need 14 <= --min-size <= --max-size")
        if not 0 <= self.warmup < 1:
            raise SetupError("--warmup is a fraction in [0, 1)")
        if self.min_warmup_calls < 0:
            raise SetupError("--min-warmup-calls must be >= 0")
        if self.min_judged_calls is not None and self.min_judged_calls < 1:
            raise SetupError("the minimum of judged calls must be >= 1")
        if self.malloc_mmap_threshold < 0:
            raise SetupError("--malloc-mmap-threshold must be >= 0 (0: glibc's default)")
        if self.sample_interval is not None and self.sample_interval <= 0:
            raise SetupError("--sample-interval must be > 0")
        if self.go_host is not None:
            if not (os.path.isfile(self.go_host) and os.access(self.go_host, os.X_OK)):
                raise SetupError(f"--go-host {self.go_host!r} is not an executable file")

    def interval(self) -> float:
        """Seconds between two samples."""
        if self.sample_interval is not None:
            return self.sample_interval
        if self.duration is None:
            return 0.5
        return min(max(self.duration / 150, 0.2), 5.0)
