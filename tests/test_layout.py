"""The layout contract: layout.py, docs/LAYOUT.md and the golden vectors agree."""

import math
import re
import struct
from pathlib import Path

import pytest

from shmpool import layout as L

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "LAYOUT.md").read_text()
VECTORS = ROOT / "tests" / "vectors" / "v1.txt"
TYPES = {"I": ("u32", 4), "H": ("u16", 2), "Q": ("u64", 8), "d": ("f64", 8), "i": ("i32", 4)}


def struct_fields(s: struct.Struct):
    """(offset, size, type) of every field of a Struct, padding as '—'."""
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
            for _ in range(count):
                out.append((off, TYPES[code][1], TYPES[code][0]))
                off += TYPES[code][1]
    return out


def doc_table(heading: str):
    """(offset, size, type, field) rows of the table under a LAYOUT.md heading."""
    section = DOC.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\|\s*(\d+)\s*\|\s*(\d+|…)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|", line)
        if m:
            rows.append((int(m.group(1)), m.group(2), m.group(3), m.group(4)))
    return rows


@pytest.mark.parametrize("heading,s", [
    ("### 1.1 Header", L._HEADER), ("### 2.1 Request", L._REQUEST), ("### 2.2 Reply", L._REPLY)])
def test_doc_tables_match_the_structs(heading, s):
    doc = [(off, int(size), typ) for off, size, typ, _ in doc_table(heading) if size != "…"]
    assert doc == struct_fields(s)


def test_doc_field_names_match_the_code():
    assert [r[3] for r in doc_table("### 1.1 Header")] == [
        "magic", "version", "kind", "header_size", "flags", "capacity", "count", "status",
        "reserved", "needed", "reserved"]
    assert [r[3] for r in doc_table("### 2.1 Request")] == [
        "magic", "version", "op", "request_id", "start", "count", "threshold", "nan_policy",
        "flags", "data_name", "out_name"]
    assert [r[3] for r in doc_table("### 2.2 Reply")] == [
        "magic", "version", "status", "request_id", "count", "needed", "type_len",
        "message_len", "traceback_len", "reserved", "text"]
    assert (L.OFF_COUNT, L.OFF_STATUS, L.OFF_NEEDED) == (24, 32, 40)


def test_doc_sizes_constants_and_status_codes():
    assert f"### 2.1 Request ({L.REQUEST_SIZE} bytes)" in DOC
    assert f"### 2.2 Reply ({L.REPLY_HEAD_SIZE} bytes + text)" in DOC
    for magic in (L.SEGMENT_MAGIC, L.REQUEST_MAGIC, L.REPLY_MAGIC):
        assert f"`0x{magic:08X}`" in DOC
    codes = dict((int(c), n) for c, n in re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", DOC, re.M))
    assert codes == L.Status.names
    assert f"`{L.NAME_RE.pattern}`" in DOC
    for n in (L.MAX_TYPE, L.MAX_MESSAGE, L.MAX_TRACEBACK, L.MAX_REPLY):
        assert f"{n}" in DOC


def parse_vectors():
    for line in VECTORS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        kind, case, *toks = line.split()
        fields = dict(t.split("=", 1) for t in toks)
        yield kind, case, bytes.fromhex(fields.pop("hex")), fields


def typed(fields):
    out = {}
    for k, v in fields.items():
        if k in ("threshold",):
            out[k] = float(v)
        elif k in ("data_name", "out_name", "error_type", "message", "traceback"):
            out[k] = v
        else:
            out[k] = int(v)
    return out


VECS = list(parse_vectors())


@pytest.mark.parametrize("kind,case,raw,fields", VECS, ids=[f"{v[0]}-{v[1]}" for v in VECS])
def test_golden_vectors(kind, case, raw, fields):
    if kind == "header":
        h = L.SegmentHeader(**typed(fields))
        assert L.pack_header(h) == raw and L.unpack_header(raw) == h
    elif kind == "request":
        r = L.Request(**typed(fields))
        assert L.pack_request(r) == raw
        back = L.unpack_request(raw)
        assert back._replace(threshold=0.0) == r._replace(threshold=0.0)
        assert (math.isnan(back.threshold) and math.isnan(r.threshold)) or back.threshold == r.threshold
    elif kind == "reply":
        r = L.Reply(**typed(fields))
        assert L.pack_reply(r) == raw and L.unpack_reply(raw) == r
    elif kind == "bad_request":
        with pytest.raises(L.DecodeError) as e:
            L.unpack_request(raw)
        assert e.value.status == int(fields["status"])
    else:
        pytest.fail(f"unknown vector kind {kind}")


def test_vectors_cover_every_struct():
    assert {k for k, *_ in VECS} == {"header", "request", "reply", "bad_request"}


def test_check_header_rejects_each_field():
    good = L.SegmentHeader(L.KIND_DATA, 10, 10)
    size = L.segment_size(10)
    assert L.check_header(good, L.KIND_DATA, size) is None
    for bad in (good._replace(magic=1), good._replace(version=2), good._replace(kind=2),
                good._replace(header_size=128), good._replace(flags=1),
                good._replace(capacity=11), good._replace(count=11)):
        assert L.check_header(bad, L.KIND_DATA, size) is not None
    assert L.check_header(good, L.KIND_DATA, 63) is not None
