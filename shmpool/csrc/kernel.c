/* The classic detector's two passes.
 *
 * Pass 1 reproduces numpy's summation order (a pairwise sum in blocks of 128
 * with eight accumulators, umath/loops_utils.h.src), so up to one block the
 * mean and std are numpy's to the bit; each accumulator is its own chain, so
 * the compiler may vectorize without changing a result (but must not fuse a
 * multiply and an add: built with -ffp-contract=off).  Beyond one block every
 * block is summed relative to a shift (the first block's mean), so rounding
 * follows the spread of the data rather than its magnitude.
 *
 * Pass 2 stores without branching on the data: a group of values is compared
 * at once, the indices of its hits are compressed into a vector (AVX-512) or
 * placed through a table of lane positions (AVX2) and stored whole, and the
 * count advances by the number of hits; so outliers cost no mispredictions
 * however many there are.  Which runs is decided once, by the CPU's flags.
 */
#include "kernel.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* sum over i of T(a[i]) in numpy's pairwise order; T uses k (shift), m (mean).
 * pf > 0: each leaf also prefetches the values pf further on (the next
 * block), which changes no result. */
#define PAIRWISE(NAME, T)                                                        \
    static double NAME(const double *a, size_t n, double k, double m, size_t pf) \
    {                                                                            \
        if (n < 8) {                                                             \
            double res = 0.;                                                     \
            for (size_t i = 0; i < n; i++)                                       \
                res += T(a[i]);                                                  \
            return res;                                                          \
        }                                                                        \
        if (n <= 128) {                                                          \
            double r[8];                                                         \
            size_t i;                                                            \
            for (size_t p = 0; pf && p < n; p += 8)                              \
                __builtin_prefetch(a + pf + p, 0, 3);                            \
            for (int j = 0; j < 8; j++)                                          \
                r[j] = T(a[j]);                                                  \
            for (i = 8; i < n - (n % 8); i += 8)                                 \
                for (int j = 0; j < 8; j++)                                      \
                    r[j] += T(a[i + j]);                                         \
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); \
            for (; i < n; i++)                                                   \
                res += T(a[i]);                                                  \
            return res;                                                          \
        }                                                                        \
        size_t n2 = n / 2;                                                       \
        n2 -= n2 % 8;                                                            \
        return NAME(a, n2, k, m, pf) + NAME(a + n2, n - n2, k, m, pf);           \
    }

#define SHIFTED(v) ((v) - k)
#define SQUARED(v) ((((v) - k) - m) * (((v) - k) - m))
PAIRWISE(pw_shifted, SHIFTED)
PAIRWISE(pw_squared, SQUARED)

/* numpy's np.add.reduce: the identity 0.0 plus the pairwise sum */
static double sum_shifted(const double *a, size_t n, double k) { return 0.0 + pw_shifted(a, n, k, 0.0, 0); }
static double sum_squared(const double *a, size_t n, double k, double m, size_t pf)
{
    return 0.0 + pw_squared(a, n, k, m, pf);
}

void kernel_merge(kstats *a, const kstats *b)
{
    if (b->n == 0)
        return;
    if (a->n == 0) {
        *a = *b;
        return;
    }
    double n = a->n + b->n, d = b->mean - a->mean;
    a->mean = a->mean + d * (b->n / n);
    a->m2 = a->m2 + b->m2 + d * d * (a->n * b->n / n);
    a->n = n;
}

int kernel_stats(const double *x, size_t n, kstats *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0)
        return 0;
    if (n <= KERNEL_BLOCK) {   /* numpy: mean = sum(x) / n; m2 = sum((x - mean)**2) */
        double s = sum_shifted(x, n, 0.0);
        if (!isfinite(s))
            return -1;
        double mean = s / (double)n;
        out->n = (double)n;
        out->mean = mean;
        out->m2 = sum_squared(x, n, 0.0, mean, 0);
        return 0;
    }
    double shift = sum_shifted(x, KERNEL_BLOCK, 0.0) / (double)KERNEL_BLOCK;
    if (!isfinite(shift))
        return -1;
    kstats acc = {0, 0, 0};
    for (size_t i = 0; i < n; i += KERNEL_BLOCK) {
        size_t nb = n - i < KERNEL_BLOCK ? n - i : KERNEL_BLOCK;
        double s = sum_shifted(x + i, nb, shift);
        if (!isfinite(s))
            return -1;
        kstats b = {(double)nb, s / (double)nb, 0};
        /* The block is in L2 now; while its squares are summed from there,
         * the next block streams in (pass 1 on two processes at once: 5-10 %
         * faster on the 2-core VM, within its noise at times). */
        size_t ahead = n - i >= 2 * KERNEL_BLOCK ? KERNEL_BLOCK : 0;
        b.m2 = sum_squared(x + i, nb, shift, b.mean, ahead);
        kernel_merge(&acc, &b);
    }
    out->n = acc.n;
    out->mean = shift + acc.mean;
    out->m2 = acc.m2;
    return 0;
}

