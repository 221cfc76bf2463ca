// Command benchembed is the anchor of shmpool's Go rows: CPython embedded in
// a Go program with cgo, calling numpy's one-liner
//
//	np.where(np.abs(x - x.mean()) > 2 * x.std())[0]
//
// in process on a Go []float64 that is wrapped as a read-only numpy array
// without a copy (PyArray_New on the slice's memory), the indices copied
// into a new Go []int. It is what a Go program that needs numpy's answer
// could do without any IPC at all. Two variants:
//
//	embed_nogil  no GIL handling: the main goroutine, locked to the OS thread
//	             that initialised CPython and holds the GIL (single goroutine only)
//	embed_gil    PyGILState_Ensure/Release around every call: safe from any
//	             goroutine (a goroutine's thread without a Python thread state
//	             gets a new one per call, as cgo code that does not pin
//	             goroutines to threads does)
//
// With "tune_malloc" in the plan (the driver sets it), glibc's mmap and trim
// thresholds are first set to the ceilings a long-running process reaches by
// itself (32 MiB, 64 MiB): a fresh process would otherwise hand numpy's
// temporaries back to the kernel after every call and fault them in again.
//
// python -m benchmarks.run drives it with a plan (JSON: the interpreter and
// sys.path to use, per-size data files as for benchmarks/go, a concurrency
// run, a leak check) and reads its JSON output. Every method's answer is
// checked against numpy's (computed by the driver) before it is timed.
//
// Build (the driver does this, from python3-config --embed or sysconfig):
//
//	CGO_CFLAGS="-I<Python include> -I<numpy include>" \
//	CGO_LDFLAGS="-L<libdir> -lpython3.11 -Wl,-rpath,<libdir>" go build
package main

/*
#cgo CFLAGS: -O2
#include <stdlib.h>
#include "embed.h"
*/
import "C"

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// The main goroutine stays on the main OS thread: the one that initialises
// CPython and, for embed_nogil, holds the GIL.
func init() { runtime.LockOSThread() }

type sizePlan struct {
	N        int     `json:"n"`
	DataFile string  `json:"data_file"`
	RefFile  string  `json:"ref_file"`
	Mean     float64 `json:"mean"`
	Cut      float64 `json:"cut"`
	Scale    float64 `json:"scale"`
	Warmup   int     `json:"warmup"`
	Rounds   int     `json:"rounds"`
	Calls    int     `json:"calls"`
	BudgetS  float64 `json:"budget_s"`
}

type concPlan struct {
	N          int     `json:"n"`
	DataFile   string  `json:"data_file"`
	RefFile    string  `json:"ref_file"`
	Goroutines []int   `json:"goroutines"`
	Rounds     int     `json:"rounds"`
	Seconds    float64 `json:"seconds"` // per goroutine count per round
}

type plan struct {
	Program    string     `json:"python_executable"`
	Path       []string   `json:"python_path"`
	Methods    []string   `json:"methods"`
	Sizes      []sizePlan `json:"sizes"`
	Conc       *concPlan  `json:"concurrency"`
	LeakCalls  int        `json:"leak_calls"`
	LeakN      int        `json:"leak_n"`
	LeakFile   string     `json:"leak_data_file"`
	Concurrent string     `json:"concurrency_method"`
	TuneMalloc bool       `json:"tune_malloc"` // embed_tune_malloc before CPython starts
}

type result struct {
	Method  string  `json:"method"`
	N       int     `json:"n"`
	Correct bool    `json:"correct"`
	Error   string  `json:"error,omitempty"`
	Note    string  `json:"note,omitempty"`
	LatNS   []int64 `json:"lat_ns"`
	Found   int     `json:"found"`
}

type concResult struct {
	Method     string  `json:"method"`
	Goroutines int     `json:"goroutines"`
	Calls      int64   `json:"calls"`
	Seconds    float64 `json:"seconds"`
	Error      string  `json:"error,omitempty"`
}

