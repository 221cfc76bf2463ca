package shmpool

// Client tests against private Go fake servers (fakeserver_test.go): the
// contract, plus the failures a real server cannot easily be made to show.

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func newFake(t *testing.T, workers int) *fakeServer {
	t.Helper()
	f, err := startFakeServer(filepath.Join(t.TempDir(), "fake.sock"), workers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.stop)
	return f
}

// dropIdle closes the client's idle lanes, so that the next call dials.
func dropIdle(c *Client) {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	for _, l := range idle {
		c.removeLane(l)
	}
	c.mu.Unlock()
	for _, l := range idle {
		l.destroy()
	}
}

func laneCount(c *Client) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.all)
}

// detectWithin runs c.DetectWith in a goroutine and fails the test if it
// takes longer than limit.
func detectWithin(t *testing.T, limit time.Duration, c *Client, x []float64, opt Options) ([]int, error, time.Duration) {
	t.Helper()
	type result struct {
		idx []int
		err error
	}
	done := make(chan result, 1)
	t0 := time.Now()
	go func() {
		idx, err := c.DetectWith(x, opt)
		done <- result{idx, err}
	}()
	select {
	case r := <-done:
		return r.idx, r.err, time.Since(t0)
	case <-time.After(limit):
		t.Fatalf("Detect hung for %v", limit)
	}
	return nil, nil, 0
}

func TestFakeContract(t *testing.T) {
	contractTests(t, newFake(t, 2).path)
}

func TestFakeRestart(t *testing.T) {
	f := newFake(t, 2)
	path := f.path
	restartTest(t, path,
		func(*Client) { f.stop() },
		func() {
			var err error
			if f, err = startFakeServer(path, 2); err != nil {
				t.Fatal(err)
			}
		})
	f.stop()
}

// restartTest checks that a killed server makes calls fail promptly and that
// the same Client works again once a server is back on the same path.
func restartTest(t *testing.T, socket string, kill func(c *Client), start func()) {
	c, err := Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err, _ := detectWithin(t, 30*time.Second, c, seedData(), Options{}); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Fatalf("before the kill: %v, %v", got, err)
	}

	// Killed: the call fails at once. Its idle lane is stale (EPIPE), the
	// retry cannot connect.
	kill(c)
	got, err, took := detectWithin(t, 30*time.Second, c, seedData(), Options{})
	if err == nil {
		t.Fatalf("Detect with the server dead returned %v, no error", got)
	}
	t.Logf("server dead: %v (after %v)", err, took)
	if took > 2*time.Second || errors.Is(err, ErrClosed) || !strings.HasPrefix(err.Error(), "shmpool: ") {
		t.Errorf("server dead: error %q after %v; want a prompt error", err, took)
	}
	// Usually the idle lane's send fails (EPIPE), nothing ran, and the retry
	// cannot connect; a send that races the worker's exit sees it die.
	var se *Error
	if !strings.Contains(err.Error(), "connecting to") &&
		!(errors.As(err, &se) && se.Status == StatusWorkerDied) {
		t.Errorf("server dead: %q; want the retry's connection error or WORKER_DIED", err)
	}

	// Back: the next call dials and works.
	start()
	if got, err, _ := detectWithin(t, 30*time.Second, c, seedData(), Options{}); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Fatalf("after the restart: %v, %v", got, err)
	}

	// Killed and restarted while the client was idle: its idle lane is
	// stale, and the call is retried on a fresh one.
	kill(c)
	start()
	if got, err, _ := detectWithin(t, 30*time.Second, c, seedData(), Options{}); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Fatalf("after an unseen restart: %v, %v", got, err)
	}
}

