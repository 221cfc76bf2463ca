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

from conftest import ended, our_segments, planted, wait_until, worker_children
from serverutil import ServerProcess
from shmpool import (
    DetectorError,
    DetectTimeout,
    NonFiniteError,
    ServerUnavailable,
    UntrustedServer,
    WorkerDied,
    reference,
)
from shmpool import layout as L
from shmpool._backend.segment import Segment, new_name
from shmpool.client import Client

VECTORS = Path(__file__).with_name("vectors") / "v2.txt"


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


@pytest.mark.parametrize("n", [100_000, 600_000])      # whole on one worker; split
def test_large_copied_in_calls_reuse_one_input_segment(server, n, monkeypatch):
    """A new segment per call costs more than the copy (page faults on both
    sides, a new mapping in a worker): six calls of similar size create one
    input segment, and close() removes it."""
    made = []
    create = Segment.create.__func__

    def counting(cls, capacity, kind, name=None):
        if kind == L.KIND_DATA and capacity >= n - 5:
            made.append(capacity)
        return create(cls, capacity, kind, name)

    monkeypatch.setattr(Segment, "create", classmethod(counting))
    before = set(our_segments())
    with Client(server.path) as c:
        for seed in range(6):
            x = np.random.default_rng(seed).standard_normal(n - seed)
            assert np.array_equal(c.detect(x), reference(x))
        assert len(made) == 1 and made[0] >= n
        assert len(set(our_segments()) - before) > 0
    assert set(our_segments()) - before == set()


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
    for size in [1, 7, 48, 175, 177, 255, 257, 1000, 5000]:
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
                s.send(L.pack_request(L.Request(L.Op.PING, 1)))
                reply = s.recv(65536)
                os.write(w, b"eof" if reply == b"" else
                         L.Status.names[L.unpack_reply(reply).status].encode())
            except Exception as e:  # noqa: BLE001
                os.write(w, f"{type(e).__name__}".encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        assert os.read(r, 100) in (b"NOT_PERMITTED", b"ConnectionResetError", b"BrokenPipeError")
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
    vanishing = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    vanishing.connect(path)
    data = Segment.create(13, L.KIND_DATA)
    out = Segment.create(13, L.KIND_RESULT)
    data.set_count(13)
    req = L.pack_request(L.Request(L.Op.DETECT, 1, 0, 13, data_name=data.name, out_name=out.name))
    vanishing.send(req)                   # a 30 s call ...
    time.sleep(0.2)
    vanishing.close()                     # ... whose host goes away
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
    assert wait_until(lambda: all(ended(p) for p in workers), 2)


def test_restart_client_sees_error_then_reconnects(tmp_path):
    s = ServerProcess(tmp_path / "r.sock", "--workers", "1").start()
    c = Client(s.path, timeout=5)
    assert c.detect(planted(0)).tolist() == [7, 113, 835]
    s.stop(signal.SIGKILL)
    with pytest.raises((ServerUnavailable, WorkerDied)):
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


# -- one hop (issue 9) --------------------------------------------------------------

def lane_workers(c: Client, n: int):
    """Make c hold n lanes at once; their (worker, pid) pairs."""
    from shmpool._host import Token
    token = Token()
    lanes = c._take(token, n, None)
    try:
        return [(lane.worker, lane.pid) for lane in lanes]
    finally:
        c._lanes.release(token)


def test_a_host_with_n_lanes_gets_n_different_workers(tmp_path):
    s = ServerProcess(tmp_path / "n.sock", "--workers", "3").start()
    try:
        with Client(s.path) as c:
            got = lane_workers(c, 3)
            assert sorted(w for w, _ in got) == [0, 1, 2]
            assert len({pid for _, pid in got}) == 3
            assert set(pid for _, pid in got) <= {p.pid for p in
                                                  psutil.Process(s.proc.pid).children(recursive=True)}
    finally:
        assert s.stop() == 0


def test_the_server_is_not_on_the_data_path(server):
    """Stop the server process outright: connections already handed to workers
    keep working, split calls included."""
    with Client(server.path) as c:
        lane_workers(c, 2)
        big = np.random.default_rng(5).standard_normal(600_000)
        expected = c.detect(big)
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            for seed in range(20):
                assert c.detect(planted(seed)).tolist() == [7, 113, 835]
            assert np.array_equal(c.detect(big), expected)
            assert time.monotonic() - t0 < 5
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)


