"""The byte layout of shmpool v2: segments and the messages hosts and workers exchange.

This module is the contract that docs/LAYOUT.md describes and that the Go
and C host adapters implement; ``tests/test_layout.py`` holds them equal.  It
holds layout and nothing else: no I/O, no policy, no imports from the rest of
the package.  Every integer is little-endian.

A segment is a POSIX shared-memory object (``/dev/shm/<name>``)::

    offset 0                     64                         64 + 8 * capacity
           +---------------------+---------------------------+
           | SegmentHeader (64)  | region: capacity * 8 bytes |
           +---------------------+---------------------------+

The region holds float64 values (a *data* segment, written by the host) or
int64 indices (a *result* segment, written by a worker).  Messages travel
over a Unix SOCK_SEQPACKET connection between a host and one worker, one
message per packet::

    request = RequestHead (256) + nvalues float64      host -> worker
    reply   = ReplyHead (48) + nvalues float64 + text  worker -> host
"""

from __future__ import annotations

import math
import re
import struct
from typing import NamedTuple

VERSION = 2

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
    "I"    # 12  flags        0; a reader rejects anything else
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
    count: int  # type: ignore[assignment]  # shadows tuple.count
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
    """Why *h* is unusable as a *kind* segment of *segment_size* bytes, or None.

    The checks of LAYOUT.md 1.2, in order.  The capacity comes from the header
    and must fit in the segment; the file size is never taken as the count."""
    if h.magic != SEGMENT_MAGIC:
        return f"bad magic 0x{h.magic:08x} (want 0x{SEGMENT_MAGIC:08x})"
    if h.version != VERSION:
        return f"segment layout version {h.version}; this reader speaks {VERSION}"
    if h.kind != kind:
        return f"segment kind {h.kind}, expected {kind}"
    if h.header_size != HEADER_SIZE or h.flags != 0:
        return f"header_size {h.header_size} / flags {h.flags} not valid in v{VERSION}"
    if segment_size < HEADER_SIZE or h.capacity > (segment_size - HEADER_SIZE) // ITEM_SIZE:
        return f"capacity {h.capacity} does not fit in a segment of {segment_size} bytes"
    if kind == KIND_DATA and h.count > h.capacity:
        return f"count {h.count} exceeds capacity {h.capacity}"
    return None


def segment_size(capacity: int) -> int:
    return HEADER_SIZE + ITEM_SIZE * capacity


# -- names and owners -----------------------------------------------------------

NAME_SIZE = 64          # bytes of a name field in a request, NUL-padded
NAME_RE = re.compile(r"shmpool-[A-Za-z0-9_-]{1,55}")
# A creator's segments: shmpool-<owner>-<16 hex>, where <owner> is
# <pid>-<8 hex> (the pid only informs people; it proves nothing).  The owner
# holds a shared flock on /dev/shm/shmpool-<owner>-owner while it lives.
OWNER_RE = re.compile(r"[0-9]{1,10}-[0-9a-f]{8}")
OWNED_NAME_RE = re.compile(rf"shmpool-({OWNER_RE.pattern})-([0-9a-f]{{16}}|owner)")
OWNER_LOCK_SUFFIX = "owner"


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def owner_lock_name(owner: str) -> str:
    return f"shmpool-{owner}-{OWNER_LOCK_SUFFIX}"


# -- messages -------------------------------------------------------------------

REQUEST_MAGIC = 0x514D4853  # b"SHMQ"
REPLY_MAGIC = 0x524D4853    # b"SHMR"


class Op:
    """Request operations (LAYOUT.md 2.5)."""
    DETECT = 1      # the whole detector over data[start:start+count] into out
    PING = 2        # nothing; answered OK
    INFO = 3        # the worker's facts and the detector table
    SUMMARIZE = 4   # phase 1 of a split call: one chunk's summary (reply values)
    COMBINE = 5     # the chunks' summaries (request values) -> flag parameters
    FLAG = 6        # phase 2: one chunk's indices + base into out

    names: dict[int, str] = {}


Op.names = {v: k for k, v in vars(Op).items() if k.isupper()}
OPS_WITH_DATA = (Op.DETECT, Op.SUMMARIZE, Op.FLAG)
OPS_WITH_OUT = (Op.DETECT, Op.FLAG)

POLICY_DEFAULT = 0          # the server's nan_policy
POLICY_PROPAGATE = 1        # numpy's arithmetic: any NaN/inf -> no outliers
POLICY_OMIT = 2             # non-finite values ignored, never reported
POLICY_RAISE = 3            # any non-finite value is an error (NON_FINITE)
POLICY_NAMES = {POLICY_PROPAGATE: "propagate", POLICY_OMIT: "omit", POLICY_RAISE: "raise"}
POLICY_CODES = {v: k for k, v in POLICY_NAMES.items()}

