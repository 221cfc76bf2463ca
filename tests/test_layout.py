"""The contract: layout.py, docs/LAYOUT.md, the golden vectors, and the C
extension's copy of the numbers all agree; hosts split calls identically."""

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from shmpool import layout as L
from shmpool._backend.native import native

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "LAYOUT.md").read_text()
VECTORS = ROOT / "tests" / "vectors" / "v2.txt"
TYPES = {"I": ("u32", 4), "H": ("u16", 2), "Q": ("u64", 8), "d": ("f64", 8)}


def struct_fields(s: struct.Struct):
    """(offset, size, type) of every field of a Struct, padding as '—';
    a run like '8d' is one field."""
    out, off = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", s.format.lstrip("<")):
        count = int(count or 1)
        if code == "x":
            out.append((off, count, "—"))
            off += count
        elif code == "s":
            out.append((off, count, "bytes"))
            off += count
        else:
            out.append((off, TYPES[code][1] * count, TYPES[code][0]))
            off += TYPES[code][1] * count
    return out


def doc_table(heading: str):
    """(offset, size, type, field) rows of the table under a LAYOUT.md heading."""
    section = DOC.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\|\s*(\d+|…)\s*\|\s*(\d+|…)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|", line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3), m.group(4)))
    return rows


@pytest.mark.parametrize("heading,s", [
    ("### 1.1 Header", L._HEADER), ("### 2.3 Request", L._REQUEST), ("### 2.4 Reply", L._REPLY)])
def test_doc_tables_match_the_structs(heading, s):
    doc = [(int(off), int(size), typ) for off, size, typ, _ in doc_table(heading)
           if size != "…" and off != "…"]
    assert doc == struct_fields(s)


def test_doc_field_names_match_the_code():
    assert [r[3] for r in doc_table("### 1.1 Header")] == [
        "magic", "version", "kind", "header_size", "flags", "capacity", "count", "status",
        "reserved", "needed", "reserved"]
    assert [r[3] for r in doc_table("### 2.3 Request")] == [
        "magic", "version", "op", "request_id", "start", "count", "base", "detector",
        "nan_policy", "flags", "nparams", "params", "data_name", "out_name", "nvalues",
        "reserved", "values"]
    assert [r[3] for r in doc_table("### 2.4 Reply")] == [
        "magic", "version", "status", "request_id", "count", "needed", "type_len",
        "message_len", "traceback_len", "nvalues", "values", "text"]
    assert L.Request._fields[:10] == ("op", "request_id", "start", "count", "base", "detector",
                                      "nan_policy", "params", "data_name", "out_name")
    assert (L.OFF_COUNT, L.OFF_STATUS, L.OFF_NEEDED) == (24, 32, 40)


