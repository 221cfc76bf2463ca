"""Regenerate tests/vectors/v1.txt from shmpool.layout (run by hand only when
the layout version changes; the tests compare against the committed file)."""
import math
import pathlib
import struct

from shmpool import layout as L

D = "shmpool-1234-5678-00112233aabbccdd"
O = "shmpool-1234-5678-ffeeddccbbaa9988"


def fmt(fields):
    out = []
    for k, v in fields.items():
        if isinstance(v, float):
            v = "nan" if math.isnan(v) else repr(v)
        out.append(f"{k}={v}")
    return " ".join(out)


lines = [
    "# shmpool layout v1 golden vectors: <struct> <case> field=value ... hex=<bytes>",
    "# structs: header, request, reply (decode and encode both must match);",
    "# bad_request: decoding must fail with the given status. Strings contain no spaces.",
]
headers = {
    "data_1000": dict(kind=1, capacity=1000, count=1000, status=0, needed=0),
    "result_ok": dict(kind=2, capacity=16, count=3, status=0, needed=3),
    "result_too_small": dict(kind=2, capacity=4, count=0, status=7, needed=9),
}
for case, f in headers.items():
    h = L.SegmentHeader(**f)
    lines.append(f"header {case} {fmt(f)} hex={L.pack_header(h).hex()}")

requests = {
    "detect": dict(op=1, request_id=42, start=0, count=1000, threshold=2.0, nan_policy=0, data_name=D, out_name=O),
    "detect_k3_raise": dict(op=1, request_id=18446744073709551615, start=8, count=992, threshold=3.0, nan_policy=3, data_name=D, out_name=O),
    "detect_default_k": dict(op=1, request_id=1, start=0, count=0, threshold=float("nan"), nan_policy=2, data_name=D, out_name=O),
    "ping": dict(op=2, request_id=7, start=0, count=0, threshold=0.0, nan_policy=0, data_name="", out_name=""),
}
good = {}
for case, f in requests.items():
    raw = L.pack_request(L.Request(**f))
    good[case] = raw
    lines.append(f"request {case} {fmt(f)} hex={raw.hex()}")

replies = {
    "ok": dict(status=0, request_id=42, count=3, needed=3, error_type="", message="", traceback=""),
    "too_small": dict(status=7, request_id=44, count=0, needed=9, error_type="ResultTooSmall", message="need_9_slots", traceback=""),
    "detector_error": dict(status=8, request_id=43, count=0, needed=0, error_type="ZeroDivisionError", message="division_by_zero", traceback="Traceback_(most_recent_call_last):"),
}
for case, f in replies.items():
    lines.append(f"reply {case} {fmt(f)} hex={L.pack_reply(L.Reply(**f)).hex()}")

d = good["detect"]
bad = {
    "short": (L.Status.BAD_MESSAGE, d[:100]),
    "long": (L.Status.BAD_MESSAGE, d + b"\0"),
    "magic": (L.Status.BAD_MESSAGE, b"XXXX" + d[4:]),
    "version": (L.Status.BAD_MESSAGE, d[:4] + struct.pack("<H", 2) + d[6:]),
    "op": (L.Status.BAD_MESSAGE, d[:6] + struct.pack("<H", 9) + d[8:]),
    "flags": (L.Status.BAD_MESSAGE, d[:44] + struct.pack("<I", 1) + d[48:]),
    "policy": (L.Status.BAD_VALUE, d[:40] + struct.pack("<I", 4) + d[44:]),
    "negative_threshold": (L.Status.BAD_VALUE, d[:32] + struct.pack("<d", -1.0) + d[40:]),
    "inf_threshold": (L.Status.BAD_VALUE, d[:32] + struct.pack("<d", float("inf")) + d[40:]),
    "slash_in_name": (L.Status.BAD_NAME, d[:48] + b"shmpool-../etc".ljust(64, b"\0") + d[112:]),
    "wrong_prefix": (L.Status.BAD_NAME, d[:48] + b"psm_1234".ljust(64, b"\0") + d[112:]),
    "empty_out_name": (L.Status.BAD_NAME, d[:112] + bytes(64)),
    "junk_after_nul": (L.Status.BAD_NAME, d[:48] + b"shmpool-a\0x".ljust(64, b"\0") + d[112:]),
}
for case, (status, raw) in bad.items():
    lines.append(f"bad_request {case} status={status} hex={raw.hex()}")

pathlib.Path(__file__).with_name("v1.txt").write_text("\n".join(lines) + "\n")