type leakResult struct {
	Method       string `json:"method"`
	N            int    `json:"n"`
	Calls        int    `json:"calls"`
	RSSBefore    int64  `json:"rss_before"`
	RSSMid       int64  `json:"rss_mid"` // after half the calls: growth in the second half is the leak test
	RSSAfter     int64  `json:"rss_after"`
	BlocksBefore int64  `json:"blocks_before"`
	BlocksAfter  int64  `json:"blocks_after"`
	GoHeapBefore uint64 `json:"go_heap_before"`
	GoHeapAfter  uint64 `json:"go_heap_after"`
	Error        string `json:"error,omitempty"`
}

type output struct {
	GoVersion   string       `json:"go_version"`
	GOMAXPROCS  int          `json:"gomaxprocs"`
	Versions    string       `json:"versions"`
	Results     []result     `json:"results"`
	Concurrency []concResult `json:"concurrency"`
	Leak        []leakResult `json:"leak"`
	Errors      []string     `json:"errors"`
	MallocTuned bool         `json:"malloc_tuned"`
}

// detector is one variant: a call that returns numpy's indices as a new []int.
type detector struct {
	gil     bool
	scratch []int // the indices land here first (reused), then go to the caller's slice
}

func (d *detector) detect(x []float64) ([]int, error) {
	for {
		var xp *C.double
		if len(x) > 0 {
			xp = (*C.double)(unsafe.Pointer(&x[0]))
		}
		var op *C.longlong
		if cap(d.scratch) > 0 {
			op = (*C.longlong)(unsafe.Pointer(&d.scratch[:1][0]))
		}
		g := C.int(0)
		if d.gil {
			g = 1
		}
		k := int(C.embed_detect(xp, C.longlong(len(x)), op, C.longlong(cap(d.scratch)), g))
		if k < 0 {
			return nil, fmt.Errorf("%s", C.GoString(C.embed_error()))
		}
		if k <= cap(d.scratch) {
			out := make([]int, k)
			copy(out, d.scratch[:k])
			return out, nil
		}
		d.scratch = make([]int, 0, k+k/4+16) // first call at a size: grow and ask again
	}
}

func readF64(path string, n int) ([]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x := make([]float64, n)
	if len(x) == 0 {
		return x, nil
	}
	if _, err := io.ReadFull(f, unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 8*n)); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

func readI64(path string) ([]int, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	idx := make([]int, len(raw)/8)
	for i := range idx {
		idx[i] = int(int64(binary.LittleEndian.Uint64(raw[8*i:])))
	}
	return idx, nil
}

// check: equal to numpy's answer, or differing at most at 2 values within
// 1e-12 (relative to the scale) of the cut-off (as benchmarks/go).
func check(got, ref []int, x []float64, sp sizePlan) error {
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			return fmt.Errorf("indices not ascending and unique at position %d", i)
		}
	}
	var diff []int
	i, j := 0, 0
	for i < len(got) || j < len(ref) {
		switch {
		case j >= len(ref) || (i < len(got) && got[i] < ref[j]):
			diff = append(diff, got[i])
			i++
		case i >= len(got) || ref[j] < got[i]:
			diff = append(diff, ref[j])
			j++
		default:
			i++
			j++
		}
		if len(diff) > 2 {
			return fmt.Errorf("answer differs from numpy's at more than 2 indices (first: %v; %d found, numpy %d)",
				diff, len(got), len(ref))
		}
	}
	for _, k := range diff {
		if k < 0 || k >= len(x) {
			return fmt.Errorf("index %d outside [0, %d)", k, len(x))
		}
		if d := math.Abs(x[k] - sp.Mean); math.Abs(d-sp.Cut) > 1e-12*sp.Scale {
			return fmt.Errorf("answer differs from numpy's at index %d, not at the cut-off", k)
		}
	}
	return nil
}

// onGIL runs fn on the main goroutine (GIL held: embed_nogil) or on a fresh
// goroutine with the GIL released (embed_gil).
func onVariant(gil bool, fn func()) {
	if !gil {
		fn()
		return
	}
	C.embed_release()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		fn()
	}()
	wg.Wait()
	C.embed_reacquire()
}

type method struct {
	name    string
	det     *detector
	res     *result
	want    []int
	spent   time.Duration
	dead    bool
	stopped bool
}

