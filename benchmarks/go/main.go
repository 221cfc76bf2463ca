// Command benchgo is the Go half of shmpool's benchmark suite
// (python -m benchmarks.run drives it; it is not meant to be run by hand).
//
// It times, from a Go host and on the same data the Python half uses:
//
//	go_shmpool         shmpool.Client.Detect (the adapter copies x into its segment;
//	                   split over the workers from 2^18 values)
//	go_shmpool_buffer  shmpool.Client.DetectBuffer (x already lives in a shared Buffer)
//	go_numpy_detector  shmpool.Client.DetectWith(x, Options{Detector: <module:function>}):
//	                   the server's workers run numpy's one-liner as a plain
//	                   Python function, whole, on one worker
//	go_grpc            a gRPC unary call to the Python gRPC detector service,
//	                   raw float64 bytes in, raw int64 bytes out (no protobuf)
//
// and, when the plan has a "concurrency" part, calls/s of one Client shared
// by 1 and by 4 goroutines (Detect at one size, rounds alternating).
//
// The plan (a JSON file written by the Python driver) names the sockets, the
// sizes, a raw little-endian float64 file per size, numpy's answer for that
// size and how many calls to make. Before a method is timed at a size, its
// answer is checked against numpy's (equal, or differing only at values
// within 1e-12 relative of the cut-off, at most 2 of them); a method that
// fails the check is not timed there. Every timed call's answer is compared
// with the checked one, outside the timed region. The per-call latencies
// are written as JSON to -out.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"time"
	"unsafe"

	shmpool "github.com/shmpool/shmpool/host_adapters/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// rawCodec passes []byte messages through untouched: no protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch b := v.(type) {
	case []byte:
		return b, nil
	case *[]byte:
		return *b, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

// Name is the content-subtype: application/grpc+proto, which every gRPC
// server accepts; the Python service uses identity (de)serializers anyway.
func (rawCodec) Name() string { return "proto" }

type sizePlan struct {
	N        int     `json:"n"`
	DataFile string  `json:"data_file"`
	RefFile  string  `json:"ref_file"` // numpy's indices, raw little-endian int64
	Mean     float64 `json:"mean"`     // numpy's x.mean()
	Cut      float64 `json:"cut"`      // numpy's threshold * x.std()
	Scale    float64 `json:"scale"`    // max(|x|.max(), cut): the band's scale
	Warmup   int     `json:"warmup"`
	Rounds   int     `json:"rounds"`
	Calls    int     `json:"calls"`    // calls per method per round
	BudgetS  float64 `json:"budget_s"` // stop a method's rounds at this size after this much time
}

type concPlan struct {
	N          int     `json:"n"`
	DataFile   string  `json:"data_file"`
	RefFile    string  `json:"ref_file"`
	Goroutines []int   `json:"goroutines"`
	Rounds     int     `json:"rounds"`
	Seconds    float64 `json:"seconds"` // per goroutine count per round
}

type concResult struct {
	Method     string  `json:"method"`
	Goroutines int     `json:"goroutines"`
	Calls      int64   `json:"calls"`
	Seconds    float64 `json:"seconds"`
	Error      string  `json:"error,omitempty"`
}

type plan struct {
	NumpyDetector string     `json:"numpy_detector"` // the server's row running numpy's one-liner
	Concurrency   *concPlan  `json:"concurrency"`
	ShmpoolSocket string     `json:"shmpool_socket"`
	GRPCTarget    string     `json:"grpc_target"`
	GRPCMethod    string     `json:"grpc_method"`
	Methods       []string   `json:"methods"`
	Sizes         []sizePlan `json:"sizes"`
	PingCalls     int        `json:"ping_calls"` // time this many Client.Ping round trips (no worker involved)
}

type result struct {
	Method  string  `json:"method"`
	N       int     `json:"n"`
	Correct bool    `json:"correct"`
	Error   string  `json:"error,omitempty"`
	Note    string  `json:"note,omitempty"`
	LatNS   []int64 `json:"lat_ns"`
	Found   int     `json:"found"` // indices in the answer
}

type output struct {
	GoVersion   string       `json:"go_version"`
	GOMAXPROC   int          `json:"gomaxprocs"`
	Workers     int          `json:"workers"` // the server's, from INFO
	Detectors   []string     `json:"detectors"`
	Results     []result     `json:"results"`
	Concurrency []concResult `json:"concurrency"`
	Errors      []string     `json:"errors"`
	PingNS      []int64      `json:"ping_ns"`
}

// method is one way of calling the detector at one size.
type method struct {
	name    string
	call    func() ([]int, error)
	cleanup func()
	res     *result
	spent   time.Duration
	want    []int
	stopped bool
}