def test_doc_sizes_constants_codes_and_ops():
    assert f"### 2.3 Request ({L.REQUEST_HEAD_SIZE} bytes + values)" in DOC
    assert f"### 2.4 Reply ({L.REPLY_HEAD_SIZE} bytes + values + text)" in DOC
    for magic in (L.SEGMENT_MAGIC, L.REQUEST_MAGIC, L.REPLY_MAGIC):
        assert f"`0x{magic:08X}`" in DOC
    codes = dict((int(c), n) for c, n in re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", DOC, re.M))
    assert codes == L.Status.names
    ops = dict((int(c), n) for c, n in re.findall(r"^\| (\d) \| ([A-Z]+) \| [`n]", DOC, re.M))
    assert ops == L.Op.names
    assert f"`{L.NAME_RE.pattern}`" in DOC
    for n in (L.MAX_TYPE, L.MAX_MESSAGE, L.MAX_TRACEBACK, L.MAX_REPLY, L.MAX_REQUEST_VALUES,
              L.MAX_PARAMS, L.MAX_REPLY_VALUES, L.SPLIT_MIN, L.SPLIT_CHUNK_MIN):
        assert f"{n}" in DOC, n
    assert f"`{L.VERSION}`" in DOC and f"version {L.VERSION}" in DOC


def test_doc_documents_what_a_host_written_from_it_needs():
    """The questions a host written from LAYOUT.md alone asked (issue 10)."""
    for words in ("status` = the code",                # result header after other errors
                  "echoes the request's `request_id`",   # which replies echo it
                  "ECONNREFUSED", "EPIPE", "end-of-file", "same path",   # a server that dies
                  "SHUTTING_DOWN",                      # who gets it
                  "statistics that overflow",           # NON_FINITE covers overflow
                  "pipeline", "not thread-safe",        # sharing and pipelining
                  "only host-written fields a worker reads",
                  "--timeout SECONDS"):
        assert words in DOC, words


# -- golden vectors ---------------------------------------------------------------

def parse_vectors():
    for line in VECTORS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        kind, case, *toks = line.split()
        yield kind, case, dict(t.split("=", 1) for t in toks)


def floats(text):
    return tuple(math.nan if v == "nan" else float(v) for v in text.split(",")) if text else ()


def typed(fields):
    out = {}
    for k, v in fields.items():
        if k in ("params", "values"):
            out[k] = floats(v)
        elif k in ("data_name", "out_name", "error_type", "message", "traceback"):
            out[k] = v
        else:
            out[k] = int(v)
    return out


def same(a, b):
    """NamedTuples equal, NaN equal to NaN."""
    return all((isinstance(x, float) and math.isnan(x) and math.isnan(y)) or x == y
               or (isinstance(x, tuple) and len(x) == len(y) and same(x, y))
               for x, y in zip(a, b))


VECS = list(parse_vectors())
CODEC = [v for v in VECS if v[0] in ("header", "request", "reply", "bad_request")]


@pytest.mark.parametrize("kind,case,fields", CODEC, ids=[f"{v[0]}-{v[1]}" for v in CODEC])
def test_golden_vectors(kind, case, fields):
    raw = bytes.fromhex(fields.pop("hex"))
    if kind == "header":
        h = L.SegmentHeader(**typed(fields))
        assert L.pack_header(h) == raw and L.unpack_header(raw) == h
    elif kind == "request":
        r = L.Request(**typed(fields))
        assert L.pack_request(r) == raw
        assert same(L.unpack_request(raw), r)
    elif kind == "reply":
        r = L.Reply(**typed(fields))
        assert L.pack_reply(r) == raw and L.unpack_reply(raw) == r
    else:
        with pytest.raises(L.DecodeError) as e:
            L.unpack_request(raw)
        assert e.value.status == int(fields["status"])


def test_vectors_cover_every_kind_op_and_check():
    kinds = {k for k, *_ in VECS}
    assert kinds == {"header", "request", "reply", "bad_request", "table", "split", "call"}
    ops = {int(f["op"]) for k, _c, f in VECS if k == "request"}
    assert ops == set(L.Op.names)
    bad = {int(f["status"]) for k, _c, f in VECS if k == "bad_request"}
    assert bad == {L.Status.BAD_MESSAGE, L.Status.BAD_VERSION, L.Status.BAD_VALUE, L.Status.BAD_NAME}


def test_table_vector():
    [(_, _, f)] = [v for v in VECS if v[0] == "table"]
    rows = L.parse_table(bytes.fromhex(f["hex"]).decode())
    assert [r.name for r in rows] == f["names"].split(",")
    assert [int(r.split) for r in rows] == [int(v) for v in f["split"].split(",")]
    assert [r.summary_size for r in rows] == [int(v) for v in f["sizes"].split(",")]
    assert ";".join(",".join(f"{p}={v}" for p, v in r.params) for r in rows) == f["params"]
    assert L.format_table(rows) == bytes.fromhex(f["hex"]).decode()


@pytest.mark.parametrize("fields", [v[2] for v in VECS if v[0] == "split"])
def test_split_rule_vectors(fields):
    n, lanes, k = int(fields["n"]), int(fields["lanes"]), int(fields["k"])
    assert L.split_count(n, lanes) == k
    assert ",".join(f"{a}:{b}" for a, b in L.split(n, k)) == fields["bounds"]


CALLS = [v for v in VECS if v[0] == "call"]


@pytest.mark.parametrize("case,fields", [(c, f) for _k, c, f in CALLS], ids=[c for _k, c, _f in CALLS])
def test_call_vectors_through_a_pool(case, fields):
    """Each call vector, through a real Pool with as many workers as its
    lanes: the same summaries, cut-off and answer every host must get."""
    import sys
    sys.path.insert(0, str(ROOT / "tests" / "vectors"))
    from make_vectors import fnv, splitmix
    from shmpool import NonFiniteError, Pool
    x = splitmix(int(fields["n"]), int(fields["seed"]), int(fields["every"]), int(fields["nan_at"]))
    policy = L.POLICY_NAMES.get(int(fields["policy"]), "raise")
    with Pool(workers=int(fields["lanes"])) as pool:
        if int(fields["status"]) == L.Status.NON_FINITE:
            with pytest.raises(NonFiniteError, match="1 non-finite"):
                pool.detect(x, threshold=float(fields["threshold"]), nan_policy=policy)
            return
        idx = pool.detect(x, threshold=float(fields["threshold"]), nan_policy=policy)
    assert len(idx) == int(fields["count"])
    assert fnv(idx) == int(fields["fnv"])
    assert ",".join(str(i) for i in idx[:5]) == (fields["head"] if fields["head"] != "-" else "")


# -- the other copies of the numbers ----------------------------------------------

@pytest.mark.skipif(native is None, reason="the C extension is not built here")
def test_c_extension_constants_equal_layout_py():
    for name, value in native.layout_constants().items():
        if name.startswith("request."):
            expected = {"OFF_PARAMS": 56, "OFF_NVALUES": 248}[name.split(".")[1]]
            assert struct_fields(L._REQUEST)[[f[0] for f in struct_fields(L._REQUEST)].index(
                expected)][0] == value
            continue
        obj = L
        for part in name.split("."):
            obj = getattr(obj, part)
        assert obj == value, name


def test_check_header_rejects_each_field():
    good = L.SegmentHeader(L.KIND_DATA, 10, 10)
    size = L.segment_size(10)
    assert L.check_header(good, L.KIND_DATA, size) is None
    for bad in (good._replace(magic=1), good._replace(version=1), good._replace(kind=2),
                good._replace(header_size=128), good._replace(flags=1),
                good._replace(capacity=11), good._replace(count=11)):
        assert L.check_header(bad, L.KIND_DATA, size) is not None
    assert L.check_header(good, L.KIND_DATA, 63) is not None


def test_request_round_trips_values_and_params():
    r = L.Request(L.Op.COMBINE, 9, count=2, params=(1.5, math.nan),
                  values=tuple(np.arange(10.0)))
    back = L.unpack_request(L.pack_request(r))
    assert back.values == r.values and back.count == 2 and back.params[0] == 1.5
    assert math.isnan(back.params[1]) and len(back.params) == 2


def test_too_small_is_described_the_same_everywhere():
    """ResultTooSmall said "no index was written" while the region had been
    overwritten (issue 10.20): the message, README and LAYOUT now agree."""
    from shmpool._host import too_small_message
    readme = (ROOT / "README.md").read_text()
    row = [ln for ln in DOC.splitlines() if ln.startswith("| 7 | TOO_SMALL |")][0]
    for text in (too_small_message(9, 8), readme.split("ResultTooSmall", 1)[1][:300], row):
        assert "count" in text and "unspecified" in text, text
    assert "no index was written" not in readme + DOC
