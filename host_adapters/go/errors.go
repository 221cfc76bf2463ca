package shmpool

import (
	"errors"
	"strconv"
	"strings"
)

// ErrClosed is returned by calls on a Client, Buffer or Result after its
// Close method has been called, including calls that Close interrupted.
// It is a plain error value, safe to compare from any goroutine.
var ErrClosed = errors.New("shmpool: use of closed client, buffer or result")

// Error is a call that failed with a status code of LAYOUT.md section 3:
// the server answered with a status other than OK (an exception raised by
// the Python detector, non-finite data, a segment problem, BUSY, ...), the
// worker died during the call (StatusWorkerDied), the call ran past its
// timeout (StatusTimeout), or the Client refused the call's options before
// sending it (StatusBadValue, StatusOutOfRange). Use errors.As to get at
// it:
//
//	var e *shmpool.Error
//	if errors.As(err, &e) && e.Status == shmpool.StatusTooSmall {
//		// grow the result to e.Needed and try again
//	}
//
// Failures of the connection itself (no server, a malformed reply) are
// plain errors, not *Error values. An *Error is not modified after it is
// returned, so it may be read from any goroutine.
type Error struct {
	Status    Status // the status code, never StatusOK
	Type      string // the Python exception's class name, e.g. "ValueError"; may be empty
	Message   string // the exception's text, or what went wrong
	Traceback string // the worker's formatted Python traceback, when the detector raised
	Needed    int    // StatusTooSmall: the indices the answer has
	RequestID uint64 // the request the reply answers (0 for the Client's own verdicts)
}

// Error returns "shmpool: <type>: <message> (<STATUS>)", leaving out the
// parts that are empty. It is safe to call from any goroutine.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("shmpool: ")
	switch {
	case e.Type != "" && e.Message != "":
		b.WriteString(e.Type + ": " + e.Message)
	case e.Type != "":
		b.WriteString(e.Type)
	case e.Message != "":
		b.WriteString(e.Message)
	case e.Status == StatusTooSmall:
		b.WriteString("the answer has " + strconv.Itoa(e.Needed) + " indices, more than the result holds")
	default:
		b.WriteString("server replied")
	}
	b.WriteString(" (" + e.Status.String() + ")")
	return b.String()
}

// Timeout reports whether the call ran out of time: the Client's own call
// timeout, or the server's --timeout (both StatusTimeout). It makes *Error
// satisfy the interface net.Error and os.IsTimeout look for. It is safe to
// call from any goroutine.
func (e *Error) Timeout() bool { return e.Status == StatusTimeout }

func clampInt(v uint64) int {
	const maxInt = int(^uint(0) >> 1)
	if v > uint64(maxInt) {
		return maxInt
	}
	return int(v)
}
