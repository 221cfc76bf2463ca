package shmpool

// A fake shmpool v2 server in Go, written from LAYOUT.md, for testing the
// client's lanes, retries, timeouts, splitting and error paths without
// Python. It checks requests and segments the way a worker must (2.6, 1.2,
// 1.5), hands connections to "workers" by the rule of 2.1 (a worker is a
// mutex: one request at a time over all its connections), and runs the Go
// reference of the classic detector (reference_test.go), whose summaries
// equal the Python worker's bit for bit.

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const fakeDefaultK = 2.0

// fakeRow is one row of the fake's detector table. Split rows run the
// classic detector; whole rows run fn.
type fakeRow struct {
	Detector
	fn func(x []float64, params []float64, policy NaNPolicy) ([]int, *fakeFailure)
}

// fakeFailure is an error a detector "raised".
type fakeFailure struct {
	status          Status
	typ, msg, trace string
}

// fakeTable is the fake's default detector table: classic (split), a
// custom split row with another default, and two whole rows.
func fakeTable() []fakeRow {
	return []fakeRow{
		{Detector: Detector{Name: "classic", Split: true, SummarySize: classicSummarySize, Params: []Param{{"threshold", fakeDefaultK}}}},
		{Detector: Detector{Name: "gotest:classic3", Split: true, SummarySize: classicSummarySize, Params: []Param{{"threshold", 3}}}},
		{Detector: Detector{Name: "gotest:above", Params: []Param{{"threshold", 2}, {"scale", 1}}},
			fn: func(x []float64, p []float64, _ NaNPolicy) ([]int, *fakeFailure) {
				idx := []int{}
				for i, v := range x {
					if v*p[1] > p[0] {
						idx = append(idx, i)
					}
				}
				return idx, nil
			}},
		{Detector: Detector{Name: "gotest:fail_on_negative"},
			fn: func(x []float64, p []float64, _ NaNPolicy) ([]int, *fakeFailure) {
				for i, v := range x {
					if v < 0 {
						return nil, &fakeFailure{StatusDetectorError, "ValueError",
							fmt.Sprintf("negative value %v at index %d", v, i),
							"Traceback (most recent call last):\n  File \"gotest.py\", line 1, in fail_on_negative\nValueError"}
					}
				}
				return []int{}, nil
			}},
	}
}

type fakeWorker struct {
	mu    sync.Mutex // held while answering: one request at a time
	index int
	pid   int
	conns map[*net.UnixConn]int // connection -> host pid
}

// fakeServer is a shmpool server in Go.
type fakeServer struct {
	path          string
	ln            *net.UnixListener
	rows          []fakeRow
	defaultPolicy NaNPolicy

	mu sync.Mutex
	// hook, when set, sees every decoded request first; a non-nil raw is
	// sent instead of the normal reply; close means close the connection
	// without replying.
	hook func(w *fakeWorker, r request) (raw []byte, close bool)
	// delay is slept, holding the worker, before answering DETECT,
	// SUMMARIZE or FLAG.
	delay time.Duration
	// maxConns > 0: a connection beyond that many gets BUSY and is closed.
	maxConns int
	// refuse != OK: every new connection gets this status (request_id 0)
	// and is closed, like a host of another uid (NOT_PERMITTED).
	refuse  Status
	workers []*fakeWorker
	nextPID int
	conns   map[*net.UnixConn]*fakeWorker
	reqs    int              // requests read
	ops     map[uint16][]int // per op, the worker index of each request
	wg      sync.WaitGroup
	quit    chan struct{} // closed by stop

	stopOnce sync.Once
}

func startFakeServer(path string, workers int) (*fakeServer, error) {
	os.Remove(path)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	f := &fakeServer{path: path, ln: ln, rows: fakeTable(), defaultPolicy: NaNRaise, nextPID: 900000,
		conns: map[*net.UnixConn]*fakeWorker{}, ops: map[uint16][]int{}, quit: make(chan struct{})}
	for i := 0; i < workers; i++ {
		f.workers = append(f.workers, f.newWorker(i))
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *fakeServer) newWorker(i int) *fakeWorker {
	f.nextPID++
	return &fakeWorker{index: i, pid: f.nextPID, conns: map[*net.UnixConn]int{}}
}

func (f *fakeServer) set(fn func(f *fakeServer)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func (f *fakeServer) setHook(h func(w *fakeWorker, r request) ([]byte, bool)) {
	f.set(func(f *fakeServer) { f.hook = h })
}

func (f *fakeServer) setDelay(d time.Duration) { f.set(func(f *fakeServer) { f.delay = d }) }

func (f *fakeServer) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs
}

// opWorkers returns the worker index of every request of op so far.
func (f *fakeServer) opWorkers(op uint16) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.ops[op]...)
}

