"""The soak's own ``shmpool serve`` (with ``--go-host``): started in a
directory of its own, waited for, checked with one run of the Go program,
and stopped with SIGTERM at the end (its exit status and log tail are
reported if it did not stop cleanly).  It dies with the soak, even if the
soak is SIGKILLed (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .allocator import can_die_with_parent, die_with_parent
from .config import SetupError
from .gohost import GO_ANSWER, run_go
from .sampling import segments_of


class SoakServer:
    """``shmpool serve --socket <tmp>/serve.sock --workers N``."""

    def __init__(self, workers: int):
        self.workers = workers
        self.tmpdir = tempfile.mkdtemp(prefix="shmpool-soak-")
        self.socket_path = os.path.join(self.tmpdir, "serve.sock")
        self._log = open(os.path.join(self.tmpdir, "serve.log"), "w+")
        self.proc: subprocess.Popen | None = None

    def start(self, go_host: str, timeout: float = 60.0) -> None:
        """Start it (call while this process has one thread: it forks), wait
        until it answers, then run *go_host* against it once; SetupError if
        any of that fails."""
        from ..client import Client

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmpool", "serve", "--socket", self.socket_path,
             "--workers", str(self.workers)],
            stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if can_die_with_parent() else None)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SetupError(f"shmpool serve exited with {self.proc.returncode}: "
                                 f"{self.output()}")
            try:
                with Client(self.socket_path, timeout=5) as c:
                    c.ping()
                break
            except OSError:
                if time.monotonic() > end:
                    raise SetupError(f"shmpool serve did not come up in {timeout:g} s") from None
                time.sleep(0.05)
        out, _ = run_go(go_host, self.socket_path)
        if out.returncode != 0 or out.stdout.strip() != GO_ANSWER:
            raise SetupError(f"{go_host} -socket {self.socket_path}: exit status "
                             f"{out.returncode}, stdout {out.stdout.strip()!r}, "
                             f"stderr {out.stderr.strip()!r}; expected {GO_ANSWER}")

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        p = self.proc
        return p.pid if p is not None and p.poll() is None else None

    def output(self) -> str:
        """The tail of its log."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-2000:]

    def stop(self) -> list[str]:
        """SIGTERM it and clean up; the problems (none: an empty list)."""
        problems = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    code = self.proc.wait()
                    problems.append("shmpool serve did not stop on SIGTERM in 30 s")
            else:
                code = self.proc.returncode
            if code != 0:
                problems.append(f"shmpool serve exited with {code}: {self.output()}")
            left = segments_of(self.proc.pid)
            if left:
                problems.append(f"{len(left)} segment(s) of the server left in /dev/shm: "
                                f"{left[:5]}")
        self._log.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return problems
