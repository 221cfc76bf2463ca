// Command spikes calls a detector of the user's own (examples/spikes.py) from
// Go: it makes n values with the splitmix64 generator of
// tests/vectors/make_vectors.py, plants spikes, asks a shmpool server started
// with `--detector spikes:Spikes` for them (split across its workers when n
// is large) and prints how many there are and the first five.
//
// Usage:
//
//	PYTHONPATH=examples shmpool serve --socket /tmp/s.sock --detector spikes:Spikes
//	spikes -socket /tmp/s.sock -n 1000000 -k 4
package main

import (
	"flag"
	"fmt"
	"os"

	shmpool "github.com/shmpool/shmpool/host_adapters/go"
)

func main() {
	socket := flag.String("socket", shmpool.DefaultSocketPath(), "path of the shmpool server's socket")
	n := flag.Int("n", 1_000_000, "how many values")
	k := flag.Float64("k", 4, "the spike threshold, in multiples of the RMS")
	flag.Parse()
	idx, err := run(*socket, *n, *k)
	if err != nil {
		fmt.Fprintln(os.Stderr, "spikes:", err)
		os.Exit(1)
	}
	head := idx
	if len(head) > 5 {
		head = head[:5]
	}
	fmt.Println(len(idx), head)
}

// data is splitmix64 uniform [0, 1) values minus 0.5, with 40 planted at
// every 100,003rd index: what tests/test_plugins.py makes in Python.
func data(n int) []float64 {
	x := make([]float64, n)
	s := uint64(7)
	for i := range x {
		s += 0x9E3779B97F4A7C15
		z := s
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		z ^= z >> 31
		x[i] = float64(z>>11)*0x1p-53 - 0.5
		if i%100_003 == 11 {
			x[i] += 40
		}
	}
	return x
}

func run(socket string, n int, k float64) ([]int, error) {
	c, err := shmpool.Dial(socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.DetectWith(data(n), shmpool.Options{Detector: "spikes:Spikes", Params: map[string]float64{"k": k}})
}
