package shmpool

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestStatusString(t *testing.T) {
	if s := StatusNonFinite.String(); s != "NON_FINITE" {
		t.Errorf("StatusNonFinite = %q", s)
	}
	if s := StatusInternal.String(); s != "INTERNAL" {
		t.Errorf("StatusInternal = %q", s)
	}
	if s := Status(99).String(); s != "STATUS_99" {
		t.Errorf("Status(99) = %q", s)
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"shmpool-a":                           true,
		"shmpool-1234-5678-00112233aabbccdd":  true,
		"shmpool-" + strings.Repeat("x", 55):  true,
		"shmpool-" + strings.Repeat("x", 56):  false,
		"shmpool-":                            false,
		"shmpool-a.b":                         false,
		"shmpool-../etc":                      false,
		"shmpool-a/b":                         false,
		"psm_1234":                            false,
		"SHMPOOL-a":                           false,
		"shmpool-é":                           false,
		"shmpool-A_Z-09":                      true,
		"xshmpool-a":                          false,
		"shmpool-1234-5678-00112233aabbccdd ": false,
	} {
		if got := validName(name); got != want {
			t.Errorf("validName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestCheckHeader(t *testing.T) {
	good := newHeader(kindData, 10, 10)
	size := int64(headerSize + 8*10)
	if why := checkHeader(good, kindData, size); why != "" {
		t.Fatalf("good header rejected: %s", why)
	}
	if why := checkHeader(good, kindData, size+4000); why != "" {
		t.Fatalf("page-rounded segment rejected: %s", why)
	}
	for _, tc := range []struct {
		name string
		edit func(*segmentHeader)
		kind uint16
		size int64
		want string
	}{
		{"magic", func(h *segmentHeader) { h.Magic = 0 }, kindData, size, "magic"},
		{"version", func(h *segmentHeader) { h.Version = 2 }, kindData, size, "version"},
		{"kind", func(h *segmentHeader) {}, kindResult, size, "kind"},
		{"header_size", func(h *segmentHeader) { h.HeaderSize = 128 }, kindData, size, "header_size"},
		{"flags", func(h *segmentHeader) { h.Flags = 1 }, kindData, size, "flags"},
		{"capacity", func(h *segmentHeader) {}, kindData, size - 1, "capacity"},
		{"tiny file", func(h *segmentHeader) { h.Capacity, h.Count = 0, 0 }, kindData, 63, "capacity"},
		{"huge capacity", func(h *segmentHeader) { h.Capacity = math.MaxUint64 }, kindData, size, "capacity"},
		{"count", func(h *segmentHeader) { h.Count = 11 }, kindData, size, "count"},
		// The magic is checked first even when everything else is wrong too.
		{"order", func(h *segmentHeader) { h.Magic, h.Version, h.Count = 1, 9, 99 }, kindResult, 0, "magic"},
	} {
		h := good
		tc.edit(&h)
		if why := checkHeader(h, tc.kind, tc.size); !strings.Contains(why, tc.want) {
			t.Errorf("%s: checkHeader = %q, want it to mention %q", tc.name, why, tc.want)
		}
	}
	// A result segment may report count > capacity only via needed; count is
	// not checked for results (the worker writes it).
	r := newHeader(kindResult, 4, 0)
	r.Needed, r.Status = 9, uint32(StatusTooSmall)
	if why := checkHeader(r, kindResult, headerSize+32); why != "" {
		t.Errorf("result header rejected: %s", why)
	}
}

func TestParseStartTime(t *testing.T) {
	rest := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456 20 21 22\n"
	for _, comm := range []string{"(go)", "(a b c)", "(x) (y) S 9 9)", "())", "(()"} {
		got, err := parseStartTime("4242 " + comm + rest)
		if err != nil || got != 123456 {
			t.Errorf("comm %s: got %d, %v; want 123456", comm, got, err)
		}
	}
	for _, bad := range []string{"", "4242 go S 1", "1 (x) S 1 2 3", "1 (x)" + strings.Replace(rest, "123456", "12x", 1)} {
		if _, err := parseStartTime(bad); err == nil {
			t.Errorf("parseStartTime(%q) succeeded", bad)
		}
	}
}

func TestEncodeRequestRejectsBadNames(t *testing.T) {
	for _, name := range []string{strings.Repeat("a", 64), "shmpool-\x00x", "shmpool-é"} {
		if _, err := encodeRequest(nil, request{Op: opDetect, DataName: name, OutName: "shmpool-a"}); err == nil {
			t.Errorf("encodeRequest accepted data name %q", name)
		}
	}
	if _, err := encodeRequest(nil, request{Op: opDetect, DataName: strings.Repeat("a", 63)}); err != nil {
		t.Errorf("63-byte name refused: %v", err)
	}
}

func TestDecodeRequestNames(t *testing.T) {
	base := request{Op: opDetect, RequestID: 5, Count: 1, Threshold: 2,
		DataName: "shmpool-d", OutName: "shmpool-o"}
	raw, err := encodeRequest(nil, base)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeRequest(raw); err != nil {
		t.Fatalf("good request refused: %v", err)
	}
	// A 64-byte name with no NUL at all.
	b := append([]byte(nil), raw...)
	copy(b[48:112], "shmpool-"+strings.Repeat("x", 56))
	wantStatus(t, "no NUL", b, StatusBadName)
	// Non-ASCII bytes.
	b = append([]byte(nil), raw...)
	b[50] = 0xC3
	wantStatus(t, "non-ASCII", b, StatusBadName)
	// PING ignores the names as long as they are well formed fields.
	p, _ := encodeRequest(nil, request{Op: opPing, RequestID: 1})
	if _, err := decodeRequest(p); err != nil {
		t.Errorf("ping refused: %v", err)
	}
	// Policy is checked before the threshold, the threshold before names.
	b = append([]byte(nil), raw...)
	binary.LittleEndian.PutUint32(b[40:], 7)
	binary.LittleEndian.PutUint64(b[32:], math.Float64bits(-1))
	copy(b[48:], "bad")
	wantStatus(t, "order", b, StatusBadValue)
	// NaN thresholds of any payload mean "default".
	b = append([]byte(nil), raw...)
	binary.LittleEndian.PutUint64(b[32:], math.Float64bits(math.NaN()))
	if _, err := decodeRequest(b); err != nil {
		t.Errorf("NaN threshold refused: %v", err)
	}
	b = append([]byte(nil), raw...)
	binary.LittleEndian.PutUint64(b[32:], math.Float64bits(math.Copysign(0, -1)))
	if _, err := decodeRequest(b); err != nil {
		t.Errorf("-0 threshold refused: %v", err)
	}
}

func wantStatus(t *testing.T, what string, b []byte, s Status) {
	t.Helper()
	_, err := decodeRequest(b)
	var e *Error
	if !errors.As(err, &e) || e.Status != s {
		t.Errorf("%s: decodeRequest error %v, want status %v", what, err, s)
	}
}

func TestDecodeReplyDefensive(t *testing.T) {
	ok := encodeReply(nil, reply{Status: StatusDetectorError, RequestID: 3, Type: "ValueError", Message: "boom", Traceback: "tb"})
	if r, err := decodeReply(ok); err != nil || r.Type != "ValueError" || r.Message != "boom" || r.Traceback != "tb" {
		t.Fatalf("decodeReply = %+v, %v", r, err)
	}
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), ok...)) }
	for name, b := range map[string][]byte{
		"empty":       nil,
		"short head":  ok[:47],
		"magic":       mut(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version":     mut(func(b []byte) []byte { b[4] = 2; return b }),
		"extra byte":  mut(func(b []byte) []byte { return append(b, 0) }),
		"missing":     ok[:len(ok)-1],
		"type_len":    mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[32:], 1<<31); return b }),
		"huge texts":  mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[40:], maxTraceback+1); return b }),
		"wrap around": mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[36:], math.MaxUint32); return b }),
	} {
		if _, err := decodeReply(b); err == nil {
			t.Errorf("%s: decodeReply accepted a bad reply", name)
		} else if !strings.HasPrefix(err.Error(), "shmpool: ") {
			t.Errorf("%s: error %q lacks the prefix", name, err)
		}
	}
	// Texts beyond their limits are cut as the server cuts them.
	long := encodeReply(nil, reply{Status: StatusDetectorError, Type: strings.Repeat("T", 300),
		Message: strings.Repeat("m", 9000), Traceback: "start" + strings.Repeat("t", 40000) + "end"})
	r, err := decodeReply(long)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Type) != maxType || len(r.Message) != maxMessage || len(r.Traceback) != maxTraceback ||
		!strings.HasSuffix(r.Traceback, "end") {
		t.Errorf("truncation: %d %d %d", len(r.Type), len(r.Message), len(r.Traceback))
	}
	// Invalid UTF-8 is replaced, not passed on.
	bad := encodeReply(nil, reply{Status: StatusDetectorError, Message: "a\xffb"})
	if r, _ := decodeReply(bad); r.Message != "a\uFFFDb" {
		t.Errorf("invalid UTF-8 decoded as %q", r.Message)
	}
}

func TestErrorText(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{Status: StatusNonFinite, Type: "NonFiniteError", Message: "2 non-finite values"},
			"shmpool: NonFiniteError: 2 non-finite values (NON_FINITE)"},
		{Error{Status: StatusTooSmall, Needed: 9}, "shmpool: the answer has 9 indices, more than the result holds (TOO_SMALL)"},
		{Error{Status: StatusBadName, Message: "x"}, "shmpool: x (BAD_NAME)"},
		{Error{Status: StatusWorkerDied}, "shmpool: server replied (WORKER_DIED)"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}
