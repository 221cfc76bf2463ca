package shmpool

// This file is the Go rendering of docs/LAYOUT.md (layout version 1): the
// segment header, the request and reply packets, names and status codes.
// It does no I/O. shmpool/layout.py and host_adapters/c/shmpool.h are the
// other two renderings; vectors_test.go holds this one to the golden bytes in
// tests/vectors/v1.txt.

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Version is the layout and protocol version this package speaks.
const Version = 1

const (
	segmentMagic = 0x504D4853 // "SHMP" read as a little-endian u32
	requestMagic = 0x514D4853 // "SHMQ"
	replyMagic   = 0x524D4853 // "SHMR"

	kindData   = 1 // region holds float64 values
	kindResult = 2 // region holds int64 indices

	headerSize = 64 // bytes before the region; also its alignment
	itemSize   = 8  // bytes per element, float64 and int64 alike

	offCount = 24 // offset of the header's count, which the host sets per call

	opDetect = 1
	opPing   = 2

	nameSize    = 64 // bytes of a name field in a request, NUL-padded
	namePrefix  = "shmpool-"
	maxNameBody = 55 // characters after the prefix

	requestSize   = 176
	replyHeadSize = 48
	maxType       = 256
	maxMessage    = 8192
	maxTraceback  = 32768
	maxReply      = 65536 // a receive buffer this large always suffices
)

// canonicalNaN is the bit pattern Python (and C's NAN) writes for a NaN
// threshold; math.NaN() has a different payload.
const canonicalNaN = 0x7FF8000000000000

// Status is a status code, shared by replies and result-segment headers
// (LAYOUT.md section 3).
type Status uint16

// Status codes of layout version 1.
const (
	StatusOK            Status = 0  // success
	StatusBadMessage    Status = 1  // request of the wrong size, magic, version, op or flags
	StatusBadName       Status = 2  // a segment name breaks the naming rule
	StatusNoSegment     Status = 3  // no such segment (never created, or unlinked)
	StatusNotPermitted  Status = 4  // not a regular file, other owner, or mode wider than 0600
	StatusBadHeader     Status = 5  // segment header fails a check of LAYOUT.md 1.2
	StatusOutOfRange    Status = 6  // start + count beyond the data segment's count
	StatusTooSmall      Status = 7  // result capacity < needed; nothing was written
	StatusDetectorError Status = 8  // the detector raised
	StatusWorkerDied    Status = 9  // the worker died during the call
	StatusNonFinite     Status = 10 // NaN or ±inf in the data under NaNRaise
	StatusBadValue      Status = 11 // threshold negative or infinite, or unknown NaN policy
	StatusTimeout       Status = 12 // the call exceeded the server's time limit
	StatusShuttingDown  Status = 13 // the server is stopping
	StatusInternal      Status = 14 // a bug in shmpool; the message says where
)

var statusNames = [...]string{
	"OK", "BAD_MESSAGE", "BAD_NAME", "NO_SEGMENT", "NOT_PERMITTED",
	"BAD_HEADER", "OUT_OF_RANGE", "TOO_SMALL", "DETECTOR_ERROR",
	"WORKER_DIED", "NON_FINITE", "BAD_VALUE", "TIMEOUT", "SHUTTING_DOWN",
	"INTERNAL",
}

// String returns the name LAYOUT.md gives the code, such as "TOO_SMALL".
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("STATUS_%d", uint16(s))
}

// NaNPolicy says what NaN, +Inf and -Inf in the data mean (LAYOUT.md 4).
type NaNPolicy uint32

// NaN policies. The zero value leaves the choice to the server, whose
// default is NaNRaise.
const (
	NaNDefault   NaNPolicy = 0 // the server's policy
	NaNPropagate NaNPolicy = 1 // numpy's arithmetic: any non-finite value -> no outliers
	NaNOmit      NaNPolicy = 2 // non-finite values are left out and never reported
	NaNRaise     NaNPolicy = 3 // any non-finite value is an error (StatusNonFinite)
)

