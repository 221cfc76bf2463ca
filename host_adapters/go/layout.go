package shmpool

// This file is the Go rendering of docs/LAYOUT.md, layout version 2: the
// segment header, the request and reply packets, names, status codes, the
// detector table and the splitting rule. It does no I/O. shmpool/layout.py
// is the Python rendering; every constant and field below carries the same
// name (in Python spelling) in a comment, and layout_test.go parses
// layout.py and fails if the two drift apart. vectors_test.go holds this
// file to the golden bytes of tests/vectors/v2.txt.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Version is the layout and protocol version this package speaks
// (LAYOUT.md; layout.py VERSION). Like every constant it is safe to use
// from any goroutine.
const Version = 2

// Segment header (LAYOUT.md 1.1).
const (
	segmentMagic = 0x504D4853 // SEGMENT_MAGIC: b"SHMP" read as a little-endian u32
	kindData     = 1          // KIND_DATA: region holds float64 values
	kindResult   = 2          // KIND_RESULT: region holds int64 indices
	headerSize   = 64         // HEADER_SIZE: bytes before the region; also its alignment
	itemSize     = 8          // ITEM_SIZE: bytes per element, float64 and int64 alike

	// Byte offsets of the header's fields (layout.py _HEADER).
	hdrOffMagic      = 0  // magic        SEGMENT_MAGIC
	hdrOffVersion    = 4  // version      VERSION
	hdrOffKind       = 6  // kind         KIND_DATA or KIND_RESULT
	hdrOffHeaderSize = 8  // header_size  HEADER_SIZE: offset of the region
	hdrOffFlags      = 12 // flags        0; a reader rejects anything else
	hdrOffCapacity   = 16 // capacity     elements the region holds, fixed at creation
	hdrOffCount      = 24 // count        data: elements valid; result: indices written (OFF_COUNT)
	hdrOffStatus     = 32 // status       result: Status of the last answer; data: 0 (OFF_STATUS)
	hdrOffReserved   = 36 // reserved     0
	hdrOffNeeded     = 40 // needed       result: indices the last answer has (OFF_NEEDED)
	hdrOffReserved2  = 48 // reserved     16 zero bytes
)

// Names and owners (LAYOUT.md 1.3, 1.4).
const (
	nameSize        = 64         // NAME_SIZE: bytes of a name field in a request, NUL-padded
	namePrefix      = "shmpool-" // NAME_RE: shmpool-[A-Za-z0-9_-]{1,55}
	maxNameBody     = 55         // NAME_RE: characters after the prefix
	ownerLockSuffix = "owner"    // OWNER_LOCK_SUFFIX: shmpool-<owner>-owner
)

// Messages (LAYOUT.md 2.3, 2.4).
const (
	requestMagic = 0x514D4853 // REQUEST_MAGIC: b"SHMQ"
	replyMagic   = 0x524D4853 // REPLY_MAGIC: b"SHMR"

	maxParams        = 8     // MAX_PARAMS: float64 parameters a request carries
	maxRequestValues = 8192  // MAX_REQUEST_VALUES: float64 values after a request head (COMBINE)
	maxReplyValues   = 64    // MAX_REPLY_VALUES: float64 values after a reply head
	maxType          = 256   // MAX_TYPE: bytes of an error type name
	maxMessage       = 8192  // MAX_MESSAGE: bytes of a message
	maxTraceback     = 32768 // MAX_TRACEBACK: bytes of a remote traceback

	requestHeadSize = 256                                  // REQUEST_HEAD_SIZE
	maxRequest      = requestHeadSize + 8*maxRequestValues // MAX_REQUEST
	replyHeadSize   = 48                                   // REPLY_HEAD_SIZE
	maxReply        = 65536                                // MAX_REPLY: a receive buffer this large always suffices
	_               = uint(maxReply - (replyHeadSize + 8*maxReplyValues + maxType + maxMessage + maxTraceback))
)

// Byte offsets of the request head's fields (layout.py _REQUEST).
const (
	reqOffMagic     = 0   // magic        REQUEST_MAGIC
	reqOffVersion   = 4   // version      VERSION
	reqOffOp        = 6   // op           Op.*
	reqOffRequestID = 8   // request_id   chosen by the host, echoed in the reply
	reqOffStart     = 16  // start        first element of the data region to read
	reqOffCount     = 24  // count        elements to read (COMBINE: summaries in values)
	reqOffBase      = 32  // base         added to every index written (FLAG: chunk start)
	reqOffDetector  = 40  // detector     row of the detector table; 0 is the default
	reqOffNaNPolicy = 44  // nan_policy   POLICY_*
	reqOffFlags     = 48  // flags        0
	reqOffNParams   = 52  // nparams      entries of params that are set (0..MAX_PARAMS)
	reqOffParams    = 56  // params       8 f64: detector parameters; FLAG: the flag parameters
	reqOffDataName  = 120 // data_name    data segment name, NUL-padded
	reqOffOutName   = 184 // out_name     result segment name, NUL-padded
	reqOffNValues   = 248 // nvalues      float64 values after the head (COMBINE only)
	reqOffReserved  = 252 // reserved     0
)

