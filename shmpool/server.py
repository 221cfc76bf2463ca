"""``shmpool serve``: a Pool behind a Unix socket, for hosts in any language.

    host (Go, C, ...)                 server (this module)          worker
    -----------------                 --------------------          ------
    creates data + result segments
    writes data ──────────────────────────────────────────────────> maps data read-only
    DETECT request ──SEQPACKET──>     validates the message,
                                      Pool.detect_segments() ──────> kernel; writes indices
    reads result  <────────────────────────────────────────────────  into the host's
                  <──SEQPACKET──      reply (count | error)          result segment

One thread per connection reads requests in order and answers each; the
pool does the rest.  Messages are validated by shmpool.layout before any
worker sees them; segments are validated (name, owner, mode, header, range)
by the worker that maps them.  A connection that closes, or whose host dies,
costs nothing but the call it had in flight; its mappings are dropped.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import stat
import struct
import threading

from . import layout as L
from .errors import DetectorError, ShmpoolError
from ._backend.sockets import recv_spinning
from .pool import Pool

log = logging.getLogger("shmpool.serve")

MAX_CONNECTIONS = 1024
SPIN_SECONDS = 300e-6      # a connection thread polls this long for the next request
SEND_SECONDS = 5.0         # a host that reads no replies for this long is dropped
POLICY_BY_CODE = {L.POLICY_PROPAGATE: "propagate", L.POLICY_OMIT: "omit", L.POLICY_RAISE: "raise"}
_UCRED = struct.Struct("3i")


def default_socket_path() -> str:
    return os.environ.get("SHMPOOL_SOCKET") or f"/tmp/shmpool-{os.geteuid()}.sock"


def peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


def error_reply(request_id: int, e: BaseException) -> L.Reply:
    if isinstance(e, L.DecodeError):
        return L.Reply(e.status, e.request_id, error_type="ProtocolError", message=str(e))
    if isinstance(e, DetectorError):
        return L.Reply(e.status, request_id, error_type=e.remote_type or type(e).__name__,
                       message=str(e.args[0]) if e.args else "", traceback=e.remote_traceback)
    if isinstance(e, ShmpoolError):
        return L.Reply(e.status, request_id, error_type=type(e).__name__, message=str(e))
    return L.Reply(L.Status.INTERNAL, request_id, error_type=type(e).__name__,
                   message=f"internal error: {e}")


class Server:
    """Owns the listening socket and the pool; ``run()`` until ``stop()``."""

    _listener: socket.socket | None = None
    _path = ""

    def __init__(self, socket_path: str | None = None, **pool_kwargs):
        self._path = socket_path or default_socket_path()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = self._bind(self._path)
        try:
            self.pool = Pool(**pool_kwargs)
        except BaseException:
            self._close_listener()
            raise

    @property
    def path(self) -> str:
        return self._path

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
        sock.listen(128)
        sock.settimeout(0.2)                          # to notice stop() promptly
        return sock

    def run(self) -> None:
        log.info("listening on %s: %d workers, detector %s, threshold %g, nan_policy %s",
                 self._path, self.pool.workers, self.pool.detector, self.pool.threshold,
                 self.pool.nan_policy)
        try:
            while not self._stopping.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    raise
                self._admit(conn)
        finally:
            self.close()

    def _admit(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        try:
            uid = peer_uid(conn)
        except OSError:
            conn.close()
            return
        if uid != os.geteuid():
            log.warning("refused a connection from uid %d", uid)
            conn.close()
            return
        with self._lock:
            if len(self._conns) >= MAX_CONNECTIONS:
                busy = True
            else:
                busy = False
                self._conns.add(conn)
        if busy:
            _send(conn, L.Reply(L.Status.SHUTTING_DOWN, 0, error_type="Busy",
                                message=f"server has {MAX_CONNECTIONS} connections"))
            conn.close()
            return
        threading.Thread(target=self._serve_conn, args=(conn,), daemon=True,
                         name="shmpool-conn").start()

    def _serve_conn(self, conn: socket.socket) -> None:
        names: set[str] = set()
        conn.setblocking(False)
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        try:
            while True:
                try:                                    # one byte more: an oversize packet shows
                    msg = recv_spinning(conn, poller, L.REQUEST_SIZE + 1, SPIN_SECONDS, None)
                except OSError:
                    break
                if not msg and _hung_up(conn):
                    break                               # end-of-file, not an empty packet
                reply = self.handle(msg, names)
                if not _send(conn, reply):
                    break
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            if names:
                self.pool.forget_segments(sorted(names))

    def handle(self, msg: bytes, names: set[str] | None = None) -> L.Reply:
        """The reply to one request packet; never raises."""
        rid = 0
        try:
            req = L.unpack_request(msg)
            rid = req.request_id
            if self._stopping.is_set():
                return L.Reply(L.Status.SHUTTING_DOWN, rid, error_type="PoolClosed",
                               message="the server is stopping")
            if req.op == L.OP_PING:
                return L.Reply(L.Status.OK, rid)
            if names is not None:
                names.update((req.data_name, req.out_name))
            written, needed = self.pool.detect_segments(
                req.data_name, req.start, req.count, req.out_name,
                threshold=None if req.threshold != req.threshold else req.threshold,
                nan_policy=POLICY_BY_CODE.get(req.nan_policy))
            if written < needed:
                return L.Reply(L.Status.TOO_SMALL, rid, 0, needed, error_type="ResultTooSmall",
                               message=f"the answer has {needed} indices; the result segment "
                                       f"{req.out_name!r} is smaller; no index was written")
            return L.Reply(L.Status.OK, rid, written, needed)
        except Exception as e:  # noqa: BLE001 - every failure is a reply, never a crash
            return error_reply(rid, e)

    def stop(self) -> None:
        self._stopping.set()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        self._stopping.set()
        self._close_listener()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.pool.close(timeout=2.0)
        log.info("stopped")


def _hung_up(conn: socket.socket) -> bool:
    """After a zero-length read: did the peer close, or send an empty packet?"""
    p = select.poll()
    p.register(conn, select.POLLRDHUP | select.POLLHUP)
    return bool(p.poll(0))


def _send(conn: socket.socket, reply: L.Reply) -> bool:
    packet = L.pack_reply(reply)
    try:
        try:
            conn.send(packet)
        except BlockingIOError:              # the host is not reading its replies
            p = select.poll()
            p.register(conn, select.POLLOUT)
            if not p.poll(int(SEND_SECONDS * 1000)):
                return False
            conn.send(packet)
        return True
    except OSError:
        return False


def serve(socket_path: str | None = None, **pool_kwargs) -> int:
    """Run a server in the foreground until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="shmpool serve: %(message)s")
    pool_kwargs = {k: v for k, v in pool_kwargs.items() if v is not None}
    try:
        server = Server(socket_path, **pool_kwargs)
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
