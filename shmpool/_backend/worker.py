"""A worker process: answer hosts' requests (docs/LAYOUT.md) over mapped segments.

    supervisor ──ctrl (control.py)──┐
                                    │      ┌─ native loop (_native.Loop, no GIL):
    host ──connection 1─────────────┼─────>┤  PING, and DETECT/SUMMARIZE/FLAG of
    host ──connection N─────────────┘      │  the classic detector on finite data
                                           └─ Handler (here, Python): everything
                                              else: INFO, COMBINE, user detectors,
                                              non-finite data, every error reply

A worker owns nothing: it maps the segments requests name (data read-only,
results read-write) in a Cache that follows the segments' lives, answers the
requests of each connection in order, and exits when its control socket
closes (its supervisor is gone), even in the middle of a call.  Without the
C extension the Python loop below does the native loop's work too.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np

from .. import detectors
from .. import layout as L
from ..errors import DetectorError, SegmentLayoutError, ShmpoolError, from_status
from . import control
from .mappings import Cache as PyCache
from .mappings import CacheError as PyCacheError
from .native import native

SWEEP_SECONDS = 1.0       # unmap unlinked segments about this often
SEND_WAIT_SECONDS = 5.0   # a host that reads no replies this long is dropped
EXIT_TIMEOUT = 124        # exit code after the server's --timeout ended a call
_CACHE_ERRORS = (PyCacheError,) + ((native.CacheError,) if native is not None else ())


class BadValue(ValueError):
    """A request value out of range: answered BAD_VALUE."""


def safe_str(e: BaseException) -> str:
    """str(e), even when the exception's __str__ itself raises."""
    try:
        return str(e)
    except BaseException as inner:  # noqa: BLE001 - a broken __str__ must not kill the worker
        return f"<{type(e).__name__} whose str() raised {type(inner).__name__}>"


def safe_traceback(e: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(e), e, e.__traceback__))
    except BaseException:  # noqa: BLE001 - formatting calls str(e), which may raise
        tb = "".join(traceback.format_tb(e.__traceback__))
        return f"Traceback (most recent call last):\n{tb}{type(e).__name__}: {safe_str(e)}\n"


def _array(region, dtype, start: int = 0, count: int | None = None) -> np.ndarray:
    whole = region.array(dtype) if hasattr(region, "array") else np.frombuffer(region, dtype=dtype)
    return whole[start:] if count is None else whole[start:start + count]


_ROW_PYTHON, _ROW_CLASSIC, _ROW_WHOLE = 0, 1, 2     # serve.h's row kinds