MAX_PARAMS = 8              # float64 parameters a request carries
MAX_REQUEST_VALUES = 8192   # float64 values after a request head (COMBINE)
MAX_REPLY_VALUES = 64       # float64 values after a reply head
MAX_TYPE = 256
MAX_MESSAGE = 8192
MAX_TRACEBACK = 32768

_REQUEST = struct.Struct(
    "<"
    "I"    # 0   magic        REQUEST_MAGIC
    "H"    # 4   version      VERSION
    "H"    # 6   op           Op.*
    "Q"    # 8   request_id   chosen by the host, echoed in the reply
    "Q"    # 16  start        first element of the data region to read
    "Q"    # 24  count        elements to read (COMBINE: summaries in values)
    "Q"    # 32  base         added to every index written (FLAG: chunk start)
    "I"    # 40  detector     row of the detector table; 0 is the default
    "I"    # 44  nan_policy   POLICY_*
    "I"    # 48  flags        0
    "I"    # 52  nparams      entries of params that are set (0..MAX_PARAMS)
    "8d"   # 56  params       detector parameters; FLAG: the flag parameters
    "64s"  # 120 data_name    data segment name, NUL-padded
    "64s"  # 184 out_name     result segment name, NUL-padded
    "I"    # 248 nvalues      float64 values after the head (COMBINE only)
    "I"    # 252 reserved     0
)
REQUEST_HEAD_SIZE = _REQUEST.size
assert REQUEST_HEAD_SIZE == 256
MAX_REQUEST = REQUEST_HEAD_SIZE + 8 * MAX_REQUEST_VALUES

_REPLY = struct.Struct(
    "<"
    "I"    # 0   magic          REPLY_MAGIC
    "H"    # 4   version        VERSION
    "H"    # 6   status         Status code, 0 = OK
    "Q"    # 8   request_id     copied from the request (0 if unreadable)
    "Q"    # 16  count          indices written to the result region
    "Q"    # 24  needed         indices in the answer (TOO_SMALL: > capacity)
    "I"    # 32  type_len       bytes of the error type name in the text
    "I"    # 36  message_len    bytes of the message after the type
    "I"    # 40  traceback_len  bytes of the remote traceback after the message
    "I"    # 44  nvalues        float64 values between the head and the text
)
REPLY_HEAD_SIZE = _REPLY.size
assert REPLY_HEAD_SIZE == 48
MAX_REPLY = 65536           # a receive buffer this large always suffices
assert REPLY_HEAD_SIZE + 8 * MAX_REPLY_VALUES + MAX_TYPE + MAX_MESSAGE + MAX_TRACEBACK <= MAX_REPLY

# INFO reply values, by position.
INFO_VERSION = 0            # VERSION
INFO_WORKERS = 1            # workers the server (or pool) runs
INFO_WORKER = 2             # this worker's index, 0 .. workers-1
INFO_PID = 3                # this worker's process id (in its own namespace)
INFO_NAN_POLICY = 4         # the default nan_policy, as a POLICY_* code
INFO_VALUES = 5

# The classic detector's summary (SUMMARIZE reply values), by position.
SUMMARY_N = 0               # finite values counted
SUMMARY_MEAN = 1            # their mean
SUMMARY_M2 = 2              # sum of squared deviations from that mean
SUMMARY_NONFINITE = 3       # NaN and inf values seen
SUMMARY_FIRST = 4           # index (+ base) of the first of them, or -1
CLASSIC_SUMMARY_SIZE = 5


class Status:
    """Status codes, shared by replies and result-segment headers."""
    OK = 0
    BAD_MESSAGE = 1       # wrong size, magic, op, flags, nparams or nvalues
    BAD_NAME = 2          # a segment name breaks the naming rule
    NO_SEGMENT = 3        # no such segment (never created, or already unlinked)
    NOT_PERMITTED = 4     # other owner, mode wider than 0600, not a regular file
    BAD_HEADER = 5        # header magic/version/kind/size wrong, or capacity > segment
    OUT_OF_RANGE = 6      # start + count beyond the data segment's count
    TOO_SMALL = 7         # result capacity < needed; count 0, region unspecified
    DETECTOR_ERROR = 8    # the detector raised; type, message, traceback follow
    WORKER_DIED = 9       # the worker died during the call
    NON_FINITE = 10       # NaN/inf under nan_policy raise, or statistics overflow
    BAD_VALUE = 11        # a parameter, nan_policy or detector row out of range
    TIMEOUT = 12          # the call exceeded the server's time limit
    SHUTTING_DOWN = 13    # the server is stopping
    INTERNAL = 14         # a bug in shmpool; the message says where
    BUSY = 15             # the server holds as many connections as it can
    BAD_VERSION = 16      # the request's version is not this one

    names: dict[int, str] = {}


