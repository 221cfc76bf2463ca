package shmpool

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultSocketPath returns the socket a server listens on when it is given
// no --socket: $SHMPOOL_SOCKET if set, else /tmp/shmpool-<uid>.sock
// (LAYOUT.md 2.1). It is safe to call from any goroutine.
func DefaultSocketPath() string {
	if p := os.Getenv("SHMPOOL_SOCKET"); p != "" {
		return p
	}
	return "/tmp/shmpool-" + strconv.Itoa(os.Getuid()) + ".sock"
}

// DefaultDialTimeout is the DialTimeout of a Config that leaves it zero. Like
// every constant it is safe to use from any goroutine.
const DefaultDialTimeout = 10 * time.Second

// Config adjusts a Client; the zero value is what Dial uses. A Config is a
// plain value, copied by DialConfig, so the caller may reuse it and share
// it between goroutines.
type Config struct {
	// DialTimeout bounds connect(2), which is retried with a backoff while
	// the server's listen backlog is full (EAGAIN), and, for Dial, the
	// INFO exchange that follows. A connection that a call opens waits for
	// its INFO within the call's timeout instead: its worker answers after
	// the request it is running. Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// CallTimeout bounds the calls of the Client: a call whose reply does
	// not come within it returns an *Error with StatusTimeout, and the
	// connection it waited on is closed (a late reply could otherwise be
	// taken for the next call's; the worker finishes the request and
	// moves on). The phases of a split call share one deadline.
	// Options.Timeout overrides it per call. Zero means no limit (the
	// server may still have its own --timeout).
	CallTimeout time.Duration
}

// Options adjusts one call. The zero value runs the server's default
// detector (row 0 of its table) with its default parameters and NaN
// policy. Options are only read by the call, so one value may be shared by
// any number of goroutines.
type Options struct {
	// Threshold is shorthand for Params["threshold"], k in |x[i] - mean|
	// > k * std for the classic detector. Zero (or NaN) means the
	// server's default; a negative or infinite k is refused with
	// StatusBadValue. (Use Params to ask for a k of exactly 0.)
	Threshold float64
	// NaNPolicy says what non-finite values mean; NaNDefault leaves it to
	// the server (which raises, see StatusNonFinite, unless it was started
	// otherwise).
	NaNPolicy NaNPolicy
	// Detector names the row of the server's detector table to run
	// (Client.Detectors); "" means row 0, the server's default. An unknown
	// name is an *Error with StatusBadValue.
	Detector string
	// Params sets the detector's parameters by the names its table row
	// lists; a parameter left out (or NaN) has the server's default. An
	// unknown name, or "threshold" here and a non-zero Threshold both, is
	// an *Error with StatusBadValue.
	Params map[string]float64
	// Timeout overrides Config.CallTimeout for this call: positive is the
	// limit, negative means none, zero keeps the Client's.
	Timeout time.Duration
}

// serverInfo is what INFO says about the server (LAYOUT.md 2.5): shared by
// every lane whose INFO said the same, and never modified.
type serverInfo struct {
	text      string     // the detector table as sent
	rows      []Detector // the table, parsed
	thresh    []int      // per row: the index of its "threshold" parameter, or -1
	workers   int        // workers the server runs
	nanPolicy NaNPolicy  // its default nan_policy
}

// Client is a set of connections to one shmpool server, each with its own
// shared-memory segments.
//
// A Client is safe for concurrent use by multiple goroutines. A worker
// answers one request at a time per connection, so the Client keeps a set
// of lanes (a connection to one worker plus the data and result segments
// it reuses from call to call); a call takes an idle lane, and when none is
// idle dials another, so n goroutines calling at once use n connections.
// Lanes stay open until Close. A call of a split-capable detector over at
// least 262,144 values is spread over several lanes on different workers
// (LAYOUT.md 5); its answer is the same whichever worker runs a chunk.
//
// Failures: a lane whose connection breaks, times out or answers something
// that breaks LAYOUT.md is closed, never reused. A call whose first send on
// a lane that had been idle fails because the other end is gone (the worker
// died or the server restarted while the lane was idle; nothing ran) is
// retried once on a new connection. A worker that dies during a call fails
// that call alone, with an *Error of StatusWorkerDied; the next call dials
// afresh. A server that answers BUSY to a new connection while other calls
// of this Client hold lanes makes the call wait for one of those lanes.
type Client struct {
	path string
	cfg  Config

	closed atomic.Bool // set under mu by Close; read anywhere

	mu   sync.Mutex
	all  []*lane       // every open lane, idle or in use; lane.pos is its index
	idle []*lane       // idle lanes, the most recently used last
	wake chan struct{} // closed when a lane comes back or goes away; nil when nobody waits
	info *serverInfo   // what the latest INFO said
	wg   sync.WaitGroup
}

