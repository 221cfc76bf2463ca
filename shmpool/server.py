"""``shmpool serve``: workers behind a Unix socket, for hosts in any language.

    host (Go, C, Python, ...)        server (this module)              worker i
    -------------------------        --------------------              --------
    connect(path) ─────────────────> accept; check the peer's uid;
                                     pick worker i (fewest connections,
                                     preferring one not yet serving
                                     this host process)
                                     ──CONN + fd (SCM_RIGHTS)────────> serves it
    requests (docs/LAYOUT.md) <─────────────────────────────────────> replies
                                     <──CLOSED──────────────────────── when it ends
                                     worker died (pidfd): log, start a new one

One thread, one poll loop.  The server is never on the data path: after
accept a host talks to its worker directly.  It refuses what it cannot hold
with a BUSY reply (and says so in its log), never by exiting.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import stat
import struct

from . import layout as L
from ._backend import control
from ._backend.launch import WorkerProcess
from ._backend.workers import Workers
from .errors import ShmpoolError
from .pool import check_policy, check_specs, check_threshold, check_timeout, threshold_defaults

log = logging.getLogger("shmpool.serve")

_UCRED = struct.Struct("3i")
SOMAXCONN = 65535           # listen() caps it at net.core.somaxconn: as deep as allowed


def default_socket_path() -> str:
    return os.environ.get("SHMPOOL_SOCKET") or f"/tmp/shmpool-{os.geteuid()}.sock"


def peer_cred(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end (SO_PEERCRED)."""
    pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid


class Server:
    """Owns the socket path and the workers; ``run()`` until ``stop()``."""

    _listener: socket.socket = None  # type: ignore[assignment]   # None: half-built or closed
    _workers: Workers = None  # type: ignore[assignment]
    _path = ""

    def __init__(self, socket_path: str | None = None, *, workers: int | None = None,
                 detector=("classic",), threshold: float | None = None, nan_policy: str = "raise",
                 timeout: float | None = None, memory_limit: int | None = None,
                 start_method: str = "forkserver", startup_timeout: float = 60.0):
        n = workers or len(os.sched_getaffinity(0))
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.specs = check_specs(list(detector) if not isinstance(detector, str) else detector)
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.nan_policy = check_policy(nan_policy)
        self.timeout = check_timeout(timeout)
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
        self._path = socket_path or default_socket_path()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._next_tag = 0
        self._spare = -1
        self._listener = self._bind(self._path)
        try:
            self._workers = Workers(n, {
                "specs": self.specs, "defaults": threshold_defaults(self.threshold),
                "nan_policy": self.nan_policy, "memory_limit": memory_limit,
                "timeout": self.timeout}, start_method, startup_timeout)
            for i in range(n):
                self._workers.start(i)
        except BaseException:
            self.close()
            raise
        self._spare = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)

    @property
    def path(self) -> str:
        return self._path

    def worker_pids(self) -> list[int]:
        return self._workers.pids() if self._workers is not None else []

    @staticmethod
    def _bind(path: str) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)                       # stale: its server is gone
            else:
                raise FileExistsError(f"a server is already listening on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o177)                         # born 0600: no window for others
        try:
            sock.bind(path)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(SOMAXCONN)
        sock.setblocking(False)
        return sock

    # -- the loop -----------------------------------------------------------------

    def run(self) -> None:
        w = self._workers
        log.info("listening on %s: %d workers, detectors %s, %s, nan_policy %s%s",
                 self._path, len(w.slots), ", ".join(self.specs),
                 "each its own threshold" if self.threshold is None else f"threshold {self.threshold:g}",
                 self.nan_policy,
                 f", timeout {self.timeout:g} s" if self.timeout else "")
        try:
            while not self._stopping:
                watch: dict[int, tuple[str, int, WorkerProcess | None]] = {
                    self._listener.fileno(): ("accept", -1, None),
                         self._wake_r: ("wake", -1, None)}
                for slot in w.slots:
                    if slot.ctrl is not None:
                        watch[slot.ctrl.fileno()] = ("ctrl", slot.index, slot.proc)
                        watch[slot.proc.pidfd] = ("died", slot.index, slot.proc)
                try:
                    ready = _poll(list(watch))
                except InterruptedError:
                    continue
                for fd in ready:
                    what, i, proc = watch[fd]
                    if proc is not None and w.slots[i].proc is not proc:
                        continue                  # that worker was replaced this round
                    if what == "accept":
                        self._accept_all()
                    elif what == "ctrl":
                        self._from_worker(i)
                    elif what == "died":
                        self._replace(i)
                    else:
                        try:
                            os.read(self._wake_r, 64)
                        except OSError:
                            pass
                for i, slot in enumerate(w.slots):
                    if slot.ctrl is None and not self._stopping:
                        self._replace(i)
        finally:
            self.close()

    def _accept_all(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    self._refuse_without_fds()
                    continue
                log.warning("accept failed: %s", e)
                return
            self._admit(conn)

    def _refuse_without_fds(self) -> None:
        """Out of descriptors: free the spare to take the connection, refuse it BUSY."""
        if self._spare < 0:
            return
        os.close(self._spare)
        self._spare = -1
        try:
            conn, _ = self._listener.accept()
        except OSError:
            conn = None
        if conn is not None:
            log.warning("out of file descriptors: refused a connection BUSY")
            _refuse(conn, L.Status.BUSY, "the server is out of file descriptors; try again later")
        try:
            self._spare = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._spare = -1

    def _admit(self, conn: socket.socket) -> None:
        try:
            pid, uid = peer_cred(conn)
        except OSError:
            conn.close()
            return
        if uid != os.geteuid():
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            _refuse(conn, L.Status.NOT_PERMITTED,
                    f"this server serves uid {os.geteuid()} only; you are uid {uid}")
            return
        for _attempt in range(len(self._workers.slots) + 1):
            i = self._choose(pid)
            if i is None:
                total = sum(s.conns for s in self._workers.slots)
                log.warning("busy: %d connections held, as many as the workers can; refused one",
                            total)
                _refuse(conn, L.Status.BUSY, f"the server holds {total} connections, as many as "
                                             "its workers can; try again later")
                return
            if not self._workers.alive(i):       # died since the last look: replace it first
                self._replace(i)
                continue
            self._next_tag += 1
            try:
                self._workers.give(i, conn.fileno(), self._next_tag, pid)
            except OSError as e:
                log.warning("could not hand a connection to worker %d (%s); replacing it", i, e)
                self._replace(i)
                continue
            conn.close()
            return
        _refuse(conn, L.Status.BUSY, "the server could not place the connection; try again")

    def _choose(self, peer: int) -> int | None:
        """The worker for a new connection of process *peer*: the fewest
        connections among those not yet serving *peer*, else among all."""
        open_slots = [s for s in self._workers.slots
                      if s.ctrl is not None and s.proc is not None and s.conns < s.max_conns]
        if not open_slots:
            return None
        fresh = [s for s in open_slots if peer not in s.peers] or open_slots
        return min(fresh, key=lambda s: (s.conns, s.index)).index

    def _from_worker(self, i: int) -> None:
        slot = self._workers.slots[i]
        try:
            msg = control.recv(slot.ctrl, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            msg = None
        if msg is None:
            self._replace(i)
            return
        kind, tag, _body, fds = msg
        for fd in fds:
            os.close(fd)
        if kind == control.CLOSED:
            self._workers.closed(i, tag)

    def _replace(self, i: int) -> None:
        slot = self._workers.slots[i]
        pid, conns = slot.pid, slot.conns
        how = self._workers.stop(i, kill=True, wait=1.0)
        if self._stopping:
            return
        log.warning("worker %d (pid %s) %s; its %d connection(s) closed; starting a new one",
                    i, pid, how, conns)
        try:
            self._workers.start(i)
        except (ShmpoolError, OSError) as e:
            log.error("could not restart worker %d: %s", i, e)

    # -- stopping -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to stop (safe from a signal handler or another thread)."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        """Stop accepting, let workers answer what is waiting, end them."""
        self._stopping = True
        sock, self._listener = self._listener, None  # type: ignore[assignment]
        if sock is not None:
            sock.close()
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
        w, self._workers = self._workers, None  # type: ignore[assignment]
        if w is not None:
            for i in range(len(w.slots)):
                w.stop_gracefully(i)
            for slot in w.slots:
                if slot.proc is not None:
                    slot.proc.wait(5.0)
            w.close(wait=2.0)
            log.info("stopped")
        for fd in (self._spare, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._spare = self._wake_r = self._wake_w = -1


def _poll(fds: list[int]) -> list[int]:
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return [fd for fd, _ev in p.poll()]


def _refuse(conn: socket.socket, status: int, message: str) -> None:
    try:
        conn.setblocking(False)
        conn.send(L.pack_reply(L.Reply(status, 0, error_type="ServerUnavailable",
                                       message=message)), socket.MSG_NOSIGNAL)
    except OSError:
        pass
    conn.close()


def serve(socket_path: str | None = None, **kwargs) -> int:
    """Run a server in the foreground until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="shmpool serve: %(message)s")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        server = Server(socket_path, **kwargs)
    except (OSError, ShmpoolError, ValueError, TypeError) as e:
        log.error("cannot start: %s", e)
        return 2

    def on_signal(signum, _frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()
    return 0