Status.names = {v: k for k, v in vars(Status).items() if k.isupper() and isinstance(v, int)}


class Request(NamedTuple):
    op: int
    request_id: int = 0
    start: int = 0
    count: int = 0  # type: ignore[assignment]  # shadows tuple.count
    base: int = 0
    detector: int = 0
    nan_policy: int = POLICY_DEFAULT
    params: tuple = ()          # at most MAX_PARAMS floats; unset ones are NaN
    data_name: str = ""
    out_name: str = ""
    values: tuple = ()          # COMBINE: count summaries, back to back
    flags: int = 0
    magic: int = REQUEST_MAGIC
    version: int = VERSION


class Reply(NamedTuple):
    status: int
    request_id: int = 0
    count: int = 0  # type: ignore[assignment]  # shadows tuple.count
    needed: int = 0
    values: tuple = ()
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    magic: int = REPLY_MAGIC
    version: int = VERSION


_NAN8 = (math.nan,) * MAX_PARAMS


def _name_field(name: str) -> bytes:
    raw = name.encode("ascii")
    if len(raw) >= NAME_SIZE:
        raise ValueError(f"segment name is {len(raw)} bytes; the limit is {NAME_SIZE - 1}")
    return raw


def pack_request(r: Request) -> bytes:
    if len(r.params) > MAX_PARAMS:
        raise ValueError(f"{len(r.params)} parameters; the limit is {MAX_PARAMS}")
    params = tuple(r.params) + _NAN8[len(r.params):]
    head = _REQUEST.pack(r.magic, r.version, r.op, r.request_id, r.start, r.count, r.base,
                         r.detector, r.nan_policy, r.flags, len(r.params), *params,
                         _name_field(r.data_name), _name_field(r.out_name), len(r.values), 0)
    if not r.values:
        return head
    return head + struct.pack(f"<{len(r.values)}d", *r.values)


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


def unpack_request(buf) -> Request:
    """Decode one request packet and check every field that needs no context
    (LAYOUT.md 2.6 steps 1-7); raise DecodeError otherwise.  The detector row
    and the parameters' values are checked by the worker, which knows its
    detector table."""
    buf = bytes(buf)
    rid = struct.unpack_from("<Q", buf, 8)[0] if len(buf) >= 16 else 0
    if len(buf) < 8 or struct.unpack_from("<I", buf, 0)[0] != REQUEST_MAGIC:
        raise DecodeError(Status.BAD_MESSAGE, "not a shmpool request (bad magic or under 8 bytes)")
    version = struct.unpack_from("<H", buf, 4)[0]
    if version != VERSION:
        raise DecodeError(Status.BAD_VERSION, f"request version {version}: this worker speaks "
                          f"LAYOUT v{VERSION} only (see docs/LAYOUT.md)", rid)
    if len(buf) < REQUEST_HEAD_SIZE:
        raise DecodeError(Status.BAD_MESSAGE, f"request is {len(buf)} bytes; a v{VERSION} head is "
                          f"{REQUEST_HEAD_SIZE}", rid)
    (magic, version, op, rid, start, count, base, detector, policy, flags, nparams, *rest
     ) = _REQUEST.unpack_from(buf, 0)
    params, (data_raw, out_raw, nvalues, reserved) = rest[:MAX_PARAMS], rest[MAX_PARAMS:]
    if op not in Op.names:
        raise DecodeError(Status.BAD_MESSAGE, f"unknown op {op}", rid)
    if flags != 0 or reserved != 0:
        raise DecodeError(Status.BAD_MESSAGE, f"flags {flags} / reserved {reserved} must be 0", rid)
    if nparams > MAX_PARAMS:
        raise DecodeError(Status.BAD_MESSAGE, f"nparams {nparams} exceeds {MAX_PARAMS}", rid)
    if nvalues > MAX_REQUEST_VALUES or (nvalues and op != Op.COMBINE):
        raise DecodeError(Status.BAD_MESSAGE, f"nvalues {nvalues} is not allowed for "
                          f"{Op.names[op]} (COMBINE only, at most {MAX_REQUEST_VALUES})", rid)
    if len(buf) != REQUEST_HEAD_SIZE + 8 * nvalues:
        raise DecodeError(Status.BAD_MESSAGE, f"request is {len(buf)} bytes; its head says "
                          f"{REQUEST_HEAD_SIZE + 8 * nvalues}", rid)
    if policy != POLICY_DEFAULT and policy not in POLICY_NAMES:
        raise DecodeError(Status.BAD_VALUE, f"unknown nan_policy {policy}", rid)
    data_name = _decode_name(data_raw, "data_name", rid)
    out_name = _decode_name(out_raw, "out_name", rid)
    for field, name, ops in (("data_name", data_name, OPS_WITH_DATA),
                             ("out_name", out_name, OPS_WITH_OUT)):
        if op in ops and not valid_name(name):
            raise DecodeError(Status.BAD_NAME, f"{field} {name!r} breaks the naming rule "
                              f"{NAME_RE.pattern}", rid)
    values = struct.unpack_from(f"<{nvalues}d", buf, REQUEST_HEAD_SIZE) if nvalues else ()
    return Request(op, rid, start, count, base, detector, policy, tuple(params[:nparams]),
                   data_name, out_name, values, flags, magic, version)


