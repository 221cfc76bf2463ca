package shmpool

// Splitting a call over several workers (LAYOUT.md 5): SUMMARIZE each chunk
// on its own lane, COMBINE the summaries once, FLAG each chunk, and
// concatenate the chunks' indices in order.

import (
	"fmt"
	"time"
)

// runSplit carries out cl as k chunks. first is the lane run took; the
// others are taken here, on workers first does not serve where possible.
// Every lane goes back to the Client before runSplit returns.
func (c *Client) runSplit(first *lane, cl *call, p *callParams, k int) (err error) {
	cl.split = true
	lanes, err := c.splitLanes(first, k, cl.deadline)
	if err != nil {
		return err
	}
	defer func() {
		for _, l := range lanes {
			if l != nil {
				c.putLane(l)
			}
		}
	}()
	info := first.info
	bounds := make([]int, k+1)
	for i := range bounds {
		bounds[i] = splitBound(cl.n, k, i)
	}

	// Phase 1: copy each chunk in (Detect) and send its SUMMARIZE at once,
	// so that worker i summarizes while chunk i+1 is copied; then read.
	for i := 0; i < k && err == nil; i++ {
		err = c.sendSummarize(&lanes[i], info, cl, p, bounds[i], bounds[i+1])
	}
	ss := p.det.SummarySize
	summaries := make([]float64, k*ss)
	for i, l := range lanes {
		if l == nil || l.pending == 0 {
			continue
		}
		e := l.recvValues(summaries[i*ss:(i+1)*ss], ss, "SUMMARIZE")
		if err == nil {
			err = e
		}
	}
	if err != nil {
		return err
	}

	// Combine once, on the first lane.
	l0 := lanes[0]
	if err := l0.arm(cl); err != nil {
		return err
	}
	h, err := l0.roundTrip(&request{Op: opCombine, Count: uint64(k), Detector: p.row,
		NaNPolicy: cl.opt.NaNPolicy, NParams: p.nparams, Params: p.params, Values: summaries})
	if err != nil {
		return err
	}
	if h.Status != StatusOK {
		return l0.statusError(h)
	}
	if h.NValues == 0 { // no index can be flagged
		if cl.res == nil {
			cl.idx = []int{}
		} else {
			cl.count = 0
		}
		return nil
	}
	if h.NValues > maxParams {
		l0.broken = true
		return fmt.Errorf("shmpool: COMBINE replied %d flag parameters; a FLAG request carries at most %d", h.NValues, maxParams)
	}
	flag := request{Op: opFlag, Detector: p.row, NaNPolicy: cl.opt.NaNPolicy, NParams: h.NValues}
	for i := 0; i < int(h.NValues); i++ {
		flag.Params[i] = replyValue(l0.buf, i)
	}

	// Phase 2: FLAG every chunk into its lane's result segment; ask again,
	// with a larger one, where the answer did not fit.
	counts := make([]int, k)
	todo := make([]bool, k)
	for i := range todo {
		todo[i] = true
		if err := lanes[i].ensureOut(firstGuess(bounds[i+1] - bounds[i])); err != nil {
			return err
		}
	}
	for round := 0; round < 3; round++ {
		for i, l := range lanes {
			if !todo[i] || err != nil {
				continue
			}
			a, b := bounds[i], bounds[i+1]
			r := flag
			r.Start, r.Count, r.Base = uint64(a), uint64(b-a), uint64(a)
			if cl.copyIn {
				r.Start, r.DataName = 0, l.data.name
			} else {
				r.Start, r.DataName = uint64(cl.start+a), cl.seg.name
			}
			r.OutName = l.out.name
			if err = l.arm(cl); err == nil {
				err = l.send(&r)
			}
		}
		again := false
		for i, l := range lanes {
			if !todo[i] || l.pending == 0 {
				continue
			}
			h, e := l.recv()
			switch {
			case e != nil:
			case h.Status == StatusTooSmall && h.Needed > uint64(l.out.capacity) &&
				h.Needed <= uint64(bounds[i+1]-bounds[i]) && round < 2:
				e = l.ensureOut(int(h.Needed))
				again = true
			case h.Status != StatusOK:
				e = l.statusError(h)
			default:
				if e = l.checkCount(h, l.out); e == nil {
					counts[i], todo[i] = int(h.Count), false
				}
			}
			if err == nil {
				err = e
			}
		}
		if err != nil {
			return err
		}
		if !again {
			break
		}
	}
	for i := range todo {
		if todo[i] {
			return fmt.Errorf("shmpool: chunk %d kept answering TOO_SMALL", i)
		}
	}

	// Assemble, in chunk order.
	total := 0
	for _, n := range counts {
		total += n
	}
	var dst []int
	if cl.res != nil {
		if total > cl.res.capacity {
			return &Error{Status: StatusTooSmall, Needed: total, Message: fmt.Sprintf(
				"the answer has %d indices; the result holds %d", total, cl.res.capacity)}
		}
	} else {
		dst = make([]int, total)
	}
	pos := 0
	for i, l := range lanes {
		raw := l.out.ints()[:counts[i]]
		if cl.res != nil {
			// Checked in place, then copied.
			prev := int64(bounds[i]) - 1
			for j, v := range raw {
				if v <= prev || v >= int64(bounds[i+1]) {
					l.broken = true
					return fmt.Errorf("shmpool: server returned index %d at position %d of chunk %d (values %d to %d)",
						v, j, i, bounds[i], bounds[i+1])
				}
				prev = v
			}
			copy(cl.res.ints()[pos:], raw)
		} else if err := l.copyIndices(dst[pos:pos+counts[i]], raw, bounds[i], bounds[i+1]); err != nil {
			return err
		}
		pos += counts[i]
	}
	if cl.res != nil {
		cl.count = total
	} else {
		cl.idx = dst
	}
	return nil
}

