"""Starting worker processes, without the caller's ``__main__``.

    Pool / server                               zygote (start method "forkserver")
    -------------                               ----------------------------------
    Launcher.start(config, ctrl) ─SPAWN + fd──> python -m shmpool._backend.zygote:
                                                numpy and shmpool preloaded, its own
                                                session (a terminal's Ctrl-C never
                                                reaches it), forks one worker per SPAWN
                 <──SPAWNED pid + pidfd──────
                 <──EXITED pid, status──────── it reaps its children and says how
                                                they ended

Workers are named by a detector string, never by the caller's code, so no
start method imports ``__main__``: a script without an ``if __name__ ==
"__main__"`` guard, ``python -c``, stdin, a REPL and Jupyter all work.
"spawn" runs ``python -m shmpool._backend.worker`` per worker instead
(slower start, no zygote); "fork" forks the calling process itself.

One zygote serves every pool and server of a process and lives until the
process exits (as multiprocessing's forkserver does), so a second pool, or a
replacement worker, starts in milliseconds.  Every worker is held by a
pidfd, so it is stopped by its own identity whatever happened to its
launcher: a zygote that died (killed, say) is replaced at the next start,
and its orphaned workers are still killed by their pidfds.  A worker's exit
status comes from its parent: the zygote's EXITED message, or waitpid for
"spawn" and "fork".
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from ..errors import BrokenPool

START_METHODS = ("forkserver", "spawn", "fork")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker_environment() -> dict[str, str]:
    """A worker is one process per core: one BLAS/OpenMP thread each, unless
    the user chose otherwise."""
    env = dict(os.environ)
    for var in _THREAD_VARS:
        env.setdefault(var, "1")
    return env


def set_process_name(name: str) -> None:
    """The name ps, top and /proc/<pid>/comm show (15 bytes at most)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)      # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def describe(status: int | None) -> str:
    """'killed by SIGKILL', 'exited with code 3', ... for an exit status
    (negative: the signal's number)."""
    if status is None:
        return "exit status unknown (its launcher is gone)"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    if status == 124:
        return "stopped after the server's time limit"
    return f"exited with code {status}"


def _status(wait_status: int) -> int:
    return os.waitstatus_to_exitcode(wait_status)


class WorkerProcess:
    """One worker, held by its pidfd."""

    pidfd = -1
    status: int | None = None       # exit status, once known
    zygote: _Zygote | None = None   # the _Zygote that forked it (its parent), if one did

    def __init__(self, pid: int, pidfd: int, child: bool):
        self.pid, self.pidfd, self.child = pid, pidfd, child

    def alive(self) -> bool:
        if self.pidfd < 0:
            return False
        return not select.select([self.pidfd], [], [], 0)[0]

    def kill(self) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass

    def wait(self, timeout: float) -> bool:
        """True once the process has ended (within *timeout* seconds)."""
        if self.pidfd < 0:
            return True
        return bool(select.select([self.pidfd], [], [], max(timeout, 0))[0])

    def close(self) -> None:
        fd, self.pidfd = self.pidfd, -1
        if fd >= 0:
            os.close(fd)


class _Zygote:
    """A running zygote and the socket to it (one per process: ``zygote()``)."""

    def __init__(self, env: dict[str, str]):
        self.lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shmpool._backend.zygote", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], start_new_session=True, stdin=subprocess.DEVNULL,
                env=env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.exited: dict[int, int] = {}     # pid -> exit status the zygote reported

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, config: dict, ctrl: socket.socket, timeout: float) -> WorkerProcess:
        with self.lock:
            try:
                socket.send_fds(self.sock, [json.dumps(config).encode()], [ctrl.fileno()])
            except OSError as e:
                raise BrokenPool(f"the zygote is gone ({e})") from None
            deadline = time.monotonic() + timeout
            while True:
                kind, body, fds = self._recv(deadline)
                if kind == "spawned":
                    proc = WorkerProcess(body["pid"], fds[0], child=False)
                    proc.zygote = self
                    return proc
                for fd in fds:
                    os.close(fd)
                if kind == "error":
                    raise BrokenPool(f"the zygote could not fork a worker: {body['message']}")

    def collect(self) -> None:
        """Read every EXITED message waiting."""
        with self.lock:
            while self.sock.fileno() >= 0 and select.select([self.sock], [], [], 0)[0]:
                try:
                    _kind, _body, fds = self._recv(time.monotonic())
                except (BrokenPool, OSError, ValueError):
                    return
                for fd in fds:
                    os.close(fd)

    def _recv(self, deadline: float):
        left = deadline - time.monotonic()
        if not select.select([self.sock], [], [], max(left, 0))[0]:
            raise BrokenPool("the zygote did not answer in time")
        msg, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 4)
        if not msg:
            raise BrokenPool(f"the zygote ended ({describe(self.proc.poll())})")
        body = json.loads(msg)
        if body["kind"] == "exited":
            self.exited[body["pid"]] = body["status"]
        return body["kind"], body, list(fds)

    def close(self) -> None:
        self.sock.close()               # end-of-file: the zygote exits
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_shared: _Zygote | None = None
_shared_lock = threading.Lock()


