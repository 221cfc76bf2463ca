"""``python -m benchmarks._pdeathsig PARENT_PID PROGRAM ARGS...``

Asks Linux to send SIGTERM to this process when its parent dies
(PR_SET_PDEATHSIG, which survives exec), then execs PROGRAM.  The benchmark
driver starts its servers through this, so that they stop even if the driver
is killed outright and no finally/atexit of it runs.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent = int(sys.argv[1])
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass                      # not Linux: the driver's finally/atexit still stop us
    if os.getppid() != parent:    # the parent died before prctl took effect
        sys.exit(0)
    os.execvp(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
