package shmpool

// Behaviour every server must show, run against the TestMain server
// (integration_test.go) and against a private Go fake (client_test.go).

import (
	"errors"
	"fmt"
	"math"
	"math/rand"
	"reflect"
	"sync"
	"testing"
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

// checkParity compares got with refDetect(x, k), tolerating disagreement
// only for values whose distance from the mean is within 1e-9 (relative) of
// k * std, where summation order may decide.
func checkParity(t *testing.T, x []float64, k float64, policy NaNPolicy, got []int) {
	t.Helper()
	want, _, _ := refDetect(x, k, policy)
	if reflect.DeepEqual(got, want) {
		return
	}
	finite := x
	if policy == NaNOmit {
		finite = nil
		for _, v := range x {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				finite = append(finite, v)
			}
		}
	}
	mean, std, _ := refStats(finite)
	limit := k * std
	in := func(s []int) map[int]bool {
		m := map[int]bool{}
		for _, i := range s {
			m[i] = true
		}
		return m
	}
	g, w := in(got), in(want)
	bad := 0
	for i := range x {
		if g[i] == w[i] {
			continue
		}
		if d := math.Abs(x[i] - mean); math.Abs(d-limit) > 1e-9*limit {
			if bad++; bad <= 5 {
				t.Errorf("n=%d k=%v: index %d (x=%v, |x-mean|=%v, k*std=%v): server says %v, reference %v",
					len(x), k, i, x[i], d, limit, g[i], w[i])
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d disagreements in all", bad)
	}
}

func contractTests(t *testing.T, socket string) {
	dial := func(t *testing.T) *Client {
		t.Helper()
		c, err := Dial(socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return c
	}

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

	t.Run("Parity", func(t *testing.T) {
		c := dial(t)
		rng := rand.New(rand.NewSource(2))
		for _, n := range []int{1, 2, 3, 10, 100, 1000, 4097, 65537, 1000000} {
			x := make([]float64, n)
			for i := range x {
				x[i] = rng.NormFloat64()
			}
			for j := 0; j < n/500; j++ {
				x[rng.Intn(n)] += 10 * rng.NormFloat64()
			}
			for _, k := range []float64{0.5, 2, 3} {
				got, err := c.DetectWith(x, Options{Threshold: k})
				if err != nil {
					t.Fatalf("n=%d k=%v: %v", n, k, err)
				}
				checkParity(t, x, k, NaNRaise, got)
			}
		}
	})

	t.Run("ManyIndicesGrowResult", func(t *testing.T) {
		// Far more indices than a lane's first result segment holds.
		c := dial(t)
		rng := rand.New(rand.NewSource(3))
		x := make([]float64, 20000)
		for i := range x {
			x[i] = rng.Float64()
		}
		got, err := c.DetectWith(x, Options{Threshold: 0.1})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < 10000 {
			t.Fatalf("only %d indices", len(got))
		}
		checkParity(t, x, 0.1, NaNRaise, got)
	})

	t.Run("NaNPolicies", func(t *testing.T) {
		c := dial(t)
		x := seedData()
		x[500], x[600] = math.NaN(), math.Inf(1)

		got, err := c.DetectWith(x, Options{NaNPolicy: NaNOmit})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, seedWant) {
			t.Errorf("omit: %v, want %v", got, seedWant)
		}
		got, err = c.DetectWith(x, Options{NaNPolicy: NaNPropagate})
		if err != nil || len(got) != 0 {
			t.Errorf("propagate: %v, %v; want no indices", got, err)
		}
		for _, p := range []NaNPolicy{NaNRaise, NaNDefault} {
			_, err = c.DetectWith(x, Options{NaNPolicy: p})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("policy %d: error %v is not an *Error", p, err)
			}
			if e.Status != StatusNonFinite || e.Type == "" || e.Message == "" {
				t.Errorf("policy %d: %+v, want NON_FINITE with type and message", p, e)
			}
			t.Logf("policy %d: %v", p, err)
		}
		// The connection is still good afterwards.
		if got, err := c.Detect(seedData()); err != nil || !reflect.DeepEqual(got, seedWant) {
			t.Errorf("after errors: %v, %v", got, err)
		}
	})

	t.Run("BadThreshold", func(t *testing.T) {
		c := dial(t)
		for _, k := range []float64{-1, math.Inf(1)} {
			_, err := c.DetectWith(seedData(), Options{Threshold: k})
			var e *Error
			if !errors.As(err, &e) || e.Status != StatusBadValue {
				t.Errorf("k=%v: %v, want BAD_VALUE", k, err)
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
			_, err := c.DetectRange(b, r[0], r[1], Options{})
			var e *Error
			if !errors.As(err, &e) || e.Status != StatusOutOfRange {
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
		if err != nil || n != 3 || r.Cap() != 3 {
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
					want := []int{}
					for j := rng.Intn(n / 50); j < n; j += 1 + rng.Intn(n/3+1) {
						x[j] += 1000
						want = append(want, j)
					}
					if len(want) > n/20 {
						want = want[:0] // too many to stay outliers; only the plain case below
						for j := range x {
							x[j] = rng.Float64()
						}
						x[n/2] = 1e6
						want = append(want, n/2)
					}
					got, err := c.DetectWith(x, Options{Threshold: 3})
					if err != nil {
						errs <- fmt.Errorf("goroutine %d call %d: %w", g, i, err)
						return
					}
					if !reflect.DeepEqual(got, want) {
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
		rng := rand.New(rand.NewSource(4))
		for i, d := 0, b.Data(); i < len(d); i++ {
			d[i] = rng.NormFloat64()
		}
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
