package shmpool

// A Go rendering of the classic detector of LAYOUT.md 4.1, operation for
// operation (numpy's pairwise sums, the block shift beyond 65,536 values,
// Chan's merge), so that its summaries equal the Python worker's bit for
// bit: TestReferenceMatchesVectors holds it to the summaries of the `call`
// vectors. The fake server runs it, and the parity tests compare the real
// server's answers with it.

import (
	"math"
	"math/big"
)

const refBlock = 1 << 16 // values summed as one block (detectors.BLOCK)

// pairwise is numpy's pairwise summation (DOUBLE_pairwise_sum) of the n
// values f(0) .. f(n-1): below 8 values a plain loop, up to 128 eight
// accumulators, beyond that the two halves (split at a multiple of 8).
func pairwise(n int, f func(i int) float64) float64 {
	return pairwiseFrom(0, n, f)
}

func pairwiseFrom(off, n int, f func(i int) float64) float64 {
	switch {
	case n < 8:
		res := math.Copysign(0, -1)
		for i := 0; i < n; i++ {
			res = float64(res + f(off+i))
		}
		return res
	case n <= 128:
		var r [8]float64
		for j := range r {
			r[j] = f(off + j)
		}
		i := 8
		for ; i < n-n%8; i += 8 {
			for j := range r {
				r[j] = float64(r[j] + f(off+i+j))
			}
		}
		res := float64(float64(float64(r[0]+r[1])+float64(r[2]+r[3])) + float64(float64(r[4]+r[5])+float64(r[6]+r[7])))
		for ; i < n; i++ {
			res = float64(res + f(off+i))
		}
		return res
	default:
		n2 := n / 2
		n2 -= n2 % 8
		return float64(pairwiseFrom(off, n2, f) + pairwiseFrom(off+n2, n-n2, f))
	}
}

// npSum is detectors._sum: 0.0 + numpy's pairwise sum.
func npSum(n int, f func(i int) float64) float64 { return 0.0 + pairwise(n, f) }

// refStats is detectors.Stats: one chunk's (or a merged) summary.
type refStats struct {
	n         int
	mean, m2  float64
	nonfinite int
	first     int // -1: none
}

func (s refStats) summary() []float64 {
	return []float64{float64(s.n), s.mean, s.m2, float64(s.nonfinite), float64(s.first)}
}

// ratio is a/b correctly rounded, as Python's int / int.
func ratio(a, b int) float64 {
	if a < 1<<53 && b < 1<<53 {
		return float64(a) / float64(b)
	}
	f, _ := new(big.Rat).SetFrac(big.NewInt(int64(a)), big.NewInt(int64(b))).Float64()
	return f
}

// ratioProd is (a*b)/c correctly rounded, as Python's a * b / c on ints.
func ratioProd(a, b, c int) float64 {
	p := new(big.Int).Mul(big.NewInt(int64(a)), big.NewInt(int64(b)))
	f, _ := new(big.Rat).SetFrac(p, big.NewInt(int64(c))).Float64()
	return f
}

