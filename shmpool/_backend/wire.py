"""Private messages between a pool and its workers (one SEQPACKET per message).

Unlike shmpool.layout this is not a contract: both ends ship in the same
package version.  Fixed-size structs keep the hot path free of pickling.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# ops, host -> worker
DETECT = 1   # whole detector over data[start:start+count]; answer into out
STATS = 2    # pass 1 over data[start:start+count]
THRESH = 3   # pass 2 over data[start:start+count] with (mean, cut); indices + base
WRITE = 4    # write the answer kept from the last DETECT/THRESH into out
FORGET = 5   # unmap data_name and out_name if mapped (no reply)

# flags
VERIFY = 1   # foreign segments: re-check the inode each call (a host may recreate a name)

POLICY_CODES = {"raise": 0, "omit": 1, "propagate": 2}
POLICY_NAMES = {v: k for k, v in POLICY_CODES.items()}

_REQ = struct.Struct("<BBH4xQQQQddd64s64s")
REQ_SIZE = _REQ.size


class Req(NamedTuple):
    op: int
    policy: int = 0
    flags: int = 0
    start: int = 0
    count: int = 0
    base: int = 0          # THRESH: added to every index
    out_off: int = 0       # element offset in the result region
    threshold: float = 2.0
    mean: float = 0.0      # THRESH
    cut: float = 0.0       # THRESH
    data_name: str = ""
    out_name: str = ""


def pack_req(r: Req) -> bytes:
    return _REQ.pack(r.op, r.policy, r.flags, r.start, r.count, r.base, r.out_off,
                     r.threshold, r.mean, r.cut, r.data_name.encode(), r.out_name.encode())


def unpack_req(buf: bytes) -> Req:
    f = list(_REQ.unpack(buf))
    f[-2] = f[-2].rstrip(b"\0").decode()
    f[-1] = f[-1].rstrip(b"\0").decode()
    return Req(*f)


# reply, worker -> host: fixed head then type, message, traceback texts
_REP = struct.Struct("<IIQQQQqddIII")
REP_HEAD = _REP.size
MAX_REP = 65536


class Rep(NamedTuple):
    status: int
    written: int = 0       # indices written to out (0 when they did not fit)
    needed: int = 0        # indices in the answer
    n: int = 0             # STATS: finite values
    nonfinite: int = 0     # STATS
    first_nonfinite: int = -1
    mean: float = 0.0      # STATS
    m2: float = 0.0        # STATS
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    fits: int = 1          # 0: the answer is kept for a WRITE


def pack_rep(r: Rep) -> bytes:
    t = r.error_type.encode()[:256]
    m = r.message.encode("utf-8", "replace")[:8192]
    tb = r.traceback.encode("utf-8", "replace")[-32768:]
    return _REP.pack(r.status, r.fits, r.written, r.needed, r.n, r.nonfinite,
                     r.first_nonfinite, r.mean, r.m2, len(t), len(m), len(tb)) + t + m + tb


def unpack_rep(buf: bytes) -> Rep:
    (status, fits, written, needed, n, nonfinite, first, mean, m2,
     tl, ml, tbl) = _REP.unpack_from(buf, 0)
    text = bytes(buf[REP_HEAD:])
    return Rep(status, written, needed, n, nonfinite, first, mean, m2,
               text[:tl].decode(), text[tl:tl + ml].decode("utf-8", "replace"),
               text[tl + ml:tl + ml + tbl].decode("utf-8", "replace"), fits)
