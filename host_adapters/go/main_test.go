package shmpool

// TestMain provides the server the integration tests and examples talk to:
//
//   - $SHMPOOL_SOCKET set: that server (already running; never stopped).
//   - $SHMPOOL_TEST_SERVER=fake: the Go fake of fakeserver_test.go, for
//     working without Python.
//   - otherwise a real one: $SHMPOOL_PYTHON (default
//     /work/main/.venv/bin/python, i.e. ../../.venv/bin/python, else
//     python3) -m shmpool serve --socket <tmp>/s.sock --workers 2, run from
//     the repository root, stopped with SIGTERM at the end.
//
// It exports the socket as $SHMPOOL_SOCKET for the examples, and after the
// run fails if anything of this process is left in /dev/shm.
//
// With $SHMPOOL_FAKE_SERVE=<socket> the test binary is instead a fake
// server in a process of its own ($SHMPOOL_FAKE_WORKERS workers), which
// the benchmarks use when there is no Python server.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var extraServers atomic.Int64

var testServer struct {
	socket string
	kind   string // "external", "fake" or "python"
	fake   *fakeServer
	proc   *serverProc // the python server, replaced by the restart test
	logDir string
}

func TestMain(m *testing.M) {
	if path := os.Getenv("SHMPOOL_FAKE_SERVE"); path != "" {
		serveFakeProcess(path)
		return
	}
	os.Exit(testMain(m))
}

// serveFakeProcess runs a fake server until SIGTERM.
func serveFakeProcess(path string) {
	workers, _ := strconv.Atoi(os.Getenv("SHMPOOL_FAKE_WORKERS"))
	f, err := startFakeServer(path, max(workers, 1))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake server:", err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	f.stop()
	os.Remove(path)
}

func testMain(m *testing.M) (code int) {
	if err := setUpServer(); err != nil {
		fmt.Fprintln(os.Stderr, "shmpool tests:", err)
		fmt.Fprintln(os.Stderr, "shmpool tests: set SHMPOOL_SOCKET to use a running server, or SHMPOOL_TEST_SERVER=fake to test against the built-in Go fake")
		tearDownServer()
		return 1
	}
	defer func() {
		if testServer.proc != nil && code != 0 {
			fmt.Fprintf(os.Stderr, "--- server log (%s) ---\n%s\n", testServer.proc.logPath, testServer.proc.log())
		}
		tearDownBench()
		tearDownServer()
		if left, err := listOwnSegments(); err != nil || len(left) > 0 {
			fmt.Fprintf(os.Stderr, "shmpool tests: left in /dev/shm: %v %v\n", left, err)
			code = 1
		}
	}()
	return m.Run()
}

func setUpServer() error {
	if s := os.Getenv("SHMPOOL_SOCKET"); s != "" {
		testServer.socket, testServer.kind = s, "external"
		return waitForServer(s, 10*time.Second, nil)
	}
	dir, err := os.MkdirTemp("", "shmpool-go-test-")
	if err != nil {
		return err
	}
	testServer.logDir = dir
	testServer.socket = filepath.Join(dir, "s.sock")
	os.Setenv("SHMPOOL_SOCKET", testServer.socket) // for the examples
	if os.Getenv("SHMPOOL_TEST_SERVER") == "fake" {
		testServer.kind = "fake"
		testServer.fake, err = startFakeServer(testServer.socket, 2)
		return err
	}
	testServer.kind = "python"
	testServer.proc, err = startPythonServer(testServer.socket, filepath.Join(dir, "server-1.log"))
	return err
}

func tearDownServer() {
	if testServer.fake != nil {
		testServer.fake.stop()
	}
	if testServer.proc != nil {
		if err := testServer.proc.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "shmpool tests: stopping the server:", err)
		}
	}
	if testServer.logDir != "" {
		os.RemoveAll(testServer.logDir)
	}
}

// serverProc is a server process this test process started, in its own
// process group so that its workers can be found and stopped with it.
type serverProc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	logPath string
	logFile *os.File
}