// lane is one connection to one worker, with the segments it reuses. It is
// used by one goroutine at a time: the one that took it from the Client.
type lane struct {
	c      *Client
	fd     int
	info   *serverInfo
	worker int // the worker's index (INFO)
	pid    int // the worker's process id (INFO)

	nextID  uint64
	pending uint64 // request_id of the request awaiting its reply, 0 if none
	data    *segment
	out     *segment
	req     []byte // request buffer: the head, plus COMBINE's values when needed
	buf     []byte // receive buffer, maxReply bytes
	n       int    // size of the reply in buf

	timeout time.Duration // SO_RCVTIMEO as set on fd
	limit   time.Duration // the current call's timeout, for the message

	pos    int  // index in c.all, under c.mu
	busy   bool // taken by a call, under c.mu
	reused bool // taken from the idle list, not dialed for this call
	sent   bool // a request was sent during the current call
	stale  bool // the first send of a reused lane found the other end gone
	broken bool // unusable: drop it
}

// Dial connects to the server listening on socketPath (see
// DefaultSocketPath), checks that it runs as this process's uid, and asks
// it (INFO) for its workers and detector table. It is DialConfig with the
// zero Config. Dial is safe to call from any goroutine; each call makes an
// independent Client.
func Dial(socketPath string) (*Client, error) {
	return DialConfig(socketPath, Config{})
}

// DialConfig is Dial with a Config: timeouts for connecting and for calls.
// Like Dial it is safe to call from any goroutine.
func DialConfig(socketPath string, cfg Config) (*Client, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.CallTimeout < 0 {
		cfg.CallTimeout = 0
	}
	c := &Client{path: socketPath, cfg: cfg}
	l, err := c.connect()
	if err != nil {
		return nil, err
	}
	if err := l.hello(cfg.DialTimeout); err != nil {
		l.destroy()
		return nil, err
	}
	c.mu.Lock()
	c.addLane(l)
	c.idle = append(c.idle, l)
	c.mu.Unlock()
	return c, nil
}

// connect opens the connection of a new lane (LAYOUT.md 2.1).
func (c *Client) connect() (*lane, error) {
	fd, err := dialSocket(c.path, time.Now().Add(c.cfg.DialTimeout))
	if err != nil {
		return nil, err
	}
	if err := setSocketTimeout(fd, syscall.SO_SNDTIMEO, c.cfg.DialTimeout); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("shmpool: connecting to %s: SO_SNDTIMEO: %w", c.path, err)
	}
	return &lane{c: c, fd: fd, worker: -1, req: make([]byte, requestHeadSize), buf: make([]byte, maxReply)}, nil
}

// hello asks the lane's worker for INFO: which worker it is, and the
// server's workers and detector table. The worker answers after the
// request it is running, so the wait is bounded by timeout (0: none). On
// failure the lane is broken.
func (l *lane) hello(timeout time.Duration) error {
	l.limit = timeout
	err := l.setTimeout(timeout)
	var h replyHead
	if err == nil {
		h, err = l.roundTrip(&request{Op: opInfo})
	}
	if err == nil && h.Status != StatusOK {
		err = l.statusError(h)
	}
	if err == nil {
		err = l.takeInfo(h)
	}
	if err == nil {
		return nil
	}
	l.broken = true
	var e *Error
	switch {
	case errors.As(err, &e):
		if e.Status == StatusWorkerDied {
			return fmt.Errorf("shmpool: connecting to %s: the server closed the connection before answering INFO", l.c.path)
		}
		return err
	case errors.Is(err, ErrClosed):
		return err
	case peerGone(err):
		return &wrapError{fmt.Sprintf("shmpool: connecting to %s: the server closed the connection before answering INFO", l.c.path), err}
	}
	return &wrapError{"shmpool: connecting to " + l.c.path + ": " + strings.TrimPrefix(err.Error(), "shmpool: "), err}
}

// wrapError is an error with its own text that unwraps to another.
type wrapError struct {
	msg string
	err error
}