func waitRequests(t *testing.T, f *fakeServer, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); f.requests() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("server saw %d requests, want %d", f.requests(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A server killed during a call: the call fails at once with WORKER_DIED.
func TestFakeKilledInFlight(t *testing.T) {
	f := newFake(t, 2)
	c := testClient(t, f.path)
	f.setDelay(time.Minute)
	done := make(chan error, 1)
	go func() { _, err := c.Detect(seedData()); done <- err }()
	waitRequests(t, f, 2) // the INFO of Dial and the DETECT
	t0 := time.Now()
	f.stop()
	select {
	case err := <-done:
		if !isStatus(err, StatusWorkerDied) || time.Since(t0) > 2*time.Second {
			t.Errorf("in-flight call: %v after %v; want WORKER_DIED at once", err, time.Since(t0))
		}
		t.Log(err)
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight call hung after the server died")
	}
}

// A worker killed during a call fails that call alone.
func TestFakeWorkerKilledMidCall(t *testing.T) {
	f := newFake(t, 2)
	c := testClient(t, f.path)
	release := make(chan struct{})
	var victim *fakeWorker
	var mu sync.Mutex
	f.setHook(func(w *fakeWorker, r request) ([]byte, bool) {
		if r.Op == opDetect && r.Count == 13 {
			mu.Lock()
			victim = w
			mu.Unlock()
			<-release
			return nil, true
		}
		return nil, false
	})
	slow := make(chan error, 1)
	go func() { _, err := c.Detect(make([]float64, 13)); slow <- err }()
	waitRequests(t, f, 2)
	// The other worker keeps answering.
	for i := 0; i < 20; i++ {
		x := make([]float64, 14)
		x[3] = 100
		if idx, err := c.Detect(x); err != nil || !reflect.DeepEqual(idx, []int{3}) {
			t.Fatalf("call on the other worker: %v %v", idx, err)
		}
	}
	mu.Lock()
	f.killWorker(victim.index)
	mu.Unlock()
	select {
	case err := <-slow:
		if !isStatus(err, StatusWorkerDied) {
			t.Errorf("slow call: %v, want WORKER_DIED", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call on the killed worker hung")
	}
	close(release)
	for i := 0; i < 5; i++ {
		if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
			t.Errorf("after: %v %v", got, err)
		}
	}
}

// A worker that died while the lane was idle: the call is retried on a new
// connection, transparently.
func TestFakeStaleIdleLaneRetried(t *testing.T) {
	f := newFake(t, 2)
	c := testClient(t, f.path)
	if _, err := c.Detect(seedData()); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	w := c.idle[0].worker
	c.mu.Unlock()
	f.killWorker(w)
	time.Sleep(10 * time.Millisecond)
	if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Fatalf("after the idle lane's worker died: %v %v", got, err)
	}
	if n := laneCount(c); n != 1 {
		t.Errorf("%d lanes, want the stale one replaced by one new one", n)
	}
}

func TestFakeCloseInterruptsCalls(t *testing.T) {
	f := newFake(t, 2)
	before := ownSegments(t)
	c, err := Dial(f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.setDelay(time.Minute)
	const calls = 4
	done := make(chan error, calls)
	for i := 0; i < calls; i++ {
		go func() { _, err := c.Detect(seedData()); done <- err }()
	}
	// The INFO of Dial, a DETECT on its lane, and an INFO on each new lane
	// (which the workers answer after their DETECT: not yet).
	waitRequests(t, f, 2+(calls-1))
	t0 := time.Now()
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	for i := 0; i < calls; i++ {
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("interrupted call: %v, want ErrClosed", err)
		}
	}
	if after := ownSegments(t); len(after) != len(before) {
		t.Errorf("before %v, after Close %v", before, after)
	}
}

func TestFakeTimeout(t *testing.T) {
	f := newFake(t, 2)
	c, err := DialConfig(f.path, Config{CallTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f.setDelay(time.Second)
	_, err, took := detectWithin(t, 10*time.Second, c, seedData(), Options{})
	var e *Error
	if !errors.As(err, &e) || e.Status != StatusTimeout || !e.Timeout() || took < 90*time.Millisecond || took > time.Second {
		t.Fatalf("call past its timeout: %v after %v", err, took)
	}
	t.Log(err)
	if n := laneCount(c); n != 0 {
		t.Errorf("%d lanes after a timeout; the timed-out one must be closed", n)
	}
	// Options.Timeout overrides the Client's, both ways.
	got, err, _ := detectWithin(t, 10*time.Second, c, seedData(), Options{Timeout: -1})
	if err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Errorf("no timeout: %v %v", got, err)
	}
	got, err, _ = detectWithin(t, 10*time.Second, c, seedData(), Options{Timeout: 3 * time.Second})
	if err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Errorf("longer timeout: %v %v", got, err)
	}
	f.setDelay(0)
	if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Errorf("after: %v %v", got, err)
	}
	// A split call: its deadline covers all phases.
	x := normalData(1, 300000)
	f.setDelay(60 * time.Millisecond)
	_, err, took = detectWithin(t, 10*time.Second, c, x, Options{Timeout: 100 * time.Millisecond})
	if !isStatus(err, StatusTimeout) || took > time.Second {
		t.Errorf("split call past its timeout: %v after %v", err, took)
	}
	f.setDelay(0)
	got, err = c.Detect(x)
	checkAnswer(t, "split after a timeout", x, 2, 2, got, err)
}

func TestFakeBusy(t *testing.T) {
	f := newFake(t, 2)
	f.set(func(f *fakeServer) { f.maxConns = 1 })
	c := testClient(t, f.path)
	// A second client has no lane to wait for: BUSY.
	_, err := Dial(f.path)
	if !isStatus(err, StatusBusy) {
		t.Fatalf("Dial of a busy server: %v, want BUSY", err)
	}
	t.Log(err)
	// Calls of the first wait for its one lane.
	f.setDelay(20 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call on a busy server: %v", err)
	}
	if n := laneCount(c); n != 1 {
		t.Errorf("%d lanes", n)
	}
}

func TestFakeRefusedConnection(t *testing.T) {
	for _, s := range []Status{StatusNotPermitted, StatusBadVersion, StatusShuttingDown} {
		f := newFake(t, 1)
		f.set(func(f *fakeServer) { f.refuse = s })
		_, err := Dial(f.path)
		if !isStatus(err, s) || !strings.HasPrefix(err.Error(), "shmpool: ") {
			t.Errorf("refused with %v: %v", s, err)
		}
		t.Log(err)
	}
}

func TestFakeServerUIDRefused(t *testing.T) {
	f := newFake(t, 1)
	expectedServerUID = func() int { return os.Getuid() + 1 }
	defer func() { expectedServerUID = os.Getuid }()
	_, err := Dial(f.path)
	want := "shmpool: server at " + f.path + " runs as uid " + strconv.Itoa(os.Getuid()) + ", not " +
		strconv.Itoa(os.Getuid()+1) + "; refusing"
	if err == nil || err.Error() != want {
		t.Errorf("Dial: %v\nwant %s", err, want)
	}
	if f.requests() != 0 {
		t.Errorf("%d requests sent to an untrusted server", f.requests())
	}
}

func TestFakeMisbehavingServer(t *testing.T) {
	f := newFake(t, 2)
	c := testClient(t, f.path)
	good := func(r request) []byte {
		return encodeReply(nil, reply{replyHead: replyHead{RequestID: r.RequestID, Count: 3, Needed: 3}})
	}
	le := binary.LittleEndian
	for _, tc := range []struct {
		name string
		hook func(r request) ([]byte, bool)
		want string
	}{
		{"no reply", func(r request) ([]byte, bool) { return nil, true }, "the worker serving this connection died during the call"},
		{"magic", func(r request) ([]byte, bool) { b := good(r); b[0] = 'X'; return b, false }, "magic"},
		{"version", func(r request) ([]byte, bool) { b := good(r); b[4] = 9; return b, false }, "version 9"},
		{"bad version", func(r request) ([]byte, bool) {
			b := good(r)[:16]
			b[4], b[6] = 3, byte(StatusBadVersion)
			return b, false
		}, "does not speak LAYOUT v2 (BAD_VERSION)"},
		{"short", func(r request) ([]byte, bool) { return good(r)[:20], false }, "head alone"},
		{"lengths", func(r request) ([]byte, bool) { return append(good(r), 'x'), false }, "do not match"},
		{"nvalues", func(r request) ([]byte, bool) { b := good(r); le.PutUint32(b[44:], 65); return b, false }, "exceed"},
		{"huge", func(r request) ([]byte, bool) { return make([]byte, maxReply+100), false }, "exceeds the limit"},
		{"request id", func(r request) ([]byte, bool) {
			b := good(r)
			le.PutUint64(b[8:], r.RequestID+1)
			return b, false
		}, "answers request"},
		{"busy mid-call", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{replyHead: replyHead{Status: StatusBusy}, Message: "busy"}), false
		}, "busy (BUSY)"},
		{"rejected", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{replyHead: replyHead{Status: StatusBadMessage}, Message: "nope"}), false
		}, "nope (BAD_MESSAGE)"},
		{"count", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{replyHead: replyHead{RequestID: r.RequestID, Count: 3, Needed: 4}}), false
		}, "indices written"},
		{"capacity", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{replyHead: replyHead{RequestID: r.RequestID, Count: 1e6, Needed: 1e6}}), false
		}, "capacity"},
		{"indices", func(r request) ([]byte, bool) {
			// Claims 3 indices without writing them: the new region holds zeros.
			return good(r), false
		}, "server returned index"},
		{"endless too small", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{replyHead: replyHead{Status: StatusTooSmall, RequestID: r.RequestID, Needed: 900}}), false
		}, "TOO_SMALL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.setHook(func(w *fakeWorker, r request) ([]byte, bool) {
				if r.Op != opDetect {
					return nil, false
				}
				return tc.hook(r)
			})
			dropIdle(c) // a fresh lane, with a fresh (zeroed) result segment
			_, err, _ := detectWithin(t, 10*time.Second, c, seedData(), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "shmpool: ") {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
			t.Log(err)
			f.setHook(nil)
			if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
				t.Errorf("next call: %v, %v", got, err)
			}
		})
	}
}

