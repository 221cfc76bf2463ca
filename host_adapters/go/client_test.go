package shmpool

// Client tests against a private Go fake server (fakeserver_test.go): the
// contract, plus failures a real server cannot easily be made to show.

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func newFake(t *testing.T) *fakeServer {
	t.Helper()
	f, err := startFakeServer(filepath.Join(t.TempDir(), "fake.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.stop)
	return f
}

func TestFakeContract(t *testing.T) {
	contractTests(t, newFake(t).path)
}

func TestFakeRestart(t *testing.T) {
	f := newFake(t)
	path := f.path
	restartTest(t, path,
		func() { f.stop() },
		func() {
			var err error
			if f, err = startFakeServer(path); err != nil {
				t.Fatal(err)
			}
		})
	f.stop()
}

// restartTest checks that a killed server makes calls fail promptly and that
// the same Client works again once a server is back on the same path.
func restartTest(t *testing.T, socket string, kill, start func()) {
	c, err := Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	detect := func(t *testing.T) ([]int, error, time.Duration) {
		t.Helper()
		t0 := time.Now()
		done := make(chan struct{})
		var got []int
		go func() { got, err = c.Detect(seedData()); close(done) }()
		select {
		case <-done:
			return got, err, time.Since(t0)
		case <-time.After(30 * time.Second):
			t.Fatal("Detect hung for 30 s")
		}
		return nil, nil, 0
	}
	if got, err, _ := detect(t); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Fatalf("before the kill: %v, %v", got, err)
	}

	// Killed: the call fails at once, with a connection error.
	kill()
	got, err, took := detect(t)
	if err == nil {
		t.Fatalf("Detect with the server dead returned %v, no error", got)
	}
	t.Logf("server dead: %v (after %v)", err, took)
	var e *Error
	if took > 2*time.Second || errors.As(err, &e) || errors.Is(err, ErrClosed) ||
		!strings.HasPrefix(err.Error(), "shmpool: ") {
		t.Errorf("server dead: error %q after %v; want a prompt connection error", err, took)
	}

	// Back: the next call redials and works.
	start()
	if got, err, _ := detect(t); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Fatalf("after the restart: %v, %v", got, err)
	}

	// Killed and restarted while the client was idle: its idle lane is
	// stale, and the call is retried on a fresh one.
	kill()
	start()
	if got, err, _ := detect(t); err != nil || !reflect.DeepEqual(got, seedWant) {
		t.Fatalf("after an unseen restart: %v, %v", got, err)
	}
}

func TestFakeKilledInFlight(t *testing.T) {
	f := newFake(t)
	c, err := Dial(f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f.setDelay(time.Minute)
	done := make(chan error, 1)
	go func() { _, err := c.Detect(seedData()); done <- err }()
	waitRequests(t, f, 2) // the PING of Dial and the DETECT
	t0 := time.Now()
	f.stop()
	select {
	case err := <-done:
		if err == nil || time.Since(t0) > 2*time.Second {
			t.Errorf("in-flight call: %v after %v", err, time.Since(t0))
		}
		t.Log(err)
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight call hung after the server died")
	}
}

func waitRequests(t *testing.T, f *fakeServer, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); f.requests() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("server saw %d requests, want %d", f.requests(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFakeCloseInterruptsCalls(t *testing.T) {
	f := newFake(t)
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
	waitRequests(t, f, 1+calls)
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
		t.Errorf("segments before %v, after Close %v", before, after)
	}
}

func TestFakeMisbehavingServer(t *testing.T) {
	f := newFake(t)
	c, err := Dial(f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	good := func(r request) []byte {
		return encodeReply(nil, reply{Status: StatusOK, RequestID: r.RequestID, Count: 3, Needed: 3})
	}
	for _, tc := range []struct {
		name string
		hook func(r request) ([]byte, bool)
		want string
	}{
		{"no reply", func(r request) ([]byte, bool) { return nil, true }, "connection closed"},
		{"magic", func(r request) ([]byte, bool) { b := good(r); b[0] = 'X'; return b, false }, "magic"},
		{"version", func(r request) ([]byte, bool) { b := good(r); b[4] = 9; return b, false }, "version"},
		{"short", func(r request) ([]byte, bool) { return good(r)[:20], false }, "head alone"},
		{"lengths", func(r request) ([]byte, bool) { return append(good(r), 'x'), false }, "do not match"},
		{"request id", func(r request) ([]byte, bool) {
			b := good(r)
			binary.LittleEndian.PutUint64(b[8:], r.RequestID+1)
			return b, false
		}, "answers request"},
		{"rejected", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{Status: StatusBadMessage, Message: "nope"}), false
		}, "rejected"},
		{"count", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{Status: StatusOK, RequestID: r.RequestID, Count: 3, Needed: 4}), false
		}, "indices written"},
		{"capacity", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{Status: StatusOK, RequestID: r.RequestID, Count: 1e6, Needed: 1e6}), false
		}, "capacity"},
		{"indices", func(r request) ([]byte, bool) {
			// Claims 3 indices without writing them: the region holds zeros.
			return good(r), false
		}, "server returned index"},
		{"endless too small", func(r request) ([]byte, bool) {
			return encodeReply(nil, reply{Status: StatusTooSmall, RequestID: r.RequestID, Needed: 5000}), false
		}, "TOO_SMALL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.setHook(func(r request) ([]byte, bool) {
				if r.Op == opPing {
					return nil, false
				}
				return tc.hook(r)
			})
			done := make(chan error, 1)
			go func() {
				// A fresh lane each time, so the "indices" case reads a
				// zeroed result region.
				c.mu.Lock()
				for _, l := range c.idle {
					l.destroy()
				}
				c.idle = nil
				c.mu.Unlock()
				_, err := c.Detect(seedData())
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "shmpool: ") {
					t.Errorf("error %v, want one mentioning %q", err, tc.want)
				}
				t.Log(err)
			case <-time.After(10 * time.Second):
				t.Fatal("hung")
			}
			f.setHook(nil)
			if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
				t.Errorf("next call: %v, %v", got, err)
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Dial(filepath.Join(dir, "none.sock"))
	if err == nil || !strings.HasPrefix(err.Error(), "shmpool: connecting to ") {
		t.Errorf("Dial of a missing socket: %v", err)
	}
	// A stream socket is not a server.
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
	c, err := Dial(newFake(t).path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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
}