// Byte offsets of the reply head's fields (layout.py _REPLY).
const (
	repOffMagic        = 0  // magic          REPLY_MAGIC
	repOffVersion      = 4  // version        VERSION
	repOffStatus       = 6  // status         Status code, 0 = OK
	repOffRequestID    = 8  // request_id     copied from the request (0 if unreadable)
	repOffCount        = 16 // count          indices written to the result region
	repOffNeeded       = 24 // needed         indices in the answer (TOO_SMALL: > capacity)
	repOffTypeLen      = 32 // type_len       bytes of the error type name in the text
	repOffMessageLen   = 36 // message_len    bytes of the message after the type
	repOffTracebackLen = 40 // traceback_len  bytes of the remote traceback after the message
	repOffNValues      = 44 // nvalues        float64 values between the head and the text
)

// Operations (LAYOUT.md 2.5; layout.py class Op).
const (
	opDetect    = 1 // DETECT: the whole detector over data[start:start+count] into out
	opPing      = 2 // PING: nothing; answered OK
	opInfo      = 3 // INFO: the worker's facts and the detector table
	opSummarize = 4 // SUMMARIZE: phase 1 of a split call: one chunk's summary (reply values)
	opCombine   = 5 // COMBINE: the chunks' summaries (request values) -> flag parameters
	opFlag      = 6 // FLAG: phase 2: one chunk's indices + base into out
)

var opNames = [...]string{"", "DETECT", "PING", "INFO", "SUMMARIZE", "COMBINE", "FLAG"}

func opUsesData(op uint16) bool { return op == opDetect || op == opSummarize || op == opFlag } // OPS_WITH_DATA
func opUsesOut(op uint16) bool  { return op == opDetect || op == opFlag }                      // OPS_WITH_OUT

// INFO reply values, by position (layout.py INFO_*).
const (
	infoVersion   = 0 // INFO_VERSION: VERSION
	infoWorkers   = 1 // INFO_WORKERS: workers the server (or pool) runs
	infoWorker    = 2 // INFO_WORKER: this worker's index, 0 .. workers-1
	infoPID       = 3 // INFO_PID: this worker's process id (in its own namespace)
	infoNaNPolicy = 4 // INFO_NAN_POLICY: the default nan_policy, as a POLICY_* code
	infoValues    = 5 // INFO_VALUES
)

// The classic detector's summary, by position (layout.py SUMMARY_*).
const (
	summaryN           = 0 // SUMMARY_N: finite values counted
	summaryMean        = 1 // SUMMARY_MEAN: their mean
	summaryM2          = 2 // SUMMARY_M2: sum of squared deviations from that mean
	summaryNonFinite   = 3 // SUMMARY_NONFINITE: NaN and inf values seen
	summaryFirst       = 4 // SUMMARY_FIRST: index (+ base) of the first of them, or -1
	classicSummarySize = 5 // CLASSIC_SUMMARY_SIZE
)

// Splitting a call (LAYOUT.md 5).
const (
	splitMin      = 1 << 18 // SPLIT_MIN: a split-capable call of fewer values runs whole
	splitChunkMin = 1 << 17 // SPLIT_CHUNK_MIN: no chunk is planned smaller than this
)

// canonicalNaN is the bit pattern Python (and C's NAN) writes for NaN;
// math.NaN() has another payload. Requests carry this one.
const canonicalNaN = 0x7FF8000000000000

// Status is a status code, shared by replies and result-segment headers
// (LAYOUT.md section 3). Status values are plain integers, safe to copy and
// compare from any goroutine.
type Status uint16

