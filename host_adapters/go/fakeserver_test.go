package shmpool

// A fake shmpool server in Go, written from LAYOUT.md, for testing the
// client's pooling, retry and error paths without Python. It validates
// requests and segments the way the real server must (2.3, 1.2, 1.4) and
// runs refDetect.

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

const fakeDefaultK = 3.0

// refStats returns the mean and population std of the finite values of x
// (all of x when finite), using compensated sums.
func refStats(x []float64) (mean, std float64, n int) {
	var sum, c float64
	for _, v := range x {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		n++
		sum, c = neumaier(sum, c, v)
	}
	if n == 0 {
		return math.NaN(), math.NaN(), 0
	}
	mean = (sum + c) / float64(n)
	sum, c = 0, 0
	for _, v := range x {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		d := v - mean
		sum, c = neumaier(sum, c, d*d)
	}
	return mean, math.Sqrt((sum + c) / float64(n)), n
}

func neumaier(sum, c, v float64) (float64, float64) {
	t := sum + v
	if math.Abs(sum) >= math.Abs(v) {
		c += (sum - t) + v
	} else {
		c += (v - t) + sum
	}
	return t, c
}

// refDetect is the reference detector of LAYOUT.md 4: the i with
// |x[i] - mean| > k * std, population std, strict >. Under NaNPropagate
// any non-finite value means no outliers; under NaNOmit non-finite values
// are left out; under NaNRaise they are an error (nonFinite > 0).
func refDetect(x []float64, k float64, policy NaNPolicy) (idx []int, nonFinite, first int) {
	first = -1
	for i, v := range x {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			if first < 0 {
				first = i
			}
			nonFinite++
		}
	}
	if nonFinite > 0 {
		switch policy {
		case NaNRaise, NaNDefault:
			return nil, nonFinite, first
		case NaNPropagate:
			return []int{}, 0, -1
		}
	}
	mean, std, _ := refStats(x)
	idx = []int{}
	for i, v := range x {
		if math.IsInf(v, 0) {
			continue // only under NaNOmit: never reported
		}
		if math.Abs(v-mean) > k*std { // false for NaN and for a NaN std
			idx = append(idx, i)
		}
	}
	return idx, 0, -1
}

// fakeServer is a shmpool server in Go.
type fakeServer struct {
	path string
	ln   *net.UnixListener

	mu sync.Mutex
	// hook, when set, sees every decoded request first; a non-nil result
	// is sent instead of the normal reply (close means close the connection
	// without replying).
	hook func(r request) (raw []byte, close bool)
	// delay is slept before answering a DETECT, after reading the request.
	delay time.Duration
	conns map[*net.UnixConn]struct{}
	reqs  int // requests read
	wg    sync.WaitGroup
	quit  chan struct{} // closed by stop

	stopOnce sync.Once
}

func (f *fakeServer) setHook(h func(r request) ([]byte, bool)) {
	f.mu.Lock()
	f.hook = h
	f.mu.Unlock()
}

func (f *fakeServer) setDelay(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

func startFakeServer(path string) (*fakeServer, error) {
	os.Remove(path)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	f := &fakeServer{path: path, ln: ln, conns: map[*net.UnixConn]struct{}{}, quit: make(chan struct{})}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *fakeServer) serve() {
	defer f.wg.Done()
	for {
		conn, err := f.ln.AcceptUnix()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.conns == nil {
			f.mu.Unlock()
			conn.Close()
			return
		}
		f.conns[conn] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go f.handle(conn)
	}
}

// stop closes the listener and every connection, like a killed server (the
// socket file stays behind, as it would).
func (f *fakeServer) stop() {
	f.stopOnce.Do(f.doStop)
}

func (f *fakeServer) doStop() {
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
}

func (f *fakeServer) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs
}

