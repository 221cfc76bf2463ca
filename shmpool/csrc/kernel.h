/* The classic detector's arithmetic (docs/LAYOUT.md 4.1), shared by the
 * worker loop and the Python bindings.  Pure C: no Python, no GIL. */
#ifndef SHMPOOL_KERNEL_H
#define SHMPOOL_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#define KERNEL_BLOCK 65536  /* values summed as one block (512 KiB, in L2) */

typedef struct {
    double n;     /* values counted */
    double mean;
    double m2;    /* sum of squared deviations from mean */
} kstats;

/* Statistics of x[0:n] exactly as shmpool/detectors.py's _finite_stats
 * computes them.  Returns 0, or -1 when a sum is not finite (NaN or inf in
 * the data, or an overflow): the caller then takes the Python path, which
 * applies the nan_policy. */
int kernel_stats(const double *x, size_t n, kstats *out);

/* Chan et al.'s merge of b into a (docs/LAYOUT.md 4.1). */
void kernel_merge(kstats *a, const kstats *b);

/* Writes base + i for every |x[i] - mean| > cut (NaN and inf never count)
 * into out[0:room] while it has room; returns how many there are in all. */
size_t kernel_flag(const double *x, size_t n, double mean, double cut, int64_t base,
                   int64_t *out, size_t room);

#endif