// Status codes of layout version 2 (layout.py class Status): constants,
// safe to use from any goroutine.
const (
	StatusOK            Status = 0  // OK: success
	StatusBadMessage    Status = 1  // BAD_MESSAGE: wrong size, magic, op, flags, nparams or nvalues
	StatusBadName       Status = 2  // BAD_NAME: a segment name breaks the naming rule
	StatusNoSegment     Status = 3  // NO_SEGMENT: no such segment (never created, or already unlinked)
	StatusNotPermitted  Status = 4  // NOT_PERMITTED: other owner, mode wider than 0600, not a regular file; or a host of another uid
	StatusBadHeader     Status = 5  // BAD_HEADER: header magic/version/kind/size wrong, or capacity > segment
	StatusOutOfRange    Status = 6  // OUT_OF_RANGE: start + count beyond the data segment's count
	StatusTooSmall      Status = 7  // TOO_SMALL: result capacity < needed; count 0, region unspecified
	StatusDetectorError Status = 8  // DETECTOR_ERROR: the detector raised; type, message, traceback follow
	StatusWorkerDied    Status = 9  // WORKER_DIED: the worker died during the call (the host's own verdict)
	StatusNonFinite     Status = 10 // NON_FINITE: NaN/inf under nan_policy raise, or statistics overflow
	StatusBadValue      Status = 11 // BAD_VALUE: a parameter, nan_policy, detector row or COMBINE values count out of range
	StatusTimeout       Status = 12 // TIMEOUT: the call exceeded the server's (or the Client's) time limit
	StatusShuttingDown  Status = 13 // SHUTTING_DOWN: the server is stopping
	StatusInternal      Status = 14 // INTERNAL: a bug in shmpool; the message says where
	StatusBusy          Status = 15 // BUSY: the server holds as many connections as it can
	StatusBadVersion    Status = 16 // BAD_VERSION: the request's version is not this one
)

var statusNames = [...]string{
	"OK", "BAD_MESSAGE", "BAD_NAME", "NO_SEGMENT", "NOT_PERMITTED",
	"BAD_HEADER", "OUT_OF_RANGE", "TOO_SMALL", "DETECTOR_ERROR",
	"WORKER_DIED", "NON_FINITE", "BAD_VALUE", "TIMEOUT", "SHUTTING_DOWN",
	"INTERNAL", "BUSY", "BAD_VERSION",
}

// String returns the name LAYOUT.md gives the code, such as "TOO_SMALL",
// or "STATUS_<n>" for a code it does not define. It is safe to call from
// any goroutine.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "STATUS_" + strconv.Itoa(int(s))
}

// NaNPolicy says what NaN, +Inf and -Inf in the data mean (LAYOUT.md 4.2).
// NaNPolicy values are plain integers, safe to use from any goroutine.
type NaNPolicy uint32

// NaN policies (layout.py POLICY_*): constants, safe to use from any
// goroutine. The zero value leaves the choice to the server, whose default
// is NaNRaise unless it was started otherwise.
const (
	NaNDefault   NaNPolicy = 0 // POLICY_DEFAULT: the server's policy
	NaNPropagate NaNPolicy = 1 // POLICY_PROPAGATE: numpy's arithmetic: any non-finite value -> no outliers
	NaNOmit      NaNPolicy = 2 // POLICY_OMIT: non-finite values are left out and never reported
	NaNRaise     NaNPolicy = 3 // POLICY_RAISE: any non-finite value is an error (StatusNonFinite)
)

// String returns the policy's name as the Python API spells it ("raise",
// "omit", "propagate"), or "default". It is safe to call from any
// goroutine.
func (p NaNPolicy) String() string {
	switch p {
	case NaNDefault:
		return "default"
	case NaNPropagate:
		return "propagate"
	case NaNOmit:
		return "omit"
	case NaNRaise:
		return "raise"
	}
	return "nan_policy_" + strconv.Itoa(int(p))
}

// -- segment header -----------------------------------------------------------

// segmentHeader is the 64-byte header at the start of every segment
// (layout.py SegmentHeader).
type segmentHeader struct {
	Magic      uint32 // 0   magic        SEGMENT_MAGIC
	Version    uint16 // 4   version      VERSION
	Kind       uint16 // 6   kind         KIND_DATA or KIND_RESULT
	HeaderSize uint32 // 8   header_size  HEADER_SIZE
	Flags      uint32 // 12  flags        0
	Capacity   uint64 // 16  capacity     elements the region holds
	Count      uint64 // 24  count        data: elements valid; result: indices written
	Status     uint32 // 32  status       result: Status of the last answer; data: 0
	Needed     uint64 // 40  needed       result: indices the last answer has
}

func newHeader(kind uint16, capacity, count uint64) segmentHeader {
	return segmentHeader{Magic: segmentMagic, Version: Version, Kind: kind,
		HeaderSize: headerSize, Capacity: capacity, Count: count}
}

// encodeHeader writes h into the first 64 bytes of b, zeroing the reserved
// fields (layout.py pack_header).
func encodeHeader(b []byte, h segmentHeader) {
	_ = b[headerSize-1]
	clear(b[:headerSize])
	le := binary.LittleEndian
	le.PutUint32(b[hdrOffMagic:], h.Magic)
	le.PutUint16(b[hdrOffVersion:], h.Version)
	le.PutUint16(b[hdrOffKind:], h.Kind)
	le.PutUint32(b[hdrOffHeaderSize:], h.HeaderSize)
	le.PutUint32(b[hdrOffFlags:], h.Flags)
	le.PutUint64(b[hdrOffCapacity:], h.Capacity)
	le.PutUint64(b[hdrOffCount:], h.Count)
	le.PutUint32(b[hdrOffStatus:], h.Status)
	le.PutUint64(b[hdrOffNeeded:], h.Needed)
}