// readF64 reads n little-endian float64 straight into the slice's memory
// (amd64 and arm64 are little-endian), without a second copy of the file.
func readF64(path string, n int) ([]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != int64(8*n) {
		return nil, fmt.Errorf("%s: %d bytes, want %d", path, st.Size(), 8*n)
	}
	x := make([]float64, n)
	if _, err := io.ReadFull(f, asBytes(x)); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

func readI64(path string) ([]int, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(raw)%8 != 0 {
		return nil, fmt.Errorf("%s: %d bytes is not a whole number of int64", path, len(raw))
	}
	idx := make([]int, len(raw)/8)
	for i := range idx {
		idx[i] = int(int64(binary.LittleEndian.Uint64(raw[8*i:])))
	}
	return idx, nil
}

// check holds got to numpy's answer: equal, or differing only at values
// whose distance from the mean is within 1e-12 (relative) of the cut-off.
func check(got, ref []int, x []float64, sp sizePlan) error {
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			return fmt.Errorf("indices not ascending and unique at position %d (%d then %d)", i, got[i-1], got[i])
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
		dist := math.Abs(x[k] - sp.Mean)
		if math.Abs(dist-sp.Cut) > 1e-12*sp.Scale {
			return fmt.Errorf("answer differs from numpy's at index %d, which is not at the cut-off (|x-mean|=%g, cut=%g)",
				k, dist, sp.Cut)
		}
	}
	return nil
}

func asBytes(x []float64) []byte {
	if len(x) == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 8*len(x))
}

func grpcCall(conn *grpc.ClientConn, fullMethod string, x []float64) ([]int, error) {
	var reply []byte
	req := asBytes(x) // a view, no copy: the most favourable a Go caller can do
	if err := conn.Invoke(context.Background(), fullMethod, req, &reply); err != nil {
		return nil, err
	}
	if len(reply)%8 != 0 {
		return nil, fmt.Errorf("gRPC reply of %d bytes is not int64 indices", len(reply))
	}
	idx := make([]int, len(reply)/8)
	for i := range idx {
		idx[i] = int(int64(binary.LittleEndian.Uint64(reply[8*i:])))
	}
	return idx, nil
}

func runSize(sp sizePlan, p plan, client *shmpool.Client, conn *grpc.ClientConn, out *output) {
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
	for _, name := range p.Methods {
		m := &method{name: name, res: &result{Method: name, N: sp.N, LatNS: []int64{}}}
		switch name {
		case "go_shmpool":
			if client == nil {
				m.res.Error = "no shmpool client"
				break
			}
			m.call = func() ([]int, error) { return client.Detect(x) }
		case "go_shmpool_buffer":
			if client == nil {
				m.res.Error = "no shmpool client"
				break
			}
			b, err := client.NewBuffer(sp.N)
			if err != nil {
				m.res.Error = "NewBuffer: " + err.Error()
				break
			}
			copy(b.Data(), x)
			m.call = func() ([]int, error) { return client.DetectBuffer(b, shmpool.Options{}) }
			m.cleanup = func() { b.Close() }
		case "go_numpy_detector":
			if client == nil {
				m.res.Error = "no shmpool client"
				break
			}
			if p.NumpyDetector == "" {
				m.res.Error = "the plan names no numpy detector"
				break
			}
			opt := shmpool.Options{Detector: p.NumpyDetector}
			m.call = func() ([]int, error) { return client.DetectWith(x, opt) }
		case "go_grpc":
			if conn == nil {
				m.res.Error = "no gRPC connection"
				break
			}
			m.call = func() ([]int, error) { return grpcCall(conn, p.GRPCMethod, x) }
		default:
			m.res.Error = "unknown method " + name
		}
		ms = append(ms, m)
	}
	defer func() {
		for _, m := range ms {
			if m.cleanup != nil {
				m.cleanup()
			}
			out.Results = append(out.Results, *m.res)
		}
	}()

	// Correctness first: a method is timed only if its answer is right.
	for _, m := range ms {
		if m.call == nil {
			continue
		}
		got, err := m.call()
		if err == nil {
			err = check(got, ref, x, sp)
		}
		if err != nil {
			m.res.Error = "correctness check failed: " + err.Error()
			m.call = nil
			continue
		}
		m.res.Correct = true
		m.res.Found = len(got)
		m.want = got
	}
	for _, m := range ms {
		for i := 0; i < sp.Warmup && m.call != nil; i++ {
			if _, err := m.call(); err != nil {
				m.res.Error = "warm-up call failed: " + err.Error()
				m.call = nil
			}
		}
	}
	// Timed rounds, methods interleaved (the order rotates every round).
	for r := 0; r < sp.Rounds; r++ {
		for k := range ms {
			m := ms[(r+k)%len(ms)]
			if m.call == nil || m.stopped {
				continue
			}
			runtime.GC()
			for c := 0; c < sp.Calls; c++ {
				t0 := time.Now()
				got, err := m.call()
				dt := time.Since(t0)
				if err != nil {
					m.res.Error = "timed call failed: " + err.Error()
					m.call = nil
					break
				}
				if !slices.Equal(got, m.want) {
					m.res.Error = "a timed call's answer differs from the checked one"
					m.res.Correct = false
					m.call = nil
					break
				}
				m.res.LatNS = append(m.res.LatNS, dt.Nanoseconds())
				m.spent += dt
			}
			if m.spent.Seconds() > sp.BudgetS && len(m.res.LatNS) > 0 {
				m.stopped = true
				m.res.Note = fmt.Sprintf("stopped after %d calls: time budget of %.0f s used", len(m.res.LatNS), sp.BudgetS)
			}
		}
	}
}

