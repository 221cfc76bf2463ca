package shmpool

// Checks of the server against LAYOUT.md that the Client's API cannot
// express: raw bad packets, hostile segments, result header contents.

import (
	"encoding/binary"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// rawLane dials the TestMain server without the Client's bookkeeping.
func rawLane(t *testing.T) *lane {
	t.Helper()
	c := &Client{path: testServer.socket}
	l, err := c.dialLane()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.destroy() })
	return l
}

// exchange sends one raw packet and decodes the reply.
func exchange(t *testing.T, l *lane, pkt []byte) reply {
	t.Helper()
	if _, err := l.conn.Write(pkt); err != nil {
		t.Fatal(err)
	}
	n, err := l.conn.Read(l.buf)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := decodeReply(l.buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestServerRejectsBadRequests(t *testing.T) {
	l := rawLane(t)
	ping, _ := encodeRequest(nil, request{Op: opPing, RequestID: 77})
	for _, v := range loadVectors(t) {
		if v.kind != "bad_request" {
			continue
		}
		want := Status(v.u64(t, "status"))
		rep := exchange(t, l, v.raw)
		var wantID uint64
		if len(v.raw) == requestSize && string(v.raw[:4]) == "SHMQ" {
			wantID = 42
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
// result segment of 10 indices, for sending hand-made DETECT requests.
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

func (p *probe) request(data, out string, start, count uint64) []byte {
	p.id++
	pkt, err := encodeRequest(nil, request{Op: opDetect, RequestID: p.id, Start: start, Count: count,
		Threshold: p.k, DataName: data, OutName: out})
	if err != nil {
		p.t.Fatal(err)
	}
	return pkt
}

func (p *probe) send(data, out string, start, count uint64) reply {
	p.t.Helper()
	rep := exchange(p.t, p.l, p.request(data, out, start, count))
	if rep.RequestID != p.id {
		p.t.Errorf("reply id %d, want %d", rep.RequestID, p.id)
	}
	return rep
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

	// OK, and the result header as LAYOUT.md 2.1 says.
	rep := send(l.data.name, l.out.name, 0, 100)
	expect("good", rep, StatusOK)
	h := l.out.header()
	if rep.Count != 1 || rep.Needed != 1 || h.Count != 1 || h.Needed != 1 || h.Status != 0 || l.out.ints()[0] != 42 {
		t.Errorf("good: reply %+v header %+v region %v", rep, h, l.out.ints()[:1])
	}
	// Sub-range: relative indices.
	if rep = send(l.data.name, l.out.name, 40, 60); rep.Status != StatusOK || l.out.ints()[0] != 2 {
		t.Errorf("sub-range: %+v, index %d", rep, l.out.ints()[0])
	}
	// OUT_OF_RANGE: start + count beyond the data header's count, which
	// the server reads from the header, not from the file size.
	expect("range", send(l.data.name, l.out.name, 50, 51), StatusOutOfRange)
	expect("range overflow", send(l.data.name, l.out.name, 1<<63, 1<<63), StatusOutOfRange)
	l.data.setCount(10)
	expect("range by header count", send(l.data.name, l.out.name, 0, 11), StatusOutOfRange)
	l.data.setCount(100)
	// NO_SEGMENT.
	expect("missing", send("shmpool-0-0-0000000000000000", l.out.name, 0, 1), StatusNoSegment)
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
		{"version", func(s *segment) { s.mem[4] = 2 }, StatusBadHeader},
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

	// The result segment is checked too.
	bad := mk(kindResult, 10)
	bad.mem[0] = 0
	expect("result magic", send(l.data.name, bad.name, 0, 1), StatusBadHeader)
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

// TestServerTooSmallReportsNeeded: on TOO_SMALL the reply and the result
// header say count 0, status TOO_SMALL and needed (LAYOUT.md 2.1); the
// region's bytes are then unspecified.
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
// and gets NOT_PERMITTED (LAYOUT.md 1.4), without the server blocking in
// open(2) until a writer appears.
func TestServerRefusesFIFO(t *testing.T) {
	p := newProbe(t)
	l, expect := p.l, p.expect
	fifo := "shmpool-gotest-fifo-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() { os.Remove(shmDir + fifo) })
	if err := syscall.Mkfifo(shmDir+fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.conn.Write(p.request(fifo, l.out.name, 0, 1)); err != nil {
		t.Fatal(err)
	}
	l.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := l.conn.Read(l.buf)
	if err != nil {
		t.Errorf("no reply within 3 s (%v): the server blocks opening a FIFO named as a segment "+
			"(open it O_NONBLOCK, then fstat)", err)
		// Unblock it: a writer lets its open(2) return.
		if fd, err := syscall.Open(shmDir+fifo, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			defer syscall.Close(fd)
		}
		l.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err = l.conn.Read(l.buf)
	}
	l.conn.SetReadDeadline(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := decodeReply(l.buf[:n])
	if err != nil || rep.RequestID != p.id {
		t.Fatalf("reply %+v, %v", rep, err)
	}
	expect("fifo", rep, StatusNotPermitted)
}