func runSize(sp sizePlan, names []string, out *output) {
	x, err := readF64(sp.DataFile, sp.N)
	if err != nil {
		out.Errors = append(out.Errors, err.Error())
		return
	}
	ref, err := readI64(sp.RefFile)
	if err != nil {
		out.Errors = append(out.Errors, err.Error())
		return
	}
	var ms []*method
	for _, name := range names {
		m := &method{name: name, det: &detector{gil: name == "embed_gil"},
			res: &result{Method: name, N: sp.N, LatNS: []int64{}}}
		if name != "embed_gil" && name != "embed_nogil" {
			m.res.Error = "unknown method " + name
			m.dead = true
		}
		ms = append(ms, m)
	}
	for _, m := range ms {
		if m.dead {
			continue
		}
		onVariant(m.det.gil, func() {
			got, err := m.det.detect(x)
			if err == nil {
				err = check(got, ref, x, sp)
			}
			if err != nil {
				m.res.Error = "correctness check failed: " + err.Error()
				m.dead = true
				return
			}
			m.res.Correct, m.res.Found, m.want = true, len(got), got
			for i := 0; i < sp.Warmup; i++ {
				if _, err := m.det.detect(x); err != nil {
					m.res.Error = "warm-up call failed: " + err.Error()
					m.dead = true
					return
				}
			}
		})
	}
	for r := 0; r < sp.Rounds; r++ {
		for k := range ms {
			m := ms[(r+k)%len(ms)]
			if m.dead || m.stopped {
				continue
			}
			runtime.GC()
			onVariant(m.det.gil, func() {
				for c := 0; c < sp.Calls; c++ {
					t0 := time.Now()
					got, err := m.det.detect(x)
					dt := time.Since(t0)
					if err != nil {
						m.res.Error = "timed call failed: " + err.Error()
						m.dead = true
						return
					}
					if !slices.Equal(got, m.want) {
						m.res.Error = "a timed call's answer differs from the checked one"
						m.res.Correct = false
						m.dead = true
						return
					}
					m.res.LatNS = append(m.res.LatNS, dt.Nanoseconds())
					m.spent += dt
				}
			})
			if m.spent.Seconds() > sp.BudgetS && len(m.res.LatNS) > 0 {
				m.stopped = true
				m.res.Note = fmt.Sprintf("stopped after %d calls: time budget of %.0f s used", len(m.res.LatNS), sp.BudgetS)
			}
		}
	}
	for _, m := range ms {
		out.Results = append(out.Results, *m.res)
	}
}

// concurrency: g goroutines share the GIL-taking variant for a while; calls/s.
func runConcurrency(cp *concPlan, name string, out *output) {
	x, err := readF64(cp.DataFile, cp.N)
	if err != nil {
		out.Errors = append(out.Errors, err.Error())
		return
	}
	ref, err := readI64(cp.RefFile)
	if err != nil {
		out.Errors = append(out.Errors, err.Error())
		return
	}
	if name != "embed_gil" {
		out.Errors = append(out.Errors, "concurrency needs the goroutine-safe variant embed_gil, not "+name)
		return
	}
	C.embed_release()
	defer C.embed_reacquire()
	totals := map[int]*concResult{}
	for _, g := range cp.Goroutines {
		totals[g] = &concResult{Method: name, Goroutines: g}
	}
	for r := 0; r < cp.Rounds; r++ {
		for k := range cp.Goroutines {
			g := cp.Goroutines[(r+k)%len(cp.Goroutines)]
			t := totals[g]
			if t.Error != "" {
				continue
			}
			calls, secs, err := concurrentCalls(g, cp.Seconds, x, ref)
			t.Calls += calls
			t.Seconds += secs
			if err != nil {
				t.Error = err.Error()
			}
		}
	}
	for _, g := range cp.Goroutines {
		out.Concurrency = append(out.Concurrency, *totals[g])
	}
}

