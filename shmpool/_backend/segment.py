"""POSIX shared-memory segments: create, attach, close, unlink, reap.

A segment is the file ``/dev/shm/<name>`` laid out as shmpool.layout says.
This is the same object ``multiprocessing.shared_memory.SharedMemory(name)``
opens; we open it ourselves rather than through that class because it
(a) registers every attach with a resource tracker that, on Python < 3.13,
unlinks the creator's segment when the attaching process exits (CPython
issue 82300), (b) cannot reserve the bytes up front, so a full /dev/shm
surfaces as SIGBUS on first write instead of an error, and (c) follows
symlinks and does not check owner or mode, which a server attaching to
segments named by other programs must do.  No resource tracker is involved
at all: the creator unlinks what it creates, and orphans are reaped by owner
identity (``reap_orphans``).
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import stat
import struct

import numpy as np

from .. import layout as L
from ..errors import (SegmentError, SegmentLayoutError, SegmentNotFound,
                      SegmentPermission, SegmentSpaceError)

SHM_DIR = "/dev/shm"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

_ident_cache: tuple[int, int] | None = None  # (pid, start ticks) of this process


def process_start(pid: int) -> int | None:
    """Start time of *pid* in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(raw[raw.rindex(b")") + 2:].split()[19])


def _ident() -> tuple[int, int]:
    global _ident_cache
    pid = os.getpid()
    if _ident_cache is None or _ident_cache[0] != pid:   # recomputed after fork
        _ident_cache = (pid, process_start(pid) or 0)
    return _ident_cache


def new_name() -> str:
    pid, start = _ident()
    return f"shmpool-{pid}-{start}-{secrets.token_hex(8)}"


def shm_free_bytes() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def _path(name: str) -> str:
    if not L.valid_name(name):
        err = SegmentLayoutError(f"segment name {name!r} breaks the naming rule {L.NAME_RE.pattern}")
        err.status = L.Status.BAD_NAME
        raise err
    return os.path.join(SHM_DIR, name)


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
    writable = False
    ident: tuple | None = None   # (inode, size, mode, uid) when attached
    _mmap: mmap.mmap | None = None
    _region: np.ndarray | None = None
    _created = False

    @classmethod
    def create(cls, capacity: int, kind: int = L.KIND_DATA) -> "Segment":
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self = cls()
        self.name, self.kind, self.capacity, self.writable = new_name(), kind, capacity, True
        self.size = L.segment_size(capacity)
        path = os.path.join(SHM_DIR, self.name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._created = True
        try:
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
            self.unlink()
            raise
        finally:
            os.close(fd)
        self._mmap[:L.HEADER_SIZE] = L.pack_header(L.SegmentHeader(kind, capacity, 0))
        return self

    @classmethod
    def attach(cls, name: str, kind: int, writable: bool = False) -> "Segment":
        """Map an existing segment after checking name, owner, mode and header."""
        self = cls()
        path = _path(name)
        # O_NONBLOCK: a FIFO under a segment's name must not hang us in open();
        # fstat below refuses anything that is not a regular file.
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise SegmentNotFound(f"no segment named {name!r}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SegmentPermission(f"segment {name!r} is a symlink") from None
            if e.errno in (errno.EACCES, errno.EPERM, errno.ENXIO):
                raise SegmentPermission(f"segment {name!r}: {e.strerror}") from None
            raise SegmentError(f"segment {name!r}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SegmentPermission(f"segment {name!r} is not a regular file")
            if st.st_uid != os.geteuid():
                raise SegmentPermission(f"segment {name!r} belongs to uid {st.st_uid}, not {os.geteuid()}")
            if st.st_mode & 0o077:
                raise SegmentPermission(
                    f"segment {name!r} has mode {stat.S_IMODE(st.st_mode):04o}; 0600 or narrower is required")
            if st.st_size < L.HEADER_SIZE:
                raise SegmentLayoutError(f"segment {name!r} is {st.st_size} bytes, smaller than its header")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            os.close(fd)
        self.name, self.size, self.writable, self._mmap = name, st.st_size, writable, mm
        self.ident = (st.st_ino, st.st_size, st.st_mode, st.st_uid)
        h = L.unpack_header(mm)
        why = L.check_header(h, kind, st.st_size)
        if why is not None:
            self.close()
            raise SegmentLayoutError(f"segment {name!r}: {why}")
        self.kind, self.capacity = kind, h.capacity
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

    def set_result(self, status: int, count: int, needed: int) -> None:
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

    def address(self) -> int:
        """Address of the region's first byte in this process."""
        return self.region().__array_interface__["data"][0]

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
        if self._created and self.name:
            self._created = False
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


def reap_orphans() -> list[str]:
    """Unlink this user's segments whose creating process is gone.

    Only names of the form shmpool-<pid>-<start>-<hex> are considered, and a
    segment is reaped only when no process <pid> exists or the one that does
    started at another time (the pid was reused): never by guessing.
    """
    reaped = []
    uid = os.geteuid()
    try:
        entries = os.scandir(SHM_DIR)
    except FileNotFoundError:
        return reaped
    with entries:
        for entry in entries:
            m = L.OWNED_NAME_RE.fullmatch(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_uid != uid or not stat.S_ISREG(st.st_mode):
                continue                     # only our own plain segments, never a dir or link
            pid, start = int(m.group(1)), int(m.group(2))
            if process_start(pid) == start:
                continue
            try:
                os.unlink(entry.path)
                reaped.append(entry.name)
            except OSError:
                pass                         # gone already, or not ours to remove
    return reaped
