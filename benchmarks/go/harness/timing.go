package harness

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"
)

// Method is one way of calling the detector at one size.
type Method struct {
	Call func() ([]int, error) // nil: not timed, Res.Error says why
	// On runs a batch of calls (the check, the warm-up, one round's timed
	// calls) where the method needs them run; nil: on the calling goroutine.
	On      func(batch func())
	Cleanup func() // if not nil, run once the size is done
	Res     Result

	want    []int // the checked answer
	spent   time.Duration
	stopped bool
}

// NewMethod is a method not yet callable: set Call, or Res.Error.
func NewMethod(name string, n int) *Method {
	return &Method{Res: Result{Method: name, N: n, LatNS: []int64{}}}
}

func (m *Method) batch(fn func()) {
	if m.On == nil {
		fn()
		return
	}
	m.On(fn)
}

// Time checks every method's answer against numpy's (ref) and times only
// those that pass: sp.Warmup untimed calls each, then sp.Rounds rounds of
// sp.Calls timed calls, the methods interleaved. Every timed answer must
// equal the checked one (compared outside the timed region); a method stops
// at the first that does not, at the first error, or once it has spent
// sp.BudgetS. The results are in the order of ms.
func Time(sp SizePlan, x []float64, ref []int, ms []*Method) []Result {
	for _, m := range ms {
		if m.Call == nil {
			continue
		}
		m.batch(func() {
			got, err := m.Call()
			if err == nil {
				err = Check(got, ref, x, sp)
			}
			if err != nil {
				m.Res.Error = "correctness check failed: " + err.Error()
				m.Call = nil
				return
			}
			m.Res.Correct, m.Res.Found, m.want = true, len(got), got
		})
	}
	for _, m := range ms {
		if m.Call == nil {
			continue
		}
		m.batch(func() {
			for i := 0; i < sp.Warmup; i++ {
				if _, err := m.Call(); err != nil {
					m.Res.Error = "warm-up call failed: " + err.Error()
					m.Call = nil
					return
				}
			}
		})
	}
	// the order rotates every round, so that no method always follows the same one
	for r := 0; r < sp.Rounds; r++ {
		for k := range ms {
			m := ms[(r+k)%len(ms)]
			if m.Call == nil || m.stopped {
				continue
			}
			runtime.GC()
			m.batch(func() { m.timed(sp.Calls) })
			if m.spent.Seconds() > sp.BudgetS && len(m.Res.LatNS) > 0 {
				m.stopped = true
				m.Res.Note = fmt.Sprintf("stopped after %d calls: time budget of %.0f s used", len(m.Res.LatNS), sp.BudgetS)
			}
		}
	}
	res := make([]Result, len(ms))
	for i, m := range ms {
		if m.Cleanup != nil {
			m.Cleanup()
		}
		res[i] = m.Res
	}
	return res
}

func (m *Method) timed(calls int) {
	for c := 0; c < calls; c++ {
		t0 := time.Now()
		got, err := m.Call()
		dt := time.Since(t0)
		if err != nil {
			m.Res.Error = "timed call failed: " + err.Error()
			m.Call = nil
			return
		}
		if !slices.Equal(got, m.want) {
			m.Res.Error = "a timed call's answer differs from the checked one"
			m.Res.Correct = false
			m.Call = nil
			return
		}
		m.Res.LatNS = append(m.Res.LatNS, dt.Nanoseconds())
		m.spent += dt
	}
}

// Concurrency is method's calls/s run: cp.Rounds rounds over cp.Goroutines,
// the order rotating every round, measure(g) making one round's calls with g
// goroutines (see Calls). A goroutine count that fails is not run again.
func Concurrency(cp *ConcPlan, method string, measure func(g int) (int64, float64, error)) []ConcResult {
	totals := map[int]*ConcResult{}
	for _, g := range cp.Goroutines {
		totals[g] = &ConcResult{Method: method, Goroutines: g}
	}
	for r := 0; r < cp.Rounds; r++ {
		for k := range cp.Goroutines {
			g := cp.Goroutines[(r+k)%len(cp.Goroutines)]
			t := totals[g]
			if t.Error != "" {
				continue
			}
			calls, secs, err := measure(g)
			t.Calls += calls
			t.Seconds += secs
			if err != nil {
				t.Error = err.Error()
			}
		}
	}
	res := make([]ConcResult, 0, len(cp.Goroutines))
	for _, g := range cp.Goroutines {
		res = append(res, *totals[g])
	}
	return res
}

// Calls has g goroutines call the detector in a loop for seconds, each with
// its own call from newCall, made warm times (untimed, answers unchecked)
// before the clock starts; every timed answer must equal ref. It returns the
// calls made, the seconds they took and the first error.
func Calls(g int, seconds float64, warm int, newCall func() func() ([]int, error), ref []int) (int64, float64, error) {
	var (
		wg    sync.WaitGroup
		ready sync.WaitGroup
		mu    sync.Mutex
		total int64
		first error
		t0    time.Time
	)
	start := make(chan struct{})
	limit := time.Duration(seconds * float64(time.Second))
	for i := 0; i < g; i++ {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			call := newCall()
			for j := 0; j < warm; j++ {
				_, _ = call()
			}
			ready.Done()
			<-start
			var n int64
			var err error
			for time.Since(t0) < limit {
				var got []int
				got, err = call()
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
	ready.Wait()
	t0 = time.Now()
	close(start)
	wg.Wait()
	return total, time.Since(t0).Seconds(), first
}