def zygote() -> _Zygote:
    """This process's zygote, started (again) if it is not running."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive():
            old, _shared = _shared, None
            if old is not None:
                old.close()
            _shared = _Zygote(worker_environment())
        return _shared


def zygote_pid() -> int | None:
    z = _shared
    return z.proc.pid if z is not None and z.alive() else None


@atexit.register
def shutdown_zygote() -> None:
    """Stop this process's zygote (it would also go by itself when we exit)."""
    global _shared
    with _shared_lock:
        z, _shared = _shared, None
    if z is not None:
        z.close()


def _zygote_after_fork() -> None:
    global _shared, _shared_lock
    if _shared is not None:
        try:
            _shared.sock.close()          # the parent's: never ours to talk to
        except OSError:
            pass
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_zygote_after_fork)


class Launcher:
    """Starts workers by one start method; knows how each one ended."""

    _zygote: _Zygote | None = None

    def __init__(self, method: str = "forkserver"):
        if method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {method!r}")
        self.method = method
        self.env = worker_environment()
        self._popen: dict[int, subprocess.Popen] = {}

    def start(self, config: dict, ctrl: socket.socket, keep_fds: list[int],
              timeout: float) -> WorkerProcess:
        """Start a worker serving control socket *ctrl* (the worker's end)."""
        config = dict(config, sys_path=[p for p in sys.path if isinstance(p, str)],
                      cwd=os.getcwd())
        if self.method != "fork" and not (sys.executable and os.access(sys.executable, os.X_OK)):
            raise BrokenPool(
                f"cannot start workers: sys.executable is {sys.executable!r}, not a Python "
                "interpreter shmpool can run (an application embedding Python?); set "
                "sys.executable to a python3 that has shmpool installed, or pass "
                "start_method='fork'")
        if self.method == "forkserver":
            for attempt in (0, 1):
                self._zygote = zygote()
                try:
                    return self._zygote.spawn(config, ctrl, timeout)
                except BrokenPool:
                    if attempt or self._zygote.alive():
                        raise             # a zygote that died under us: one fresh try
        if self.method == "spawn":
            proc = subprocess.Popen(
                [sys.executable, "-m", "shmpool._backend.worker", str(ctrl.fileno()),
                 json.dumps(config)],
                pass_fds=[ctrl.fileno()], start_new_session=True, stdin=subprocess.DEVNULL,
                env=self.env)
            self._popen[proc.pid] = proc
            return WorkerProcess(proc.pid, os.pidfd_open(proc.pid), child=True)
        return self._fork(config, ctrl, keep_fds)

    def _fork(self, config: dict, ctrl: socket.socket, keep_fds: list[int]) -> WorkerProcess:
        pid = os.fork()
        if pid == 0:                                   # the child: becomes the worker
            try:
                os.setsid()
                fd = ctrl.fileno()
                keep = sorted({0, 1, 2, fd})
                lo = 3
                for k in keep[3:]:
                    os.closerange(lo, k)
                    lo = k + 1
                os.closerange(lo, 1 << 20)             # the host's sockets: or EOF never comes
                from . import worker
                worker.main(fd, config)
            finally:
                os._exit(70)
        return WorkerProcess(pid, os.pidfd_open(pid), child=True)

    def exit_status(self, proc: WorkerProcess, timeout: float = 1.0) -> int | None:
        """How *proc* ended (waiting up to *timeout* for it to end and be reported)."""
        if proc.status is not None:
            return proc.status
        if not proc.wait(timeout):
            return None
        if proc.child:
            popen = self._popen.pop(proc.pid, None)
            try:
                if popen is not None:
                    proc.status = popen.wait(timeout)
                else:
                    _pid, st = os.waitpid(proc.pid, 0)
                    proc.status = _status(st)
            except (ChildProcessError, subprocess.TimeoutExpired):
                proc.status = None
            return proc.status
        z = proc.zygote
        deadline = time.monotonic() + timeout
        while (z is not None and proc.pid not in z.exited and z.alive() and z.sock.fileno() >= 0
               and time.monotonic() < deadline):
            select.select([z.sock], [], [], max(0.0, deadline - time.monotonic()))
            z.collect()
        if z is not None:
            z.collect()
            proc.status = z.exited.pop(proc.pid, None)
        return proc.status

    def forget(self, proc: WorkerProcess) -> None:
        """Release what is held for an ended worker."""
        if proc.child and proc.status is None:
            try:
                os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            self._popen.pop(proc.pid, None)
        elif proc.zygote is not None:
            proc.zygote.exited.pop(proc.pid, None)
        proc.close()

    def close(self) -> None:
        self._zygote = None               # the shared zygote stays for the next pool
        for p in list(self._popen.values()):
            try:
                p.wait(1.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._popen.clear()
