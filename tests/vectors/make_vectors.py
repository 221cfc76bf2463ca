"""Regenerate tests/vectors/v2.txt from shmpool.layout and shmpool.detectors.

Run by hand (``python tests/vectors/make_vectors.py``) only when the layout
changes; the Python, Go and C tests compare against the committed file.

Line kinds (``<kind> <case> field=value ... [hex=<bytes>]``, no spaces in
values):

  header, request, reply   encode and decode must both match hex
  bad_request              decoding must fail with status=
  table                    hex is an INFO message text; it parses to these rows
                           (params: each row's name=default pairs joined by ',', rows separated by ';')
  split                    split(n, k) gives bounds (a:b,...), and split_count(n, lanes) gives k
  call                     data made by the splitmix64 generator below; a host
                           that splits it over `lanes` connections to a
                           `classic` server gets exactly these answers

The generator, for i = 0 .. n-1 (all arithmetic mod 2^64):

  s += 0x9E3779B97F4A7C15; z = s
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ^ (z >> 27)) * 0x94D049BB133111EB
  z = z ^ (z >> 31)
  x[i] = (z >> 11) * 2^-53                      (uniform in [0, 1))
  if every > 0 and i % every == 7: x[i] += 97    (planted outliers)
  if i == nan_at: x[i] = NaN

with s starting at `seed`.  `fnv` is FNV-1a 64 over the answer's indices as
little-endian int64 bytes; `head` its first (up to) five indices.
"""
import math
import pathlib
import struct

import numpy as np

from shmpool import detectors
from shmpool import layout as L

D = "shmpool-1234-0a1b2c3d-00112233aabbccdd"
OUT = "shmpool-1234-0a1b2c3d-ffeeddccbbaa9988"
M64 = (1 << 64) - 1


def call(n, seed, every, nan_at, lanes, threshold, policy):
    """One call vector's fields (tests/test_layout.py and the adapters read them by name)."""
    return dict(n=n, seed=seed, every=every, nan_at=nan_at, lanes=lanes, threshold=threshold,
                policy=policy)


def fmt(fields):
    out = []
    for k, v in fields.items():
        if isinstance(v, float):
            v = "nan" if math.isnan(v) else repr(v)
        elif isinstance(v, tuple):
            v = ",".join("nan" if isinstance(x, float) and math.isnan(x) else repr(x) for x in v)
        out.append(f"{k}={v}")
    return " ".join(out)


def splitmix(n: int, seed: int, every: int = 0, nan_at: int = -1) -> np.ndarray:
    s = seed
    x = np.empty(n)
    for i in range(n):
        s = (s + 0x9E3779B97F4A7C15) & M64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        x[i] = (z >> 11) * 2.0 ** -53
    if every:
        x[7::every] += 97.0
    if nan_at >= 0:
        x[nan_at] = math.nan
    return x


