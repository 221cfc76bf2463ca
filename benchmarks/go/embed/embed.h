/* The C half of benchmarks/go/embed: CPython embedded, numpy's one-liner called
 * in process on a Go []float64 wrapped without a copy. See main.go. */
#ifndef SHMPOOL_BENCH_EMBED_H
#define SHMPOOL_BENCH_EMBED_H

/* Start CPython on the calling thread (which then holds the GIL), put the
 * newline-separated paths at the front of sys.path, import numpy and define
 * the one-liner. 0 on success, -1 with embed_error() set. */
int embed_init(const char *program, const char *paths);

/* numpy's one-liner on x[0:n] (wrapped as a read-only ndarray, not copied).
 * Writes the indices to out when there are at most cap of them; returns how
 * many there are, or -1 with embed_error() set. gil = 0: the caller's thread
 * holds the GIL already (the thread that called embed_init, before
 * embed_release); gil = 1: PyGILState_Ensure/Release around the call, from
 * any thread. */
long long embed_detect(const double *x, long long n, long long *out, long long cap, int gil);

/* mallopt: glibc's mmap and trim thresholds at the ceilings a long-running
 * process reaches by itself (32 MiB, 64 MiB). 0 on success. */
int embed_tune_malloc(void);

/* Release the GIL held since embed_init (PyEval_SaveThread), so that any
 * thread may take it with gil = 1; embed_reacquire takes it back. */
void embed_release(void);
void embed_reacquire(void);

/* sys.getallocatedblocks() (takes the GIL itself when gil = 1); -1 on error. */
long long embed_allocated_blocks(int gil);

/* "Python 3.11.7 ..., numpy 2.x" */
const char *embed_versions(void);

const char *embed_error(void);

#endif
