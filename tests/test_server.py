"""`shmpool serve` from the outside: protocol, validation, isolation, lifecycle."""

import os
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import planted
from serverutil import ServerProcess
from shmpool import DetectorError, DetectTimeout, NonFiniteError
from shmpool import layout as L
from shmpool._backend.segment import Segment, new_name
from shmpool.client import Client

VECTORS = Path(__file__).with_name("vectors") / "v1.txt"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("srv") / "s.sock", "--workers", "2").start()
    yield s
    assert s.stop() == 0
    assert not os.path.exists(s.path)
    assert s.leftover_segments() == []


@pytest.fixture(scope="module")
def trouble_server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("srv") / "t.sock", "--workers", "2",
                      "--detector", "shmpool.testing:troublemaker", "--timeout", "2",
                      "--memory-limit", str(1 << 30)).start()
    yield s
    assert s.stop() == 0


@pytest.fixture
def client(server):
    with Client(server.path) as c:
        yield c


def test_seed_data_through_the_server(client):
    for seed in range(5):
        assert client.detect(planted(seed)).tolist() == [7, 113, 835]


def test_socket_is_private(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


@pytest.mark.parametrize("n", [1, 10, 1000, 65537, 300_000])
def test_parity_and_growing_result_segment(client, n):
    x = np.random.default_rng(n).standard_normal(n)
    from test_detect import assert_matches_reference
    assert_matches_reference(client.detect(x), x)
    assert_matches_reference(client.detect(x, threshold=0.5), x, 0.5)    # many: TOO_SMALL, grow


def test_too_small_is_reported_in_reply_and_header(client):
    with Segment.create(100, L.KIND_DATA) as data, Segment.create(2, L.KIND_RESULT) as out:
        data.region()[:] = 0.0
        data.region()[[3, 50, 77]] = 100.0
        data.set_count(100)
        r = client.detect_segments(data.name, 0, 100, out.name)
        assert (r.status, r.count, r.needed, r.error_type) == (L.Status.TOO_SMALL, 0, 3, "ResultTooSmall")
        h = out.header()
        assert (h.status, h.count, h.needed) == (L.Status.TOO_SMALL, 0, 3)
        r = client.detect_segments(data.name, 10, 90, out.name)     # a sub-range: indices relative
        assert (r.status, r.count) == (L.Status.OK, 2)
        assert out.region()[:2].tolist() == [40, 67]


def test_detector_error_arrives_with_type_message_traceback(trouble_server):
    with Client(trouble_server.path) as c:
        with pytest.raises(DetectorError) as e:
            c.detect([1.0, -5.0])
        assert e.value.remote_type == "ValueError" and "negative value -5.0" in str(e.value)
        assert "troublemaker" in str(e.value.__cause__)
        assert c.detect(planted(1)).tolist() == [7, 113, 835]


def test_server_timeout_stops_the_call_and_serves_on(trouble_server):
    with Client(trouble_server.path) as c:
        t0 = time.monotonic()
        with pytest.raises(DetectTimeout):
            c.detect(np.arange(13.0))                 # troublemaker sleeps 30 s on 13 values
        assert time.monotonic() - t0 < 10
        assert c.detect(planted(3)).tolist() == [7, 113, 835]


def test_non_finite_under_raise(client):
    with pytest.raises(NonFiniteError, match="non-finite"):
        client.detect([1.0, np.nan, 2.0], nan_policy=L.POLICY_RAISE)
    assert client.detect([0.0] * 20 + [np.nan, 9.0], nan_policy=L.POLICY_OMIT).tolist() == [21]


def vector_lines(kind):
    for line in VECTORS.read_text().splitlines():
        if line.startswith(kind + " "):
            fields = dict(tok.split("=", 1) for tok in line.split()[2:])
            yield line.split()[1], fields


@pytest.mark.parametrize("case,fields", list(vector_lines("bad_request")))
def test_bad_requests_get_documented_errors_and_the_connection_lives(client, case, fields):
    r = client.send_raw(bytes.fromhex(fields["hex"]))
    assert r.status == int(fields["status"]), r
    client.ping()


def test_garbage_bytes(client):
    rng = np.random.default_rng(0)
    for size in [0, 1, 7, 48, 175, 177, 1000, 5000]:
        r = client.send_raw(rng.integers(0, 256, size, dtype=np.uint8).tobytes() if size else b"\0")
        assert r.status == L.Status.BAD_MESSAGE
    client.ping()


@pytest.fixture
def segs():
    made = []

    def make(capacity, kind=L.KIND_DATA, count=None):
        s = Segment.create(capacity, kind)
        if kind == L.KIND_DATA:
            s.region()[:] = np.arange(capacity, dtype=np.float64)
            s.set_count(capacity if count is None else count)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()
        s.unlink()


def test_segment_validation(client, segs, tmp_path):
    data, out = segs(10), segs(10, L.KIND_RESULT)
    ok = client.detect_segments(data.name, 0, 10, out.name)
    assert ok.status == L.Status.OK

    def status(dname, start=0, count=10, oname=None):
        return client.detect_segments(dname, start, count, oname or out.name).status

    assert status(new_name()) == L.Status.NO_SEGMENT
    assert status(data.name, 5, 6) == L.Status.OUT_OF_RANGE
    assert status(segs(10, count=4).name) == L.Status.OUT_OF_RANGE          # count comes from the header
    assert status(data.name, oname=data.name) == L.Status.BAD_HEADER        # wrong kind
    wide = segs(10)
    os.chmod(f"/dev/shm/{wide.name}", 0o644)
    assert status(wide.name) == L.Status.NOT_PERMITTED
    link = new_name()
    os.symlink(f"/dev/shm/{data.name}", f"/dev/shm/{link}")
    try:
        assert status(link) == L.Status.NOT_PERMITTED
    finally:
        os.unlink(f"/dev/shm/{link}")
    liar = segs(10)
    struct.pack_into("<Q", liar._mmap, 16, 1 << 40)                          # capacity beyond the file
    assert status(liar.name) == L.Status.BAD_HEADER
    bad_magic = segs(10)
    bad_magic._mmap[0:4] = b"XXXX"
    assert status(bad_magic.name) == L.Status.BAD_HEADER
    other = segs(10)
    os.chown(f"/dev/shm/{other.name}", 65534, 65534)
    assert status(other.name) == L.Status.NOT_PERMITTED
    assert status(data.name) == L.Status.OK                                 # still serving


def test_recreated_name_is_noticed(client, segs):
    """A host may unlink and recreate a segment under the same name."""
    out = segs(10, L.KIND_RESULT)
    data = segs(10)
    data.region()[:] = 0.0
    data.region()[4] = 9.0
    assert client.detect(np.zeros(3)).tolist() == []
    assert client.detect_segments(data.name, 0, 10, out.name).status == L.Status.OK
    assert out.region()[:1].tolist() == [4]
    os.unlink(f"/dev/shm/{out.name}")
    out2 = Segment.create(10, L.KIND_RESULT)
    os.rename(f"/dev/shm/{out2.name}", f"/dev/shm/{out.name}")
    try:
        assert client.detect_segments(data.name, 0, 10, out.name).status == L.Status.OK
        assert np.frombuffer(out2._mmap, np.int64, 1, 64).tolist() == [4]
    finally:
        out2.close()
        os.unlink(f"/dev/shm/{out.name}")


def test_other_users_are_refused():
    """The socket is 0600; even with the door opened, the peer-uid check holds."""
    import shutil
    import tempfile
    where = tempfile.mkdtemp(prefix="shmpool-test-", dir="/tmp")
    os.chmod(where, 0o755)
    server = ServerProcess(os.path.join(where, "u.sock"), "--workers", "1").start()
    os.chmod(server.path, 0o666)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.settimeout(5)
                s.connect(server.path)
                s.send(L.pack_request(L.Request(L.OP_PING, 1)))
                os.write(w, b"eof" if s.recv(100) == b"" else b"answered")
            except Exception as e:  # noqa: BLE001
                os.write(w, f"{type(e).__name__}".encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        assert os.read(r, 100) in (b"eof", b"ConnectionResetError", b"BrokenPipeError")  # never answered
        os.close(r)
        with Client(server.path) as c:            # the owner still gets in
            c.ping()
    finally:
        assert server.stop() == 0
        shutil.rmtree(where)


def test_slow_silent_and_vanishing_clients_cost_others_nothing(trouble_server):
    path = trouble_server.path
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.connect(path)
    vanishing = Client(path)
    data = Segment.create(13, L.KIND_DATA)
    out = Segment.create(13, L.KIND_RESULT)
    data.set_count(13)
    req = L.pack_request(L.Request(L.OP_DETECT, 1, 0, 13, data_name=data.name, out_name=out.name))
    vanishing._sock.send(req)             # a 30 s call ...
    time.sleep(0.2)
    vanishing._sock.close()               # ... whose host goes away
    try:
        with Client(path) as c:
            t0 = time.monotonic()
            for seed in range(50):
                assert c.detect(planted(seed)).tolist() == [7, 113, 835]
            assert time.monotonic() - t0 < 10
    finally:
        silent.close()
        data.close(), data.unlink(), out.close(), out.unlink()


def test_many_clients_in_threads(server):
    errors = []

    def run(t):
        with Client(server.path) as c:
            for i in range(100):
                if c.detect(planted(t * 1000 + i)).tolist() != [7, 113, 835]:
                    errors.append((t, i))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_stops_cleanly(tmp_path, sig):
    s = ServerProcess(tmp_path / "x.sock", "--workers", "2").start()
    with Client(s.path) as c:
        assert c.detect(planted(0)).tolist() == [7, 113, 835]
    workers = [p.pid for p in psutil.Process(s.proc.pid).children(recursive=True)]
    assert s.stop(sig) == 0
    assert not os.path.exists(s.path) and s.leftover_segments() == []
    assert "listening on" in s.proc.stderr.read()
    time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in workers)


def test_restart_client_sees_error_then_reconnects(tmp_path):
    s = ServerProcess(tmp_path / "r.sock", "--workers", "1").start()
    c = Client(s.path, timeout=5)
    assert c.detect(planted(0)).tolist() == [7, 113, 835]
    s.stop(signal.SIGKILL)
    with pytest.raises(OSError):
        c.detect(planted(1))
    c.close()
    s2 = ServerProcess(s.path, "--workers", "1").start()     # stale socket file replaced
    try:
        with Client(s2.path) as c2:
            assert c2.detect(planted(2)).tolist() == [7, 113, 835]
    finally:
        assert s2.stop() == 0
    from shmpool._backend.segment import reap_orphans
    reap_orphans()
    assert s.leftover_segments() == []


def test_second_server_on_a_live_socket_is_refused(server):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "shmpool", "serve", "--socket", server.path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "already listening" in r.stderr
    with Client(server.path) as c:
        c.ping()


def test_segments_are_checked_again_on_every_call(client, segs):
    """A host may break a segment after the server has mapped it."""
    data, out = segs(10_000), segs(10_000, L.KIND_RESULT)
    assert client.detect_segments(data.name, 0, 10_000, out.name).status == L.Status.OK
    data._mmap[0:4] = b"XXXX"                                   # scribbled header
    assert client.detect_segments(data.name, 0, 10_000, out.name).status == L.Status.BAD_HEADER
    data._mmap[0:4] = struct.pack("<I", L.SEGMENT_MAGIC)
    assert client.detect_segments(data.name, 0, 10_000, out.name).status == L.Status.OK
    os.truncate(f"/dev/shm/{data.name}", 64)                    # shrunk under the mapping
    assert client.detect_segments(data.name, 5000, 1000, out.name).status == L.Status.BAD_HEADER
    os.truncate(f"/dev/shm/{out.name}", 64)
    fresh = segs(10_000)
    assert client.detect_segments(fresh.name, 0, 10_000, out.name).status == L.Status.BAD_HEADER
    out2 = segs(10_000, L.KIND_RESULT)
    assert client.detect_segments(fresh.name, 0, 10_000, out2.name).status == L.Status.OK
    os.chmod(f"/dev/shm/{fresh.name}", 0o640)                   # opened up after first use
    assert client.detect_segments(fresh.name, 0, 10_000, out2.name).status == L.Status.NOT_PERMITTED


def test_empty_packet_is_a_bad_message_not_a_hang_up(client):
    r = client.send_raw(b"")
    assert r.status == L.Status.BAD_MESSAGE
    client.ping()


def test_a_fifo_under_a_segment_name_is_refused_not_waited_on(client):
    name = new_name()
    os.mkfifo(f"/dev/shm/{name}", 0o600)
    try:
        with Segment.create(4, L.KIND_RESULT) as out:
            t0 = time.monotonic()
            assert client.detect_segments(name, 0, 1, out.name).status == L.Status.NOT_PERMITTED
            assert time.monotonic() - t0 < 2
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_workers_unmap_segments_their_host_unlinked(server, client):
    names = []
    for _ in range(3):
        with Segment.create(100_000, L.KIND_DATA) as d, Segment.create(100, L.KIND_RESULT) as o:
            d.set_count(100_000)
            assert client.detect_segments(d.name, 0, 100_000, o.name).status == L.Status.OK
            names += [d.name, o.name]
    workers = psutil.Process(server.proc.pid).children(recursive=True)

    def still_mapped():
        found = []
        for w in workers:
            try:
                maps = Path(f"/proc/{w.pid}/maps").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            found += [n for n in names if n in maps]
        return found

    deadline = time.monotonic() + 5
    while still_mapped() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert still_mapped() == []
