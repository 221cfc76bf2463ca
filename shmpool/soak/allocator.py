"""glibc's allocator, held still so that anonymous RSS means memory in use.

glibc serves a freed 8 MB numpy temporary's successor from the heap once it
has seen one (its mmap threshold rises with the largest block freed), so RSS
climbs in steps to the peak of the temporaries: 1-2 MiB that is not a leak.
``fix_mmap_threshold`` pins the threshold (mallopt here, the environment
variable for the processes started later); ``trim_heap`` hands free heap
pages back before each sample.  Also ``die_with_parent`` for the children
the soak starts."""

from __future__ import annotations

import os
import signal

M_MMAP_THRESHOLD = -3       # glibc <malloc.h>
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def _libc():
    try:
        import ctypes
        return ctypes.CDLL(None)
    except OSError:
        return None


LIBC = _libc()


def trim_heap() -> None:
    """Hand the free pages of every malloc arena back to the OS (glibc's
    malloc_trim): what gc.collect() is to Python objects, for the C heap."""
    fn = getattr(LIBC, "malloc_trim", None)
    if fn is not None:
        fn(0)


def can_die_with_parent() -> bool:
    return hasattr(LIBC, "prctl")


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the soak dies, even of SIGKILL."""
    LIBC.prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG


def fix_mmap_threshold(nbytes: int) -> str:
    """Serve every allocation of *nbytes* or more with its own mmap, in this
    process (mallopt) and in the processes it starts from now on (glibc's
    environment variable): freed arrays then leave RSS at once, instead of
    staying in the heap up to a high-water mark that glibc's dynamic
    threshold raises in steps (the peak numpy temporary seen so far), so
    anonymous RSS follows the memory actually in use.  Returns a note."""
    if nbytes <= 0:
        return "glibc's dynamic mmap threshold kept (--malloc-mmap-threshold 0)"
    os.environ[MMAP_ENV] = str(nbytes)
    fn = getattr(LIBC, "mallopt", None)
    ok = fn is not None and fn(M_MMAP_THRESHOLD, nbytes) == 1
    if not ok:
        return "mallopt(M_MMAP_THRESHOLD) unavailable: the host keeps its allocator's defaults"
    return f"malloc mmap threshold fixed at {nbytes} bytes (host, workers, server)"