// segmentHeader is the 64-byte header at the start of every segment.
type segmentHeader struct {
	Magic      uint32
	Version    uint16
	Kind       uint16
	HeaderSize uint32
	Flags      uint32
	Capacity   uint64
	Count      uint64
	Status     uint32
	Needed     uint64
}

func newHeader(kind uint16, capacity, count uint64) segmentHeader {
	return segmentHeader{Magic: segmentMagic, Version: Version, Kind: kind,
		HeaderSize: headerSize, Capacity: capacity, Count: count}
}

// encodeHeader writes h into the first 64 bytes of b, zeroing the reserved
// fields.
func encodeHeader(b []byte, h segmentHeader) {
	_ = b[headerSize-1]
	clear(b[:headerSize])
	le := binary.LittleEndian
	le.PutUint32(b[0:], h.Magic)
	le.PutUint16(b[4:], h.Version)
	le.PutUint16(b[6:], h.Kind)
	le.PutUint32(b[8:], h.HeaderSize)
	le.PutUint32(b[12:], h.Flags)
	le.PutUint64(b[16:], h.Capacity)
	le.PutUint64(b[24:], h.Count)
	le.PutUint32(b[32:], h.Status)
	le.PutUint64(b[40:], h.Needed)
}

// decodeHeader reads the first 64 bytes of b without validating them (see
// checkHeader).
func decodeHeader(b []byte) segmentHeader {
	_ = b[headerSize-1]
	le := binary.LittleEndian
	return segmentHeader{
		Magic:      le.Uint32(b[0:]),
		Version:    le.Uint16(b[4:]),
		Kind:       le.Uint16(b[6:]),
		HeaderSize: le.Uint32(b[8:]),
		Flags:      le.Uint32(b[12:]),
		Capacity:   le.Uint64(b[16:]),
		Count:      le.Uint64(b[24:]),
		Status:     le.Uint32(b[32:]),
		Needed:     le.Uint64(b[40:]),
	}
}

// checkHeader reports why h is unusable as a kind segment of size bytes, in
// the order of LAYOUT.md 1.2, or returns "" when it is sound.
func checkHeader(h segmentHeader, kind uint16, size int64) string {
	switch {
	case h.Magic != segmentMagic:
		return fmt.Sprintf("bad magic 0x%08x (want 0x%08x)", h.Magic, segmentMagic)
	case h.Version != Version:
		return fmt.Sprintf("unsupported layout version %d (this reader speaks %d)", h.Version, Version)
	case h.Kind != kind:
		return fmt.Sprintf("segment kind %d, expected %d", h.Kind, kind)
	case h.HeaderSize != headerSize || h.Flags != 0:
		return fmt.Sprintf("header_size %d / flags %d not valid in v1", h.HeaderSize, h.Flags)
	case size < headerSize || h.Capacity > uint64(size-headerSize)/itemSize:
		return fmt.Sprintf("capacity %d does not fit in a segment of %d bytes", h.Capacity, size)
	case kind == kindData && h.Count > h.Capacity:
		return fmt.Sprintf("count %d exceeds capacity %d", h.Count, h.Capacity)
	}
	return ""
}