// splitLanes returns k lanes for a split call: first, then idle lanes on
// workers not yet chosen, then newly dialed ones (the server hands a host
// process's connections to distinct workers first). On failure every lane
// taken, first included, has been given back.
func (c *Client) splitLanes(first *lane, k int, deadline time.Time) ([]*lane, error) {
	lanes := make([]*lane, 1, k)
	lanes[0] = first
	used := make([]bool, first.info.workers)
	if first.worker >= 0 && first.worker < len(used) {
		used[first.worker] = true
	}
	c.mu.Lock()
	if !c.closed.Load() {
		for i := len(c.idle) - 1; i >= 0 && len(lanes) < k; i-- {
			l := c.idle[i]
			if l.info != first.info || l.worker < 0 || l.worker >= len(used) || used[l.worker] {
				continue
			}
			used[l.worker] = true
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			l.busy, l.reused, l.sent, l.stale = true, true, false, false
			c.wg.Add(1)
			lanes = append(lanes, l)
		}
	}
	c.mu.Unlock()
	for len(lanes) < k {
		l, err := c.getLane(true, deadline)
		if err == nil && l.info != first.info {
			c.putLane(l)
			err = errChanged
		}
		if err != nil {
			for _, l := range lanes {
				c.putLane(l)
			}
			return nil, err
		}
		lanes = append(lanes, l)
	}
	return lanes, nil
}

var errChanged = fmt.Errorf("shmpool: the server's workers or detector table changed during the call; try again")

// sendSummarize prepares chunk [a, b) on *lp (copying it in for Detect)
// and sends its SUMMARIZE. A lane that had been idle and whose other end is
// gone is replaced by a new one, once.
func (c *Client) sendSummarize(lp **lane, info *serverInfo, cl *call, p *callParams, a, b int) error {
	for attempt := 0; ; attempt++ {
		l := *lp
		r := request{Op: opSummarize, Start: uint64(cl.start + a), Count: uint64(b - a), Base: uint64(a),
			Detector: p.row, NaNPolicy: cl.opt.NaNPolicy, NParams: p.nparams, Params: p.params}
		if cl.copyIn {
			if err := l.ensureData(b - a); err != nil {
				return err
			}
			copy(l.data.floats(), cl.x[a:b])
			l.data.setCount(b - a)
			r.Start, r.DataName = 0, l.data.name
		} else {
			r.DataName = cl.seg.name
		}
		err := l.arm(cl)
		if err == nil {
			err = l.send(&r)
		}
		if err == nil || !l.stale || attempt > 0 {
			return err
		}
		// Stale: nothing ran. Replace the lane and send again.
		c.putLane(l)
		*lp = nil
		nl, err := c.getLane(true, cl.deadline)
		if err != nil {
			return err
		}
		*lp = nl
		if nl.info != info {
			return errChanged
		}
	}
}

// recvValues receives the reply to the pending request, which must be OK
// with exactly n values, and copies them into dst.
func (l *lane) recvValues(dst []float64, n int, op string) error {
	h, err := l.recv()
	if err != nil {
		return err
	}
	if h.Status != StatusOK {
		return l.statusError(h)
	}
	if int(h.NValues) != n {
		l.broken = true
		return fmt.Errorf("shmpool: %s replied %d values; the detector's summary has %d", op, h.NValues, n)
	}
	for j := range dst {
		dst[j] = replyValue(l.buf, j)
	}
	return nil
}