func concurrentCalls(g int, seconds float64, x []float64, ref []int) (int64, float64, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		first error
	)
	// warm: every goroutine makes a few calls first (untimed)
	start := make(chan struct{})
	var ready sync.WaitGroup
	var t0 time.Time
	var elapsed time.Duration
	deadline := time.Duration(seconds * float64(time.Second))
	for i := 0; i < g; i++ {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			d := &detector{gil: true}
			for j := 0; j < 5; j++ {
				d.detect(x)
			}
			ready.Done()
			<-start
			var n int64
			var err error
			for time.Since(t0) < deadline {
				var got []int
				got, err = d.detect(x)
				if err == nil && !slices.Equal(got, ref) {
					err = fmt.Errorf("an answer differs from numpy's")
				}
				if err != nil {
					break
				}
				n++
			}
			mu.Lock()
			total += n
			if err != nil && first == nil {
				first = err
			}
			mu.Unlock()
		}()
	}
	ready.Wait()
	t0 = time.Now()
	close(start)
	wg.Wait()
	elapsed = time.Since(t0)
	return total, elapsed.Seconds(), first
}

func rss() int64 {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(raw))
	if len(f) < 2 {
		return -1
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func goHeap() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// leak: the same calls many times; RSS, Python's allocated blocks and the Go
// heap before, halfway and after (after warm-up calls; each reading after
// debug.FreeOSMemory, so that Go's own GC cycle does not show as RSS).
func runLeak(p plan, out *output) {
	x, err := readF64(p.LeakFile, p.LeakN)
	if err != nil {
		out.Errors = append(out.Errors, err.Error())
		return
	}
	for _, name := range p.Methods {
		lr := leakResult{Method: name, N: p.LeakN, Calls: p.LeakCalls}
		gil := name == "embed_gil"
		onVariant(gil, func() {
			d := &detector{gil: gil}
			for i := 0; i < 1000; i++ {
				if _, err := d.detect(x); err != nil {
					lr.Error = err.Error()
					return
				}
			}
			debug.FreeOSMemory() // a GC, and the Go heap's free pages back to the OS: RSS without Go's GC cycle
			lr.RSSBefore, lr.BlocksBefore, lr.GoHeapBefore = rss(), int64(C.embed_allocated_blocks(C.int(b2i(gil)))), goHeap()
			for i := 0; i < p.LeakCalls; i++ {
				if i == p.LeakCalls/2 {
					debug.FreeOSMemory()
					lr.RSSMid = rss()
				}
				if _, err := d.detect(x); err != nil {
					lr.Error = err.Error()
					return
				}
			}
			debug.FreeOSMemory()
			lr.RSSAfter, lr.BlocksAfter, lr.GoHeapAfter = rss(), int64(C.embed_allocated_blocks(C.int(b2i(gil)))), goHeap()
		})
		out.Leak = append(out.Leak, lr)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func main() {
	planPath := flag.String("plan", "", "plan JSON written by benchmarks.run")
	outPath := flag.String("out", "", "where to write the results JSON")
	flag.Parse()
	if *planPath == "" || *outPath == "" {
		fmt.Fprintln(os.Stderr, "usage: benchembed -plan PLAN.json -out RESULTS.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(*planPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchembed:", err)
		os.Exit(1)
	}
	var p plan
	if err := json.Unmarshal(raw, &p); err != nil {
		fmt.Fprintln(os.Stderr, "benchembed: plan:", err)
		os.Exit(1)
	}
	out := output{GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), Results: []result{},
		Concurrency: []concResult{}, Leak: []leakResult{}, Errors: []string{}}
	if p.TuneMalloc {
		out.MallocTuned = C.embed_tune_malloc() == 0
		if !out.MallocTuned {
			out.Errors = append(out.Errors, "mallopt failed")
		}
	}
	prog := C.CString(p.Program)
	paths := C.CString(strings.Join(p.Path, "\n"))
	rc := C.embed_init(prog, paths)
	C.free(unsafe.Pointer(prog))
	C.free(unsafe.Pointer(paths))
	if rc != 0 {
		out.Errors = append(out.Errors, "embedding CPython: "+C.GoString(C.embed_error()))
	} else {
		out.Versions = C.GoString(C.embed_versions())
		for _, sp := range p.Sizes {
			runSize(sp, p.Methods, &out)
			debug.FreeOSMemory()
		}
		if p.Conc != nil {
			runConcurrency(p.Conc, p.Concurrent, &out)
		}
		if p.LeakCalls > 0 {
			runLeak(p, &out)
		}
	}
	enc, err := json.Marshal(out)
	if err == nil {
		err = os.WriteFile(*outPath, enc, 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchembed:", err)
		os.Exit(1)
	}
}