// refMerge is Chan et al.'s merge of a followed by b (detectors.merge).
func refMerge(a, b refStats) refStats {
	first := a.first
	if first < 0 {
		first = b.first
	}
	bad := a.nonfinite + b.nonfinite
	if b.n == 0 {
		return refStats{a.n, a.mean, a.m2, bad, first}
	}
	if a.n == 0 {
		return refStats{b.n, b.mean, b.m2, bad, first}
	}
	n := a.n + b.n
	delta := float64(b.mean - a.mean)
	mean := float64(a.mean + float64(delta*ratio(b.n, n)))
	m2 := float64(float64(a.m2+b.m2) + float64(float64(delta*delta)*ratioProd(a.n, b.n, n)))
	return refStats{n, mean, m2, bad, first}
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// refFiniteStats is detectors._finite_stats: ok is false when x holds a
// non-finite value or a sum overflows.
func refFiniteStats(x []float64) (refStats, bool) {
	n := len(x)
	if n <= refBlock {
		s := npSum(n, func(i int) float64 { return x[i] })
		if !finite(s) {
			return refStats{}, false
		}
		mean := s / float64(n)
		m2 := npSum(n, func(i int) float64 { d := float64(x[i] - mean); return float64(d * d) })
		return refStats{n: n, mean: mean, m2: m2, first: -1}, true
	}
	shift := npSum(refBlock, func(i int) float64 { return x[i] }) / refBlock
	if !finite(shift) {
		return refStats{}, false
	}
	acc := refStats{first: -1}
	for i := 0; i < n; i += refBlock {
		blk := x[i:min(i+refBlock, n)]
		m := len(blk)
		s := npSum(m, func(j int) float64 { return float64(blk[j] - shift) })
		if !finite(s) {
			return refStats{}, false
		}
		mb := s / float64(m)
		m2 := npSum(m, func(j int) float64 {
			d := float64(float64(blk[j]-shift) - mb)
			return float64(d * d)
		})
		acc = refMerge(acc, refStats{n: m, mean: mb, m2: m2, first: -1})
	}
	return refStats{n: acc.n, mean: float64(shift + acc.mean), m2: acc.m2, first: -1}, true
}

// refOverflowingStats is detectors._overflowing_stats: numpy's inf/NaN.
func refOverflowingStats(x []float64) refStats {
	n := len(x)
	mean := npSum(n, func(i int) float64 { return x[i] }) / float64(n)
	m2 := npSum(n, func(i int) float64 { d := float64(x[i] - mean); return float64(d * d) })
	return refStats{n: n, mean: mean, m2: m2, first: -1}
}

// refChunkStats is detectors.chunk_stats: the classic summary of a chunk
// that starts at base within its call. policy is NaNRaise, NaNOmit or
// NaNPropagate.
func refChunkStats(x []float64, policy NaNPolicy, base int) refStats {
	n := len(x)
	if n == 0 {
		return refStats{first: -1}
	}
	if s, ok := refFiniteStats(x); ok {
		return s
	}
	var kept []float64
	first := -1
	for i, v := range x {
		if finite(v) {
			kept = append(kept, v)
		} else if first < 0 {
			first = base + i
		}
	}
	bad := n - len(kept)
	if bad == 0 {
		return refOverflowingStats(x)
	}
	if policy != NaNOmit {
		return refStats{0, 0, 0, bad, first}
	}
	k := refStats{first: -1}
	if len(kept) > 0 {
		var ok bool
		if k, ok = refFiniteStats(kept); !ok {
			k = refOverflowingStats(kept)
		}
	}
	return refStats{k.n, k.mean, k.m2, bad, first}
}

// refLimits is detectors.limits: the flag parameters (mean, cut), none
// (ok false, status OK) when nothing can be flagged, or NON_FINITE.
func refLimits(t refStats, k float64, policy NaNPolicy) (mean, cut float64, ok bool, status Status) {
	if t.nonfinite > 0 {
		if policy == NaNRaise {
			return 0, 0, false, StatusNonFinite
		}
		if policy == NaNPropagate {
			return 0, 0, false, StatusOK
		}
	}
	if t.n == 0 {
		return 0, 0, false, StatusOK
	}
	cut = math.NaN()
	if t.m2 >= 0 {
		cut = float64(k * math.Sqrt(t.m2/float64(t.n)))
	}
	if !finite(t.mean) || !finite(cut) {
		if policy == NaNRaise {
			return 0, 0, false, StatusNonFinite
		}
		return 0, 0, false, StatusOK
	}
	return t.mean, cut, true, StatusOK
}

// refFlag is detectors.flag: base + i for |x[i] - mean| > cut, NaN and inf
// never counted.
func refFlag(x []float64, mean, cut float64, base int) []int {
	idx := []int{}
	for i, v := range x {
		d := math.Abs(float64(v - mean))
		if d > cut && d < math.Inf(1) {
			idx = append(idx, base+i)
		}
	}
	return idx
}

// refCombine merges summaries (each [n, mean, m2, nonfinite, first]) in
// order (Classic.combine).
func refCombine(summaries [][]float64) refStats {
	t := refStats{first: -1}
	for _, s := range summaries {
		t = refMerge(t, refStats{int(s[0]), s[1], s[2], int(s[3]), int(s[4])})
	}
	return t
}

// refDetect is the whole classic detector on x (Classic.detect): the
// answer, or a status (NON_FINITE) when there is none.
func refDetect(x []float64, k float64, policy NaNPolicy) ([]int, Status) {
	mean, cut, ok, st := refLimits(refChunkStats(x, policy, 0), k, policy)
	if st != StatusOK {
		return nil, st
	}
	if !ok {
		return []int{}, StatusOK
	}
	return refFlag(x, mean, cut, 0), StatusOK
}

// refSplit is a split call of x in k chunks (LAYOUT.md 5): the answer any
// host that splits the same way gets, or a status.
func refSplit(x []float64, k int, thr float64, policy NaNPolicy) ([]int, Status) {
	n := len(x)
	var sums [][]float64
	for i := 0; i < k; i++ {
		a, b := splitBound(n, k, i), splitBound(n, k, i+1)
		sums = append(sums, refChunkStats(x[a:b], policy, a).summary())
	}
	mean, cut, ok, st := refLimits(refCombine(sums), thr, policy)
	if st != StatusOK {
		return nil, st
	}
	idx := []int{}
	if !ok {
		return idx, StatusOK
	}
	for i := 0; i < k; i++ {
		a, b := splitBound(n, k, i), splitBound(n, k, i+1)
		idx = append(idx, refFlag(x[a:b], mean, cut, a)...)
	}
	return idx, StatusOK
}

// splitmix is the data generator of the `call` vectors
// (tests/vectors/make_vectors.py).
func splitmix(n int, seed uint64, every, nanAt int) []float64 {
	x := make([]float64, n)
	s := seed
	for i := range x {
		s += 0x9E3779B97F4A7C15
		z := s
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		z ^= z >> 31
		x[i] = float64(z>>11) * (1.0 / (1 << 53))
	}
	if every > 0 {
		for i := 7; i < n; i += every {
			x[i] += 97
		}
	}
	if nanAt >= 0 {
		x[nanAt] = math.NaN()
	}
	return x
}

// fnv1a is FNV-1a 64 over the indices as little-endian int64 bytes.
func fnv1a(idx []int) uint64 {
	h := uint64(0xCBF29CE484222325)
	for _, v := range idx {
		u := uint64(int64(v))
		for b := 0; b < 8; b++ {
			h = (h ^ (u >> (8 * b) & 0xFF)) * 0x100000001B3
		}
	}
	return h
}