def test_a_dying_worker_fails_only_the_calls_in_flight(tmp_path):
    s = ServerProcess(tmp_path / "d.sock", "--workers", "2",
                      "--detector", "shmpool.testing:slow_on_13").start()
    closing = []
    try:
        busy, idle = Client(s.path), Client(s.path)
        closing.extend([busy, idle])
        [(worker, pid)] = lane_workers(busy, 1)
        for n in range(1, 6):                            # until an idle lane shares its worker
            if worker in [w for w, _ in lane_workers(idle, n)]:
                break
        assert worker in [w for w, _ in lane_workers(idle, n)]
        fut = threading.Thread(target=lambda: result.append(_call(busy, np.arange(13.0))))
        result = []
        fut.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        fut.join(10)
        assert isinstance(result[0], WorkerDied) and time.monotonic() - t0 < 1.0
        for seed in range(10):                            # the idle lanes' calls all work
            assert idle.detect(planted(seed)).tolist() == [7, 113, 835]
        assert busy.detect(planted(11)).tolist() == [7, 113, 835]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:                # the server replaced the worker
            kids = [p.pid for p in worker_children(s.proc.pid)]
            if len(kids) == 2 and pid not in kids:
                break
            time.sleep(0.1)
        assert len(kids) == 2 and pid not in kids
    finally:
        for c in closing:
            c.close()
        assert s.stop() == 0
    assert "killed by SIGKILL" in s.proc.stderr.read()


def _call(c, x):
    try:
        return c.detect(x)
    except Exception as e:  # noqa: BLE001 - the test looks at it
        return e


def test_several_detectors_served_and_chosen_by_name(tmp_path):
    s = ServerProcess(tmp_path / "m.sock", "--workers", "1", "--detector", "classic",
                      "--detector", "shmpool.testing:above").start()
    try:
        with Client(s.path) as c:
            assert [r.name for r in c.rows] == ["classic", "shmpool.testing:above"]
            assert c.detect([0.1, 0.9, 0.2, 0.7], threshold=0.5,
                            detector="shmpool.testing:above").tolist() == [1, 3]
            assert c.detect(planted(0)).tolist() == [7, 113, 835]
    finally:
        assert s.stop() == 0


def test_a_v1_host_gets_a_clear_version_error(client):
    v1 = struct.pack("<IHHQQQdII64s64s", 0x514D4853, 1, 2, 77, 0, 0, 2.0, 0, 0, b"", b"")
    assert len(v1) == 176
    r = client.send_raw(v1)
    assert r.status == L.Status.BAD_VERSION and r.request_id == 77
    assert "v2" in r.message and r.version == 2
    client.ping()


def test_requests_waiting_at_a_stop_are_answered_shutting_down(tmp_path):
    s = ServerProcess(tmp_path / "q.sock", "--workers", "1",
                      "--detector", "shmpool.testing:pause_on_7").start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(s.path)
    with Segment.create(7, L.KIND_DATA) as data, Segment.create(7, L.KIND_RESULT) as out:
        data.set_count(7)
        for rid in (1, 2):                                # pipelined: 2 waits behind 1
            sock.send(L.pack_request(L.Request(L.Op.DETECT, rid, 0, 7, data_name=data.name,
                                               out_name=out.name)))
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)
        first = L.unpack_reply(sock.recv(65536))
        second = L.unpack_reply(sock.recv(65536))
        assert (first.request_id, first.status) == (1, L.Status.OK)
        assert (second.request_id, second.status) == (2, L.Status.SHUTTING_DOWN)
        assert sock.recv(65536) == b""                    # then end-of-file
    sock.close()
    assert s.proc.wait(30) == 0


# -- what the hostile review found (issue 10) -------------------------------------------

