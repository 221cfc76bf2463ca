"""The host side of docs/LAYOUT.md: lanes, and calls over them.

    caller thread                   lane i (one connection)        worker i
    -------------                   -----------------------        --------
    whole call:  DETECT ─────────────────────────────────────────> detector
                 <──────────────── count ─────────────────────────  indices -> result seg
    split call:  SUMMARIZE chunk i on lane i, all sent first ─────> summary i
                 COMBINE the k summaries on lane 0 ───────────────> flag parameters
                 FLAG chunk i on lane i ──────────────────────────> indices -> lane i's
                 concatenate the lanes' result segments in order       result segment

The caller's thread does its own I/O (the GIL released while it waits), so
there is no dispatcher thread to hop through.  ``Lanes`` hands lanes to calls
by token, so an interrupt at any point can never leak one; the Pool (lanes
to its own workers) and the Client (lanes dialed to a server) differ only in
where lanes come from and what happens when one breaks.
"""

from __future__ import annotations

import errno
import math
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import NoReturn

import numpy as np

from . import layout as L
from ._backend.native import native
from ._backend.segment import Segment, new_name
from .errors import DetectTimeout, ProtocolError, ResultTooSmall, ShmpoolError, WorkerDied, from_status

LANE_INPUT = 1 << 16       # elements of each lane's own input segment
LANE_RESULT = 1 << 12      # initial indices of each lane's result segment
_HEAD = struct.Struct("<IHHQQQIIII")
_IDS = struct.Struct("<QQQQII")          # request_id, start, count, base, detector, nan_policy
_PARAMS = struct.Struct("<I8d")          # nparams, params
_NAN8 = (math.nan,) * L.MAX_PARAMS
_MAX_MS = 2 ** 31 - 1


def timeout_ms(deadline: float | None) -> int:
    if deadline is None:
        return -1
    left = deadline - time.monotonic()
    return 0 if left <= 0 else min(_MAX_MS, math.ceil(left * 1000))


def deadline_of(timeout: float | None) -> float | None:
    """A monotonic deadline; None (or inf) waits for ever; any finite value works."""
    if timeout is None or timeout == math.inf:
        return None
    if not (timeout >= 0):
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout


def result_capacity(needed: int) -> int:
    """The capacity of a lane's new result segment for *needed* indices: the
    next power of two, so a growing answer re-creates it rarely."""
    return 1 << max(needed - 1, 1).bit_length()


def _not_sent(e: OSError) -> bool:
    """Did the send itself fail (so nothing reached the worker)?"""
    return e.filename == "send" or e.errno in (errno.EPIPE, errno.ECONNREFUSED)


class LaneBroken(Exception):
    """The connection failed: .sent says whether the request reached the worker."""

    def __init__(self, message: str, sent: bool, lane: Lane):
        super().__init__(message)
        self.sent, self.lane = sent, lane


class LaneTimeout(TimeoutError):
    """No reply in time on .lane."""

    def __init__(self, lane: Lane):
        super().__init__(f"no reply from worker {lane.worker} in time")
        self.lane = lane