func (e *wrapError) Error() string { return e.msg }
func (e *wrapError) Unwrap() error { return e.err }

// peer names the other end of the lane for messages.
func (l *lane) peer() string {
	if l.worker < 0 {
		return "the server at " + l.c.path
	}
	return fmt.Sprintf("worker %d (pid %d) at %s", l.worker, l.pid, l.c.path)
}

// takeInfo checks an INFO reply and records it: the lane's worker and pid,
// and the server's facts, shared with other lanes when they said the same.
func (l *lane) takeInfo(h replyHead) error {
	pkt := l.buf[:l.n]
	if h.NValues < infoValues {
		l.broken = true
		return fmt.Errorf("shmpool: INFO reply has %d values, want at least %d", h.NValues, infoValues)
	}
	integer := func(i int) (int, bool) {
		v := replyValue(pkt, i)
		if v != math.Trunc(v) || v < 0 || v > 1<<31 {
			return 0, false
		}
		return int(v), true
	}
	version, ok1 := integer(infoVersion)
	workers, ok2 := integer(infoWorkers)
	worker, ok3 := integer(infoWorker)
	pid, ok4 := integer(infoPID)
	policy, ok5 := integer(infoNaNPolicy)
	switch {
	case !(ok1 && ok2 && ok3 && ok4 && ok5):
		l.broken = true
		return fmt.Errorf("shmpool: INFO reply values %v are not small integers", decodeValues(pkt, h))
	case version != Version:
		l.broken = true
		return &Error{Status: StatusBadVersion, Message: fmt.Sprintf("the server speaks LAYOUT v%d; this host speaks v%d", version, Version)}
	case workers < 1 || worker >= workers || policy > int(NaNRaise):
		l.broken = true
		return fmt.Errorf("shmpool: INFO reply values %v are out of range", decodeValues(pkt, h))
	}
	_, text, _ := replyTexts(pkt, h)
	l.worker, l.pid = worker, pid
	c := l.c
	c.mu.Lock()
	old := c.info
	c.mu.Unlock()
	if old != nil && old.text == text && old.workers == workers && old.nanPolicy == NaNPolicy(policy) {
		l.info = old
		return nil
	}
	rows, err := parseTable(text)
	if err != nil {
		l.broken = true
		return err
	}
	info := &serverInfo{text: text, rows: rows, workers: workers, nanPolicy: NaNPolicy(policy)}
	for i := range rows {
		info.thresh = append(info.thresh, rows[i].param("threshold"))
	}
	var stale []*lane
	c.mu.Lock()
	if c.info != nil && c.info.text == text && c.info.workers == workers && c.info.nanPolicy == info.nanPolicy {
		info = c.info // another lane got there first
	} else {
		// The server changed (a restart with other options): the idle
		// lanes of the old one are stale; lanes in use go when they come
		// back (putLane).
		c.info = info
		kept := c.idle[:0]
		for _, o := range c.idle {
			if o.info != nil && o.info != info {
				c.removeLane(o)
				stale = append(stale, o)
			} else {
				kept = append(kept, o)
			}
		}
		clear(c.idle[len(kept):])
		c.idle = kept
	}
	c.mu.Unlock()
	for _, o := range stale {
		o.destroy()
	}
	l.info = info
	return nil
}

func decodeValues(pkt []byte, h replyHead) []float64 {
	v := make([]float64, h.NValues)
	for i := range v {
		v[i] = replyValue(pkt, i)
	}
	return v
}

// addLane records a new lane as in use or idle; c.mu is held.
func (c *Client) addLane(l *lane) {
	l.pos = len(c.all)
	c.all = append(c.all, l)
}

// removeLane forgets l; c.mu is held.
func (c *Client) removeLane(l *lane) {
	last := len(c.all) - 1
	c.all[l.pos] = c.all[last]
	c.all[l.pos].pos = l.pos
	c.all[last] = nil
	c.all = c.all[:last]
}

// notify wakes the calls waiting for a lane; c.mu is held.
func (c *Client) notify() {
	if c.wake != nil {
		close(c.wake)
		c.wake = nil
	}
}