def test_fresh_segments_by_one_host_fail_no_call_of_others(server):
    """6,000 calls with fresh segments, then a disconnect, made 2 of the next
    40 calls of two other hosts fail with WorkerDied (issue 10.4)."""
    with Client(server.path) as c:
        [(_, worker_pid)] = lane_workers(c, 1)
        lane = c._lanes.all[0]
        for _ in range(6000):
            with Segment.create(8, L.KIND_DATA) as d, Segment.create(8, L.KIND_RESULT) as o:
                d.set_count(8)
                lane.rid += 1
                got = lane.reply(lane.exchange(L.pack_request(L.Request(
                    L.Op.DETECT, lane.rid, 0, 8, data_name=d.name, out_name=o.name)), None))
                assert got.status == L.Status.OK
        maps = Path(f"/proc/{worker_pid}/maps").read_text().count("/dev/shm/shmpool-")
        assert maps <= 2 * 64                        # the cache cap, never the 12,000 segments
    errors = []

    def other(seed):
        with Client(server.path) as h:
            for i in range(40):
                if h.detect(planted(seed + i)).tolist() != [7, 113, 835]:
                    errors.append(seed + i)
    threads = [threading.Thread(target=other, args=(k * 100,)) for k in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []


def test_out_of_descriptors_the_server_says_busy_and_keeps_serving(tmp_path):
    """Idle connections past the fd limit made the server exit (issue 10.5)."""
    import resource
    import subprocess
    import sys

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    path = str(tmp_path / "fd.sock")
    proc = subprocess.Popen([sys.executable, "-m", "shmpool", "serve", "--socket", path,
                             "--workers", "2"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=low_limit)
    socks, busy = [], 0
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        with Client(path) as c:
            c.ping()
        for _ in range(320):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(path)
            socks.append(s)
        for s in socks:                                  # a refused one got BUSY, then EOF
            s.setblocking(False)
        time.sleep(1.0)
        for s in socks:
            try:
                reply = s.recv(65536)
            except BlockingIOError:
                continue
            if reply:
                assert L.unpack_reply(reply).status == L.Status.BUSY
                busy += 1
        assert busy > 0 and proc.poll() is None
        for s in socks[:200]:
            s.close()
        time.sleep(0.5)
        with Client(path) as c:                          # still serving
            assert c.detect(planted(4)).tolist() == [7, 113, 835]
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "busy" in err.lower()


def test_a_server_of_another_user_is_refused(tmp_path):
    """A client talked to a stranger that squatted the socket path and took
    its [0, 0, 0] (issue 10.6)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a listener as another uid")
    import tempfile
    where = tempfile.mkdtemp(prefix="shmpool-squat-", dir="/tmp")
    os.chmod(where, 0o777)
    path = os.path.join(where, "squat.sock")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(65534)
            lst = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            lst.bind(path)
            os.chmod(path, 0o666)
            lst.listen(8)
            os.write(w, b"up")
            conn, _ = lst.accept()
            conn.recv(65536)
            conn.send(L.pack_reply(L.Reply(L.Status.OK, 1, values=(2.0, 1.0, 0.0, 1.0, 3.0),
                                           message="classic split 5 threshold=2.0")))
            time.sleep(2)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 2) == b"up"
        with pytest.raises(UntrustedServer, match="uid 65534"):
            Client(path, timeout=5)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r), os.close(w)
        import shutil
        shutil.rmtree(where)


def test_a_client_timeout_never_poisons_later_calls(tmp_path):
    """After one client-side timeout, every later call read the previous
    call's reply (issue 10.7): the timed-out connection is dropped."""
    s = ServerProcess(tmp_path / "t7.sock", "--workers", "2",
                      "--detector", "shmpool.testing:pause_on_7").start()
    try:
        with Client(s.path, timeout=0.3) as c:
            with pytest.raises(DetectTimeout):
                c.detect(np.arange(7.0))
            for seed in range(5):
                assert c.detect(planted(seed)).tolist() == [7, 113, 835]
            time.sleep(1.0)                       # the late reply arrives on a closed lane
            assert c.detect(np.r_[np.zeros(30), 5.0]).tolist() == [30]
    finally:
        assert s.stop() == 0


def test_three_hundred_hosts_connecting_at_once(server):
    """40-179 of 300 got BlockingIOError at once (issue 10.8): clients retry
    within their timeout and the backlog is as deep as the system allows."""
    barrier = threading.Barrier(300)
    outcomes = []

    def host(i):
        barrier.wait()
        try:
            with Client(server.path, timeout=60) as c:
                c.ping()
            outcomes.append("ok")
        except Exception as e:  # noqa: BLE001 - counted
            outcomes.append(repr(e))

    threads = [threading.Thread(target=host, args=(i,)) for i in range(300)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert outcomes.count("ok") == 300, [o for o in outcomes if o != "ok"][:5]


def test_memory_follows_the_segments_lives(server):
    """The server remembered every segment name (issue 10.16); workers kept a
    closed connection's segments mapped for 40 s."""
    server_rss = psutil.Process(server.proc.pid).memory_info().rss
    with Client(server.path) as c:
        [(_, pid)] = lane_workers(c, 1)
        names, kept = [], []
        for i in range(300):
            d = Segment.create(1000, L.KIND_DATA)
            o = Segment.create(1000, L.KIND_RESULT)
            d.set_count(1000)
            assert c.detect_segments(d.name, 0, 1000, o.name).status == L.Status.OK
            names += [d.name, o.name]
            if i % 2:                                   # half unlinked now, half kept
                for seg in (d, o):
                    seg.close(), seg.unlink()
            else:
                kept += [d, o]
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert sum(n in mapped for n in names) <= 64
    time.sleep(0.3)                                     # connection closed: all unmapped
    mapped = Path(f"/proc/{pid}/maps").read_text()
    assert not [n for n in names if n in mapped]
    for seg in kept:
        seg.close(), seg.unlink()
    assert psutil.Process(server.proc.pid).memory_info().rss - server_rss < 1 << 20


def test_connections_made_just_after_a_worker_dies_are_served(tmp_path):
    """The soak found new connections handed to a worker that had just died:
    they closed before INFO, or got BUSY though another worker lived."""
    s = ServerProcess(tmp_path / "h.sock", "--workers", "2").start()
    failures = []
    try:
        for round_ in range(15):
            victim = worker_children(s.proc.pid)[round_ % 2].pid
            os.kill(victim, signal.SIGKILL)
            for _ in range(3):
                try:
                    with Client(s.path) as c:
                        c.ping()
                except Exception as e:  # noqa: BLE001 - counted
                    failures.append(repr(e))
            deadline = time.monotonic() + 10
            while len(worker_children(s.proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        assert s.stop() == 0
    assert failures == []
