package shmpool

// TestMain provides the server the integration tests and examples talk to:
//
//   - $SHMPOOL_SOCKET set: that server (already running; never stopped).
//   - $SHMPOOL_TEST_SERVER=fake: the Go fake of fakeserver_test.go, for
//     working without Python.
//   - otherwise a real one: $SHMPOOL_PYTHON (default ../../.venv/bin/python,
//     else python3) -m shmpool serve --socket <tmp>/s.sock --workers 2, run
//     from the repository root, stopped with SIGTERM at the end.
//
// It exports the socket as $SHMPOOL_SOCKET for the examples, and after the
// run fails if any segment of this process is left in /dev/shm.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var testServer struct {
	socket string
	kind   string // "external", "fake" or "python"
	fake   *fakeServer
	proc   *serverProc // the python server, replaced by the restart test
	logDir string
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
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
		tearDownServer()
		if left, err := listOwnSegments(); err != nil || len(left) > 0 {
			fmt.Fprintf(os.Stderr, "shmpool tests: segments left in /dev/shm: %v %v\n", left, err)
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
		testServer.fake, err = startFakeServer(testServer.socket)
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

// serverProc is a python server this test process started, in its own
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

func startPythonServer(socket, logPath string, extra ...string) (*serverProc, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"-m", "shmpool", "serve", "--socket", socket, "--workers", "2"}, extra...)
	cmd := exec.Command(pythonPath(), args...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = withoutEnv(os.Environ(), "SHMPOOL_SOCKET")
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

// waitForServer dials socket until the server answers a PING.
func waitForServer(socket string, limit time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(limit)
	var err error
	for time.Now().Before(deadline) {
		var c *Client
		if c, err = Dial(socket); err == nil {
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

// testClient dials the TestMain server and closes the client at the end of
// the test.
func testClient(t testing.TB) *Client {
	t.Helper()
	c, err := Dial(testServer.socket)
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