func (f *fakeServer) resetOps() { f.set(func(f *fakeServer) { f.ops = map[uint16][]int{} }) }

func peerPID(conn *net.UnixConn) int {
	raw, err := conn.SyscallConn()
	if err != nil {
		return -1
	}
	pid := -1
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

func (f *fakeServer) serve() {
	defer f.wg.Done()
	for {
		conn, err := f.ln.AcceptUnix()
		if err != nil {
			return
		}
		pid := peerPID(conn)
		f.mu.Lock()
		if f.conns == nil {
			f.mu.Unlock()
			conn.Close()
			return
		}
		refuse := f.refuse
		if f.maxConns > 0 && len(f.conns) >= f.maxConns {
			refuse = StatusBusy
		}
		if refuse != StatusOK {
			f.mu.Unlock()
			conn.Write(encodeReply(nil, reply{replyHead: replyHead{Status: refuse},
				Type: "ServerUnavailable", Message: "refused by the fake: " + refuse.String()}))
			conn.Close()
			continue
		}
		// LAYOUT.md 2.1: the fewest connections among the workers that do
		// not serve this host process yet; else the fewest.
		var best *fakeWorker
		for _, pass := range []bool{true, false} {
			for _, w := range f.workers {
				if pass && servesPID(w, pid) {
					continue
				}
				if best == nil || len(w.conns) < len(best.conns) {
					best = w
				}
			}
			if best != nil {
				break
			}
		}
		best.conns[conn] = pid
		f.conns[conn] = best
		f.wg.Add(1)
		f.mu.Unlock()
		go f.handle(conn, best)
	}
}

func servesPID(w *fakeWorker, pid int) bool {
	for _, p := range w.conns {
		if p == pid {
			return true
		}
	}
	return false
}

// killWorker closes every connection of worker i, as the kernel does when
// a worker dies, and puts a new worker (new pid) in its place.
func (f *fakeServer) killWorker(i int) {
	f.mu.Lock()
	old := f.workers[i]
	f.workers[i] = f.newWorker(i)
	for c := range old.conns {
		c.Close()
		delete(f.conns, c)
	}
	f.mu.Unlock()
}

// stop closes the listener and every connection, like a killed server (the
// socket file stays behind, as it would).
func (f *fakeServer) stop() {
	f.stopOnce.Do(func() {
		f.ln.SetUnlinkOnClose(false)
		f.ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.conns = nil
		f.mu.Unlock()
		close(f.quit)
		f.wg.Wait()
	})
}

func (f *fakeServer) handle(conn *net.UnixConn, w *fakeWorker) {
	defer f.wg.Done()
	defer func() {
		conn.Close()
		f.mu.Lock()
		delete(w.conns, conn)
		if f.conns != nil {
			delete(f.conns, conn)
		}
		f.mu.Unlock()
	}()
	buf := make([]byte, maxRequest+1)
	for {
		n, err := conn.Read(buf)
		if err != nil || n == 0 {
			return
		}
		f.mu.Lock()
		f.reqs++
		hook, delay := f.hook, f.delay
		f.mu.Unlock()
		r, err := decodeRequest(buf[:n])
		var rep reply
		var de *decodeError
		if errors.As(err, &de) {
			rep = reply{replyHead: replyHead{Status: de.Status, RequestID: de.RequestID}, Type: "ProtocolError", Message: de.Message}
		} else {
			f.mu.Lock()
			f.ops[r.Op] = append(f.ops[r.Op], w.index)
			f.mu.Unlock()
			if hook != nil {
				raw, closeConn := hook(w, r)
				if closeConn {
					return
				}
				if raw != nil {
					if _, err := conn.Write(raw); err != nil {
						return
					}
					continue
				}
			}
			w.mu.Lock()
			rep = f.answer(w, r, delay)
			w.mu.Unlock()
		}
		if _, err := conn.Write(encodeReply(nil, rep)); err != nil {
			return
		}
	}
}

func fail(r request, s Status, typ, format string, args ...any) reply {
	return reply{replyHead: replyHead{Status: s, RequestID: r.RequestID}, Type: typ, Message: fmt.Sprintf(format, args...)}
}

// answer carries out a request the way LAYOUT.md 2.6 orders the checks.
func (f *fakeServer) answer(w *fakeWorker, r request, delay time.Duration) reply {
	switch r.Op {
	case opPing:
		return reply{replyHead: replyHead{RequestID: r.RequestID}}
	case opInfo:
		rows := make([]Detector, len(f.rows))
		for i := range f.rows {
			rows[i] = f.rows[i].Detector
		}
		return reply{replyHead: replyHead{RequestID: r.RequestID},
			Values:  []float64{Version, float64(len(f.workers)), float64(w.index), float64(w.pid), float64(f.defaultPolicy)},
			Message: formatTable(rows)}
	}
	if delay > 0 && r.Op != opCombine {
		select {
		case <-time.After(delay):
		case <-f.quit:
		}
	}
	// 6: the detector row supports the op.
	if int(r.Detector) >= len(f.rows) {
		return fail(r, StatusBadValue, "ValueError", "no detector row %d", r.Detector)
	}
	row := &f.rows[r.Detector]
	if !row.Split && r.Op != opDetect {
		return fail(r, StatusBadValue, "ValueError", "detector %s runs whole; %s is for split rows", row.Name, opNames[r.Op])
	}
	policy := r.NaNPolicy
	if policy == NaNDefault {
		policy = f.defaultPolicy
	}
	// 7: the parameters.
	params := make([]float64, len(row.Params))
	for i, p := range row.Params {
		params[i] = p.Default
		if uint32(i) < r.NParams && !math.IsNaN(r.Params[i]) {
			params[i] = r.Params[i]
		}
	}
	if r.Op != opFlag && row.Split {
		if k := params[0]; !(k >= 0 && !math.IsInf(k, 1)) {
			return fail(r, StatusBadValue, "ValueError", "threshold must be finite and >= 0, got %v", k)
		}
	}
	if r.Op == opCombine {
		if uint64(len(r.Values)) != r.Count*uint64(row.SummarySize) {
			return fail(r, StatusBadValue, "ValueError", "COMBINE of %d summaries carries %d values", r.Count, len(r.Values))
		}
		var sums [][]float64
		for i := 0; i+row.SummarySize <= len(r.Values); i += row.SummarySize {
			sums = append(sums, r.Values[i:i+row.SummarySize])
		}
		total := refCombine(sums)
		mean, cut, ok, st := refLimits(total, params[0], policy)
		if st != StatusOK {
			return fail(r, st, "NonFiniteError", "%s", nonFiniteMessage(total))
		}
		rep := reply{replyHead: replyHead{RequestID: r.RequestID}}
		if ok {
			rep.Values = []float64{mean, cut}
		}
		return rep
	}
	if r.Op == opFlag && (r.NParams < 2 || math.IsNaN(r.Params[0]) || math.IsNaN(r.Params[1])) {
		return fail(r, StatusBadValue, "ValueError", "FLAG needs the flag parameters [mean, cut]")
	}
	// 8: the result segment.
	var out []byte
	var oh segmentHeader
	if opUsesOut(r.Op) {
		var rep reply
		if out, oh, rep = openFakeSegment(r.OutName, kindResult, true); out == nil {
			rep.RequestID = r.RequestID
			return rep
		}
		defer syscall.Munmap(out)
	}
	failOut := func(rep reply) reply {
		if out != nil {
			h := oh
			h.Count, h.Needed, h.Status = 0, 0, uint32(rep.Status)
			encodeHeader(out, h)
		}
		return rep
	}
	// 9: the data segment.
	data, dh, rep := openFakeSegment(r.DataName, kindData, false)
	if data == nil {
		rep.RequestID = r.RequestID
		return failOut(rep)
	}
	defer syscall.Munmap(data)
	if r.Start > dh.Count || r.Count > dh.Count-r.Start {
		return failOut(fail(r, StatusOutOfRange, "SegmentLayoutError", "start %d + count %d exceeds the data count %d", r.Start, r.Count, dh.Count))
	}
	var x []float64
	if r.Count > 0 {
		x = unsafe.Slice((*float64)(unsafe.Pointer(&data[headerSize+8*r.Start])), r.Count)
	}
	var idx []int
	switch {
	case r.Op == opSummarize:
		return reply{replyHead: replyHead{RequestID: r.RequestID}, Values: refChunkStats(x, policy, int(r.Base)).summary()}
	case r.Op == opFlag:
		idx = refFlag(x, r.Params[0], r.Params[1], int(r.Base))
	case row.Split:
		stats := refChunkStats(x, policy, int(r.Base))
		mean, cut, ok, st := refLimits(stats, params[0], policy)
		if st != StatusOK {
			return failOut(fail(r, st, "NonFiniteError", "%s", nonFiniteMessage(stats)))
		}
		idx = []int{}
		if ok {
			idx = refFlag(x, mean, cut, int(r.Base))
		}
	default:
		var ff *fakeFailure
		if idx, ff = row.fn(x, params, policy); ff != nil {
			return failOut(reply{replyHead: replyHead{Status: ff.status, RequestID: r.RequestID},
				Type: ff.typ, Message: ff.msg, Traceback: ff.trace})
		}
		for i := range idx {
			idx[i] += int(r.Base)
		}
	}
	// 2.7: the answer.
	needed := uint64(len(idx))
	h := oh
	h.Needed = needed
	if needed > oh.Capacity {
		h.Count, h.Status = 0, uint32(StatusTooSmall)
		encodeHeader(out, h)
		return reply{replyHead: replyHead{Status: StatusTooSmall, RequestID: r.RequestID, Needed: needed},
			Type: "ResultTooSmall", Message: fmt.Sprintf("need %d slots", needed)}
	}
	if needed > 0 {
		region := unsafe.Slice((*int64)(unsafe.Pointer(&out[headerSize])), needed)
		for i, v := range idx {
			region[i] = int64(v)
		}
	}
	h.Count, h.Status = needed, 0
	encodeHeader(out, h)
	return reply{replyHead: replyHead{RequestID: r.RequestID, Count: needed, Needed: needed}}
}

func nonFiniteMessage(t refStats) string {
	if t.nonfinite > 0 {
		return fmt.Sprintf("input holds %d non-finite value(s) (NaN or inf), the first at index %d", t.nonfinite, t.first)
	}
	return "the mean or standard deviation overflows float64"
}

// openFakeSegment maps a named segment as a worker does (LAYOUT.md 1.5 then
// 1.2). On failure the mapping is nil and the reply says why.
func openFakeSegment(name string, kind uint16, write bool) ([]byte, segmentHeader, reply) {
	flags, prot := syscall.O_RDONLY, syscall.PROT_READ
	if write {
		flags, prot = syscall.O_RDWR, syscall.PROT_READ|syscall.PROT_WRITE
	}
	no := func(s Status, typ, msg string) ([]byte, segmentHeader, reply) {
		return nil, segmentHeader{}, reply{replyHead: replyHead{Status: s}, Type: typ, Message: msg}
	}
	fd, err := syscall.Open(shmDir+name, flags|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		if err == syscall.ENOENT {
			return no(StatusNoSegment, "SegmentNotFound", name)
		}
		return no(StatusNotPermitted, "SegmentPermission", err.Error())
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return no(StatusInternal, "OSError", err.Error())
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || int(st.Uid) != os.Getuid() || st.Mode&0o077 != 0 {
		return no(StatusNotPermitted, "SegmentPermission", name)
	}
	if st.Size < headerSize {
		return no(StatusBadHeader, "SegmentLayoutError", "file smaller than a header")
	}
	mem, err := syscall.Mmap(fd, 0, int(st.Size), prot, syscall.MAP_SHARED)
	if err != nil {
		return no(StatusInternal, "OSError", err.Error())
	}
	h := decodeHeader(mem)
	if why := checkHeader(h, kind, st.Size); why != "" {
		syscall.Munmap(mem)
		return no(StatusBadHeader, "SegmentLayoutError", why)
	}
	return mem, h, reply{}
}
