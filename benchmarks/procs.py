"""Server processes of the benchmark: started through _pdeathsig, always stopped.

Every process started here is stopped by ``stop`` (the driver's finally
blocks), by ``stop_all`` (registered with atexit), and, if the driver is
killed outright, by the kernel's parent-death signal.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_live: list[subprocess.Popen] = []


def spawn(argv: list[str], log_path: str | os.PathLike) -> subprocess.Popen:
    """Start *argv* (stdout and stderr to *log_path*) as a child that dies with us."""
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._pdeathsig", str(os.getpid()), *argv],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()
    _live.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to *timeout*, then SIGKILL.  Returns the exit code."""
    if proc is None:
        return None
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
    finally:
        if proc in _live:
            _live.remove(proc)
    return proc.returncode


def stop_all() -> None:
    for proc in list(_live):
        try:
            stop(proc, timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def log_tail(path: str | os.PathLike, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


atexit.register(stop_all)