class Handler:
    """The Python answer to any request: LAYOUT.md 2.5-2.7 to the letter."""

    def __init__(self, rows: list[detectors.Row], cache, workers: int, index: int,
                 nan_policy: str):
        self.rows, self.cache = rows, cache
        self.workers, self.index, self.nan_policy = workers, index, nan_policy
        self.table = L.format_table([r.table_row() for r in rows])
        self._kwargs: dict[tuple, dict[str, Any]] = {}   # (row, params, policy) -> fn's keywords

    def call(self, loop, ev: tuple) -> None:
        """A whole-array DETECT the C loop checked and mapped (EV_CALL): run the
        function, let C write and send the answer; errors take reply()'s path."""
        _, fd, _tag, rid, row, policy, _base, params, data, start, count, out = ev
        try:
            kw = self._keywords(row, params, policy)
            x = np.frombuffer(data, np.float64, count, 8 * start)
            idx = np.asarray(self.rows[row].impl.fn(x, **kw))
            if not loop.finish(idx):
                loop.finish(detectors.check_indices(idx, count))
        except Exception as e:  # noqa: BLE001 - every failure is a reply, never a crash
            status, etype, message, tb = self._describe(e)
            out.set_result(0, status, 0)
            loop.reply(fd, L.pack_reply(L.Reply(status, rid, error_type=etype, message=message,
                                                traceback=tb)))

    def _keywords(self, row: int, params: tuple, policy: int) -> dict[str, Any]:
        """The function's keyword arguments for these request values (cached)."""
        key = (row, params, policy)
        kw = self._kwargs.get(key)
        if kw is None:
            r = self.rows[row]
            try:
                p = r.params(params, L.POLICY_NAMES.get(policy, self.nan_policy))
            except ValueError as e:
                raise BadValue(safe_str(e)) from None
            kw = r.impl.keywords(p)
            if len(self._kwargs) >= 64:
                self._kwargs.clear()
            self._kwargs[key] = kw
        return dict(kw)

    def reply(self, packet: bytes, tag: int) -> bytes:
        rid, out = 0, None
        try:
            if len(packet) >= 16:
                rid = struct.unpack_from("<Q", packet, 8)[0]
            req = L.unpack_request(packet)
            rid = req.request_id
            if req.op == L.Op.PING:
                return L.pack_reply(L.Reply(L.Status.OK, rid))
            if req.op == L.Op.INFO:
                return L.pack_reply(L.Reply(L.Status.OK, rid, values=(
                    float(L.VERSION), float(self.workers), float(self.index), float(os.getpid()),
                    float(L.POLICY_CODES[self.nan_policy])), message=self.table))
            row, p = self._row_and_params(req)
            if req.op == L.Op.COMBINE:
                return L.pack_reply(L.Reply(L.Status.OK, rid, values=self._combine(row, req, p)))
            if req.op in L.OPS_WITH_OUT:
                out = self._region(req.out_name, L.KIND_RESULT, tag)
            x = self._data(req, tag)
            if req.op == L.Op.SUMMARIZE:
                summary = detectors.check_summary(row.impl.summarize(x, p), row.summary_size, row.spec)
                return L.pack_reply(L.Reply(L.Status.OK, rid, values=summary))
            count, needed = self._answer(row, req, p, x, out)
            status = L.Status.OK if count == needed else L.Status.TOO_SMALL
            if status == L.Status.OK:
                return L.pack_reply(L.Reply(status, rid, count, needed))
            assert out is not None                       # TOO_SMALL: DETECT or FLAG
            return L.pack_reply(L.Reply(status, rid, 0, needed, error_type="ResultTooSmall",
                                        message=f"the answer has {needed} indices; the result "
                                                f"segment {req.out_name!r} holds {out.capacity}; "
                                                "its count is 0 and its region's contents are "
                                                "unspecified"))
        except Exception as e:  # noqa: BLE001 - every failure is a reply, never a crash
            if isinstance(e, L.DecodeError):
                rid = e.request_id               # 0 when the packet was not a request
            status, etype, message, tb = self._describe(e)
            if out is not None:
                out.set_result(0, status, 0)
            return L.pack_reply(L.Reply(status, rid, error_type=etype, message=message,
                                        traceback=tb))

    @staticmethod
    def _describe(e: BaseException) -> tuple[int, str, str, str]:
        if isinstance(e, L.DecodeError):
            return e.status, "ProtocolError", safe_str(e), ""
        if isinstance(e, BadValue):
            return L.Status.BAD_VALUE, "ValueError", safe_str(e), ""
        if isinstance(e, DetectorError):       # raised by shmpool on the detector's behalf
            return e.status, e.remote_type, e.message, e.remote_traceback or safe_traceback(e)
        if isinstance(e, ShmpoolError):
            return e.status, type(e).__name__, safe_str(e), ""
        return L.Status.DETECTOR_ERROR, type(e).__name__, safe_str(e), safe_traceback(e)

    def _row_and_params(self, req: L.Request):
        if req.detector >= len(self.rows):
            raise BadValue(f"detector row {req.detector}: this worker has {len(self.rows)} "
                           f"({', '.join(r.spec for r in self.rows)})")
        row = self.rows[req.detector]
        if not row.split and req.op in (L.Op.SUMMARIZE, L.Op.COMBINE, L.Op.FLAG):
            raise BadValue(f"detector {row.spec!r} runs whole: {L.Op.names[req.op]} needs a split "
                           "detector (use DETECT)")
        policy = L.POLICY_NAMES.get(req.nan_policy, self.nan_policy)
        if req.op == L.Op.FLAG:
            return row, detectors.Params(row.defaults, policy, req.base)
        try:
            return row, row.params(req.params, policy, req.base)
        except ValueError as e:
            raise BadValue(safe_str(e)) from None

    def _combine(self, row, req: L.Request, p) -> tuple:
        if len(req.values) != req.count * row.summary_size or req.count == 0:
            raise BadValue(f"COMBINE of {req.count} summaries of {row.summary_size} values needs "
                           f"{req.count * row.summary_size} values, got {len(req.values)}")
        summaries = np.asarray(req.values, dtype=np.float64).reshape(req.count, row.summary_size)
        return detectors.check_cut(row.impl.combine(summaries, p), row.spec) or ()

    def _region(self, name: str, kind: int, tag: int):
        try:
            return self.cache.region(name, kind, tag)
        except _CACHE_ERRORS as e:
            status, message = e.args[:2]
            raise from_status(status, "", message) from None

    def _data(self, req: L.Request, tag: int) -> np.ndarray:
        region = self._region(req.data_name, L.KIND_DATA, tag)
        valid = min(region.count, region.capacity)
        if req.start > valid or req.count > valid - req.start:
            err = SegmentLayoutError(
                f"elements [{req.start}, {req.start + req.count}) are outside the {valid} valid "
                f"elements of segment {req.data_name!r}")
            err.status = L.Status.OUT_OF_RANGE
            raise err
        return _array(region, np.float64, req.start, req.count)

    def _answer(self, row, req: L.Request, p, x: np.ndarray, out) -> tuple[int, int]:
        """Write the indices of a DETECT or FLAG into out; (count, needed)."""
        region = _array(out, np.int64)
        impl = row.impl
        if isinstance(impl, detectors.Classic):
            if req.op == L.Op.FLAG:
                if len(req.params) != 2:
                    raise BadValue(f"FLAG of the classic detector takes [mean, cut], got "
                                   f"{len(req.params)} values")
                cut: tuple[float, ...] | None = req.params
            else:
                total = detectors.Stats(*detectors.chunk_stats(x, p.nan_policy, p.base))
                cut = detectors.limits(total, p.threshold, p.nan_policy)
                if cut is None:
                    out.set_result(0, L.Status.OK, 0)
                    return 0, 0
            needed = impl.flag_into(x, cut, req.base, region)
        else:
            if req.op == L.Op.FLAG:
                idx = detectors.check_indices(
                    impl.flag(x, np.asarray(req.params, dtype=np.float64), p), len(x))
            else:
                idx = row.detect(x, p)
            needed = len(idx)
            if needed <= len(region):
                np.add(idx, req.base, out=region[:needed])
        if needed > len(region):
            out.set_result(0, L.Status.TOO_SMALL, needed)
            return 0, needed
        out.set_result(needed, L.Status.OK, needed)
        return needed, needed