// decodeHeader reads the first 64 bytes of b without validating them (see
// checkHeader; layout.py unpack_header).
func decodeHeader(b []byte) segmentHeader {
	_ = b[headerSize-1]
	le := binary.LittleEndian
	return segmentHeader{
		Magic:      le.Uint32(b[hdrOffMagic:]),
		Version:    le.Uint16(b[hdrOffVersion:]),
		Kind:       le.Uint16(b[hdrOffKind:]),
		HeaderSize: le.Uint32(b[hdrOffHeaderSize:]),
		Flags:      le.Uint32(b[hdrOffFlags:]),
		Capacity:   le.Uint64(b[hdrOffCapacity:]),
		Count:      le.Uint64(b[hdrOffCount:]),
		Status:     le.Uint32(b[hdrOffStatus:]),
		Needed:     le.Uint64(b[hdrOffNeeded:]),
	}
}

// checkHeader reports why h is unusable as a kind segment of size bytes, in
// the order of LAYOUT.md 1.2, or returns "" when it is sound (layout.py
// check_header).
func checkHeader(h segmentHeader, kind uint16, size int64) string {
	switch {
	case h.Magic != segmentMagic:
		return fmt.Sprintf("bad magic 0x%08x (want 0x%08x)", h.Magic, segmentMagic)
	case h.Version != Version:
		return fmt.Sprintf("segment layout version %d; this reader speaks %d", h.Version, Version)
	case h.Kind != kind:
		return fmt.Sprintf("segment kind %d, expected %d", h.Kind, kind)
	case h.HeaderSize != headerSize || h.Flags != 0:
		return fmt.Sprintf("header_size %d / flags %d not valid in v%d", h.HeaderSize, h.Flags, Version)
	case size < headerSize || h.Capacity > uint64(size-headerSize)/itemSize:
		return fmt.Sprintf("capacity %d does not fit in a segment of %d bytes", h.Capacity, size)
	case kind == kindData && h.Count > h.Capacity:
		return fmt.Sprintf("count %d exceeds capacity %d", h.Count, h.Capacity)
	}
	return ""
}

// validName reports whether name matches shmpool-[A-Za-z0-9_-]{1,55}
// (layout.py valid_name).
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

// -- requests -------------------------------------------------------------------

// request is one request: the 256-byte head and, for COMBINE, its values
// (layout.py Request).
type request struct {
	Op        uint16             // 6   op           opDetect .. opFlag
	RequestID uint64             // 8   request_id   the host's own; echoed in the reply
	Start     uint64             // 16  start        first element of the data region to read
	Count     uint64             // 24  count        elements to read; COMBINE: summaries in Values
	Base      uint64             // 32  base         added to every index written
	Detector  uint32             // 40  detector     row of the detector table
	NaNPolicy NaNPolicy          // 44  nan_policy   POLICY_*
	Flags     uint32             // 48  flags        0 (a decoder refuses anything else)
	NParams   uint32             // 52  nparams      how many of Params are set, 0..8
	Params    [maxParams]float64 // 56  params       slots at or beyond NParams are sent as NaN
	DataName  string             // 120 data_name    data segment name, NUL-padded
	OutName   string             // 184 out_name     result segment name, NUL-padded
	Values    []float64          // 256 values       COMBINE only; nvalues (248) is len(Values)
}

