"""Hostile and unlucky conditions: full /dev/shm, memory pressure, a host
killed mid-call, a worker that must stay inside its result region, and
fuzzed messages and headers."""

import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import planted
from serverutil import ServerProcess
from shmpool import DetectorError, Pool, ReturnSegment, SegmentSpaceError
from shmpool import layout as L
from shmpool._backend.segment import SHM_DIR, Segment
from shmpool.client import Client

# CI runs a short fuzz; the dedicated run is SHMPOOL_FUZZ_EXAMPLES=100000.
FUZZ_EXAMPLES = int(os.environ.get("SHMPOOL_FUZZ_EXAMPLES", "3000"))


def shm_total_bytes():
    s = os.statvfs(SHM_DIR)
    return s.f_blocks * s.f_frsize


def test_shared_memory_exhausted_is_an_error_at_allocation(pool):
    too_many = shm_total_bytes() // 8 + 1_000_000
    with pytest.raises(SegmentSpaceError) as e:
        pool.empty(too_many)
    msg = str(e.value)
    assert f"{too_many:,} elements" in msg and "bytes free" in msg
    assert e.value.needed == 64 + 8 * too_many and 0 < e.value.free <= shm_total_bytes()
    assert isinstance(e.value, MemoryError)
    with pytest.raises(SegmentSpaceError):
        ReturnSegment(too_many)
    assert pool.detect(planted(0)).tolist() == [7, 113, 835]      # smaller requests still work
    small = pool.empty(1000)
    small[:] = planted(1)
    assert pool.detect(small).tolist() == [7, 113, 835]


def test_memory_pressure_in_a_worker_is_that_workers_failure():
    with Pool(workers=1, detector="shmpool.testing:allocate_forever",
              memory_limit=1 << 30) as p:
        for _ in range(2):
            with pytest.raises(DetectorError) as e:
                p.detect([1.0, 2.0, 3.0])
            assert e.value.remote_type == "MemoryError"
        assert len(p.worker_pids()) == 1


def test_busy_workers_exit_when_their_host_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import numpy as np, threading
        from shmpool import Pool
        p = Pool(workers=2, detector="shmpool.testing:slow_on_13")
        for _ in range(2):
            threading.Thread(target=p.detect, args=(np.arange(13.0),), daemon=True).start()
        print(*p.worker_pids(), flush=True)
        threading.Event().wait()
    """)], stdout=subprocess.PIPE, text=True)
    pids = [int(s) for s in proc.stdout.readline().split()]
    time.sleep(0.5)                              # both workers inside a 30 s call
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids)
    assert time.monotonic() - t0 < 3
    from shmpool._backend.segment import reap_orphans
    reap_orphans()
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(f"shmpool-{proc.pid}-")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("hostile") / "h.sock", "--workers", "2").start()
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("outliers", [0, 40, 50, 80])
def test_worker_stays_inside_the_result_region(server, outliers):
    """The header says capacity 50; the file holds 100 slots.  Whatever the
    answer's size, slots 50..99 (the canary) are never touched."""
    canary = np.int64(0x5A5A5A5A5A5A5A5A)
    with Segment.create(1000, L.KIND_DATA) as data, Segment.create(100, L.KIND_RESULT) as out:
        x = data.region()
        x[:] = 0.0
        x[:outliers] = 1000.0 if outliers else 0.0
        data.set_count(1000)
        out.region()[:] = canary
        struct.pack_into("<Q", out._mmap, 16, 50)                 # header capacity 50
        with Client(server.path) as c:
            r = c.detect_segments(data.name, 0, 1000, out.name)
        assert r.needed == outliers
        assert r.status == (L.Status.OK if outliers <= 50 else L.Status.TOO_SMALL)
        assert np.all(out.region()[50:] == canary)
        if r.status == L.Status.OK:
            assert out.region()[:r.count].tolist() == list(range(outliers))


def test_a_client_dribbling_bytes_costs_others_nothing(server):
    stop = threading.Event()
    replies = []

    def dribble():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(server.path)
        while not stop.is_set():
            s.send(b"\x53")
            replies.append(L.unpack_reply(s.recv(L.MAX_REPLY)).status)
            time.sleep(0.05)
        s.close()

    t = threading.Thread(target=dribble)
    t.start()
    try:
        with Client(server.path) as c:
            for seed in range(100):
                assert c.detect(planted(seed)).tolist() == [7, 113, 835]
    finally:
        stop.set()
        t.join()
    assert replies and set(replies) == {L.Status.BAD_MESSAGE}


