package shmpool

// Checks of the TestMain server against LAYOUT.md that the Client's API
// cannot express: raw bad packets, hostile segments, result headers, INFO,
// the split ops. Against the Python server they are its conformance tests;
// against the fake, the fake's.

import (
	"encoding/binary"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rawLane dials the TestMain server without the Client's bookkeeping.
func rawLane(t *testing.T) *lane {
	t.Helper()
	c := &Client{path: testServer.socket, cfg: Config{DialTimeout: 10 * time.Second}}
	l, err := c.connect()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.hello(10 * time.Second); err != nil {
		l.destroy()
		t.Fatal(err)
	}
	t.Cleanup(func() { l.destroy() })
	return l
}

// exchange sends one raw packet and decodes the reply.
func exchange(t *testing.T, l *lane, pkt []byte) reply {
	t.Helper()
	if err := sendPacket(l.fd, pkt); err != nil {
		t.Fatal(err)
	}
	n, err := recvPacket(l.fd, l.buf, 0)
	if err != nil || n == 0 {
		t.Fatalf("no reply: %d bytes, %v", n, err)
	}
	rep, err := decodeReply(l.buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func encode(t *testing.T, r request) []byte {
	t.Helper()
	buf := make([]byte, requestHeadSize+8*len(r.Values))
	n, err := encodeRequest(buf, &r)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestServerInfo(t *testing.T) {
	l := rawLane(t)
	rep := exchange(t, l, encode(t, request{Op: opInfo, RequestID: 9}))
	if rep.Status != StatusOK || rep.RequestID != 9 || len(rep.Values) < infoValues || rep.Values[infoVersion] != Version {
		t.Fatalf("INFO: %+v", rep)
	}
	workers, worker, pid := int(rep.Values[infoWorkers]), int(rep.Values[infoWorker]), int(rep.Values[infoPID])
	if workers < 1 || worker < 0 || worker >= workers || rep.Values[infoNaNPolicy] != float64(NaNRaise) {
		t.Errorf("INFO values %v", rep.Values)
	}
	if testServer.kind == "python" {
		if err := syscall.Kill(pid, 0); err != nil {
			t.Errorf("INFO pid %d: %v", pid, err)
		}
	}
	rows, err := parseTable(rep.Message)
	if err != nil || rows[0].Name != "classic" {
		t.Errorf("table %q: %v", rep.Message, err)
	}
	// N connections of one process, N no more than the workers, go to N
	// different workers (LAYOUT.md 2.1). (The server learns of closed
	// connections asynchronously: those of earlier tests may still count
	// for a moment, so try a few times.)
	var seen map[int]bool
	for attempt := 0; attempt < 10; attempt++ {
		seen = map[int]bool{worker: true}
		var lanes []*lane
		for i := 1; i < workers; i++ {
			nl := rawLane(t)
			lanes = append(lanes, nl)
			seen[nl.worker] = true
		}
		for _, nl := range lanes {
			nl.destroy()
		}
		if len(seen) == workers {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(seen) != workers {
		t.Errorf("%d connections went to workers %v", workers, seen)
	}
}

func TestServerRejectsBadRequests(t *testing.T) {
	l := rawLane(t)
	ping := encode(t, request{Op: opPing, RequestID: 77})
	for _, v := range loadVectors(t) {
		if v.kind != "bad_request" {
			continue
		}
		want := Status(v.u64(t, "status"))
		rep := exchange(t, l, v.raw)
		var wantID uint64
		if len(v.raw) >= 16 && string(v.raw[:4]) == "SHMQ" {
			wantID = binary.LittleEndian.Uint64(v.raw[8:])
		}
		if rep.Status != want || rep.RequestID != wantID {
			t.Errorf("%s: reply status %v id %d (%s: %s), want %v id %d",
				v.name, rep.Status, rep.RequestID, rep.Type, rep.Message, want, wantID)
		}
		// The connection stays open.
		if rep := exchange(t, l, ping); rep.Status != StatusOK || rep.RequestID != 77 {
			t.Fatalf("%s: PING afterwards: %+v", v.name, rep)
		}
	}
}

// probe is a raw connection with a data segment of 100 values and a
// result segment of 10 indices, for sending hand-made requests.
type probe struct {
	t  *testing.T
	l  *lane
	x  []float64
	id uint64
	k  float64
}

func newProbe(t *testing.T) *probe {
	l := rawLane(t)
	var err error
	if l.data, err = createSegment(kindData, 100, 100); err != nil {
		t.Fatal(err)
	}
	if l.out, err = createSegment(kindResult, 10, 0); err != nil {
		t.Fatal(err)
	}
	p := &probe{t: t, l: l, x: l.data.floats(), id: 100, k: 3}
	for i := range p.x {
		p.x[i] = float64(i % 7)
	}
	p.x[42] = 1000
	return p
}

func (p *probe) request(op uint16, data, out string, start, count uint64) request {
	p.id++
	r := request{Op: op, RequestID: p.id, Start: start, Count: count, NParams: 1, DataName: data, OutName: out}
	r.Params[0] = p.k
	return r
}

func (p *probe) sendReq(r request) reply {
	p.t.Helper()
	rep := exchange(p.t, p.l, encode(p.t, r))
	if rep.RequestID != r.RequestID {
		p.t.Errorf("reply id %d, want %d", rep.RequestID, r.RequestID)
	}
	return rep
}

func (p *probe) send(data, out string, start, count uint64) reply {
	p.t.Helper()
	return p.sendReq(p.request(opDetect, data, out, start, count))
}

func (p *probe) expect(what string, rep reply, s Status) {
	p.t.Helper()
	if rep.Status != s {
		p.t.Errorf("%s: %v (%s: %s), want %v", what, rep.Status, rep.Type, rep.Message, s)
	} else if s != StatusOK && (rep.Type == "" || rep.Message == "") {
		p.t.Errorf("%s: %v without type or message: %+v", what, s, rep)
	}
}

func TestServerChecksSegments(t *testing.T) {
	p := newProbe(t)
	l, send, expect := p.l, p.send, p.expect

	// OK, and the result header as LAYOUT.md 2.7 says.
	rep := send(l.data.name, l.out.name, 0, 100)
	expect("good", rep, StatusOK)
	h := l.out.header()
	if rep.Count != 1 || rep.Needed != 1 || h.Count != 1 || h.Needed != 1 || h.Status != 0 || l.out.ints()[0] != 42 {
		t.Errorf("good: reply %+v header %+v region %v", rep, h, l.out.ints()[:1])
	}
	// Sub-range: relative indices; base is added.
	if rep = send(l.data.name, l.out.name, 40, 60); rep.Status != StatusOK || l.out.ints()[0] != 2 {
		t.Errorf("sub-range: %+v, index %d", rep, l.out.ints()[0])
	}
	r := p.request(opDetect, l.data.name, l.out.name, 40, 60)
	r.Base = 1000
	if rep = p.sendReq(r); rep.Status != StatusOK || l.out.ints()[0] != 1002 {
		t.Errorf("base 1000: %+v, index %d", rep, l.out.ints()[0])
	}
	// OUT_OF_RANGE: start + count beyond the data header's count, which
	// the worker reads from the header, not from the file size; the
	// result header says so too (2.7).
	l.out.mem[hdrOffStatus] = 99
	expect("range", send(l.data.name, l.out.name, 50, 51), StatusOutOfRange)
	if h := l.out.header(); h.Status != uint32(StatusOutOfRange) || h.Count != 0 || h.Needed != 0 {
		t.Errorf("result header after OUT_OF_RANGE: %+v", h)
	}
	expect("range overflow", send(l.data.name, l.out.name, 1<<63, 1<<63), StatusOutOfRange)
	l.data.setCount(10)
	expect("range by header count", send(l.data.name, l.out.name, 0, 11), StatusOutOfRange)
	l.data.setCount(100)
	// NO_SEGMENT.
	expect("missing", send("shmpool-0-00000000-0000000000000000", l.out.name, 0, 1), StatusNoSegment)
	// Kinds swapped: BAD_HEADER.
	expect("kinds", send(l.out.name, l.data.name, 0, 1), StatusBadHeader)

	// Hostile segments of our own making.
	mk := func(kind uint16, capacity int) *segment {
		s, err := createSegment(kind, capacity, capacity)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.close() })
		return s
	}
	for _, tc := range []struct {
		name string
		edit func(s *segment)
		want Status
	}{
		{"magic", func(s *segment) { s.mem[0] = 'X' }, StatusBadHeader},
		{"version 1", func(s *segment) { s.mem[4] = 1 }, StatusBadHeader},
		{"version 3", func(s *segment) { s.mem[4] = 3 }, StatusBadHeader},
		{"header_size", func(s *segment) { binary.LittleEndian.PutUint32(s.mem[8:], 128) }, StatusBadHeader},
		{"flags", func(s *segment) { binary.LittleEndian.PutUint32(s.mem[12:], 1) }, StatusBadHeader},
		{"capacity beyond file", func(s *segment) { binary.LittleEndian.PutUint64(s.mem[16:], 1<<40) }, StatusBadHeader},
		{"count beyond capacity", func(s *segment) {
			binary.LittleEndian.PutUint64(s.mem[16:], 10)
			binary.LittleEndian.PutUint64(s.mem[24:], 11)
		}, StatusBadHeader},
		{"mode 0640", func(s *segment) { os.Chmod(shmDir+s.name, 0o640) }, StatusNotPermitted},
		{"mode 0604", func(s *segment) { os.Chmod(shmDir+s.name, 0o604) }, StatusNotPermitted},
		{"truncated file", func(s *segment) { os.Truncate(shmDir+s.name, 32) }, StatusBadHeader},
	} {
		s := mk(kindData, 100)
		tc.edit(s)
		expect(tc.name, send(s.name, l.out.name, 0, 1), tc.want)
	}
	// Things that are not regular files. Their names do not have the
	// reapable shape, so nothing else touches them if this test dies.
	odd := func(kind string) string {
		name := "shmpool-gotest-" + kind + "-" + strconv.Itoa(os.Getpid())
		t.Cleanup(func() { os.Remove(shmDir + name) })
		return name
	}
	link := odd("symlink")
	if err := os.Symlink(shmDir+l.data.name, shmDir+link); err != nil {
		t.Fatal(err)
	}
	expect("symlink", send(link, l.out.name, 0, 1), StatusNotPermitted)
	dir := odd("dir")
	if err := os.Mkdir(shmDir+dir, 0o700); err != nil {
		t.Fatal(err)
	}
	expect("directory", send(dir, l.out.name, 0, 1), StatusNotPermitted)

	// The result segment is checked too, first (2.6 step 8 before 9).
	bad := mk(kindResult, 10)
	bad.mem[0] = 0
	expect("result magic", send("shmpool-0-00000000-0000000000000000", bad.name, 0, 1), StatusBadHeader)
	os.Chmod(shmDir+bad.name, 0o660)
	expect("result mode", send(l.data.name, bad.name, 0, 1), StatusNotPermitted)

	// After all that, the connection still works.
	for i := range p.x {
		p.x[i] = 0
	}
	p.x[3] = 50
	if rep := send(l.data.name, l.out.name, 0, 100); rep.Status != StatusOK || rep.Count != 1 || l.out.ints()[0] != 3 {
		t.Errorf("final: %+v", rep)
	}
}

// TestServerChecksValues: detector rows, parameters and COMBINE's values
// (LAYOUT.md 2.6 steps 6 and 7).
func TestServerChecksValues(t *testing.T) {
	p := newProbe(t)
	l := p.l
	for name, edit := range map[string]func(r *request){
		"threshold -1":   func(r *request) { r.Params[0] = -1 },
		"threshold +inf": func(r *request) { r.Params[0] = math.Inf(1) },
		"detector row":   func(r *request) { r.Detector = 99 },
	} {
		r := p.request(opDetect, l.data.name, l.out.name, 0, 100)
		edit(&r)
		p.expect(name, p.sendReq(r), StatusBadValue)
	}
	r := p.request(opCombine, "", "", 0, 2)
	r.Values = make([]float64, 2*classicSummarySize-1)
	p.expect("COMBINE values count", p.sendReq(r), StatusBadValue)
	// NaN and unset parameters mean the default.
	r = p.request(opDetect, l.data.name, l.out.name, 0, 100)
	r.Params[0] = math.NaN()
	p.expect("NaN threshold", p.sendReq(r), StatusOK)
	r.NParams = 0
	p.expect("no parameters", p.sendReq(r), StatusOK)
}

// TestServerSplitOps: SUMMARIZE, COMBINE and FLAG by hand, against the Go
// reference.
func TestServerSplitOps(t *testing.T) {
	p := newProbe(t)
	l := p.l
	x := p.x
	x[7] = math.NaN()
	p.k = 2
	var sums [][]float64
	for _, c := range [][2]uint64{{0, 40}, {40, 60}} {
		r := p.request(opSummarize, l.data.name, "", c[0], c[1])
		r.Base, r.NaNPolicy = c[0], NaNOmit
		rep := p.sendReq(r)
		want := refChunkStats(x[c[0]:c[0]+c[1]], NaNOmit, int(c[0])).summary()
		if rep.Status != StatusOK || len(rep.Values) != len(want) {
			t.Fatalf("SUMMARIZE %v: %+v", c, rep)
		}
		for i := range want {
			if math.Float64bits(rep.Values[i]) != math.Float64bits(want[i]) {
				t.Errorf("SUMMARIZE %v: %v, want %v", c, rep.Values, want)
				break
			}
		}
		sums = append(sums, rep.Values)
	}
	r := p.request(opCombine, "", "", 0, 2)
	r.NaNPolicy, r.Values = NaNOmit, append(append([]float64(nil), sums[0]...), sums[1]...)
	rep := p.sendReq(r)
	mean, cut, ok, _ := refLimits(refCombine(sums), 2, NaNOmit)
	if rep.Status != StatusOK || !ok || len(rep.Values) != 2 || rep.Values[0] != mean || rep.Values[1] != cut {
		t.Fatalf("COMBINE: %+v, want [%v %v]", rep, mean, cut)
	}
	// Under raise the NaN is an error naming the first index.
	r.NaNPolicy = NaNRaise
	if rep := p.sendReq(r); rep.Status != StatusNonFinite || !strings.Contains(rep.Message, "7") {
		t.Errorf("COMBINE under raise: %+v", rep)
	}
	// Under propagate, no flag parameters.
	r.NaNPolicy = NaNPropagate
	if rep := p.sendReq(r); rep.Status != StatusOK || len(rep.Values) != 0 {
		t.Errorf("COMBINE under propagate: %+v", rep)
	}
	f := p.request(opFlag, l.data.name, l.out.name, 40, 60)
	f.Base, f.NParams, f.Params[0], f.Params[1] = 40, 2, mean, cut
	rep = p.sendReq(f)
	want := refFlag(x[40:100], mean, cut, 40)
	if rep.Status != StatusOK || int(rep.Count) != len(want) || l.out.ints()[0] != 42 {
		t.Errorf("FLAG: %+v, region %v, want %v", rep, l.out.ints()[:rep.Count], want)
	}
}

// TestServerTooSmallReportsNeeded: on TOO_SMALL the reply and the result
// header say count 0, status TOO_SMALL and needed (LAYOUT.md 2.7).
func TestServerTooSmallReportsNeeded(t *testing.T) {
	p := newProbe(t)
	for i := range p.x {
		p.x[i] = float64(i % 2 * 100)
	}
	p.k = 0.5 // every value is 1 std from the mean: 100 indices, 10 slots
	rep := p.send(p.l.data.name, p.l.out.name, 0, 100)
	p.expect("too small", rep, StatusTooSmall)
	h := p.l.out.header()
	if rep.Needed != 100 || rep.Count != 0 || h.Count != 0 || h.Status != uint32(StatusTooSmall) || h.Needed != 100 {
		t.Errorf("too small: reply %+v header %+v", rep, h)
	}
}

// TestServerRefusesFIFO: a FIFO named as a segment is "not a regular file"
// and gets NOT_PERMITTED (LAYOUT.md 1.5), without the worker blocking in
// open(2) until a writer appears.
func TestServerRefusesFIFO(t *testing.T) {
	p := newProbe(t)
	l, expect := p.l, p.expect
	fifo := "shmpool-gotest-fifo-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() { os.Remove(shmDir + fifo) })
	if err := syscall.Mkfifo(shmDir+fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	l.setTimeout(3 * time.Second)
	r := p.request(opDetect, fifo, l.out.name, 0, 1)
	if err := sendPacket(l.fd, encode(t, r)); err != nil {
		t.Fatal(err)
	}
	n, err := recvPacket(l.fd, l.buf, 0)
	if err != nil {
		t.Errorf("no reply within 3 s (%v): the worker blocks opening a FIFO named as a segment", err)
		if fd, err := syscall.Open(shmDir+fifo, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			defer syscall.Close(fd)
		}
		l.setTimeout(10 * time.Second)
		n, err = recvPacket(l.fd, l.buf, 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	rep, err := decodeReply(l.buf[:n])
	if err != nil || rep.RequestID != r.RequestID {
		t.Fatalf("reply %+v, %v", rep, err)
	}
	expect("fifo", rep, StatusNotPermitted)
}