// validName reports whether name matches shmpool-[A-Za-z0-9_-]{1,55}.
func validName(name string) bool {
	body, ok := strings.CutPrefix(name, namePrefix)
	if !ok || len(body) < 1 || len(body) > maxNameBody {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// request is one control request (LAYOUT.md 2.1).
type request struct {
	Op        uint16
	RequestID uint64
	Start     uint64
	Count     uint64
	Threshold float64 // NaN: the server's default
	NaNPolicy NaNPolicy
	DataName  string
	OutName   string
}

// encodeRequest appends the 176-byte packet for r to dst. It fails only when
// a name does not fit its field or is not ASCII.
func encodeRequest(dst []byte, r request) ([]byte, error) {
	var b [requestSize]byte
	le := binary.LittleEndian
	le.PutUint32(b[0:], requestMagic)
	le.PutUint16(b[4:], Version)
	le.PutUint16(b[6:], r.Op)
	le.PutUint64(b[8:], r.RequestID)
	le.PutUint64(b[16:], r.Start)
	le.PutUint64(b[24:], r.Count)
	bits := math.Float64bits(r.Threshold)
	if math.IsNaN(r.Threshold) {
		bits = canonicalNaN
	}
	le.PutUint64(b[32:], bits)
	le.PutUint32(b[40:], uint32(r.NaNPolicy))
	le.PutUint32(b[44:], 0)
	for _, f := range []struct {
		off  int
		name string
	}{{48, r.DataName}, {112, r.OutName}} {
		if len(f.name) >= nameSize {
			return dst, fmt.Errorf("shmpool: segment name is %d bytes; the limit is %d", len(f.name), nameSize-1)
		}
		for i := 0; i < len(f.name); i++ {
			if f.name[i] == 0 || f.name[i] >= 0x80 {
				return dst, fmt.Errorf("shmpool: segment name %q is not NUL-free ASCII", f.name)
			}
		}
		copy(b[f.off:], f.name)
	}
	return append(dst, b[:]...), nil
}

// decodeName splits a NUL-padded name field.
func decodeName(raw []byte, field string, rid uint64) (string, error) {
	text, pad := raw, []byte(nil)
	if i := indexByte(raw, 0); i >= 0 {
		text, pad = raw[:i], raw[i+1:]
	}
	for _, c := range pad {
		if c != 0 {
			return "", &Error{Status: StatusBadName, RequestID: rid,
				Message: field + ": bytes after the terminating NUL"}
		}
	}
	for _, c := range text {
		if c >= 0x80 {
			return "", &Error{Status: StatusBadName, RequestID: rid, Message: field + ": not ASCII"}
		}
	}
	return string(text), nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// decodeRequest decodes and validates one request packet in the order of
// LAYOUT.md 2.3 (the server's order). A rejection is an *Error whose Status
// is the code the server replies with and whose RequestID is the one the
// reply carries.
func decodeRequest(b []byte) (request, error) {
	if len(b) != requestSize {
		return request{}, &Error{Status: StatusBadMessage,
			Message: fmt.Sprintf("request is %d bytes; v1 requests are %d", len(b), requestSize)}
	}
	le := binary.LittleEndian
	magic := le.Uint32(b[0:])
	version := le.Uint16(b[4:])
	r := request{
		Op:        le.Uint16(b[6:]),
		RequestID: le.Uint64(b[8:]),
		Start:     le.Uint64(b[16:]),
		Count:     le.Uint64(b[24:]),
		Threshold: math.Float64frombits(le.Uint64(b[32:])),
		NaNPolicy: NaNPolicy(le.Uint32(b[40:])),
	}
	flags := le.Uint32(b[44:])
	rid := r.RequestID
	bad := func(s Status, format string, args ...any) (request, error) {
		return request{}, &Error{Status: s, RequestID: rid, Message: fmt.Sprintf(format, args...)}
	}
	switch {
	case magic != requestMagic:
		rid = 0
		return bad(StatusBadMessage, "bad request magic 0x%08x", magic)
	case version != Version:
		return bad(StatusBadMessage, "unsupported protocol version %d (server speaks %d)", version, Version)
	case r.Op != opDetect && r.Op != opPing:
		return bad(StatusBadMessage, "unknown op %d", r.Op)
	case flags != 0:
		return bad(StatusBadMessage, "flags must be 0 in v1, got %d", flags)
	case r.NaNPolicy > NaNRaise:
		return bad(StatusBadValue, "unknown nan_policy %d", r.NaNPolicy)
	case !math.IsNaN(r.Threshold) && !(r.Threshold >= 0 && !math.IsInf(r.Threshold, 1)):
		return bad(StatusBadValue, "threshold must be finite and >= 0, got %v", r.Threshold)
	}
	var err error
	if r.DataName, err = decodeName(b[48:112], "data_name", rid); err != nil {
		return request{}, err
	}
	if r.OutName, err = decodeName(b[112:176], "out_name", rid); err != nil {
		return request{}, err
	}
	if r.Op == opDetect {
		for _, f := range [...]struct{ field, name string }{{"data_name", r.DataName}, {"out_name", r.OutName}} {
			if !validName(f.name) {
				return bad(StatusBadName, "%s %q breaks the naming rule shmpool-[A-Za-z0-9_-]{1,55}", f.field, f.name)
			}
		}
	}
	return r, nil
}

// reply is one control reply (LAYOUT.md 2.2).
type reply struct {
	Status    Status
	RequestID uint64
	Count     uint64
	Needed    uint64
	Type      string
	Message   string
	Traceback string
}

// encodeReply appends the packet for r to dst, truncating the texts to their
// limits as the server does (type and message keep their start, the
// traceback its end).
func encodeReply(dst []byte, r reply) []byte {
	typ, msg, tb := r.Type, r.Message, r.Traceback
	if len(typ) > maxType {
		typ = typ[:maxType]
	}
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	if len(tb) > maxTraceback {
		tb = tb[len(tb)-maxTraceback:]
	}
	var h [replyHeadSize]byte
	le := binary.LittleEndian
	le.PutUint32(h[0:], replyMagic)
	le.PutUint16(h[4:], Version)
	le.PutUint16(h[6:], uint16(r.Status))
	le.PutUint64(h[8:], r.RequestID)
	le.PutUint64(h[16:], r.Count)
	le.PutUint64(h[24:], r.Needed)
	le.PutUint32(h[32:], uint32(len(typ)))
	le.PutUint32(h[36:], uint32(len(msg)))
	le.PutUint32(h[40:], uint32(len(tb)))
	dst = append(dst, h[:]...)
	dst = append(dst, typ...)
	dst = append(dst, msg...)
	return append(dst, tb...)
}

// decodeReply decodes one reply packet, checking its magic, version and
// that the text lengths are within their limits and add up to the packet's
// size. Invalid UTF-8 in the texts is replaced by U+FFFD.
func decodeReply(b []byte) (reply, error) {
	if len(b) < replyHeadSize {
		return reply{}, fmt.Errorf("shmpool: reply is %d bytes; the head alone is %d", len(b), replyHeadSize)
	}
	if len(b) > maxReply {
		return reply{}, fmt.Errorf("shmpool: reply is %d bytes; the limit is %d", len(b), maxReply)
	}
	le := binary.LittleEndian
	magic, version := le.Uint32(b[0:]), le.Uint16(b[4:])
	if magic != replyMagic || version != Version {
		return reply{}, fmt.Errorf("shmpool: bad reply magic/version 0x%08x/%d", magic, version)
	}
	tlen, mlen, tblen := le.Uint32(b[32:]), le.Uint32(b[36:]), le.Uint32(b[40:])
	if tlen > maxType || mlen > maxMessage || tblen > maxTraceback {
		return reply{}, fmt.Errorf("shmpool: reply text lengths %d/%d/%d exceed the limits", tlen, mlen, tblen)
	}
	if replyHeadSize+int(tlen)+int(mlen)+int(tblen) != len(b) {
		return reply{}, fmt.Errorf("shmpool: reply text lengths %d+%d+%d do not match its size %d",
			tlen, mlen, tblen, len(b))
	}
	text := b[replyHeadSize:]
	return reply{
		Status:    Status(le.Uint16(b[6:])),
		RequestID: le.Uint64(b[8:]),
		Count:     le.Uint64(b[16:]),
		Needed:    le.Uint64(b[24:]),
		Type:      validUTF8(text[:tlen]),
		Message:   validUTF8(text[tlen : tlen+mlen]),
		Traceback: validUTF8(text[tlen+mlen:]),
	}, nil
}

// validUTF8 returns b as a string with each byte that is not part of valid
// UTF-8 replaced by U+FFFD.
func validUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return string([]rune(string(b)))
}