// getLane takes an idle lane, or dials one when none is idle or fresh is
// set. When the server answers BUSY to the new connection while other
// calls hold lanes of this Client, it waits (until deadline, if set) for
// one of them to come back instead.
func (c *Client) getLane(fresh bool, deadline time.Time) (*lane, error) {
	waitOnly := false
	c.mu.Lock()
	for {
		if c.closed.Load() {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if n := len(c.idle); n > 0 && !fresh {
			l := c.idle[n-1]
			c.idle[n-1] = nil
			c.idle = c.idle[:n-1]
			l.busy, l.reused, l.sent, l.stale = true, true, false, false
			c.wg.Add(1)
			c.mu.Unlock()
			return l, nil
		}
		inUse := len(c.all) - len(c.idle)
		if waitOnly && inUse > 0 {
			if c.wake == nil {
				c.wake = make(chan struct{})
			}
			ch := c.wake
			c.mu.Unlock()
			if deadline.IsZero() {
				<-ch
			} else {
				t := time.NewTimer(time.Until(deadline))
				select {
				case <-ch:
					t.Stop()
				case <-t.C:
					return nil, &Error{Status: StatusTimeout,
						Message: "the server was busy and no connection of this client came free before the call's timeout"}
				}
			}
			c.mu.Lock()
			continue
		}
		c.wg.Add(1)
		c.mu.Unlock()
		l, err := c.dial(deadline)
		if err == nil {
			return l, nil
		}
		c.mu.Lock()
		var e *Error
		if !fresh && errors.As(err, &e) && e.Status == StatusBusy && !waitOnly && len(c.all)-len(c.idle) > 0 {
			waitOnly = true
			continue
		}
		c.mu.Unlock()
		return nil, err
	}
}

// dial opens a new lane for a call with the given deadline (zero: none)
// and returns it in use. The caller has counted it in c.wg; on failure
// dial has uncounted it.
func (c *Client) dial(deadline time.Time) (*lane, error) {
	l, err := c.connect()
	if err != nil {
		c.wg.Done()
		return nil, err
	}
	// Registered before INFO, so that Close can interrupt the wait.
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		l.destroy()
		c.wg.Done()
		return nil, ErrClosed
	}
	c.addLane(l)
	l.busy = true
	c.mu.Unlock()
	var timeout time.Duration
	if !deadline.IsZero() {
		if timeout = time.Until(deadline); timeout <= 0 {
			timeout = time.Microsecond
		}
	}
	if err := l.hello(timeout); err != nil {
		c.putLane(l) // broken: closed and uncounted
		return nil, err
	}
	return l, nil
}

// putLane gives l back: to the idle list, or, when it is broken or the
// Client closed, it closes it.
func (c *Client) putLane(l *lane) {
	c.mu.Lock()
	l.busy = false
	drop := l.broken || c.closed.Load() || l.info != c.info
	if drop {
		c.removeLane(l)
	} else {
		c.idle = append(c.idle, l)
	}
	c.notify()
	c.mu.Unlock()
	if drop {
		l.destroy()
	}
	c.wg.Done()
}

// Close closes every connection and unlinks the segments the Client's lanes
// own. Calls in progress are interrupted (shutdown(2) of their sockets) and
// return ErrClosed; Close waits for them to let go of their lanes. Buffers
// and Results made with NewBuffer and NewResult are not closed: they
// belong to the caller. Close is safe to call from any goroutine and more
// than once; later calls do nothing and return nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil
	}
	c.closed.Store(true)
	idle := c.idle
	c.idle = nil
	for _, l := range idle {
		c.removeLane(l)
	}
	for _, l := range c.all {
		if l.busy {
			syscall.Shutdown(l.fd, syscall.SHUT_RDWR) // wakes the goroutine blocked on it
		}
	}
	c.notify()
	c.mu.Unlock()
	var errs []error
	for _, l := range idle {
		errs = append(errs, l.destroy())
	}
	c.wg.Wait()
	return errors.Join(errs...)
}

// Detectors returns the server's detector table, row 0 (the default) first,
// as the most recent connection's INFO reported it. The slice is the
// caller's to keep. It is safe to call from any goroutine.
func (c *Client) Detectors() []Detector {
	c.mu.Lock()
	info := c.info
	c.mu.Unlock()
	rows := make([]Detector, len(info.rows))
	for i, r := range info.rows {
		r.Params = append([]Param(nil), r.Params...)
		rows[i] = r
	}
	return rows
}

// Workers returns the number of workers the server runs, as the most
// recent connection's INFO reported it. A split call uses up to this many
// workers at once. It is safe to call from any goroutine.
func (c *Client) Workers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info.workers
}