// encodeRequest writes r into b, which must hold requestHeadSize +
// 8*len(r.Values) bytes, and returns the packet's size. It fails only when
// a name does not fit its field or is not NUL-free ASCII, or when there are
// too many parameters or values. NaN parameters are written as the
// canonical NaN. (layout.py pack_request)
func encodeRequest(b []byte, r *request) (int, error) {
	if r.NParams > maxParams {
		return 0, fmt.Errorf("shmpool: %d parameters; the limit is %d", r.NParams, maxParams)
	}
	if len(r.Values) > maxRequestValues {
		return 0, fmt.Errorf("shmpool: %d request values; the limit is %d", len(r.Values), maxRequestValues)
	}
	size := requestHeadSize + 8*len(r.Values)
	b = b[:size]
	le := binary.LittleEndian
	le.PutUint32(b[reqOffMagic:], requestMagic)
	le.PutUint16(b[reqOffVersion:], Version)
	le.PutUint16(b[reqOffOp:], r.Op)
	le.PutUint64(b[reqOffRequestID:], r.RequestID)
	le.PutUint64(b[reqOffStart:], r.Start)
	le.PutUint64(b[reqOffCount:], r.Count)
	le.PutUint64(b[reqOffBase:], r.Base)
	le.PutUint32(b[reqOffDetector:], r.Detector)
	le.PutUint32(b[reqOffNaNPolicy:], uint32(r.NaNPolicy))
	le.PutUint32(b[reqOffFlags:], r.Flags)
	le.PutUint32(b[reqOffNParams:], r.NParams)
	for i := 0; i < maxParams; i++ {
		bits := uint64(canonicalNaN)
		if v := r.Params[i]; uint32(i) < r.NParams && v == v {
			bits = math.Float64bits(v)
		}
		le.PutUint64(b[reqOffParams+8*i:], bits)
	}
	if err := putName(b[reqOffDataName:reqOffDataName+nameSize], r.DataName); err != nil {
		return 0, err
	}
	if err := putName(b[reqOffOutName:reqOffOutName+nameSize], r.OutName); err != nil {
		return 0, err
	}
	le.PutUint32(b[reqOffNValues:], uint32(len(r.Values)))
	le.PutUint32(b[reqOffReserved:], 0)
	for i, v := range r.Values {
		le.PutUint64(b[requestHeadSize+8*i:], math.Float64bits(v))
	}
	return size, nil
}

// putName writes name NUL-padded into the 64-byte field f.
func putName(f []byte, name string) error {
	if len(name) >= nameSize {
		return fmt.Errorf("shmpool: segment name is %d bytes; the limit is %d", len(name), nameSize-1)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == 0 || c >= 0x80 {
			return fmt.Errorf("shmpool: segment name %q is not NUL-free ASCII", name)
		}
	}
	n := copy(f, name)
	clear(f[n:])
	return nil
}

// decodeError is a request a worker refuses (LAYOUT.md 2.6): the status it
// replies with and the request_id the reply carries.
type decodeError struct {
	Status    Status
	RequestID uint64
	Message   string
}

func (e *decodeError) Error() string { return "shmpool: " + e.Message + " (" + e.Status.String() + ")" }

// decodeName splits a NUL-padded name field (layout.py _decode_name).
func decodeName(raw []byte, field string, rid uint64) (string, error) {
	text, pad := raw, []byte(nil)
	for i, c := range raw {
		if c == 0 {
			text, pad = raw[:i], raw[i+1:]
			break
		}
	}
	for _, c := range pad {
		if c != 0 {
			return "", &decodeError{StatusBadName, rid, field + ": bytes after the terminating NUL"}
		}
	}
	for _, c := range text {
		if c >= 0x80 {
			return "", &decodeError{StatusBadName, rid, field + ": not ASCII"}
		}
	}
	return string(text), nil
}

