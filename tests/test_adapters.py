"""The Go and C host adapters: built, checked against layout.py, and run
against a real `shmpool serve` (their own suites start one)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmpool import layout as L

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "host_adapters" / "c"
GO_DIR = ROOT / "host_adapters" / "go"
ENV = dict(os.environ, PYTHON=sys.executable, SHMPOOL_PYTHON=sys.executable)
ENV.pop("SHMPOOL_SOCKET", None)


def run(cmd, cwd, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def c_built():
    run(["make", "-s"], C_DIR)
    return C_DIR / "build"


def test_c_header_mirrors_layout_py(c_built):
    lines = run([str(c_built / "layout_dump")], C_DIR).split()
    dumped = dict(zip(lines[::2], lines[1::2]))
    assert len(dumped) >= 60
    for name, value in dumped.items():
        if name.startswith("STATUS_"):
            expected = getattr(L.Status, name[len("STATUS_"):])
        elif name.startswith("OP_"):
            expected = getattr(L.Op, name[len("OP_"):])
        else:
            expected = getattr(L, name)
        assert str(expected) == value, name
    assert {f"STATUS_{n}" for n in L.Status.names.values()} <= set(dumped)
    assert {f"OP_{n}" for n in L.Op.names.values()} <= set(dumped)
    public = {k for k, v in vars(L).items() if k.isupper() and isinstance(v, int) and k != "VERSION"}
    assert public - set(dumped) == set(), "constants of layout.py missing from shmpool.h"


def test_c_suite_against_a_real_server(c_built):
    out = run(["make", "test", f"PYTHON={sys.executable}"], C_DIR)
    summary = [ln for ln in out.splitlines() if ln.endswith(" failed")][-1]
    passed, failed = (int(w) for w in summary.replace(",", "").split()[::2][:2])
    assert failed == 0 and passed >= 150, summary
    assert "[7 113 835]" in out


def test_go_vet_and_gofmt():
    run(["go", "vet", "./..."], GO_DIR)
    assert run(["gofmt", "-l", "."], GO_DIR).strip() == ""


def test_go_suite_with_race_detector_against_a_real_server():
    out = run(["go", "test", "-race", "-count=1", "-v", "./..."], GO_DIR, timeout=900)
    assert "--- FAIL" not in out
    for name in ("TestServer", "TestServerRestart", "TestDetectorExceptionArrivesAsError",
                 "ExampleClient_Detect", "TestVectors", "TestSplitVectors"):
        assert f"--- PASS: {name} " in out, name


def test_go_outliers_command(tmp_path):
    from serverutil import ServerProcess
    binary = tmp_path / "outliers"
    run(["go", "build", "-o", str(binary), "./cmd/outliers"], GO_DIR)
    server = ServerProcess(tmp_path / "go.sock", "--workers", "2").start()
    try:
        out = run([str(binary), "-socket", server.path], tmp_path)
        assert out.strip() == "[7 113 835]"
        env_run = subprocess.run([str(binary)], env=dict(ENV, SHMPOOL_SOCKET=server.path),
                                 capture_output=True, text=True, timeout=60)
        assert env_run.stdout.strip() == "[7 113 835]"
    finally:
        assert server.stop() == 0
    bad = subprocess.run([str(binary), "-socket", str(tmp_path / "nobody.sock")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "shmpool:" in bad.stderr


def test_c_example_across_a_server_kill_and_restart(c_built, tmp_path):
    from serverutil import ServerProcess
    example = str(c_built / "example")
    sock = tmp_path / "c.sock"
    first = ServerProcess(sock, "--workers", "1").start()
    ok = subprocess.run([example, str(sock)], capture_output=True, text=True, timeout=60)
    assert ok.stdout.strip() == "[7 113 835]", ok.stderr
    first.stop(signal.SIGKILL)
    t0 = time.monotonic()
    down = subprocess.run([example, str(sock)], capture_output=True, text=True, timeout=60)
    assert down.returncode != 0 and time.monotonic() - t0 < 5
    second = ServerProcess(sock, "--workers", "1").start()
    try:
        again = subprocess.run([example, str(sock)], capture_output=True, text=True, timeout=60)
        assert again.stdout.strip() == "[7 113 835]", again.stderr
    finally:
        assert second.stop() == 0
    from shmpool._backend.segment import reap_orphans
    reap_orphans()                 # the SIGKILLed server's own segments
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"shmpool-{first.proc.pid}-")]
