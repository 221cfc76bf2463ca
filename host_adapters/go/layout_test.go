package shmpool

// layout.go mirrors shmpool/layout.py. These tests parse layout.py itself
// (no Python needed) and hold every integer constant, every struct field's
// offset and size, and every op and status code equal to Go's.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const layoutPy = "../../shmpool/layout.py"

// goConstants maps layout.py's names to Go's values. Every integer
// constant layout.py defines at top level must be here.
var goConstants = map[string]int64{
	"VERSION":              Version,
	"SEGMENT_MAGIC":        segmentMagic,
	"KIND_DATA":            kindData,
	"KIND_RESULT":          kindResult,
	"HEADER_SIZE":          headerSize,
	"ITEM_SIZE":            itemSize,
	"OFF_COUNT":            hdrOffCount,
	"OFF_STATUS":           hdrOffStatus,
	"OFF_NEEDED":           hdrOffNeeded,
	"NAME_SIZE":            nameSize,
	"REQUEST_MAGIC":        requestMagic,
	"REPLY_MAGIC":          replyMagic,
	"POLICY_DEFAULT":       int64(NaNDefault),
	"POLICY_PROPAGATE":     int64(NaNPropagate),
	"POLICY_OMIT":          int64(NaNOmit),
	"POLICY_RAISE":         int64(NaNRaise),
	"MAX_PARAMS":           maxParams,
	"MAX_REQUEST_VALUES":   maxRequestValues,
	"MAX_REPLY_VALUES":     maxReplyValues,
	"MAX_TYPE":             maxType,
	"MAX_MESSAGE":          maxMessage,
	"MAX_TRACEBACK":        maxTraceback,
	"REQUEST_HEAD_SIZE":    requestHeadSize,
	"MAX_REQUEST":          maxRequest,
	"REPLY_HEAD_SIZE":      replyHeadSize,
	"MAX_REPLY":            maxReply,
	"INFO_VERSION":         infoVersion,
	"INFO_WORKERS":         infoWorkers,
	"INFO_WORKER":          infoWorker,
	"INFO_PID":             infoPID,
	"INFO_NAN_POLICY":      infoNaNPolicy,
	"INFO_VALUES":          infoValues,
	"SUMMARY_N":            summaryN,
	"SUMMARY_MEAN":         summaryMean,
	"SUMMARY_M2":           summaryM2,
	"SUMMARY_NONFINITE":    summaryNonFinite,
	"SUMMARY_FIRST":        summaryFirst,
	"CLASSIC_SUMMARY_SIZE": classicSummarySize,
	"SPLIT_MIN":            splitMin,
	"SPLIT_CHUNK_MIN":      splitChunkMin,
}

// goStructs are Go's field offsets, by layout.py's struct and field names.
var goStructs = map[string][]pyField{
	"_HEADER": {
		{"magic", hdrOffMagic, 4}, {"version", hdrOffVersion, 2}, {"kind", hdrOffKind, 2},
		{"header_size", hdrOffHeaderSize, 4}, {"flags", hdrOffFlags, 4}, {"capacity", hdrOffCapacity, 8},
		{"count", hdrOffCount, 8}, {"status", hdrOffStatus, 4}, {"reserved", hdrOffReserved, 4},
		{"needed", hdrOffNeeded, 8}, {"reserved", hdrOffReserved2, headerSize - hdrOffReserved2},
	},
	"_REQUEST": {
		{"magic", reqOffMagic, 4}, {"version", reqOffVersion, 2}, {"op", reqOffOp, 2},
		{"request_id", reqOffRequestID, 8}, {"start", reqOffStart, 8}, {"count", reqOffCount, 8},
		{"base", reqOffBase, 8}, {"detector", reqOffDetector, 4}, {"nan_policy", reqOffNaNPolicy, 4},
		{"flags", reqOffFlags, 4}, {"nparams", reqOffNParams, 4}, {"params", reqOffParams, 8 * maxParams},
		{"data_name", reqOffDataName, nameSize}, {"out_name", reqOffOutName, nameSize},
		{"nvalues", reqOffNValues, 4}, {"reserved", reqOffReserved, 4},
	},
	"_REPLY": {
		{"magic", repOffMagic, 4}, {"version", repOffVersion, 2}, {"status", repOffStatus, 2},
		{"request_id", repOffRequestID, 8}, {"count", repOffCount, 8}, {"needed", repOffNeeded, 8},
		{"type_len", repOffTypeLen, 4}, {"message_len", repOffMessageLen, 4},
		{"traceback_len", repOffTracebackLen, 4}, {"nvalues", repOffNValues, 4},
	},
}