# -- the loops ------------------------------------------------------------------------

class _Conns:
    """The worker's connections: fd -> (socket, tag)."""

    def __init__(self):
        self.by_fd: dict[int, tuple[socket.socket, int]] = {}

    def add(self, fd: int, tag: int) -> socket.socket:
        s = socket.socket(fileno=fd)
        self.by_fd[fd] = (s, tag)
        return s

    def close(self, fd: int) -> int:
        s, tag = self.by_fd.pop(fd, (None, -1))
        if s is not None:
            s.close()
        return tag


def _control(ctrl: socket.socket, conns: _Conns, on_conn, on_stop) -> None:
    try:
        msg = control.recv(ctrl)
    except OSError:
        msg = None
    if msg is None:
        os._exit(0)                          # the supervisor is gone
    kind, tag, _body, fds = msg
    if kind == control.CONN and fds:
        for fd in fds[1:]:
            os.close(fd)
        conns.add(fds[0], tag)
        on_conn(fds[0], tag)
    elif kind == control.STOP:
        on_stop()
    else:
        for fd in fds:
            os.close(fd)


def _shutdown(ctrl: socket.socket, conns: _Conns) -> None:
    """STOP: answer every request already waiting with SHUTTING_DOWN, then exit."""
    for fd, (s, _tag) in list(conns.by_fd.items()):
        s.setblocking(False)
        while True:
            try:
                packet = s.recv(L.MAX_REQUEST + 1)
            except OSError:
                break
            if not packet:
                break
            rid = struct.unpack_from("<Q", packet, 8)[0] if len(packet) >= 16 else 0
            try:
                s.send(L.pack_reply(L.Reply(L.Status.SHUTTING_DOWN, rid, error_type="ServerUnavailable",
                                            message="the server is stopping")), socket.MSG_NOSIGNAL)
            except OSError:
                break
        conns.close(fd)
    os._exit(0)


