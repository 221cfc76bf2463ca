"""The Go half: build benchmarks/go, run `shmpool serve`, run the Go program per size.

The Go program (benchmarks/go/main.go) reads the same data the Python half
timed (a raw float64 file per size), checks every method's answer against
numpy's before timing it, and writes per-call latencies as JSON, read here.
Anything that goes wrong (no Go toolchain, a failed build, a server that does
not start) makes the Go rows unavailable with the reason; it never stops the
Python half.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import procs

GO_DIR = Path(__file__).resolve().parent / "go"

METHODS = [
    ("go_shmpool", "Go: shmpool adapter Detect (copy-in)",
     "Go host adapter client.Detect(x): copies x into the client's reused segment; "
     "`shmpool serve --workers <cores>` behind its SEQPACKET socket"),
    ("go_shmpool_buffer", "Go: shmpool adapter DetectBuffer (zero-copy)",
     "Go host adapter client.DetectBuffer(b) on a shmpool Buffer already holding x "
     "(filled untimed)"),
    ("go_grpc", "Go: gRPC -> Python service",
     "grpc-go client (raw-bytes encoding.Codec, no protobuf) calling the same Python gRPC "
     "service over its Unix socket; x sent as a byte view (no copy), reply decoded to []int"),
]


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Serve:
    """`shmpool serve --socket <tmpdir>/shmpool.sock --workers <cores>` in its own process."""

    def __init__(self, tmpdir: str, cores: int):
        self.cores = cores
        self.socket = os.path.join(tmpdir, "shmpool.sock")
        self.log = os.path.join(tmpdir, "shmpool-serve.log")
        self.server = None
        self.available = False
        self.reason = "not started"

    def start(self) -> None:
        """Start the server and wait for it to answer a PING; sets available/reason."""
        from shmpool.client import Client
        self.server = procs.spawn([sys.executable, "-m", "shmpool", "serve", "--socket", self.socket,
                                   "--workers", str(self.cores)], self.log)
        end = time.monotonic() + 60
        while True:
            if self.server.poll() is not None:
                self.reason = (f"`shmpool serve` exited with code {self.server.returncode}: "
                               + procs.log_tail(self.log))
                return
            try:
                with Client(self.socket, timeout=5.0) as c:
                    c.ping()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > end:
                    self.reason = "`shmpool serve` did not answer a PING within 60 s"
                    return
                time.sleep(0.1)
        self.available = True
        self.reason = ""

    def stop(self) -> None:
        procs.stop(self.server)
        self.server = None
        self.available = False


class GoRunner:
    def __init__(self, tmpdir: str, serve: Serve):
        self.tmpdir = tmpdir
        self.serve = serve
        self.available = False
        self.reason = "not started"
        self.go_version = ""
        self.binary = os.path.join(tmpdir, "benchgo")

    # -- set-up ---------------------------------------------------------------------

    def build(self, timeout: float) -> bool:
        go = shutil.which("go")
        if go is None:
            self.reason = "the Go toolchain (go) is not on PATH"
            return False
        try:
            v = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60)
            self.go_version = v.stdout.strip()
            r = subprocess.run([go, "build", "-o", self.binary, "."], cwd=GO_DIR,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.reason = f"go build took longer than {timeout:.0f} s"
            return False
        except OSError as e:
            self.reason = f"cannot run go: {e}"
            return False
        if r.returncode != 0:
            self.reason = "go build failed: " + _tail(r.stderr or r.stdout)
            return False
        return True

    def ready(self) -> None:
        """After a successful build: usable if the server is."""
        self.available = self.serve.available
        self.reason = self.serve.reason

    # -- one size ---------------------------------------------------------------------

    def run_size(self, n: int, x: np.ndarray, ref: np.ndarray, mean: float, cut: float, scale: float,
                 warmup: int, rounds: int, calls: int, budget_s: float, grpc_socket: str | None,
                 timeout: float, ping_calls: int = 0) -> tuple[dict, list[str], list[int]]:
        """Returns ({method key: result dict from Go}, [errors], [ping latencies in ns])."""
        data = os.path.join(self.tmpdir, f"x-{n}.f64")
        reff = os.path.join(self.tmpdir, f"ref-{n}.i64")
        planf = os.path.join(self.tmpdir, f"plan-{n}.json")
        outf = os.path.join(self.tmpdir, f"go-{n}.json")
        errlog = os.path.join(self.tmpdir, f"go-{n}.log")
        try:
            x.astype("<f8", copy=False).tofile(data)
            ref.astype("<i8", copy=False).tofile(reff)
            plan = {
                "shmpool_socket": self.serve.socket,
                "grpc_target": f"unix://{os.path.abspath(grpc_socket)}" if grpc_socket else "",
                "grpc_method": "/shmpool.bench.Detector/Detect",
                "methods": [k for k, _, _ in METHODS],
                "ping_calls": ping_calls,
                "sizes": [{"n": n, "data_file": data, "ref_file": reff, "mean": mean, "cut": cut,
                           "scale": scale, "warmup": warmup, "rounds": rounds, "calls": calls,
                           "budget_s": budget_s}],
            }
            with open(planf, "w") as f:
                json.dump(plan, f)
            with open(errlog, "wb") as log:
                proc = subprocess.Popen([self.binary, "-plan", planf, "-out", outf],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {}, [f"the Go program took longer than {timeout:.0f} s at n={n} and was killed"], []
            finally:
                if proc.poll() is None:          # KeyboardInterrupt while waiting
                    proc.kill()
                    proc.wait()
                _unlink_segments_of(proc.pid)
            if proc.returncode != 0:
                return {}, [f"the Go program exited with code {proc.returncode} at n={n}: "
                            + procs.log_tail(errlog)], []
            with open(outf) as f:
                out = json.load(f)
            return ({r["method"]: r for r in out["results"] if r["n"] == n}, list(out.get("errors", [])),
                    list(out.get("ping_ns") or []))
        finally:
            for p in (data, reff, planf, outf, errlog):
                try:
                    os.unlink(p)
                except OSError:
                    pass


def _unlink_segments_of(pid: int) -> None:
    """A Go process that was killed cannot unlink its segments: do it for it."""
    for path in glob.glob(f"/dev/shm/shmpool-{pid}-*"):
        try:
            os.unlink(path)
        except OSError:
            pass
