"""ReturnSegment: a result segment whose lifecycle the caller manages."""

from __future__ import annotations

import os
import warnings

import numpy as np

from . import layout as L
from ._backend.segment import Segment, unlink_name


class ReturnSegment:
    """A shared-memory segment that workers write int64 indices into.

    Create one, pass it as ``pool.detect(x, out=seg)`` as often as you like,
    then ``close()`` (unmap; safe twice) and ``unlink()`` (remove the name)
    when you say so, or use it as a context manager, which does both.  A
    ReturnSegment dropped without ``unlink()`` warns (ResourceWarning, as an
    unclosed file does) and unlinks itself, unless you ``detach()``-ed it to
    share it by name.  ``indices`` is a read-only view of the last answer;
    views stay valid after close().
    """

    _seg: Segment = None  # type: ignore[assignment]   # None only while half-built
    _unlinked = True             # a half-built object owns nothing
    _detached = False
    _creator = 0

    def __init__(self, capacity: int):
        if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 0:
            raise ValueError(f"capacity must be a non-negative int, got {capacity!r}")
        self._seg = Segment.create(int(capacity), L.KIND_RESULT)
        self._unlinked, self._creator = False, os.getpid()

    @classmethod
    def attach(cls, name: str) -> ReturnSegment:
        """Map another process's result segment (same user) by name, read-write.
        It stays the creator's to unlink (call unlink() here to do it yourself)."""
        self = cls.__new__(cls)
        self._seg = Segment.attach(name, L.KIND_RESULT, writable=True)
        self._detached = True
        self._unlinked = False
        return self

    @property
    def name(self) -> str:
        return self._seg.name

    @property
    def capacity(self) -> int:
        return self._seg.capacity

    @property
    def count(self) -> int:
        """Indices written by the last call."""
        return self._seg.count

    @property
    def status(self) -> int:
        """Status code of the last call (shmpool.layout.Status)."""
        return self._seg.header().status

    @property
    def needed(self) -> int:
        """Indices the last answer had (more than capacity when it did not fit)."""
        return self._seg.header().needed

    @property
    def indices(self) -> np.ndarray:
        view = self._seg.new_view()[:self.count]
        view.flags.writeable = False
        return view

    @property
    def closed(self) -> bool:
        return self._seg is None or self._seg.closed

    def detach(self) -> str:
        """Give up unlinking: the name (returned) outlives this object, for
        another process to attach; whoever ends up with it unlinks it."""
        self._detached = True
        return self.name

    def close(self) -> None:
        """Unmap (the name stays until unlink()).  Safe to call twice."""
        if self._seg is not None:
            self._seg.close()

    def unlink(self) -> None:
        """Remove the name from /dev/shm; workers unmap it within a second."""
        if self._seg is not None and not self._unlinked:
            self._unlinked = True
            if self._seg._created:
                self._seg.unlink()
            else:
                unlink_name(self._seg.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        self.unlink()

    def __del__(self):
        if self._unlinked or self._detached or self._creator != os.getpid():
            return
        warnings.warn(f"unclosed ReturnSegment {self._seg.name!r}: unlinking it (call unlink() "
                      "or use `with`, or detach() to keep the name)", ResourceWarning,
                      source=self, stacklevel=2)
        self.close()
        self.unlink()

    def __repr__(self):
        if self.closed:
            return "<ReturnSegment closed>"
        return f"<ReturnSegment {self.name} capacity={self.capacity} count={self.count}>"