func pythonPath() string {
	if p := os.Getenv("SHMPOOL_PYTHON"); p != "" {
		return p
	}
	if p, err := filepath.Abs("../../.venv/bin/python"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "python3"
}

// startPythonServer starts `python -m shmpool serve --socket socket
// --workers 2 extra...` (a later --workers in extra wins) and waits until
// it answers.
func startPythonServer(socket, logPath string, extra ...string) (*serverProc, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	args := append([]string{"-m", "shmpool", "serve", "--socket", socket, "--workers", "2"}, extra...)
	return startProc(exec.Command(pythonPath(), args...), root, socket, logPath)
}

// startFakeProcess starts this test binary as a fake server process.
func startFakeProcess(socket, logPath string, workers int) (*serverProc, error) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(withoutEnv(os.Environ(), "SHMPOOL_SOCKET"), "SHMPOOL_FAKE_SERVE="+socket,
		"SHMPOOL_FAKE_WORKERS="+strconv.Itoa(workers))
	return startProc(cmd, "", socket, logPath)
}

func startProc(cmd *exec.Cmd, dir, socket, logPath string) (*serverProc, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if cmd.Env == nil {
		cmd.Env = withoutEnv(os.Environ(), "SHMPOOL_SOCKET")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", strings.Join(cmd.Args, " "), err)
	}
	p := &serverProc{cmd: cmd, done: make(chan struct{}), logPath: logPath, logFile: logFile}
	go func() { cmd.Wait(); close(p.done) }()
	if err := waitForServer(socket, 60*time.Second, p.done); err != nil {
		p.kill()
		return nil, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, p.log())
	}
	return p, nil
}

func withoutEnv(env []string, key string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func (p *serverProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// stop sends SIGTERM and waits up to 20 s, then kills what is left of the
// process group.
func (p *serverProc) stop() error {
	pid := p.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGTERM)
	var err error
	select {
	case <-p.done:
		if st := p.cmd.ProcessState; st != nil && !st.Success() {
			err = fmt.Errorf("server exited with %v after SIGTERM", st)
		}
	case <-time.After(20 * time.Second):
		err = errors.New("server did not exit within 20 s of SIGTERM")
	}
	p.kill()
	return err
}

// kill sends SIGKILL to the server's whole process group (its workers
// included) and waits for the server to be reaped.
func (p *serverProc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.logFile.Close()
}

// waitForServer dials socket until a worker answers a PING.
func waitForServer(socket string, limit time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(limit)
	var err error
	for time.Now().Before(deadline) {
		var c *Client
		if c, err = DialConfig(socket, Config{DialTimeout: 2 * time.Second, CallTimeout: 5 * time.Second}); err == nil {
			err = c.Ping()
			c.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("server exited before answering a PING (last error: %v)", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("no PING answer on %s within %v: %v", socket, limit, err)
}

// extraServer starts a server of the TestMain kind with the given workers
// (and, for Python, extra arguments) on a socket of its own, stopped at the
// end of the test. It skips the test for an external server, and for a
// fake when Python arguments are needed.
func extraServer(t *testing.T, workers int, extra ...string) (socket string, f *fakeServer, p *serverProc) {
	t.Helper()
	dir := testServer.logDir
	if dir == "" {
		dir = t.TempDir()
	}
	socket = filepath.Join(dir, fmt.Sprintf("extra-%d.sock", extraServers.Add(1)))
	switch testServer.kind {
	case "python":
		args := append([]string{"--workers", strconv.Itoa(workers)}, extra...)
		p, err := startPythonServer(socket, socket+".log", args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.stop(); err != nil {
				t.Errorf("stopping %s: %v\n%s", socket, err, p.log())
			}
		})
		return socket, nil, p
	case "fake":
		if len(extra) > 0 {
			t.Skipf("needs a Python server (%s)", strings.Join(extra, " "))
		}
		f, err := startFakeServer(socket, workers)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.stop)
		return socket, f, nil
	}
	t.Skipf("the %s server was not started by this test", testServer.kind)
	return "", nil, nil
}

// testClient dials socket and closes the client at the end of the test.
func testClient(t testing.TB, socket string) *Client {
	t.Helper()
	c, err := Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// listOwnSegments lists what this process has in /dev/shm: its segments
// and owner files (all named shmpool-<pid>-...).
func listOwnSegments() ([]string, error) {
	ents, err := os.ReadDir(shmDir)
	if err != nil {
		return nil, err
	}
	prefix := fmt.Sprintf("shmpool-%d-", os.Getpid())
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func ownSegments(t testing.TB) []string {
	t.Helper()
	names, err := listOwnSegments()
	if err != nil {
		t.Fatal(err)
	}
	return names
}
