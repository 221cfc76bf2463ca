package shmpool

// Integration tests against the server TestMain provides (a real Python
// server unless $SHMPOOL_TEST_SERVER=fake), and against extra servers of
// the same kind started with other options.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestServer(t *testing.T) {
	t.Logf("server: %s on %s", testServer.kind, testServer.socket)
	contractTests(t, testServer.socket)
}

// TestSplitVectors runs the `call` vectors of tests/vectors/v2.txt through
// a server with as many workers as the vector's lanes: copied in (Detect),
// from a Buffer (DetectBuffer) and into a Result (DetectInto). The answers
// must be exactly the vector's, which the Python pool gives for the same
// chunks.
func TestSplitVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		if v.kind != "call" {
			continue
		}
		cv := parseCallVector(t, v)
		t.Run(cv.name, func(t *testing.T) {
			socket, f := testServer.socket, testServer.fake
			if testServer.kind == "external" || cv.lanes != 2 {
				socket, f, _ = extraServer(t, cv.lanes)
			}
			c := testClient(t, socket)
			if c.Workers() != cv.lanes {
				t.Fatalf("the server runs %d workers, the vector %d lanes", c.Workers(), cv.lanes)
			}
			x := cv.data()
			opt := Options{Threshold: cv.threshold, NaNPolicy: cv.policy}
			if f != nil {
				f.resetOps()
			}
			idx, err := c.DetectWith(x, opt)
			cv.check(t, "Detect", idx, err)
			if f != nil && cv.k > 1 {
				// One SUMMARIZE per chunk, each on its own worker.
				w := f.opWorkers(opSummarize)
				seen := map[int]bool{}
				for _, i := range w {
					seen[i] = true
				}
				if len(w) != cv.k || len(seen) != cv.k {
					t.Errorf("SUMMARIZE ran on workers %v; want %d distinct", w, cv.k)
				}
			}
			b, err := c.NewBuffer(len(x))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			copy(b.Data(), x)
			idx, err = c.DetectBuffer(b, opt)
			cv.check(t, "DetectBuffer", idx, err)
			r, err := c.NewResult(cv.count)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			n, err := c.DetectInto(r, b, 0, len(x), opt)
			idx = nil
			for _, v := range r.Indices() {
				idx = append(idx, int(v))
			}
			if err == nil && n != len(idx) {
				t.Errorf("DetectInto returned %d, Indices has %d", n, len(idx))
			}
			cv.check(t, "DetectInto", idx, err)
		})
	}
}

