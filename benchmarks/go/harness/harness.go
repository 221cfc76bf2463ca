// Package harness is what the benchmark's two Go programs, benchgo
// (benchmarks/go) and benchembed (benchmarks/go/embed), share: the plan the
// Python driver writes, its raw data files, the check of an answer against
// numpy's, the timed rounds, the calls/s runs and the results JSON.
package harness

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"unsafe"
)

// Data names one size's input and numpy's answer for it: raw files the
// driver wrote.
type Data struct {
	N        int    `json:"n"`
	DataFile string `json:"data_file"` // x, raw little-endian float64
	RefFile  string `json:"ref_file"`  // numpy's indices, raw little-endian int64
}

// SizePlan is one size to time every method at.
type SizePlan struct {
	Data
	Mean    float64 `json:"mean"`  // numpy's x.mean()
	Cut     float64 `json:"cut"`   // numpy's threshold * x.std()
	Scale   float64 `json:"scale"` // max(|x|.max(), cut): the band's scale
	Warmup  int     `json:"warmup"`
	Rounds  int     `json:"rounds"`
	Calls   int     `json:"calls"`    // calls per method per round
	BudgetS float64 `json:"budget_s"` // stop a method's rounds at this size after this much time
}

// ConcPlan is the calls/s run: one size, several goroutine counts.
type ConcPlan struct {
	Data
	Goroutines []int   `json:"goroutines"`
	Rounds     int     `json:"rounds"`
	Seconds    float64 `json:"seconds"` // per goroutine count per round
}

// Plan is the part of the plan both programs read; each embeds it in its own.
type Plan struct {
	Methods     []string   `json:"methods"`
	Sizes       []SizePlan `json:"sizes"`
	Concurrency *ConcPlan  `json:"concurrency"`
}

// Result is one method at one size.
type Result struct {
	Method  string  `json:"method"`
	N       int     `json:"n"`
	Correct bool    `json:"correct"`
	Error   string  `json:"error,omitempty"`
	Note    string  `json:"note,omitempty"`
	LatNS   []int64 `json:"lat_ns"`
	Found   int     `json:"found"` // indices in the answer
}

// ConcResult is one method's calls/s run at one goroutine count, summed over
// the rounds.
type ConcResult struct {
	Method     string  `json:"method"`
	Goroutines int     `json:"goroutines"`
	Calls      int64   `json:"calls"`
	Seconds    float64 `json:"seconds"`
	Error      string  `json:"error,omitempty"`
}

// Output is the part of the results JSON both programs write; each embeds it
// in its own.
type Output struct {
	GoVersion   string       `json:"go_version"`
	GOMAXPROCS  int          `json:"gomaxprocs"`
	Results     []Result     `json:"results"`
	Concurrency []ConcResult `json:"concurrency"`
	Errors      []string     `json:"errors"`
}

// NewOutput is an Output with this program's Go version and GOMAXPROCS, and
// empty lists where the driver wants lists, not nulls.
func NewOutput() Output {
	return Output{GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), Results: []Result{},
		Concurrency: []ConcResult{}, Errors: []string{}}
}

// Fail records an error that stops a part of the run, not the program.
func (o *Output) Fail(msg string) { o.Errors = append(o.Errors, msg) }

// Main is a program's main: -plan names the plan, read into a P and given to
// run; what run returns is written as JSON to -out. prog names the program in
// its messages.
func Main[P any](prog string, run func(p *P) any) {
	planPath := flag.String("plan", "", "plan JSON written by benchmarks.run")
	outPath := flag.String("out", "", "where to write the results JSON")
	flag.Parse()
	if *planPath == "" || *outPath == "" {
		fmt.Fprintf(os.Stderr, "usage: %s -plan PLAN.json -out RESULTS.json\n", prog)
		os.Exit(2)
	}
	if err := runPlan(*planPath, *outPath, run); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		os.Exit(1)
	}
}

func runPlan[P any](planPath, outPath string, run func(p *P) any) error {
	raw, err := os.ReadFile(planPath)
	if err != nil {
		return err
	}
	var p P
	if err := json.Unmarshal(raw, &p); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	enc, err := json.Marshal(run(&p))
	if err != nil {
		return err
	}
	if err := os.WriteFile(outPath, enc, 0o600); err != nil {
		return fmt.Errorf("cannot write results: %w", err)
	}
	return nil
}

// Load reads x and numpy's answer.
func (d Data) Load() ([]float64, []int, error) {
	x, err := ReadF64(d.DataFile, d.N)
	if err != nil {
		return nil, nil, err
	}
	raw, err := os.ReadFile(d.RefFile)
	if err != nil {
		return nil, nil, err
	}
	ref, err := Indices(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", d.RefFile, err)
	}
	return x, ref, nil
}

// ReadF64 reads n little-endian float64 straight into the slice's memory
// (amd64 and arm64 are little-endian), without a second copy of the file.
func ReadF64(path string, n int) ([]float64, error) {
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
	if _, err := io.ReadFull(f, Bytes(x)); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

// Indices decodes raw little-endian int64 indices.
func Indices(raw []byte) ([]int, error) {
	if len(raw)%8 != 0 {
		return nil, fmt.Errorf("%d bytes is not a whole number of int64", len(raw))
	}
	idx := make([]int, len(raw)/8)
	for i := range idx {
		idx[i] = int(int64(binary.LittleEndian.Uint64(raw[8*i:])))
	}
	return idx, nil
}

// Bytes is x's memory as bytes: a view, not a copy.
func Bytes(x []float64) []byte {
	if len(x) == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 8*len(x))
}

// Check holds got to numpy's answer: equal, or differing at most at 2 values
// whose distance from the mean is within 1e-12 (relative to the scale) of the
// cut-off, where rounding may put them on either side.
func Check(got, ref []int, x []float64, sp SizePlan) error {
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