class Lane:
    """One connection to one worker, and the segments it reuses."""

    holder: weakref.ref | None = None   # the token of the call using it
    pending = 0                  # requests sent and not yet answered
    doomed = False               # its worker said it is ending (TIMEOUT, SHUTTING_DOWN, ...)
    # The lane's segments: None only until its owner attaches them (as every
    # class-level None in shmpool: a half-built object is a safe one).
    data: Segment = None  # type: ignore[assignment]    # input of small copy-in calls
    result: Segment = None  # type: ignore[assignment]

    def __init__(self, sock: socket.socket, index: int):
        self.sock, self.fd, self.index = sock, sock.fileno(), index
        self.worker, self.pid = index, 0
        self.buf = bytearray(L.MAX_REPLY)
        self.rid = 0
        self.template: bytearray | None = None   # a DETECT request for template_key's segments
        self.template_key: tuple[str, str] = ("", "")

    # -- requests -------------------------------------------------------------

    def packet(self, op: int, start: int, count: int, base: int, detector: int, policy: int,
               params=(), data_name: str = "", out_name: str = "", values=()) -> bytes:
        self.rid += 1
        return L.pack_request(L.Request(op, self.rid, start, count, base, detector, policy,
                                        tuple(params), data_name, out_name, tuple(values)))

    def detect_template(self, data_name: str, out_name: str) -> bytearray:
        """A DETECT request naming these segments, packed once while the lane
        keeps using them (the hot path fills in the numbers)."""
        key = (data_name, out_name)
        if self.template is None or self.template_key != key:
            self.template = bytearray(L.pack_request(L.Request(
                L.Op.DETECT, 0, data_name=data_name, out_name=out_name)))
            self.template_key = key
        return self.template

    def detect_packet(self, data_name: str, out_name: str, start: int, count: int,
                      detector: int, policy: int, params) -> bytearray:
        t = self.detect_template(data_name, out_name)
        self.rid += 1
        _IDS.pack_into(t, 8, self.rid, start, count, 0, detector, policy)
        _PARAMS.pack_into(t, 52, len(params), *params, *_NAN8[len(params):])
        return t

    def send(self, packet) -> None:
        self.pending += 1                # first: an interrupt after the send leaves it counted
        try:
            if native is not None:
                native.send(self.fd, packet)
            else:
                self.sock.send(packet, socket.MSG_NOSIGNAL)
        except OSError as e:
            self.pending -= 1
            raise LaneBroken(f"sending to worker {self.worker}: {e.strerror or e}", False, self) from None

    def recv(self, deadline: float | None) -> int:
        """Receive one reply into self.buf; its length.  TimeoutError, or
        LaneBroken at end-of-file."""
        ms = timeout_ms(deadline)
        try:
            if native is not None:
                n = native.recv_into(self.fd, self.buf, ms)
            else:
                n = _recv_into(self.sock, self.buf, ms)
        except OSError as e:
            raise LaneBroken(f"worker {self.worker}: {e.strerror or e}", True, self) from None
        return self.arrived(n)

    def arrived(self, n: int | None) -> int:
        """A receive's outcome: its length, or LaneTimeout (None) or LaneBroken (0)."""
        if n is None:
            raise LaneTimeout(self)
        if n == 0:
            raise LaneBroken(f"worker {self.worker} closed the connection", True, self)
        self.pending -= 1
        return n

    def exchange(self, packet, deadline: float | None) -> int:
        """send + recv in one native call when there is one."""
        if native is None:
            self.send(packet)
            return self.recv(deadline)
        self.pending += 1
        try:
            n = native.exchange(self.fd, packet, self.buf, timeout_ms(deadline))
        except OSError as e:
            raise self.failed(e) from None
        return self.arrived(n)

    def failed(self, e: OSError) -> LaneBroken:
        """The error for an exchange the OS refused; a send that failed ran nothing."""
        sent = not _not_sent(e)
        if not sent:
            self.pending -= 1
        return LaneBroken(f"worker {self.worker}: {e.strerror or e}", sent, self)

    def alive(self) -> bool:
        """False when the worker's end is closed (it died while idle)."""
        p = select.poll()
        p.register(self.fd, select.POLLIN | select.POLLRDHUP)
        return not p.poll(0)

    def head(self, n: int) -> tuple:
        """(status, request_id, count, needed, nvalues) of the reply in buf, checked."""
        if n < L.REPLY_HEAD_SIZE:
            raise ProtocolError(f"reply of {n} bytes from worker {self.worker}")
        magic, version, status, rid, count, needed, tl, ml, tbl, nv = _HEAD.unpack_from(self.buf)
        if magic != L.REPLY_MAGIC or version != L.VERSION or rid != self.rid and rid != 0:
            raise ProtocolError(f"worker {self.worker} sent reply {rid} (v{version}) to request "
                                f"{self.rid}")
        return status, rid, count, needed, nv

    def reply(self, n: int) -> L.Reply:
        r = L.unpack_reply(memoryview(self.buf)[:n])
        if r.request_id not in (self.rid, 0):
            raise ProtocolError(f"worker {self.worker} answered request {r.request_id}, "
                                f"not {self.rid}")
        return r

    def close(self) -> None:
        self.sock.close()
        for seg in (self.data, self.result):
            if seg is not None:
                seg.close()
                seg.unlink()
        self.data = self.result = None  # type: ignore[assignment]
        self.template = None


