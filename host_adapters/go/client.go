package shmpool

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// DefaultSocketPath returns the socket a server listens on when it is given
// no --socket: $SHMPOOL_SOCKET if set, else /tmp/shmpool-<uid>.sock.
func DefaultSocketPath() string {
	if p := os.Getenv("SHMPOOL_SOCKET"); p != "" {
		return p
	}
	return "/tmp/shmpool-" + strconv.Itoa(os.Getuid()) + ".sock"
}

// Options adjusts one detection. The zero value uses the server's defaults.
type Options struct {
	// Threshold is k in |x[i] - mean| > k * std. Zero (or NaN) means the
	// server's default; a negative or infinite k is refused with
	// StatusBadValue. (A k of exactly zero cannot be asked for; use a tiny
	// positive value.)
	Threshold float64
	// NaNPolicy says what non-finite values mean; NaNDefault leaves it to
	// the server (which raises, see StatusNonFinite).
	NaNPolicy NaNPolicy
}

func (o Options) threshold() float64 {
	if o.Threshold == 0 {
		return math.NaN()
	}
	return o.Threshold
}

// Client is a connection pool to one shmpool server.
//
// A Client is safe for concurrent use by multiple goroutines. The server
// answers one request at a time per connection, so the Client keeps a free
// list of lanes (a connection plus the data and result segments it reuses
// from call to call) and dials another lane whenever all are busy: n
// goroutines calling at once use n connections. Lanes stay open until Close.
//
// A lane whose connection breaks (the server was killed or restarted) is
// dropped together with every idle lane; the failing call returns an error
// at once and later calls dial afresh. A call that fails on a lane that had
// been idle is retried once on a newly dialed lane, since an idle connection
// may have gone stale while the server was restarted; detection has no side
// effects, so a retry is harmless.
type Client struct {
	path string

	mu     sync.Mutex
	closed bool
	idle   []*lane
	busy   map[*lane]struct{}
	wg     sync.WaitGroup // one count per lane being dialed or in use
}

// lane is one connection with the segments it reuses. It is used by one
// goroutine at a time.
type lane struct {
	conn   *net.UnixConn
	nextID uint64
	data   *segment // data segment for Detect; nil until needed
	out    *segment // result segment; nil until needed
	pkt    []byte
	buf    []byte // receive buffer, maxReply bytes

	reused bool // taken from the idle list rather than dialed for this call
	broken bool // the connection failed or the server misbehaved: drop it
}

// Dial connects to the server listening on socketPath (see
// DefaultSocketPath) and checks that it answers a PING.
func Dial(socketPath string) (*Client, error) {
	c := &Client{path: socketPath, busy: make(map[*lane]struct{})}
	l, err := c.dialLane()
	if err != nil {
		return nil, err
	}
	if err := l.ping(); err != nil {
		l.destroy()
		return nil, err
	}
	c.idle = append(c.idle, l)
	return c, nil
}

func (l *lane) ping() error {
	rep, err := l.roundTrip(request{Op: opPing})
	if err != nil {
		return err
	}
	if rep.Status != StatusOK {
		l.checkStatus(rep.Status)
		return replyError(rep)
	}
	return nil
}

func (c *Client) dialLane() (*lane, error) {
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: c.path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("shmpool: connecting to %s: %w", c.path, unwrapOp(err))
	}
	return &lane{conn: conn, buf: make([]byte, maxReply), pkt: make([]byte, 0, requestSize)}, nil
}

// unwrapOp strips net.OpError's own "dial unixpacket path:" prefix, which
// would repeat what the message already says.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// getLane takes an idle lane, or dials one when none is idle or fresh is set.
func (c *Client) getLane(fresh bool) (*lane, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.wg.Add(1)
	if n := len(c.idle); n > 0 && !fresh {
		l := c.idle[n-1]
		c.idle[n-1] = nil
		c.idle = c.idle[:n-1]
		c.busy[l] = struct{}{}
		c.mu.Unlock()
		l.reused = true
		return l, nil
	}
	c.mu.Unlock()

	l, err := c.dialLane()
	if err != nil {
		c.wg.Done()
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		l.destroy()
		c.wg.Done()
		return nil, ErrClosed
	}
	c.busy[l] = struct{}{}
	c.mu.Unlock()
	return l, nil
}

// putLane returns l to the idle list, or destroys it (and, when its
// connection broke, every idle lane too) if it is no longer usable.
func (c *Client) putLane(l *lane) {
	var drop []*lane
	c.mu.Lock()
	delete(c.busy, l)
	switch {
	case c.closed:
		drop = append(drop, l)
	case l.broken:
		drop = append(c.idle, l)
		c.idle = nil
	default:
		c.idle = append(c.idle, l)
	}
	c.mu.Unlock()
	for _, d := range drop {
		d.destroy()
	}
	c.wg.Done()
}

