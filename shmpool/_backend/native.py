"""The C extension, if this install has one: ``native`` is shmpool._native or None.

Everything it does has a numpy/Python fallback that gives the same answers
(docs/LAYOUT.md 4.1); ``SHMPOOL_NO_EXTENSION=1`` selects the fallback even
when the extension is built, which is how the tests run both paths.
"""

from __future__ import annotations

import os
from typing import Any

native: Any = None
if os.environ.get("SHMPOOL_NO_EXTENSION", "") in ("", "0"):
    try:
        from .. import _native as native
    except ImportError:       # built without a compiler: the fallback serves
        native = None