// A split call fails whole when any chunk fails, whatever the phase, and
// leaves the Client working.
func TestFakeSplitErrors(t *testing.T) {
	f := newFake(t, 2)
	c := testClient(t, f.path)
	x := normalData(8, 300000)
	for _, tc := range []struct {
		name string
		op   uint16
		hook func(r request) []byte
		want string
	}{
		{"summarize error", opSummarize, func(r request) []byte {
			return encodeReply(nil, reply{replyHead: replyHead{Status: StatusDetectorError, RequestID: r.RequestID},
				Type: "ZeroDivisionError", Message: "division by zero"})
		}, "ZeroDivisionError: division by zero (DETECTOR_ERROR)"},
		{"summary size", opSummarize, func(r request) []byte {
			return encodeReply(nil, reply{replyHead: replyHead{RequestID: r.RequestID}, Values: []float64{1, 2}})
		}, "SUMMARIZE replied 2 values"},
		{"combine error", opCombine, func(r request) []byte {
			return encodeReply(nil, reply{replyHead: replyHead{Status: StatusNonFinite, RequestID: r.RequestID},
				Type: "NonFiniteError", Message: "overflow"})
		}, "(NON_FINITE)"},
		{"combine values", opCombine, func(r request) []byte {
			return encodeReply(nil, reply{replyHead: replyHead{RequestID: r.RequestID}, Values: make([]float64, 9)})
		}, "9 flag parameters"},
		{"flag error", opFlag, func(r request) []byte {
			if r.Base == 0 {
				return nil // the first chunk succeeds
			}
			return encodeReply(nil, reply{replyHead: replyHead{Status: StatusNoSegment, RequestID: r.RequestID},
				Type: "SegmentNotFound", Message: "gone"})
		}, "SegmentNotFound: gone"},
		{"flag index outside its chunk", opFlag, func(r request) []byte {
			if r.Base == 0 {
				return nil
			}
			mem, _, _ := openFakeSegment(r.OutName, kindResult, true)
			defer syscall.Munmap(mem)
			le := binary.LittleEndian
			le.PutUint64(mem[headerSize:], 5) // chunk 1 starts at 150000
			return encodeReply(nil, reply{replyHead: replyHead{RequestID: r.RequestID, Count: 1, Needed: 1}})
		}, "server returned index 5"},
		{"worker dies in phase 2", opFlag, func(r request) []byte {
			if r.Base == 0 {
				return nil
			}
			return []byte{} // close
		}, "WORKER_DIED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.setHook(func(w *fakeWorker, r request) ([]byte, bool) {
				if r.Op != tc.op {
					return nil, false
				}
				raw := tc.hook(r)
				return raw, raw != nil && len(raw) == 0
			})
			got, err, _ := detectWithin(t, 10*time.Second, c, x, Options{})
			if err == nil || got != nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%d indices, error %v; want no answer and an error mentioning %q", len(got), err, tc.want)
			}
			t.Log(err)
			f.setHook(nil)
			got, err = c.Detect(x)
			checkAnswer(t, "next call", x, 2, 2, got, err)
		})
	}
}