// do runs fn on a lane, retrying once on a fresh lane when a reused lane's
// connection turns out to be broken.
func (c *Client) do(fn func(l *lane) error) error {
	for attempt := 0; ; attempt++ {
		l, err := c.getLane(attempt > 0)
		if err != nil {
			return err
		}
		err = fn(l)
		reused, broken := l.reused, l.broken
		var ce *connError
		isConn := errors.As(err, &ce)
		c.putLane(l)
		if isConn {
			if c.isClosed() {
				return ErrClosed
			}
			if reused && broken && attempt == 0 {
				continue
			}
		}
		return err
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Close closes every connection and unlinks the segments the Client owns.
// Calls in progress are interrupted and return ErrClosed; Close waits for
// them to let go of their lanes. Buffers and Results made with NewBuffer
// and NewResult are not closed: they belong to the caller. Close may be
// called more than once; later calls do nothing and return nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	idle := c.idle
	c.idle = nil
	for l := range c.busy {
		l.conn.Close() // unblocks the goroutine using it
	}
	c.mu.Unlock()
	var errs []error
	for _, l := range idle {
		errs = append(errs, l.destroy())
	}
	c.wg.Wait()
	return errors.Join(errs...)
}

// Ping checks that the server answers.
func (c *Client) Ping() error {
	return c.do((*lane).ping)
}

// Detect returns the indices i, ascending, with |x[i] - mean(x)| > k *
// std(x) under the server's default k and NaN policy. It copies x into a
// shared-memory segment the Client owns and reuses; to avoid the copy, fill
// a Buffer and use DetectBuffer.
func (c *Client) Detect(x []float64) ([]int, error) {
	return c.DetectWith(x, Options{})
}

// DetectWith is Detect with options.
func (c *Client) DetectWith(x []float64, opt Options) ([]int, error) {
	var idx []int
	err := c.do(func(l *lane) error {
		if err := l.ensureData(len(x)); err != nil {
			return err
		}
		copy(l.data.floats(), x)
		l.data.setCount(len(x))
		var err error
		idx, err = l.detect(l.data.name, 0, len(x), opt)
		return err
	})
	return idx, err
}

// DetectBuffer is Detect over the whole of b, without copying.
func (c *Client) DetectBuffer(b *Buffer, opt Options) ([]int, error) {
	return c.DetectRange(b, 0, -1, opt)
}

// DetectRange is Detect over b.Data()[start:start+count], without copying.
// The indices are relative to start. A count of -1 means to the end of b.
// The caller must not write to that part of b.Data() until the call
// returns; any number of calls may read the same Buffer at once.
func (c *Client) DetectRange(b *Buffer, start, count int, opt Options) ([]int, error) {
	seg, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.release()
	if count, err = checkRange(seg, start, count); err != nil {
		return nil, err
	}
	var idx []int
	err = c.do(func(l *lane) error {
		var err error
		idx, err = l.detect(seg.name, start, count, opt)
		return err
	})
	return idx, err
}

// DetectInto is DetectRange writing the indices into the caller's Result r
// instead of a new slice, and returning how many there are; r.Indices()
// then holds them. If r is too small for the answer, the error is an *Error
// with Status StatusTooSmall and Needed set, and r is left empty: make a
// Result with capacity Needed and call again. Calls on the same Result are
// serialized.
func (c *Client) DetectInto(r *Result, b *Buffer, start, count int, opt Options) (int, error) {
	r.callMu.Lock()
	defer r.callMu.Unlock()
	out, err := r.acquire()
	if err != nil {
		return 0, err
	}
	defer r.release()
	r.setLen(0)
	seg, err := b.acquire()
	if err != nil {
		return 0, err
	}
	defer b.release()
	if count, err = checkRange(seg, start, count); err != nil {
		return 0, err
	}
	var n int
	err = c.do(func(l *lane) error {
		rep, err := l.roundTrip(detectRequest(seg.name, out.name, start, count, opt))
		if err != nil {
			return err
		}
		if rep.Status != StatusOK {
			l.checkStatus(rep.Status)
			return replyError(rep)
		}
		if rep.Count != rep.Needed || rep.Count > uint64(out.capacity) {
			return fmt.Errorf("shmpool: reply says %d indices written of %d needed into a result of capacity %d",
				rep.Count, rep.Needed, out.capacity)
		}
		n = int(rep.Count)
		return nil
	})
	if err != nil {
		return 0, err
	}
	r.setLen(n)
	return n, nil
}

func checkRange(seg *segment, start, count int) (int, error) {
	n := seg.capacity
	if count == -1 && start >= 0 && start <= n {
		count = n - start
	}
	if start < 0 || count < 0 || start > n || count > n-start {
		return 0, &Error{Status: StatusOutOfRange,
			Message: fmt.Sprintf("range start %d count %d outside a buffer of %d values", start, count, n)}
	}
	return count, nil
}

func detectRequest(data, out string, start, count int, opt Options) request {
	return request{Op: opDetect, Start: uint64(start), Count: uint64(count),
		Threshold: opt.threshold(), NaNPolicy: opt.NaNPolicy, DataName: data, OutName: out}
}

// Initial and minimum capacities of a lane's segments: what fits in a page.
const pageElems = (4096 - headerSize) / itemSize

// roundCapacity rounds n up so the segment fills whole pages.
func roundCapacity(n int) int {
	if n <= pageElems {
		return pageElems
	}
	pages := (headerSize + itemSize*n + 4095) / 4096
	return (pages*4096 - headerSize) / itemSize
}

func (l *lane) ensureData(n int) error {
	if l.data != nil && l.data.capacity >= n {
		return nil
	}
	want := n
	if l.data != nil && 2*l.data.capacity > want {
		want = 2 * l.data.capacity
	}
	seg, err := createSegment(kindData, roundCapacity(want), 0)
	if err != nil {
		return err
	}
	if l.data != nil {
		l.data.close()
	}
	l.data = seg
	return nil
}

func (l *lane) ensureOut(n int) error {
	if l.out != nil && l.out.capacity >= n {
		return nil
	}
	want := n
	if l.out != nil && 2*l.out.capacity > want {
		want = 2 * l.out.capacity
	}
	seg, err := createSegment(kindResult, roundCapacity(want), 0)
	if err != nil {
		return err
	}
	if l.out != nil {
		l.out.close()
	}
	l.out = seg
	return nil
}

// detect runs one detection into the lane's own result segment, growing it
// and asking again on TOO_SMALL, and returns a copy of the indices.
func (l *lane) detect(data string, start, count int, opt Options) ([]int, error) {
	if err := l.ensureOut(0); err != nil {
		return nil, err
	}
	for tries := 0; ; tries++ {
		rep, err := l.roundTrip(detectRequest(data, l.out.name, start, count, opt))
		if err != nil {
			return nil, err
		}
		switch {
		case rep.Status == StatusTooSmall && tries < 3 && rep.Needed > uint64(l.out.capacity) &&
			rep.Needed <= uint64(count):
			if err := l.ensureOut(int(rep.Needed)); err != nil {
				return nil, err
			}
			continue
		case rep.Status != StatusOK:
			l.checkStatus(rep.Status)
			return nil, replyError(rep)
		}
		if rep.Count != rep.Needed || rep.Count > uint64(l.out.capacity) {
			return nil, fmt.Errorf("shmpool: reply says %d indices written of %d needed into a result of capacity %d",
				rep.Count, rep.Needed, l.out.capacity)
		}
		raw := l.out.ints()[:rep.Count]
		idx := make([]int, len(raw))
		prev := int64(-1)
		for i, v := range raw {
			if v <= prev || v >= int64(count) {
				return nil, fmt.Errorf("shmpool: server returned index %d at position %d for %d values", v, i, count)
			}
			idx[i], prev = int(v), v
		}
		return idx, nil
	}
}

// checkStatus drops the lane after answers that leave its state in doubt.
func (l *lane) checkStatus(s Status) {
	switch s {
	case StatusWorkerDied, StatusTimeout, StatusShuttingDown, StatusInternal, StatusBadMessage:
		// A worker may still hold the segments, or the server is going
		// away: start over with a new connection and new segments.
		l.broken = true
	}
}

// connError is a failure of the connection itself, after which the lane is
// unusable.
type connError struct{ err error }

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// roundTrip sends r with the lane's next request id and returns the reply.
func (l *lane) roundTrip(r request) (reply, error) {
	l.nextID++
	r.RequestID = l.nextID
	pkt, err := encodeRequest(l.pkt[:0], r)
	if err != nil {
		return reply{}, err
	}
	fail := func(format string, args ...any) (reply, error) {
		l.broken = true
		return reply{}, &connError{fmt.Errorf(format, args...)}
	}
	if _, err := l.conn.Write(pkt); err != nil {
		return fail("shmpool: sending to %s: %w", l.conn.RemoteAddr(), unwrapOp(err))
	}
	n, _, flags, _, err := l.conn.ReadMsgUnix(l.buf, nil)
	switch {
	case err != nil && !errors.Is(err, io.EOF):
		return fail("shmpool: reading reply from %s: %w", l.conn.RemoteAddr(), unwrapOp(err))
	case n == 0:
		return fail("shmpool: reading reply from %s: connection closed by server: %w", l.conn.RemoteAddr(), io.EOF)
	case flags&syscall.MSG_TRUNC != 0:
		return fail("shmpool: reply from %s longer than %d bytes", l.conn.RemoteAddr(), maxReply)
	}
	rep, err := decodeReply(l.buf[:n])
	if err != nil {
		return fail("%w", err)
	}
	if rep.RequestID != r.RequestID {
		if rep.Status != StatusOK && rep.RequestID == 0 {
			return fail("shmpool: server rejected request %d: %w", r.RequestID, replyError(rep))
		}
		return fail("shmpool: reply to request %d answers request %d", r.RequestID, rep.RequestID)
	}
	return rep, nil
}

// destroy closes the connection and unlinks the lane's segments.
func (l *lane) destroy() error {
	var errs []error
	if l.conn != nil {
		l.conn.Close()
	}
	if l.data != nil {
		errs = append(errs, l.data.close())
		l.data = nil
	}
	if l.out != nil {
		errs = append(errs, l.out.close())
		l.out = nil
	}
	return errors.Join(errs...)
}
