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
// The plan's reading, the check, the timed rounds and the calls/s run are
// package harness, shared with benchgo (benchmarks/go).
//
// Build, in benchmarks/go (the driver does this, from python3-config --embed
// or sysconfig):
//
//	CGO_CFLAGS="-I<Python include> -I<numpy include>" \
//	CGO_LDFLAGS="-L<libdir> -lpython3.11 -Wl,-rpath,<libdir>" go build -o benchembed ./embed
package main

/*
#cgo CFLAGS: -O2
#include <stdlib.h>
#include "embed.h"
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/shmpool/shmpool/benchmarks/go/harness"
)

// The main goroutine stays on the main OS thread: the one that initialises
// CPython and, for embed_nogil, holds the GIL.
func init() { runtime.LockOSThread() }

type plan struct {
	harness.Plan
	Program    string   `json:"python_executable"`
	Path       []string `json:"python_path"`
	LeakCalls  int      `json:"leak_calls"`
	LeakN      int      `json:"leak_n"`
	LeakFile   string   `json:"leak_data_file"`
	Concurrent string   `json:"concurrency_method"`
	TuneMalloc bool     `json:"tune_malloc"` // embed_tune_malloc before CPython starts
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
	harness.Output
	Versions    string       `json:"versions"`
	Leak        []leakResult `json:"leak"`
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

// onVariant runs fn on the main goroutine (GIL held: embed_nogil) or on a fresh
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

func runSize(sp harness.SizePlan, names []string, out *output) {
	x, ref, err := sp.Load()
	if err != nil {
		out.Fail(err.Error())
		return
	}
	var ms []*harness.Method
	for _, name := range names {
		m := harness.NewMethod(name, sp.N)
		if name == "embed_gil" || name == "embed_nogil" {
			gil := name == "embed_gil"
			d := &detector{gil: gil}
			m.Call = func() ([]int, error) { return d.detect(x) }
			m.On = func(batch func()) { onVariant(gil, batch) }
		} else {
			m.Res.Error = "unknown method " + name
		}
		ms = append(ms, m)
	}
	out.Results = append(out.Results, harness.Time(sp, x, ref, ms)...)
}

// runConcurrency: g goroutines share the GIL-taking variant for a while; calls/s.
func runConcurrency(cp *harness.ConcPlan, name string, out *output) {
	x, ref, err := cp.Load()
	if err != nil {
		out.Fail(err.Error())
		return
	}
	if name != "embed_gil" {
		out.Fail("concurrency needs the goroutine-safe variant embed_gil, not " + name)
		return
	}
	C.embed_release()
	defer C.embed_reacquire()
	// a detector per goroutine: its scratch is not shared
	detect := func() func() ([]int, error) {
		d := &detector{gil: true}
		return func() ([]int, error) { return d.detect(x) }
	}
	out.Concurrency = append(out.Concurrency, harness.Concurrency(cp, name,
		func(g int) (int64, float64, error) { return harness.Calls(g, cp.Seconds, 5, detect, ref) })...)
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

// runLeak: the same calls many times; RSS, Python's allocated blocks and the Go
// heap before, halfway and after (after warm-up calls; each reading after
// debug.FreeOSMemory, so that Go's own GC cycle does not show as RSS).
func runLeak(p *plan, out *output) {
	x, err := harness.ReadF64(p.LeakFile, p.LeakN)
	if err != nil {
		out.Fail(err.Error())
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

func main() { harness.Main("benchembed", run) }

func run(p *plan) any {
	out := output{Output: harness.NewOutput(), Leak: []leakResult{}}
	if p.TuneMalloc {
		out.MallocTuned = C.embed_tune_malloc() == 0
		if !out.MallocTuned {
			out.Fail("mallopt failed")
		}
	}
	prog := C.CString(p.Program)
	paths := C.CString(strings.Join(p.Path, "\n"))
	rc := C.embed_init(prog, paths)
	C.free(unsafe.Pointer(prog))
	C.free(unsafe.Pointer(paths))
	if rc != 0 {
		out.Fail("embedding CPython: " + C.GoString(C.embed_error()))
		return out
	}
	out.Versions = C.GoString(C.embed_versions())
	for _, sp := range p.Sizes {
		runSize(sp, p.Methods, &out)
		debug.FreeOSMemory()
	}
	if p.Concurrency != nil {
		runConcurrency(p.Concurrency, p.Concurrent, &out)
	}
	if p.LeakCalls > 0 {
		runLeak(p, &out)
	}
	return out
}