type pyField struct {
	name         string
	offset, size int
}

// pyLayout is what layoutPy says.
type pyLayout struct {
	consts  map[string]int64
	classes map[string]map[string]int64 // class Op, class Status: NAME = int
	structs map[string][]pyField
}

var (
	pyConstRE  = regexp.MustCompile(`^([A-Z][A-Z0-9_]*)\s*=\s*([^#]+?)\s*(#.*)?$`)
	pyAssertRE = regexp.MustCompile(`^assert ([A-Z][A-Z0-9_]*) == (\d+)$`)
	pyClassRE  = regexp.MustCompile(`^class (\w+)`)
	pyMemberRE = regexp.MustCompile(`^    ([A-Z][A-Z0-9_]*) = (\d+)\b`)
	pyStructRE = regexp.MustCompile(`^(_[A-Z]+) = struct\.Struct\($`)
	pyFieldRE  = regexp.MustCompile(`^\s*"(\d*)([a-zA-Z])"\s*#\s*(\d+)\s+(\w+)`)
)

func parseLayoutPy(t *testing.T) pyLayout {
	t.Helper()
	f, err := os.Open(layoutPy)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	py := pyLayout{consts: map[string]int64{}, classes: map[string]map[string]int64{}, structs: map[string][]pyField{}}
	class, strct := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := pyClassRE.FindStringSubmatch(line); m != nil {
			class = m[1]
			py.classes[class] = map[string]int64{}
			continue
		}
		if line != "" && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			class = ""
		}
		if m := pyMemberRE.FindStringSubmatch(line); m != nil && class != "" {
			v, _ := strconv.ParseInt(m[2], 10, 64)
			py.classes[class][m[1]] = v
			continue
		}
		if m := pyStructRE.FindStringSubmatch(line); m != nil {
			strct = m[1]
			continue
		}
		if strct != "" {
			if strings.HasPrefix(line, ")") {
				strct = ""
				continue
			}
			if m := pyFieldRE.FindStringSubmatch(line); m != nil {
				count := 1
				if m[1] != "" {
					count, _ = strconv.Atoi(m[1])
				}
				size := map[string]int{"I": 4, "H": 2, "Q": 8, "d": 8, "i": 4, "s": 1, "x": 1}[m[2]] * count
				off, _ := strconv.Atoi(m[3])
				py.structs[strct] = append(py.structs[strct], pyField{m[4], off, size})
			}
			continue
		}
		if m := pyAssertRE.FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseInt(m[2], 10, 64)
			if old, ok := py.consts[m[1]]; ok && old != v {
				t.Errorf("layout.py: %s = %d but asserted %d", m[1], old, v)
			}
			py.consts[m[1]] = v
			continue
		}
		if m := pyConstRE.FindStringSubmatch(line); m != nil {
			if v, ok := evalPy(m[2], py.consts); ok {
				py.consts[m[1]] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return py
}

// evalPy evaluates an integer expression of layout.py: literals, names
// already defined, + - * << and parentheses. ok is false for anything
// else (strings, regexes, calls, tuples...).
func evalPy(expr string, names map[string]int64) (v int64, ok bool) {
	toks := regexp.MustCompile(`0[xX][0-9a-fA-F]+|\d+|[A-Za-z_]\w*|<<|[-+*()]|\S`).FindAllString(expr, -1)
	pos := 0
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	var sum, prod, shift, atom func() int64
	next := func() string {
		if pos < len(toks) {
			return toks[pos]
		}
		return ""
	}
	atom = func() int64 {
		tok := next()
		pos++
		switch {
		case tok == "(":
			x := shift()
			if next() != ")" {
				panic("no )")
			}
			pos++
			return x
		case tok == "-":
			return -atom()
		case strings.HasPrefix(tok, "0x") || strings.HasPrefix(tok, "0X"):
			x, err := strconv.ParseInt(tok[2:], 16, 64)
			if err != nil {
				panic(err)
			}
			return x
		case tok != "" && tok[0] >= '0' && tok[0] <= '9':
			x, err := strconv.ParseInt(tok, 10, 64)
			if err != nil {
				panic(err)
			}
			return x
		}
		if x, ok := names[tok]; ok {
			return x
		}
		panic("unknown " + tok)
	}
	prod = func() int64 {
		x := atom()
		for next() == "*" {
			pos++
			x *= atom()
		}
		return x
	}
	sum = func() int64 {
		x := prod()
		for next() == "+" || next() == "-" {
			op := next()
			pos++
			if op == "+" {
				x += prod()
			} else {
				x -= prod()
			}
		}
		return x
	}
	shift = func() int64 {
		x := sum()
		for next() == "<<" {
			pos++
			x <<= sum()
		}
		return x
	}
	v = shift()
	return v, pos == len(toks)
}

func TestLayoutMirrorsLayoutPy(t *testing.T) {
	py := parseLayoutPy(t)
	t.Logf("layout.py: %d constants, %d status codes, %d ops, structs %d/%d/%d fields", len(py.consts),
		len(py.classes["Status"]), len(py.classes["Op"]), len(py.structs["_HEADER"]), len(py.structs["_REQUEST"]),
		len(py.structs["_REPLY"]))
	if len(py.consts) < 30 {
		t.Fatalf("parsed only %d constants from %s: %v", len(py.consts), layoutPy, py.consts)
	}
	for name, v := range py.consts {
		g, ok := goConstants[name]
		switch {
		case !ok:
			t.Errorf("layout.py's %s = %d has no Go counterpart in goConstants", name, v)
		case g != v:
			t.Errorf("%s: layout.py %d (0x%x), Go %d (0x%x)", name, v, v, g, g)
		}
	}
	for name := range goConstants {
		if _, ok := py.consts[name]; !ok {
			t.Errorf("Go mirrors %s, which layout.py does not define (renamed?)", name)
		}
	}
	for name, want := range goStructs {
		got := py.structs[name]
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s fields:\n layout.py %v\n Go        %v", name, got, want)
		}
		end := 0
		for _, f := range got {
			if f.offset != end {
				t.Errorf("%s.%s at %d; the previous field ends at %d", name, f.name, f.offset, end)
			}
			end = f.offset + f.size
		}
		size := map[string]int{"_HEADER": headerSize, "_REQUEST": requestHeadSize, "_REPLY": replyHeadSize}[name]
		if end != size {
			t.Errorf("%s: fields end at %d, size %d", name, end, size)
		}
	}
	status := py.classes["Status"]
	if len(status) != len(statusNames) {
		t.Errorf("layout.py has %d status codes, Go %d", len(status), len(statusNames))
	}
	for name, code := range status {
		if got := Status(code).String(); got != name {
			t.Errorf("status %d: layout.py %s, Go %s", code, name, got)
		}
	}
	ops := py.classes["Op"]
	if len(ops) != len(opNames)-1 {
		t.Errorf("layout.py has %d ops, Go %d", len(ops), len(opNames)-1)
	}
	for name, code := range ops {
		if code < 1 || int(code) >= len(opNames) || opNames[code] != name {
			t.Errorf("op %d: layout.py %s, Go %q", code, name, opNames[min(max(code, 0), int64(len(opNames)-1))])
		}
	}
	for name, code := range map[string]uint16{"DETECT": opDetect, "PING": opPing, "INFO": opInfo,
		"SUMMARIZE": opSummarize, "COMBINE": opCombine, "FLAG": opFlag} {
		if ops[name] != int64(code) {
			t.Errorf("op %s: layout.py %d, Go %d", name, ops[name], code)
		}
	}
	if !strings.Contains(string(must(os.ReadFile(layoutPy))), `NAME_RE = re.compile(r"shmpool-[A-Za-z0-9_-]{1,55}")`) {
		t.Error("layout.py's NAME_RE changed; validName mirrors shmpool-[A-Za-z0-9_-]{1,55}")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestEvalPy(t *testing.T) {
	names := map[string]int64{"A": 256, "B": 8192}
	for expr, want := range map[string]int64{"2": 2, "0x504D4853": 0x504D4853, "1 << 18": 1 << 18,
		"A + 8 * B": 256 + 8*8192, "(A - 6) * 2": 500} {
		if got, ok := evalPy(expr, names); !ok || got != want {
			t.Errorf("evalPy(%q) = %d, %v; want %d", expr, got, ok, want)
		}
	}
	for _, expr := range []string{`re.compile(r"x")`, "{}", "_HEADER.size", "(1, 2)", `"owner"`} {
		if _, ok := evalPy(expr, names); ok {
			t.Errorf("evalPy(%q) succeeded", expr)
		}
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{StatusNonFinite: "NON_FINITE", StatusInternal: "INTERNAL",
		StatusBusy: "BUSY", StatusBadVersion: "BAD_VERSION", Status(99): "STATUS_99"} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d) = %q, want %q", s, got, want)
		}
	}
	if NaNOmit.String() != "omit" || NaNDefault.String() != "default" {
		t.Error("NaNPolicy.String")
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"shmpool-a":                              true,
		"shmpool-1234-0a1b2c3d-00112233aabbccdd": true,
		"shmpool-" + strings.Repeat("x", 55):     true,
		"shmpool-" + strings.Repeat("x", 56):     false,
		"shmpool-":                               false,
		"shmpool-a.b":                            false,
		"shmpool-../etc":                         false,
		"shmpool-a/b":                            false,
		"psm_1234":                               false,
		"SHMPOOL-a":                              false,
		"shmpool-é":                              false,
		"shmpool-A_Z-09":                         true,
		"xshmpool-a":                             false,
		"shmpool-a ":                             false,
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
		{"version 1", func(h *segmentHeader) { h.Version = 1 }, kindData, size, "version"},
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
	// A result segment's count is the worker's to write; it is not checked.
	r := newHeader(kindResult, 4, 0)
	r.Needed, r.Status, r.Count = 9, uint32(StatusTooSmall), 99
	if why := checkHeader(r, kindResult, headerSize+32); why != "" {
		t.Errorf("result header rejected: %s", why)
	}
}

func TestEncodeRequestRejects(t *testing.T) {
	buf := make([]byte, maxRequest)
	for _, name := range []string{strings.Repeat("a", 64), "shmpool-\x00x", "shmpool-é"} {
		if _, err := encodeRequest(buf, &request{Op: opDetect, DataName: name, OutName: "shmpool-a"}); err == nil {
			t.Errorf("encodeRequest accepted data name %q", name)
		}
	}
	if _, err := encodeRequest(buf, &request{Op: opDetect, DataName: strings.Repeat("a", 63)}); err != nil {
		t.Errorf("63-byte name refused: %v", err)
	}
	if _, err := encodeRequest(buf, &request{Op: opCombine, Values: make([]float64, maxRequestValues+1)}); err == nil {
		t.Error("8193 values accepted")
	}
	if _, err := encodeRequest(buf, &request{Op: opDetect, NParams: 9}); err == nil {
		t.Error("9 parameters accepted")
	}
	// Stale bytes of a longer earlier packet never leak into a name field.
	r := request{Op: opDetect, DataName: "shmpool-" + strings.Repeat("z", 50), OutName: "shmpool-o"}
	encodeRequest(buf, &r)
	r.DataName = "shmpool-d"
	n, _ := encodeRequest(buf, &r)
	if got, err := decodeRequest(buf[:n]); err != nil || got.DataName != "shmpool-d" {
		t.Errorf("re-encoded name: %q, %v", got.DataName, err)
	}
}

// The decoder follows LAYOUT.md 2.6 in order: the first failing check
// decides the status.
func TestDecodeRequestOrder(t *testing.T) {
	buf := make([]byte, requestHeadSize)
	r := request{Op: opDetect, RequestID: 5, Count: 1, NParams: 1, DataName: "shmpool-d", OutName: "shmpool-o"}
	r.Params[0] = 2
	n, _ := encodeRequest(buf, &r)
	raw := buf[:n]
	if _, err := decodeRequest(raw); err != nil {
		t.Fatalf("good request refused: %v", err)
	}
	le := binary.LittleEndian
	mut := func(f func(b []byte)) []byte { b := append([]byte(nil), raw...); f(b); return b }
	for name, tc := range map[string]struct {
		b    []byte
		want Status
	}{
		"version before size":   {mut(func(b []byte) { b[4] = 1 })[:100], StatusBadVersion},
		"op before policy":      {mut(func(b []byte) { b[6] = 7; le.PutUint32(b[44:], 9) }), StatusBadMessage},
		"policy before names":   {mut(func(b []byte) { le.PutUint32(b[44:], 9); b[120] = 'x' }), StatusBadValue},
		"no NUL in a name":      {mut(func(b []byte) { copy(b[120:184], "shmpool-"+strings.Repeat("x", 56)) }), StatusBadName},
		"PING ignores names":    {mut(func(b []byte) { b[6] = opPing; copy(b[120:], "junk") }), StatusOK},
		"names checked anyway":  {mut(func(b []byte) { b[6] = opPing; b[125] = 0; b[126] = 'x' }), StatusBadName},
		"values on DETECT":      {append(mut(func(b []byte) { le.PutUint32(b[248:], 1) }), make([]byte, 8)...), StatusBadMessage},
		"SUMMARIZE needs data":  {mut(func(b []byte) { b[6] = opSummarize; clear(b[120:184]) }), StatusBadName},
		"SUMMARIZE without out": {mut(func(b []byte) { b[6] = opSummarize; clear(b[184:248]) }), StatusOK},
	} {
		_, err := decodeRequest(tc.b)
		var de *decodeError
		switch {
		case tc.want == StatusOK && err != nil:
			t.Errorf("%s: refused: %v", name, err)
		case tc.want != StatusOK && (!errorsAs(err, &de) || de.Status != tc.want):
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func errorsAs(err error, de **decodeError) bool {
	e, ok := err.(*decodeError)
	if ok {
		*de = e
	}
	return ok
}

func TestDecodeReplyDefensive(t *testing.T) {
	ok := encodeReply(nil, reply{replyHead: replyHead{Status: StatusDetectorError, RequestID: 3},
		Values: []float64{1.5}, Type: "ValueError", Message: "boom", Traceback: "tb"})
	if r, err := decodeReply(ok); err != nil || r.Type != "ValueError" || r.Message != "boom" || r.Traceback != "tb" ||
		len(r.Values) != 1 || r.Values[0] != 1.5 {
		t.Fatalf("decodeReply = %+v, %v", r, err)
	}
	le := binary.LittleEndian
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), ok...)) }
	for name, b := range map[string][]byte{
		"empty":        nil,
		"short head":   ok[:47],
		"magic":        mut(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version 1":    mut(func(b []byte) []byte { b[4] = 1; return b }),
		"extra byte":   mut(func(b []byte) []byte { return append(b, 0) }),
		"missing":      ok[:len(ok)-1],
		"type_len":     mut(func(b []byte) []byte { le.PutUint32(b[32:], 1<<31); return b }),
		"huge texts":   mut(func(b []byte) []byte { le.PutUint32(b[40:], maxTraceback+1); return b }),
		"wrap around":  mut(func(b []byte) []byte { le.PutUint32(b[36:], math.MaxUint32); return b }),
		"nvalues":      mut(func(b []byte) []byte { le.PutUint32(b[44:], maxReplyValues+1); return b }),
		"values wrap":  mut(func(b []byte) []byte { le.PutUint32(b[44:], math.MaxUint32); return b }),
		"too long":     make([]byte, maxReply+1),
		"values short": mut(func(b []byte) []byte { le.PutUint32(b[44:], 2); return b }),
	} {
		if _, err := decodeReply(b); err == nil {
			t.Errorf("%s: decodeReply accepted a bad reply", name)
		} else if !strings.HasPrefix(err.Error(), "shmpool: ") {
			t.Errorf("%s: error %q lacks the prefix", name, err)
		}
	}
	// A BAD_VERSION reply of another version: status and request_id only.
	other := mut(func(b []byte) []byte { b[4], b[6] = 3, byte(StatusBadVersion); return b[:16] })
	if h, err := decodeReplyHead(other); err != errBadVersionReply || h.Status != StatusBadVersion || h.RequestID != 3 {
		t.Errorf("v3 BAD_VERSION reply: %+v %v", h, err)
	}
	// Texts beyond their limits are cut as a worker cuts them.
	long := encodeReply(nil, reply{replyHead: replyHead{Status: StatusDetectorError}, Type: strings.Repeat("T", 300),
		Message: strings.Repeat("m", 9000), Traceback: "start" + strings.Repeat("t", 40000) + "end",
		Values: make([]float64, 100)})
	r, err := decodeReply(long)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Type) != maxType || len(r.Message) != maxMessage || len(r.Traceback) != maxTraceback ||
		!strings.HasSuffix(r.Traceback, "end") || len(r.Values) != maxReplyValues || len(long) > maxReply {
		t.Errorf("truncation: %d %d %d %d", len(r.Type), len(r.Message), len(r.Traceback), len(r.Values))
	}
	// Invalid UTF-8 is replaced, not passed on.
	bad := encodeReply(nil, reply{replyHead: replyHead{Status: StatusDetectorError}, Message: "a\xffb"})
	if r, _ := decodeReply(bad); r.Message != "a\uFFFDb" {
		t.Errorf("invalid UTF-8 decoded as %q", r.Message)
	}
}

