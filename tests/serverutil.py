"""Start and stop a real `shmpool serve` for tests."""

import os
import signal
import subprocess
import sys
import time

from shmpool.client import Client


class ServerProcess:
    def __init__(self, path, *args, env=None):
        self.path = str(path)
        self.args = args
        self.env = env
        self.proc = None

    def start(self, timeout=60):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmpool", "serve", "--socket", self.path, *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                with Client(self.path, timeout=5) as c:
                    c.ping()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not come up")

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def leftover_segments(self):
        return [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{self.proc.pid}-")]
