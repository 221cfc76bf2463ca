package shmpool

// Behaviour every server must show, run against the TestMain server
// (TestServer, integration_test.go) and against a private Go fake
// (TestFakeContract, client_test.go).

import (
	"errors"
	"fmt"
	"math"
	"math/rand"
	"reflect"
	"sync"
	"testing"
	"time"
)

// seedData is the demo input of cmd/outliers: 1,000 uniform values with 97
// added at 7, 113 and 835.
func seedData() []float64 {
	rng := rand.New(rand.NewSource(1))
	x := make([]float64, 1000)
	for i := range x {
		x[i] = rng.Float64()
	}
	for _, i := range []int{7, 113, 835} {
		x[i] += 97
	}
	return x
}

var seedWant = []int{7, 113, 835}

// expected is the answer any server gives for x under the classic
// detector with threshold thr, split as a host with lanes workers splits
// it: the Go reference, which reproduces the worker's arithmetic bit for
// bit. ok is false when the answer is an error of status st.
func expected(x []float64, thr float64, policy NaNPolicy, lanes int) ([]int, Status) {
	if policy == NaNDefault {
		policy = NaNRaise
	}
	if k := splitCount(len(x), lanes); k > 1 {
		return refSplit(x, k, thr, policy)
	}
	return refDetect(x, thr, policy)
}

// checkAnswer compares got with the reference answer, exactly; on a
// mismatch it says how far the disputed values are from the cut-off.
func checkAnswer(t *testing.T, what string, x []float64, thr float64, lanes int, got []int, err error) {
	t.Helper()
	want, st := expected(x, thr, NaNRaise, lanes)
	if st != StatusOK {
		var e *Error
		if !errors.As(err, &e) || e.Status != st {
			t.Errorf("%s: %v, want status %v", what, err, st)
		}
		return
	}
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if reflect.DeepEqual(got, want) {
		return
	}
	mean, std := 0.0, 0.0
	for _, v := range x {
		mean += v
	}
	mean /= float64(len(x))
	for _, v := range x {
		std += (v - mean) * (v - mean)
	}
	std = math.Sqrt(std / float64(len(x)))
	g, w := map[int]bool{}, map[int]bool{}
	for _, i := range got {
		g[i] = true
	}
	for _, i := range want {
		w[i] = true
	}
	bad := 0
	for i := range x {
		if g[i] != w[i] {
			if bad++; bad <= 5 {
				t.Errorf("%s: index %d (|x-mean| - k*std = %g): server %v, reference %v",
					what, i, math.Abs(x[i]-mean)-thr*std, g[i], w[i])
			}
		}
	}
	t.Errorf("%s: %d indices, reference %d; %d disagreements", what, len(got), len(want), bad)
}

// normalData is n normal values with a few large ones added.
func normalData(seed int64, n int) []float64 {
	rng := rand.New(rand.NewSource(seed))
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	for j := 0; j < n/500; j++ {
		x[rng.Intn(n)] += 10 * rng.NormFloat64()
	}
	return x
}

