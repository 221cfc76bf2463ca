"""shmpool: outlier detection on a pool of worker processes fed through
POSIX shared memory.  See README.md and docs/LAYOUT.md."""

from .detectors import Params, SplitDetector, reference
from .errors import (
                     BrokenPool,
                     DetectorError,
                     DetectTimeout,
                     InvalidParameter,
                     NonFiniteError,
                     PoolClosed,
                     ProtocolError,
                     ResultTooSmall,
                     SegmentError,
                     SegmentLayoutError,
                     SegmentNotFound,
                     SegmentPermission,
                     SegmentSpaceError,
                     ServerUnavailable,
                     ShmpoolError,
                     UntrustedServer,
                     WorkerDied,
)
from .pool import Pool
from .returns import ReturnSegment

__version__ = "0.2.0"

__all__ = [
    "Pool", "ReturnSegment", "SplitDetector", "Params", "reference", "ShmpoolError", "PoolClosed",
    "BrokenPool", "WorkerDied", "DetectTimeout", "DetectorError", "NonFiniteError", "InvalidParameter",
    "ResultTooSmall", "SegmentError", "SegmentNotFound", "SegmentPermission",
    "SegmentLayoutError", "SegmentSpaceError", "ServerUnavailable", "UntrustedServer",
    "ProtocolError",
]