def fnv(idx: np.ndarray) -> int:
    h = 0xCBF29CE484222325
    for b in idx.astype("<i8").tobytes():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def main():
    lines = [
        "# shmpool layout v2 golden vectors; see tests/vectors/make_vectors.py for the kinds",
        "# and the data generator of the call lines. Strings contain no spaces.",
    ]
    headers = {
        "data_1000": dict(kind=1, capacity=1000, count=1000, status=0, needed=0),
        "result_ok": dict(kind=2, capacity=16, count=3, status=0, needed=3),
        "result_too_small": dict(kind=2, capacity=4, count=0, status=7, needed=9),
    }
    for case, f in headers.items():
        lines.append(f"header {case} {fmt(f)} hex={L.pack_header(L.SegmentHeader(**f)).hex()}")

    nan = math.nan
    requests = {
        "detect": dict(op=L.Op.DETECT, request_id=42, start=0, count=1000, base=0, detector=0,
                       nan_policy=0, params=(2.0,), data_name=D, out_name=OUT, values=()),
        "detect_k3_raise": dict(op=L.Op.DETECT, request_id=18446744073709551615, start=8,
                                count=992, base=0, detector=0, nan_policy=3, params=(3.0,),
                                data_name=D, out_name=OUT, values=()),
        "detect_defaults": dict(op=L.Op.DETECT, request_id=1, start=0, count=0, base=0,
                                detector=1, nan_policy=2, params=(), data_name=D, out_name=OUT,
                                values=()),
        "ping": dict(op=L.Op.PING, request_id=7, start=0, count=0, base=0, detector=0,
                     nan_policy=0, params=(), data_name="", out_name="", values=()),
        "info": dict(op=L.Op.INFO, request_id=8, start=0, count=0, base=0, detector=0,
                     nan_policy=0, params=(), data_name="", out_name="", values=()),
        "summarize": dict(op=L.Op.SUMMARIZE, request_id=9, start=131072, count=131072,
                          base=131072, detector=0, nan_policy=1, params=(nan,), data_name=D,
                          out_name="", values=()),
        "combine": dict(op=L.Op.COMBINE, request_id=10, start=0, count=2, base=0, detector=0,
                        nan_policy=0, params=(2.5,), data_name="", out_name="",
                        values=(100.0, 0.5, 8.25, 0.0, -1.0, 100.0, 0.75, 9.0, 0.0, -1.0)),
        "flag": dict(op=L.Op.FLAG, request_id=11, start=1000, count=500, base=1000, detector=0,
                     nan_policy=0, params=(0.625, 0.75), data_name=D, out_name=OUT, values=()),
    }
    good = {}
    for case, f in requests.items():
        raw = L.pack_request(L.Request(**f))
        good[case] = raw
        lines.append(f"request {case} {fmt(f)} hex={raw.hex()}")

    replies = {
        "ok": dict(status=0, request_id=42, count=3, needed=3, values=(), error_type="",
                   message="", traceback=""),
        "too_small": dict(status=7, request_id=44, count=0, needed=9, values=(),
                          error_type="ResultTooSmall", message="need_9_slots", traceback=""),
        "detector_error": dict(status=8, request_id=43, count=0, needed=0, values=(),
                               error_type="ZeroDivisionError", message="division_by_zero",
                               traceback="Traceback_(most_recent_call_last):"),
        "summary": dict(status=0, request_id=9, count=0, needed=0,
                        values=(131072.0, 0.5, 10922.5, 0.0, -1.0), error_type="",
                        message="", traceback=""),
        "combined": dict(status=0, request_id=10, count=0, needed=0, values=(0.625, 0.75),
                         error_type="", message="", traceback=""),
        "nothing_to_flag": dict(status=0, request_id=12, count=0, needed=0, values=(),
                                error_type="", message="", traceback=""),
        "info": dict(status=0, request_id=8, count=0, needed=0,
                     values=(2.0, 2.0, 1.0, 4242.0, 3.0), error_type="",
                     message="classic_split_5_threshold=2.0", traceback=""),
        "bad_version": dict(status=16, request_id=5, count=0, needed=0, values=(),
                            error_type="ProtocolError", message="version_1", traceback=""),
    }
    for case, f in replies.items():
        lines.append(f"reply {case} {fmt(f)} hex={L.pack_reply(L.Reply(**f)).hex()}")

    d = good["detect"]
    c = good["combine"]
    bad = {
        "short": (L.Status.BAD_MESSAGE, d[:100]),
        "long": (L.Status.BAD_MESSAGE, d + b"\0"),
        "magic": (L.Status.BAD_MESSAGE, b"XXXX" + d[4:]),
        "tiny": (L.Status.BAD_MESSAGE, d[:6]),
        "version1": (L.Status.BAD_VERSION, d[:4] + struct.pack("<H", 1) + d[6:176]),
        "version3": (L.Status.BAD_VERSION, d[:4] + struct.pack("<H", 3) + d[6:]),
        "op": (L.Status.BAD_MESSAGE, d[:6] + struct.pack("<H", 9) + d[8:]),
        "flags": (L.Status.BAD_MESSAGE, d[:48] + struct.pack("<I", 1) + d[52:]),
        "reserved": (L.Status.BAD_MESSAGE, d[:252] + struct.pack("<I", 1)),
        "nparams": (L.Status.BAD_MESSAGE, d[:52] + struct.pack("<I", 9) + d[56:]),
        "values_on_detect": (L.Status.BAD_MESSAGE,
                             d[:248] + struct.pack("<I", 1) + d[252:] + struct.pack("<d", 1.0)),
        "values_missing": (L.Status.BAD_MESSAGE, c[:-8]),
        "too_many_values": (L.Status.BAD_MESSAGE, c[:248] + struct.pack("<I", 8193) + c[252:]),
        "policy": (L.Status.BAD_VALUE, d[:44] + struct.pack("<I", 4) + d[48:]),
        "slash_in_name": (L.Status.BAD_NAME, d[:120] + b"shmpool-../etc".ljust(64, b"\0") + d[184:]),
        "wrong_prefix": (L.Status.BAD_NAME, d[:120] + b"psm_1234".ljust(64, b"\0") + d[184:]),
        "empty_out_name": (L.Status.BAD_NAME, d[:184] + bytes(64) + d[248:]),
        "junk_after_nul": (L.Status.BAD_NAME, d[:120] + b"shmpool-a\0x".ljust(64, b"\0") + d[184:]),
        "non_ascii_name": (L.Status.BAD_NAME, d[:120] + b"shmpool-\xc3\xa9".ljust(64, b"\0") + d[184:]),
    }
    for case, (status, raw) in bad.items():
        lines.append(f"bad_request {case} status={status} hex={raw.hex()}")

    rows = [L.DetectorRow("classic", True, 5, (("threshold", 2.0),)),
            L.DetectorRow("mypkg.detectors:tukey", True, 37, (("k", 1.5),)),
            L.DetectorRow("mymod:plain", False, 0, ())]
    text = L.format_table(rows)
    lines.append(f"table three_rows names=classic,mypkg.detectors:tukey,mymod:plain "
                 f"split=1,1,0 sizes=5,37,0 params=threshold=2.0;k=1.5; hex={text.encode().hex()}")

    for n, lanes in ((262143, 2), (262144, 2), (262145, 4), (1_000_003, 2), (1_000_003, 3),
                     (10_000_000, 2), (10_000_000, 64), (393_216, 8)):
        k = L.split_count(n, lanes)
        bounds = ",".join(f"{a}:{b}" for a, b in L.split(n, k))
        lines.append(f"split n{n}_lanes{lanes} n={n} lanes={lanes} k={k} bounds={bounds}")

    calls = [
        ("planted_whole", call(1000, 1, 1000, -1, 2, 2.0, 0)),
        ("planted_split", call(300_000, 2, 1000, -1, 2, 2.0, 0)),
        ("uniform_split_k1_5", call(1_000_000, 3, 0, -1, 2, 1.5, 0)),
        ("uniform_split_3_lanes", call(1_000_003, 4, 0, -1, 3, 1.6, 0)),
        ("nan_raise_split", call(300_000, 5, 1000, 200_001, 2, 2.0, 3)),
        ("nan_omit_split", call(300_000, 5, 1000, 200_001, 2, 2.0, 2)),
    ]
    classic = detectors.Classic()
    for case, f in calls:
        x = splitmix(f["n"], f["seed"], f["every"], f["nan_at"])
        policy = L.POLICY_NAMES.get(f["policy"], "raise")
        k = L.split_count(f["n"], f["lanes"])
        chunks = L.split(f["n"], k)
        params = detectors.Params({"threshold": f["threshold"]}, policy)
        sums = [classic.summarize(x[a:b], params._replace(base=a)) for a, b in chunks]
        status, flag, idx = 0, (), np.empty(0, dtype=np.int64)
        try:
            flag = classic.combine(np.array(sums), params)
        except detectors.NonFiniteError:
            status = L.Status.NON_FINITE
        if status == 0 and flag is not None:
            idx = np.concatenate([classic.flag(x[a:b], np.array(flag), params) + a
                                  for a, b in chunks])
            whole = classic.detect(x, params)
            assert np.array_equal(idx, whole) or k > 1
        hexs = ",".join(struct.pack("<d", v).hex() for s in sums for v in s)
        flag_hex = ",".join(struct.pack("<d", v).hex() for v in (flag or ()))
        head = ",".join(str(int(i)) for i in idx[:5])
        lines.append(f"call {case} {fmt(f)} k={k} summaries={hexs} flag={flag_hex or '-'} "
                     f"status={status} count={len(idx)} fnv={fnv(idx)} head={head or '-'}")

    pathlib.Path(__file__).with_name("v2.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
