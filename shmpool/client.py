"""A Python host of ``shmpool serve``: docs/LAYOUT.md from Python, for
services outside the server's process (and for its tests).

    Client ──connect, check the server's uid, INFO──> server ──hands it to──> worker
           ──lanes: connections dialed as calls need them (the first ones────┘
             each to a different worker; at most 4 per worker)

A Client is safe to use from many threads: each call takes a lane (a
connection and its segments), dialing another while all are busy; a large
array is split over up to one lane per worker, like the Pool splits it.  A
lane that times out is closed, never reused (a late reply would be read as
the next one's).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time

import numpy as np

from . import layout as L
from ._backend.segment import Segment
from ._host import (
    LANE_INPUT,
    LANE_RESULT,
    Lane,
    LaneBroken,
    Lanes,
    LaneTimeout,
    Staging,
    Token,
    deadline_of,
    gather,
    result_capacity,
    run_split,
    run_whole,
)
from .errors import DetectTimeout, PoolClosed, ServerUnavailable, UntrustedServer, WorkerDied, from_status
from .server import default_socket_path, peer_cred


def connect(path: str, deadline: float | None) -> socket.socket:
    """A connection to the server at *path*, retried while its backlog is full
    (EAGAIN), checked to be a server of our own uid."""
    delay = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            break
        except BlockingIOError:
            sock.close()
            if deadline is not None and time.monotonic() + delay > deadline:
                raise ServerUnavailable(f"the server at {path} kept its backlog full until the "
                                        "timeout") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except OSError as e:
            sock.close()
            raise ServerUnavailable(f"cannot connect to {path}: {e.strerror or e}") from None
    try:
        _pid, uid = peer_cred(sock)
    except OSError as e:
        sock.close()
        raise ServerUnavailable(f"cannot check the server at {path}: {e}") from None
    if uid != os.geteuid():
        sock.close()
        raise UntrustedServer(f"the server at {path} runs as uid {uid}, not {os.geteuid()}; "
                              "refusing to send it anything")
    return sock


class Client:
    """Connections to one ``shmpool serve``.

    ``Client(socket_path=None, timeout=30.0)``: *timeout* (seconds, None or
    inf for none) bounds connecting and every call.
    """

    _lanes: Lanes = None  # type: ignore[assignment]   # None only while half-built
    _staging: Staging | None = None

    def __init__(self, socket_path: str | None = None, timeout: float | None = 30.0):
        self.path = socket_path or default_socket_path()
        self.timeout = timeout
        deadline_of(timeout)                      # checks it
        self._dial_lock = threading.Lock()
        self._staging = Staging(set())
        self._lanes = Lanes([])
        lane, info = self._dial()
        self._lanes.all.append(lane)
        self.workers = int(info.values[L.INFO_WORKERS])
        self.rows = L.parse_table(info.message)

    # -- lanes --------------------------------------------------------------------

    DIAL_ATTEMPTS = 3        # a worker that dies right after the handover costs a redial

    def _dial(self) -> tuple[Lane, L.Reply]:
        """A new lane and its worker's INFO reply."""
        for attempt in range(self.DIAL_ATTEMPTS):
            lane = Lane(connect(self.path, deadline_of(self.timeout)), len(self._lanes.all))
            try:
                return lane, self.info(lane)
            except ServerUnavailable:
                if attempt + 1 == self.DIAL_ATTEMPTS:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _segments(self, lane: Lane) -> None:
        if lane.data is None:
            lane.data = Segment.create(LANE_INPUT, L.KIND_DATA)
            lane.result = Segment.create(LANE_RESULT, L.KIND_RESULT)

    def _take(self, token: Token, want: int, deadline) -> list[Lane]:
        with self._dial_lock:
            while len(self._lanes.all) < want or self._lanes.busy() == len(self._lanes.all):
                if len(self._lanes.all) >= max(want, 4 * self.workers):
                    break
                lane, _info = self._dial()
                self._lanes.add(lane)
        return self._lanes.take(token, want, deadline, lambda: PoolClosed("the client is closed"))

    def _settle(self, token: Token, broken: Lane | None = None) -> None:
        try:
            for lane in self._lanes.held_by(token):
                if lane.pending or lane.doomed or lane is broken:
                    self._lanes.remove(lane)          # state unknown: never reused
                    lane.close()
        finally:
            self._lanes.release(token)
            if token.staged:
                self._staging.release(token)  # type: ignore[union-attr]

    # -- calls --------------------------------------------------------------------

    def info(self, lane: Lane | None = None) -> L.Reply:
        """The INFO reply of one connection's worker (docs/LAYOUT.md 2.5)."""
        if lane is None:
            return self.request(L.Request(L.Op.INFO))
        try:
            r = lane.reply(lane.exchange(lane.packet(L.Op.INFO, 0, 0, 0, 0, 0),
                                         deadline_of(self.timeout)))
        except (LaneBroken, LaneTimeout) as e:
            lane.close()
            raise ServerUnavailable(f"the server at {self.path} did not answer INFO: {e}") from None
        if r.status != L.Status.OK:
            lane.close()
            err = from_status(r.status, r.error_type, r.message)
            if r.status == L.Status.BUSY:
                raise ServerUnavailable(str(err)) from None
            raise err
        lane.worker, lane.pid = int(r.values[L.INFO_WORKER]), int(r.values[L.INFO_PID])
        return r

    def request(self, req: L.Request) -> L.Reply:
        """Send one request on a connection of its own and return the reply,
        whatever its status."""
        token = Token()
        try:
            [lane] = self._take(token, 1, deadline_of(self.timeout))
            lane.rid += 1
            return lane.reply(lane.exchange(L.pack_request(req._replace(request_id=lane.rid)),
                                            deadline_of(self.timeout)))
        except LaneTimeout:
            raise DetectTimeout(f"no reply within {self.timeout} s; the connection was "
                                "closed") from None
        except LaneBroken as e:
            raise ServerUnavailable(f"the server dropped the connection: {e}") from None
        finally:
            self._settle(token)

    def send_raw(self, packet: bytes) -> L.Reply:
        """Send any bytes as one packet; the reply (for tests of bad requests)."""
        token = Token()
        try:
            [lane] = self._take(token, 1, deadline_of(self.timeout))
            return L.unpack_reply(memoryview(lane.buf)[:lane.exchange(packet, deadline_of(self.timeout))])
        finally:
            self._settle(token)

    def ping(self) -> None:
        r = self.request(L.Request(L.Op.PING))
        if r.status != L.Status.OK:
            raise from_status(r.status, r.error_type, r.message)

    def detect_segments(self, data_name: str, start: int, count: int, out_name: str,
                        threshold: float = math.nan, nan_policy: int = L.POLICY_DEFAULT,
                        detector: int = 0) -> L.Reply:
        """DETECT over a data segment into a result segment, both of the caller's."""
        return self.request(L.Request(L.Op.DETECT, 0, start, count, 0, detector, nan_policy,
                                      () if math.isnan(threshold) else (threshold,),
                                      data_name, out_name))

    def detect(self, x, threshold: float = math.nan, nan_policy: int = L.POLICY_DEFAULT,
               detector: str | None = None) -> np.ndarray:
        """Copy x into shared memory and detect, split over the server's workers
        when it is large; returns a new array."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"detect() needs a 1-D array; got shape {x.shape}")
        row = 0 if detector is None else [r.name for r in self.rows].index(detector)
        params = () if math.isnan(threshold) else (float(threshold),)
        n = len(x)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        k = L.split_count(n, self.workers) if self.rows[row].split else 1
        deadline = deadline_of(self.timeout)
        for attempt in (0, 1):
            token = Token()
            broken = None
            try:
                lanes = self._take(token, k, deadline)
                for lane in lanes:
                    self._segments(lane)
                if k == 1:
                    return self._whole(token, lanes[0], x, row, nan_policy, params, deadline)
                return self._split(token, lanes, x, row, nan_policy, params, deadline)
            except LaneTimeout as e:
                broken = e.lane
                raise DetectTimeout(f"no reply within {self.timeout} s; the connection was "
                                    "closed") from None
            except LaneBroken as e:
                broken = e.lane
                if not e.sent and attempt == 0:
                    continue             # its worker had died while the connection idled
                raise WorkerDied(f"the worker serving this connection died during the call "
                                 f"({e})") from None
            finally:
                self._settle(token, broken)
        raise AssertionError("unreachable")

    def _whole(self, token: Token, lane: Lane, x: np.ndarray, row: int, policy: int, params,
               deadline):
        n = len(x)
        own = n <= lane.data.capacity
        if own:
            data = lane.data
        else:
            data = self._staging.take(token, n)  # type: ignore[union-attr]
            data.region()[:n] = x
            data.set_count(n)
        copy = x if own else None
        for _ in range(3):
            count, needed = run_whole(lane, data.name, 0, n, lane.result, row, policy,
                                      params, deadline, copy)
            if count == needed:
                return lane.result.region()[:count].copy()
            self._grow(lane, needed)
            copy = None                          # x is in the lane's input already
        raise ServerUnavailable("the answer kept outgrowing its result segment")

    def _split(self, token: Token, lanes: list[Lane], x: np.ndarray, row: int, policy: int,
               params, deadline):
        n = len(x)
        staging = self._staging.take(token, n)  # type: ignore[union-attr]
        staging.set_count(n)
        region = staging.region()
        parts = run_split(lanes, staging.name, 0, n, row, policy, params, deadline,
                          self._grow, lambda i, a, b: np.copyto(region[a:b], x[a:b]))
        return gather(parts, None)

    def _grow(self, lane: Lane, needed: int) -> None:
        old = lane.result
        lane.result = Segment.create(result_capacity(needed), L.KIND_RESULT)
        lane.template = None
        if old is not None:
            old.close()
            old.unlink()

    def close(self) -> None:
        lanes = self._lanes
        if lanes is None:
            return
        for lane in lanes.close():
            lane.close()
        if self._staging is not None:
            self._staging.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Client", "connect"]
