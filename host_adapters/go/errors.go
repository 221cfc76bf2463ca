package shmpool

import (
	"errors"
	"strconv"
	"strings"
)

// ErrClosed is returned by calls on a Client, Buffer or Result after its
// Close method has been called.
var ErrClosed = errors.New("shmpool: use of closed client, buffer or result")

// Error is a call the server answered with a status other than OK, such as
// an exception raised by the Python detector. Use errors.As to get at it:
//
//	var e *shmpool.Error
//	if errors.As(err, &e) && e.Status == shmpool.StatusTooSmall {
//		// grow the result to e.Needed and try again
//	}
//
// Errors about the connection itself (the server went away, a malformed
// reply) are not *Error values.
type Error struct {
	Status    Status // the reply's status code, never StatusOK
	Type      string // the Python exception's class name, e.g. "ValueError"; may be empty
	Message   string // the exception's text
	Traceback string // the worker's formatted Python traceback, when the detector raised
	Needed    int    // StatusTooSmall: the indices the answer has
	RequestID uint64 // the request the reply answers
}

// Error returns "shmpool: <type>: <message> (<STATUS>)", leaving out the
// parts that are empty.
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

func replyError(r reply) *Error {
	return &Error{Status: r.Status, Type: r.Type, Message: r.Message,
		Traceback: r.Traceback, Needed: clampInt(r.Needed), RequestID: r.RequestID}
}

func clampInt(v uint64) int {
	const maxInt = int(^uint(0) >> 1)
	if v > uint64(maxInt) {
		return maxInt
	}
	return int(v)
}