// Ping checks that a worker answers. Like every call it uses an idle lane,
// or dials one, and is safe to call from any goroutine.
func (c *Client) Ping() error {
	deadline := time.Time{}
	if c.cfg.CallTimeout > 0 {
		deadline = time.Now().Add(c.cfg.CallTimeout)
	}
	for attempt := 0; ; attempt++ {
		l, err := c.getLane(attempt > 0, deadline)
		if err != nil {
			return err
		}
		l.limit = c.cfg.CallTimeout
		err = l.setTimeout(c.cfg.CallTimeout)
		var h replyHead
		if err == nil {
			h, err = l.roundTrip(&request{Op: opPing})
		}
		if err == nil && h.Status != StatusOK {
			err = l.statusError(h)
		}
		stale := l.stale
		c.putLane(l)
		if stale && attempt == 0 {
			continue
		}
		return err
	}
}

// Detect returns the indices i, ascending, that the server's default
// detector flags in x: for the classic detector, |x[i] - mean(x)| > k *
// std(x) under the server's default k and NaN policy. It copies x into a
// shared-memory segment the lane owns and reuses; to avoid the copy, fill a
// Buffer and use DetectBuffer. It is safe to call from any goroutine, as
// are all the Detect methods.
func (c *Client) Detect(x []float64) ([]int, error) {
	return c.DetectWith(x, Options{})
}

// DetectWith is Detect with options. It is safe to call from any goroutine.
func (c *Client) DetectWith(x []float64, opt Options) ([]int, error) {
	cl := call{copyIn: true, x: x, n: len(x), opt: opt}
	err := c.run(&cl)
	return cl.idx, err
}

// DetectBuffer is Detect over the whole of b, without copying. It is safe
// to call from any goroutine, on the same Buffer too.
func (c *Client) DetectBuffer(b *Buffer, opt Options) ([]int, error) {
	return c.DetectRange(b, 0, -1, opt)
}

// DetectRange is Detect over b.Data()[start:start+count], without copying.
// The indices are relative to start. A count of -1 means to the end of b.
// The caller must not write to that part of b.Data() until the call
// returns; any number of calls, from any goroutines, may read the same
// Buffer at once.
func (c *Client) DetectRange(b *Buffer, start, count int, opt Options) ([]int, error) {
	seg, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.release()
	if count, err = checkRange(seg, start, count); err != nil {
		return nil, err
	}
	cl := call{seg: seg, start: start, n: count, opt: opt}
	err = c.run(&cl)
	return cl.idx, err
}

// DetectInto is DetectRange writing the indices into the caller's Result r
// instead of a new slice, and returning how many there are; r.Indices()
// then holds them. If r is too small for the answer, the error is an *Error
// with Status StatusTooSmall and Needed set, and r is left empty: make a
// Result with capacity Needed and call again. Calls on the same Result are
// serialized, so it is safe to call from any goroutine. A split call
// (LAYOUT.md 5) gathers its chunks' answers in
// the lanes' own result segments and copies them into r.
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
	cl := call{seg: seg, start: start, n: count, res: out, opt: opt}
	if err := c.run(&cl); err != nil {
		return 0, err
	}
	r.setLen(cl.count)
	return cl.count, nil
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

// call is one detection: where its values are, where its answer goes.
type call struct {
	copyIn bool      // the values are x, copied into the lanes' data segments
	x      []float64 // copyIn: the values
	seg    *segment  // !copyIn: the Buffer's segment
	start  int       // !copyIn: where the values start in seg
	n      int       // how many values
	res    *segment  // the caller's Result segment, or nil for a new slice
	opt    Options

	timeout  time.Duration // 0: none
	deadline time.Time     // when timeout > 0
	split    bool          // spread over several lanes

	idx   []int // res == nil: the answer
	count int   // res != nil: the answer's length
}

// callParams is a call's detector row and parameters, resolved against a
// lane's detector table.
type callParams struct {
	row     uint32
	det     *Detector
	nparams uint32
	params  [maxParams]float64
}