def serve_native(ctrl: socket.socket, handler: Handler, cache, timeout: float) -> None:
    assert native is not None
    rows = [(_ROW_CLASSIC if type(r.impl) is detectors.Classic else
             _ROW_WHOLE if isinstance(r.impl, detectors.FunctionDetector) else _ROW_PYTHON,
             r.defaults.get("threshold", 2.0)) for r in handler.rows]
    loop = native.Loop(ctrl.fileno(), cache, rows, L.POLICY_CODES[handler.nan_policy],
                       timeout or 0.0, L.MAX_REQUEST)
    loop.start_watchdog()
    conns = _Conns()

    def closed(fd: int, tag: int) -> None:
        loop.remove(fd)
        cache.conn_closed(tag)
        conns.close(fd)
        _tell_closed(ctrl, tag)

    while True:
        ev = loop.run()
        if ev[0] == "ctrl":
            _control(ctrl, conns, loop.add, lambda: _shutdown(ctrl, conns))
        elif ev[0] == "call":
            try:
                handler.call(loop, ev)
            except OSError:
                closed(ev[1], ev[2])
        elif ev[0] == "request":
            _, fd, tag, packet = ev
            loop.begin(fd, struct.unpack_from("<Q", packet, 8)[0] if len(packet) >= 16 else 0)
            try:
                loop.reply(fd, handler.reply(packet, tag))
            except OSError:
                closed(fd, tag)
        elif ev[0] == "closed":
            _, fd, tag = ev
            conns.close(fd)
            _tell_closed(ctrl, tag)


def _tell_closed(ctrl: socket.socket, tag: int) -> None:
    try:
        control.send_closed(ctrl, tag)
    except OSError:
        os._exit(0)


class _Watchdog:
    """The Python loop's watchdog: exit when the supervisor goes; enforce --timeout."""

    def __init__(self, ctrl: socket.socket, timeout: float):
        self.ctrl, self.timeout = ctrl, timeout
        self.lock = threading.Lock()
        self.current: tuple[socket.socket, int, float] | None = None
        threading.Thread(target=self._run, name="shmpool-watchdog", daemon=True).start()

    def begin(self, s: socket.socket, rid: int) -> None:
        with self.lock:
            self.current = (s, rid, time.monotonic())

    def claim(self) -> bool:
        with self.lock:
            mine, self.current = self.current is not None, None
        return mine

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.ctrl, 0)                 # hang-up only
        while True:
            events = poller.poll(50 if self.timeout else None)
            if any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events):
                os._exit(0)
            if self.timeout:
                with self.lock:
                    cur = self.current
                    if cur is None or time.monotonic() - cur[2] <= self.timeout:
                        continue
                    self.current = None
                s, rid, _ = cur
                try:
                    s.send(L.pack_reply(L.Reply(
                        L.Status.TIMEOUT, rid, error_type="DetectTimeout",
                        message=f"the call ran longer than the server's limit of {self.timeout:g} s; "
                                "its worker was stopped and will be replaced")), socket.MSG_NOSIGNAL)
                finally:
                    os._exit(EXIT_TIMEOUT)