def pack_reply(r: Reply) -> bytes:
    etype = r.error_type.encode("utf-8", "replace")[:MAX_TYPE]
    msg = r.message.encode("utf-8", "replace")[:MAX_MESSAGE]
    tb = r.traceback.encode("utf-8", "replace")[-MAX_TRACEBACK:]
    values = tuple(r.values)[:MAX_REPLY_VALUES]
    head = _REPLY.pack(r.magic, r.version, r.status, r.request_id, r.count, r.needed,
                       len(etype), len(msg), len(tb), len(values))
    return head + struct.pack(f"<{len(values)}d", *values) + etype + msg + tb


def unpack_reply(buf) -> Reply:
    buf = bytes(buf)
    if len(buf) < REPLY_HEAD_SIZE:
        raise DecodeError(Status.BAD_MESSAGE, f"reply is {len(buf)} bytes; the head alone is "
                          f"{REPLY_HEAD_SIZE}")
    (magic, version, status, rid, count, needed, tlen, mlen, tblen, nvalues
     ) = _REPLY.unpack_from(buf, 0)
    if magic != REPLY_MAGIC:
        raise DecodeError(Status.BAD_MESSAGE, f"bad reply magic 0x{magic:08x}")
    if version != VERSION:
        raise DecodeError(Status.BAD_VERSION, f"reply version {version}; this host speaks "
                          f"LAYOUT v{VERSION}")
    if nvalues > MAX_REPLY_VALUES or REPLY_HEAD_SIZE + 8 * nvalues + tlen + mlen + tblen != len(buf):
        raise DecodeError(Status.BAD_MESSAGE, "reply lengths do not match its size")
    values = struct.unpack_from(f"<{nvalues}d", buf, REPLY_HEAD_SIZE)
    text = buf[REPLY_HEAD_SIZE + 8 * nvalues:]
    etype = text[:tlen].decode("utf-8", "replace")
    msg = text[tlen:tlen + mlen].decode("utf-8", "replace")
    tb = text[tlen + mlen:].decode("utf-8", "replace")
    return Reply(status, rid, count, needed, values, etype, msg, tb, magic, version)


# -- splitting a call (LAYOUT.md 5) -----------------------------------------------

SPLIT_MIN = 1 << 18         # a split-capable call of fewer values runs whole
SPLIT_CHUNK_MIN = 1 << 17   # no chunk is planned smaller than this


def split_count(n: int, lanes: int) -> int:
    """How many chunks a call of *n* values over *lanes* workers uses."""
    if n < SPLIT_MIN:
        return 1
    return max(1, min(lanes, n // SPLIT_CHUNK_MIN))


def split(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous chunks covering [0, n), inner boundaries on multiples of
    8 elements: chunk i starts at floor(floor(n * i / k) / 8) * 8."""
    bounds = [(n * i // k) // 8 * 8 for i in range(k)] + [n]
    return list(zip(bounds[:-1], bounds[1:]))


# -- the detector table (INFO reply message) ---------------------------------------

class DetectorRow(NamedTuple):
    """One row of a server's detector table: what a host may ask for."""
    name: str                   # "classic" or "package.module:name"
    split: bool                 # True: SUMMARIZE/COMBINE/FLAG work; False: DETECT only
    summary_size: int           # float64 values in one SUMMARIZE reply (0 when not split)
    params: tuple = ()          # ((name, default), ...) in request order


def format_table(rows) -> str:
    """The INFO message text: one line per row,
    ``<name> <split|whole> <summary_size> [<param>=<default> ...]``."""
    lines = []
    for r in rows:
        words = [r.name, "split" if r.split else "whole", str(r.summary_size)]
        words += [f"{p}={float(v)!r}" for p, v in r.params]
        lines.append(" ".join(words))
    return "\n".join(lines)


def parse_table(text: str) -> list[DetectorRow]:
    rows = []
    for line in text.splitlines():
        name, kind, size, *params = line.split()
        pairs = tuple((p, float(v)) for p, v in (w.split("=", 1) for w in params))
        rows.append(DetectorRow(name, kind == "split", int(size), pairs))
    return rows
