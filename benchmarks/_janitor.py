"""``python -m benchmarks._janitor DRIVER_PID TMPDIR``: cleans up after a killed driver.

The driver stops everything it started in its finally blocks.  If it is
killed outright (SIGKILL, OOM killer), those never run, and some children
would linger: ProcessPoolExecutor and loky workers do not notice their
parent's death.  This process, started by the driver (through _pdeathsig),
notes the driver's descendants every half second; when the driver is gone it
kills the ones still alive and removes what they named after their pids in
/dev/shm (shmpool segments, joblib memmap folders, loky semaphores) and the
driver's temporary directory.  Stopped while the driver lives, it does
nothing.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import sys
import time

import psutil


def cleanup(driver_pid: int, known: dict[int, psutil.Process], tmpdir: str) -> None:
    me = os.getpid()
    live = [p for pid, p in known.items() if pid != me and p.is_running()]
    for p in live:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(live, timeout=2.0)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=2.0)
    for pid in {driver_pid, *known}:
        for pattern in (f"/dev/shm/shmpool-{pid}-*", f"/dev/shm/sem.loky-{pid}-*",
                        f"/dev/shm/shmpool-bench-{pid}-*"):
            for path in glob.glob(pattern):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        for path in glob.glob(f"/dev/shm/joblib_memmapping_folder_{pid}_*"):
            shutil.rmtree(path, ignore_errors=True)
    if os.path.basename(tmpdir).startswith("shmpool-bench-"):
        shutil.rmtree(tmpdir, ignore_errors=True)


def main() -> int:
    driver_pid, tmpdir = int(sys.argv[1]), sys.argv[2]
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C reaches the driver; it stops us
    known: dict[int, psutil.Process] = {}
    while True:
        if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
            cleanup(driver_pid, known, tmpdir)
            return 0
        if stop:
            return 0                                 # the driver stopped us: it cleans up itself
        try:
            for p in driver.children(recursive=True):
                known.setdefault(p.pid, p)
        except psutil.Error:
            pass
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