func TestParseTableRejects(t *testing.T) {
	for _, text := range []string{
		"", "classic", "classic split", "classic both 5", "classic split 0", "classic split x",
		"classic split 65", "classic split 5 threshold", "classic split 5 threshold=x",
		"classic split 5 a=1 a=2", "classic split 5 a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1",
		"classic split 5\n\nother whole 0",
	} {
		if rows, err := parseTable(text); err == nil {
			t.Errorf("parseTable(%q) = %+v", text, rows)
		}
	}
	rows, err := parseTable("classic split 5 threshold=2.0\nmod:fn whole 0 threshold=2.5 k=1e-3\n")
	if err != nil || len(rows) != 2 || rows[1].Params[1] != (Param{"k", 0.001}) || rows[1].Split {
		t.Errorf("parseTable: %+v %v", rows, err)
	}
}

func TestSplitRule(t *testing.T) {
	for _, tc := range []struct{ n, lanes, k int }{
		{0, 2, 1}, {splitMin - 1, 8, 1}, {splitMin, 1, 1}, {splitMin, 8, 2}, {10 * splitChunkMin, 4, 4},
		{10*splitChunkMin - 1, 64, 9},
	} {
		if k := splitCount(tc.n, tc.lanes); k != tc.k {
			t.Errorf("splitCount(%d, %d) = %d, want %d", tc.n, tc.lanes, k, tc.k)
		}
	}
	// Bounds: multiples of 8 inside, n at the end, no overflow for huge n.
	n := 1 << 61
	for k := 1; k <= 7; k++ {
		for i := 0; i <= k; i++ {
			b := splitBound(n, k, i)
			if i < k && b%8 != 0 || i == k && b != n || i > 0 && b <= splitBound(n, k, i-1) {
				t.Errorf("splitBound(2^61, %d, %d) = %d", k, i, b)
			}
		}
	}
}
