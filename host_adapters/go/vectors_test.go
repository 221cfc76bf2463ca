package shmpool

// The golden vectors of tests/vectors/v2.txt: every line kind, byte for
// byte, in both directions where there are bytes.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

const vectorsPath = "../../tests/vectors/v2.txt"

type vector struct {
	line   int
	kind   string // header, request, reply, bad_request, table, split, call
	name   string
	fields map[string]string
	raw    []byte // hex=, when the line has it
}

func loadVectors(t testing.TB) []vector {
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
		if h, ok := v.fields["hex"]; ok {
			if v.raw, err = hex.DecodeString(h); err != nil {
				t.Fatalf("%s:%d: hex: %v", vectorsPath, n, err)
			}
		}
		vs = append(vs, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

func (v vector) u64(t testing.TB, k string) uint64 {
	t.Helper()
	x, err := strconv.ParseUint(v.fields[k], 10, 64)
	if err != nil {
		t.Fatalf("line %d: field %s: %v", v.line, k, err)
	}
	return x
}

func (v vector) int(t testing.TB, k string) int {
	t.Helper()
	x, err := strconv.Atoi(v.fields[k])
	if err != nil {
		t.Fatalf("line %d: field %s: %v", v.line, k, err)
	}
	return x
}

func (v vector) f64(t testing.TB, k string) float64 {
	t.Helper()
	x, err := strconv.ParseFloat(v.fields[k], 64)
	if err != nil {
		t.Fatalf("line %d: field %s: %v", v.line, k, err)
	}
	return x
}

// floats parses a comma-separated list of floats ("" is none).
func (v vector) floats(t testing.TB, k string) []float64 {
	t.Helper()
	var out []float64
	for _, s := range strings.Split(v.fields[k], ",") {
		if s == "" {
			continue
		}
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("line %d: field %s: %v", v.line, k, err)
		}
		out = append(out, x)
	}
	return out
}

// hexFloats parses comma-separated little-endian float64 hex ("-" is none).
func (v vector) hexFloats(t testing.TB, k string) []uint64 {
	t.Helper()
	var out []uint64
	if v.fields[k] == "-" {
		return nil
	}
	for _, s := range strings.Split(v.fields[k], ",") {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 8 {
			t.Fatalf("line %d: field %s: %q", v.line, k, s)
		}
		out = append(out, binary.LittleEndian.Uint64(b))
	}
	return out
}

func sameFloat(a, b float64) bool {
	return a == b && math.Signbit(a) == math.Signbit(b) || math.IsNaN(a) && math.IsNaN(b)
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
			case "table":
				testTableVector(t, v)
			case "split":
				testSplitRuleVector(t, v)
			case "call":
				testCallVectorReference(t, v)
			default:
				t.Fatalf("line %d: unknown line kind %q", v.line, v.kind)
			}
		})
	}
	for _, k := range []string{"header", "request", "reply", "bad_request", "table", "split", "call"} {
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
	size, _ := segmentBytes(int(got.Capacity))
	if why := checkHeader(got, got.Kind, int64(size)); why != "" {
		t.Errorf("golden header rejected: %s", why)
	}
}

func testRequestVector(t *testing.T, v vector) {
	params := v.floats(t, "params")
	want := request{
		Op:        uint16(v.u64(t, "op")),
		RequestID: v.u64(t, "request_id"),
		Start:     v.u64(t, "start"),
		Count:     v.u64(t, "count"),
		Base:      v.u64(t, "base"),
		Detector:  uint32(v.u64(t, "detector")),
		NaNPolicy: NaNPolicy(v.u64(t, "nan_policy")),
		NParams:   uint32(len(params)),
		DataName:  v.fields["data_name"],
		OutName:   v.fields["out_name"],
		Values:    v.floats(t, "values"),
	}
	for i := range want.Params {
		want.Params[i] = math.NaN() // Go's NaN: the encoder must write the canonical one
	}
	copy(want.Params[:], params)
	buf := make([]byte, requestHeadSize+8*len(want.Values))
	n, err := encodeRequest(buf, &want)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	if !bytes.Equal(buf[:n], v.raw) {
		t.Errorf("encode:\n got %x\nwant %x", buf[:n], v.raw)
	}
	got, err := decodeRequest(v.raw)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	for i := range got.Params {
		if !sameFloat(got.Params[i], want.Params[i]) {
			t.Errorf("decode params[%d]: got %v want %v", i, got.Params[i], want.Params[i])
		}
	}
	got.Params, want.Params = [maxParams]float64{}, [maxParams]float64{}
	if len(got.Values) == 0 && len(want.Values) == 0 {
		got.Values, want.Values = nil, nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decode:\n got %+v\nwant %+v", got, want)
	}
}