func contractTests(t *testing.T, socket string) {
	dial := func(t *testing.T) *Client { return testClient(t, socket) }

	t.Run("Seed", func(t *testing.T) {
		c := dial(t)
		for i := 0; i < 3; i++ { // the lane and its segments are reused
			got, err := c.Detect(seedData())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, seedWant) {
				t.Fatalf("Detect = %v, want %v", got, seedWant)
			}
		}
	})

	t.Run("Info", func(t *testing.T) {
		c := dial(t)
		if c.Workers() < 1 {
			t.Errorf("Workers() = %d", c.Workers())
		}
		d := c.Detectors()
		if len(d) == 0 || d[0].Name != "classic" || !d[0].Split || d[0].SummarySize != classicSummarySize ||
			len(d[0].Params) != 1 || d[0].Params[0] != (Param{"threshold", 2}) {
			t.Errorf("Detectors() = %+v, want row 0 classic split 5 threshold=2.0", d)
		}
		d[0].Params[0].Name = "spoiled" // the caller's copy
		if c.Detectors()[0].Params[0].Name != "threshold" {
			t.Error("Detectors() returned the Client's own table")
		}
	})

	t.Run("Parity", func(t *testing.T) {
		c := dial(t)
		lanes := c.Workers()
		for _, n := range []int{0, 1, 2, 3, 7, 8, 9, 10, 100, 127, 128, 129, 1000, 4097, 65536, 65537, 200000, 262144, 1000000} {
			x := normalData(int64(n), n)
			for _, k := range []float64{0.5, 2, 3} {
				got, err := c.DetectWith(x, Options{Threshold: k})
				checkAnswer(t, fmt.Sprintf("n=%d k=%v", n, k), x, k, lanes, got, err)
			}
		}
	})

	t.Run("ManyIndicesGrowResult", func(t *testing.T) {
		// Far more indices than a lane's first result segment holds.
		c := dial(t)
		x := normalData(3, 20000)
		got, err := c.DetectWith(x, Options{Threshold: 0.1})
		if len(got) < 10000 {
			t.Fatalf("only %d indices (%v)", len(got), err)
		}
		checkAnswer(t, "k=0.1", x, 0.1, 1, got, err)
	})

	t.Run("NaNPolicies", func(t *testing.T) {
		c := dial(t)
		x := seedData()
		x[500], x[600] = math.NaN(), math.Inf(1)

		got, err := c.DetectWith(x, Options{NaNPolicy: NaNOmit})
		if err != nil || !reflect.DeepEqual(got, seedWant) {
			t.Errorf("omit: %v, %v; want %v", got, err, seedWant)
		}
		got, err = c.DetectWith(x, Options{NaNPolicy: NaNPropagate})
		if err != nil || len(got) != 0 {
			t.Errorf("propagate: %v, %v; want no indices", got, err)
		}
		for _, p := range []NaNPolicy{NaNRaise, NaNDefault} {
			_, err = c.DetectWith(x, Options{NaNPolicy: p})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("policy %v: error %v is not an *Error", p, err)
			}
			if e.Status != StatusNonFinite || e.Type == "" || e.Message == "" {
				t.Errorf("policy %v: %+v, want NON_FINITE with type and message", p, e)
			}
			t.Logf("policy %v: %v", p, err)
		}
		if _, err := c.DetectWith(x, Options{NaNPolicy: 7}); !isStatus(err, StatusBadValue) {
			t.Errorf("policy 7: %v, want BAD_VALUE", err)
		}
		// The connection is still good afterwards.
		if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
			t.Errorf("after errors: %v, %v", got, err)
		}
	})

	t.Run("BadThreshold", func(t *testing.T) {
		c := dial(t)
		for _, k := range []float64{-1, math.Inf(1)} {
			if _, err := c.DetectWith(seedData(), Options{Threshold: k}); !isStatus(err, StatusBadValue) {
				t.Errorf("k=%v: %v, want BAD_VALUE", k, err)
			}
		}
	})

	t.Run("Params", func(t *testing.T) {
		c := dial(t)
		x := normalData(5, 5000)
		byThreshold, err1 := c.DetectWith(x, Options{Threshold: 1.5})
		byParams, err2 := c.DetectWith(x, Options{Params: map[string]float64{"threshold": 1.5}})
		byName, err3 := c.DetectWith(x, Options{Detector: "classic", Params: map[string]float64{"threshold": 1.5}})
		if err1 != nil || err2 != nil || err3 != nil || !reflect.DeepEqual(byThreshold, byParams) ||
			!reflect.DeepEqual(byThreshold, byName) {
			t.Errorf("threshold 1.5 three ways: %d %d %d indices (%v %v %v)", len(byThreshold), len(byParams),
				len(byName), err1, err2, err3)
		}
		checkAnswer(t, "threshold 1.5", x, 1.5, 1, byThreshold, err1)
		// A threshold of exactly 0, which only Params can ask for.
		got, err := c.DetectWith(x, Options{Params: map[string]float64{"threshold": 0}})
		checkAnswer(t, "threshold 0", x, 0, 1, got, err)
		// NaN means the default.
		got, err = c.DetectWith(seedData(), Options{Params: map[string]float64{"threshold": math.NaN()}})
		if err != nil || !reflect.DeepEqual(got, seedWant) {
			t.Errorf("NaN threshold: %v %v", got, err)
		}
		for name, opt := range map[string]Options{
			"unknown parameter": {Params: map[string]float64{"k": 1}},
			"unknown detector":  {Detector: "no.such:detector"},
			"both thresholds":   {Threshold: 2, Params: map[string]float64{"threshold": 3}},
		} {
			var e *Error
			if _, err := c.DetectWith(x, opt); !errors.As(err, &e) || e.Status != StatusBadValue {
				t.Errorf("%s: %v, want BAD_VALUE", name, err)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}
	})

	t.Run("Buffer", func(t *testing.T) {
		c := dial(t)
		b, err := c.NewBuffer(1000)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if n := copy(b.Data(), seedData()); n != 1000 || b.Len() != 1000 {
			t.Fatalf("copied %d, Len %d", n, b.Len())
		}
		got, err := c.DetectBuffer(b, Options{})
		if err != nil || !reflect.DeepEqual(got, seedWant) {
			t.Fatalf("DetectBuffer = %v, %v", got, err)
		}
		for _, tc := range []struct {
			start, count int
			want         []int
		}{{100, 800, []int{13, 735}}, {500, 500, []int{335}}, {0, 500, []int{7, 113}}, {113, -1, []int{0, 722}}} {
			got, err := c.DetectRange(b, tc.start, tc.count, Options{})
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("DetectRange(%d, %d) = %v, %v; want %v", tc.start, tc.count, got, err, tc.want)
			}
		}
		// Writes to Data are seen by the next call, without a copy.
		b.Data()[400] = -500
		got, err = c.DetectBuffer(b, Options{Threshold: 3})
		if want := []int{7, 113, 400, 835}; err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("after a write: %v, %v; want %v", got, err, want)
		}
		for _, r := range [][2]int{{900, 200}, {-1, 5}, {1001, 0}, {0, -2}} {
			if _, err := c.DetectRange(b, r[0], r[1], Options{}); !isStatus(err, StatusOutOfRange) {
				t.Errorf("DetectRange(%d, %d): %v, want OUT_OF_RANGE", r[0], r[1], err)
			}
		}
	})

	t.Run("ResultTooSmallThenGrow", func(t *testing.T) {
		c := dial(t)
		b, err := c.NewBuffer(1000)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		copy(b.Data(), seedData())
		r, err := c.NewResult(2)
		if err != nil {
			t.Fatal(err)
		}
		n, err := c.DetectInto(r, b, 0, b.Len(), Options{})
		var e *Error
		if !errors.As(err, &e) || e.Status != StatusTooSmall || e.Needed != 3 || n != 0 || r.Len() != 0 {
			t.Fatalf("DetectInto into 2 slots: n=%d err=%v, want TOO_SMALL needing 3", n, err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if r, err = c.NewResult(e.Needed); err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		n, err = c.DetectInto(r, b, 0, b.Len(), Options{})
		if err != nil || n != 3 || r.Cap() != 3 || r.Len() != 3 {
			t.Fatalf("DetectInto = %d, %v", n, err)
		}
		if got := r.Indices(); !reflect.DeepEqual(got, []int64{7, 113, 835}) {
			t.Fatalf("Indices = %v", got)
		}
		n, err = c.DetectInto(r, b, 500, 500, Options{})
		if got := r.Indices(); err != nil || n != 1 || !reflect.DeepEqual(got, []int64{335}) {
			t.Fatalf("sub-range: %d %v %v", n, got, err)
		}
		// A zero-capacity result is fine when the answer is empty.
		r0, err := c.NewResult(0)
		if err != nil {
			t.Fatal(err)
		}
		defer r0.Close()
		if n, err := c.DetectInto(r0, b, 0, 5, Options{}); err != nil || n != 0 || len(r0.Indices()) != 0 {
			t.Errorf("empty answer into 0 slots: %d, %v", n, err)
		}
	})

	t.Run("Split", func(t *testing.T) {
		c := dial(t)
		lanes := c.Workers()
		if lanes < 2 {
			t.Skipf("the server runs %d worker(s): nothing to split over", lanes)
		}
		const n = 1000000
		x := normalData(6, n)
		b, err := c.NewBuffer(n)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		copy(b.Data(), x)
		want, _ := expected(x, 2, NaNRaise, lanes)
		got, err := c.DetectBuffer(b, Options{})
		checkAnswer(t, "DetectBuffer", x, 2, lanes, got, err)
		got, err = c.Detect(x)
		checkAnswer(t, "Detect (copy-in)", x, 2, lanes, got, err)
		sub := x[200000:800000]
		got, err = c.DetectRange(b, 200000, len(sub), Options{Threshold: 3})
		checkAnswer(t, "DetectRange", sub, 3, lanes, got, err)

		r, err := c.NewResult(10)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.DetectInto(r, b, 0, n, Options{})
		var e *Error
		if !errors.As(err, &e) || e.Status != StatusTooSmall || e.Needed != len(want) || r.Len() != 0 {
			t.Fatalf("split DetectInto into 10 slots: %v, want TOO_SMALL needing %d", err, len(want))
		}
		r.Close()
		if r, err = c.NewResult(e.Needed); err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		k, err := c.DetectInto(r, b, 0, n, Options{})
		got = make([]int, 0, k)
		for _, v := range r.Indices() {
			got = append(got, int(v))
		}
		checkAnswer(t, "DetectInto", x, 2, lanes, got, err)
		// Just below SPLIT_MIN the call runs whole, as one DETECT.
		whole, err := c.DetectRange(b, 0, splitMin-1, Options{})
		checkAnswer(t, "just below SPLIT_MIN", x[:splitMin-1], 2, lanes, whole, err)
	})

	t.Run("Concurrent", func(t *testing.T) {
		c := dial(t)
		const goroutines, calls = 16, 200
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(100 + g)))
				for i := 0; i < calls; i++ {
					n := 50 + rng.Intn(2000)
					x := make([]float64, n)
					for j := range x {
						x[j] = rng.Float64()
					}
					x[n/2] = 1e6
					got, err := c.DetectWith(x, Options{Threshold: 3})
					if err != nil {
						errs <- fmt.Errorf("goroutine %d call %d: %w", g, i, err)
						return
					}
					if want := []int{n / 2}; !reflect.DeepEqual(got, want) {
						errs <- fmt.Errorf("goroutine %d call %d: got %v want %v", g, i, got, want)
						return
					}
				}
			}(g)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		c.mu.Lock()
		lanes := len(c.idle)
		c.mu.Unlock()
		if lanes < 1 || lanes > goroutines {
			t.Errorf("%d lanes for %d goroutines", lanes, goroutines)
		}
		t.Logf("%d lanes", lanes)
	})

	t.Run("CloseBufferInFlight", func(t *testing.T) {
		c := dial(t)
		b, err := c.NewBuffer(100000)
		if err != nil {
			t.Fatal(err)
		}
		copy(b.Data(), normalData(4, 100000))
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := 0; i < 20; i++ {
					_, err := c.DetectBuffer(b, Options{})
					if errors.Is(err, ErrClosed) {
						return
					}
					// Any other outcome (OK, or NO_SEGMENT once the name is
					// gone) is fine; what matters is no crash.
				}
			}()
		}
		close(start)
		if err := b.Close(); err != nil {
			t.Error(err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		wg.Wait()
		if b.Data() != nil {
			t.Error("Data after Close is not nil")
		}
		if _, err := c.DetectBuffer(b, Options{}); !errors.Is(err, ErrClosed) {
			t.Errorf("DetectBuffer after Close: %v, want ErrClosed", err)
		}
		// The client is unaffected.
		if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
			t.Errorf("Detect after: %v, %v", got, err)
		}
	})

	t.Run("CloseDuringCalls", func(t *testing.T) {
		before := ownSegments(t)
		c, err := Dial(socket)
		if err != nil {
			t.Fatal(err)
		}
		x := normalData(7, 1000000)
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		started := make(chan struct{}, 4)
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				started <- struct{}{}
				for {
					if _, err := c.Detect(x); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		for g := 0; g < 4; g++ {
			<-started
		}
		time.Sleep(50 * time.Millisecond)
		t0 := time.Now()
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("Close took %v", d)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if !errors.Is(err, ErrClosed) {
				t.Errorf("call during Close: %v, want ErrClosed", err)
			}
		}
		if after := ownSegments(t); len(after) != len(before) {
			t.Errorf("before %v, after Close %v", before, after)
		}
	})

	t.Run("CloseClient", func(t *testing.T) {
		before := ownSegments(t)
		c, err := Dial(socket)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() { defer wg.Done(); c.Detect(seedData()) }()
		}
		wg.Wait()
		if len(ownSegments(t)) <= len(before) {
			t.Error("no lane segments while the client is open")
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if after := ownSegments(t); len(after) != len(before) {
			t.Errorf("segments before %v, after Close %v", before, after)
		}
		if _, err := c.Detect(seedData()); !errors.Is(err, ErrClosed) {
			t.Errorf("Detect after Close: %v", err)
		}
		if err := c.Ping(); !errors.Is(err, ErrClosed) {
			t.Errorf("Ping after Close: %v", err)
		}
		if _, err := c.NewBuffer(3); !errors.Is(err, ErrClosed) {
			t.Errorf("NewBuffer after Close: %v", err)
		}
	})
}

func isStatus(err error, s Status) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == s
}