// decodeRequest decodes one request packet and checks it the way a worker
// does, in the order of LAYOUT.md 2.6 steps 1 to 5 (layout.py
// unpack_request); the checks that need the detector table (steps 6 and 7)
// are the fake server's. A refusal is a *decodeError.
func decodeRequest(b []byte) (request, error) {
	le := binary.LittleEndian
	var rid uint64
	if len(b) >= 16 {
		rid = le.Uint64(b[reqOffRequestID:])
	}
	bad := func(s Status, id uint64, format string, args ...any) (request, error) {
		return request{}, &decodeError{s, id, fmt.Sprintf(format, args...)}
	}
	if len(b) < 8 || le.Uint32(b[reqOffMagic:]) != requestMagic {
		return bad(StatusBadMessage, 0, "not a shmpool request (bad magic or under 8 bytes)")
	}
	if v := le.Uint16(b[reqOffVersion:]); v != Version {
		return bad(StatusBadVersion, rid, "request version %d: this worker speaks LAYOUT v%d only", v, Version)
	}
	if len(b) < requestHeadSize {
		return bad(StatusBadMessage, rid, "request is %d bytes; a v%d head is %d", len(b), Version, requestHeadSize)
	}
	r := request{
		Op:        le.Uint16(b[reqOffOp:]),
		RequestID: rid,
		Start:     le.Uint64(b[reqOffStart:]),
		Count:     le.Uint64(b[reqOffCount:]),
		Base:      le.Uint64(b[reqOffBase:]),
		Detector:  le.Uint32(b[reqOffDetector:]),
		NaNPolicy: NaNPolicy(le.Uint32(b[reqOffNaNPolicy:])),
		Flags:     le.Uint32(b[reqOffFlags:]),
		NParams:   le.Uint32(b[reqOffNParams:]),
	}
	nvalues := le.Uint32(b[reqOffNValues:])
	reserved := le.Uint32(b[reqOffReserved:])
	switch {
	case r.Op < opDetect || r.Op > opFlag:
		return bad(StatusBadMessage, rid, "unknown op %d", r.Op)
	case r.Flags != 0 || reserved != 0:
		return bad(StatusBadMessage, rid, "flags %d / reserved %d must be 0", r.Flags, reserved)
	case r.NParams > maxParams:
		return bad(StatusBadMessage, rid, "nparams %d exceeds %d", r.NParams, maxParams)
	case nvalues > maxRequestValues || nvalues != 0 && r.Op != opCombine:
		return bad(StatusBadMessage, rid, "nvalues %d is not allowed for %s (COMBINE only, at most %d)",
			nvalues, opNames[r.Op], maxRequestValues)
	case len(b) != requestHeadSize+8*int(nvalues):
		return bad(StatusBadMessage, rid, "request is %d bytes; its head says %d", len(b), requestHeadSize+8*int(nvalues))
	case r.NaNPolicy > NaNRaise:
		return bad(StatusBadValue, rid, "unknown nan_policy %d", r.NaNPolicy)
	}
	for i := 0; i < maxParams; i++ {
		r.Params[i] = math.Float64frombits(le.Uint64(b[reqOffParams+8*i:]))
	}
	var err error
	if r.DataName, err = decodeName(b[reqOffDataName:reqOffDataName+nameSize], "data_name", rid); err != nil {
		return request{}, err
	}
	if r.OutName, err = decodeName(b[reqOffOutName:reqOffOutName+nameSize], "out_name", rid); err != nil {
		return request{}, err
	}
	if opUsesData(r.Op) && !validName(r.DataName) {
		return bad(StatusBadName, rid, "data_name %q breaks the naming rule shmpool-[A-Za-z0-9_-]{1,55}", r.DataName)
	}
	if opUsesOut(r.Op) && !validName(r.OutName) {
		return bad(StatusBadName, rid, "out_name %q breaks the naming rule shmpool-[A-Za-z0-9_-]{1,55}", r.OutName)
	}
	if nvalues > 0 {
		r.Values = make([]float64, nvalues)
		for i := range r.Values {
			r.Values[i] = math.Float64frombits(le.Uint64(b[requestHeadSize+8*i:]))
		}
	}
	return r, nil
}

// -- replies ----------------------------------------------------------------------

// replyHead is the fixed 48-byte start of a reply (layout.py _REPLY),
// decoded without touching the values or the text.
type replyHead struct {
	Status       Status // 6   status         Status code, 0 = OK
	RequestID    uint64 // 8   request_id     copied from the request (0 if unreadable)
	Count        uint64 // 16  count          indices written to the result region
	Needed       uint64 // 24  needed         indices in the answer (TOO_SMALL: > capacity)
	TypeLen      uint32 // 32  type_len       bytes of the error type name
	MessageLen   uint32 // 36  message_len    bytes of the message
	TracebackLen uint32 // 40  traceback_len  bytes of the remote traceback
	NValues      uint32 // 44  nvalues        float64 values after the head
}

// reply is a whole decoded reply (layout.py Reply).
type reply struct {
	replyHead
	Values    []float64 // 48  values   SUMMARIZE: the summary; COMBINE: flag parameters; INFO: facts
	Type      string    // text: the error type name
	Message   string    // text: the message (INFO: the detector table)
	Traceback string    // text: the worker's formatted traceback
}

// errBadVersionReply marks a reply in another layout version; see
// decodeReplyHead.
var errBadVersionReply = errors.New("shmpool: reply in another layout version")