func testReplyVector(t *testing.T, v vector) {
	want := reply{
		Values:    v.floats(t, "values"),
		Type:      v.fields["error_type"],
		Message:   v.fields["message"],
		Traceback: v.fields["traceback"],
	}
	want.Status = Status(v.u64(t, "status"))
	want.RequestID = v.u64(t, "request_id")
	want.Count = v.u64(t, "count")
	want.Needed = v.u64(t, "needed")
	if enc := encodeReply(nil, want); !bytes.Equal(enc, v.raw) {
		t.Errorf("encode:\n got %x\nwant %x", enc, v.raw)
	}
	got, err := decodeReply(v.raw)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	want.TypeLen, want.MessageLen, want.TracebackLen = uint32(len(want.Type)), uint32(len(want.Message)), uint32(len(want.Traceback))
	want.NValues = uint32(len(want.Values))
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decode:\n got %+v\nwant %+v", got, want)
	}
}

// testBadRequestVector: the Go decoder, which follows LAYOUT.md 2.6 as a
// worker does, refuses the packet with the vector's status, and with the
// request_id a worker's reply carries (0 when the packet cannot hold one
// or is not a request).
func testBadRequestVector(t *testing.T, v vector) {
	wantStatus := Status(v.u64(t, "status"))
	_, err := decodeRequest(v.raw)
	var e *decodeError
	if !errors.As(err, &e) {
		t.Fatalf("decode accepted a bad request (err %v)", err)
	}
	if e.Status != wantStatus {
		t.Errorf("status %v (%s), want %v", e.Status, e.Message, wantStatus)
	}
	var wantID uint64
	if len(v.raw) >= 16 && string(v.raw[:4]) == "SHMQ" {
		wantID = binary.LittleEndian.Uint64(v.raw[8:])
	}
	if e.RequestID != wantID {
		t.Errorf("request_id %d, want %d", e.RequestID, wantID)
	}
	if !strings.HasPrefix(e.Error(), "shmpool: ") {
		t.Errorf("error text %q lacks the shmpool: prefix", e.Error())
	}
}

func testTableVector(t *testing.T, v vector) {
	rows, err := parseTable(string(v.raw))
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Split(v.fields["names"], ",")
	splits := strings.Split(v.fields["split"], ",")
	sizes := strings.Split(v.fields["sizes"], ",")
	params := strings.Split(v.fields["params"], ";") // "a=1;b=2;" is three rows, the last without parameters
	if len(rows) != len(names) || len(params) != len(names) {
		t.Fatalf("%d rows (%+v), want %d", len(rows), rows, len(names))
	}
	for i, r := range rows {
		var ps []string
		for _, p := range r.Params {
			ps = append(ps, p.Name+"="+pyFloat(p.Default))
		}
		if r.Name != names[i] || (splits[i] == "1") != r.Split || strconv.Itoa(r.SummarySize) != sizes[i] ||
			strings.Join(ps, ",") != params[i] {
			t.Errorf("row %d: %+v, want %s %s %s %s", i, r, names[i], splits[i], sizes[i], params[i])
		}
	}
	if got := formatTable(rows); got != string(v.raw) {
		t.Errorf("formatTable:\n got %q\nwant %q", got, v.raw)
	}
}

func testSplitRuleVector(t *testing.T, v vector) {
	n, lanes, k := v.int(t, "n"), v.int(t, "lanes"), v.int(t, "k")
	if got := splitCount(n, lanes); got != k {
		t.Errorf("splitCount(%d, %d) = %d, want %d", n, lanes, got, k)
	}
	var b []string
	for i := 0; i < k; i++ {
		b = append(b, strconv.Itoa(splitBound(n, k, i))+":"+strconv.Itoa(splitBound(n, k, i+1)))
	}
	if got := strings.Join(b, ","); got != v.fields["bounds"] {
		t.Errorf("bounds\n got %s\nwant %s", got, v.fields["bounds"])
	}
}