// A split call whose chunks answer TOO_SMALL grows the lanes' result
// segments and asks again; DetectInto does the same and copies.
func TestFakeSplitManyIndices(t *testing.T) {
	f := newFake(t, 3)
	c := testClient(t, f.path)
	x := normalData(9, 400000)
	got, err := c.DetectWith(x, Options{Threshold: 0.2})
	checkAnswer(t, "Detect", x, 0.2, 3, got, err)
	if n := len(f.opWorkers(opFlag)); n <= 3 {
		t.Errorf("%d FLAG requests; want the chunks asked again after TOO_SMALL", n)
	}
	b, err := c.NewBuffer(len(x))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	copy(b.Data(), x)
	r, err := c.NewResult(len(got))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dropIdle(c) // new lanes with small result segments
	n, err := c.DetectInto(r, b, 0, b.Len(), Options{Threshold: 0.2})
	if err != nil || n != len(got) {
		t.Fatalf("DetectInto: %d %v", n, err)
	}
	for i, v := range r.Indices() {
		if int(v) != got[i] {
			t.Fatalf("DetectInto index %d: %d, want %d", i, v, got[i])
		}
	}
}

// After a restart that the client did not see, a split call replaces every
// stale lane and succeeds.
func TestFakeSplitStaleLanes(t *testing.T) {
	f := newFake(t, 2)
	path := f.path
	c := testClient(t, path)
	x := normalData(10, 300000)
	got, err := c.Detect(x)
	checkAnswer(t, "before", x, 2, 2, got, err)
	if n := laneCount(c); n != 2 {
		t.Fatalf("%d lanes after a split call over 2 workers", n)
	}
	f.stop()
	f2, err := startFakeServer(path, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.stop()
	got, err = c.Detect(x)
	checkAnswer(t, "after an unseen restart", x, 2, 2, got, err)
}

// A server restarted with other options (here more workers) while the
// client was idle: the stale lanes go, and the calls are planned anew.
func TestFakeServerChanged(t *testing.T) {
	f := newFake(t, 2)
	path := f.path
	c := testClient(t, path)
	x := normalData(12, 500000)
	got, err := c.Detect(x)
	checkAnswer(t, "2 workers", x, 2, 2, got, err)
	f.stop()
	f3, err := startFakeServer(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer f3.stop()
	got, err = c.Detect(x)
	checkAnswer(t, "3 workers", x, 2, 3, got, err)
	if c.Workers() != 3 {
		t.Errorf("Workers() = %d after the restart", c.Workers())
	}
	for _, l := range lanesOf(c) {
		if l.info.workers != 3 {
			t.Errorf("a lane of the old server survived")
		}
	}
}

func lanesOf(c *Client) []*lane {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*lane(nil), c.all...)
}

func TestFakeDetectorSelection(t *testing.T) {
	f := newFake(t, 2)
	c := testClient(t, f.path)
	x := normalData(11, 300000)
	// A whole row: never split, its own parameters.
	f.resetOps()
	got, err := c.DetectWith(x, Options{Detector: "gotest:above", Params: map[string]float64{"threshold": 1, "scale": 0.5}})
	if err != nil {
		t.Fatal(err)
	}
	want := []int{}
	for i, v := range x {
		if v*0.5 > 1 {
			want = append(want, i)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("gotest:above: %d indices, want %d", len(got), len(want))
	}
	if n := len(f.opWorkers(opSummarize)); n != 0 || len(f.opWorkers(opDetect)) != 1 {
		t.Errorf("a whole row was split (%d SUMMARIZE)", n)
	}
	// A split row of the user's, with its own default threshold.
	got, err = c.DetectWith(x, Options{Detector: "gotest:classic3"})
	checkAnswer(t, "gotest:classic3", x, 3, 2, got, err)
	// Threshold is shorthand only where the row has one.
	if _, err := c.DetectWith(x, Options{Detector: "gotest:fail_on_negative", Threshold: 2}); !isStatus(err, StatusBadValue) {
		t.Errorf("threshold for a row without one: %v", err)
	}
}

// connect(2) on a full listen backlog fails with EAGAIN: Dial retries
// until its timeout.
func TestDialRetriesWhileBacklogFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "full.sock")
	ln, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(ln)
	if err := syscall.Bind(ln, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(ln, 0); err != nil {
		t.Fatal(err)
	}
	// Fill the backlog.
	var fill []int
	defer func() {
		for _, fd := range fill {
			syscall.Close(fd)
		}
	}()
	for i := 0; i < 16; i++ {
		fd, _ := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		fill = append(fill, fd)
		if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: path}); err == syscall.EAGAIN {
			break
		}
	}
	t0 := time.Now()
	_, err = DialConfig(path, Config{DialTimeout: 200 * time.Millisecond})
	if took := time.Since(t0); err == nil || took < 190*time.Millisecond || took > 2*time.Second ||
		!strings.Contains(err.Error(), "backlog") {
		t.Errorf("Dial on a full backlog: %v after %v", err, took)
	}
	t.Log(err)
	// Room appears while Dial retries: it connects (and then finds no
	// worker behind the socket).
	go func() {
		time.Sleep(100 * time.Millisecond)
		for i := 0; i < 40; i++ {
			if fd, _, err := syscall.Accept(ln); err == nil {
				syscall.Close(fd)
			}
		}
	}()
	_, err = DialConfig(path, Config{DialTimeout: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "before answering INFO") {
		t.Errorf("Dial once the backlog drains: %v", err)
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Dial(filepath.Join(dir, "none.sock"))
	if err == nil || !strings.HasPrefix(err.Error(), "shmpool: connecting to ") {
		t.Errorf("Dial of a missing socket: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(filepath.Join(dir, "file")); err == nil {
		t.Error("Dial of a regular file succeeded")
	}
}

func TestDefaultSocketPath(t *testing.T) {
	t.Setenv("SHMPOOL_SOCKET", "/x/y.sock")
	if p := DefaultSocketPath(); p != "/x/y.sock" {
		t.Errorf("with $SHMPOOL_SOCKET: %q", p)
	}
	t.Setenv("SHMPOOL_SOCKET", "")
	if p, want := DefaultSocketPath(), "/tmp/shmpool-"+strconv.Itoa(os.Getuid())+".sock"; p != want {
		t.Errorf("DefaultSocketPath() = %q, want %q", p, want)
	}
}

func TestClosedBufferAndResult(t *testing.T) {
	c := testClient(t, newFake(t, 1).path)
	b, err := c.NewBuffer(10)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.NewResult(10)
	if err != nil {
		t.Fatal(err)
	}
	name := b.seg.name
	b.Close()
	if _, err := os.Stat(shmDir + name); !os.IsNotExist(err) {
		t.Errorf("buffer segment still there: %v", err)
	}
	if _, err := c.DetectInto(r, b, 0, 10, Options{}); !errors.Is(err, ErrClosed) {
		t.Errorf("DetectInto from a closed buffer: %v", err)
	}
	r.Close()
	r.Close()
	if r.Indices() != nil {
		t.Error("Indices after Close")
	}
	if _, err := c.NewBuffer(-1); err == nil {
		t.Error("negative buffer accepted")
	}
	if _, err := c.NewResult(-1); err == nil {
		t.Error("negative result accepted")
	}
}

// The hot path allocates nothing but the answer. (The server runs in
// another process: AllocsPerRun counts the whole process's allocations.)
func TestDetectAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	c := testClient(t, benchSocket(t))
	x := seedData()
	c.Detect(x)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c.Detect(x); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("Detect of 1,000 values: %v allocations per call, want 1 (the answer)", allocs)
	}
	allocs = testing.AllocsPerRun(200, func() {
		if _, err := c.DetectWith(x, Options{Threshold: 3, NaNPolicy: NaNOmit, Params: nil}); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("DetectWith: %v allocations per call", allocs)
	}
}
