"""The Go host in the load: ``host_adapters/go/cmd/outliers`` run over and over
against the soak's ``shmpool serve``.

The loop (``go_driver``) runs in a helper process of its own, so that the
host's memory is shmpool's and not this loop's; ``GoDriver`` is the soak's
end of it: ``pause`` parks the loop between two runs (for a sample) and
returns its counts, ``resume`` and ``stop`` do what they say.  A run passes
when it prints GO_ANSWER; it counts as a worker death when the Go client
says WORKER_DIED, and as lost at hand-off when the connection closed before
INFO or was refused BUSY because the server could not place it (the worker
it was handed to had just been killed: the soak kills server workers too);
any other outcome, or a segment left in /dev/shm, is a failure."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

from .sampling import segments_of

GO_ANSWER = "[7 113 835]"
# A connection the server handed to a worker that the soak had just killed:
# closed before INFO, or refused BUSY when the hand-off itself failed.
LOST_AT_HANDOFF = ("before answering INFO", "did not answer INFO",
                   "could not place the connection")


def lost_at_handoff(message: str) -> bool:
    return any(s in message for s in LOST_AT_HANDOFF)


def run_go(exe: str, socket_path: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the Go host once; also returns the segments it left behind."""
    proc = subprocess.Popen([exe, "-socket", socket_path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), segments_of(proc.pid)


def go_driver(exe: str, socket_path: str) -> None:
    """The Go loop: runs *exe* over and over; on "p" from stdin it finishes
    the run in progress and answers with its counts ("runs ok worker_died
    lost bad last-problem"), on "r" it resumes, on "q" or end-of-file it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the host's; it sends "q"
    runs = ok = died = lost = bad = 0
    last = ""
    paused = False
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], None if paused else 0)
        if readable:
            chunk = os.read(0, 4096)
            if not chunk:
                return
            pending += chunk
        while b"\n" in pending:
            cmd, pending = pending.split(b"\n", 1)
            if cmd == b"q":
                return
            paused = cmd == b"p"
            if paused:
                sys.stdout.write(f"{runs} {ok} {died} {lost} {bad} {json.dumps(last)}\n")
                sys.stdout.flush()
        if paused:
            continue
        out, left = run_go(exe, socket_path)
        runs += 1
        if out.returncode == 0 and out.stdout.strip() == GO_ANSWER:
            ok += 1
        elif "WORKER_DIED" in out.stderr:
            died += 1
        elif out.returncode == 1 and lost_at_handoff(out.stderr):
            lost += 1
        else:
            bad += 1
            last = (f"exit status {out.returncode}, stdout {out.stdout.strip()!r}, "
                    f"stderr {out.stderr.strip()[-500:]!r}")
        if left:
            bad += 1
            last = f"left {len(left)} segment(s) in /dev/shm: {left[:3]}"


class GoDriver:
    """The soak's end of go_driver."""

    def __init__(self, exe: str, socket_path: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from shmpool.soak.gohost import go_driver; "
                                   "go_driver(sys.argv[1], sys.argv[2])", exe, socket_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout

    def _send(self, cmd: str) -> bool:
        try:
            self._stdin.write(cmd + "\n")
            self._stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def pause(self, timeout: float = 120.0):
        """(runs, ok, worker_died, lost_at_handoff, bad, last problem), or None."""
        if not self._send("p"):
            return None
        readable, _, _ = select.select([self._stdout], [], [], timeout)
        line = self._stdout.readline() if readable else ""
        if not line:
            return None
        runs, ok, died, lost, bad, last = line.split(" ", 5)
        return int(runs), int(ok), int(died), int(lost), int(bad), json.loads(last)

    def resume(self) -> None:
        self._send("r")

    def stop(self) -> list[str]:
        """Problems stopping it (none: an empty list)."""
        self._send("q")
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return ["the Go loop did not stop in 60 s"]
        self._stdout.close()
        return [] if code == 0 else [f"the Go loop exited with status {code}"]