def serve_python(ctrl: socket.socket, handler: Handler, cache, timeout: float) -> None:
    watchdog = _Watchdog(ctrl, timeout)
    conns = _Conns()
    poller = select.poll()
    poller.register(ctrl, select.POLLIN)
    next_sweep = time.monotonic() + SWEEP_SECONDS

    def added(fd: int, tag: int) -> None:
        poller.register(fd, select.POLLIN)

    def closed(fd: int) -> None:
        poller.unregister(fd)
        tag = conns.close(fd)
        cache.conn_closed(tag)
        _tell_closed(ctrl, tag)

    while True:
        wait = None
        if len(cache):
            wait = max(0, int((next_sweep - time.monotonic()) * 1000) + 1)
        events = poller.poll(wait)
        if time.monotonic() >= next_sweep:
            cache.sweep()
            next_sweep = time.monotonic() + SWEEP_SECONDS
        for fd, _ev in events:
            if fd == ctrl.fileno():
                _control(ctrl, conns, added, lambda: _shutdown(ctrl, conns))
                continue
            if fd not in conns.by_fd:
                continue
            s, tag = conns.by_fd[fd]
            try:
                packet = s.recv(L.MAX_REQUEST + 1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                closed(fd)
                continue
            if not packet and _hung_up(s):
                closed(fd)
                continue
            rid = struct.unpack_from("<Q", packet, 8)[0] if len(packet) >= 16 else 0
            watchdog.begin(s, rid)
            reply = handler.reply(packet, tag)
            if not watchdog.claim():
                while True:                  # the watchdog answered TIMEOUT and ends us
                    time.sleep(1)
            if not _send(s, reply):
                closed(fd)


def _hung_up(s: socket.socket) -> bool:
    """After a zero-length read: did the peer close, or send an empty packet?"""
    p = select.poll()
    p.register(s, select.POLLRDHUP | select.POLLHUP)
    return bool(p.poll(0))


def _send(s: socket.socket, packet: bytes) -> bool:
    try:
        try:
            s.send(packet, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except BlockingIOError:              # the host is not reading its replies
            p = select.poll()
            p.register(s, select.POLLOUT)
            if not p.poll(int(SEND_WAIT_SECONDS * 1000)):
                return False
            s.send(packet, socket.MSG_NOSIGNAL)
        return True
    except OSError:
        return False


# -- entry point ----------------------------------------------------------------------

MMAP_THRESHOLD = 32 << 20   # glibc: blocks below this come from the heap, and ...
TRIM_THRESHOLD = 128 << 20  # ... this much freed heap is kept for the next call
MALLOPTS = (("MALLOC_MMAP_THRESHOLD_", -3, MMAP_THRESHOLD),    # M_MMAP_THRESHOLD
            ("MALLOC_TRIM_THRESHOLD_", -1, TRIM_THRESHOLD))    # M_TRIM_THRESHOLD


def keep_temporaries() -> None:
    """Keep freed large blocks for reuse.  A numpy detector makes temporaries
    the size of its input on every call; fresh mappings for them page-fault
    in each time (at 10^6 values that doubled the one-liner's time here).
    A threshold the environment sets (glibc's MALLOC_*_THRESHOLD_: the
    user's, or the soak's) is left as it is."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        for env, param, value in MALLOPTS:
            if env not in os.environ:
                libc.mallopt(param, value)
    except (OSError, AttributeError):        # not glibc: its own defaults
        pass


def main(ctrl_fd: int, config: dict) -> None:
    """Run a worker on control socket *ctrl_fd* until its supervisor goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C is the host's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from .launch import set_process_name
    set_process_name(f"shmpool-worker{config.get('index', '')}")
    ctrl = socket.socket(fileno=ctrl_fd)
    np.seterr(all="ignore")   # overflow is reported by value (NonFiniteError), not as noise
    keep_temporaries()
    if config.get("memory_limit"):
        # RLIMIT_DATA caps the heap and private mappings (a detector's
        # allocations), not the shared segments this worker maps.
        lim = int(config["memory_limit"])
        resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    policy = config.get("nan_policy", "raise")
    try:
        rows = [detectors.load(spec, config.get("defaults") or {}) for spec in config["specs"]]
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor, then exit
        control.send_ready(ctrl, os.getpid(), 0, {
            "type": type(e).__name__, "message": f"cannot load detector: {safe_str(e)}",
            "traceback": safe_traceback(e)})
        os._exit(0)
    cache = native.Cache() if native is not None else PyCache()
    handler = Handler(rows, cache, int(config.get("workers", 1)), int(config.get("index", 0)),
                      policy)
    control.send_ready(ctrl, os.getpid(), max(1, soft - 32))
    serve = serve_native if native is not None else serve_python
    try:
        serve(ctrl, handler, cache, float(config.get("timeout") or 0.0))
    finally:
        os._exit(0)


def apply_environment(config: dict) -> None:
    """What a launched worker takes over from its host: module path and cwd."""
    for p in reversed(config.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    cwd = config.get("cwd")
    if cwd:
        try:
            os.chdir(cwd)
        except OSError:
            pass


if __name__ == "__main__":     # start method "spawn": python -m shmpool._backend.worker FD JSON
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _config = json.loads(sys.argv[2])
    apply_environment(_config)
    main(int(sys.argv[1]), _config)