/* One value at a time; stores past `room` go to a scratch slot. */
static size_t flag_scalar(const double *x, size_t from, size_t n, double mean, double cut,
                          int64_t base, int64_t *out, size_t room, size_t k)
{
    int64_t spill;
    for (size_t i = from; i < n; i++) {
        double d = fabs(x[i] - mean);
        *(k < room ? out + k : &spill) = base + (int64_t)i;
        k += (d > cut) & (d < INFINITY);
    }
    return k;
}

#ifdef HAVE_X86
/* lane positions of the set bits of a 4-bit mask, low first */
static const int64_t LANES[16][4] = {
    {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0}, {2, 0, 0, 0}, {0, 2, 0, 0},
    {1, 2, 0, 0}, {0, 1, 2, 0}, {3, 0, 0, 0}, {0, 3, 0, 0}, {1, 3, 0, 0}, {0, 1, 3, 0},
    {2, 3, 0, 0}, {0, 2, 3, 0}, {1, 2, 3, 0}, {0, 1, 2, 3},
};

__attribute__((target("avx2,popcnt")))
static size_t flag_avx2(const double *x, size_t n, double mean, double cut, int64_t base,
                        int64_t *out, size_t room)
{
    const __m256d vm = _mm256_set1_pd(mean), vc = _mm256_set1_pd(cut),
                  vinf = _mm256_set1_pd(INFINITY), sign = _mm256_set1_pd(-0.0);
    const __m256i four = _mm256_set1_epi64x(4);
    __m256i b = _mm256_set1_epi64x(base);
    size_t i = 0, k = 0;
    for (; i + 4 <= n && k + 4 <= room; i += 4) {   /* while a whole group fits */
        __m256d d = _mm256_andnot_pd(sign, _mm256_sub_pd(_mm256_loadu_pd(x + i), vm));
        int m = _mm256_movemask_pd(_mm256_and_pd(_mm256_cmp_pd(d, vc, _CMP_GT_OQ),
                                                 _mm256_cmp_pd(d, vinf, _CMP_LT_OQ)));
        _mm256_storeu_si256((__m256i *)(out + k),
                            _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)LANES[m])));
        k += (size_t)__builtin_popcount((unsigned)m);
        b = _mm256_add_epi64(b, four);
    }
    return flag_scalar(x, i, n, mean, cut, base, out, room, k);
}

__attribute__((target("avx512f,popcnt")))
static size_t flag_avx512(const double *x, size_t n, double mean, double cut, int64_t base,
                          int64_t *out, size_t room)
{
    const __m512d vm = _mm512_set1_pd(mean), vc = _mm512_set1_pd(cut), vinf = _mm512_set1_pd(INFINITY);
    const __m512i eight = _mm512_set1_epi64(8);
    __m512i b = _mm512_add_epi64(_mm512_set1_epi64(base), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    size_t i = 0, k = 0;
    for (; i + 8 <= n && k + 8 <= room; i += 8) {   /* while a whole group fits */
        __m512d d = _mm512_abs_pd(_mm512_sub_pd(_mm512_loadu_pd(x + i), vm));
        __mmask8 m = _mm512_cmp_pd_mask(d, vc, _CMP_GT_OQ) & _mm512_cmp_pd_mask(d, vinf, _CMP_LT_OQ);
        _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi64(m, b));
        k += (size_t)__builtin_popcount((unsigned)m);
        b = _mm512_add_epi64(b, eight);
    }
    return flag_scalar(x, i, n, mean, cut, base, out, room, k);
}
#endif

size_t kernel_flag(const double *x, size_t n, double mean, double cut, int64_t base,
                   int64_t *out, size_t room)
{
#ifdef HAVE_X86
    static int level = -1;     /* 2: AVX-512, 1: AVX2, 0: scalar */
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("avx512f") ? 2
                : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") ? 1 : 0;
    }
    if (level == 2)
        return flag_avx512(x, n, mean, cut, base, out, room);
    if (level == 1)
        return flag_avx2(x, n, mean, cut, base, out, room);
#endif
    return flag_scalar(x, 0, n, mean, cut, base, out, room, 0);
}
