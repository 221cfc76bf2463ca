// Command outliers is the shmpool Go demo: it makes 1,000 uniform values in
// [0, 1), adds 97 at indices 7, 113 and 835, asks a shmpool server for the
// outliers and prints them, which should be [7 113 835].
//
// Usage:
//
//	outliers [-socket PATH]
//
// The socket defaults to $SHMPOOL_SOCKET, else /tmp/shmpool-<uid>.sock.
package main

import (
	"flag"
	"fmt"
	"math/rand"
	"os"

	shmpool "github.com/shmpool/shmpool/host_adapters/go"
)

func main() {
	socket := flag.String("socket", shmpool.DefaultSocketPath(), "path of the shmpool server's socket")
	flag.Parse()
	if err := run(*socket); err != nil {
		fmt.Fprintln(os.Stderr, "outliers:", err)
		os.Exit(1)
	}
}

func run(socket string) error {
	rng := rand.New(rand.NewSource(1))
	x := make([]float64, 1000)
	for i := range x {
		x[i] = rng.Float64()
	}
	for _, i := range []int{7, 113, 835} {
		x[i] += 97
	}

	c, err := shmpool.Dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	idx, err := c.Detect(x)
	if err != nil {
		return err
	}
	fmt.Println(idx)
	return c.Close()
}
