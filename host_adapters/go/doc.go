// Package shmpool is the Go host adapter of shmpool: it sends float64 data to
// the Python outlier-detector workers of `python -m shmpool serve` and returns
// the indices they flag; for the classic detector, the i with
// |x[i] - mean| > k * std (population std).
//
// Data and answers travel through POSIX shared-memory segments in /dev/shm;
// only small packets cross the Unix SOCK_SEQPACKET connections. The server
// accepts a connection, checks its uid and hands it to one of its workers;
// from then on the host talks to that worker directly. The byte layout and
// the protocol are docs/LAYOUT.md, version 2; layout.go mirrors
// shmpool/layout.py.
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
// Options choose the detector (a row of the server's table, see
// Client.Detectors), its parameters by name, the NaN policy and a timeout;
// DialConfig sets the Client's connect and call timeouts.
//
// Concurrency: a Client is safe for concurrent use by multiple goroutines.
// It keeps a set of lanes (a connection to one worker and the segments that
// connection reuses) and gives each call an idle lane, dialing another when
// none is idle, so concurrent calls run on different workers. A call over
// 262,144 values or more of a split-capable detector (such as classic) is
// spread over up to one lane per worker (LAYOUT.md 5: SUMMARIZE each chunk,
// COMBINE once, FLAG each chunk); its answer is exactly the one every other
// shmpool host, the Python pool included, gives. Buffer and Result are
// safe for concurrent use as their documentation says; all other types are
// plain values.
//
// Errors: a status the server (or the Client itself) reports is an *Error
// carrying the status code and, for an exception the detector raised, the
// Python exception's type, message and traceback. A worker that dies during
// a call fails that call with StatusWorkerDied; a call that outlives its
// timeout fails with StatusTimeout and its connection is closed. Failures
// of the connection itself (no server, a server of another uid, a reply
// that breaks the layout) are plain errors. Every error's text starts with
// "shmpool: ".
//
// Segments: the process takes an owner lock first (LAYOUT.md 1.4: the file
// /dev/shm/shmpool-<pid>-<8 hex>-owner, created O_EXCL and held with a
// shared flock), then creates its segments as
// /dev/shm/shmpool-<pid>-<8 hex>-<16 hex> with O_EXCL|O_NOFOLLOW|O_CLOEXEC,
// mode 0600, and fallocate, so a full /dev/shm is an error and never a
// SIGBUS. Close unlinks them, and the owner file goes with the last one. If
// the process dies first, any shmpool process of the same user
// (`shmpool cleanup`, a new Python Pool) sees the lock gone and reaps them.
//
// The package is pure Go (standard library, no cgo) and Linux only.
package shmpool