// resolve finds the row and parameter slots opt asks for.
func (info *serverInfo) resolve(opt *Options, p *callParams) error {
	row := 0
	if opt.Detector != "" {
		row = -1
		for i := range info.rows {
			if info.rows[i].Name == opt.Detector {
				row = i
				break
			}
		}
		if row < 0 {
			return &Error{Status: StatusBadValue, Message: fmt.Sprintf("the server has no detector %q (it has %s)",
				opt.Detector, info.rowNames())}
		}
	}
	if opt.NaNPolicy > NaNRaise {
		return &Error{Status: StatusBadValue, Message: fmt.Sprintf("unknown NaN policy %d", opt.NaNPolicy)}
	}
	d := &info.rows[row]
	p.row, p.det, p.nparams = uint32(row), d, 0
	for i := range p.params {
		p.params[i] = math.NaN()
	}
	if opt.Threshold != 0 {
		i := info.thresh[row]
		if i < 0 {
			return &Error{Status: StatusBadValue, Message: fmt.Sprintf("detector %s has no threshold parameter (%s)",
				d.Name, paramNames(d))}
		}
		p.params[i], p.nparams = opt.Threshold, uint32(i+1)
	}
	for name, v := range opt.Params {
		i := d.param(name)
		if i < 0 {
			return &Error{Status: StatusBadValue, Message: fmt.Sprintf("detector %s has no parameter %q (%s)",
				d.Name, name, paramNames(d))}
		}
		if name == "threshold" && opt.Threshold != 0 {
			return &Error{Status: StatusBadValue, Message: "both Options.Threshold and Options.Params[\"threshold\"] are set"}
		}
		p.params[i] = v
		p.nparams = max(p.nparams, uint32(i+1))
	}
	return nil
}

func (info *serverInfo) rowNames() string {
	names := make([]string, len(info.rows))
	for i, r := range info.rows {
		names[i] = r.Name
	}
	return strings.Join(names, ", ")
}

func paramNames(d *Detector) string {
	if len(d.Params) == 0 {
		return "it takes no parameters"
	}
	names := make([]string, len(d.Params))
	for i, p := range d.Params {
		names[i] = p.Name
	}
	return "its parameters: " + strings.Join(names, ", ")
}

