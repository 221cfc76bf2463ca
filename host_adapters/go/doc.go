// Package shmpool is the Go host adapter of shmpool: it sends float64 data to
// a pool of Python outlier-detector workers run by `python -m shmpool serve`
// and returns the indices i with |x[i] - mean| > k * std (population std).
//
// Data and answers travel through POSIX shared-memory segments in /dev/shm;
// only small fixed-size control packets cross the server's Unix
// SOCK_SEQPACKET socket. The byte layout is docs/LAYOUT.md (version 1).
//
// The simplest use copies a slice into a segment the Client reuses:
//
//	c, err := shmpool.Dial(shmpool.DefaultSocketPath())
//	if err != nil { ... }
//	defer c.Close()
//	idx, err := c.Detect(x)
//
// To avoid the copy, write into a Buffer, whose Data is shared memory:
//
//	b, err := c.NewBuffer(n)
//	fill(b.Data())
//	idx, err := c.DetectBuffer(b, shmpool.Options{})
//	b.Close()
//
// and to avoid allocating the answer too, pass a Result to DetectInto.
//
// A Client is safe for concurrent use by multiple goroutines; see Client,
// Buffer and Result for the details. Errors the server reports (including
// exceptions raised by the Python detector) are *Error values carrying the
// status code and the Python exception's type, message and traceback.
//
// Segments are created as /dev/shm/shmpool-<pid>-<start>-<hex> with mode
// 0600 and are unlinked by Close. If the process dies first, any shmpool
// process of the same user (`shmpool cleanup`, a new Python Pool) may reap
// them, since the name records the owner's pid and start time.
package shmpool
