package shmpool

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
)

const vectorsPath = "../../tests/vectors/v1.txt"

type vector struct {
	line   int
	kind   string // header, request, reply, bad_request
	name   string
	fields map[string]string
	raw    []byte
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	f, err := os.Open(vectorsPath)
	if err != nil {
		t.Fatalf("golden vectors: %v", err)
	}
	defer f.Close()
	var vs []vector
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Fields(line)
		if len(parts) < 3 {
			t.Fatalf("%s:%d: malformed line", vectorsPath, n)
		}
		v := vector{line: n, kind: parts[0], name: parts[1], fields: map[string]string{}}
		for _, p := range parts[2:] {
			k, val, ok := strings.Cut(p, "=")
			if !ok {
				t.Fatalf("%s:%d: field %q has no '='", vectorsPath, n, p)
			}
			v.fields[k] = val
		}
		if v.raw, err = hex.DecodeString(v.fields["hex"]); err != nil {
			t.Fatalf("%s:%d: hex: %v", vectorsPath, n, err)
		}
		vs = append(vs, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

func (v vector) u64(t *testing.T, k string) uint64 {
	t.Helper()
	x, err := strconv.ParseUint(v.fields[k], 10, 64)
	if err != nil {
		t.Fatalf("line %d: field %s: %v", v.line, k, err)
	}
	return x
}

func (v vector) f64(t *testing.T, k string) float64 {
	t.Helper()
	x, err := strconv.ParseFloat(v.fields[k], 64)
	if err != nil {
		t.Fatalf("line %d: field %s: %v", v.line, k, err)
	}
	return x
}

func sameFloat(a, b float64) bool {
	return a == b || math.IsNaN(a) && math.IsNaN(b)
}

func TestVectors(t *testing.T) {
	counts := map[string]int{}
	for _, v := range loadVectors(t) {
		counts[v.kind]++
		t.Run(v.kind+"/"+v.name, func(t *testing.T) {
			switch v.kind {
			case "header":
				testHeaderVector(t, v)
			case "request":
				testRequestVector(t, v)
			case "reply":
				testReplyVector(t, v)
			case "bad_request":
				testBadRequestVector(t, v)
			default:
				t.Fatalf("line %d: unknown struct %q", v.line, v.kind)
			}
		})
	}
	for _, k := range []string{"header", "request", "reply", "bad_request"} {
		if counts[k] == 0 {
			t.Errorf("no %s vectors in %s", k, vectorsPath)
		}
	}
}

func testHeaderVector(t *testing.T, v vector) {
	want := newHeader(uint16(v.u64(t, "kind")), v.u64(t, "capacity"), v.u64(t, "count"))
	want.Status = uint32(v.u64(t, "status"))
	want.Needed = v.u64(t, "needed")

	got := decodeHeader(v.raw)
	if got != want {
		t.Errorf("decode:\n got %+v\nwant %+v", got, want)
	}
	buf := bytes.Repeat([]byte{0xAA}, headerSize) // encode must zero the reserved bytes
	encodeHeader(buf, want)
	if !bytes.Equal(buf, v.raw) {
		t.Errorf("encode:\n got %x\nwant %x", buf, v.raw)
	}
	if why := checkHeader(got, got.Kind, int64(segmentSizeOrPanic(int(got.Capacity)))); why != "" {
		t.Errorf("golden header rejected: %s", why)
	}
}

func segmentSizeOrPanic(capacity int) int {
	n, err := segmentBytes(capacity)
	if err != nil {
		panic(err)
	}
	return n
}

func testRequestVector(t *testing.T, v vector) {
	want := request{
		Op:        uint16(v.u64(t, "op")),
		RequestID: v.u64(t, "request_id"),
		Start:     v.u64(t, "start"),
		Count:     v.u64(t, "count"),
		Threshold: v.f64(t, "threshold"),
		NaNPolicy: NaNPolicy(v.u64(t, "nan_policy")),
		DataName:  v.fields["data_name"],
		OutName:   v.fields["out_name"],
	}
	got, err := decodeRequest(v.raw)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !sameFloat(got.Threshold, want.Threshold) {
		t.Errorf("decode threshold: got %v want %v", got.Threshold, want.Threshold)
	}
	got.Threshold, want.Threshold = 0, 0
	if got != want {
		t.Errorf("decode:\n got %+v\nwant %+v", got, want)
	}
	want.Threshold = v.f64(t, "threshold")
	if math.IsNaN(want.Threshold) {
		want.Threshold = math.NaN() // Go's NaN has another payload; the encoder must canonicalize it
	}
	enc, err := encodeRequest(nil, want)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	if !bytes.Equal(enc, v.raw) {
		t.Errorf("encode:\n got %x\nwant %x", enc, v.raw)
	}
}

func testReplyVector(t *testing.T, v vector) {
	want := reply{
		Status:    Status(v.u64(t, "status")),
		RequestID: v.u64(t, "request_id"),
		Count:     v.u64(t, "count"),
		Needed:    v.u64(t, "needed"),
		Type:      v.fields["error_type"],
		Message:   v.fields["message"],
		Traceback: v.fields["traceback"],
	}
	got, err := decodeReply(v.raw)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if got != want {
		t.Errorf("decode:\n got %+v\nwant %+v", got, want)
	}
	if enc := encodeReply(nil, want); !bytes.Equal(enc, v.raw) {
		t.Errorf("encode:\n got %x\nwant %x", enc, v.raw)
	}
}

func testBadRequestVector(t *testing.T, v vector) {
	wantStatus := Status(v.u64(t, "status"))
	_, err := decodeRequest(v.raw)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("decode accepted a bad request (err %v)", err)
	}
	if e.Status != wantStatus {
		t.Errorf("status %v (%s), want %v", e.Status, e.Message, wantStatus)
	}
	// The reply echoes request_id unless the packet could not carry one
	// (wrong size) or is not a request at all (wrong magic).
	var wantID uint64
	if len(v.raw) == requestSize && string(v.raw[:4]) == "SHMQ" {
		wantID = 42
	}
	if e.RequestID != wantID {
		t.Errorf("request_id %d, want %d", e.RequestID, wantID)
	}
	if !strings.HasPrefix(e.Error(), "shmpool: ") {
		t.Errorf("error text %q lacks the shmpool: prefix", e.Error())
	}
}