// callVector is one `call` line.
type callVector struct {
	name          string
	n, every, nan int
	seed          uint64
	lanes, k      int
	threshold     float64
	policy        NaNPolicy
	summaries     []uint64
	flag          []uint64
	status        Status
	count         int
	fnv           uint64
	head          string
	x             []float64 // made on demand
}

func parseCallVector(t testing.TB, v vector) *callVector {
	return &callVector{
		name: v.name, n: v.int(t, "n"), seed: v.u64(t, "seed"), every: v.int(t, "every"),
		nan: v.int(t, "nan_at"), lanes: v.int(t, "lanes"), k: v.int(t, "k"),
		threshold: v.f64(t, "threshold"), policy: NaNPolicy(v.u64(t, "policy")),
		summaries: v.hexFloats(t, "summaries"), flag: v.hexFloats(t, "flag"),
		status: Status(v.u64(t, "status")), count: v.int(t, "count"), fnv: v.u64(t, "fnv"),
		head: v.fields["head"],
	}
}

func (cv *callVector) data() []float64 {
	if cv.x == nil {
		cv.x = splitmix(cv.n, cv.seed, cv.every, cv.nan)
	}
	return cv.x
}

// check compares an answer with the vector's.
func (cv *callVector) check(t testing.TB, what string, idx []int, err error) {
	t.Helper()
	if cv.status != StatusOK {
		var e *Error
		if !errors.As(err, &e) || e.Status != cv.status {
			t.Errorf("%s %s: %v, want status %v", cv.name, what, err, cv.status)
		}
		return
	}
	if err != nil {
		t.Errorf("%s %s: %v", cv.name, what, err)
		return
	}
	var head []string
	for _, i := range idx[:min(5, len(idx))] {
		head = append(head, strconv.Itoa(i))
	}
	h := strings.Join(head, ",")
	if h == "" {
		h = "-"
	}
	if len(idx) != cv.count || fnv1a(idx) != cv.fnv || h != cv.head {
		t.Errorf("%s %s: %d indices, fnv %d, head %s; want %d, %d, %s", cv.name, what,
			len(idx), fnv1a(idx), h, cv.count, cv.fnv, cv.head)
	}
}

// testCallVectorReference holds the Go reference detector (the fake
// server's) to the vector's chunk summaries, flag parameters and answer,
// bit for bit, and the split rule to its k.
func testCallVectorReference(t *testing.T, v vector) {
	cv := parseCallVector(t, v)
	if k := splitCount(cv.n, cv.lanes); k != cv.k {
		t.Fatalf("splitCount(%d, %d) = %d, want %d", cv.n, cv.lanes, k, cv.k)
	}
	x := cv.data()
	policy := cv.policy
	if policy == NaNDefault {
		policy = NaNRaise
	}
	var sums [][]float64
	var bitsGot []uint64
	for i := 0; i < cv.k; i++ {
		a, b := splitBound(cv.n, cv.k, i), splitBound(cv.n, cv.k, i+1)
		s := refChunkStats(x[a:b], policy, a).summary()
		sums = append(sums, s)
		for _, f := range s {
			bitsGot = append(bitsGot, math.Float64bits(f))
		}
	}
	if !reflect.DeepEqual(bitsGot, cv.summaries) {
		t.Errorf("summaries\n got %x\nwant %x", bitsGot, cv.summaries)
	}
	mean, cut, ok, st := refLimits(refCombine(sums), cv.threshold, policy)
	if st != cv.status {
		t.Errorf("combine status %v, want %v", st, cv.status)
	}
	var flagGot []uint64
	if ok {
		flagGot = []uint64{math.Float64bits(mean), math.Float64bits(cut)}
	}
	if !reflect.DeepEqual(flagGot, cv.flag) {
		t.Errorf("flag parameters %x, want %x", flagGot, cv.flag)
	}
	idx, st := refSplit(x, cv.k, cv.threshold, policy)
	var err error
	if st != StatusOK {
		err = &Error{Status: st}
	}
	cv.check(t, "reference", idx, err)
}