// run carries out one call: whole on one lane, or split over several.
func (c *Client) run(cl *call) error {
	cl.timeout = c.cfg.CallTimeout
	if cl.opt.Timeout > 0 {
		cl.timeout = cl.opt.Timeout
	} else if cl.opt.Timeout < 0 {
		cl.timeout = 0
	}
	if cl.timeout > 0 {
		cl.deadline = time.Now().Add(cl.timeout)
	}
	for attempt := 0; ; attempt++ {
		l, err := c.getLane(attempt > 0, cl.deadline)
		if err != nil {
			return err
		}
		var p callParams
		if err := l.info.resolve(&cl.opt, &p); err != nil {
			c.putLane(l)
			return err
		}
		if p.det.Split {
			if k := splitCount(cl.n, min(l.info.workers, maxRequestValues/p.det.SummarySize)); k > 1 {
				err := c.runSplit(l, cl, &p, k)
				if err == errChanged && attempt == 0 {
					continue // planned for a server that is gone; nothing ran
				}
				return err
			}
		}
		err = l.detectWhole(cl, &p)
		stale := l.stale
		c.putLane(l)
		if stale && attempt == 0 {
			continue // the lane had gone stale while idle; nothing ran
		}
		return err
	}
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

// grow returns a segment of the kind with room for n elements: s itself
// if it has, else a new one (s is closed), at least doubling.
func grow(s *segment, kind uint16, n int) (*segment, error) {
	if s != nil && s.capacity >= n {
		return s, nil
	}
	want := n
	if s != nil && 2*s.capacity > want {
		want = 2 * s.capacity
	}
	ns, err := createSegment(kind, roundCapacity(want), 0)
	if err != nil {
		return s, err
	}
	if s != nil {
		s.close()
	}
	return ns, nil
}

func (l *lane) ensureData(n int) (err error) {
	l.data, err = grow(l.data, kindData, n)
	return err
}

func (l *lane) ensureOut(n int) (err error) {
	l.out, err = grow(l.out, kindResult, n)
	return err
}

// firstGuess is the result capacity a lane starts a call of n values with:
// as Python's flag pass does, room for one index in 16.
func firstGuess(n int) int { return n/16 + 16 }

// detectWhole runs one DETECT of the whole call on l.
func (l *lane) detectWhole(cl *call, p *callParams) error {
	r := request{Op: opDetect, Count: uint64(cl.n), Detector: p.row, NaNPolicy: cl.opt.NaNPolicy,
		NParams: p.nparams, Params: p.params}
	if cl.copyIn {
		if err := l.ensureData(cl.n); err != nil {
			return err
		}
		copy(l.data.floats(), cl.x)
		l.data.setCount(cl.n)
		r.DataName = l.data.name
	} else {
		r.DataName, r.Start = cl.seg.name, uint64(cl.start)
	}
	out := cl.res
	if out == nil {
		if err := l.ensureOut(firstGuess(cl.n)); err != nil {
			return err
		}
		out = l.out
	}
	r.OutName = out.name
	if err := l.arm(cl); err != nil {
		return err
	}
	for tries := 0; ; tries++ {
		h, err := l.roundTrip(&r)
		if err != nil {
			return err
		}
		if h.Status == StatusTooSmall && cl.res == nil && tries < 3 &&
			h.Needed > uint64(out.capacity) && h.Needed <= uint64(cl.n) {
			if err := l.ensureOut(int(h.Needed)); err != nil {
				return err
			}
			out = l.out
			r.OutName = out.name
			continue
		}
		if h.Status != StatusOK {
			return l.statusError(h)
		}
		if err := l.checkCount(h, out); err != nil {
			return err
		}
		if cl.res != nil {
			cl.count = int(h.Count)
			return nil
		}
		cl.idx = make([]int, h.Count)
		if err := l.copyIndices(cl.idx, out.ints()[:h.Count], 0, cl.n); err != nil {
			cl.idx = nil
			return err
		}
		return nil
	}
}

// checkCount checks an OK reply's count against the result segment.
func (l *lane) checkCount(h replyHead, out *segment) error {
	if h.Count != h.Needed || h.Count > uint64(out.capacity) {
		l.broken = true
		return fmt.Errorf("shmpool: reply says %d indices written of %d needed into a result of capacity %d",
			h.Count, h.Needed, out.capacity)
	}
	return nil
}

// copyIndices copies raw into dst, checking that they ascend within
// [lo, hi).
func (l *lane) copyIndices(dst []int, raw []int64, lo, hi int) error {
	prev := int64(lo) - 1
	for i, v := range raw {
		if v <= prev || v >= int64(hi) {
			l.broken = true
			return fmt.Errorf("shmpool: server returned index %d at position %d for values %d to %d", v, i, lo, hi)
		}
		dst[i], prev = int(v), v
	}
	return nil
}

// arm sets the socket's receive timeout for the call: the call's timeout
// for a call of one request (set only when it changes), the time left
// until its deadline for a split call.
func (l *lane) arm(cl *call) error {
	d := cl.timeout
	if cl.split && d > 0 {
		if d = time.Until(cl.deadline); d <= 0 {
			l.broken = true
			return l.timeoutError(cl.timeout)
		}
	}
	l.limit = cl.timeout
	return l.setTimeout(d)
}

func (l *lane) setTimeout(d time.Duration) error {
	if d == l.timeout {
		return nil
	}
	if err := setSocketTimeout(l.fd, syscall.SO_RCVTIMEO, d); err != nil {
		l.broken = true
		return fmt.Errorf("shmpool: SO_RCVTIMEO: %w", err)
	}
	l.timeout = d
	return nil
}

func (l *lane) timeoutError(d time.Duration) error {
	return &Error{Status: StatusTimeout, Message: fmt.Sprintf(
		"no reply within the call's timeout of %v; the connection to %s was closed", d, l.peer())}
}

// roundTrip sends r and receives its reply.
func (l *lane) roundTrip(r *request) (replyHead, error) {
	if err := l.send(r); err != nil {
		return replyHead{}, err
	}
	return l.recv()
}

// send sends r with the lane's next request id.
func (l *lane) send(r *request) error {
	l.nextID++
	r.RequestID = l.nextID
	size := requestHeadSize + 8*len(r.Values)
	if len(l.req) < size {
		l.req = make([]byte, size)
	}
	n, err := encodeRequest(l.req, r)
	if err != nil {
		return err
	}
	first := !l.sent
	l.sent = true
	if err := sendPacket(l.fd, l.req[:n]); err != nil {
		l.broken = true
		if l.c.closed.Load() {
			return ErrClosed
		}
		// A connection the server refused has its reason waiting.
		if e := l.refusal(); e != nil {
			return e
		}
		if peerGone(err) && first && l.reused {
			l.stale = true
		}
		return fmt.Errorf("shmpool: sending to %s: %w", l.peer(), err)
	}
	l.pending = r.RequestID
	return nil
}

// recv receives the reply to the pending request.
func (l *lane) recv() (replyHead, error) {
	id := l.pending
	l.pending = 0
	n, err := recvPacket(l.fd, l.buf, 0)
	if err == nil && n == 0 || err == syscall.ECONNRESET {
		l.broken = true
		if l.c.closed.Load() {
			return replyHead{}, ErrClosed
		}
		if e := l.refusal(); e != nil {
			return replyHead{}, e // BUSY or NOT_PERMITTED, then the server closed
		}
		return replyHead{}, &Error{Status: StatusWorkerDied, Message: fmt.Sprintf(
			"the worker serving this connection died during the call (worker %d, pid %d)", l.worker, l.pid)}
	}
	if err != nil {
		l.broken = true
		if l.c.closed.Load() {
			return replyHead{}, ErrClosed
		}
		if err == syscall.EAGAIN {
			return replyHead{}, l.timeoutError(l.limit)
		}
		return replyHead{}, fmt.Errorf("shmpool: reading a reply from %s: %w", l.peer(), err)
	}
	if n > len(l.buf) {
		l.broken = true
		return replyHead{}, fmt.Errorf("shmpool: reply of %d bytes exceeds the limit of %d", n, len(l.buf))
	}
	h, err := decodeReplyHead(l.buf[:n])
	if err != nil {
		l.broken = true
		if err == errBadVersionReply {
			return h, &Error{Status: StatusBadVersion, RequestID: h.RequestID,
				Message: fmt.Sprintf("the server at %s does not speak LAYOUT v%d", l.c.path, Version)}
		}
		return h, err
	}
	l.n = n
	if h.RequestID != id {
		l.broken = true
		if h.RequestID == 0 && h.Status != StatusOK {
			// BUSY, NOT_PERMITTED or BAD_VERSION of a refused connection
			// (LAYOUT.md 2.1), or a packet the worker could not read.
			return h, l.statusError(h)
		}
		return h, fmt.Errorf("shmpool: reply to request %d answers request %d", id, h.RequestID)
	}
	return h, nil
}

// refusal returns the error of a BUSY, NOT_PERMITTED or BAD_VERSION reply
// waiting in the receive queue, if there is one.
func (l *lane) refusal() error {
	n, err := recvPacket(l.fd, l.buf, syscall.MSG_DONTWAIT)
	if err == syscall.ECONNRESET {
		// Reported first when the server closed without reading our
		// request; the packet it sent before closing comes next.
		n, err = recvPacket(l.fd, l.buf, syscall.MSG_DONTWAIT)
	}
	if err != nil || n == 0 || n > len(l.buf) {
		return nil
	}
	h, err := decodeReplyHead(l.buf[:n])
	if err == errBadVersionReply {
		return &Error{Status: StatusBadVersion, Message: fmt.Sprintf("the server at %s does not speak LAYOUT v%d", l.c.path, Version)}
	}
	if err != nil || h.RequestID != 0 || h.Status == StatusOK {
		return nil
	}
	l.n = n
	return l.statusError(h)
}

// statusError turns a reply with a status other than OK into an *Error,
// and drops the lane, or its segments, when the status leaves them in
// doubt.
func (l *lane) statusError(h replyHead) *Error {
	e := &Error{Status: h.Status, RequestID: h.RequestID, Needed: clampInt(h.Needed)}
	e.Type, e.Message, e.Traceback = replyTexts(l.buf[:l.n], h)
	switch h.Status {
	case StatusBadMessage, StatusTimeout, StatusShuttingDown, StatusInternal, StatusBusy, StatusBadVersion:
		// The worker exits (TIMEOUT), the server is going away, or the
		// two sides disagree about the protocol: start over.
		l.broken = true
	case StatusNoSegment, StatusBadHeader, StatusNotPermitted, StatusBadName:
		// Someone removed or spoiled a segment; make new ones next time.
		l.dropSegments()
	}
	if h.RequestID == 0 && h.Status != StatusOK {
		l.broken = true
	}
	return e
}

func (l *lane) dropSegments() {
	if l.data != nil {
		l.data.close()
		l.data = nil
	}
	if l.out != nil {
		l.out.close()
		l.out = nil
	}
}

// destroy closes the connection and unlinks the lane's segments.
func (l *lane) destroy() error {
	var errs []error
	if l.fd >= 0 {
		syscall.Close(l.fd)
		l.fd = -1
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
