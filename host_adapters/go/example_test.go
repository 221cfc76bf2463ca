package shmpool_test

import (
	"errors"
	"fmt"
	"log"
	"math"
	"math/rand"
	"time"

	shmpool "github.com/shmpool/shmpool/host_adapters/go"
)

// data returns 1,000 uniform values in [0, 1) with 97 added at 7, 113 and
// 835.
func data() []float64 {
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

func ExampleClient_Detect() {
	// DefaultSocketPath is $SHMPOOL_SOCKET, which the tests point at the
	// server they started.
	c, err := shmpool.Dial(shmpool.DefaultSocketPath())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	idx, err := c.Detect(data())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(idx)
	// Output: [7 113 835]
}

func ExampleClient_DetectBuffer() {
	c, err := shmpool.Dial(shmpool.DefaultSocketPath())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Write straight into shared memory: no copy on the way to the workers.
	b, err := c.NewBuffer(1000)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	copy(b.Data(), data())

	idx, err := c.DetectBuffer(b, shmpool.Options{Threshold: 3})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(idx)

	// Indices of a sub-range are relative to its start.
	idx, err = c.DetectRange(b, 100, 800, shmpool.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(idx)
	// Output:
	// [7 113 835]
	// [13 735]
}

// A call over 262,144 values or more is split over the server's workers
// (LAYOUT.md 5): each summarizes its chunk of the Buffer in place, one
// combines the summaries, each flags its chunk.
func ExampleClient_DetectBuffer_split() {
	c, err := shmpool.Dial(shmpool.DefaultSocketPath())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	b, err := c.NewBuffer(1000000)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	x := b.Data()
	rng := rand.New(rand.NewSource(2))
	for i := range x {
		x[i] = rng.Float64()
	}
	x[123456] += 50
	x[500000] -= 50
	x[999999] += 50

	idx, err := c.DetectBuffer(b, shmpool.Options{Threshold: 5})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(idx)
	// Output: [123456 500000 999999]
}

func ExampleClient_DetectInto() {
	c, err := shmpool.Dial(shmpool.DefaultSocketPath())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	b, err := c.NewBuffer(1000)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	copy(b.Data(), data())

	// A result segment too small for the answer: the error says how big
	// it must be.
	r, err := c.NewResult(1)
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.DetectInto(r, b, 0, b.Len(), shmpool.Options{})
	var e *shmpool.Error
	if errors.As(err, &e) && e.Status == shmpool.StatusTooSmall {
		fmt.Println("needed", e.Needed)
		r.Close()
		if r, err = c.NewResult(e.Needed); err != nil {
			log.Fatal(err)
		}
		_, err = c.DetectInto(r, b, 0, b.Len(), shmpool.Options{})
	}
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	fmt.Println(r.Indices())
	// Output:
	// needed 3
	// [7 113 835]
}

func ExampleError() {
	c, err := shmpool.Dial(shmpool.DefaultSocketPath())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	x := data()
	x[3] = math.NaN()
	_, err = c.DetectWith(x, shmpool.Options{NaNPolicy: shmpool.NaNRaise})
	var e *shmpool.Error
	if errors.As(err, &e) {
		// e.Type and e.Message are the Python exception's class and text.
		fmt.Println(e.Status, e.Type != "", e.Message != "")
	}
	// Output: NON_FINITE true true
}

func ExampleClient_Detectors() {
	c, err := shmpool.Dial(shmpool.DefaultSocketPath())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Row 0 is the server's default detector.
	d := c.Detectors()[0]
	fmt.Println(d.Name, d.Split, d.Params)

	// Parameters by name; a threshold of exactly 0 flags every value that
	// is not the mean.
	idx, err := c.DetectWith([]float64{1, 1, 1, 5}, shmpool.Options{
		Detector: "classic", Params: map[string]float64{"threshold": 0}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(idx)
	// Output:
	// classic true [{threshold 2}]
	// [0 1 2 3]
}

func ExampleDialConfig() {
	// Give up connecting after 2 s, and on any call after 500 ms (its
	// connection is then closed: a late reply is never misread).
	c, err := shmpool.DialConfig(shmpool.DefaultSocketPath(), shmpool.Config{
		DialTimeout: 2 * time.Second, CallTimeout: 500 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	idx, err := c.Detect(data())
	var e *shmpool.Error
	if errors.As(err, &e) && e.Timeout() {
		log.Fatal("too slow: ", err)
	}
	fmt.Println(idx, err)
	// Output: [7 113 835] <nil>
}
