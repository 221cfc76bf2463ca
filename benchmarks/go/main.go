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
// are written as JSON to -out. All of this but the methods themselves is
// package harness, shared with benchembed (benchmarks/go/embed).
package main

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/shmpool/shmpool/benchmarks/go/harness"
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

type plan struct {
	harness.Plan
	NumpyDetector string `json:"numpy_detector"` // the server's row running numpy's one-liner
	ShmpoolSocket string `json:"shmpool_socket"`
	GRPCTarget    string `json:"grpc_target"`
	GRPCMethod    string `json:"grpc_method"`
	PingCalls     int    `json:"ping_calls"` // time this many Client.Ping round trips (no worker involved)
}

type output struct {
	harness.Output
	Workers   int      `json:"workers"` // the server's, from INFO
	Detectors []string `json:"detectors"`
	PingNS    []int64  `json:"ping_ns"`
}

func grpcCall(conn *grpc.ClientConn, fullMethod string, x []float64) ([]int, error) {
	var reply []byte
	req := harness.Bytes(x) // a view, no copy: the most favourable a Go caller can do
	if err := conn.Invoke(context.Background(), fullMethod, req, &reply); err != nil {
		return nil, err
	}
	idx, err := harness.Indices(reply)
	if err != nil {
		return nil, fmt.Errorf("gRPC reply: %w", err)
	}
	return idx, nil
}

func runSize(sp harness.SizePlan, p *plan, client *shmpool.Client, conn *grpc.ClientConn, out *output) {
	x, ref, err := sp.Load()
	if err != nil {
		out.Fail(err.Error())
		return
	}
	var ms []*harness.Method
	for _, name := range p.Methods {
		m := harness.NewMethod(name, sp.N)
		switch name {
		case "go_shmpool":
			if client == nil {
				m.Res.Error = "no shmpool client"
				break
			}
			m.Call = func() ([]int, error) { return client.Detect(x) }
		case "go_shmpool_buffer":
			if client == nil {
				m.Res.Error = "no shmpool client"
				break
			}
			b, err := client.NewBuffer(sp.N)
			if err != nil {
				m.Res.Error = "NewBuffer: " + err.Error()
				break
			}
			copy(b.Data(), x)
			m.Call = func() ([]int, error) { return client.DetectBuffer(b, shmpool.Options{}) }
			m.Cleanup = func() { b.Close() }
		case "go_numpy_detector":
			if client == nil {
				m.Res.Error = "no shmpool client"
				break
			}
			if p.NumpyDetector == "" {
				m.Res.Error = "the plan names no numpy detector"
				break
			}
			opt := shmpool.Options{Detector: p.NumpyDetector}
			m.Call = func() ([]int, error) { return client.DetectWith(x, opt) }
		case "go_grpc":
			if conn == nil {
				m.Res.Error = "no gRPC connection"
				break
			}
			m.Call = func() ([]int, error) { return grpcCall(conn, p.GRPCMethod, x) }
		default:
			m.Res.Error = "unknown method " + name
		}
		ms = append(ms, m)
	}
	out.Results = append(out.Results, harness.Time(sp, x, ref, ms)...)
}

// runConcurrency: one Client, shared by g goroutines calling Detect in a
// loop for a while; every answer is compared with numpy's.
func runConcurrency(cp *harness.ConcPlan, client *shmpool.Client, out *output) {
	x, ref, err := cp.Load()
	if err != nil {
		out.Fail(err.Error())
		return
	}
	detect := func() func() ([]int, error) {
		return func() ([]int, error) { return client.Detect(x) }
	}
	maxG := 1
	for _, g := range cp.Goroutines {
		maxG = max(maxG, g)
	}
	// warm-up: as many goroutines as the most, so the Client has its lanes
	if _, _, err := harness.Calls(maxG, 0.2, 0, detect, ref); err != nil {
		out.Fail("concurrency warm-up: " + err.Error())
		return
	}
	out.Concurrency = append(out.Concurrency, harness.Concurrency(cp, "go_shmpool",
		func(g int) (int64, float64, error) {
			runtime.GC()
			return harness.Calls(g, cp.Seconds, 0, detect, ref)
		})...)
}

func main() { harness.Main("benchgo", run) }

func run(p *plan) any {
	out := output{Output: harness.NewOutput(), PingNS: []int64{}, Detectors: []string{}}
	var client *shmpool.Client
	if p.ShmpoolSocket != "" {
		var err error
		client, err = shmpool.DialConfig(p.ShmpoolSocket, shmpool.Config{DialTimeout: 60 * time.Second})
		if err != nil {
			out.Fail("shmpool.Dial: " + err.Error())
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
		var err error
		conn, err = grpc.NewClient(p.GRPCTarget,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}),
				grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)))
		if err != nil {
			out.Fail("grpc.NewClient: " + err.Error())
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
			out.Fail("Ping: " + perr.Error())
		}
	}
	for _, sp := range p.Sizes {
		runSize(sp, p, client, conn, &out)
		debug.FreeOSMemory()
	}
	if p.Concurrency != nil {
		if client == nil {
			out.Fail("concurrency: no shmpool client")
		} else {
			runConcurrency(p.Concurrency, client, &out)
		}
	}
	return out
}