// runConcurrency: one Client, shared by g goroutines calling Detect in a
// loop for a while; every answer is compared with numpy's.
func runConcurrency(cp *concPlan, client *shmpool.Client, out *output) {
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
	totals := map[int]*concResult{}
	maxG := 1
	for _, g := range cp.Goroutines {
		totals[g] = &concResult{Method: "go_shmpool", Goroutines: g}
		maxG = max(maxG, g)
	}
	// warm-up: as many goroutines as the most, so the Client has its lanes
	if _, _, err := concurrentCalls(client, maxG, 0.2, x, ref); err != nil {
		out.Errors = append(out.Errors, "concurrency warm-up: "+err.Error())
		return
	}
	for r := 0; r < cp.Rounds; r++ {
		for k := range cp.Goroutines {
			g := cp.Goroutines[(r+k)%len(cp.Goroutines)]
			t := totals[g]
			if t.Error != "" {
				continue
			}
			runtime.GC()
			calls, secs, err := concurrentCalls(client, g, cp.Seconds, x, ref)
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

func concurrentCalls(client *shmpool.Client, g int, seconds float64, x []float64, ref []int) (int64, float64, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		first error
	)
	start := make(chan struct{})
	var t0 time.Time
	limit := time.Duration(seconds * float64(time.Second))
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var n int64
			var err error
			for time.Since(t0) < limit {
				var got []int
				got, err = client.Detect(x)
				if err == nil && !slices.Equal(got, ref) {
					err = errors.New("an answer differs from numpy's")
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
	t0 = time.Now()
	close(start)
	wg.Wait()
	return total, time.Since(t0).Seconds(), first
}

func main() {
	planPath := flag.String("plan", "", "plan JSON written by benchmarks.run")
	outPath := flag.String("out", "", "where to write the results JSON")
	flag.Parse()
	if *planPath == "" || *outPath == "" {
		fmt.Fprintln(os.Stderr, "usage: benchgo -plan PLAN.json -out RESULTS.json")
		os.Exit(2)
	}
	if err := run(*planPath, *outPath); err != nil {
		fmt.Fprintln(os.Stderr, "benchgo:", err)
		os.Exit(1)
	}
}

func run(planPath, outPath string) error {
	raw, err := os.ReadFile(planPath)
	if err != nil {
		return err
	}
	var p plan
	if err := json.Unmarshal(raw, &p); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	out := output{GoVersion: runtime.Version(), GOMAXPROC: runtime.GOMAXPROCS(0), Results: []result{},
		Concurrency: []concResult{}, Errors: []string{}, PingNS: []int64{}, Detectors: []string{}}

	var client *shmpool.Client
	if p.ShmpoolSocket != "" {
		client, err = shmpool.DialConfig(p.ShmpoolSocket, shmpool.Config{DialTimeout: 60 * time.Second})
		if err != nil {
			out.Errors = append(out.Errors, "shmpool.Dial: "+err.Error())
			client = nil
		} else {
			defer client.Close()
			out.Workers = client.Workers()
			for _, d := range client.Detectors() {
				out.Detectors = append(out.Detectors, d.Name)
			}
		}
	}
	var conn *grpc.ClientConn
	if p.GRPCTarget != "" {
		conn, err = grpc.NewClient(p.GRPCTarget,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}),
				grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)))
		if err != nil {
			out.Errors = append(out.Errors, "grpc.NewClient: "+err.Error())
			conn = nil
		} else {
			defer conn.Close()
		}
	}
	if client != nil && p.PingCalls > 0 {
		// a PING is answered by the worker the connection was handed to: the
		// socket round trip alone
		var perr error
		for i := 0; i < 200 && perr == nil; i++ {
			perr = client.Ping()
		}
		for i := 0; i < p.PingCalls && perr == nil; i++ {
			t0 := time.Now()
			perr = client.Ping()
			out.PingNS = append(out.PingNS, time.Since(t0).Nanoseconds())
		}
		if perr != nil {
			out.Errors = append(out.Errors, "Ping: "+perr.Error())
		}
	}
	for _, sp := range p.Sizes {
		runSize(sp, p, client, conn, &out)
		debug.FreeOSMemory()
	}
	if p.Concurrency != nil {
		if client == nil {
			out.Errors = append(out.Errors, "concurrency: no shmpool client")
		} else {
			runConcurrency(p.Concurrency, client, &out)
		}
	}
	enc, err := json.Marshal(out)
	if err != nil {
		return err
	}
	if err := os.WriteFile(outPath, enc, 0o600); err != nil {
		return errors.Join(err, errors.New("cannot write results"))
	}
	return nil
}