// TestServerRestart kills the server with SIGKILL (workers included) and
// starts a new one on the same socket path.
func TestServerRestart(t *testing.T) {
	socket := testServer.socket
	n := 1
	switch testServer.kind {
	case "python":
		restartTest(t, socket,
			func(c *Client) {
				pids := lanePIDs(c)
				testServer.proc.kill()
				waitGone(t, pids)
			},
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
			func(*Client) { testServer.fake.stop() },
			func() {
				f, err := startFakeServer(socket, 2)
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

// lanePIDs returns the worker pids the client's lanes are connected to.
func lanePIDs(c *Client) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pids []int
	for _, l := range c.all {
		pids = append(pids, l.pid)
	}
	return pids
}

// waitGone waits until each process is gone or a zombie (its sockets are
// closed either way).
func waitGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for {
			stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			if err != nil {
				break
			}
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("process %d still alive 10 s after SIGKILL", pid)
			}
			time.Sleep(5 * time.Millisecond)
		}
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
		t.Errorf("outliers left files behind: %v", left)
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

// TestDetectorExceptionArrivesAsError: a Python detector that raises comes
// back as an *Error carrying the exception's type, message and traceback,
// and the next call on the same Client works.
func TestDetectorExceptionArrivesAsError(t *testing.T) {
	var c *Client
	opt := Options{}
	switch testServer.kind {
	case "fake":
		c = testClient(t, testServer.socket)
		opt.Detector = "gotest:fail_on_negative"
	default:
		socket, _, _ := extraServer(t, 2, "--detector", "shmpool.testing:fail_on_negative")
		c = testClient(t, socket)
		if d := c.Detectors(); len(d) != 1 || d[0].Name != "shmpool.testing:fail_on_negative" || d[0].Split {
			t.Errorf("detector table %+v", d)
		}
	}
	_, err := c.DetectWith([]float64{1, -2, 3}, opt)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if e.Status != StatusDetectorError || e.Type != "ValueError" ||
		!strings.Contains(e.Message, "negative value -2") || !strings.Contains(e.Message, "at index 1") ||
		!strings.Contains(e.Traceback, "fail_on_negative") {
		t.Fatalf("error does not carry the exception: %+v", e)
	}
	if !strings.HasPrefix(err.Error(), "shmpool: ValueError: ") {
		t.Errorf("error text %q", err.Error())
	}
	t.Logf("%v\n%s", err, e.Traceback)
	x := make([]float64, 100)
	x[42] = 9
	idx, err := c.DetectWith(x, opt)
	if testServer.kind == "fake" {
		if err != nil || len(idx) != 0 {
			t.Fatalf("next call: %v %v", idx, err)
		}
	} else if err != nil || len(idx) != 1 || idx[0] != 42 {
		t.Fatalf("next call: %v %v", idx, err)
	}
}

// TestWorkerKilledMidCall: SIGKILL of the worker serving a call fails that
// call alone, with WORKER_DIED; calls on the other worker go on, and the
// Client works afterwards. The worker's pid comes from INFO.
func TestWorkerKilledMidCall(t *testing.T) {
	if testServer.kind != "python" {
		t.Skip("the fake's version is TestFakeWorkerKilledMidCall")
	}
	socket, _, _ := extraServer(t, 2, "--detector", "shmpool.testing:slow_on_13")
	c := testClient(t, socket)
	victim := lanePIDs(c)[0] // the only lane: the slow call takes it
	slow := make(chan error, 1)
	go func() {
		_, err := c.Detect(make([]float64, 13)) // sleeps 30 s on the worker
		slow <- err
	}()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		taken := len(c.idle) == 0
		c.mu.Unlock()
		if taken {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow call did not take the lane")
		}
	}
	// Calls on the other worker meanwhile, before and after the kill.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var others []error
	wg.Add(1)
	go func() {
		defer wg.Done()
		x := make([]float64, 14)
		x[3] = 100
		for {
			select {
			case <-stop:
				return
			default:
			}
			if idx, err := c.Detect(x); err != nil || !reflect.DeepEqual(idx, []int{3}) {
				others = append(others, fmt.Errorf("%v %v", idx, err))
			}
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-slow:
		t.Fatalf("the slow call returned early: %v", err)
	default:
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	select {
	case err := <-slow:
		var e *Error
		if !errors.As(err, &e) || e.Status != StatusWorkerDied ||
			!strings.Contains(e.Message, "the worker serving this connection died during the call") {
			t.Errorf("slow call: %v, want WORKER_DIED", err)
		}
		t.Logf("slow call after the kill (%v): %v", time.Since(t0), err)
	case <-time.After(10 * time.Second):
		t.Fatal("the slow call did not fail within 10 s of its worker's SIGKILL")
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	for _, err := range others {
		t.Errorf("a call on the other worker: %v", err)
	}
	// Afterwards (the server has replaced the worker) calls work.
	for i := 0; i < 5; i++ {
		x := make([]float64, 14)
		x[5] = 100
		if idx, err := c.Detect(x); err != nil || !reflect.DeepEqual(idx, []int{5}) {
			t.Errorf("after the kill: %v %v", idx, err)
		}
	}
}

// TestServerNoLeftoverSegments runs after the tests above (tests run in
// file order) and checks that every client closed so far unlinked its
// segments and the owner file; TestMain checks again after the examples.
func TestServerNoLeftoverSegments(t *testing.T) {
	if left := ownSegments(t); len(left) > 0 {
		t.Errorf("left in /dev/shm by this process: %v", left)
	}
}
