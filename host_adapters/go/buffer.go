package shmpool

import (
	"fmt"
	"sync"
)

// shared is a segment handed to the caller. Calls hold a reference while
// they use it, so that Close, which may come at any time, unlinks the name
// at once but unmaps only after the last call has let go.
type shared struct {
	mu     sync.Mutex
	seg    *segment
	refs   int
	closed bool
}

func (s *shared) acquire() (*segment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	s.refs++
	return s.seg, nil
}

func (s *shared) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs--
	if s.closed && s.refs == 0 {
		s.seg.unmap()
	}
}

func (s *shared) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.seg.unlink()
	if s.refs == 0 {
		if uerr := s.seg.unmap(); err == nil {
			err = uerr
		}
	}
	return err
}

// Buffer is a shared-memory segment of float64 values that the program
// writes directly and the server's workers read without a copy. Make one
// with Client.NewBuffer, fill Data, and pass it to Client.DetectBuffer,
// Client.DetectRange or Client.DetectInto, of any Client.
//
// Close, Len, Data and the Detect calls are safe for concurrent use, and
// any number of calls may read one Buffer at once. Writing to Data while a
// call on that part of it is in progress gives undefined results (but no
// crash).
type Buffer struct {
	shared
	data []float64
}

// NewBuffer creates a Buffer of n float64 values, all zero, in /dev/shm.
// It is safe to call from any goroutine.
// Failing to reserve the memory (for instance because /dev/shm is full) is
// an error now, never a SIGBUS later. The caller must Close the Buffer; the
// Client's Close does not.
func (c *Client) NewBuffer(n int) (*Buffer, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if n < 0 {
		return nil, fmt.Errorf("shmpool: negative buffer length %d", n)
	}
	seg, err := createSegment(kindData, n, n)
	if err != nil {
		return nil, err
	}
	return &Buffer{shared: shared{seg: seg}, data: seg.floats()}, nil
}

// Data returns the Buffer's values, backed by shared memory: writes go
// straight to the segment the workers read. The slice must not be used
// after Close (the memory is unmapped). Data returns nil after Close. It
// is safe to call from any goroutine.
func (b *Buffer) Data() []float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	return b.data
}

// Len returns the number of values the Buffer holds. It is safe to call
// from any goroutine.
func (b *Buffer) Len() int { return len(b.data) }

// Close unlinks the Buffer's segment and unmaps it once no call is using it.
// A call still in progress completes or fails with an error (the server may
// find the segment gone); it never touches unmapped memory. Close is safe
// to call from any goroutine, and more than once.
func (b *Buffer) Close() error { return b.shared.close() }

// Result is a caller-managed result segment: Client.DetectInto writes the
// indices of an answer into it, and Indices reads them without a copy.
// Make one with Client.NewResult; the caller must Close it.
//
// Calls on one Result are serialized; Close, Cap and Len are safe for
// concurrent use. The slice Indices returns is overwritten by the next
// DetectInto.
type Result struct {
	shared
	callMu sync.Mutex // held by DetectInto
	n      int        // indices in the last answer, under mu
}

// NewResult creates a Result with room for capacity indices. The caller
// must Close it; the Client's Close does not. It is safe to call from any
// goroutine.
func (c *Client) NewResult(capacity int) (*Result, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if capacity < 0 {
		return nil, fmt.Errorf("shmpool: negative result capacity %d", capacity)
	}
	seg, err := createSegment(kindResult, capacity, 0)
	if err != nil {
		return nil, err
	}
	return &Result{shared: shared{seg: seg}}, nil
}

// Cap returns how many indices the Result holds at most. It is safe to call
// from any goroutine.
func (r *Result) Cap() int { return r.seg.capacity }

// Len returns the number of indices of the last successful DetectInto, or 0.
// It is safe to call from any goroutine.
func (r *Result) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *Result) setLen(n int) {
	r.mu.Lock()
	r.n = n
	r.mu.Unlock()
}

// Indices returns the indices of the last successful DetectInto, ascending
// and relative to the range's start, as a view of the shared memory. The
// view is valid until the next DetectInto on r or Close; it is nil after
// Close. Indices is safe to call from any goroutine, but reading the view
// while another goroutine runs DetectInto on r sees a half-written answer.
func (r *Result) Indices() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	return r.seg.ints()[:r.n]
}

// Close unlinks the Result's segment and unmaps it once no call is using
// it. Close is safe to call from any goroutine, and more than once.
func (r *Result) Close() error { return r.shared.close() }