func (f *fakeServer) handle(conn *net.UnixConn) {
	defer f.wg.Done()
	defer conn.Close()
	buf := make([]byte, maxReply)
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
		var e *Error
		if errors.As(err, &e) {
			rep = reply{Status: e.Status, RequestID: e.RequestID, Type: "ProtocolError", Message: e.Message}
		} else {
			if hook != nil {
				raw, closeConn := hook(r)
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
			rep = f.answer(r, delay)
		}
		if _, err := conn.Write(encodeReply(nil, rep)); err != nil {
			return
		}
	}
}

func (f *fakeServer) answer(r request, delay time.Duration) reply {
	if r.Op == opPing {
		return reply{Status: StatusOK, RequestID: r.RequestID}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-f.quit:
		}
	}
	fail := func(s Status, typ, format string, args ...any) reply {
		return reply{Status: s, RequestID: r.RequestID, Type: typ, Message: fmt.Sprintf(format, args...)}
	}
	data, dh, rep := openFakeSegment(r.DataName, kindData, false)
	if data == nil {
		rep.RequestID = r.RequestID
		return rep
	}
	defer syscall.Munmap(data)
	out, oh, rep := openFakeSegment(r.OutName, kindResult, true)
	if out == nil {
		rep.RequestID = r.RequestID
		return rep
	}
	defer syscall.Munmap(out)
	if r.Start > dh.Count || r.Count > dh.Count-r.Start {
		return fail(StatusOutOfRange, "IndexError", "start %d + count %d exceeds the data count %d", r.Start, r.Count, dh.Count)
	}
	var x []float64
	if r.Count > 0 {
		x = unsafe.Slice((*float64)(unsafe.Pointer(&data[headerSize+8*r.Start])), r.Count)
	}
	k := r.Threshold
	if math.IsNaN(k) {
		k = fakeDefaultK
	}
	idx, bad, first := refDetect(x, k, r.NaNPolicy)
	if bad > 0 {
		return fail(StatusNonFinite, "NonFiniteError", "%d non-finite values; the first at index %d", bad, first)
	}
	needed := uint64(len(idx))
	h := oh
	h.Needed = needed
	if needed > oh.Capacity {
		h.Count, h.Status = 0, uint32(StatusTooSmall)
		encodeHeader(out, h)
		return reply{Status: StatusTooSmall, RequestID: r.RequestID, Needed: needed,
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
	return reply{Status: StatusOK, RequestID: r.RequestID, Count: needed, Needed: needed}
}

// openFakeSegment maps a named segment as the server does (LAYOUT.md 1.2,
// 1.4). On failure the mapping is nil and the reply says why.
func openFakeSegment(name string, kind uint16, write bool) ([]byte, segmentHeader, reply) {
	flags, prot := syscall.O_RDONLY, syscall.PROT_READ
	if write {
		flags, prot = syscall.O_RDWR, syscall.PROT_READ|syscall.PROT_WRITE
	}
	fd, err := syscall.Open(shmDir+name, flags|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		if err == syscall.ENOENT {
			return nil, segmentHeader{}, reply{Status: StatusNoSegment, Type: "SegmentNotFound", Message: name}
		}
		return nil, segmentHeader{}, reply{Status: StatusNotPermitted, Type: "PermissionError", Message: err.Error()}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, segmentHeader{}, reply{Status: StatusInternal, Type: "OSError", Message: err.Error()}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || int(st.Uid) != os.Getuid() || st.Mode&0o077 != 0 {
		return nil, segmentHeader{}, reply{Status: StatusNotPermitted, Type: "PermissionError", Message: name}
	}
	if st.Size < headerSize {
		return nil, segmentHeader{}, reply{Status: StatusBadHeader, Type: "BadHeader", Message: "file smaller than a header"}
	}
	mem, err := syscall.Mmap(fd, 0, int(st.Size), prot, syscall.MAP_SHARED)
	if err != nil {
		return nil, segmentHeader{}, reply{Status: StatusInternal, Type: "OSError", Message: err.Error()}
	}
	h := decodeHeader(mem)
	if why := checkHeader(h, kind, st.Size); why != "" {
		syscall.Munmap(mem)
		return nil, segmentHeader{}, reply{Status: StatusBadHeader, Type: "BadHeader", Message: why}
	}
	return mem, h, reply{}
}
