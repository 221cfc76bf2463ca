"""POSIX shared-memory segments: create, attach, close, unlink; owners and reaping.

A segment is the file ``/dev/shm/<name>`` laid out as shmpool.layout says.
It is the same object ``multiprocessing.shared_memory.SharedMemory(name)``
opens; we open it ourselves because that class (a) registers every attach
with a resource tracker that, on Python < 3.13, unlinks the creator's segment
when an attaching process exits (CPython issue 82300), (b) cannot reserve the
bytes up front, so a full /dev/shm surfaces as SIGBUS instead of an error,
and (c) follows symlinks and checks neither owner nor mode.

Who may remove a segment whose creator died (docs/LAYOUT.md 1.4)::

    creator process                          /dev/shm
    ---------------                          --------
    owner() ── O_EXCL + flock(LOCK_SH) ────> shmpool-<pid>-<tag>-owner   (fd held
                                                                          until exit)
    Segment.create() ──────────────────────> shmpool-<pid>-<tag>-<16 hex>

    reaper: flock(owner file, LOCK_EX|LOCK_NB) succeeds only when every
    holder is dead (the kernel drops a dead process's locks), in whatever
    PID namespace it lived: then, and only then, unlink that owner's files.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import mmap
import os
import secrets
import stat
import struct
import threading
from collections import defaultdict

import numpy as np

from .. import layout as L
from ..errors import SegmentError, SegmentLayoutError, SegmentNotFound, SegmentPermission, SegmentSpaceError

SHM_DIR = "/dev/shm"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


# -- this process's owner lock ----------------------------------------------------

class _Owner:
    """The owner tag and lock of this process (recreated after fork)."""

    lock = threading.Lock()
    pid = 0
    tag = ""
    fd = -1
    live: set[str] = set()      # names this process created and has not unlinked


def owner() -> str:
    """This process's owner tag ``<pid>-<8 hex>``, taking its lock file first."""
    with _Owner.lock:
        if _Owner.pid == os.getpid() and _Owner.fd >= 0:
            return _Owner.tag
        for _ in range(16):
            tag = f"{os.getpid()}-{secrets.token_hex(4)}"
            path = os.path.join(SHM_DIR, L.owner_lock_name(tag))
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600)
            except FileExistsError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError      # a reaper took it between open and flock
            except OSError:
                os.close(fd)
                continue
            _Owner.pid, _Owner.tag, _Owner.fd, _Owner.live = os.getpid(), tag, fd, set()
            return tag
        raise SegmentError(f"cannot create an owner lock file in {SHM_DIR}")


def _forget_owner_in_child() -> None:
    # The child holds a copy of the parent's lock descriptor; closing it keeps
    # the parent's lock (the parent still holds it) and lets a new owner start.
    if _Owner.fd >= 0:
        try:
            os.close(_Owner.fd)
        except OSError:
            pass
    _Owner.pid, _Owner.tag, _Owner.fd, _Owner.live = 0, "", -1, set()
    _Owner.lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_owner_in_child)


@atexit.register
def _release_owner() -> None:
    """At exit: drop the owner file if nothing it vouches for is left."""
    if _Owner.pid != os.getpid() or _Owner.fd < 0:
        return
    if not any(os.path.exists(os.path.join(SHM_DIR, n)) for n in _Owner.live):
        try:
            os.unlink(os.path.join(SHM_DIR, L.owner_lock_name(_Owner.tag)))
        except OSError:
            pass
    os.close(_Owner.fd)
    _Owner.fd = -1


def new_name() -> str:
    return f"shmpool-{owner()}-{secrets.token_hex(8)}"


def shm_free_bytes() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def check_name(name: str) -> str:
    """The path of a segment name, or SegmentLayoutError (BAD_NAME)."""
    if not isinstance(name, str) or not L.valid_name(name):
        err = SegmentLayoutError(f"segment name {name!r} breaks the naming rule {L.NAME_RE.pattern}")
        err.status = L.Status.BAD_NAME
        raise err
    return os.path.join(SHM_DIR, name)


