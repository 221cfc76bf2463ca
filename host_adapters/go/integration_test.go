package shmpool

// Integration tests against the server TestMain provides (a real Python
// server unless $SHMPOOL_TEST_SERVER=fake).

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestServer(t *testing.T) {
	t.Logf("server: %s on %s", testServer.kind, testServer.socket)
	contractTests(t, testServer.socket)
}

// TestServerRestart kills the server with SIGKILL (workers included) and
// starts a new one on the same socket path.
func TestServerRestart(t *testing.T) {
	socket := testServer.socket
	n := 1
	switch testServer.kind {
	case "python":
		restartTest(t, socket,
			func() { testServer.proc.kill() },
			func() {
				n++
				p, err := startPythonServer(socket, filepath.Join(testServer.logDir, fmt.Sprintf("server-%d.log", n)))
				if err != nil {
					testServer.proc = nil
					t.Fatal(err)
				}
				testServer.proc = p
			})
	case "fake":
		restartTest(t, socket,
			func() { testServer.fake.stop() },
			func() {
				f, err := startFakeServer(socket)
				if err != nil {
					testServer.fake = nil
					t.Fatal(err)
				}
				testServer.fake = f
			})
	default:
		t.Skipf("the %s server was not started by this test", testServer.kind)
	}
}

// TestOutliersCommand builds and runs cmd/outliers against the server.
func TestOutliersCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "outliers")
	gotool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(gotool, "build", "-o", bin, "./cmd/outliers").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-socket", testServer.socket)
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "[7 113 835]\n" {
		t.Errorf("outliers: %v, output %q", err, out)
	}
	if left, _ := filepath.Glob(fmt.Sprintf("%sshmpool-%d-*", shmDir, cmd.Process.Pid)); len(left) > 0 {
		t.Errorf("outliers left segments behind: %v", left)
	}
	// Without -socket it uses $SHMPOOL_SOCKET.
	cmd = exec.Command(bin)
	cmd.Env = append(withoutEnv(os.Environ(), "SHMPOOL_SOCKET"), "SHMPOOL_SOCKET="+testServer.socket)
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "[7 113 835]\n" {
		t.Errorf("outliers with $SHMPOOL_SOCKET: %v, output %q", err, out)
	}
	// Failure: non-zero exit, the error on stderr, nothing on stdout.
	cmd = exec.Command(bin, "-socket", filepath.Join(t.TempDir(), "none.sock"))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 || stdout.Len() != 0 ||
		!strings.Contains(stderr.String(), "shmpool: connecting to") {
		t.Errorf("outliers with no server: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
	}
}

// TestServerNoLeftoverSegments runs after the tests above (tests run in
// file order) and checks that every client closed so far unlinked its
// segments; TestMain checks again after the examples.
func TestServerNoLeftoverSegments(t *testing.T) {
	if left := ownSegments(t); len(left) > 0 {
		t.Errorf("segments of this process left in /dev/shm: %v", left)
	}
}

// TestDetectorExceptionArrivesAsError: a Python detector that raises comes
// back as an *Error carrying the exception's type, message and traceback,
// and the next call on the same Client works.
func TestDetectorExceptionArrivesAsError(t *testing.T) {
	if testServer.kind != "python" {
		t.Skip("needs a real Python server to load a custom detector")
	}
	socket := filepath.Join(testServer.logDir, "detector.sock")
	p, err := startPythonServer(socket, filepath.Join(testServer.logDir, "detector.log"),
		"--detector", "shmpool.testing:fail_on_negative")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	c, err := Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Detect([]float64{1, -2, 3})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if e.Status != StatusDetectorError || e.Type != "ValueError" ||
		!strings.Contains(e.Message, "negative value -2.0 at index 1") ||
		!strings.Contains(e.Traceback, "fail_on_negative") {
		t.Fatalf("error does not carry the exception: %+v", e)
	}
	if !strings.HasPrefix(err.Error(), "shmpool: ") {
		t.Errorf("error text %q", err.Error())
	}
	x := make([]float64, 100)
	x[42] = 9
	idx, err := c.Detect(x)
	if err != nil || len(idx) != 1 || idx[0] != 42 {
		t.Fatalf("next call: %v %v", idx, err)
	}
}
