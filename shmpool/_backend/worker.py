"""The worker process: wait for a message, run a kernel on a mapped segment, reply.

A worker owns nothing: it maps the segments a message names (data read-only,
results read-write), keeps a bounded cache of those mappings, and exits when
its socket reaches end-of-file or its host process is gone.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict

import numpy as np

from .. import detectors
from .. import layout as L
from ..errors import DetectorError, SegmentLayoutError, ShmpoolError
from . import wire
from .segment import SHM_DIR, Segment, process_start
from .sockets import recv_spinning

MAPPINGS_KEPT = 32        # mapped segments cached per worker
HOST_CHECK_SECONDS = 0.5  # how often a worker checks that its host lives
SPIN_SECONDS = 300e-6    # poll for the next request this long before sleeping
SWEEP_SECONDS = 1.0      # an idle worker unmaps unlinked foreign segments this often
SWEEP_CALLS = 256        # ... and a busy one every this many requests


class _Mappings:
    """name -> mapped Segment, least recently used dropped first."""

    def __init__(self):
        self._maps: OrderedDict[tuple[str, int], tuple[Segment, tuple]] = OrderedDict()

    def get(self, name: str, kind: int, verify: bool) -> Segment:
        """The mapped segment; with *verify* (segments of foreign hosts) the
        file and header are checked again on every call, since their host
        may recreate, shrink, chmod or scribble over them between calls."""
        key = (name, kind)
        hit = self._maps.get(key)
        if hit is not None and verify:
            try:
                st = os.stat(os.path.join(SHM_DIR, name), follow_symlinks=False)
                ident = (st.st_ino, st.st_size, st.st_mode, st.st_uid)
            except FileNotFoundError:
                ident = None
            if ident != hit[1]:
                self.forget(name)              # re-attach: every check runs again
                hit = None
            else:
                why = L.check_header(hit[0].header(), kind, hit[0].size)
                if why is not None:
                    raise SegmentLayoutError(f"segment {name!r}: {why}")
        if hit is not None:
            self._maps.move_to_end(key)
            return hit[0]
        seg = Segment.attach(name, kind, writable=(kind == L.KIND_RESULT))
        self._maps[key] = (seg, seg.ident if verify else None)
        while len(self._maps) > MAPPINGS_KEPT:
            self._maps.popitem(last=False)[1][0].close()
        return seg

    def sweep(self) -> None:
        """Unmap foreign segments whose file is gone (their host unlinked
        them), so a host that makes and drops segments never pins memory."""
        for (name, kind), (seg, ident) in list(self._maps.items()):
            if ident is not None and not os.path.exists(os.path.join(SHM_DIR, name)):
                self.forget(name)

    def forget(self, name: str) -> None:
        for kind in (L.KIND_DATA, L.KIND_RESULT):
            hit = self._maps.pop((name, kind), None)
            if hit is not None:
                hit[0].close()


class _Worker:
    def __init__(self, sock: socket.socket, detector):
        self.sock = sock
        self.detector = detector          # None: the classic kernel
        self.maps = _Mappings()
        self.pending: np.ndarray | None = None

    def data(self, req: wire.Req) -> np.ndarray:
        seg = self.maps.get(req.data_name, L.KIND_DATA, bool(req.flags & wire.VERIFY))
        valid = min(seg.count, seg.capacity)   # re-read: the host sets it per call
        if req.start + req.count > valid:
            err = SegmentLayoutError(f"elements [{req.start}, {req.start + req.count}) are outside the "
                               f"{valid} valid elements of segment {req.data_name!r}")
            err.status = L.Status.OUT_OF_RANGE
            raise err
        return seg.region()[req.start:req.start + req.count]

    def out(self, req: wire.Req) -> Segment:
        return self.maps.get(req.out_name, L.KIND_RESULT, bool(req.flags & wire.VERIFY))

    def answer(self, req: wire.Req, idx: np.ndarray) -> wire.Rep:
        """Write a computed answer into the result segment, or keep it."""
        out = self.out(req)
        n = len(idx)
        if n > out.capacity - req.out_off:
            return self.keep(req, out, idx)
        out.region()[req.out_off:req.out_off + n] = idx
        return self.done(req, out, n)

    def flag(self, req: wire.Req, x: np.ndarray, mean: float, cut: float, policy: str) -> wire.Rep:
        """Pass 2 writing straight into the result segment."""
        out = self.out(req)
        n = detectors.flag_into(x, mean, cut, req.base, policy, out.region()[req.out_off:])
        if n > out.capacity - req.out_off:
            return self.keep(req, out, detectors.chunk_threshold(x, mean, cut, req.base, policy))
        return self.done(req, out, n)

    def keep(self, req: wire.Req, out: Segment, idx: np.ndarray) -> wire.Rep:
        self.pending = idx
        if req.out_off == 0:
            out.set_result(L.Status.TOO_SMALL, 0, len(idx))
        return wire.Rep(L.Status.OK, 0, len(idx), fits=0)

    def done(self, req: wire.Req, out: Segment, n: int) -> wire.Rep:
        if req.out_off == 0:
            out.set_result(L.Status.OK, n, n)
        self.pending = None
        return wire.Rep(L.Status.OK, n, n)

    def handle(self, req: wire.Req) -> wire.Rep | None:
        policy = wire.POLICY_NAMES[req.policy]
        if req.op == wire.FORGET:
            self.maps.forget(req.data_name)
            self.maps.forget(req.out_name)
            return None
        if req.op == wire.WRITE:
            idx, self.pending = self.pending, None
            if idx is None:
                raise ShmpoolError("WRITE without a kept answer")
            return self.answer(req, idx)
        self.pending = None
        x = self.data(req)
        if req.op == wire.STATS:
            s = detectors.chunk_stats(x, policy)
            return wire.Rep(L.Status.OK, n=s.n, nonfinite=s.nonfinite,
                            first_nonfinite=s.first_nonfinite, mean=s.mean, m2=s.m2)
        if req.op == wire.THRESH:
            return self.flag(req, x, req.mean, req.cut, policy)
        if req.op == wire.DETECT:
            if self.detector is not None:
                return self.answer(req, detectors.check_indices(self.detector(x, req.threshold), len(x)))
            lim = detectors.limits(detectors.chunk_stats(x, policy), req.threshold, policy)
            if lim is None:
                return self.answer(req, x[:0].astype(np.int64))
            return self.flag(req, x, lim[0], lim[1], policy)
        raise ShmpoolError(f"unknown op {req.op}")

    def serve(self) -> None:
        sock = self.sock
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        calls = 0
        while True:
            try:
                msg = recv_spinning(sock, poller, wire.REQ_SIZE, SPIN_SECONDS,
                                    int(SWEEP_SECONDS * 1000))
            except OSError:
                return
            calls += 1
            if msg is None or calls % SWEEP_CALLS == 0:
                self.maps.sweep()
            if msg is None:
                continue
            if not msg:
                return                          # end-of-file: the host is done with us
            try:
                rep = self.handle(wire.unpack_req(msg))
            except Exception as e:  # noqa: BLE001 - every failure becomes a reply
                self.pending = None
                rep = error_rep(e)
            if rep is not None:
                try:
                    sock.sendall(wire.pack_rep(rep))
                except OSError:
                    return


def watch_host(host: tuple[int, int]) -> None:
    """Exit when the host process is gone, even in the middle of a call.

    End-of-file on the socket tells an idle worker; this thread also ends a
    busy one (a detector stuck for minutes), since kernels release the GIL.
    """
    def loop():
        while process_start(host[0]) == host[1]:
            time.sleep(HOST_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=loop, name="shmpool-host-watch", daemon=True).start()


def error_rep(e: BaseException) -> wire.Rep:
    if isinstance(e, DetectorError):          # raised by shmpool on the detector's behalf
        return wire.Rep(e.status, error_type=e.remote_type or type(e).__name__,
                        message=str(e.args[0]) if e.args else "", traceback=e.remote_traceback)
    if isinstance(e, ShmpoolError):
        return wire.Rep(e.status, error_type=type(e).__name__, message=str(e))
    return wire.Rep(L.Status.DETECTOR_ERROR, error_type=type(e).__name__, message=str(e),
                    traceback=traceback.format_exc())


def main(sock: socket.socket, spec: str, host: tuple[int, int], close_fds: list[int],
         memory_limit: int | None = None) -> None:
    """Entry point of a worker process (any start method)."""
    for fd in close_fds:       # fork: the host's ends of every socket, or EOF never comes
        try:
            os.close(fd)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the host's to handle
    np.seterr(all="ignore")    # overflow is reported by value (NonFiniteError), not as noise
    if memory_limit:
        # RLIMIT_DATA caps the heap and private mappings (a detector's
        # allocations), not the shared segments this worker maps.
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
    watch_host(host)
    try:
        detector = None if spec == detectors.CLASSIC else detectors.load(spec)
    except BaseException as e:  # noqa: BLE001 - reported to the host, then exit
        sock.sendall(wire.pack_rep(wire.Rep(L.Status.DETECTOR_ERROR, error_type=type(e).__name__,
                                            message=f"cannot load detector {spec!r}: {e}",
                                            traceback=traceback.format_exc())))
        return
    sock.sendall(wire.pack_rep(wire.Rep(L.Status.OK)))      # ready
    _Worker(sock, detector).serve()