def open_checked(name: str, writable: bool) -> tuple[int, os.stat_result]:
    """Open a segment named by someone else after the checks of LAYOUT.md 1.5:
    no symlink, no FIFO wait, a regular file of our uid, mode 0600 or narrower."""
    path = check_name(name)
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SegmentNotFound(f"no segment named {name!r}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SegmentPermission(f"segment {name!r} is a symlink") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.ENXIO, errno.EISDIR):
            raise SegmentPermission(f"segment {name!r}: {e.strerror}") from None
        raise SegmentError(f"segment {name!r}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SegmentPermission(f"segment {name!r} is not a regular file")
        if st.st_uid != os.geteuid():
            raise SegmentPermission(f"segment {name!r} belongs to uid {st.st_uid}, not {os.geteuid()}")
        if st.st_mode & 0o077:
            raise SegmentPermission(f"segment {name!r} has mode {stat.S_IMODE(st.st_mode):04o}; "
                                    "0600 or narrower is required")
        if st.st_size < L.HEADER_SIZE:
            raise SegmentLayoutError(f"segment {name!r} is {st.st_size} bytes, smaller than its header")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class Segment:
    """One segment mapped into this process.

    ``close()`` unmaps and ``unlink()`` removes the name; both are safe to
    call twice and on a half-built object.  Arrays from ``region()`` keep the
    mapping alive on their own, so closing never invalidates a live view.
    """

    name = ""
    kind = 0
    capacity = 0
    size = 0
    _mmap: mmap.mmap | None = None
    _region: np.ndarray | None = None
    _created = False
    _creator = 0                 # pid that created it: only that process unlinks

    @classmethod
    def create(cls, capacity: int, kind: int = L.KIND_DATA, name: str | None = None) -> Segment:
        """Create, reserve and map a new segment (named *name*, which the caller
        may have recorded for cleanup before the file exists)."""
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self = cls()
        self.name, self.kind, self.capacity = name or new_name(), kind, capacity
        self.size = L.segment_size(capacity)
        _Owner.live.add(self.name)
        self._created, self._creator = True, os.getpid()
        fd = -1
        try:
            fd = os.open(os.path.join(SHM_DIR, self.name),
                         os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                # Reserve every byte now: a full /dev/shm is an error here, not
                # a SIGBUS at some later write.
                os.posix_fallocate(fd, 0, self.size)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                    raise
                free = shm_free_bytes()
                raise SegmentSpaceError(
                    f"shared memory exhausted: a segment of {self.size:,} bytes "
                    f"({capacity:,} elements) does not fit; {SHM_DIR} has {free:,} bytes free",
                    needed=self.size, free=free) from None
            self._mmap = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            if fd >= 0:
                self.unlink()             # ours: we created it
            else:
                self._created = False     # never created (or not known to be: a name
                _Owner.live.discard(self.name)   # recorded by the caller still covers it)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        self._mmap[:L.HEADER_SIZE] = L.pack_header(L.SegmentHeader(kind, capacity, 0))
        return self

    @classmethod
    def attach(cls, name: str, kind: int, writable: bool = False) -> Segment:
        """Map an existing segment after checking name, owner, mode and header."""
        self = cls()
        fd, st = open_checked(name, writable)
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            os.close(fd)
        self.name, self.size, self._mmap = name, st.st_size, mm
        why = L.check_header(L.unpack_header(mm), kind, st.st_size)
        if why is not None:
            self.close()
            raise SegmentLayoutError(f"segment {name!r}: {why}")
        self.kind, self.capacity = kind, L.unpack_header(mm).capacity
        return self

    # -- header fields ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def _mm(self) -> mmap.mmap:
        if self._mmap is None:
            raise SegmentError(f"segment {self.name!r} is closed")
        return self._mmap

    def header(self) -> L.SegmentHeader:
        return L.unpack_header(self._mm())

    @property
    def count(self) -> int:
        return _U64.unpack_from(self._mm(), L.OFF_COUNT)[0]

    def set_count(self, n: int) -> None:
        _U64.pack_into(self._mm(), L.OFF_COUNT, n)

    def set_result(self, count: int, status: int, needed: int) -> None:
        """The result header's count, status and needed (header order)."""
        mm = self._mm()
        _U64.pack_into(mm, L.OFF_COUNT, count)
        _U32.pack_into(mm, L.OFF_STATUS, status)
        _U64.pack_into(mm, L.OFF_NEEDED, needed)

    def region(self) -> np.ndarray:
        """The whole region as a float64 (data) or int64 (result) array."""
        if self._region is None:
            self._region = self.new_view()
        return self._region

    def new_view(self) -> np.ndarray:
        """A fresh array over the region, whose buffer no one else holds."""
        dtype = np.float64 if self.kind == L.KIND_DATA else np.int64
        return np.frombuffer(self._mm(), dtype=dtype, count=self.capacity, offset=L.HEADER_SIZE)

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        self._region = None
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views are alive; the mapping goes with the last one

    def unlink(self) -> None:
        """Remove the name; only in the process that created it (never in a
        forked child, which would destroy its parent's segment)."""
        if self._created and self.name and self._creator == os.getpid():
            self._created = False
            _Owner.live.discard(self.name)
            try:
                os.unlink(os.path.join(SHM_DIR, self.name))
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        self.unlink()

    def __repr__(self):
        state = "closed" if self.closed else f"capacity={self.capacity}"
        return f"<Segment {self.name} {state}>"


def unlink_name(name: str) -> None:
    """Unlink a segment this process created, by name (emergency cleanup)."""
    _Owner.live.discard(name)
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass


def reap_orphans() -> list[str]:
    """Unlink this user's segments whose owner is dead (docs/LAYOUT.md 1.4).

    Death is what the kernel says: the owner file's lock can be taken
    exclusively only when no live process holds it, in any PID namespace.
    Names of other shapes, and owners without an owner file, are never reaped.
    """
    reaped: list[str] = []
    uid = os.geteuid()
    by_owner: dict[str, list[str]] = defaultdict(list)
    try:
        with os.scandir(SHM_DIR) as entries:
            for entry in entries:
                m = L.OWNED_NAME_RE.fullmatch(entry.name)
                if m is not None:
                    by_owner[m.group(1)].append(entry.name)
    except FileNotFoundError:
        return reaped
    mine = _Owner.tag if _Owner.pid == os.getpid() else None
    for tag, names in by_owner.items():
        if tag == mine:
            continue
        lock_path = os.path.join(SHM_DIR, L.owner_lock_name(tag))
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue                          # no owner file: never reaped
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue                      # a live process holds it
            for name in names:
                if name.endswith("-" + L.OWNER_LOCK_SUFFIX):
                    continue
                path = os.path.join(SHM_DIR, name)
                try:
                    seg = os.lstat(path)
                    if stat.S_ISREG(seg.st_mode) and seg.st_uid == uid:
                        os.unlink(path)
                        reaped.append(name)
                except OSError:
                    pass
            try:
                if os.lstat(lock_path).st_ino == st.st_ino:
                    os.unlink(lock_path)
            except OSError:
                pass
        finally:
            os.close(fd)
    return reaped
