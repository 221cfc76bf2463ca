"""A Python host of ``shmpool serve``: the protocol of docs/LAYOUT.md from
Python, for services outside the server's process (and for its tests).

One Client is one connection: calls on it are serialised by a lock.
"""

from __future__ import annotations

import itertools
import socket
import threading

import numpy as np

from . import layout as L
from ._backend.segment import Segment
from .errors import PoolClosed, ProtocolError, from_status
from .server import default_socket_path


class Client:
    _sock: socket.socket | None = None

    def __init__(self, socket_path: str | None = None, timeout: float | None = 30.0):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._data: Segment | None = None
        self._out: Segment | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path or default_socket_path())
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def request(self, req: L.Request) -> L.Reply:
        """Send one request, return its reply (whatever its status)."""
        with self._lock:
            if self._sock is None:
                raise PoolClosed("the client is closed")
            self._sock.sendall(L.pack_request(req))
            buf = self._sock.recv(L.MAX_REPLY)
        if not buf:
            raise ConnectionResetError("shmpool server closed the connection")
        reply = L.unpack_reply(buf)
        if reply.request_id not in (req.request_id, 0):
            raise ProtocolError(f"reply for request {reply.request_id}, expected {req.request_id}")
        return reply

    def send_raw(self, packet: bytes) -> L.Reply:
        with self._lock:
            self._sock.sendall(packet)
            return L.unpack_reply(self._sock.recv(L.MAX_REPLY))

    def ping(self) -> None:
        r = self.request(L.Request(L.OP_PING, next(self._ids)))
        if r.status != L.Status.OK:
            raise from_status(r.status, r.error_type, r.message)

    def detect_segments(self, data_name: str, start: int, count: int, out_name: str,
                        threshold: float = float("nan"), nan_policy: int = L.POLICY_DEFAULT) -> L.Reply:
        return self.request(L.Request(L.OP_DETECT, next(self._ids), start, count, threshold,
                                      nan_policy, data_name, out_name))

    def detect(self, x, threshold: float = float("nan"), nan_policy: int = L.POLICY_DEFAULT) -> np.ndarray:
        """Copy x into this client's data segment and detect; returns a new array."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        n = len(x)
        if self._data is None or self._data.capacity < n:
            self._replace("_data", Segment.create(max(n, 1024), L.KIND_DATA))
        if self._out is None:
            self._replace("_out", Segment.create(1024, L.KIND_RESULT))
        self._data.region()[:n] = x
        self._data.set_count(n)
        while True:
            r = self.detect_segments(self._data.name, 0, n, self._out.name, threshold, nan_policy)
            if r.status == L.Status.TOO_SMALL:
                self._replace("_out", Segment.create(r.needed, L.KIND_RESULT))
                continue
            if r.status != L.Status.OK:
                raise from_status(r.status, r.error_type, r.message, r.traceback, r.needed)
            return self._out.region()[:r.count].copy()

    def _replace(self, attr: str, seg: Segment) -> None:
        old = getattr(self, attr)
        setattr(self, attr, seg)
        if old is not None:
            old.close()
            old.unlink()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for attr in ("_data", "_out"):
            seg = getattr(self, attr, None)
            if seg is not None:
                seg.close()
                seg.unlink()
            setattr(self, attr, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