# -- fuzzing ----------------------------------------------------------------------

DOCUMENTED = set(L.Status.names)
NAMES = ("shmpool-1-aabbccdd-0011223344556677", "shmpool-1-aabbccdd-0011223344556678")
GOODS = [L.pack_request(L.Request(L.Op.DETECT, 9, 0, 10, 0, 0, 0, (2.0,), *NAMES)),
         L.pack_request(L.Request(L.Op.FLAG, 9, 0, 10, 5, 0, 2, (0.5, 1.0), *NAMES)),
         L.pack_request(L.Request(L.Op.COMBINE, 9, count=2, values=tuple(range(10))))]


def mutated(data):
    """A valid request with a few bytes overwritten, or cut, or extended."""
    raw = bytearray(data.draw(st.sampled_from(GOODS)))
    for pos, val in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1),
                                                  st.integers(0, 255)), max_size=6)):
        raw[pos] = val
    cut = data.draw(st.integers(0, len(raw) + 8))
    return bytes(raw[:cut]) if cut <= len(raw) else bytes(raw) + bytes(cut - len(raw))


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_request_decoder(data):
    raw = mutated(data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=400))
    try:
        req = L.unpack_request(raw)
    except L.DecodeError as e:
        assert e.status in DOCUMENTED and e.status != L.Status.OK
    else:
        assert len(raw) == L.REQUEST_HEAD_SIZE + 8 * len(req.values) and req.version == L.VERSION
        assert req.op in L.Op.names and len(req.params) <= L.MAX_PARAMS
        assert not req.values or req.op == L.Op.COMBINE
        if req.op in L.OPS_WITH_DATA:
            assert L.valid_name(req.data_name)
        if req.op in L.OPS_WITH_OUT:
            assert L.valid_name(req.out_name)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 1 << 20), st.sampled_from([1, 2]))
def test_fuzz_header_check(raw, size, kind):
    raw = raw.ljust(64, b"\0")
    h = L.unpack_header(raw)
    why = L.check_header(h, kind, size)
    if why is None:     # accepted: then every access it allows stays inside the file
        assert h.magic == L.SEGMENT_MAGIC and 64 + 8 * h.capacity <= size
        assert kind == L.KIND_RESULT or h.count <= h.capacity


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_reply_decoder(raw):
    try:
        r = L.unpack_reply(raw)
    except L.DecodeError:
        return
    assert len(raw) == 48 + 8 * len(r.values) + len(r.error_type.encode()) + \
        len(r.message.encode()) + len(r.traceback.encode()) or \
        "\ufffd" in r.error_type + r.message + r.traceback


@pytest.mark.slow
def test_fuzz_live_server(server):
    """Mutated requests over a real connection: every one answered with a
    documented status, the server still serving afterwards."""
    rng = np.random.default_rng(7)
    data = Segment.create(64, L.KIND_DATA)
    out = Segment.create(64, L.KIND_RESULT)
    data.region()[:] = rng.standard_normal(64)
    data.set_count(64)
    goods = [bytearray(L.pack_request(r)) for r in (
        L.Request(L.Op.DETECT, 1, 0, 64, 0, 0, 0, (2.0,), data.name, out.name),
        L.Request(L.Op.SUMMARIZE, 1, 0, 64, 0, 0, 2, (), data.name),
        L.Request(L.Op.FLAG, 1, 0, 64, 3, 0, 0, (0.0, 1.0), data.name, out.name),
        L.Request(L.Op.COMBINE, 1, count=1, values=(64.0, 0.0, 60.0, 0.0, -1.0)))]
    seen = {}
    try:
        with Client(server.path) as c:
            for i in range(max(FUZZ_EXAMPLES // 3, 500)):
                raw = bytearray(goods[i % len(goods)])
                for _ in range(rng.integers(1, 4)):
                    raw[rng.integers(0, len(raw))] = rng.integers(0, 256)
                r = c.send_raw(bytes(raw))
                assert r.status in DOCUMENTED
                seen[r.status] = seen.get(r.status, 0) + 1
            c.ping()
            assert c.detect(planted(0)).tolist() == [7, 113, 835]
    finally:
        data.close(), data.unlink(), out.close(), out.unlink()
    assert len(seen) >= 4, seen
