"""The byte layout of shmpool v1: segments and control messages.

This module is the contract that docs/LAYOUT.md describes and that the Go and
C host adapters implement; ``tests/test_layout.py`` holds the three equal.  It
contains layout and nothing else: no I/O, no policy, no imports from the rest
of the package.  Every integer is little-endian.

A segment is a POSIX shared-memory object (``/dev/shm/<name>``)::

    offset 0                     64                         64 + 8 * capacity
           +---------------------+---------------------------+
           | SegmentHeader (64)  | region: capacity * 8 bytes |
           +---------------------+---------------------------+

The region holds float64 values (a *data* segment, written by the host) or
int64 indices (a *result* segment, written by a worker).
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

VERSION = 1

# -- segment header -----------------------------------------------------------

SEGMENT_MAGIC = 0x504D4853  # b"SHMP" read as a little-endian u32
KIND_DATA = 1               # region holds float64 values
KIND_RESULT = 2             # region holds int64 indices
HEADER_SIZE = 64            # bytes before the region; also its alignment
ITEM_SIZE = 8               # bytes per element, float64 and int64 alike

_HEADER = struct.Struct(
    "<"
    "I"    # 0   magic        SEGMENT_MAGIC
    "H"    # 4   version      VERSION
    "H"    # 6   kind         KIND_DATA or KIND_RESULT
    "I"    # 8   header_size  HEADER_SIZE: offset of the region
    "I"    # 12  flags        0 in v1; a reader rejects anything else
    "Q"    # 16  capacity     elements the region holds, fixed at creation
    "Q"    # 24  count        data: elements valid; result: indices written
    "I"    # 32  status       result: Status of the last answer; data: 0
    "I"    # 36  reserved     0
    "Q"    # 40  needed       result: indices the last answer has (> capacity
           #                  when TOO_SMALL); data: 0
    "16x"  # 48  reserved     zero
)
assert _HEADER.size == HEADER_SIZE

# Byte offsets of the header fields a writer updates in place.
OFF_COUNT = 24
OFF_STATUS = 32
OFF_NEEDED = 40


class SegmentHeader(NamedTuple):
    kind: int
    capacity: int
    count: int
    status: int = 0
    needed: int = 0
    magic: int = SEGMENT_MAGIC
    version: int = VERSION
    header_size: int = HEADER_SIZE
    flags: int = 0


def pack_header(h: SegmentHeader) -> bytes:
    return _HEADER.pack(h.magic, h.version, h.kind, h.header_size, h.flags,
                        h.capacity, h.count, h.status, 0, h.needed)


def unpack_header(buf) -> SegmentHeader:
    """Decode the first 64 bytes of *buf*; no validation (see check_header)."""
    (magic, version, kind, header_size, flags, capacity, count, status,
     _reserved, needed) = _HEADER.unpack_from(buf, 0)
    return SegmentHeader(kind, capacity, count, status, needed,
                         magic, version, header_size, flags)


def check_header(h: SegmentHeader, kind: int, segment_size: int) -> str | None:
    """Return why *h* is unusable as a *kind* segment of *segment_size* bytes,
    or None when it is sound.  The capacity comes from the header and must fit
    in the segment; the segment size is never taken as the element count."""
    if h.magic != SEGMENT_MAGIC:
        return f"bad magic 0x{h.magic:08x} (want 0x{SEGMENT_MAGIC:08x})"
    if h.version != VERSION:
        return f"unsupported layout version {h.version} (this reader speaks {VERSION})"
    if h.kind != kind:
        return f"segment kind {h.kind}, expected {kind}"
    if h.header_size != HEADER_SIZE or h.flags != 0:
        return f"header_size {h.header_size} / flags {h.flags} not valid in v1"
    if h.capacity > (segment_size - HEADER_SIZE) // ITEM_SIZE or segment_size < HEADER_SIZE:
        return (f"capacity {h.capacity} does not fit in a segment of "
                f"{segment_size} bytes")
    if kind == KIND_DATA and h.count > h.capacity:
        return f"count {h.count} exceeds capacity {h.capacity}"
    return None


def segment_size(capacity: int) -> int:
    return HEADER_SIZE + ITEM_SIZE * capacity


# -- names --------------------------------------------------------------------

NAME_SIZE = 64          # bytes of a name field in a request, NUL-padded
NAME_PREFIX = "shmpool-"
NAME_RE = re.compile(r"shmpool-[A-Za-z0-9_-]{1,55}")
# Names a creator may reap after its owner dies: shmpool-<pid>-<start>-<hex>,
# where <start> is field 22 of /proc/<pid>/stat (clock ticks since boot).
OWNED_NAME_RE = re.compile(r"shmpool-([0-9]+)-([0-9]+)-([0-9a-f]{8,32})")


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


# -- control messages (SOCK_SEQPACKET, one message per packet) ----------------

REQUEST_MAGIC = 0x514D4853  # b"SHMQ"
REPLY_MAGIC = 0x524D4853    # b"SHMR"

OP_DETECT = 1               # detect over data[start:start+count] into out
OP_PING = 2                 # no segments; answered with OK

POLICY_DEFAULT = 0          # the server's nan_policy
POLICY_PROPAGATE = 1        # numpy's arithmetic: any NaN/inf -> no outliers
POLICY_OMIT = 2             # non-finite values ignored, never reported
POLICY_RAISE = 3            # any non-finite value is an error (NON_FINITE)
POLICY_NAMES = {POLICY_PROPAGATE: "propagate", POLICY_OMIT: "omit",
                POLICY_RAISE: "raise"}

_REQUEST = struct.Struct(
    "<"
    "I"    # 0   magic        REQUEST_MAGIC
    "H"    # 4   version      VERSION
    "H"    # 6   op           OP_DETECT or OP_PING
    "Q"    # 8   request_id   chosen by the host, echoed in the reply
    "Q"    # 16  start        first element of the data region to read
    "Q"    # 24  count        elements to read; start + count <= data count
    "d"    # 32  threshold    k in |x - mean| > k * std; NaN = server default
    "I"    # 40  nan_policy   POLICY_*
    "I"    # 44  flags        0 in v1
    "64s"  # 48  data_name    data segment name, NUL-padded
    "64s"  # 112 out_name     result segment name, NUL-padded
)
REQUEST_SIZE = _REQUEST.size
assert REQUEST_SIZE == 176

_REPLY = struct.Struct(
    "<"
    "I"    # 0   magic          REPLY_MAGIC
    "H"    # 4   version        VERSION
    "H"    # 6   status         Status code, 0 = OK
    "Q"    # 8   request_id     copied from the request (0 if unreadable)
    "Q"    # 16  count          indices written to the result region
    "Q"    # 24  needed         indices in the answer (TOO_SMALL: > capacity)
    "I"    # 32  type_len       bytes of the error type name that follow
    "I"    # 36  message_len    bytes of the error message after the type
    "I"    # 40  traceback_len  bytes of the remote traceback after the message
    "I"    # 44  reserved       0
)
REPLY_HEAD_SIZE = _REPLY.size
assert REPLY_HEAD_SIZE == 48
MAX_TYPE = 256
MAX_MESSAGE = 8192
MAX_TRACEBACK = 32768
MAX_REPLY = 65536           # a receive buffer this large always suffices


class Status:
    """Status codes, shared by replies and result-segment headers."""
    OK = 0
    BAD_MESSAGE = 1       # request of the wrong size, magic, version, op or flags
    BAD_NAME = 2          # a segment name breaks the naming rule
    NO_SEGMENT = 3        # no such segment (never created, or already unlinked)
    NOT_PERMITTED = 4     # other owner, mode wider than 0600, not a regular file
    BAD_HEADER = 5        # header magic/version/kind/size wrong, or capacity > segment
    OUT_OF_RANGE = 6      # start + count beyond the data segment's count
    TOO_SMALL = 7         # result capacity < needed; nothing was written
    DETECTOR_ERROR = 8    # the detector raised; type, message, traceback follow
    WORKER_DIED = 9       # the worker died during the call
    NON_FINITE = 10       # NaN or inf in the data under nan_policy raise
    BAD_VALUE = 11        # threshold negative or not finite
    TIMEOUT = 12          # the call exceeded the server's time limit
    SHUTTING_DOWN = 13    # the server is stopping
    INTERNAL = 14         # a bug in shmpool; the message says where

    names = {}


Status.names = {v: k for k, v in vars(Status).items()
                if k.isupper() and isinstance(v, int)}


class Request(NamedTuple):
    op: int
    request_id: int
    start: int = 0
    count: int = 0
    threshold: float = float("nan")
    nan_policy: int = POLICY_DEFAULT
    data_name: str = ""
    out_name: str = ""
    flags: int = 0
    magic: int = REQUEST_MAGIC
    version: int = VERSION


class Reply(NamedTuple):
    status: int
    request_id: int
    count: int = 0
    needed: int = 0
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    magic: int = REPLY_MAGIC
    version: int = VERSION


def _name_field(name: str) -> bytes:
    raw = name.encode("ascii")
    if len(raw) >= NAME_SIZE:
        raise ValueError(f"segment name is {len(raw)} bytes; the limit is {NAME_SIZE - 1}")
    return raw


def pack_request(r: Request) -> bytes:
    return _REQUEST.pack(r.magic, r.version, r.op, r.request_id, r.start,
                         r.count, r.threshold, r.nan_policy, r.flags,
                         _name_field(r.data_name), _name_field(r.out_name))


class DecodeError(ValueError):
    """A message or field that breaks the layout; .status says which code."""

    def __init__(self, status: int, message: str, request_id: int = 0):
        super().__init__(message)
        self.status = status
        self.request_id = request_id


def _decode_name(raw: bytes, field: str, request_id: int) -> str:
    text, _, pad = raw.partition(b"\0")
    if pad.strip(b"\0"):
        raise DecodeError(Status.BAD_NAME, f"{field}: bytes after the terminating NUL", request_id)
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError(Status.BAD_NAME, f"{field}: not ASCII", request_id) from None


def unpack_request(buf: bytes) -> Request:
    """Decode and validate one request packet; raise DecodeError otherwise."""
    if len(buf) != REQUEST_SIZE:
        raise DecodeError(Status.BAD_MESSAGE,
                          f"request is {len(buf)} bytes; v1 requests are {REQUEST_SIZE}")
    (magic, version, op, rid, start, count, threshold, policy, flags,
     data_raw, out_raw) = _REQUEST.unpack(buf)
    if magic != REQUEST_MAGIC:
        raise DecodeError(Status.BAD_MESSAGE, f"bad request magic 0x{magic:08x}")
    if version != VERSION:
        raise DecodeError(Status.BAD_MESSAGE,
                          f"unsupported protocol version {version} (server speaks {VERSION})", rid)
    if op not in (OP_DETECT, OP_PING):
        raise DecodeError(Status.BAD_MESSAGE, f"unknown op {op}", rid)
    if flags != 0:
        raise DecodeError(Status.BAD_MESSAGE, f"flags must be 0 in v1, got {flags}", rid)
    if policy not in (POLICY_DEFAULT, *POLICY_NAMES):
        raise DecodeError(Status.BAD_VALUE, f"unknown nan_policy {policy}", rid)
    if threshold == threshold and not (0.0 <= threshold < float("inf")):
        raise DecodeError(Status.BAD_VALUE, f"threshold must be finite and >= 0, got {threshold!r}", rid)
    data_name = _decode_name(data_raw, "data_name", rid)
    out_name = _decode_name(out_raw, "out_name", rid)
    if op == OP_DETECT:
        for field, name in (("data_name", data_name), ("out_name", out_name)):
            if not valid_name(name):
                raise DecodeError(Status.BAD_NAME, f"{field} {name!r} breaks the naming rule "
                                  f"{NAME_RE.pattern}", rid)
    return Request(op, rid, start, count, threshold, policy, data_name,
                   out_name, flags, magic, version)


def pack_reply(r: Reply) -> bytes:
    etype = r.error_type.encode("utf-8", "replace")[:MAX_TYPE]
    msg = r.message.encode("utf-8", "replace")[:MAX_MESSAGE]
    tb = r.traceback.encode("utf-8", "replace")[-MAX_TRACEBACK:]
    head = _REPLY.pack(r.magic, r.version, r.status, r.request_id, r.count,
                       r.needed, len(etype), len(msg), len(tb), 0)
    return head + etype + msg + tb


def unpack_reply(buf: bytes) -> Reply:
    if len(buf) < REPLY_HEAD_SIZE:
        raise DecodeError(Status.BAD_MESSAGE, f"reply is {len(buf)} bytes; the head alone is 48")
    (magic, version, status, rid, count, needed, tlen, mlen, tblen,
     _reserved) = _REPLY.unpack_from(buf, 0)
    if magic != REPLY_MAGIC or version != VERSION:
        raise DecodeError(Status.BAD_MESSAGE, f"bad reply magic/version 0x{magic:08x}/{version}")
    if REPLY_HEAD_SIZE + tlen + mlen + tblen != len(buf):
        raise DecodeError(Status.BAD_MESSAGE, "reply text lengths do not match its size")
    text = bytes(buf[REPLY_HEAD_SIZE:])
    etype = text[:tlen].decode("utf-8", "replace")
    msg = text[tlen:tlen + mlen].decode("utf-8", "replace")
    tb = text[tlen + mlen:].decode("utf-8", "replace")
    return Reply(status, rid, count, needed, etype, msg, tb, magic, version)
