"""The Go half: build benchmarks/go, run `shmpool serve`, run the Go program per size.

The Go program (benchmarks/go/main.go) reads the same data the Python half
timed (a raw float64 file per size), checks every method's answer against
numpy's before timing it, and writes per-call latencies as JSON, read here;
asked to, it also measures calls/s of one Client shared by 1 and 4
goroutines.  The server runs two detector rows: ``classic`` (the default)
and ``benchmarks.detectors:numpy_oneliner`` (numpy's one-liner as a plain
function, run whole on one worker).  Anything that goes wrong (no Go
toolchain, a failed build, a server that does not start) makes the Go rows
unavailable with the reason; it never stops the Python half.
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
from .detectors import NUMPY_ONELINER

GO_DIR = Path(__file__).resolve().parent / "go"

METHODS = [
    ("go_shmpool", "Go: shmpool Detect (copy-in)",
     "Go host adapter client.Detect(x) against `shmpool serve --workers <cores>`: copies x into "
     "the lane's reused segment, one request straight to a worker; from 2^18 values split over the "
     "workers (copying chunk i while worker i-1 already summarizes)"),
    ("go_shmpool_buffer", "Go: shmpool DetectBuffer (zero-copy)",
     "Go host adapter client.DetectBuffer(b) on a shmpool Buffer already holding x (filled untimed)"),
    ("go_numpy_detector", "Go: shmpool, numpy one-liner as module:function",
     f"client.DetectWith(x, Options{{Detector: \"{NUMPY_ONELINER}\"}}): the same server's second row, "
     "numpy's one-liner as a plain Python function in the worker, run whole on one worker (copy-in)"),
    ("go_grpc", "Go: gRPC -> Python service",
     "grpc-go client (raw-bytes encoding.Codec, no protobuf) calling the same Python gRPC "
     "service over its Unix socket; x sent as a byte view (no copy), reply decoded to []int"),
]

SERVE_DETECTORS = ["classic", NUMPY_ONELINER]


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Serve:
    """`shmpool serve --socket <tmpdir>/<name>.sock --workers <cores> --detector ...` in its own process."""

    def __init__(self, tmpdir: str, cores: int, detectors=tuple(SERVE_DETECTORS), name: str = "shmpool"):
        self.cores = cores
        self.detectors = list(detectors)
        self.socket = os.path.join(tmpdir, f"{name}.sock")
        self.log = os.path.join(tmpdir, f"{name}-serve.log")
        self.server = None
        self.available = False
        self.reason = "not started"

    @property
    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "shmpool", "serve", "--socket", self.socket,
                "--workers", str(self.cores)]
        for d in self.detectors:
            argv += ["--detector", d]
        return argv

    def start(self) -> None:
        """Start the server and wait for it to answer a PING; sets available/reason."""
        if self.server is not None:
            return
        from shmpool.client import Client
        self.server = procs.spawn(self.argv, self.log)
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
        except (OSError, subprocess.TimeoutExpired) as e:
            self.reason = f"cannot run go: {e}"
            return False
        self.go_version = v.stdout.strip()
        self.reason = go_build(go, ".", self.binary, "go build", timeout)
        return not self.reason

    def ready(self) -> None:
        """After a successful build: usable if the server is."""
        self.available = self.serve.available
        self.reason = self.serve.reason

    # -- one size ---------------------------------------------------------------------

    def run(self, plan: dict, tag: str, timeout: float) -> tuple[dict | None, list[str]]:
        """Run the Go program on *plan* (sockets filled in here); (its output, [errors])."""
        plan = dict(plan, shmpool_socket=self.serve.socket, numpy_detector=NUMPY_ONELINER,
                    grpc_method="/shmpool.bench.Detector/Detect")
        return run_program([self.binary], plan, self.tmpdir, f"go-{tag}", timeout, "the Go program")


def go_build(go: str, package: str, binary: str, what: str, timeout: float, env: dict | None = None) -> str:
    """``go build -o binary package`` in the benchmarks/go module: "" when built, else why not."""
    try:
        r = subprocess.run([go, "build", "-o", binary, package], cwd=GO_DIR, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{what} took longer than {timeout:.0f} s"
    except OSError as e:
        return f"cannot run go: {e}"
    if r.returncode != 0:
        return f"{what} failed: " + _tail(r.stderr or r.stdout)
    return ""


def run_program(argv: list[str], plan: dict, tmpdir: str, tag: str, timeout: float, what: str,
                env: dict | None = None) -> tuple[dict | None, list[str]]:
    """Write *plan*, run ``argv -plan PLAN -out OUT``, read OUT: (its output, [errors])."""
    planf = os.path.join(tmpdir, f"plan-{tag}.json")
    outf = os.path.join(tmpdir, f"out-{tag}.json")
    errlog = os.path.join(tmpdir, f"{tag}.log")
    try:
        with open(planf, "w") as f:
            json.dump(plan, f)
        with open(errlog, "wb") as log:
            proc = subprocess.Popen([*argv, "-plan", planf, "-out", outf], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None, [f"{what} took longer than {timeout:.0f} s ({tag}) and was killed"]
        finally:
            if proc.poll() is None:          # KeyboardInterrupt while waiting
                proc.kill()
                proc.wait()
            _unlink_segments_of(proc.pid)
        if proc.returncode != 0:
            return None, [f"{what} exited with code {proc.returncode} ({tag}): " + procs.log_tail(errlog)]
        with open(outf) as f:
            out = json.load(f)
        return out, list(out.get("errors") or [])
    finally:
        for p in (planf, outf, errlog):
            try:
                os.unlink(p)
            except OSError:
                pass


class DataFiles:
    """One size's input and numpy's answer as raw files, for the Go programs."""

    def __init__(self, tmpdir: str, n: int, x: np.ndarray, ref: np.ndarray, mean: float, cut: float,
                 scale: float):
        self.n = n
        self.data = os.path.join(tmpdir, f"x-{n}.f64")
        self.ref = os.path.join(tmpdir, f"ref-{n}.i64")
        x.astype("<f8", copy=False).tofile(self.data)
        ref.astype("<i8", copy=False).tofile(self.ref)
        self.mean, self.cut, self.scale = mean, cut, scale

    def size_plan(self, warmup: int, rounds: int, calls: int, budget_s: float) -> dict:
        return {"n": self.n, "data_file": self.data, "ref_file": self.ref, "mean": self.mean, "cut": self.cut,
                "scale": self.scale, "warmup": warmup, "rounds": rounds, "calls": calls, "budget_s": budget_s}

    def conc_plan(self, goroutines: list[int], rounds: int, seconds: float) -> dict:
        return {"n": self.n, "data_file": self.data, "ref_file": self.ref, "goroutines": goroutines,
                "rounds": rounds, "seconds": seconds}

    def remove(self) -> None:
        for p in (self.data, self.ref):
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