// decodeReplyHead checks one reply packet (magic, version, the limits of
// nvalues and the text lengths, and that they add up to the packet's size)
// and decodes its head. A reply of another version whose status is
// BAD_VERSION is decoded as far as every version lays it out (status and
// request_id, LAYOUT.md 2.4) and returned with errBadVersionReply.
func decodeReplyHead(b []byte) (replyHead, error) {
	le := binary.LittleEndian
	if len(b) < replyHeadSize {
		if len(b) >= 16 && le.Uint32(b) == replyMagic && le.Uint16(b[repOffVersion:]) != Version &&
			Status(le.Uint16(b[repOffStatus:])) == StatusBadVersion {
			return replyHead{Status: StatusBadVersion, RequestID: le.Uint64(b[repOffRequestID:])}, errBadVersionReply
		}
		return replyHead{}, fmt.Errorf("shmpool: reply is %d bytes; the head alone is %d", len(b), replyHeadSize)
	}
	if len(b) > maxReply {
		return replyHead{}, fmt.Errorf("shmpool: reply is %d bytes; the limit is %d", len(b), maxReply)
	}
	if m := le.Uint32(b[repOffMagic:]); m != replyMagic {
		return replyHead{}, fmt.Errorf("shmpool: bad reply magic 0x%08x", m)
	}
	h := replyHead{
		Status:       Status(le.Uint16(b[repOffStatus:])),
		RequestID:    le.Uint64(b[repOffRequestID:]),
		Count:        le.Uint64(b[repOffCount:]),
		Needed:       le.Uint64(b[repOffNeeded:]),
		TypeLen:      le.Uint32(b[repOffTypeLen:]),
		MessageLen:   le.Uint32(b[repOffMessageLen:]),
		TracebackLen: le.Uint32(b[repOffTracebackLen:]),
		NValues:      le.Uint32(b[repOffNValues:]),
	}
	if v := le.Uint16(b[repOffVersion:]); v != Version {
		if h.Status == StatusBadVersion {
			return replyHead{Status: StatusBadVersion, RequestID: h.RequestID}, errBadVersionReply
		}
		return replyHead{}, fmt.Errorf("shmpool: reply version %d; this host speaks LAYOUT v%d", v, Version)
	}
	if h.NValues > maxReplyValues || h.TypeLen > maxType || h.MessageLen > maxMessage || h.TracebackLen > maxTraceback {
		return replyHead{}, fmt.Errorf("shmpool: reply lengths (values %d, text %d/%d/%d) exceed the limits",
			h.NValues, h.TypeLen, h.MessageLen, h.TracebackLen)
	}
	if replyHeadSize+8*int(h.NValues)+int(h.TypeLen)+int(h.MessageLen)+int(h.TracebackLen) != len(b) {
		return replyHead{}, fmt.Errorf("shmpool: reply lengths (values %d, text %d+%d+%d) do not match its size %d",
			h.NValues, h.TypeLen, h.MessageLen, h.TracebackLen, len(b))
	}
	return h, nil
}

// replyValue returns value i of a reply whose head was checked.
func replyValue(b []byte, i int) float64 {
	return math.Float64frombits(binary.LittleEndian.Uint64(b[replyHeadSize+8*i:]))
}

// replyTexts returns the type, message and traceback of a reply whose head
// was checked. Invalid UTF-8 is replaced by U+FFFD.
func replyTexts(b []byte, h replyHead) (typ, msg, tb string) {
	t := b[replyHeadSize+8*int(h.NValues):]
	return validUTF8(t[:h.TypeLen]), validUTF8(t[h.TypeLen : h.TypeLen+h.MessageLen]),
		validUTF8(t[h.TypeLen+h.MessageLen:])
}

// decodeReply decodes a whole reply (layout.py unpack_reply).
func decodeReply(b []byte) (reply, error) {
	h, err := decodeReplyHead(b)
	if err != nil {
		return reply{replyHead: h}, err
	}
	r := reply{replyHead: h}
	if h.NValues > 0 {
		r.Values = make([]float64, h.NValues)
		for i := range r.Values {
			r.Values[i] = replyValue(b, i)
		}
	}
	r.Type, r.Message, r.Traceback = replyTexts(b, h)
	return r, nil
}

// encodeReply appends the packet for r to dst, cutting the texts to their
// limits as a worker does (type and message keep their start, the traceback
// its end) and the values to 64 (layout.py pack_reply).
func encodeReply(dst []byte, r reply) []byte {
	typ, msg, tb, vals := r.Type, r.Message, r.Traceback, r.Values
	if len(typ) > maxType {
		typ = typ[:maxType]
	}
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	if len(tb) > maxTraceback {
		tb = tb[len(tb)-maxTraceback:]
	}
	if len(vals) > maxReplyValues {
		vals = vals[:maxReplyValues]
	}
	var h [replyHeadSize]byte
	le := binary.LittleEndian
	le.PutUint32(h[repOffMagic:], replyMagic)
	le.PutUint16(h[repOffVersion:], Version)
	le.PutUint16(h[repOffStatus:], uint16(r.Status))
	le.PutUint64(h[repOffRequestID:], r.RequestID)
	le.PutUint64(h[repOffCount:], r.Count)
	le.PutUint64(h[repOffNeeded:], r.Needed)
	le.PutUint32(h[repOffTypeLen:], uint32(len(typ)))
	le.PutUint32(h[repOffMessageLen:], uint32(len(msg)))
	le.PutUint32(h[repOffTracebackLen:], uint32(len(tb)))
	le.PutUint32(h[repOffNValues:], uint32(len(vals)))
	dst = append(dst, h[:]...)
	for _, v := range vals {
		dst = le.AppendUint64(dst, math.Float64bits(v))
	}
	dst = append(dst, typ...)
	dst = append(dst, msg...)
	return append(dst, tb...)
}

