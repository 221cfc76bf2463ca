package shmpool

// Benchmarks of the hot path, and the measurement behind the choice of raw
// blocking system calls over net.UnixConn (sock.go). They run against the
// TestMain Python server, or else a fake server in a process of its own.
//
//	go test -run XXX -bench . -benchtime 2s
//	SHMPOOL_MEASURE=1 go test -run TestMeasure -v     # p50/p99 and calls/s

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"
)

var benchOnce struct {
	sync.Once
	socket string
	proc   *serverProc
	err    error
}

// benchSocket returns a server to measure against: the Python one when
// TestMain started it, else a fake server process with 2 workers (stopped
// by TestMain through tearDownBench).
func benchSocket(tb testing.TB) string {
	tb.Helper()
	if testServer.kind == "python" || testServer.kind == "external" {
		return testServer.socket
	}
	benchOnce.Do(func() {
		dir := testServer.logDir
		if dir == "" {
			dir = os.TempDir()
		}
		benchOnce.socket = filepath.Join(dir, "bench-fake.sock")
		benchOnce.proc, benchOnce.err = startFakeProcess(benchOnce.socket, benchOnce.socket+".log", 2)
	})
	if benchOnce.err != nil {
		tb.Fatal(benchOnce.err)
	}
	return benchOnce.socket
}

func tearDownBench() {
	if benchOnce.proc != nil {
		benchOnce.proc.stop()
		benchOnce.proc = nil
	}
}

func BenchmarkDetect1000(b *testing.B) {
	c := testClient(b, benchSocket(b))
	x := seedData()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Detect(x); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDetect1000Parallel: 4 goroutines on one Client (GOMAXPROCS 2 x
// parallelism 2).
func BenchmarkDetect1000Parallel(b *testing.B) {
	c := testClient(b, benchSocket(b))
	b.SetParallelism(max(1, 4/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		x := seedData()
		for pb.Next() {
			if _, err := c.Detect(x); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkDetectBuffer1M(b *testing.B) {
	c := testClient(b, benchSocket(b))
	buf, err := c.NewBuffer(1000000)
	if err != nil {
		b.Fatal(err)
	}
	defer buf.Close()
	copy(buf.Data(), normalData(1, 1000000))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.DetectBuffer(buf, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// netLane is the same DETECT round trip as the Client's, over net.UnixConn
// (Go's netpoller) instead of raw blocking system calls: the alternative
// sock.go was measured against.
type netLane struct {
	conn      *net.UnixConn
	data, out *segment
	req, buf  []byte
	id        uint64
}

func newNetLane(tb testing.TB, socket string) *netLane {
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		tb.Fatal(err)
	}
	l := &netLane{conn: conn, req: make([]byte, requestHeadSize), buf: make([]byte, maxReply)}
	if l.data, err = createSegment(kindData, 1000, 1000); err != nil {
		tb.Fatal(err)
	}
	if l.out, err = createSegment(kindResult, pageElems, 0); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(); l.data.close(); l.out.close() })
	return l
}

func (l *netLane) detect(x []float64) ([]int, error) {
	copy(l.data.floats(), x)
	l.data.setCount(len(x))
	l.id++
	r := request{Op: opDetect, RequestID: l.id, Count: uint64(len(x)), DataName: l.data.name, OutName: l.out.name}
	n, err := encodeRequest(l.req, &r)
	if err != nil {
		return nil, err
	}
	if _, err := l.conn.Write(l.req[:n]); err != nil {
		return nil, err
	}
	n, err = l.conn.Read(l.buf)
	if err != nil {
		return nil, err
	}
	h, err := decodeReplyHead(l.buf[:n])
	if err != nil {
		return nil, err
	}
	if h.Status != StatusOK || h.RequestID != l.id {
		return nil, fmt.Errorf("reply %+v", h)
	}
	idx := make([]int, h.Count)
	for i, v := range l.out.ints()[:h.Count] {
		idx[i] = int(v)
	}
	return idx, nil
}

func BenchmarkNetUnixConnDetect1000(b *testing.B) {
	l := newNetLane(b, benchSocket(b))
	x := seedData()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.detect(x); err != nil {
			b.Fatal(err)
		}
	}
}

// measure runs calls on g goroutines for d and returns calls/s and, for
// g == 1, the latency percentiles.
func measure(g int, d time.Duration, call func(g int) func() error) (rate float64, p50, p99 time.Duration, err error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lat []time.Duration
	total := 0
	stop := time.Now().Add(d)
	for i := 0; i < g; i++ {
		f := call(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(stop) {
				t0 := time.Now()
				if e := f(); e != nil {
					mu.Lock()
					err = e
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			total += len(mine)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		p50, p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return float64(total) / d.Seconds(), p50, p99, err
}

// TestMeasure prints the numbers of README.md: Detect of 1,000 values,
// p50 and p99, and calls/s with 1 and 4 goroutines on one Client, for the
// Client (raw system calls) and for the same round trip over
// net.UnixConn.
func TestMeasure(t *testing.T) {
	if os.Getenv("SHMPOOL_MEASURE") == "" {
		t.Skip("set SHMPOOL_MEASURE=1")
	}
	socket := benchSocket(t)
	x := seedData()
	c := testClient(t, socket)
	for i := 0; i < 2000; i++ { // warm up
		c.Detect(x)
	}
	d := 3 * time.Second
	report := func(name string, g int, call func(g int) func() error) float64 {
		rate, p50, p99, err := measure(g, d, call)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%-36s %d goroutine(s): %8.0f calls/s  p50 %6.1f µs  p99 %6.1f µs", name, g, rate,
			float64(p50.Nanoseconds())/1e3, float64(p99.Nanoseconds())/1e3)
		return rate
	}
	client := func(int) func() error { return func() error { _, err := c.Detect(x); return err } }
	r1 := report("Client.Detect (raw syscalls)", 1, client)
	r4 := report("Client.Detect (raw syscalls)", 4, client)
	t.Logf("Client: 4 goroutines / 1 goroutine = %.2fx", r4/r1)
	var lanes []*netLane
	for i := 0; i < 4; i++ {
		lanes = append(lanes, newNetLane(t, socket))
	}
	viaNet := func(g int) func() error { l := lanes[g]; return func() error { _, err := l.detect(x); return err } }
	n1 := report("same round trip over net.UnixConn", 1, viaNet)
	n4 := report("same round trip over net.UnixConn", 4, viaNet)
	t.Logf("net.UnixConn: 4 goroutines / 1 goroutine = %.2fx", n4/n1)
}
