"""A worker's mapped segments, in Python: the fallback for _native.Cache.

Same interface and the same checks (docs/LAYOUT.md 1.2 and 1.5, on every
``region()``): a mapping leaves when its file is unlinked or replaced
(``sweep``), when the one connection that used it closes
(``conn_closed``), or when more than MAX are held; a region someone still
views keeps its memory until the view goes.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections import OrderedDict

import numpy as np

from .. import layout as L
from ..errors import SegmentLayoutError
from .segment import SHM_DIR, check_name, open_checked

MAX = 64
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class CacheError(Exception):
    """(status, message) of a refused segment, as _native.CacheError."""


class Region:
    """A mapped segment's region: the buffer of its elements and live header fields."""

    def __init__(self, name: str, kind: int, mm: mmap.mmap, size: int):
        self.name, self.kind, self._mm, self.size = name, kind, mm, size

    @property
    def capacity(self) -> int:
        return _U64.unpack_from(self._mm, 16)[0]

    @property
    def count(self) -> int:
        return _U64.unpack_from(self._mm, L.OFF_COUNT)[0]

    def set_result(self, count: int, status: int, needed: int) -> None:
        _U64.pack_into(self._mm, L.OFF_COUNT, count)
        _U32.pack_into(self._mm, L.OFF_STATUS, status)
        _U64.pack_into(self._mm, L.OFF_NEEDED, needed)

    def __buffer__(self, flags):           # Python 3.12+: the region's bytes
        return memoryview(self._mm)[L.HEADER_SIZE:L.HEADER_SIZE + 8 * self.capacity]

    def array(self, dtype) -> np.ndarray:
        return np.frombuffer(self._mm, dtype=dtype, count=self.capacity, offset=L.HEADER_SIZE)


class Cache:
    def __init__(self):
        self._maps: OrderedDict[tuple[str, int], tuple[Region, tuple, int]] = OrderedDict()

    def region(self, name: str, kind: int, conn: int = -3) -> Region:
        try:
            return self._region(name, kind, conn)
        except CacheError:
            raise
        except Exception as e:  # noqa: BLE001 - the shmpool error says which code
            raise CacheError(getattr(e, "status", L.Status.NO_SEGMENT), str(e)) from None

    def _region(self, name: str, kind: int, conn: int) -> Region:
        path = check_name(name)
        key = (name, kind)
        try:
            st = os.lstat(path)
            ident = (st.st_ino, st.st_dev, st.st_size, st.st_mode, st.st_uid)
        except FileNotFoundError:
            ident = None
        hit = self._maps.get(key)
        if hit is not None and hit[1] != ident:
            del self._maps[key]          # gone, recreated, resized or chmod-ed: look again
            hit = None
        if hit is None:
            fd, st = open_checked(name, writable=kind == L.KIND_RESULT)
            try:
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if kind == L.KIND_RESULT else 0)
                mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=prot)
            finally:
                os.close(fd)
            ident = (st.st_ino, st.st_dev, st.st_size, st.st_mode, st.st_uid)
            hit = (Region(name, kind, mm, st.st_size), ident, conn)
            self._maps[key] = hit
            while len(self._maps) > MAX:
                self._maps.popitem(last=False)
        region, ident, owner = hit
        self._maps[key] = (region, ident, owner if owner == conn else -1)
        self._maps.move_to_end(key)
        why = L.check_header(L.unpack_header(region._mm), kind, region.size)
        if why is not None:
            raise SegmentLayoutError(f"segment {name!r}: {why}")
        return region

    def sweep(self) -> None:
        for key, (_region, ident, _conn) in list(self._maps.items()):
            try:
                st = os.lstat(os.path.join(SHM_DIR, key[0]))
                same = (st.st_ino, st.st_dev) == ident[:2] and stat.S_ISREG(st.st_mode)
            except FileNotFoundError:
                same = False
            if not same:
                del self._maps[key]

    def conn_closed(self, conn: int) -> None:
        for key, (_r, _i, owner) in list(self._maps.items()):
            if owner == conn:
                del self._maps[key]

    def __len__(self) -> int:
        return len(self._maps)