// validUTF8 returns b as a string with each byte that is not part of valid
// UTF-8 replaced by U+FFFD.
func validUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// -- the detector table (INFO reply message) -------------------------------------

// Detector is one row of a server's detector table (LAYOUT.md 2.5; layout.py
// DetectorRow): a detector a call may ask for by Options.Detector. Detector
// values are never modified after Dial returns them, so they are safe to
// read from any goroutine.
type Detector struct {
	// Name is "classic" or a "package.module:name" the server loaded.
	Name string
	// Split is true when the row answers SUMMARIZE, COMBINE and FLAG, so a
	// large call can be spread over several workers (LAYOUT.md 5); false
	// when it runs whole on one worker.
	Split bool
	// SummarySize is the float64 values of one chunk's summary (0 unless
	// Split).
	SummarySize int
	// Params are the row's parameters, in the order requests carry them,
	// with the server's defaults.
	Params []Param
}

// Param is one parameter of a Detector: its name and the server's default.
// It is a plain value, safe to copy and read from any goroutine.
type Param struct {
	Name    string
	Default float64
}

// param returns the index of the parameter called name, or -1.
func (d *Detector) param(name string) int {
	for i, p := range d.Params {
		if p.Name == name {
			return i
		}
	}
	return -1
}

// parseTable parses an INFO message: one row per line,
// "<name> <split|whole> <summary_size> [<param>=<default> ...]", row 0
// first (layout.py parse_table, with the checks a host needs: at least one
// row, at most 8 parameters, a split row's summary of 1 to 64 values).
func parseTable(text string) ([]Detector, error) {
	var rows []Detector
	var lines []string
	if text != "" {
		lines = strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	}
	for i, line := range lines {
		words := strings.Fields(line)
		bad := func(why string) ([]Detector, error) {
			return nil, fmt.Errorf("shmpool: detector table line %d %q: %s", i+1, line, why)
		}
		if len(words) < 3 {
			return bad("want <name> <split|whole> <summary_size> [<param>=<default> ...]")
		}
		d := Detector{Name: words[0]}
		switch words[1] {
		case "split":
			d.Split = true
		case "whole":
		default:
			return bad("kind is neither split nor whole")
		}
		size, err := strconv.Atoi(words[2])
		if err != nil || size < 0 || size > maxReplyValues || d.Split && size == 0 {
			return bad("bad summary_size")
		}
		d.SummarySize = size
		if len(words)-3 > maxParams {
			return bad("more than 8 parameters")
		}
		for _, w := range words[3:] {
			name, val, ok := strings.Cut(w, "=")
			if !ok || name == "" {
				return bad("parameter " + strconv.Quote(w) + " is not name=default")
			}
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				return bad("parameter " + strconv.Quote(w) + ": default is not a number")
			}
			if d.param(name) >= 0 {
				return bad("parameter " + name + " repeated")
			}
			d.Params = append(d.Params, Param{name, v})
		}
		rows = append(rows, d)
	}
	if len(rows) == 0 {
		return nil, errors.New("shmpool: the server's detector table is empty")
	}
	return rows, nil
}

// formatTable is the inverse of parseTable (layout.py format_table), for
// the fake server.
func formatTable(rows []Detector) string {
	var b strings.Builder
	for i, r := range rows {
		if i > 0 {
			b.WriteByte('\n')
		}
		kind := "whole"
		if r.Split {
			kind = "split"
		}
		fmt.Fprintf(&b, "%s %s %d", r.Name, kind, r.SummarySize)
		for _, p := range r.Params {
			b.WriteString(" " + p.Name + "=" + pyFloat(p.Default))
		}
	}
	return b.String()
}

// pyFloat formats v as Python's repr(float) does for ordinary values.
func pyFloat(v float64) string {
	s := strconv.FormatFloat(v, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eIN") {
		s += ".0"
	}
	return s
}

// -- splitting a call (LAYOUT.md 5) ------------------------------------------------

// splitCount returns how many chunks a call of n values over lanes
// connections uses (layout.py split_count).
func splitCount(n, lanes int) int {
	if n < splitMin {
		return 1
	}
	return max(1, min(lanes, n/splitChunkMin))
}

// splitBound returns where chunk i of k of a call of n values starts:
// floor(floor(n * i / k) / 8) * 8, and n for i == k (layout.py split).
func splitBound(n, k, i int) int {
	if i >= k {
		return n
	}
	hi, lo := bits.Mul64(uint64(n), uint64(i))
	q, _ := bits.Div64(hi, lo, uint64(k))
	return int(q / 8 * 8)
}
