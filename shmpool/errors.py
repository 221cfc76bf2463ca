"""Every error shmpool raises on purpose.

Bad arguments are plain ``TypeError``/``ValueError`` raised before any worker
is involved; everything else descends from one root::

    ShmpoolError
    ├── PoolClosed              you closed it: the pool or client was closed by its owner
    ├── BrokenPool              it broke: workers cannot be started, or a forked
    │                           child used its parent's pool
    ├── WorkerDied              a worker died during the call (signal named)
    ├── DetectTimeout           the call outlived its timeout (also TimeoutError)
    ├── DetectorError           the detector raised; remote traceback as __cause__
    │   └── NonFiniteError      NaN/inf under nan_policy="raise" (also ValueError)
    ├── ResultTooSmall          the return segment cannot hold the answer
    ├── InvalidParameter        a worker refused a parameter value (also ValueError)
    ├── SegmentError            a shared-memory segment is unusable
    │   ├── SegmentNotFound     no such segment (never made, or unlinked)
    │   ├── SegmentPermission   not ours, mode wider than 0600, not a regular file
    │   ├── SegmentLayoutError  bad header, name, or range (also ValueError)
    │   └── SegmentSpaceError   /dev/shm has no room (also MemoryError)
    ├── ServerUnavailable       the server is stopping, busy, gone, or dropped the
    │   │                       connection (also ConnectionError)
    │   └── UntrustedServer     the socket belongs to another user (also PermissionError)
    └── ProtocolError           a peer sent bytes that break docs/LAYOUT.md

Each class carries the status code that docs/LAYOUT.md gives it, so an error
crosses a socket as (code, type, message, traceback) and comes back as the
same class (see ``from_status``).
"""

from __future__ import annotations

from .layout import Status


class ShmpoolError(Exception):
    """Root of shmpool's errors."""
    status = Status.INTERNAL


class PoolClosed(ShmpoolError):
    """The pool (or client) was closed by its owner before or during the call."""
    status = Status.SHUTTING_DOWN


class BrokenPool(ShmpoolError):
    """The pool cannot run calls: its workers could not be (re)started, or
    this process is a forked child of the pool's owner."""
    status = Status.INTERNAL


class WorkerDied(ShmpoolError):
    """The worker running the call died (or its replacement died while it
    started); the pool starts a new one, at the latest for the next call."""
    status = Status.WORKER_DIED


class DetectTimeout(ShmpoolError, TimeoutError):
    """The call did not finish in time; its worker was stopped and replaced."""
    status = Status.TIMEOUT


class DetectorError(ShmpoolError):
    """The detector raised.  ``remote_type`` names the exception's class, the
    message is its text, and ``__cause__`` holds the remote traceback."""
    status = Status.DETECTOR_ERROR

    def __init__(self, message: str, remote_type: str = "", traceback: str = ""):
        super().__init__(message)
        self.remote_type = remote_type or type(self).__name__
        self.remote_traceback = traceback

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self):
        if self.remote_type == type(self).__name__:
            return self.message
        return f"{self.remote_type}: {self.message}"


class NonFiniteError(DetectorError, ValueError):
    """The data holds NaN or inf (or its statistics overflow) and nan_policy is "raise"."""
    status = Status.NON_FINITE


class ResultTooSmall(ShmpoolError):
    """The answer has ``needed`` indices; the return segment holds
    ``capacity``.  Its count is 0 and its region's contents are unspecified
    (docs/LAYOUT.md 2.7)."""
    status = Status.TOO_SMALL

    def __init__(self, message: str, needed: int = 0, capacity: int = 0):
        super().__init__(message)
        self.needed = needed
        self.capacity = capacity


class InvalidParameter(ShmpoolError, ValueError):
    """A detector parameter, row or nan_policy out of range, refused by the worker."""
    status = Status.BAD_VALUE


class SegmentError(ShmpoolError):
    """A shared-memory segment cannot be used."""
    status = Status.NO_SEGMENT


class SegmentNotFound(SegmentError, FileNotFoundError):
    status = Status.NO_SEGMENT


class SegmentPermission(SegmentError, PermissionError):
    status = Status.NOT_PERMITTED


class SegmentLayoutError(SegmentError, ValueError):
    status = Status.BAD_HEADER


class SegmentSpaceError(SegmentError, MemoryError):
    """Shared memory is exhausted: ``needed`` bytes asked, ``free`` available."""

    def __init__(self, message: str, needed: int = 0, free: int = 0):
        super().__init__(message)
        self.needed = needed
        self.free = free


class ServerUnavailable(ShmpoolError, ConnectionError):
    """The server is stopping, busy, gone, or dropped the connection."""
    status = Status.SHUTTING_DOWN


class UntrustedServer(ServerUnavailable, PermissionError):
    """The process behind the socket runs as another user: refused."""
    status = Status.NOT_PERMITTED


class ProtocolError(ShmpoolError):
    status = Status.BAD_MESSAGE


class RemoteTraceback(Exception):
    """Holds a traceback formatted in another process (shown as the cause)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return f'\n"""\n{self.tb.rstrip()}\n"""'


_BY_STATUS: dict[int, type[ShmpoolError]] = {
    Status.BAD_MESSAGE: ProtocolError,
    Status.BAD_NAME: SegmentLayoutError,
    Status.NO_SEGMENT: SegmentNotFound,
    Status.NOT_PERMITTED: SegmentPermission,
    Status.BAD_HEADER: SegmentLayoutError,
    Status.OUT_OF_RANGE: SegmentLayoutError,
    Status.TOO_SMALL: ResultTooSmall,
    Status.DETECTOR_ERROR: DetectorError,
    Status.WORKER_DIED: WorkerDied,
    Status.NON_FINITE: NonFiniteError,
    Status.BAD_VALUE: InvalidParameter,
    Status.TIMEOUT: DetectTimeout,
    Status.SHUTTING_DOWN: ServerUnavailable,
    Status.BUSY: ServerUnavailable,
    Status.BAD_VERSION: ProtocolError,
}


def from_status(status: int, error_type: str, message: str, traceback: str = "",
                needed: int = 0, capacity: int = 0) -> ShmpoolError:
    """Rebuild the error a peer reported as (status, type, message, traceback)."""
    cls = _BY_STATUS.get(status, ShmpoolError)
    err: ShmpoolError
    if issubclass(cls, DetectorError):
        err = cls(message, error_type, traceback)
    elif cls is ResultTooSmall:
        err = cls(message, needed, capacity)
    else:
        err = cls(message)
    err.status = status            # keep the exact code (BAD_NAME and BAD_HEADER share a class)
    if traceback:
        err.__cause__ = RemoteTraceback(traceback)
    return err