def _recv_into(sock: socket.socket, buf: bytearray, ms: int):
    if ms >= 0:
        p = select.poll()
        p.register(sock, select.POLLIN)
        if not p.poll(ms):
            return None
        try:
            return sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
    return sock.recv_into(buf)


ENDING = (L.Status.TIMEOUT, L.Status.SHUTTING_DOWN, L.Status.BUSY, L.Status.NOT_PERMITTED)


def raise_for(lane: Lane, n: int, capacity: int = 0) -> NoReturn:
    r = lane.reply(n)
    if r.status in ENDING:
        lane.doomed = True           # its worker (or the server) is closing the connection
    raise from_status(r.status, r.error_type, r.message, r.traceback, r.needed, capacity)


class Token:
    """One call's claim on its lanes: lives exactly as long as the call's frame."""

    __slots__ = ("__weakref__", "staged")

    def __init__(self):
        self.staged = False          # it holds a Staging segment


class Staging:
    """Large input segments, reused by the calls that copy their input in.

    A new segment per call costs more than the copy it holds: the pages
    fault in on the host and again in every worker, and each worker maps a
    new name.  A call holds a segment while its token lives (as with lanes),
    so an interrupted call can never hand its segment to another call
    mid-copy; ``release`` gives it back at once.  At most ``kept`` free
    segments stay; the rest are destroyed.
    """

    def __init__(self, owned: set[str], kept: int = 4):
        self.owned, self.kept = owned, kept       # owned: the owner's names to unlink at close
        self.mutex = threading.Lock()
        self.held: list[list] = []     # [segment, weakref to the holding token or None]

    def take(self, token: Token, n: int) -> Segment:
        """The smallest free segment holding n values (at most twice n), else a new one."""
        ref = weakref.ref(token)
        token.staged = True
        with self.mutex:
            best = None
            for entry in self.held:
                cap = entry[0].capacity
                if _unheld(entry) and n <= cap <= 2 * n and (best is None or cap < best[0].capacity):
                    best = entry
            if best is not None:
                best[1] = ref
                return best[0]
        segment = owned_segment(self.owned, -(-n // LANE_INPUT) * LANE_INPUT, L.KIND_DATA)
        with self.mutex:
            self.held.append([segment, ref])
            free = [e for e in self.held if _unheld(e)]
            drop = free[:max(0, len(free) - self.kept)]
            for e in drop:
                self.held.remove(e)
        for e in drop:
            destroy_owned(self.owned, e[0])
        return segment

    def release(self, token: Token) -> None:
        with self.mutex:
            for entry in self.held:
                if entry[1] is not None and entry[1]() is token:
                    entry[1] = None

    def segments(self) -> list[Segment]:
        with self.mutex:
            return [entry[0] for entry in self.held]

    def clear(self) -> None:
        """Destroy every segment (the owner is closing; live calls have ended)."""
        with self.mutex:
            held, self.held = self.held, []
        for entry in held:
            destroy_owned(self.owned, entry[0])


def _unheld(entry: list) -> bool:
    return entry[1] is None or entry[1]() is None


def owned_segment(owned: set[str], capacity: int, kind: int) -> Segment:
    """A new segment whose name is in *owned* before it exists, so that
    whatever interrupts the creation, the owner's close unlinks it."""
    name = new_name()
    owned.add(name)
    return Segment.create(capacity, kind, name)


def destroy_owned(owned: set[str], segment: Segment) -> None:
    """Unlink a segment of *owned*; workers unmap it within a second."""
    segment.unlink()
    segment.close()
    owned.discard(segment.name)


class Lanes:
    """Lanes handed to calls by token.

    A lane belongs to a call while the call's token object lives (a weak
    reference): however a call ends, even by an interrupt inside its own
    cleanup, its lanes come back when its frame is gone.  A lane given back
    with a request still unanswered (``pending``) is the taker's to retire.

    Only C-level locks are held, and only in ``with`` statements, where
    CPython delivers no signal between acquiring and the protected block;
    a waiter sleeps on a lock of its own (threading.Condition is Python code,
    so a Ctrl-C inside it can leave its lock held).
    """

    WAIT_SLICE = 0.05            # waiters look again this often for lanes freed by death

    def __init__(self, lanes: list[Lane]):
        self.all = lanes
        self.mutex = threading.Lock()
        self.waiters: list = []
        self.closed = False

    @staticmethod
    def _free(lane: Lane) -> bool:
        h = lane.holder
        return h is None or h() is None

    def take(self, token: Token, want: int, deadline: float | None,
             closed_error: Callable[[], Exception]) -> list[Lane]:
        ref = weakref.ref(token)
        if want == 1:                                # the common case, in one pass
            with self.mutex:
                if not self.closed:
                    for lane in self.all:
                        h = lane.holder
                        if h is None or h() is None:
                            lane.holder = ref
                            return [lane]
        while True:
            with self.mutex:
                if self.closed:
                    raise closed_error()
                free = [lane for lane in self.all if self._free(lane)]
                if len(free) >= want:
                    for lane in free[:want]:
                        lane.holder = ref            # one store each
                    return free[:want]
                waiter = threading.Lock()
                waiter.acquire()
                self.waiters.append(waiter)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DetectTimeout(f"timed out waiting for {want} idle worker(s)")
            waiter.acquire(True, self.WAIT_SLICE if left is None else min(left, self.WAIT_SLICE))

    def wake(self) -> None:
        with self.mutex:
            waiters, self.waiters = self.waiters, []
        for w in waiters:
            try:
                w.release()
            except RuntimeError:                     # it woke by itself already
                pass

    def give_back(self, lanes: list[Lane]) -> None:
        """Release the lanes of a call that ended well (nothing pending)."""
        for lane in lanes:
            lane.holder = None                       # one store each: no lock needed
        self.wake()

    def release(self, token: Token) -> None:
        for lane in self.all:
            h = lane.holder
            if h is not None and h() is token:
                lane.holder = None                   # one store each: no lock needed
        self.wake()

    def add(self, lane: Lane) -> None:
        with self.mutex:
            self.all.append(lane)

    def remove(self, lane: Lane) -> None:
        with self.mutex:
            if lane in self.all:
                self.all.remove(lane)

    def close(self) -> list[Lane]:
        with self.mutex:
            self.closed = True
        self.wake()
        return list(self.all)

    def held_by(self, token: Token) -> list[Lane]:
        return [lane for lane in self.all if lane.holder is not None and lane.holder() is token]

    def busy(self) -> int:
        return sum(1 for lane in self.all if not self._free(lane))


# -- one call -------------------------------------------------------------------------

def run_whole(lane: Lane, data_name: str, start: int, n: int, out: Segment, row: int,
              policy: int, params, deadline: float | None, x: np.ndarray | None = None
              ) -> tuple[int, int]:
    """DETECT on one lane into *out*; (count, needed).  Raises the worker's
    error.  With *x* (contiguous float64, n values), x is first copied into
    the lane's own input segment, which *data_name* then names."""
    if native is not None:
        template = lane.detect_template(data_name, out.name)
        lane.rid += 1
        lane.pending += 1
        try:
            got = native.whole(lane.fd, template, lane.buf, timeout_ms(deadline), lane.rid,
                               start, n, row, policy, params,
                               lane.data._mmap if x is not None else None, x)
        except OSError as e:
            raise lane.failed(e) from None
        if got is None:
            raise LaneTimeout(lane)
        length, status, count, needed = got
        lane.arrived(length)
        if status < 0:
            lane.head(length)                 # raises ProtocolError with the details
    else:
        if x is not None:
            np.copyto(lane.data.region()[:n], x)
            lane.data.set_count(n)
        packet = lane.detect_packet(data_name, out.name, start, n, row, policy, params)
        length = lane.exchange(packet, deadline)
        status, _rid, count, needed, _nv = lane.head(length)
    if status == L.Status.OK:
        return count, needed
    if status == L.Status.TOO_SMALL:
        return 0, needed
    raise_for(lane, length, out.capacity)


def run_split(lanes: list[Lane], data_name: str, start: int, n: int, row: int, policy: int,
              params, deadline: float | None, grow: Callable[[Lane, int], None],
              place: Callable[[int, int, int], None] | None = None) -> list[tuple[Lane, int]]:
    """LAYOUT.md 5 over these lanes: [(lane, count)] in chunk order, the indices
    in each lane's result segment.  *place(i, a, b)*, if given, fills chunk i
    of the data just before its SUMMARIZE goes (copy overlaps compute)."""
    chunks = L.split(n, len(lanes))
    for i, (lane, (a, b)) in enumerate(zip(lanes, chunks)):
        if place is not None:
            place(i, a, b)
        lane.send(lane.packet(L.Op.SUMMARIZE, start + a, b - a, a, row, policy, params, data_name))
    summaries: list[float] = []
    failure = None
    for lane in lanes:
        got = lane.recv(deadline)
        status, _rid, _c, _nd, nv = lane.head(got)
        if status != L.Status.OK:
            failure = failure or (lane, got)
            continue
        summaries.extend(struct.unpack_from(f"<{nv}d", lane.buf, L.REPLY_HEAD_SIZE))
    if failure is not None:
        raise_for(*failure)
    lane0 = lanes[0]
    got = lane0.exchange(lane0.packet(L.Op.COMBINE, 0, len(lanes), 0, row, policy, params,
                                      values=summaries), deadline)
    status, _rid, _c, _nd, nv = lane0.head(got)
    if status != L.Status.OK:
        raise_for(lane0, got)
    if nv == 0:
        return []
    cut = struct.unpack_from(f"<{nv}d", lane0.buf, L.REPLY_HEAD_SIZE)
    todo = list(range(len(lanes)))
    counts = [0] * len(lanes)
    for _attempt in range(3):
        for i in todo:
            a, b = chunks[i]
            lane = lanes[i]
            lane.send(lane.packet(L.Op.FLAG, start + a, b - a, a, row, policy, cut, data_name,
                                  lane.result.name))
        again, failure = [], None
        for i in todo:
            lane = lanes[i]
            got = lane.recv(deadline)
            status, _rid, count, needed, _nv = lane.head(got)
            if status == L.Status.OK:
                counts[i] = count
            elif status == L.Status.TOO_SMALL:
                grow(lane, needed)
                again.append(i)
            else:
                failure = failure or (lane, got)
        if failure is not None:
            raise_for(*failure)
        if not again:
            return list(zip(lanes, counts))
        todo = again
    raise ShmpoolError("a chunk's answer kept outgrowing its result segment")


def gather(parts: list[tuple[Lane, int]], out: Segment | None) -> np.ndarray:
    """Concatenate the chunks' indices into a new array or *out* (a result segment)."""
    needed = sum(c for _, c in parts)
    if out is None:
        result = np.empty(needed, dtype=np.int64)
        dest = result
    else:
        if needed > out.capacity:
            out.set_result(0, L.Status.TOO_SMALL, needed)
            raise ResultTooSmall(too_small_message(needed, out.capacity), needed, out.capacity)
        dest = out.region()
    pos = 0
    for lane, c in parts:
        dest[pos:pos + c] = lane.result.region()[:c]
        pos += c
    if out is None:
        return result
    out.set_result(needed, L.Status.OK, needed)
    return dest[:needed]


def too_small_message(needed: int, capacity: int) -> str:
    return (f"the answer has {needed} indices; the return segment holds {capacity}; its count "
            "is 0 and its region's contents are unspecified (partly overwritten)")


def died(lane: Lane, how: str) -> WorkerDied:
    return WorkerDied(f"worker {lane.worker} (pid {lane.pid or '?'}) died during the call: {how}")
