/*
 * test_shmpool: tests of the shmpool C host adapter (LAYOUT v2).
 *
 *   test_shmpool [--vectors PATH] [--no-integration] [--quick]
 *
 * (a) layout: every line of tests/vectors/v2.txt: header/request/reply
 *     encoded and decoded byte for byte, bad_request rejected with its
 *     status by the C decoder (2.6), table parsed, split rule, and the `call`
 *     lines recomputed by a C reference of the classic detector (4.1) bit for
 *     bit; codec edge cases.
 * (b) segments and the owner lock (1.3-1.5): names, 0600, fallocate, owner
 *     file and flock, a reaper's view, fork, cleanup, ENOSPC.
 * (c) client logic against in-process fake workers (v2, classic, over real
 *     segments): splitting and pipelining, TOO_SMALL/grow, request_id 0
 *     refusals, EOF/timeout/garbage, idle-lane reconnect, connect EAGAIN
 *     backoff, SO_PEERCRED.
 * (d) integration against real servers: $SHMPOOL_SOCKET (started by the
 *     Makefile, required unless --no-integration: unset is a failure), plus
 *     servers this program starts itself with $SHMPOOL_TEST_PYTHON in
 *     $SHMPOOL_TEST_ROOT (3 workers, a failing detector, kill and restart).
 *
 * Prints `N passed, M failed` last and exits non-zero on any failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "shmpool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- tiny harness ------------------------------------------------------- */

static int g_passed, g_failed;
static int t_failed; /* failures in the current test (main thread only) */
static int g_quick;  /* --quick: smaller sizes (valgrind) */

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            t_failed++;                                                     \
            fprintf(stderr, "    check failed (%s:%d): ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

static void begin(void) { t_failed = 0; }

static void end(const char *fmt, ...)
{
    va_list ap;
    printf(t_failed ? "FAIL " : "ok   ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (t_failed)
        g_failed++;
    else
        g_passed++;
}

static double elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static double rng_uniform(void) { return (double)(rng_next() >> 11) * 0x1.0p-53; }

static double rng_normal(void)
{
    double u = rng_uniform(), v = rng_uniform();
    if (u < 1e-300)
        u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(2.0 * 3.14159265358979323846 * v);
}

/* The demo data of example.c: 1000 uniform values, +97 at 7, 113, 835. */
static void seed_data(double *x)
{
    uint64_t state = 0x9E3779B97F4A7C15ull;
    int i;
    for (i = 0; i < 1000; i++) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        x[i] = (double)((state * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
    }
    x[7] += 97;
    x[113] += 97;
    x[835] += 97;
}

/* The splitmix64 generator of tests/vectors/make_vectors.py. */
static void splitmix(double *x, size_t n, uint64_t seed, long every, long nan_at)
{
    uint64_t s = seed;
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t z;
        s += 0x9E3779B97F4A7C15ull;
        z = s;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        x[i] = (double)(z >> 11) * 0x1.0p-53;
        if (every > 0 && i >= 7 && (i - 7) % (size_t)every == 0)
            x[i] += 97.0;
    }
    if (nan_at >= 0 && (size_t)nan_at < n)
        x[nan_at] = NAN;
}

static uint64_t fnv1a(const int64_t *idx, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    size_t i;
    int b;
    for (i = 0; i < n; i++)
        for (b = 0; b < 8; b++) {
            h ^= (uint64_t)(((uint64_t)idx[i] >> (8 * b)) & 0xFF);
            h *= 0x100000001B3ull;
        }
    return h;
}

static int same_indices(const int64_t *got, size_t n, const int64_t *want, size_t wn)
{
    size_t i;
    if (n != wn)
        return 0;
    for (i = 0; i < n; i++)
        if (got[i] != want[i])
            return 0;
    return 1;
}

static void fmt_indices(char *buf, size_t size, const int64_t *v, size_t n)
{
    size_t i, used = 0;
    buf[0] = '\0';
    used += (size_t)snprintf(buf, size, "[");
    for (i = 0; i < n && used < size; i++) {
        if (i == 12 && n > 14) {
            used += (size_t)snprintf(buf + used, size - used, " ... (%zu)", n);
            break;
        }
        used += (size_t)snprintf(buf + used, size - used, i ? " %" PRId64 : "%" PRId64, v[i]);
    }
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

#define CHECK_INDICES(got, n, want, wn, what)                                  \
    do {                                                                       \
        char g_[256], w_[256];                                                 \
        fmt_indices(g_, sizeof g_, (got), (n));                                \
        fmt_indices(w_, sizeof w_, (want), (wn));                              \
        CHECK(same_indices((got), (n), (want), (wn)), "%s: got %s, want %s",   \
              (what), g_, w_);                                                 \
    } while (0)

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode hex into out; returns the byte count or -1. */
static long unhex(const char *s, unsigned char *out, size_t cap)
{
    size_t len = strlen(s), i;
    if (len % 2 || len / 2 > cap)
        return -1;
    for (i = 0; i < len / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return (long)(len / 2);
}

static double f64_of_hex(const char *hex16, int *ok)
{
    unsigned char b[8];
    uint64_t bits = 0;
    double d;
    int i;
    if (strlen(hex16) != 16 || unhex(hex16, b, 8) != 8) {
        *ok = 0;
        return NAN;
    }
    for (i = 7; i >= 0; i--)
        bits = bits << 8 | b[i];
    memcpy(&d, &bits, 8);
    return d;
}

static uint64_t bits_of(double d)
{
    uint64_t b;
    memcpy(&b, &d, 8);
    return b;
}

static int same_double(double a, double b) { return bits_of(a) == bits_of(b); }

static char g_prefix[64]; /* "shmpool-<pid>-" */

/* Names in /dev/shm that start with prefix. */
static int count_prefixed(const char *prefix, char *first, size_t first_size)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    int n = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            if (n == 0 && first)
                snprintf(first, first_size, "%s", e->d_name);
            n++;
        }
    }
    closedir(d);
    return n;
}

static int shm_stat(const char *name, struct stat *st)
{
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    return lstat(path, st);
}

/* ==== C reference of the classic detector (LAYOUT.md 4.1) ================= */

/* numpy's pairwise sum of float64 (blocks of 128, eight accumulators). */
static double pw_sum(const double *a, size_t n)
{
    if (n < 8) {
        double res = -0.0;
        size_t i;
        for (i = 0; i < n; i++)
            res += a[i];
        return res;
    } else if (n <= 128) {
        double r[8], res;
        size_t i;
        int j;
        for (j = 0; j < 8; j++)
            r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (j = 0; j < 8; j++)
                r[j] += a[i + j];
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            res += a[i];
        return res;
    } else {
        size_t n2 = n / 2;
        n2 -= n2 % 8;
        return pw_sum(a, n2) + pw_sum(a + n2, n - n2);
    }
}

/* float(np.add.reduce(x)): 0.0 + the pairwise sum. */
static double np_sum(const double *a, size_t n) { return 0.0 + pw_sum(a, n); }

typedef struct {
    uint64_t n;
    double mean, m2;
    uint64_t nonfinite;
    int64_t first;
} stats;

static stats stats_zero(void)
{
    stats s;
    s.n = 0;
    s.mean = 0.0;
    s.m2 = 0.0;
    s.nonfinite = 0;
    s.first = -1;
    return s;
}

/* Python int / int, correctly rounded (exact operands below 2^53). */
static double int_div(uint64_t a, uint64_t b)
{
    if (a <= (1ull << 53))
        return (double)a / (double)b;
    return (double)((long double)a / (long double)b);
}

static stats merge(stats a, stats b)
{
    stats r;
    double delta;
    int64_t first = a.first >= 0 ? a.first : b.first;
    uint64_t bad = a.nonfinite + b.nonfinite;
    if (b.n == 0) {
        r = a;
    } else if (a.n == 0) {
        r = b;
    } else {
        r.n = a.n + b.n;
        delta = b.mean - a.mean;
        r.mean = a.mean + delta * int_div(b.n, r.n);
        r.m2 = a.m2 + b.m2 + delta * delta * int_div(a.n * b.n, r.n);
    }
    r.nonfinite = bad;
    r.first = first;
    return r;
}

#define BLOCK 65536

/* detectors._finite_stats: 0 and *out, or -1 when a sum is not finite. */
static int finite_stats(const double *x, size_t n, double *tmp, stats *out)
{
    size_t i, j;
    *out = stats_zero();
    if (n <= BLOCK) {
        double s = np_sum(x, n), mean;
        if (!isfinite(s))
            return -1;
        mean = s / (double)n;
        for (i = 0; i < n; i++) {
            double d = x[i] - mean;
            tmp[i] = d * d;
        }
        out->n = n;
        out->mean = mean;
        out->m2 = np_sum(tmp, n);
        return 0;
    } else {
        double shift = np_sum(x, BLOCK) / BLOCK;
        stats acc = stats_zero(), blk;
        if (!isfinite(shift))
            return -1;
        for (i = 0; i < n; i += BLOCK) {
            size_t len = n - i < BLOCK ? n - i : BLOCK;
            double s, mb;
            for (j = 0; j < len; j++)
                tmp[j] = x[i + j] - shift;
            s = np_sum(tmp, len);
            if (!isfinite(s))
                return -1;
            mb = s / (double)len;
            for (j = 0; j < len; j++) {
                tmp[j] -= mb;
                tmp[j] *= tmp[j];
            }
            blk = stats_zero();
            blk.n = len;
            blk.mean = mb;
            blk.m2 = np_sum(tmp, len);
            acc = merge(acc, blk);
        }
        out->n = acc.n;
        out->mean = shift + acc.mean;
        out->m2 = acc.m2;
        return 0;
    }
}

static stats overflowing_stats(const double *x, size_t n, double *tmp)
{
    stats s = stats_zero();
    size_t i;
    s.n = n;
    s.mean = np_sum(x, n) / (double)n;
    for (i = 0; i < n; i++) {
        double d = x[i] - s.mean;
        tmp[i] = d * d;
    }
    s.m2 = np_sum(tmp, n);
    return s;
}

/* policy: the effective one (1 propagate, 2 omit, 3 raise). */
static stats chunk_stats(const double *x, size_t n, int policy, uint64_t base)
{
    stats s = stats_zero();
    double *tmp, *kept;
    size_t i, good = 0;
    int64_t first = -1;
    if (n == 0)
        return s;
    tmp = (double *)malloc(n * sizeof *tmp);
    if (finite_stats(x, n, tmp, &s) == 0) {
        free(tmp);
        return s;
    }
    kept = (double *)malloc(n * sizeof *kept);
    for (i = 0; i < n; i++) {
        if (isfinite(x[i]))
            kept[good++] = x[i];
        else if (first < 0)
            first = (int64_t)(base + i);
    }
    if (good == n) {
        s = overflowing_stats(x, n, tmp);
    } else if (policy != SHMPOOL_POLICY_OMIT) {
        s = stats_zero();
        s.nonfinite = n - good;
        s.first = first;
    } else {
        stats k = stats_zero();
        if (good && finite_stats(kept, good, tmp, &k) != 0)
            k = overflowing_stats(kept, good, tmp);
        s = k;
        s.nonfinite = n - good;
        s.first = first;
    }
    free(kept);
    free(tmp);
    return s;
}

static void summary_of(stats s, double out[5])
{
    out[0] = (double)s.n;
    out[1] = s.mean;
    out[2] = s.m2;
    out[3] = (double)s.nonfinite;
    out[4] = (double)s.first;
}

/* detectors.limits: 0 with mean/cut, 1 for "no flag parameters", or
 * SHMPOOL_STATUS_NON_FINITE. */
static int limits(stats t, double k, int policy, double *mean, double *cut)
{
    double c;
    if (t.nonfinite) {
        if (policy == SHMPOOL_POLICY_RAISE)
            return SHMPOOL_STATUS_NON_FINITE;
        if (policy == SHMPOOL_POLICY_PROPAGATE)
            return 1;
    }
    if (t.n == 0)
        return 1;
    c = t.m2 >= 0 ? k * sqrt(t.m2 / (double)t.n) : NAN;
    if (!(isfinite(t.mean) && isfinite(c)))
        return policy == SHMPOOL_POLICY_RAISE ? SHMPOOL_STATUS_NON_FINITE : 1;
    *mean = t.mean;
    *cut = c;
    return 0;
}

static stats stats_of_summary(const double *v)
{
    stats s;
    s.n = (uint64_t)v[0];
    s.mean = v[1];
    s.m2 = v[2];
    s.nonfinite = (uint64_t)v[3];
    s.first = (int64_t)v[4];
    return s;
}

/* Combine k summaries: 0 with the flag parameters, 1 empty, or NON_FINITE. */
static int combine(const double *sums, size_t k, double thr, int policy, double *mean,
                   double *cut, stats *total)
{
    stats t = stats_zero();
    size_t i;
    for (i = 0; i < k; i++)
        t = merge(t, stats_of_summary(sums + 5 * i));
    if (total)
        *total = t;
    return limits(t, thr, policy, mean, cut);
}

/* |x[i] - mean| > cut (finite), written as base + i; returns how many in all,
 * writing at most cap. */
static uint64_t flag_into(const double *x, size_t n, double mean, double cut, uint64_t base,
                          int64_t *out, uint64_t cap)
{
    uint64_t m = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = fabs(x[i] - mean);
        if (d > cut && d < INFINITY) {
            if (m < cap)
                out[m] = (int64_t)(base + i);
            m++;
        }
    }
    return m;
}

/* The answer a server gives for x[0:n] split in k chunks (k = 1: DETECT);
 * indices into out (room for n).  Returns 0 or NON_FINITE; *count set. */
static int reference_call(const double *x, size_t n, size_t k, double thr, int policy,
                          int64_t *out, size_t *count)
{
    double *sums = (double *)calloc((k ? k : 1) * 5, sizeof *sums), mean = 0, cut = 0;
    size_t i;
    int st;
    *count = 0;
    for (i = 0; i < k; i++) {
        uint64_t a = shmpool_split_bound(n, k, i), b = shmpool_split_bound(n, k, i + 1);
        summary_of(chunk_stats(x + a, b - a, policy, a), sums + 5 * i);
    }
    st = combine(sums, k, thr, policy, &mean, &cut, NULL);
    if (st == 0) {
        for (i = 0; i < k; i++) {
            uint64_t a = shmpool_split_bound(n, k, i), b = shmpool_split_bound(n, k, i + 1);
            *count += flag_into(x + a, b - a, mean, cut, a, out + *count, n);
        }
    }
    free(sums);
    return st == 1 ? 0 : st;
}

/* ==== (a) golden vectors ================================================== */

#define MAX_TOKENS 48

typedef struct {
    char *kind, *name;
    char *keys[MAX_TOKENS], *vals[MAX_TOKENS];
    int n;
} vline;

static const char *field(const vline *l, const char *key)
{
    int i;
    for (i = 0; i < l->n; i++)
        if (strcmp(l->keys[i], key) == 0)
            return l->vals[i];
    return NULL;
}

static uint64_t ufield(const vline *l, const char *key, int *ok)
{
    const char *v = field(l, key);
    char *end;
    uint64_t r;
    if (v == NULL || v[0] == '-') {
        *ok = 0;
        return 0;
    }
    errno = 0;
    r = strtoull(v, &end, 10);
    if (*end != '\0' || errno != 0)
        *ok = 0;
    return r;
}

static long long ifield(const vline *l, const char *key, int *ok)
{
    const char *v = field(l, key);
    char *end;
    long long r;
    if (v == NULL) {
        *ok = 0;
        return 0;
    }
    errno = 0;
    r = strtoll(v, &end, 10);
    if (*end != '\0' || errno != 0)
        *ok = 0;
    return r;
}

static double dfield(const vline *l, const char *key, int *ok)
{
    const char *v = field(l, key);
    char *end;
    double r;
    if (v == NULL) {
        *ok = 0;
        return NAN;
    }
    r = strtod(v, &end);
    if (*end != '\0' || end == v)
        *ok = 0;
    return r;
}

static const char *sfield(const vline *l, const char *key, int *ok)
{
    const char *v = field(l, key);
    if (v == NULL) {
        *ok = 0;
        return "";
    }
    return v;
}

/* "1.0,nan,-2.5" (or "") into out; returns the count, -1 when malformed. */
static int dlist(const char *s, double *out, int cap)
{
    int n = 0;
    if (s == NULL)
        return -1;
    while (*s) {
        char *end;
        if (n == cap)
            return -1;
        out[n++] = strtod(s, &end);
        if (end == s || (*end != ',' && *end != '\0'))
            return -1;
        s = *end ? end + 1 : end;
    }
    return n;
}

static void vector_header(const vline *l)
{
    unsigned char want[256], got[SHMPOOL_HEADER_SIZE];
    shmpool_header h, e;
    int ok = 1;
    long n = unhex(sfield(l, "hex", &ok), want, sizeof want);

    begin();
    e = shmpool_header_make((uint16_t)ufield(l, "kind", &ok), ufield(l, "capacity", &ok),
                            ufield(l, "count", &ok));
    e.status = (uint32_t)ufield(l, "status", &ok);
    e.needed = ufield(l, "needed", &ok);
    CHECK(ok && n == SHMPOOL_HEADER_SIZE, "malformed vector line");
    if (ok && n == SHMPOOL_HEADER_SIZE) {
        shmpool_header_encode(&e, got);
        CHECK(memcmp(got, want, SHMPOOL_HEADER_SIZE) == 0, "encode differs from golden bytes");
        shmpool_header_decode(want, &h);
        CHECK(h.magic == SHMPOOL_SEGMENT_MAGIC && h.version == SHMPOOL_VERSION &&
              h.header_size == SHMPOOL_HEADER_SIZE && h.flags == 0, "decoded fixed fields");
        CHECK(h.kind == e.kind && h.capacity == e.capacity && h.count == e.count &&
              h.status == e.status && h.needed == e.needed, "decoded fields differ");
        CHECK(shmpool_header_check(&h, h.kind, SHMPOOL_HEADER_SIZE + 8 * h.capacity) == NULL,
              "golden header fails the reader's checks");
    }
    end("vector header %s", l->name);
}

static void vector_request(const vline *l)
{
    static unsigned char want[SHMPOOL_MAX_REQUEST], got[SHMPOOL_MAX_REQUEST];
    double params[SHMPOOL_MAX_PARAMS + 1], values[64];
    shmpool_request e = shmpool_request_make(0), d;
    char why[256];
    int ok = 1, st, np, nv, i;
    long n = unhex(sfield(l, "hex", &ok), want, sizeof want), m;

    begin();
    e.op = (uint16_t)ufield(l, "op", &ok);
    e.request_id = ufield(l, "request_id", &ok);
    e.start = ufield(l, "start", &ok);
    e.count = ufield(l, "count", &ok);
    e.base = ufield(l, "base", &ok);
    e.detector = (uint32_t)ufield(l, "detector", &ok);
    e.nan_policy = (uint32_t)ufield(l, "nan_policy", &ok);
    np = dlist(field(l, "params"), params, SHMPOOL_MAX_PARAMS);
    nv = dlist(field(l, "values"), values, 64);
    if (np < 0 || nv < 0)
        ok = 0;
    e.nparams = (uint32_t)(np > 0 ? np : 0);
    for (i = 0; i < np; i++)
        e.params[i] = params[i];
    e.nvalues = (uint32_t)(nv > 0 ? nv : 0);
    e.values = values;
    snprintf(e.data_name, sizeof e.data_name, "%s", sfield(l, "data_name", &ok));
    snprintf(e.out_name, sizeof e.out_name, "%s", sfield(l, "out_name", &ok));
    CHECK(ok && n >= SHMPOOL_REQUEST_HEAD_SIZE, "malformed vector line");
    if (ok && n >= SHMPOOL_REQUEST_HEAD_SIZE) {
        m = shmpool_request_encode(&e, got, sizeof got);
        CHECK(m == n, "encode gave %ld bytes, want %ld", m, n);
        CHECK(m == n && memcmp(got, want, (size_t)n) == 0, "encode differs from golden bytes");
        CHECK((long)shmpool_request_size(&e) == n, "request_size");
        st = shmpool_request_decode(want, (size_t)n, &d, why, sizeof why);
        CHECK(st == SHMPOOL_STATUS_OK, "decode rejected it: %d %s", st, why);
        CHECK(d.magic == SHMPOOL_REQUEST_MAGIC && d.version == SHMPOOL_VERSION && d.flags == 0 &&
              d.reserved == 0, "decoded fixed fields");
        CHECK(d.op == e.op && d.request_id == e.request_id && d.start == e.start &&
              d.count == e.count && d.base == e.base && d.detector == e.detector &&
              d.nan_policy == e.nan_policy, "decoded integers differ");
        CHECK(d.nparams == e.nparams, "nparams %u, want %u", d.nparams, e.nparams);
        for (i = 0; i < SHMPOOL_MAX_PARAMS; i++)
            CHECK(same_double(d.params[i], i < np ? params[i] : NAN) ||
                      (isnan(d.params[i]) && (i >= np || isnan(params[i]))),
                  "param %d: %g", i, d.params[i]);
        CHECK(strcmp(d.data_name, e.data_name) == 0 && strcmp(d.out_name, e.out_name) == 0,
              "decoded names differ");
        CHECK(d.nvalues == e.nvalues, "nvalues %u, want %u", d.nvalues, e.nvalues);
        for (i = 0; i < nv && (uint32_t)i < d.nvalues; i++)
            CHECK(same_double(shmpool_request_value(&d, (size_t)i), values[i]), "value %d", i);
    }
    end("vector request %s (%ld bytes)", l->name, n);
}

static void vector_reply(const vline *l)
{
    unsigned char want[SHMPOOL_MAX_REPLY], got[SHMPOOL_MAX_REPLY];
    double values[SHMPOOL_MAX_REPLY_VALUES];
    shmpool_reply e, d;
    int ok = 1, err, nv, i;
    long n = unhex(sfield(l, "hex", &ok), want, sizeof want), m;

    begin();
    memset(&e, 0, sizeof e);
    e.magic = SHMPOOL_REPLY_MAGIC;
    e.version = SHMPOOL_VERSION;
    e.status = (uint16_t)ufield(l, "status", &ok);
    e.request_id = ufield(l, "request_id", &ok);
    e.count = ufield(l, "count", &ok);
    e.needed = ufield(l, "needed", &ok);
    nv = dlist(field(l, "values"), values, SHMPOOL_MAX_REPLY_VALUES);
    if (nv < 0)
        ok = 0;
    e.nvalues = (uint32_t)(nv > 0 ? nv : 0);
    for (i = 0; i < nv; i++)
        e.values[i] = values[i];
    e.type = sfield(l, "error_type", &ok);
    e.message = sfield(l, "message", &ok);
    e.traceback = sfield(l, "traceback", &ok);
    e.type_len = (uint32_t)strlen(e.type);
    e.message_len = (uint32_t)strlen(e.message);
    e.traceback_len = (uint32_t)strlen(e.traceback);
    CHECK(ok && n >= SHMPOOL_REPLY_HEAD_SIZE, "malformed vector line");
    if (ok && n >= SHMPOOL_REPLY_HEAD_SIZE) {
        m = shmpool_reply_encode(&e, got, sizeof got);
        CHECK(m == n && memcmp(got, want, (size_t)n) == 0,
              "encode differs from golden bytes (%ld vs %ld bytes)", m, n);
        err = shmpool_reply_decode(want, (size_t)n, &d);
        CHECK(err == 0, "decode failed: %d", err);
        if (err == 0) {
            CHECK(d.status == e.status && d.request_id == e.request_id && d.count == e.count &&
                  d.needed == e.needed, "decoded integers differ");
            CHECK(d.nvalues == e.nvalues, "nvalues %u want %u", d.nvalues, e.nvalues);
            for (i = 0; i < nv; i++)
                CHECK(same_double(d.values[i], values[i]), "value %d", i);
            CHECK(d.type_len == e.type_len && memcmp(d.type, e.type, e.type_len) == 0,
                  "decoded type differs");
            CHECK(d.message_len == e.message_len &&
                  memcmp(d.message, e.message, e.message_len) == 0, "decoded message differs");
            CHECK(d.traceback_len == e.traceback_len &&
                  memcmp(d.traceback, e.traceback, e.traceback_len) == 0,
                  "decoded traceback differs");
        }
    }
    end("vector reply %s", l->name);
}

static void vector_bad_request(const vline *l)
{
    static unsigned char raw[SHMPOOL_MAX_REQUEST + 64];
    shmpool_request d;
    char why[256] = "";
    int ok = 1, st;
    long n = unhex(sfield(l, "hex", &ok), raw, sizeof raw);
    int want = (int)ufield(l, "status", &ok);

    begin();
    CHECK(ok && n >= 0, "malformed vector line");
    if (ok && n >= 0) {
        st = shmpool_request_decode(raw, (size_t)n, &d, why, sizeof why);
        CHECK(st == want, "decode gave %d (%s), want %d", st, why, want);
        CHECK(why[0] != '\0', "no reason given");
        /* request_id: 0 for a bad magic or a packet under 16 bytes, else echoed */
        {
            uint64_t rid = 0;
            int b;
            if (n >= 16 && memcmp(raw, "SHMQ", 4) == 0)
                for (b = 7; b >= 0; b--)
                    rid = rid << 8 | raw[8 + b];
            CHECK(d.request_id == rid, "request_id %llu, want %llu",
                  (unsigned long long)d.request_id, (unsigned long long)rid);
        }
    }
    end("vector bad_request %s -> %s (%s)", l->name, shmpool_status_name(want), why);
}

/* table names=a,b split=1,0 sizes=5,0 params=p=v,q=w;;  hex=<text> */
static void vector_table(const vline *l)
{
    unsigned char text[8192];
    shmpool_detector rows[8];
    char names[1024], *save = NULL, *tok;
    const char *split, *sizes, *params;
    size_t nrows = 0, i;
    int ok = 1, err;
    long n = unhex(sfield(l, "hex", &ok), text, sizeof text);

    begin();
    snprintf(names, sizeof names, "%s", sfield(l, "names", &ok));
    split = sfield(l, "split", &ok);
    sizes = sfield(l, "sizes", &ok);
    params = sfield(l, "params", &ok);
    CHECK(ok && n >= 0, "malformed vector line");
    err = shmpool_table_parse((const char *)text, (size_t)(n > 0 ? n : 0), rows, 8, &nrows);
    CHECK(err == 0, "parse: %s", strerror(-err));
    for (i = 0, tok = strtok_r(names, ",", &save); tok && err == 0;
         i++, tok = strtok_r(NULL, ",", &save)) {
        CHECK(i < nrows && strcmp(rows[i].name, tok) == 0, "row %zu name %s, want %s", i,
              i < nrows ? rows[i].name : "-", tok);
    }
    CHECK(i == nrows, "%zu rows, want %zu", nrows, i);
    for (i = 0; i < nrows && err == 0; i++) {
        char want_split = split[2 * i], pbuf[512], *p, *q;
        unsigned long want_size = strtoul(sizes, (char **)&sizes, 10);
        uint32_t k = 0;
        if (*sizes == ',')
            sizes++;
        CHECK(rows[i].split == (want_split == '1'), "row %zu split", i);
        CHECK(rows[i].summary_size == want_size, "row %zu size %u want %lu", i,
              rows[i].summary_size, want_size);
        /* this row's params: up to the next ';' */
        q = strchr(params, ';');
        snprintf(pbuf, sizeof pbuf, "%.*s", q ? (int)(q - params) : (int)strlen(params), params);
        params = q ? q + 1 : params + strlen(params);
        for (p = strtok_r(pbuf, ",", &save); p; p = strtok_r(NULL, ",", &save), k++) {
            char *eq = strchr(p, '=');
            CHECK(eq != NULL, "bad params field");
            if (eq == NULL)
                break;
            *eq = '\0';
            CHECK(k < rows[i].nparams && strcmp(rows[i].param_names[k], p) == 0 &&
                      rows[i].param_defaults[k] == strtod(eq + 1, NULL),
                  "row %zu param %u: %s=%s", i, k, p, eq + 1);
        }
        CHECK(k == rows[i].nparams, "row %zu has %u params, want %u", i, rows[i].nparams, k);
    }
    end("vector table %s (%zu rows)", l->name, nrows);
}

/* split n= lanes= k= bounds=a:b,... */
static void vector_split(const vline *l)
{
    int ok = 1;
    uint64_t n = ufield(l, "n", &ok), lanes = ufield(l, "lanes", &ok), k = ufield(l, "k", &ok);
    const char *b = sfield(l, "bounds", &ok);
    uint64_t i;

    begin();
    CHECK(ok, "malformed vector line");
    CHECK(shmpool_split_count(n, lanes) == k, "split_count(%llu, %llu) = %llu, want %llu",
          (unsigned long long)n, (unsigned long long)lanes,
          (unsigned long long)shmpool_split_count(n, lanes), (unsigned long long)k);
    for (i = 0; ok && i < k; i++) {
        char *end;
        unsigned long long a = strtoull(b, &end, 10), z;
        if (*end != ':') {
            ok = 0;
            break;
        }
        z = strtoull(end + 1, &end, 10);
        CHECK(shmpool_split_bound(n, k, i) == a && shmpool_split_bound(n, k, i + 1) == z,
              "chunk %llu: [%llu, %llu), want [%llu, %llu)", (unsigned long long)i,
              (unsigned long long)shmpool_split_bound(n, k, i),
              (unsigned long long)shmpool_split_bound(n, k, i + 1), a, z);
        b = *end == ',' ? end + 1 : end;
    }
    CHECK(ok && *b == '\0', "bounds list does not have k chunks");
    end("vector split %s -> k=%llu", l->name, (unsigned long long)k);
}

/* A `call` line, parsed. */
typedef struct {
    char name[64];
    size_t n;
    uint64_t seed;
    long every, nan_at;
    unsigned lanes, k;
    double threshold;
    int policy;
    double sums[64 * 5];
    int nsums;
    double flag[8];
    int nflag;
    int status;
    size_t count;
    uint64_t fnv;
    int64_t head[5];
    int nhead;
} call_vec;

#define MAX_CALLS 16
static call_vec g_calls[MAX_CALLS];
static int g_ncalls;

/* "a,b,c" of 16-hex-digit float64s (or "-": none) into out[0..max): how many. */
static int hex_list(const char *s, double *out, int max, int *ok)
{
    int n = 0;
    if (strcmp(s, "-") == 0)
        return 0;
    while (*ok && *s && n < max) {
        char h[17];
        snprintf(h, sizeof h, "%.16s", s);
        out[n++] = f64_of_hex(h, ok);
        s += strlen(h);
        if (*s == ',')
            s++;
    }
    return n;
}

static int parse_call(const vline *l, call_vec *cv)
{
    int ok = 1;
    const char *s;
    memset(cv, 0, sizeof *cv);
    snprintf(cv->name, sizeof cv->name, "%s", l->name);
    cv->n = (size_t)ufield(l, "n", &ok);
    cv->seed = ufield(l, "seed", &ok);
    cv->every = (long)ifield(l, "every", &ok);
    cv->nan_at = (long)ifield(l, "nan_at", &ok);
    cv->lanes = (unsigned)ufield(l, "lanes", &ok);
    cv->threshold = dfield(l, "threshold", &ok);
    cv->policy = (int)ufield(l, "policy", &ok);
    cv->k = (unsigned)ufield(l, "k", &ok);
    cv->status = (int)ufield(l, "status", &ok);
    cv->count = (size_t)ufield(l, "count", &ok);
    cv->fnv = ufield(l, "fnv", &ok);
    cv->nsums = hex_list(sfield(l, "summaries", &ok), cv->sums, 64 * 5, &ok);
    cv->nflag = hex_list(sfield(l, "flag", &ok), cv->flag, 8, &ok);
    s = sfield(l, "head", &ok);
    if (strcmp(s, "-") != 0)
        for (; ok && *s && cv->nhead < 5;) {
            char *end;
            cv->head[cv->nhead++] = strtoll(s, &end, 10);
            s = *end == ',' ? end + 1 : end;
        }
    return ok && cv->nsums == (int)cv->k * 5;
}

static int effective_policy(int p) { return p == 0 ? SHMPOOL_POLICY_RAISE : p; }

/* The call recomputed by the C reference: summaries and flag parameters bit
 * for bit, and the answer's count, FNV hash and head. */
static void vector_call(const vline *l)
{
    call_vec *cv = g_ncalls < MAX_CALLS ? &g_calls[g_ncalls] : NULL;
    double *x = NULL, mean = 0, cut = 0;
    int64_t *idx = NULL;
    size_t count = 0, i;
    int st, ok;

    begin();
    ok = cv != NULL && parse_call(l, cv);
    CHECK(ok, "malformed vector line");
    if (ok) {
        int policy = effective_policy(cv->policy);
        g_ncalls++;
        CHECK(shmpool_split_count(cv->n, cv->lanes) == cv->k, "split_count");
        x = (double *)malloc(cv->n * sizeof *x);
        idx = (int64_t *)malloc((cv->n + 1) * sizeof *idx);
        splitmix(x, cv->n, cv->seed, cv->every, cv->nan_at);
        for (i = 0; i < cv->k; i++) {
            uint64_t a = shmpool_split_bound(cv->n, cv->k, i);
            uint64_t b = shmpool_split_bound(cv->n, cv->k, i + 1);
            double s[5];
            int j;
            summary_of(chunk_stats(x + a, b - a, policy, a), s);
            for (j = 0; j < 5; j++)
                CHECK(same_double(s[j], cv->sums[5 * i + j]),
                      "chunk %zu summary[%d]: %.17g (%016llx), vector %.17g", i, j, s[j],
                      (unsigned long long)bits_of(s[j]), cv->sums[5 * i + j]);
        }
        st = combine(cv->sums, cv->k, cv->threshold, policy, &mean, &cut, NULL);
        CHECK((st == SHMPOOL_STATUS_NON_FINITE) == (cv->status == SHMPOOL_STATUS_NON_FINITE),
              "combine status %d, vector %d", st, cv->status);
        CHECK((st == 0) == (cv->nflag == 2), "flag parameters present");
        if (st == 0 && cv->nflag == 2)
            CHECK(same_double(mean, cv->flag[0]) && same_double(cut, cv->flag[1]),
                  "flag parameters %.17g %.17g, vector %.17g %.17g", mean, cut, cv->flag[0],
                  cv->flag[1]);
        st = reference_call(x, cv->n, cv->k, cv->threshold, policy, idx, &count);
        CHECK(st == cv->status, "status %d want %d", st, cv->status);
        CHECK(count == cv->count, "count %zu want %zu", count, cv->count);
        CHECK(fnv1a(idx, count) == cv->fnv, "fnv %llu want %llu",
              (unsigned long long)fnv1a(idx, count), (unsigned long long)cv->fnv);
        CHECK_INDICES(idx, count < 5 ? count : 5, cv->head, (size_t)cv->nhead, "head");
    }
    free(x);
    free(idx);
    end("vector call %s: C reference (k=%u) = summaries, flag parameters, count %zu, fnv",
        l->name, cv ? cv->k : 0, count);
}

static void run_vectors(const char *path)
{
    FILE *f = fopen(path, "r");
    static char line[1 << 16];
    int counts[7] = {0, 0, 0, 0, 0, 0, 0};
    static const char *const kinds[7] = {"header", "request", "reply", "bad_request",
                                          "table", "split", "call"};

    begin();
    CHECK(f != NULL, "cannot open %s: %s", path, strerror(errno));
    end("vector file %s opens", path);
    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f) != NULL) {
        vline l;
        char *tok, *save = NULL;
        size_t len = strlen(line);
        int k;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        memset(&l, 0, sizeof l);
        l.kind = strtok_r(line, " ", &save);
        l.name = strtok_r(NULL, " ", &save);
        while ((tok = strtok_r(NULL, " ", &save)) != NULL && l.n < MAX_TOKENS) {
            char *eq = strchr(tok, '=');
            if (eq == NULL)
                continue;
            *eq = '\0';
            l.keys[l.n] = tok;
            l.vals[l.n] = eq + 1;
            l.n++;
        }
        for (k = 0; k < 7; k++)
            if (l.kind && strcmp(l.kind, kinds[k]) == 0)
                break;
        if (l.name == NULL || k == 7) {
            begin();
            CHECK(0, "unknown or malformed line kind %s", l.kind ? l.kind : "?");
            end("vector %s %s", l.kind ? l.kind : "?", l.name ? l.name : "?");
            continue;
        }
        counts[k]++;
        switch (k) {
        case 0: vector_header(&l); break;
        case 1: vector_request(&l); break;
        case 2: vector_reply(&l); break;
        case 3: vector_bad_request(&l); break;
        case 4: vector_table(&l); break;
        case 5: vector_split(&l); break;
        default: vector_call(&l); break;
        }
    }
    fclose(f);
    begin();
    for (int k = 0; k < 7; k++)
        CHECK(counts[k] > 0, "no %s lines", kinds[k]);
    end("vector file covers every line kind (header %d, request %d, reply %d, bad_request %d, "
        "table %d, split %d, call %d)", counts[0], counts[1], counts[2], counts[3], counts[4],
        counts[5], counts[6]);
}

/* ---- (a') codec edge cases ---------------------------------------------- */

static void test_header_checks(void)
{
    shmpool_header h = shmpool_header_make(SHMPOOL_KIND_DATA, 10, 10), b;
    uint64_t size = SHMPOOL_HEADER_SIZE + 80;

    begin();
    CHECK(h.version == 2, "header_make version %u", h.version);
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, size) == NULL, "sound header rejected");
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, size + 4096) == NULL,
          "page-rounded file rejected");
    b = h; b.magic ^= 1;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "bad magic accepted");
    b = h; b.version = 1;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "version 1 accepted");
    b = h; b.version = 3;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "version 3 accepted");
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_RESULT, size) != NULL, "wrong kind accepted");
    b = h; b.header_size = 128;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "header_size accepted");
    b = h; b.flags = 1;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "flags accepted");
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, size - 1) != NULL,
          "capacity beyond the file accepted");
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, 10) != NULL, "file < 64 accepted");
    b = h; b.capacity = UINT64_MAX;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "huge capacity accepted");
    b = h; b.count = 11;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "count > capacity accepted");
    b = shmpool_header_make(SHMPOOL_KIND_RESULT, 10, 0); b.needed = 99; b.count = 77;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_RESULT, size) == NULL,
          "a result header's count/needed are not the reader's business");
    end("header checks of LAYOUT.md 1.2 (version 2 only)");
}

static void test_names(void)
{
    char n63[64 + 2];
    begin();
    CHECK(shmpool_valid_name("shmpool-a"), "shmpool-a");
    CHECK(shmpool_valid_name("shmpool-1234-0a1b2c3d-00112233aabbccdd"), "owned name");
    CHECK(shmpool_valid_name("shmpool-1234-0a1b2c3d-owner"), "owner file name");
    CHECK(shmpool_valid_name("shmpool-A_b-9"), "underscore, dash");
    CHECK(!shmpool_valid_name("shmpool-"), "empty tail");
    CHECK(!shmpool_valid_name("shmpool-../etc"), "dots and slash");
    CHECK(!shmpool_valid_name("shmpool-a.b"), "dot");
    CHECK(!shmpool_valid_name("shmpool-a b"), "space");
    CHECK(!shmpool_valid_name("psm_1234"), "other prefix");
    CHECK(!shmpool_valid_name("/shmpool-a"), "leading slash");
    CHECK(!shmpool_valid_name(""), "empty");
    CHECK(!shmpool_valid_name(NULL), "NULL");
    memset(n63, 'x', sizeof n63);
    memcpy(n63, "shmpool-", 8);
    n63[63] = '\0';
    CHECK(shmpool_valid_name(n63), "63 bytes");
    n63[63] = 'x';
    n63[64] = '\0';
    CHECK(!shmpool_valid_name(n63), "64 bytes");
    end("names of LAYOUT.md 1.3");
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void test_request_edges(void)
{
    static unsigned char raw[SHMPOOL_MAX_REQUEST + 16];
    static double many[SHMPOOL_MAX_REQUEST_VALUES + 1];
    shmpool_request r = shmpool_request_make(SHMPOOL_OP_DETECT), d;
    double vals[10];
    char why[256];
    long n;
    int st, i;

    begin();
    for (i = 0; i < SHMPOOL_MAX_PARAMS; i++)
        CHECK(isnan(r.params[i]), "request_make: param %d not NaN", i);
    strcpy(r.data_name, "shmpool-x");
    strcpy(r.out_name, "shmpool-y");
    r.request_id = 5;
    r.base = 77;
    r.nparams = 2;
    r.params[0] = 3.0;
    r.params[1] = -1.5;
    r.params[2] = 99.0; /* past nparams: sent as NaN */
    n = shmpool_request_encode(&r, raw, sizeof raw);
    CHECK(n == SHMPOOL_REQUEST_HEAD_SIZE, "encode: %ld", n);
    st = shmpool_request_decode(raw, (size_t)n, &d, why, sizeof why);
    CHECK(st == 0 && d.base == 77 && d.nparams == 2 && d.params[1] == -1.5 &&
              isnan(d.params[2]), "decode: %d %s", st, why);
    CHECK(shmpool_request_encode(&r, raw, 255) == -ENOBUFS, "small buffer");
    r.nvalues = 1;
    CHECK(shmpool_request_encode(&r, raw, sizeof raw) == -EINVAL, "nvalues without values");
    r.nvalues = 0;

    /* COMBINE with values round trips; count 2 x summary 5 */
    r = shmpool_request_make(SHMPOOL_OP_COMBINE);
    for (i = 0; i < 10; i++)
        vals[i] = i * 0.5 - 1;
    r.count = 2;
    r.nvalues = 10;
    r.values = vals;
    n = shmpool_request_encode(&r, raw, sizeof raw);
    CHECK(n == 256 + 80, "combine encode: %ld", n);
    st = shmpool_request_decode(raw, (size_t)n, &d, why, sizeof why);
    CHECK(st == 0 && d.nvalues == 10 && d.values == NULL && d.values_wire == raw + 256,
          "combine decode: %d %s", st, why);
    for (i = 0; i < 10; i++)
        CHECK(shmpool_request_value(&d, (size_t)i) == vals[i], "value %d", i);
    CHECK(isnan(shmpool_request_value(&d, 10)), "value past nvalues");
    CHECK(shmpool_request_value(&r, 3) == vals[3], "value of an encodable request");
    /* the largest request: 8192 values, 65792 bytes */
    r.nvalues = SHMPOOL_MAX_REQUEST_VALUES;
    r.values = many;
    n = shmpool_request_encode(&r, raw, sizeof raw);
    CHECK(n == SHMPOOL_MAX_REQUEST, "max request: %ld", n);
    CHECK(shmpool_request_decode(raw, (size_t)n, &d, NULL, 0) == 0, "8192 values accepted");
    /* names: a 64-byte name does not fit a field */
    r = shmpool_request_make(SHMPOOL_OP_DETECT);
    memset(r.data_name, 'a', SHMPOOL_NAME_SIZE);
    r.data_name[SHMPOOL_NAME_SIZE] = '\0';
    CHECK(shmpool_request_encode(&r, raw, sizeof raw) == -ENAMETOOLONG, "64-byte name encoded");
    /* a 64-byte name field without NUL: BAD_NAME */
    strcpy(r.data_name, "shmpool-x");
    strcpy(r.out_name, "shmpool-y");
    shmpool_request_encode(&r, raw, sizeof raw);
    memset(raw + SHMPOOL_REQ_OFF_OUT_NAME, 'a', SHMPOOL_NAME_SIZE);
    memcpy(raw + SHMPOOL_REQ_OFF_OUT_NAME, "shmpool-", 8);
    CHECK(shmpool_request_decode(raw, 256, &d, NULL, 0) == SHMPOOL_STATUS_BAD_NAME,
          "name without NUL");
    /* PING: any well-formed ASCII names; both fields are still decoded */
    r = shmpool_request_make(SHMPOOL_OP_PING);
    strcpy(r.data_name, "anything goes");
    shmpool_request_encode(&r, raw, sizeof raw);
    CHECK(shmpool_request_decode(raw, 256, &d, NULL, 0) == 0, "PING with odd names");
    raw[SHMPOOL_REQ_OFF_OUT_NAME + 5] = 'x';
    CHECK(shmpool_request_decode(raw, 256, &d, NULL, 0) == SHMPOOL_STATUS_BAD_NAME,
          "PING with junk after a NUL");
    /* SUMMARIZE uses data_name only; COMBINE neither */
    r = shmpool_request_make(SHMPOOL_OP_SUMMARIZE);
    strcpy(r.data_name, "shmpool-d");
    shmpool_request_encode(&r, raw, sizeof raw);
    CHECK(shmpool_request_decode(raw, 256, &d, NULL, 0) == 0, "SUMMARIZE without out_name");
    r.data_name[0] = '\0';
    strcpy(r.out_name, "shmpool-o");
    shmpool_request_encode(&r, raw, sizeof raw);
    CHECK(shmpool_request_decode(raw, 256, &d, NULL, 0) == SHMPOOL_STATUS_BAD_NAME,
          "SUMMARIZE without data_name");
    /* order: flags (BAD_MESSAGE) before policy (BAD_VALUE) before names */
    r = shmpool_request_make(SHMPOOL_OP_DETECT);
    r.request_id = 9;
    r.flags = 1;
    r.nan_policy = 9;
    shmpool_request_encode(&r, raw, sizeof raw);
    st = shmpool_request_decode(raw, 256, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_MESSAGE && d.request_id == 9, "flags first: %d", st);
    r.flags = 0;
    shmpool_request_encode(&r, raw, sizeof raw);
    st = shmpool_request_decode(raw, 256, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_VALUE && d.request_id == 9, "policy before names: %d", st);
    /* version before size; a short packet has request_id 0 */
    r.nan_policy = 0;
    r.version = 1;
    shmpool_request_encode(&r, raw, sizeof raw);
    st = shmpool_request_decode(raw, 100, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_VERSION && d.request_id == 9, "v1 head: %d", st);
    r.version = 2;
    shmpool_request_encode(&r, raw, sizeof raw);
    st = shmpool_request_decode(raw, 15, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_MESSAGE && d.request_id == 0, "15 bytes: %d", st);
    st = shmpool_request_decode(raw, 0, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_MESSAGE, "empty packet: %d", st);
    CHECK(le64(raw + 8) == 9, "request_id at offset 8");
    end("request codec edge cases (params, values, names per op, check order)");
}

static void test_reply_edges(void)
{
    static unsigned char buf[SHMPOOL_MAX_REPLY * 2];
    static char tb[40000];
    shmpool_reply r, d;
    long n;
    int i, err;

    begin();
    memset(&r, 0, sizeof r);
    r.magic = SHMPOOL_REPLY_MAGIC;
    r.version = SHMPOOL_VERSION;
    r.status = SHMPOOL_STATUS_DETECTOR_ERROR;
    r.request_id = 9;
    r.nvalues = 70; /* cut to 64 */
    for (i = 0; i < SHMPOOL_MAX_REPLY_VALUES; i++)
        r.values[i] = i;
    memset(tb, 'a', sizeof tb);
    tb[sizeof tb - 1] = 'Z';
    r.type = tb; r.type_len = 1000;
    r.message = tb; r.message_len = 9000;
    r.traceback = tb; r.traceback_len = sizeof tb;
    n = shmpool_reply_encode(&r, buf, sizeof buf);
    CHECK(n == SHMPOOL_REPLY_HEAD_SIZE + 8 * 64 + SHMPOOL_MAX_TYPE + SHMPOOL_MAX_MESSAGE +
                   SHMPOOL_MAX_TRACEBACK, "cut lengths: %ld", n);
    CHECK(n <= SHMPOOL_MAX_REPLY, "fits MAX_REPLY");
    CHECK(n > 0 && buf[n - 1] == 'Z', "traceback keeps its end");
    CHECK(shmpool_reply_encode(&r, buf, 100) == -ENOBUFS, "small buffer");
    err = shmpool_reply_decode(buf, (size_t)n, &d);
    CHECK(err == 0 && d.traceback_len == SHMPOOL_MAX_TRACEBACK && d.nvalues == 64 &&
              d.values[63] == 63.0, "decode cut reply: %d", err);
    CHECK(shmpool_reply_decode(buf, (size_t)n - 1, &d) == -EPROTO, "length mismatch accepted");
    CHECK(shmpool_reply_decode(buf, 47, &d) == -EPROTO, "short reply accepted");
    buf[0] ^= 0xFF;
    CHECK(shmpool_reply_decode(buf, (size_t)n, &d) == -EPROTO, "bad magic accepted");
    buf[0] ^= 0xFF;
    /* another version: -EPROTONOSUPPORT, the first 16 bytes still read */
    buf[SHMPOOL_REP_OFF_VERSION] = 3;
    buf[SHMPOOL_REP_OFF_STATUS] = SHMPOOL_STATUS_BAD_VERSION;
    err = shmpool_reply_decode(buf, 16, &d);
    CHECK(err == -EPROTONOSUPPORT && d.version == 3 && d.status == SHMPOOL_STATUS_BAD_VERSION &&
              d.request_id == 9, "v3 BAD_VERSION head: %d v%u st%u id%llu", err, d.version,
          d.status, (unsigned long long)d.request_id);
    buf[SHMPOOL_REP_OFF_VERSION] = 1;
    CHECK(shmpool_reply_decode(buf, (size_t)n, &d) == -EPROTONOSUPPORT, "v1 reply");
    /* values past 64, lengths whose 32-bit sum would wrap */
    memset(&r, 0, sizeof r);
    r.magic = SHMPOOL_REPLY_MAGIC;
    r.version = SHMPOOL_VERSION;
    n = shmpool_reply_encode(&r, buf, sizeof buf);
    CHECK(n == 48, "empty reply is 48 bytes");
    buf[SHMPOOL_REP_OFF_NVALUES] = 65;
    CHECK(shmpool_reply_decode(buf, 48 + 8 * 65, &d) == -EPROTO, "65 values accepted");
    buf[SHMPOOL_REP_OFF_NVALUES] = 0;
    buf[SHMPOOL_REP_OFF_TYPE_LEN + 3] = 0xFF;
    buf[SHMPOOL_REP_OFF_MESSAGE_LEN + 3] = 0x01;
    CHECK(shmpool_reply_decode(buf, (size_t)n, &d) == -EPROTO, "wrapping lengths accepted");
    CHECK(strcmp(shmpool_status_name(SHMPOOL_STATUS_BUSY), "BUSY") == 0 &&
              strcmp(shmpool_status_name(SHMPOOL_STATUS_BAD_VERSION), "BAD_VERSION") == 0 &&
              strcmp(shmpool_status_name(17), "UNKNOWN") == 0 &&
              strcmp(shmpool_status_name(-1), "UNKNOWN") == 0,
          "status names");
    CHECK(strstr(shmpool_strerror(SHMPOOL_STATUS_TOO_SMALL), "TOO_SMALL") != NULL &&
              strstr(shmpool_strerror(SHMPOOL_STATUS_BUSY), "BUSY") != NULL &&
              strlen(shmpool_strerror(-ENOENT)) > 0 && strlen(shmpool_strerror(99)) > 0,
          "strerror");
    end("reply codec edge cases (cuts, values, versions, lengths)");
}

static void test_table_edges(void)
{
    shmpool_detector rows[4];
    size_t n = 99;
    char longname[400];
    static const char *const bad[] = {
        "x", "x split", "x maybe 0", "x split -1", "x split 5x", "x split 5 threshold",
        "x split 5 =2.0", "x split 5 t=abc", "x split 5 t=",
    };
    size_t i;
    const char *t;

    begin();
    CHECK(shmpool_table_parse("", 0, rows, 4, &n) == 0 && n == 0, "empty table");
    t = "\nclassic split 5 threshold=2.0\n\n  \t\nmy.mod:fn\twhole 0 threshold=3.5 k=1e-05 "
        "z=inf w=nan\r\n";
    CHECK(shmpool_table_parse(t, strlen(t), rows, 4, &n) == 0 && n == 2, "blank lines: %zu", n);
    CHECK(strcmp(rows[1].name, "my.mod:fn") == 0 && !rows[1].split &&
              rows[1].summary_size == 0 && rows[1].nparams == 4 &&
              rows[1].param_defaults[1] == 1e-05 && isinf(rows[1].param_defaults[2]) &&
              isnan(rows[1].param_defaults[3]) && strcmp(rows[1].param_names[3], "w") == 0,
          "second row");
    CHECK(shmpool_table_parse(t, strlen(t), rows, 1, &n) == 0 && n == 2 &&
              strcmp(rows[0].name, "classic") == 0, "max_rows 1 counts all rows");
    CHECK(shmpool_table_parse(t, strlen(t), NULL, 0, &n) == 0 && n == 2, "count only");
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(shmpool_table_parse(bad[i], strlen(bad[i]), rows, 4, &n) == -EPROTO,
              "accepted '%s'", bad[i]);
    t = "x split 5 a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1";
    CHECK(shmpool_table_parse(t, strlen(t), rows, 4, &n) == -E2BIG, "nine parameters");
    t = "x split 65";
    CHECK(shmpool_table_parse(t, strlen(t), rows, 4, &n) == -E2BIG, "summary_size 65");
    memset(longname, 'n', sizeof longname);
    memcpy(longname + 300, " whole 0", 9);
    CHECK(shmpool_table_parse(longname, strlen(longname), rows, 4, &n) == -ENAMETOOLONG,
          "300-byte name");
    end("detector table parsing (blank lines, tabs, nan/inf, malformed rows, limits)");
}

static void test_split_rule(void)
{
    static const uint64_t ns[] = {0, 1, 7, 262143, 262144, 262145, 393216, 1000003, 10000000,
                                  123456789, (1ull << 40) + 3, (1ull << 62) + 12345};
    static const uint64_t lanes[] = {1, 2, 3, 4, 7, 8, 64, 1000};
    size_t a, b;
    uint64_t i;

    begin();
    for (a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (b = 0; b < sizeof lanes / sizeof lanes[0]; b++) {
            uint64_t n = ns[a], L = lanes[b], k = shmpool_split_count(n, L);
            uint64_t want = n < SHMPOOL_SPLIT_MIN ? 1 : n / SHMPOOL_SPLIT_CHUNK_MIN;
            if (want > L)
                want = L;
            if (want < 1)
                want = 1;
            CHECK(k == want, "split_count(%llu, %llu) = %llu", (unsigned long long)n,
                  (unsigned long long)L, (unsigned long long)k);
            CHECK(shmpool_split_bound(n, k, 0) == 0 && shmpool_split_bound(n, k, k) == n,
                  "ends");
            for (i = 1; i < k; i++) {
                unsigned __int128 exact = (unsigned __int128)n * i / k;
                uint64_t bi = shmpool_split_bound(n, k, i);
                CHECK(bi == (uint64_t)exact / 8 * 8, "b(%llu) of n=%llu k=%llu",
                      (unsigned long long)i, (unsigned long long)n, (unsigned long long)k);
                CHECK(bi % 8 == 0 && bi >= shmpool_split_bound(n, k, i - 1), "order");
                CHECK(k == 1 || bi - shmpool_split_bound(n, k, i - 1) >= SHMPOOL_SPLIT_CHUNK_MIN - 8,
                      "chunk smaller than SPLIT_CHUNK_MIN");
            }
        }
    end("split rule of LAYOUT.md 5.1-5.2 (k, bounds on multiples of 8, no overflow)");
}

/* ---- (b) segments and the owner lock ------------------------------------ */

/* The reaper of LAYOUT.md 1.4 for one owner: -1 when the owner lives (or its
 * file is missing / not ours), else the number of files unlinked. */
static int reap_owner(const char *owner)
{
    char path[160], prefix[80];
    struct stat st;
    DIR *d;
    struct dirent *e;
    int fd, n = 0;

    snprintf(path, sizeof path, "/dev/shm/shmpool-%s-owner", owner);
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return -1;
    }
    snprintf(prefix, sizeof prefix, "shmpool-%s-", owner);
    d = opendir("/dev/shm");
    while (d && (e = readdir(d)) != NULL) {
        const char *tail = e->d_name + strlen(prefix);
        char p2[300];
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || strlen(tail) != 16 ||
            strspn(tail, "0123456789abcdef") != 16)
            continue;
        snprintf(p2, sizeof p2, "/dev/shm/%s", e->d_name);
        if (lstat(p2, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
            unlink(p2) == 0)
            n++;
    }
    if (d)
        closedir(d);
    unlink(path);
    close(fd);
    return n;
}

static void test_segment_create(void)
{
    shmpool_segment *s = NULL, *r = NULL;
    struct stat st;
    shmpool_header h;
    char owner[32], want_prefix[64], old_name[SHMPOOL_NAME_SIZE], opath[128];
    const char *name, *hex;
    double *v;
    int err, i, fd;

    begin();
    err = shmpool_data_create(1000, &s);
    CHECK(err == 0 && s != NULL, "create data: %s", shmpool_strerror(err));
    if (s == NULL) {
        end("data segment creation");
        return;
    }
    name = shmpool_segment_name(s);
    CHECK(shmpool_owner_id(owner, sizeof owner) == 0, "owner id");
    snprintf(want_prefix, sizeof want_prefix, "shmpool-%ld-", (long)getpid());
    CHECK(strncmp(owner, want_prefix + 8, strlen(want_prefix) - 8) == 0 &&
              strlen(owner) == strlen(want_prefix) - 8 + 8 &&
              strspn(owner + strlen(want_prefix) - 8, "0123456789abcdef") == 8,
          "owner id %s is not <pid>-<8 hex>", owner);
    snprintf(want_prefix, sizeof want_prefix, "shmpool-%s-", owner);
    CHECK(strncmp(name, want_prefix, strlen(want_prefix)) == 0, "name %s, want prefix %s",
          name, want_prefix);
    hex = name + strlen(want_prefix);
    CHECK(strlen(hex) == 16 && strspn(hex, "0123456789abcdef") == 16, "16 hex digits: %s", hex);
    CHECK(shmpool_valid_name(name), "valid name");
    CHECK(shm_stat(name, &st) == 0, "no /dev/shm/%s", name);
    CHECK(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600, "mode %o", st.st_mode & 07777);
    CHECK(st.st_uid == geteuid(), "owner");
    CHECK((uint64_t)st.st_size >= SHMPOOL_HEADER_SIZE + 8 * 1000, "size %lld",
          (long long)st.st_size);
    CHECK((uint64_t)st.st_blocks * 512 >= SHMPOOL_HEADER_SIZE + 8 * 1000,
          "bytes not reserved (st_blocks %lld)", (long long)st.st_blocks);
    shmpool_header_decode((const unsigned char *)shmpool_segment_base(s), &h);
    CHECK(h.magic == SHMPOOL_SEGMENT_MAGIC && h.version == 2 && h.kind == SHMPOOL_KIND_DATA &&
              h.header_size == 64 && h.flags == 0 && h.capacity == 1000 && h.count == 1000 &&
              h.status == 0 && h.needed == 0, "header as written");
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, (uint64_t)st.st_size) == NULL,
          "header fails the reader's check");
    /* the owner file: regular, 0600, empty, ours, and locked (LAYOUT 1.4) */
    snprintf(opath, sizeof opath, "/dev/shm/shmpool-%s-owner", owner);
    CHECK(lstat(opath, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600 &&
              st.st_size == 0 && st.st_uid == geteuid(), "owner file %s", opath);
    fd = open(opath, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    CHECK(fd >= 0, "open owner file: %s", strerror(errno));
    if (fd >= 0) {
        CHECK(flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK,
              "a reaper's LOCK_EX|LOCK_NB on a live owner did not fail with EWOULDBLOCK");
        CHECK(flock(fd, LOCK_SH | LOCK_NB) == 0, "a shared lock is compatible");
        close(fd);
    }
    CHECK(reap_owner(owner) == -1 && shm_stat(name, &st) == 0, "a reaper took a live owner");
    v = shmpool_data_values(s);
    CHECK(v != NULL && ((uintptr_t)v % 64) == 0, "region 64-byte aligned");
    CHECK(shmpool_result_indices(s) == NULL, "data segment has no indices view");
    for (i = 0; i < 1000; i++)
        v[i] = i * 0.5;
    CHECK(shmpool_data_set_count(s, 500) == 0 && shmpool_data_count(s) == 500, "set_count");
    CHECK(shmpool_data_set_count(s, 1001) == -EINVAL, "count > capacity accepted");
    /* grow keeps the values and the count, and the owner */
    snprintf(old_name, sizeof old_name, "%s", name);
    err = shmpool_segment_grow(&s, 3000);
    CHECK(err == 0 && shmpool_segment_capacity(s) == 3000, "grow: %s", shmpool_strerror(err));
    CHECK(shm_stat(old_name, &st) != 0, "grow left the old segment");
    CHECK(strncmp(shmpool_segment_name(s), want_prefix, strlen(want_prefix)) == 0,
          "same owner after grow");
    v = shmpool_data_values(s);
    CHECK(v[999] == 999 * 0.5 && shmpool_data_count(s) == 500, "grow kept values/count");
    snprintf(old_name, sizeof old_name, "%s", shmpool_segment_name(s));
    CHECK(shmpool_segment_unlink(s) == 0 && shm_stat(old_name, &st) != 0, "unlink");
    CHECK(shmpool_segment_unlink(s) == 0, "unlink twice");
    v[0] = 1.0; /* the mapping stays usable after unlink */
    shmpool_segment_close(s);
    CHECK(lstat(opath, &st) == 0, "the owner file outlives its segments until exit");

    err = shmpool_result_create(0, &r);
    CHECK(err == 0, "capacity-0 result: %s", shmpool_strerror(err));
    if (r) {
        shmpool_header_decode((const unsigned char *)shmpool_segment_base(r), &h);
        CHECK(h.kind == SHMPOOL_KIND_RESULT && h.capacity == 0 && h.count == 0,
              "result header");
        CHECK(shmpool_data_values(r) == NULL, "result segment has no values view");
        shmpool_segment_destroy(r);
    }
    CHECK(shmpool_segment_create(3, 1, &r) == -EINVAL && r == NULL, "kind 3 accepted");
    CHECK(shmpool_segment_create(SHMPOOL_KIND_DATA, UINT64_MAX / 4, &r) == -EOVERFLOW,
          "overflowing capacity");
    shmpool_segment_destroy(NULL);
    shmpool_segment_close(NULL);
    {
        mode_t old = umask(0777);
        err = shmpool_data_create(10, &r);
        umask(old);
        CHECK(err == 0 && shm_stat(shmpool_segment_name(r), &st) == 0 &&
                  (st.st_mode & 07777) == 0600, "umask 0777: mode %o", st.st_mode & 07777);
        shmpool_segment_destroy(r);
    }
    end("segments per LAYOUT.md 1.3-1.5 (owner file + flock, name, 0600, fallocate, header)");
}

static void test_owner_fork(void)
{
    shmpool_segment *mine = NULL;
    char owner[32], child_owner[64] = "", path[160], first[256];
    int pfd[2], status = -1;
    struct stat st;
    pid_t pid;
    ssize_t got;

    begin();
    CHECK(shmpool_data_create(10, &mine) == 0, "create");
    CHECK(shmpool_owner_id(owner, sizeof owner) == 0, "owner id");
    CHECK(pipe(pfd) == 0, "pipe");
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        /* child: its own owner at its first segment; the parent's segment is
         * not ours to unlink; exit() cleans up what we created */
        shmpool_segment *s = NULL;
        char o[32] = "";
        int bad = 0;
        close(pfd[0]);
        if (shmpool_segment_unlink(mine) != -EPERM)
            bad |= 1;
        if (shmpool_data_create(10, &s) != 0 || shmpool_owner_id(o, sizeof o) != 0)
            bad |= 2;
        if (write(pfd[1], o, strlen(o) + 1) < 0)
            bad |= 4;
        close(pfd[1]);
        shmpool_segment_close(s); /* closed, not unlinked: exit must unlink it */
        shmpool_segment_close(mine);
        exit(bad);
    }
    close(pfd[1]);
    got = read(pfd[0], child_owner, sizeof child_owner - 1);
    close(pfd[0]);
    if (got > 0)
        child_owner[got] = '\0';
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    {
        char want[32];
        snprintf(want, sizeof want, "%ld-", (long)pid);
        CHECK(strncmp(child_owner, want, strlen(want)) == 0 && strcmp(child_owner, owner) != 0,
              "child owner %s (parent %s)", child_owner, owner);
        snprintf(path, sizeof path, "shmpool-%s", child_owner);
        CHECK(count_prefixed(path, first, sizeof first) == 0,
              "the child's exit left %s", first);
    }
    snprintf(path, sizeof path, "/dev/shm/shmpool-%s-owner", owner);
    CHECK(lstat(path, &st) == 0, "the parent's owner file is gone");
    CHECK(mine && shm_stat(shmpool_segment_name(mine), &st) == 0,
          "the parent's segment is gone");
    CHECK(reap_owner(owner) == -1, "the parent's owner lost its lock in the fork");
    shmpool_segment_destroy(mine);
    end("owner after fork: the child gets its own, cleans it at exit, leaves the parent's");
}

static void test_owner_reaped_after_death(void)
{
    char child_owner[64] = "", prefix[96], first[256];
    int pfd[2], status = -1, n;
    pid_t pid;
    ssize_t got;

    begin();
    CHECK(pipe(pfd) == 0, "pipe");
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        shmpool_segment *a = NULL, *b = NULL;
        char o[32] = "";
        close(pfd[0]);
        shmpool_data_create(10, &a);
        shmpool_result_create(10, &b);
        shmpool_owner_id(o, sizeof o);
        if (write(pfd[1], o, strlen(o) + 1) < 0)
            _exit(3);
        _exit(a && b ? 0 : 2); /* dies without cleaning up */
    }
    close(pfd[1]);
    got = read(pfd[0], child_owner, sizeof child_owner - 1);
    close(pfd[0]);
    if (got > 0)
        child_owner[got] = '\0';
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    snprintf(prefix, sizeof prefix, "shmpool-%s-", child_owner);
    n = count_prefixed(prefix, first, sizeof first);
    CHECK(n == 3, "a dead child left %d files (want 2 segments + owner file)", n);
    n = reap_owner(child_owner);
    CHECK(n == 2, "the reaper removed %d segments of the dead owner", n);
    CHECK(count_prefixed(prefix, first, sizeof first) == 0, "left after reaping: %s", first);
    end("a killed host's segments are reapable (its owner lock died with it)");
}

static void test_cleanup(void)
{
    shmpool_segment *a = NULL, *b = NULL, *c = NULL;
    char owner[32], owner2[32], path[128], name_b[SHMPOOL_NAME_SIZE];
    struct stat st;

    begin();
    CHECK(shmpool_data_create(100, &a) == 0 && shmpool_result_create(10, &b) == 0, "create");
    shmpool_owner_id(owner, sizeof owner);
    snprintf(name_b, sizeof name_b, "%s", shmpool_segment_name(b));
    shmpool_segment_close(b); /* closed without unlinking */
    CHECK(shm_stat(name_b, &st) == 0, "close unlinked");
    shmpool_cleanup();
    snprintf(path, sizeof path, "/dev/shm/shmpool-%s-owner", owner);
    CHECK(lstat(path, &st) != 0, "cleanup left the owner file");
    CHECK(shm_stat(name_b, &st) != 0, "cleanup left a closed segment");
    CHECK(shm_stat(shmpool_segment_name(a), &st) != 0, "cleanup left a live segment");
    shmpool_data_values(a)[99] = 1.0; /* still mapped */
    CHECK(shmpool_segment_unlink(a) == 0, "unlink after cleanup");
    shmpool_segment_destroy(a);
    shmpool_cleanup(); /* idempotent */
    CHECK(shmpool_data_create(1, &c) == 0, "create after cleanup");
    shmpool_owner_id(owner2, sizeof owner2);
    CHECK(strcmp(owner, owner2) != 0, "a new owner after cleanup");
    snprintf(path, sizeof path, "/dev/shm/shmpool-%s-owner", owner2);
    CHECK(lstat(path, &st) == 0, "no owner file for the new owner");
    shmpool_segment_destroy(c);
    end("shmpool_cleanup: segments (even closed ones), then the owner file; a new owner after");
}

static void test_segment_enospc(void)
{
    struct statvfs vfs;
    shmpool_segment *s = NULL;
    int err, before, after;

    begin();
    if (statvfs("/dev/shm", &vfs) != 0 || vfs.f_blocks == 0) {
        end("segment bigger than /dev/shm (size unknown: not checked)");
        return;
    }
    before = count_prefixed(g_prefix, NULL, 0);
    /* One GiB more than the whole file system: tmpfs refuses up front. */
    err = shmpool_data_create(((uint64_t)vfs.f_blocks * vfs.f_frsize + (1ull << 30)) / 8, &s);
    CHECK(err == -ENOSPC || err == -EFBIG, "got %d (%s), want -ENOSPC", err,
          shmpool_strerror(err));
    CHECK(s == NULL, "segment returned");
    after = count_prefixed(g_prefix, NULL, 0);
    CHECK(after == before, "failed creation left a file behind");
    end("segment bigger than /dev/shm -> %s (no SIGBUS later)", shmpool_strerror(err));
}

/* ==== (c) fake workers ===================================================== */

/* An in-process v2 "server": every accepted connection is one worker (index
 * = connection number % workers) serving the classic detector over real
 * segments with the C reference above, or misbehaving on purpose. */
enum {
    FK_NORMAL,
    FK_EOF_DETECT,   /* DETECT: close the connection (a worker dying mid-call) */
    FK_SILENT,       /* no reply to anything but INFO */
    FK_GARBAGE,      /* a few bytes of garbage instead of a reply */
    FK_WRONG_ID,     /* a reply for another request_id */
    FK_HUGE,         /* a packet over MAX_REPLY */
    FK_BUSY,         /* first packet: BUSY with request_id 0, close (2.1) */
    FK_NOT_PERMITTED,/* first packet: NOT_PERMITTED with request_id 0, close */
    FK_BUSY_EXTRA,   /* like FK_BUSY for every connection but the first */
    FK_BADVER0,      /* BAD_VERSION with request_id 0, close */
    FK_V3,           /* a layout-v3 BAD_VERSION reply, close */
    FK_CLOSE_AFTER,  /* close after each reply (a replaced worker) */
    FK_DIE_FLAG1,    /* FLAG of a chunk with base > 0: close */
    FK_ERR_SUM1,     /* SUMMARIZE of a chunk with base > 0: DETECTOR_ERROR */
    FK_SHUTRD_AFTER, /* shutdown(SHUT_RD) after each non-INFO reply: next send EPIPE */
    FK_SHUTRD_ALWAYS /* shutdown(SHUT_RD) after every reply, INFO too */
};

#define FAKE_MAX_CONN 128

typedef struct fake {
    int lfd, mode, backlog, accept_delay_ms;
    unsigned workers;
    char table[512];
    char path[108];
    pthread_t acceptor;
    pthread_t th[FAKE_MAX_CONN];
    int fds[FAKE_MAX_CONN];
    int nconn;
    int stop;                /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int counts[8];           /* requests received, by op */
    shmpool_request last[8]; /* the last request of each op */
    int barrier;             /* SUMMARIZE replies wait until this many arrived */
    int sum_arrived, barrier_failed;
} fake;

typedef struct {
    fake *f;
    int idx;
} fake_conn;

static void fk_reply(int fd, int status, uint64_t id, uint64_t count, uint64_t needed,
                     const double *values, uint32_t nv, const char *type, const char *msg,
                     const char *tb)
{
    static __thread unsigned char buf[SHMPOOL_MAX_REPLY];
    shmpool_reply r;
    long n;
    memset(&r, 0, sizeof r);
    r.magic = SHMPOOL_REPLY_MAGIC;
    r.version = SHMPOOL_VERSION;
    r.status = (uint16_t)status;
    r.request_id = id;
    r.count = count;
    r.needed = needed;
    r.nvalues = nv;
    if (nv)
        memcpy(r.values, values, nv * sizeof(double));
    r.type = type;
    r.type_len = type ? (uint32_t)strlen(type) : 0;
    r.message = msg;
    r.message_len = msg ? (uint32_t)strlen(msg) : 0;
    r.traceback = tb;
    r.traceback_len = tb ? (uint32_t)strlen(tb) : 0;
    n = shmpool_reply_encode(&r, buf, sizeof buf);
    if (n > 0)
        send(fd, buf, (size_t)n, MSG_NOSIGNAL);
}

static void fk_error(int fd, int status, uint64_t id, const char *msg)
{
    fk_reply(fd, status, id, 0, 0, NULL, 0, "FakeError", msg, NULL);
}

static void fk_wait_eof(int fd)
{
    char b[256];
    while (recv(fd, b, sizeof b, 0) > 0)
        ;
}

/* Map a named segment (LAYOUT 1.2 checks); returns the mapping or NULL with
 * *status set. */
static unsigned char *fk_map(const char *name, unsigned kind, int writable, size_t *size,
                             int *status)
{
    char path[128];
    struct stat st;
    shmpool_header h;
    unsigned char *m;
    int fd;
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *status = errno == ENOENT ? SHMPOOL_STATUS_NO_SEGMENT : SHMPOOL_STATUS_NOT_PERMITTED;
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) ||
        st.st_size < SHMPOOL_HEADER_SIZE) {
        close(fd);
        *status = SHMPOOL_STATUS_NOT_PERMITTED;
        return NULL;
    }
    m = (unsigned char *)mmap(NULL, (size_t)st.st_size,
                              PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        *status = SHMPOOL_STATUS_INTERNAL;
        return NULL;
    }
    shmpool_header_decode(m, &h);
    if (shmpool_header_check(&h, kind, (uint64_t)st.st_size) != NULL) {
        munmap(m, (size_t)st.st_size);
        *status = SHMPOOL_STATUS_BAD_HEADER;
        return NULL;
    }
    *size = (size_t)st.st_size;
    return m;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    int i;
    for (i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Flag into a result segment per LAYOUT 2.7; replies. */
static void fk_flag(int fd, const shmpool_request *q, const double *x, double mean, double cut)
{
    size_t osize = 0;
    int st = 0;
    unsigned char *o = fk_map(q->out_name, SHMPOOL_KIND_RESULT, 1, &osize, &st);
    shmpool_header h;
    uint64_t total;
    if (o == NULL) {
        fk_error(fd, st, q->request_id, "result segment refused");
        return;
    }
    shmpool_header_decode(o, &h);
    total = flag_into(x, (size_t)q->count, mean, cut, q->base,
                      (int64_t *)(void *)(o + SHMPOOL_HEADER_SIZE), h.capacity);
    if (total > h.capacity) {
        put_u64(o + SHMPOOL_OFF_COUNT, 0);
        o[SHMPOOL_OFF_STATUS] = SHMPOOL_STATUS_TOO_SMALL;
        put_u64(o + SHMPOOL_OFF_NEEDED, total);
        fk_reply(fd, SHMPOOL_STATUS_TOO_SMALL, q->request_id, 0, total, NULL, 0, "ResultTooSmall",
                 "need more slots", NULL);
    } else {
        put_u64(o + SHMPOOL_OFF_COUNT, total);
        o[SHMPOOL_OFF_STATUS] = 0;
        put_u64(o + SHMPOOL_OFF_NEEDED, total);
        fk_reply(fd, 0, q->request_id, total, total, NULL, 0, NULL, NULL, NULL);
    }
    munmap(o, osize);
}

static void fk_serve(fake *f, int fd, const shmpool_request *q, int worker)
{
    int policy = q->nan_policy ? (int)q->nan_policy : SHMPOOL_POLICY_RAISE;
    double thr = q->nparams >= 1 && !isnan(q->params[0]) ? q->params[0] : 2.0;
    unsigned char *d = NULL;
    size_t dsize = 0;
    int st = 0;
    const double *x = NULL;
    char msg[512];

    if (q->op == SHMPOOL_OP_INFO) {
        double v[5];
        v[0] = 2;
        v[1] = f->workers;
        v[2] = worker;
        v[3] = getpid();
        v[4] = SHMPOOL_POLICY_RAISE;
        pthread_mutex_lock(&f->mu);
        snprintf(msg, sizeof msg, "%s", f->table);
        pthread_mutex_unlock(&f->mu);
        fk_reply(fd, 0, q->request_id, 0, 0, v, 5, NULL, msg, NULL);
        return;
    }
    if (q->op == SHMPOOL_OP_PING) {
        fk_reply(fd, 0, q->request_id, 0, 0, NULL, 0, NULL, NULL, NULL);
        return;
    }
    if (q->op == SHMPOOL_OP_COMBINE) {
        double mean = 0, cut = 0, *sums, fp[2];
        stats total;
        uint32_t i;
        if (q->nvalues != q->count * 5) {
            fk_error(fd, SHMPOOL_STATUS_BAD_VALUE, q->request_id, "values count");
            return;
        }
        sums = (double *)malloc((q->nvalues + 1) * sizeof *sums);
        for (i = 0; i < q->nvalues; i++)
            sums[i] = shmpool_request_value(q, i);
        st = combine(sums, (size_t)q->count, thr, policy, &mean, &cut, &total);
        free(sums);
        if (st == SHMPOOL_STATUS_NON_FINITE) {
            snprintf(msg, sizeof msg, "input holds %llu non-finite value(s) (NaN or inf), the "
                     "first at index %lld", (unsigned long long)total.nonfinite,
                     (long long)total.first);
            fk_reply(fd, st, q->request_id, 0, 0, NULL, 0, "NonFiniteError", msg, NULL);
        } else if (st == 1) {
            fk_reply(fd, 0, q->request_id, 0, 0, NULL, 0, NULL, NULL, NULL);
        } else {
            fp[0] = mean;
            fp[1] = cut;
            fk_reply(fd, 0, q->request_id, 0, 0, fp, 2, NULL, NULL, NULL);
        }
        return;
    }
    d = fk_map(q->data_name, SHMPOOL_KIND_DATA, 0, &dsize, &st);
    if (d == NULL) {
        fk_error(fd, st, q->request_id, "data segment refused");
        return;
    }
    {
        shmpool_header h;
        shmpool_header_decode(d, &h);
        if (q->start > h.count || q->count > h.count - q->start) {
            fk_error(fd, SHMPOOL_STATUS_OUT_OF_RANGE, q->request_id, "out of range");
            munmap(d, dsize);
            return;
        }
    }
    x = (const double *)(const void *)(d + SHMPOOL_HEADER_SIZE) + q->start;
    if (q->op == SHMPOOL_OP_SUMMARIZE) {
        double s[5];
        pthread_mutex_lock(&f->mu);
        f->sum_arrived++;
        pthread_cond_broadcast(&f->cv);
        if (f->barrier > 0) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 3;
            while (f->sum_arrived < f->barrier && !f->stop)
                if (pthread_cond_timedwait(&f->cv, &f->mu, &until) != 0)
                    break;
            if (f->sum_arrived < f->barrier)
                f->barrier_failed = 1;
        }
        pthread_mutex_unlock(&f->mu);
        summary_of(chunk_stats(x, (size_t)q->count, policy, q->base), s);
        fk_reply(fd, 0, q->request_id, 0, 0, s, 5, NULL, NULL, NULL);
    } else if (q->op == SHMPOOL_OP_FLAG) {
        fk_flag(fd, q, x, q->params[0], q->params[1]);
    } else { /* DETECT */
        stats s = chunk_stats(x, (size_t)q->count, policy, q->base);
        double mean = 0, cut = 0;
        st = limits(s, thr, policy, &mean, &cut);
        if (st == SHMPOOL_STATUS_NON_FINITE) {
            snprintf(msg, sizeof msg, "input holds %llu non-finite value(s) (NaN or inf), the "
                     "first at index %lld", (unsigned long long)s.nonfinite, (long long)s.first);
            fk_reply(fd, st, q->request_id, 0, 0, NULL, 0, "NonFiniteError", msg, NULL);
        } else if (st == 1) {
            fk_flag(fd, q, x, 0.0, INFINITY); /* nothing passes */
        } else {
            fk_flag(fd, q, x, mean, cut);
        }
    }
    munmap(d, dsize);
}

static void *fk_conn_main(void *arg)
{
    fake_conn *fc = (fake_conn *)arg;
    fake *f = fc->f;
    int fd = f->fds[fc->idx], worker = (int)(fc->idx % (int)f->workers), first = 1;
    static __thread unsigned char buf[SHMPOOL_MAX_REQUEST + 16];
    free(fc);
    for (;;) {
        shmpool_request q;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        int st, mode;
        if (n <= 0)
            break;
        st = shmpool_request_decode(buf, (size_t)n, &q, NULL, 0);
        pthread_mutex_lock(&f->mu);
        mode = f->mode;
        if (q.op < 8) {
            f->counts[q.op]++;
            f->last[q.op] = q;
            f->last[q.op].values_wire = NULL;
        }
        pthread_mutex_unlock(&f->mu);
        if (first && (mode == FK_BUSY || mode == FK_NOT_PERMITTED ||
                      (mode == FK_BUSY_EXTRA && worker != 0))) {
            fk_error(fd, mode == FK_NOT_PERMITTED ? SHMPOOL_STATUS_NOT_PERMITTED
                                                  : SHMPOOL_STATUS_BUSY, 0, "refused");
            break;
        }
        first = 0;
        if (st != 0) {
            fk_error(fd, st, q.request_id, "bad request");
            continue;
        }
        if (q.op != SHMPOOL_OP_INFO) {
            if ((mode == FK_EOF_DETECT && q.op == SHMPOOL_OP_DETECT) ||
                (mode == FK_DIE_FLAG1 && q.op == SHMPOOL_OP_FLAG && q.base > 0))
                break;
            if (mode == FK_SILENT) {
                fk_wait_eof(fd);
                break;
            }
            if (mode == FK_GARBAGE) {
                send(fd, "garbage", 7, MSG_NOSIGNAL);
                fk_wait_eof(fd);
                break;
            }
            if (mode == FK_WRONG_ID) {
                fk_reply(fd, 0, q.request_id + 1000, 0, 0, NULL, 0, NULL, NULL, NULL);
                fk_wait_eof(fd);
                break;
            }
            if (mode == FK_HUGE) {
                static __thread unsigned char big[70000];
                send(fd, big, sizeof big, MSG_NOSIGNAL);
                fk_wait_eof(fd);
                break;
            }
            if (mode == FK_BADVER0) {
                fk_reply(fd, SHMPOOL_STATUS_BAD_VERSION, 0, 0, 0, NULL, 0, "ProtocolError",
                         "version", NULL);
                break;
            }
            if (mode == FK_V3) {
                unsigned char head[48];
                memset(head, 0, sizeof head);
                memcpy(head, "SHMR", 4);
                head[4] = 3;
                head[6] = SHMPOOL_STATUS_BAD_VERSION;
                put_u64(head + 8, q.request_id);
                send(fd, head, sizeof head, MSG_NOSIGNAL);
                break;
            }
            if (mode == FK_ERR_SUM1 && q.op == SHMPOOL_OP_SUMMARIZE && q.base > 0) {
                fk_reply(fd, SHMPOOL_STATUS_DETECTOR_ERROR, q.request_id, 0, 0, NULL, 0,
                         "ValueError", "chunk 1 says no",
                         "Traceback (most recent call last):\n  fake\nValueError: no");
                continue;
            }
        }
        if ((mode == FK_SHUTRD_AFTER && q.op != SHMPOOL_OP_INFO) || mode == FK_SHUTRD_ALWAYS) {
            /* stop reading before replying: the client's next send on this
             * connection fails with EPIPE, and nothing makes it readable */
            shutdown(fd, SHUT_RD);
            fk_serve(f, fd, &q, worker);
            return NULL;
        }
        fk_serve(f, fd, &q, worker);
        if (mode == FK_CLOSE_AFTER && q.op != SHMPOOL_OP_INFO)
            break;
    }
    shutdown(fd, SHUT_RDWR); /* EOF for the client; the stopper closes fd */
    return NULL;
}

static void *fk_accept_main(void *arg)
{
    fake *f = (fake *)arg;
    int waited = 0;
    for (;;) {
        int stop;
        pthread_mutex_lock(&f->mu);
        stop = f->stop;
        pthread_mutex_unlock(&f->mu);
        if (stop || waited >= f->accept_delay_ms)
            break;
        sleep_ms(10);
        waited += 10;
    }
    for (;;) {
        int fd = accept(f->lfd, NULL, NULL);
        fake_conn *fc;
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        pthread_mutex_lock(&f->mu);
        if (f->stop || f->nconn == FAKE_MAX_CONN) {
            pthread_mutex_unlock(&f->mu);
            close(fd);
            continue;
        }
        fc = (fake_conn *)malloc(sizeof *fc);
        fc->f = f;
        fc->idx = f->nconn;
        f->fds[f->nconn] = fd;
        if (pthread_create(&f->th[f->nconn], NULL, fk_conn_main, fc) == 0) {
            f->nconn++;
        } else {
            free(fc);
            close(fd);
        }
        pthread_mutex_unlock(&f->mu);
    }
    return NULL;
}

static int fake_start_ex(fake *f, int mode, unsigned workers, int backlog, int delay_ms)
{
    struct sockaddr_un addr;
    static int seq;
    memset(f, 0, sizeof *f);
    f->mode = mode;
    f->workers = workers ? workers : 1;
    f->backlog = backlog;
    f->accept_delay_ms = delay_ms;
    snprintf(f->table, sizeof f->table, "classic split 5 threshold=2.0");
    snprintf(f->path, sizeof f->path, "/tmp/shmpool-ctest-%ld-%d.sock", (long)getpid(), seq++);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    unlink(f->path);
    f->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (f->lfd < 0)
        return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, f->path);
    if (bind(f->lfd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(f->lfd, f->backlog) != 0 ||
        pthread_create(&f->acceptor, NULL, fk_accept_main, f) != 0) {
        close(f->lfd);
        unlink(f->path);
        return -1;
    }
    return 0;
}

static int fake_start(fake *f, int mode, unsigned workers)
{
    return fake_start_ex(f, mode, workers, 16, 0);
}

/* A listen backlog and a delay before the first accept. */
static int fake_start_slow(fake *f, unsigned workers, int backlog, int delay_ms)
{
    return fake_start_ex(f, FK_NORMAL, workers, backlog, delay_ms);
}

static void fake_stop(fake *f)
{
    int i;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    shutdown(f->lfd, SHUT_RDWR);
    pthread_join(f->acceptor, NULL);
    for (i = 0; i < f->nconn; i++)
        shutdown(f->fds[i], SHUT_RDWR);
    for (i = 0; i < f->nconn; i++) {
        pthread_join(f->th[i], NULL);
        close(f->fds[i]);
    }
    close(f->lfd);
    unlink(f->path);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
}

static void fake_reset(fake *f)
{
    pthread_mutex_lock(&f->mu);
    memset(f->counts, 0, sizeof f->counts);
    f->sum_arrived = 0;
    f->barrier_failed = 0;
    pthread_mutex_unlock(&f->mu);
}

static int fake_count(fake *f, int op)
{
    int n;
    pthread_mutex_lock(&f->mu);
    n = f->counts[op];
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void fake_set_mode(fake *f, int mode)
{
    pthread_mutex_lock(&f->mu);
    f->mode = mode;
    pthread_mutex_unlock(&f->mu);
}

static void fake_set_table(fake *f, const char *table)
{
    pthread_mutex_lock(&f->mu);
    snprintf(f->table, sizeof f->table, "%s", table);
    pthread_mutex_unlock(&f->mu);
}

static shmpool_request fake_last(fake *f, int op)
{
    shmpool_request q;
    pthread_mutex_lock(&f->mu);
    q = f->last[op];
    pthread_mutex_unlock(&f->mu);
    return q;
}

/* one of the fake's counters, read under its lock */
static int fake_int(fake *f, const int *field)
{
    int n;
    pthread_mutex_lock(&f->mu);
    n = *field;
    pthread_mutex_unlock(&f->mu);
    return n;
}

#define fake_nconn(f) fake_int((f), &(f)->nconn)
#define fake_barrier_failed(f) fake_int((f), &(f)->barrier_failed)

static shmpool_client *fake_dial(fake *f, int timeout_ms)
{
    shmpool_client *c = NULL;
    int err = shmpool_dial_timeout(f->path, timeout_ms, &c);
    CHECK(err == 0 && c != NULL, "dial fake %s: %d %s", f->path, err, shmpool_strerror(err));
    return c;
}

/* A data segment holding splitmix data. */
static shmpool_segment *splitmix_segment(size_t n, uint64_t seed, long every, long nan_at)
{
    shmpool_segment *s = NULL;
    if (shmpool_data_create(n, &s) != 0)
        return NULL;
    splitmix(shmpool_data_values(s), n, seed, every, nan_at);
    return s;
}

static void test_fake_basic(void)
{
    fake f;
    shmpool_client *c;
    shmpool_server_info info;
    static double x[1000];
    static const int64_t want[] = {7, 113, 835};
    int64_t *idx = NULL;
    size_t n = 0;
    int err;

    begin();
    if (fake_start(&f, FK_NORMAL, 2) != 0) {
        CHECK(0, "fake: %s", strerror(errno));
        end("fake: basics");
        return;
    }
    c = fake_dial(&f, 10000);
    if (c) {
        CHECK(shmpool_workers(c) == 2 && shmpool_lane_worker(c, 0) == 0 &&
                  shmpool_lane_pid(c, 0) == getpid() && shmpool_lane_worker(c, 1) == -1,
              "lanes after dial: workers %u lane0 %d", shmpool_workers(c),
              shmpool_lane_worker(c, 0));
        CHECK(shmpool_detector_count(c) == 1 &&
                  strcmp(shmpool_detector_at(c, 0)->name, "classic") == 0 &&
                  shmpool_detector_at(c, 0)->split &&
                  shmpool_detector_at(c, 0)->summary_size == 5 &&
                  shmpool_detector_at(c, 1) == NULL, "table");
        err = shmpool_info(c, &info);
        CHECK(err == 0 && info.version == 2 && info.workers == 2 && info.worker == 0 &&
                  info.pid == getpid() && info.nan_policy == 3 && info.n_detectors == 1,
              "info: %d", err);
        CHECK(shmpool_ping(c) == 0, "ping");
        seed_data(x);
        err = shmpool_detect(c, x, 1000, &idx, &n);
        CHECK(err == 0, "detect: %d %s", err, shmpool_last_error_message(c));
        CHECK_INDICES(idx, n, want, 3, "demo data");
        CHECK(shmpool_last_chunks(c) == 1, "a small call is whole");
        shmpool_free(idx);
        CHECK(fake_last(&f, SHMPOOL_OP_DETECT).nparams == 1 &&
                  isnan(fake_last(&f, SHMPOOL_OP_DETECT).params[0]) &&
                  fake_last(&f, SHMPOOL_OP_DETECT).detector == 0 &&
                  fake_last(&f, SHMPOOL_OP_DETECT).nan_policy == 0 && fake_last(&f, SHMPOOL_OP_DETECT).base == 0,
              "DETECT with the defaults: nparams %u", fake_last(&f, SHMPOOL_OP_DETECT).nparams);
        CHECK(shmpool_set_threshold(c, 3.0) == 0 && shmpool_get_param(c, "threshold") == 3.0,
              "set_threshold");
        CHECK(shmpool_set_nan_policy(c, SHMPOOL_POLICY_OMIT) == 0, "set_nan_policy");
        err = shmpool_detect(c, x, 1000, &idx, &n);
        shmpool_free(idx);
        CHECK(err == 0 && fake_last(&f, SHMPOOL_OP_DETECT).params[0] == 3.0 &&
                  fake_last(&f, SHMPOOL_OP_DETECT).nan_policy == SHMPOOL_POLICY_OMIT,
              "threshold and policy sent");
        CHECK(shmpool_set_threshold(c, -1) == -EINVAL &&
                  shmpool_set_threshold(c, INFINITY) == -EINVAL &&
                  strlen(shmpool_last_error_message(c)) > 0, "bad threshold accepted locally");
        CHECK(shmpool_set_threshold(c, NAN) == 0 && isnan(shmpool_get_param(c, "threshold")),
              "NaN threshold = default");
        CHECK(shmpool_set_nan_policy(c, 4) == -EINVAL, "policy 4 accepted locally");
        CHECK(shmpool_set_param(c, "k", 1.0) == -EINVAL, "unknown parameter accepted");
        CHECK(shmpool_set_detector(c, "nope") == -EINVAL &&
                  strstr(shmpool_last_error_message(c), "nope") != NULL,
              "unknown detector accepted");
        CHECK(shmpool_set_detector(c, "classic") == 0 && shmpool_set_detector(c, NULL) == 0 &&
                  shmpool_detector_row(c) == 0, "set_detector classic / default");
        shmpool_close(c);
    }
    fake_stop(&f);
    end("fake: dial + INFO (workers, lane worker, table), PING, demo, options on the wire");
}

/* One call vector through the client against fake workers. */
static void fake_call_vector(const call_vec *cv)
{
    fake f;
    shmpool_client *c;
    shmpool_segment *data;
    int64_t *idx = NULL;
    size_t n = 0;
    int err;
    unsigned i;

    begin();
    if (fake_start(&f, FK_NORMAL, cv->lanes) != 0) {
        CHECK(0, "fake");
        end("fake: call %s", cv->name);
        return;
    }
    f.barrier = cv->k > 1 ? (int)cv->k : 0; /* SUMMARIZE replies wait for all k */
    c = fake_dial(&f, 30000);
    data = splitmix_segment(cv->n, cv->seed, cv->every, cv->nan_at);
    CHECK(data != NULL, "data segment");
    if (c && data) {
        fake_reset(&f);
        shmpool_set_threshold(c, cv->threshold);
        shmpool_set_nan_policy(c, (uint32_t)cv->policy);
        err = shmpool_detect_segment(c, data, 0, cv->n, &idx, &n);
        CHECK(err == cv->status, "status %d (%s), want %d", err, shmpool_last_error_message(c),
              cv->status);
        CHECK(n == cv->count && fnv1a(idx, n) == cv->fnv, "count %zu fnv %llu; want %zu %llu",
              n, (unsigned long long)fnv1a(idx, n), cv->count, (unsigned long long)cv->fnv);
        CHECK_INDICES(idx, n < 5 ? n : 5, cv->head, (size_t)cv->nhead, "head");
        CHECK(shmpool_last_chunks(c) == cv->k, "chunks %u, want %u", shmpool_last_chunks(c),
              cv->k);
        if (cv->k > 1) {
            CHECK(fake_count(&f, SHMPOOL_OP_SUMMARIZE) == (int)cv->k &&
                      fake_count(&f, SHMPOOL_OP_COMBINE) == 1 &&
                      fake_count(&f, SHMPOOL_OP_DETECT) == 0,
                  "ops: SUMMARIZE %d COMBINE %d DETECT %d",
                  fake_count(&f, SHMPOOL_OP_SUMMARIZE), fake_count(&f, SHMPOOL_OP_COMBINE),
                  fake_count(&f, SHMPOOL_OP_DETECT));
            CHECK(!fake_barrier_failed(&f), "SUMMARIZE requests were not all sent before reading");
            CHECK(fake_count(&f, SHMPOOL_OP_FLAG) >= (cv->nflag ? (int)cv->k : 0) &&
                      (cv->nflag || fake_count(&f, SHMPOOL_OP_FLAG) == 0),
                  "FLAG %d", fake_count(&f, SHMPOOL_OP_FLAG));
            for (i = 0; i < cv->k; i++)
                CHECK(shmpool_lane_worker(c, i) == (int)i, "lane %u worker %d", i,
                      shmpool_lane_worker(c, i));
        }
        if (cv->status == SHMPOOL_STATUS_NON_FINITE) {
            char want[64];
            snprintf(want, sizeof want, "index %ld", cv->nan_at);
            CHECK(strstr(shmpool_last_error_message(c), want) != NULL &&
                      strcmp(shmpool_last_error_type(c), "NonFiniteError") == 0,
                  "message '%s'", shmpool_last_error_message(c));
        }
        shmpool_free(idx);
    }
    shmpool_segment_destroy(data);
    shmpool_close(c);
    fake_stop(&f);
    end("fake: call %s over %u lanes -> k=%u, %zu indices, pipelined", cv->name, cv->lanes,
        cv->k, cv->count);
}

static void test_fake_calls(void)
{
    int i;
    for (i = 0; i < g_ncalls; i++)
        fake_call_vector(&g_calls[i]);
}

/* TOO_SMALL: whole and split, internal growth and a caller's result. */
static void test_fake_too_small(void)
{
    fake f;
    shmpool_client *c;
    shmpool_segment *data = NULL, *res = NULL;
    int64_t *idx = NULL;
    size_t n = 0;
    uint64_t cnt = 0, needed = 0;
    const size_t N = 400000;
    int err, pass;

    begin();
    if (fake_start(&f, FK_NORMAL, 2) != 0) {
        CHECK(0, "fake");
        end("fake: TOO_SMALL");
        return;
    }
    c = fake_dial(&f, 30000);
    data = splitmix_segment(N, 11, 0, -1);
    CHECK(shmpool_result_create(4, &res) == 0, "result");
    if (c && data && res) {
        shmpool_set_threshold(c, 1.0); /* about 42% of uniform data */
        for (pass = 0; pass < 2; pass++) {
            uint64_t count = pass == 0 ? 1000 : N; /* whole, then split in 2 */
            size_t m;
            int64_t *ref = (int64_t *)malloc(count * sizeof *ref);
            size_t nref = 0;
            reference_call(shmpool_data_values(data), (size_t)count, pass ? 2 : 1, 1.0,
                           SHMPOOL_POLICY_RAISE, ref, &nref);
            fake_reset(&f);
            err = shmpool_detect_segment(c, data, 0, count, &idx, &n);
            CHECK(err == 0, "internal growth: %d %s", err, shmpool_last_error_message(c));
            CHECK_INDICES(idx, n, ref, nref, "internal growth");
            CHECK(fake_count(&f, pass ? SHMPOOL_OP_FLAG : SHMPOOL_OP_DETECT) > (pass ? 2 : 1),
                  "no TOO_SMALL round trip happened");
            shmpool_free(idx);
            idx = NULL;
            err = shmpool_detect_into(c, data, 0, count, res, &cnt, &needed);
            CHECK(err == SHMPOOL_STATUS_TOO_SMALL && needed == nref && cnt == 0,
                  "caller's result: %d needed %llu want %zu", err, (unsigned long long)needed,
                  nref);
            CHECK(shmpool_last_status(c) == SHMPOOL_STATUS_TOO_SMALL &&
                      shmpool_result_status(res) == SHMPOOL_STATUS_TOO_SMALL &&
                      shmpool_result_needed(res) == nref && shmpool_result_count(res) == 0,
                  "result header after TOO_SMALL: %u %llu %llu", shmpool_result_status(res),
                  (unsigned long long)shmpool_result_needed(res),
                  (unsigned long long)shmpool_result_count(res));
            CHECK(shmpool_segment_grow(&res, needed) == 0, "grow");
            err = shmpool_detect_into(c, data, 0, count, res, &cnt, &needed);
            m = (size_t)cnt;
            CHECK(err == 0 && cnt == nref && needed == nref, "after grow: %d", err);
            CHECK_INDICES(shmpool_result_indices(res), m, ref, nref, "detect_into after grow");
            CHECK(shmpool_result_status(res) == 0 && shmpool_result_count(res) == nref &&
                      shmpool_result_needed(res) == nref, "result header after OK");
            CHECK(shmpool_last_chunks(c) == (pass ? 2u : 1u), "chunks");
            shmpool_segment_destroy(res);
            res = NULL;
            shmpool_result_create(4, &res);
            free(ref);
        }
    }
    shmpool_segment_destroy(data);
    shmpool_segment_destroy(res);
    shmpool_close(c);
    fake_stop(&f);
    end("fake: TOO_SMALL -> grow -> OK, whole and split, internal and caller's result");
}

static void test_fake_faults(void)
{
    static const struct { int mode, want; const char *what; } cases[] = {
        {FK_EOF_DETECT, SHMPOOL_STATUS_WORKER_DIED, "worker closes during DETECT (EOF)"},
        {FK_SILENT, -ETIMEDOUT, "worker never answers (timeout 300 ms)"},
        {FK_GARBAGE, -EPROTO, "worker answers garbage"},
        {FK_WRONG_ID, -EPROTO, "worker answers another request_id"},
        {FK_HUGE, -EMSGSIZE, "worker answers more than MAX_REPLY bytes"},
        {FK_BADVER0, SHMPOOL_STATUS_BAD_VERSION, "BAD_VERSION with request_id 0"},
        {FK_V3, SHMPOOL_STATUS_BAD_VERSION, "a layout-v3 BAD_VERSION reply"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake f;
        shmpool_client *c;
        double x[4] = {1, 2, 3, 4};
        int64_t *idx = (int64_t *)&f;
        size_t n = 99;
        int err;
        struct timespec t0;
        begin();
        if (fake_start(&f, cases[i].mode, 1) != 0) {
            CHECK(0, "fake");
            end("fake: %s", cases[i].what);
            continue;
        }
        c = fake_dial(&f, cases[i].mode == FK_SILENT ? 300 : 10000);
        if (c) {
            clock_gettime(CLOCK_MONOTONIC, &t0);
            err = shmpool_detect(c, x, 4, &idx, &n);
            CHECK(idx == NULL && n == 0, "outputs not cleared");
            CHECK(err == cases[i].want, "got %d (%s), want %d", err, shmpool_strerror(err),
                  cases[i].want);
            CHECK(shmpool_last_status(c) == err, "last_status %d", shmpool_last_status(c));
            CHECK(strlen(shmpool_last_error_message(c)) > 0, "no message");
            if (cases[i].mode == FK_SILENT) {
                double ms = elapsed_ms(&t0);
                CHECK(ms >= 250 && ms < 5000, "timeout after %.0f ms", ms);
            }
            if (cases[i].mode == FK_V3)
                CHECK(strstr(shmpool_last_error_message(c), "v3") != NULL, "message '%s'",
                      shmpool_last_error_message(c));
            CHECK(shmpool_lane_worker(c, 0) == -1, "the lane was not closed");
            /* the next call reconnects */
            fake_set_mode(&f, FK_NORMAL);
            err = shmpool_detect(c, x, 4, &idx, &n);
            CHECK(err == 0, "after the failure: %d %s", err, shmpool_last_error_message(c));
            CHECK(shmpool_last_error_message(c)[0] == '\0', "error text left over");
            shmpool_free(idx);
            shmpool_close(c);
        }
        fake_stop(&f);
        end("fake: %s -> %s, then a new connection works", cases[i].what,
            cases[i].want > 0 ? shmpool_status_name(cases[i].want) : shmpool_strerror(cases[i].want));
    }
}

/* A fake server of 2 workers in one mode, a client of it and 300,000 values with
 * 300 planted outliers: the split-call fault scenarios. */
typedef struct {
    fake f;
    int started;
    shmpool_client *c;
    shmpool_segment *data;
} split_fixture;

static int split_fixture_start(split_fixture *s, int mode)
{
    memset(s, 0, sizeof *s);
    if (fake_start(&s->f, mode, 2) != 0)
        return 0;
    s->started = 1;
    s->c = fake_dial(&s->f, 30000);
    s->data = splitmix_segment(300000, 2, 1000, -1);
    return s->c != NULL && s->data != NULL;
}

static void split_fixture_stop(split_fixture *s)
{
    shmpool_segment_destroy(s->data);
    shmpool_close(s->c);
    if (s->started)
        fake_stop(&s->f);
    memset(s, 0, sizeof *s);
}

/* the split call fails as a whole: this status, no indices */
static void split_fails(split_fixture *s, int status)
{
    int64_t *idx = NULL;
    size_t n = 0;
    int err = shmpool_detect_segment(s->c, s->data, 0, 300000, &idx, &n);
    CHECK(err == status && idx == NULL && n == 0, "split call: %d (%s), want %d", err,
          shmpool_last_error_message(s->c), status);
    shmpool_free(idx);
}

/* the split call gives the 300 planted indices */
static void split_succeeds(split_fixture *s)
{
    int64_t *idx = NULL;
    size_t n = 0;
    int err = shmpool_detect_segment(s->c, s->data, 0, 300000, &idx, &n);
    CHECK(err == 0 && n == 300, "after: %d %zu (%s)", err, n, shmpool_last_error_message(s->c));
    shmpool_free(idx);
}

static void test_fake_refusals(void)
{
    fake f;
    split_fixture sf;
    shmpool_client *c = NULL;
    int err, k;

    /* refused at connect: dial returns the status, no client */
    for (k = 0; k < 2; k++) {
        begin();
        if (fake_start(&f, k ? FK_NOT_PERMITTED : FK_BUSY, 2) == 0) {
            c = (shmpool_client *)&f;
            err = shmpool_dial(f.path, &c);
            CHECK(err == (k ? SHMPOOL_STATUS_NOT_PERMITTED : SHMPOOL_STATUS_BUSY) && c == NULL,
                  "dial: %d", err);
            fake_stop(&f);
        }
        end("fake: a server that refuses the connection (%s, request_id 0) -> dial fails",
            k ? "NOT_PERMITTED" : "BUSY");
    }
    /* BUSY on an extra lane fails the split call as a whole */
    begin();
    if (split_fixture_start(&sf, FK_BUSY_EXTRA)) {
        split_fails(&sf, SHMPOOL_STATUS_BUSY);
        shmpool_set_lanes(sf.c, 1); /* one lane: whole, works */
        split_succeeds(&sf);
        CHECK(shmpool_last_chunks(sf.c) == 1, "%d chunks", shmpool_last_chunks(sf.c));
    }
    split_fixture_stop(&sf);
    end("fake: BUSY when dialing an extra lane fails the whole split call; lanes=1 runs whole");
}


/* calls x the demo data through client c, each checked; sleep_between ms apart */
static void demo_calls(shmpool_client *c, int calls, int sleep_between)
{
    static double x[1000];
    static const int64_t want[] = {7, 113, 835};
    int64_t *idx = NULL;
    size_t n = 0;
    int k, err;
    seed_data(x);
    for (k = 0; c && k < calls; k++) {
        err = shmpool_detect(c, x, 1000, &idx, &n);
        CHECK(err == 0, "call %d: %d %s", k, err, shmpool_last_error_message(c));
        CHECK_INDICES(idx, n, want, 3, "demo");
        shmpool_free(idx);
        idx = NULL;
        if (sleep_between)
            sleep_ms(sleep_between);
    }
}

static void test_fake_lane_failures(void)
{
    fake f;
    split_fixture sf;
    shmpool_client *c;
    int64_t *idx = NULL;
    size_t n = 0;
    int err, before, nconn = 0;

    /* a worker closes idle connections after every reply: each call reconnects */
    begin();
    if (fake_start(&f, FK_CLOSE_AFTER, 2) == 0) {
        c = fake_dial(&f, 10000);
        demo_calls(c, 5, 5);
        nconn = fake_nconn(&f);
        CHECK(nconn >= 5, "only %d connections", nconn);
        shmpool_close(c);
        fake_stop(&f);
    }
    end("fake: idle lanes closed by their worker are reconnected (5 calls, %d connections)",
        nconn);

    /* EPIPE on a reused idle lane: reconnect and send again, once */
    begin();
    if (fake_start(&f, FK_SHUTRD_AFTER, 1) == 0) {
        c = fake_dial(&f, 10000);
        demo_calls(c, 3, 0);
        nconn = fake_nconn(&f);
        CHECK(nconn == 3, "%d connections, want 3 (one per EPIPE)", nconn);
        CHECK(fake_count(&f, SHMPOOL_OP_DETECT) == 3, "DETECT sent %d times",
              fake_count(&f, SHMPOOL_OP_DETECT));
        shmpool_close(c);
        fake_stop(&f);
    }
    end("fake: EPIPE on a reused idle lane -> reconnect and send again (3 calls, %d "
        "connections)", nconn);
    begin();
    if (fake_start(&f, FK_SHUTRD_ALWAYS, 1) == 0) {
        double x[4] = {1, 2, 3, 4};
        c = fake_dial(&f, 10000);
        if (c) {
            err = shmpool_detect(c, x, 4, &idx, &n);
            CHECK(err == -EPIPE && idx == NULL, "EPIPE twice: %d (%s)", err,
                  shmpool_last_error_message(c));
            CHECK(fake_nconn(&f) == 2 && fake_count(&f, SHMPOOL_OP_DETECT) == 0,
                  "%d connections, %d DETECT", fake_nconn(&f),
                  fake_count(&f, SHMPOOL_OP_DETECT));
        }
        shmpool_close(c);
        fake_stop(&f);
    }
    end("fake: EPIPE again on the new connection -> -EPIPE (retried once, not forever)");

    /* a worker dies during phase 2 of a split call: the whole call fails */
    begin();
    if (split_fixture_start(&sf, FK_DIE_FLAG1)) {
        split_fails(&sf, SHMPOOL_STATUS_WORKER_DIED);
        CHECK(strstr(shmpool_last_error_message(sf.c), "worker 1") != NULL, "message '%s'",
              shmpool_last_error_message(sf.c));
        fake_set_mode(&sf.f, FK_NORMAL);
        split_succeeds(&sf);
    }
    split_fixture_stop(&sf);
    end("fake: a worker dying in phase 2 fails the whole split call (WORKER_DIED, no part)");

    /* an error reply in phase 1: the call fails, the lanes stay in step */
    begin();
    if (split_fixture_start(&sf, FK_ERR_SUM1)) {
        split_fails(&sf, SHMPOOL_STATUS_DETECTOR_ERROR);
        CHECK(strcmp(shmpool_last_error_type(sf.c), "ValueError") == 0 &&
                  strcmp(shmpool_last_error_message(sf.c), "chunk 1 says no") == 0 &&
                  strstr(shmpool_last_error_traceback(sf.c), "Traceback") != NULL,
              "type '%s' message '%s'", shmpool_last_error_type(sf.c),
              shmpool_last_error_message(sf.c));
        before = fake_nconn(&sf.f);
        CHECK(shmpool_lane_worker(sf.c, 0) == 0 && shmpool_lane_worker(sf.c, 1) == 1,
              "lanes closed after an ordinary error reply");
        fake_set_mode(&sf.f, FK_NORMAL);
        split_succeeds(&sf);
        CHECK(fake_nconn(&sf.f) == before, "%d connections, were %d", fake_nconn(&sf.f), before);
    }
    split_fixture_stop(&sf);
    end("fake: an error reply in phase 1 fails the call with its type/message/traceback");
}

static void test_fake_connect(void)
{
    fake f;
    shmpool_client *c = NULL;
    struct sockaddr_un addr;
    struct timespec t0;
    int filler, err, k;

    /* connect() EAGAIN while the backlog is full: retried until accepted */
    for (k = 0; k < 2; k++) {
        begin();
        if (fake_start_slow(&f, 1, 0, k ? 3000 : 400) == 0) {
            memset(&addr, 0, sizeof addr);
            addr.sun_family = AF_UNIX;
            strcpy(addr.sun_path, f.path);
            filler = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            CHECK(connect(filler, (struct sockaddr *)&addr, sizeof addr) == 0, "filler: %s",
                  strerror(errno));
            {
                int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                int r = connect(probe, (struct sockaddr *)&addr, sizeof addr);
                CHECK(r != 0 && errno == EAGAIN, "backlog not full: %d %s", r, strerror(errno));
                close(probe);
            }
            clock_gettime(CLOCK_MONOTONIC, &t0);
            err = shmpool_dial_timeout(f.path, k ? 300 : 10000, &c);
            if (k == 0) {
                CHECK(err == 0, "dial through a full backlog: %d %s", err, shmpool_strerror(err));
                CHECK(elapsed_ms(&t0) >= 250, "accepted after %.0f ms?", elapsed_ms(&t0));
                CHECK(c && shmpool_ping(c) == 0, "ping");
            } else {
                CHECK(err == -ETIMEDOUT && c == NULL, "dial: %d", err);
                CHECK(elapsed_ms(&t0) < 2500, "gave up after %.0f ms", elapsed_ms(&t0));
            }
            shmpool_close(c);
            c = NULL;
            close(filler);
            fake_stop(&f);
        }
        end(k ? "fake: connect() EAGAIN past the deadline -> -ETIMEDOUT (%.0f ms)"
              : "fake: connect() EAGAIN (full backlog) retried with backoff (%.0f ms)",
            elapsed_ms(&t0));
    }
    begin();
    {
        char longpath[200];
        c = (shmpool_client *)&c;
        err = shmpool_dial("/nonexistent-dir/shmpool.sock", &c);
        CHECK(err == -ENOENT && c == NULL, "missing socket: %d", err);
        memset(longpath, 'a', sizeof longpath);
        longpath[0] = '/';
        longpath[sizeof longpath - 1] = '\0';
        CHECK(shmpool_dial(longpath, &c) == -ENAMETOOLONG, "long path");
        CHECK(shmpool_dial(NULL, NULL) == -EINVAL, "NULL out");
        shmpool_close(NULL);
    }
    end("dial errors (no server, path too long), close(NULL)");

    /* SO_PEERCRED: a server of another uid is refused (needs root to fake) */
    begin();
    if (geteuid() != 0) {
        end("SO_PEERCRED: not root, cannot start a server of another uid (not checked)");
    } else {
        char path[108];
        int pfd[2], status;
        pid_t pid;
        snprintf(path, sizeof path, "/tmp/shmpool-ctest-uid-%ld.sock", (long)getpid());
        unlink(path);
        CHECK(pipe(pfd) == 0, "pipe");
        fflush(NULL);
        pid = fork();
        if (pid == 0) {
            int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
            char ch = 1;
            close(pfd[0]);
            memset(&addr, 0, sizeof addr);
            addr.sun_family = AF_UNIX;
            strcpy(addr.sun_path, path);
            if (setgid(65534) != 0 || setuid(65534) != 0 ||
                bind(l, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(l, 4) != 0)
                ch = 0;
            if (write(pfd[1], &ch, 1) != 1)
                _exit(1);
            sleep(30);
            _exit(0);
        }
        close(pfd[1]);
        {
            char ch = 0;
            CHECK(read(pfd[0], &ch, 1) == 1 && ch == 1, "the other-uid server did not start");
            close(pfd[0]);
            c = (shmpool_client *)&c;
            err = shmpool_dial(path, &c);
            CHECK(err == -EPERM && c == NULL, "dial a server of uid 65534: %d (%s)", err,
                  shmpool_strerror(err));
        }
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        unlink(path);
        end("SO_PEERCRED: a server of another uid is refused (-EPERM)");
    }
}

static void test_fake_rows(void)
{
    fake f;
    shmpool_client *c;
    shmpool_segment *data;
    int64_t *idx = NULL;
    size_t n = 0;
    int err;

    begin();
    if (fake_start(&f, FK_NORMAL, 2) != 0) {
        CHECK(0, "fake");
        end("fake: detector rows");
        return;
    }
    fake_set_table(&f, "classic split 5 threshold=2.0\nmymod:f whole 0 threshold=2.5 k=1.0");
    c = fake_dial(&f, 30000);
    data = splitmix_segment(300000, 2, 1000, -1);
    if (c && data) {
        CHECK(shmpool_detector_count(c) == 2 && !shmpool_detector_at(c, 1)->split &&
                  shmpool_detector_at(c, 1)->nparams == 2 &&
                  shmpool_detector_at(c, 1)->param_defaults[0] == 2.5, "table of 2 rows");
        CHECK(shmpool_set_detector(c, "mymod:f") == 0 && shmpool_detector_row(c) == 1, "row 1");
        CHECK(shmpool_set_param(c, "k", 7.0) == 0 && shmpool_set_threshold(c, 4.0) == 0,
              "params");
        fake_reset(&f);
        err = shmpool_detect_segment(c, data, 0, 300000, &idx, &n);
        CHECK(err == 0 && shmpool_last_chunks(c) == 1 &&
                  fake_count(&f, SHMPOOL_OP_SUMMARIZE) == 0 &&
                  fake_count(&f, SHMPOOL_OP_DETECT) == 1,
              "a whole row is never split: %d chunks %u", err, shmpool_last_chunks(c));
        CHECK(fake_last(&f, SHMPOOL_OP_DETECT).detector == 1 && fake_last(&f, SHMPOOL_OP_DETECT).nparams == 2 &&
                  fake_last(&f, SHMPOOL_OP_DETECT).params[0] == 4.0 &&
                  fake_last(&f, SHMPOOL_OP_DETECT).params[1] == 7.0, "row and params in table order");
        shmpool_free(idx);
        idx = NULL;
        CHECK(shmpool_set_detector(c, NULL) == 0 && shmpool_detector_row(c) == 0 &&
                  shmpool_get_param(c, "threshold") == 4.0 && isnan(shmpool_get_param(c, "k")),
              "back to row 0: threshold kept, k dropped");
        fake_reset(&f);
        err = shmpool_detect_segment(c, data, 0, 300000, &idx, &n);
        CHECK(err == 0 && shmpool_last_chunks(c) == 2 &&
                  fake_count(&f, SHMPOOL_OP_SUMMARIZE) == 2 &&
                  fake_last(&f, SHMPOOL_OP_SUMMARIZE).params[0] == 4.0 &&
                  fake_last(&f, SHMPOOL_OP_COMBINE).params[0] == 4.0 &&
                  fake_last(&f, SHMPOOL_OP_FLAG).nparams == 2,
              "classic splits again with its threshold");
        shmpool_free(idx);
        idx = NULL;
        /* the low-level path: SUMMARIZE on lane 1 by hand */
        {
            shmpool_request q = shmpool_request_make(SHMPOOL_OP_SUMMARIZE);
            shmpool_reply rep;
            q.count = 1000;
            q.base = 5;
            snprintf(q.data_name, sizeof q.data_name, "%s", shmpool_segment_name(data));
            err = shmpool_roundtrip_lane(c, 1, &q, &rep);
            CHECK(err == 0 && rep.nvalues == 5 && rep.values[0] == 1000.0 &&
                      rep.request_id == q.request_id && shmpool_lane_worker(c, 1) == 1,
                  "roundtrip_lane: %d", err);
        }
        /* the server's table changes under the client (a restart with other
         * --detector options): the row is looked up again by name */
        CHECK(shmpool_set_detector(c, "mymod:f") == 0, "row 1 again");
        fake_set_table(&f, "mymod:f whole 0 threshold=2.5 k=1.0\nclassic split "
                 "5 threshold=2.0");
        CHECK(shmpool_info(c, NULL) == 0 && shmpool_detector_row(c) == 0 &&
                  strcmp(shmpool_detector_at(c, 0)->name, "mymod:f") == 0,
              "row not found again by name after the table changed");
        fake_set_table(&f, "classic split 5 threshold=2.0");
        CHECK(shmpool_info(c, NULL) == 0 && shmpool_detector_count(c) == 1, "info");
        err = shmpool_detect_segment(c, data, 0, 1000, &idx, &n);
        CHECK(err == -ESTALE && idx == NULL, "a vanished row: %d", err);
        CHECK(shmpool_set_detector(c, NULL) == 0, "back to row 0");
        err = shmpool_detect_segment(c, data, 0, 1000, &idx, &n);
        CHECK(err == 0 && n == 1, "row 0 after the change: %d %zu", err, n);
        shmpool_free(idx);
        idx = NULL;
    }
    shmpool_segment_destroy(data);
    shmpool_close(c);
    fake_stop(&f);
    end("fake: detector rows by name, params by name in table order, whole rows run whole, "
        "a changed table");
}

/* ==== (d) integration against real servers ================================ */

static const char *g_socket;       /* $SHMPOOL_SOCKET: the Makefile's server */
static unsigned g_workers = 2;     /* its --workers ($SHMPOOL_TEST_WORKERS) */
static char g_sockdir[160];        /* where spawned servers put their sockets */

static shmpool_client *dial_at(const char *path)
{
    shmpool_client *c = NULL;
    int err = shmpool_dial_timeout(path, 60000, &c);
    CHECK(err == 0, "dial %s: %d %s", path, err, shmpool_strerror(err));
    return c;
}

static shmpool_client *dial_or_fail(void) { return dial_at(g_socket); }

static void show_error(shmpool_client *c)
{
    printf("       -> status %d %s | type '%s' | message '%s'\n", shmpool_last_status(c),
           shmpool_status_name(shmpool_last_status(c)), shmpool_last_error_type(c),
           shmpool_last_error_message(c));
}

/* A `python -m shmpool serve` of our own. */
typedef struct {
    pid_t pid;
    char path[200];
} server_t;

static int connectable(const char *path)
{
    struct sockaddr_un addr;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), ok;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        close(fd);
        return 0;
    }
    memcpy(addr.sun_path, path, strlen(path));
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Start a server on <sockdir>/<name>.sock with the extra arguments (NULL
 * terminated); waits until it accepts connections.  0 or -1. */
static int server_start(server_t *s, const char *name, const char *a1, const char *a2,
                        const char *a3, const char *a4, const char *a5, const char *a6)
{
    const char *python = getenv("SHMPOOL_TEST_PYTHON"), *root = getenv("SHMPOOL_TEST_ROOT");
    const char *argv[16];
    int i, status;
    if (s->path[0] == '\0')
        snprintf(s->path, sizeof s->path, "%s/%s-%ld.sock", g_sockdir, name, (long)getpid());
    s->pid = -1;
    if (python == NULL || root == NULL) {
        CHECK(0, "SHMPOOL_TEST_PYTHON / SHMPOOL_TEST_ROOT not set (the Makefile sets them)");
        return -1;
    }
    argv[0] = python;
    argv[1] = "-m";
    argv[2] = "shmpool";
    argv[3] = "serve";
    argv[4] = "--socket";
    argv[5] = s->path;
    argv[6] = a1;
    argv[7] = a2;
    argv[8] = a3;
    argv[9] = a4;
    argv[10] = a5;
    argv[11] = a6;
    argv[12] = NULL;
    fflush(NULL);
    s->pid = fork();
    if (s->pid == 0) {
        if (chdir(root) != 0)
            _exit(126);
        execv(python, (char *const *)argv);
        _exit(127);
    }
    if (s->pid < 0)
        return -1;
    for (i = 0; i < 600; i++) { /* up to 60 s */
        if (connectable(s->path))
            return 0;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            CHECK(0, "server %s exited during startup (status %d)", s->path, status);
            s->pid = -1;
            return -1;
        }
        sleep_ms(100);
    }
    CHECK(0, "server %s did not come up in 60 s", s->path);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
    s->pid = -1;
    return -1;
}

/* Stop it with sig; returns its exit status (-1 when killed by force). */
static int server_stop(server_t *s, int sig)
{
    int status = 0, i;
    if (s->pid <= 0)
        return -1;
    kill(s->pid, sig);
    for (i = 0; i < 300; i++) { /* 30 s */
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = -1;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        sleep_ms(100);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
    s->pid = -1;
    return -1;
}

static void test_ping_info(void)
{
    shmpool_client *c;
    shmpool_server_info info;
    struct stat sst;
    int st;
    unsigned i, j;
    const char *srv_pid = getenv("SHMPOOL_TEST_SERVER_PID");

    begin();
    CHECK(stat(g_socket, &sst) == 0 && S_ISSOCK(sst.st_mode) && (sst.st_mode & 0777) == 0600 &&
              sst.st_uid == geteuid(), "socket %s is not a 0600 socket of ours", g_socket);
    c = dial_or_fail();
    if (c) {
        shmpool_request req = shmpool_request_make(SHMPOOL_OP_PING);
        shmpool_reply rep;
        st = shmpool_ping(c);
        CHECK(st == 0, "ping: %d %s", st, shmpool_last_error_message(c));
        st = shmpool_roundtrip(c, &req, &rep);
        CHECK(st == 0 && rep.request_id == req.request_id && rep.type_len == 0 &&
                  rep.message_len == 0 && rep.nvalues == 0,
              "ping reply: st %d id %llu/%llu", st, (unsigned long long)rep.request_id,
              (unsigned long long)req.request_id);
        st = shmpool_info(c, &info);
        CHECK(st == 0 && info.version == 2 && info.workers == g_workers &&
                  info.worker < info.workers && info.pid > 0 &&
                  info.nan_policy == SHMPOOL_POLICY_RAISE,
              "INFO: st %d version %u workers %u (want %u) worker %u pid %lld policy %u", st,
              info.version, info.workers, g_workers, info.worker, (long long)info.pid,
              info.nan_policy);
        CHECK(srv_pid == NULL || info.pid != atoll(srv_pid), "the server itself answered");
        CHECK(shmpool_detector_count(c) >= 1 &&
                  strcmp(shmpool_detector_at(c, 0)->name, "classic") == 0 &&
                  shmpool_detector_at(c, 0)->split &&
                  shmpool_detector_at(c, 0)->summary_size == SHMPOOL_CLASSIC_SUMMARY_SIZE &&
                  shmpool_detector_at(c, 0)->nparams == 1 &&
                  strcmp(shmpool_detector_at(c, 0)->param_names[0], "threshold") == 0 &&
                  shmpool_detector_at(c, 0)->param_defaults[0] == 2.0,
              "detector table: %s", shmpool_detector_count(c) ? shmpool_detector_at(c, 0)->name
                                                             : "(none)");
        printf("       INFO: workers %u, worker %u, pid %lld, table '%s %s %u ...'\n",
               info.workers, info.worker, (long long)info.pid,
               shmpool_detector_at(c, 0) ? shmpool_detector_at(c, 0)->name : "",
               shmpool_detector_at(c, 0) && shmpool_detector_at(c, 0)->split ? "split" : "whole",
               shmpool_detector_at(c, 0) ? shmpool_detector_at(c, 0)->summary_size : 0);
        st = shmpool_open_lanes(c, g_workers);
        CHECK(st == 0, "open %u lanes: %d %s", g_workers, st, shmpool_last_error_message(c));
        for (i = 0; i < g_workers; i++)
            for (j = 0; j < i; j++)
                CHECK(shmpool_lane_worker(c, i) != shmpool_lane_worker(c, j) &&
                          shmpool_lane_pid(c, i) != shmpool_lane_pid(c, j),
                      "lanes %u and %u share worker %d", i, j, shmpool_lane_worker(c, i));
        for (i = 0; i < g_workers; i++)
            CHECK(shmpool_lane_worker(c, i) >= 0 && shmpool_lane_worker(c, i) < (int)g_workers,
                  "lane %u worker %d", i, shmpool_lane_worker(c, i));
        shmpool_close(c);
    }
    end("server: socket 0600; PING; INFO (v2, %u workers, classic split 5 threshold=2.0); "
        "%u lanes on %u different workers", g_workers, g_workers, g_workers);
}

static void test_seed(void)
{
    static double x[1000];
    static const int64_t want[] = {7, 113, 835}, want2[] = {7, 113, 500, 835};
    shmpool_client *c;
    int64_t *idx = NULL;
    size_t n = 0;
    int err;
    begin();
    seed_data(x);
    c = dial_or_fail();
    if (c) {
        err = shmpool_detect(c, x, 1000, &idx, &n);
        CHECK(err == 0, "detect: %s", shmpool_strerror(err));
        if (err)
            show_error(c);
        CHECK_INDICES(idx, n, want, 3, "demo data");
        shmpool_free(idx);
        x[500] += 97; /* the same client again (segments reused) */
        err = shmpool_detect(c, x, 1000, &idx, &n);
        CHECK(err == 0, "detect 2: %s", shmpool_strerror(err));
        CHECK_INDICES(idx, n, want2, 4, "demo data + 500");
        shmpool_free(idx);
        idx = (int64_t *)&n;
        err = shmpool_detect(c, x, 0, &idx, &n);
        CHECK(err == 0 && n == 0 && idx == NULL, "no values: %d %zu", err, n);
        shmpool_close(c);
    }
    end("server: demo data -> [7 113 835] (default threshold and policy); no values -> []");
}

/* Exact parity with the C reference for the same chunks (4.1: numpy's
 * arithmetic up to 65,536 values, blocks beyond, split per section 5). */
static void test_parity(void)
{
    static const size_t sizes[] = {1, 2, 3, 10, 1000, 4097, 65536, 65537, 100000, 262143,
                                   262144, 300000, 1000003};
    static const double ks[] = {1.0, 2.0, 3.0};
    shmpool_client *c = dial_or_fail();
    size_t si;
    if (c == NULL) {
        end("server: parity (no connection)");
        return;
    }
    for (si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si], ki, i;
        double *x;
        int64_t *ref;
        if (g_quick && n > 300000)
            continue;
        x = (double *)malloc(n * sizeof *x);
        ref = (int64_t *)malloc((n + 1) * sizeof *ref);
        for (i = 0; i < n; i++) {
            double v = rng_normal() * 3.0 + 1000.0;
            if (rng_uniform() < 0.01)
                v += rng_normal() * 40.0; /* heavy tail */
            x[i] = v;
        }
        for (ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            double k = ks[ki];
            size_t chunks = (size_t)shmpool_split_count(n, g_workers), m = 0, got_n = 0;
            size_t a = 0, b = 0, diffs = 0;
            int64_t *got = NULL;
            int err;
            begin();
            reference_call(x, n, chunks, k, SHMPOOL_POLICY_RAISE, ref, &m);
            shmpool_set_threshold(c, k);
            err = shmpool_detect(c, x, n, &got, &got_n);
            CHECK(err == 0, "detect: %s", shmpool_strerror(err));
            if (err)
                show_error(c);
            CHECK(shmpool_last_chunks(c) == chunks, "chunks %u, want %zu",
                  shmpool_last_chunks(c), chunks);
            while (err == 0 && (a < got_n || b < m)) {
                if (a < got_n && b < m && got[a] == ref[b]) {
                    a++;
                    b++;
                    continue;
                }
                if (diffs++ < 3)
                    fprintf(stderr, "    differs at %lld\n",
                            (long long)(a < got_n && (b >= m || got[a] < ref[b]) ? got[a]
                                                                                 : ref[b]));
                if (a < got_n && (b >= m || got[a] < ref[b]))
                    a++;
                else
                    b++;
            }
            CHECK(diffs == 0, "%zu indices differ from the reference", diffs);
            shmpool_free(got);
            end("server: parity n=%zu k=%g in %zu chunk(s): %zu outliers, exactly the C "
                "reference's", n, k, chunks, m);
        }
        free(x);
        free(ref);
    }
    shmpool_close(c);
}

static void call_vectors_on(const char *path, unsigned workers)
{
    shmpool_client *c = dial_at(path);
    int i;
    if (c == NULL)
        return;
    for (i = 0; i < g_ncalls; i++) {
        const call_vec *cv = &g_calls[i];
        shmpool_segment *data;
        int64_t *idx = NULL;
        size_t n = 0;
        unsigned l;
        int err;
        if (cv->lanes > workers)
            continue;
        begin();
        data = splitmix_segment(cv->n, cv->seed, cv->every, cv->nan_at);
        CHECK(data != NULL, "data");
        shmpool_set_lanes(c, cv->lanes);
        shmpool_set_threshold(c, cv->threshold);
        shmpool_set_nan_policy(c, (uint32_t)cv->policy);
        err = data ? shmpool_detect_segment(c, data, 0, cv->n, &idx, &n) : -1;
        CHECK(err == cv->status, "status %d (%s: %s), want %d", err, shmpool_status_name(err),
              shmpool_last_error_message(c), cv->status);
        CHECK(n == cv->count && fnv1a(idx, n) == cv->fnv, "count %zu fnv %llu; want %zu %llu",
              n, (unsigned long long)fnv1a(idx, n), cv->count, (unsigned long long)cv->fnv);
        CHECK_INDICES(idx, n < 5 ? n : 5, cv->head, (size_t)cv->nhead, "head");
        CHECK(shmpool_last_chunks(c) == cv->k, "chunks %u want %u", shmpool_last_chunks(c),
              cv->k);
        for (l = 1; l < cv->k; l++)
            CHECK(shmpool_lane_worker(c, l) != shmpool_lane_worker(c, l - 1),
                  "lanes %u, %u on the same worker", l - 1, l);
        if (cv->status == SHMPOOL_STATUS_NON_FINITE) {
            char want[64];
            snprintf(want, sizeof want, "%ld", cv->nan_at);
            CHECK(strstr(shmpool_last_error_message(c), want) != NULL,
                  "message does not name index %ld: '%s'", cv->nan_at,
                  shmpool_last_error_message(c));
            printf("       %s: %s\n", shmpool_last_error_type(c), shmpool_last_error_message(c));
        }
        shmpool_free(idx);
        shmpool_segment_destroy(data);
        end("server (%u workers): call %s over %u lanes -> k=%u, %zu indices, fnv and head as "
            "the vector", workers, cv->name, cv->lanes, cv->k, cv->count);
    }
    shmpool_close(c);
}

static void test_zero_copy(void)
{
    static const int64_t full[] = {7, 113, 835}, sub[] = {13, 735};
    shmpool_client *c;
    shmpool_segment *data = NULL, *res = NULL, *big = NULL;
    int64_t *idx = NULL;
    size_t n = 0;
    uint64_t cnt = 0, needed = 0;
    struct stat st;
    int err, i;

    begin();
    c = dial_or_fail();
    err = shmpool_data_create(1000, &data);
    CHECK(err == 0, "data: %s", shmpool_strerror(err));
    err = shmpool_result_create(1, &res);
    CHECK(err == 0, "result: %s", shmpool_strerror(err));
    if (c && data && res) {
        seed_data(shmpool_data_values(data));
        err = shmpool_detect_segment(c, data, 0, 1000, &idx, &n);
        CHECK(err == 0, "detect_segment: %s", shmpool_strerror(err));
        CHECK_INDICES(idx, n, full, 3, "zero-copy full range");
        shmpool_free(idx);
        idx = NULL;
        err = shmpool_detect_segment(c, data, 100, 800, &idx, &n);
        CHECK(err == 0, "detect_segment sub-range: %s", shmpool_strerror(err));
        CHECK_INDICES(idx, n, sub, 2, "zero-copy [100:900], indices relative to start");
        shmpool_free(idx);
        idx = NULL;
        /* a caller's result segment: TOO_SMALL -> grow -> OK */
        err = shmpool_detect_into(c, data, 100, 800, res, &cnt, &needed);
        CHECK(err == SHMPOOL_STATUS_TOO_SMALL && needed == 2 && cnt == 0,
              "capacity 1: %d needed %llu", err, (unsigned long long)needed);
        CHECK(shmpool_result_status(res) == SHMPOOL_STATUS_TOO_SMALL &&
                  shmpool_result_needed(res) == 2 && shmpool_result_count(res) == 0,
              "result header after TOO_SMALL: status %u needed %llu count %llu",
              shmpool_result_status(res), (unsigned long long)shmpool_result_needed(res),
              (unsigned long long)shmpool_result_count(res));
        printf("       TOO_SMALL reply: type '%s' message '%s'\n", shmpool_last_error_type(c),
               shmpool_last_error_message(c));
        CHECK(shmpool_segment_grow(&res, needed) == 0, "grow");
        err = shmpool_detect_into(c, data, 100, 800, res, &cnt, &needed);
        CHECK(err == 0, "after grow: %d (%s)", err, shmpool_strerror(err));
        CHECK_INDICES(shmpool_result_indices(res), (size_t)cnt, sub, 2, "detect_into");
        CHECK(shmpool_result_status(res) == 0 && shmpool_result_needed(res) == 2 &&
                  shmpool_result_count(res) == 2, "result header after OK");
        err = shmpool_segment_grow(&res, 64);
        err = shmpool_detect_into(c, data, 0, 1000, res, &cnt, &needed);
        CHECK(err == 0, "full range into 64: %s", shmpool_strerror(err));
        CHECK_INDICES(shmpool_result_indices(res), (size_t)cnt, full, 3, "detect_into full");
        /* the host rewrites the data in place and reuses both segments */
        shmpool_data_values(data)[113] -= 97;
        shmpool_data_values(data)[400] += 97;
        err = shmpool_detect_into(c, data, 0, 1000, res, &cnt, &needed);
        {
            static const int64_t moved[] = {7, 400, 835};
            CHECK(err == 0, "rewrite: %s", shmpool_strerror(err));
            CHECK_INDICES(shmpool_result_indices(res), (size_t)cnt, moved, 3, "after rewrite");
        }
        /* a smaller header count: only the first 300 values are valid */
        shmpool_data_set_count(data, 300);
        err = shmpool_detect_into(c, data, 0, 300, res, &cnt, &needed);
        {
            static const int64_t first[] = {7};
            CHECK(err == 0, "count 300: %s", shmpool_strerror(err));
            CHECK_INDICES(shmpool_result_indices(res), (size_t)cnt, first, 1, "count 300");
        }
        err = shmpool_detect_into(c, data, 0, 301, res, &cnt, &needed);
        CHECK(err == SHMPOOL_STATUS_OUT_OF_RANGE, "count 301 of 300: %d", err);
        /* split and zero-copy: [50000, 450000) of 600000, in 2 chunks */
        if (shmpool_data_create(600000, &big) == 0) {
            const size_t start = 50000, count = 400000;
            size_t m = 0, k = (size_t)shmpool_split_count(count, g_workers);
            int64_t *ref = (int64_t *)malloc(count * sizeof *ref);
            splitmix(shmpool_data_values(big), 600000, 77, 1000, -1);
            reference_call(shmpool_data_values(big) + start, count, k, 2.0,
                           SHMPOOL_POLICY_RAISE, ref, &m);
            shmpool_set_threshold(c, NAN);
            err = shmpool_detect_segment(c, big, start, count, &idx, &n);
            CHECK(err == 0 && shmpool_last_chunks(c) == k, "split sub-range: %d", err);
            CHECK_INDICES(idx, n, ref, m, "split sub-range, relative to start");
            shmpool_free(idx);
            idx = NULL;
            shmpool_segment_grow(&res, 10);
            err = shmpool_detect_into(c, big, start, count, res, &cnt, &needed);
            CHECK(err == SHMPOOL_STATUS_TOO_SMALL && needed == m, "split into 10: %d %llu", err,
                  (unsigned long long)needed);
            shmpool_segment_grow(&res, needed);
            err = shmpool_detect_into(c, big, start, count, res, &cnt, &needed);
            CHECK(err == 0, "split into grown: %d", err);
            CHECK_INDICES(shmpool_result_indices(res), (size_t)cnt, ref, m, "split into");
            free(ref);
        }
        /* the server never unlinks our segments */
        CHECK(shm_stat(shmpool_segment_name(data), &st) == 0 &&
                  shm_stat(shmpool_segment_name(res), &st) == 0, "segments vanished");
        for (i = 0; i < 2; i++) {
            shmpool_segment *s = i ? res : data;
            char name[SHMPOOL_NAME_SIZE];
            snprintf(name, sizeof name, "%s", shmpool_segment_name(s));
            CHECK(shmpool_segment_unlink(s) == 0 && shm_stat(name, &st) != 0, "unlink");
        }
    }
    shmpool_segment_destroy(big);
    shmpool_segment_destroy(data);
    shmpool_segment_destroy(res);
    shmpool_close(c);
    end("server: zero-copy ranges, TOO_SMALL -> grow -> OK, reuse, split sub-range");
}

static void test_nan(void)
{
    static double x[1000];
    static const int64_t want[] = {7, 113, 835};
    shmpool_client *c;
    shmpool_segment *big;
    int64_t *idx = NULL;
    size_t n = 0;
    int err, p;

    seed_data(x);
    x[5] = NAN;
    x[600] = INFINITY;
    c = dial_or_fail();
    if (c == NULL)
        return;

    begin();
    shmpool_set_nan_policy(c, SHMPOOL_POLICY_RAISE);
    err = shmpool_detect(c, x, 1000, &idx, &n);
    CHECK(err == SHMPOOL_STATUS_NON_FINITE, "raise: got %d (%s)", err, shmpool_strerror(err));
    CHECK(idx == NULL && n == 0, "indices on error");
    CHECK(strlen(shmpool_last_error_type(c)) > 0, "no error type");
    CHECK(strstr(shmpool_last_error_message(c), "5") != NULL,
          "message does not name the first index (5): '%s'", shmpool_last_error_message(c));
    printf("       NON_FINITE: type '%s' message '%s'\n", shmpool_last_error_type(c),
           shmpool_last_error_message(c));
    end("server: NaN/inf with nan_policy raise -> NON_FINITE with type and message");

    begin();
    shmpool_set_nan_policy(c, SHMPOOL_POLICY_OMIT);
    err = shmpool_detect(c, x, 1000, &idx, &n);
    CHECK(err == 0, "omit: %d (%s)", err, shmpool_strerror(err));
    CHECK_INDICES(idx, n, want, 3, "omit");
    CHECK(shmpool_last_error_message(c)[0] == '\0', "error text left from the previous call");
    shmpool_free(idx);
    idx = NULL;
    shmpool_set_nan_policy(c, SHMPOOL_POLICY_PROPAGATE);
    err = shmpool_detect(c, x, 1000, &idx, &n);
    CHECK(err == 0 && n == 0, "propagate: %d, %zu indices", err, n);
    shmpool_free(idx);
    idx = NULL;
    shmpool_set_nan_policy(c, SHMPOOL_POLICY_DEFAULT);
    err = shmpool_detect(c, x, 1000, &idx, &n);
    CHECK(err == SHMPOOL_STATUS_NON_FINITE, "default policy: %d", err);
    end("server: nan_policy omit -> [7 113 835], propagate -> [], default = raise");

    /* the same over a split call */
    begin();
    big = splitmix_segment(300000, 5, 1000, 200001);
    for (p = 1; big && p <= 3; p++) {
        int64_t *ref = (int64_t *)malloc(300000 * sizeof *ref);
        size_t m = 0;
        int want_st = reference_call(shmpool_data_values(big), 300000,
                                     (size_t)shmpool_split_count(300000, g_workers), 2.0, p,
                                     ref, &m);
        shmpool_set_nan_policy(c, (uint32_t)p);
        err = shmpool_detect_segment(c, big, 0, 300000, &idx, &n);
        CHECK(err == want_st, "policy %d: %d (%s), want %d", p, err,
              shmpool_last_error_message(c), want_st);
        CHECK(err != 0 || same_indices(idx, n, ref, m), "policy %d: %zu indices, want %zu", p,
              n, m);
        if (err == SHMPOOL_STATUS_NON_FINITE)
            CHECK(strstr(shmpool_last_error_message(c), "200001") != NULL, "message '%s'",
                  shmpool_last_error_message(c));
        shmpool_free(idx);
        idx = NULL;
        free(ref);
    }
    shmpool_segment_destroy(big);
    end("server: split call with a NaN under propagate / omit / raise");
    shmpool_close(c);
}

/* A raw request through roundtrip; returns the status. */
static int raw_call(shmpool_client *c, uint16_t op, const char *data, const char *out,
                    uint64_t start, uint64_t count, double k, uint32_t policy, uint32_t detector)
{
    shmpool_request req = shmpool_request_make(op);
    shmpool_reply rep;
    req.start = start;
    req.count = count;
    req.nparams = 1;
    req.params[0] = k;
    req.nan_policy = policy;
    req.detector = detector;
    snprintf(req.data_name, sizeof req.data_name, "%s", data);
    snprintf(req.out_name, sizeof req.out_name, "%s", out);
    return shmpool_roundtrip(c, &req, &rep);
}

static int raw_detect(shmpool_client *c, const char *data, const char *out, uint64_t start,
                      uint64_t count, double k, uint32_t policy)
{
    return raw_call(c, SHMPOOL_OP_DETECT, data, out, start, count, k, policy, 0);
}

static shmpool_segment *fresh_data(void)
{
    shmpool_segment *s = NULL;
    if (shmpool_data_create(100, &s) == 0) {
        int i;
        for (i = 0; i < 100; i++)
            shmpool_data_values(s)[i] = i % 7;
    }
    return s;
}

static void expect_status(shmpool_client *c, int got, int want, const char *what)
{
    begin();
    CHECK(got == want, "got %d %s, want %d %s", got, shmpool_status_name(got), want,
          shmpool_status_name(want));
    if (got > 0 || got != want)
        show_error(c);
    if (got > 0 && got == want)
        CHECK(shmpool_last_error_message(c)[0] != '\0', "error without a message");
    end("server: %s -> %s", what, shmpool_status_name(want));
}

static void test_server_checks(void)
{
    shmpool_client *c = dial_or_fail();
    shmpool_segment *d = NULL, *r = NULL, *s;
    char path[160], ghost[128], spare[128];
    const char *dn, *rn;
    int st;

    if (c == NULL)
        return;
    shmpool_data_create(100, &d);
    shmpool_result_create(100, &r);
    if (d == NULL || r == NULL) {
        begin();
        CHECK(0, "cannot create segments");
        end("server checks");
        goto out;
    }
    dn = shmpool_segment_name(d);
    rn = shmpool_segment_name(r);
    for (st = 0; st < 100; st++)
        shmpool_data_values(d)[st] = st % 7;
    snprintf(ghost, sizeof ghost, "%s0-ffffffffffffffff", g_prefix);

    st = raw_detect(c, dn, rn, 0, 100, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OK, "sound DETECT via roundtrip");
    st = raw_detect(c, dn, rn, 50, 51, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OUT_OF_RANGE, "start + count > data count");
    shmpool_data_set_count(d, 40);
    st = raw_detect(c, dn, rn, 0, 41, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OUT_OF_RANGE, "count beyond a lowered header count");
    shmpool_data_set_count(d, 100);
    st = raw_detect(c, dn, rn, UINT64_MAX, 2, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OUT_OF_RANGE, "start + count overflowing u64");
    st = raw_detect(c, ghost, rn, 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_NO_SEGMENT, "data segment never created");
    st = raw_detect(c, dn, ghost, 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_NO_SEGMENT, "result segment never created");
    st = raw_detect(c, "shmpool-../etc", rn, 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_NAME, "name with ../");
    st = raw_detect(c, dn, "", 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_NAME, "empty out_name");
    st = raw_detect(c, dn, rn, 0, 100, -1.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "negative threshold");
    st = raw_detect(c, dn, rn, 0, 100, INFINITY, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "infinite threshold");
    st = raw_detect(c, dn, rn, 0, 100, 2.0, 4);
    expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "nan_policy 4");
    st = raw_call(c, SHMPOOL_OP_DETECT, dn, rn, 0, 100, 2.0, 0, 999);
    expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "detector row 999");
    st = raw_detect(c, rn, rn, 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "result segment named as data");
    st = raw_detect(c, dn, dn, 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "data segment named as result");
    st = raw_call(c, SHMPOOL_OP_SUMMARIZE, dn, "", 0, 100, 2.0, 0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OK, "SUMMARIZE without out_name");
    {
        shmpool_request q = shmpool_request_make(SHMPOOL_OP_COMBINE);
        shmpool_reply rep;
        double v[4] = {1, 0, 0, 0};
        q.count = 1;
        q.nvalues = 4; /* summary_size is 5 */
        q.values = v;
        st = shmpool_roundtrip(c, &q, &rep);
        expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "COMBINE with 4 values for 1 summary");
    }
    {
        shmpool_request q = shmpool_request_make(SHMPOOL_OP_COMBINE);
        shmpool_reply rep;
        double v[5] = {0, 0, 0, 0, -1};
        q.count = 1;
        q.nvalues = 5;
        q.values = v;
        st = shmpool_roundtrip(c, &q, &rep);
        expect_status(c, st, SHMPOOL_STATUS_OK, "COMBINE of an empty summary");
        begin();
        CHECK(st == 0 && rep.nvalues == 0, "no flag parameters for n = 0: %u", rep.nvalues);
        end("server: COMBINE with n = 0 -> no flag parameters (empty answer)");
    }

    /* Fresh segments the server has never seen, each broken one way. */
    s = fresh_data();
    if (s) {
        ((unsigned char *)shmpool_segment_base(s))[0] ^= 0xFF;
        st = raw_detect(c, shmpool_segment_name(s), rn, 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "data segment with a bad magic");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) {
        ((unsigned char *)shmpool_segment_base(s))[SHMPOOL_OFF_VERSION] = 1;
        st = raw_detect(c, shmpool_segment_name(s), rn, 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "data segment with a v1 header");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) {
        snprintf(path, sizeof path, "/dev/shm/%s", shmpool_segment_name(s));
        chmod(path, 0644);
        st = raw_detect(c, shmpool_segment_name(s), rn, 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_NOT_PERMITTED, "data segment of mode 0644");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) {
        snprintf(path, sizeof path, "/dev/shm/%s", shmpool_segment_name(s));
        CHECK(truncate(path, 64 + 8 * 50) == 0, "truncate");
        st = raw_detect(c, shmpool_segment_name(s), rn, 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "capacity larger than the file");
        shmpool_segment_destroy(s);
    }
    /* a symlink and a FIFO under segment names */
    snprintf(spare, sizeof spare, "%s0-eeeeeeeeeeeeeeee", g_prefix);
    snprintf(path, sizeof path, "/dev/shm/%s", spare);
    if (symlink(dn[0] ? "/dev/null" : "/dev/null", path) == 0) {
        st = raw_detect(c, spare, rn, 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_NOT_PERMITTED, "a symlink under a segment name");
        unlink(path);
    }
    if (mkfifo(path, 0600) == 0) {
        st = raw_detect(c, spare, rn, 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_NOT_PERMITTED, "a FIFO under a segment name");
        unlink(path);
    }
    s = fresh_data();
    if (s) {
        char name[SHMPOOL_NAME_SIZE];
        snprintf(name, sizeof name, "%s", shmpool_segment_name(s));
        st = raw_detect(c, name, rn, 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_OK, "fresh segment, first use");
        shmpool_segment_unlink(s);
        st = raw_detect(c, name, rn, 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_NO_SEGMENT, "segment unlinked after use");
        shmpool_segment_close(s);
    }
    /* a known segment corrupted later: every request re-checks (1.2) */
    {
        unsigned char *b = (unsigned char *)shmpool_segment_base(d);
        b[0] ^= 0xFF;
        st = raw_detect(c, dn, rn, 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "known data segment, magic broken later");
        b[0] ^= 0xFF;
        st = raw_detect(c, dn, rn, 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_OK, "known data segment repaired");
    }
    /* a known result segment that shrinks later */
    {
        shmpool_segment *bigr = NULL, *bigd = NULL;
        shmpool_result_create(100000, &bigr);
        shmpool_data_create(10000, &bigd);
        if (bigr && bigd) {
            for (st = 0; st < 10000; st++)
                shmpool_data_values(bigd)[st] = st % 7;
            st = raw_detect(c, shmpool_segment_name(bigd), shmpool_segment_name(bigr), 0, 10000,
                            0.0, 0);
            expect_status(c, st, SHMPOOL_STATUS_OK, "large result segment, first use");
            snprintf(path, sizeof path, "/dev/shm/%s", shmpool_segment_name(bigr));
            if (truncate(path, 64) == 0) {
                st = raw_detect(c, shmpool_segment_name(bigd), shmpool_segment_name(bigr), 0,
                                10000, 0.0, 0);
                expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER,
                              "known result segment, file shrunk to 64 bytes later");
            }
        }
        shmpool_segment_destroy(bigr);
        shmpool_segment_destroy(bigd);
    }
    st = shmpool_ping(c);
    expect_status(c, st, SHMPOOL_STATUS_OK, "connection still usable after all errors");
out:
    shmpool_segment_destroy(d);
    shmpool_segment_destroy(r);
    shmpool_close(c);
}

/* Bad packets over a raw connection: answered, and the connection stays. */
static void test_bad_packets(void)
{
    struct sockaddr_un addr;
    static unsigned char pkt[SHMPOOL_REQUEST_HEAD_SIZE + 16], buf[SHMPOOL_MAX_REPLY];
    shmpool_request req = shmpool_request_make(SHMPOOL_OP_PING);
    shmpool_reply rep;
    struct timeval tv = {30, 0};
    int fd, i;
    static const struct {
        const char *what;
        int len, off, byte, want;
        uint64_t want_id;
    } cases[] = {
        {"empty packet", 0, -1, 0, SHMPOOL_STATUS_BAD_MESSAGE, 0},
        {"6 bytes", 6, -1, 0, SHMPOOL_STATUS_BAD_MESSAGE, 0},
        {"short packet (100 bytes)", 100, -1, 0, SHMPOOL_STATUS_BAD_MESSAGE, 77},
        {"long packet (257 bytes)", 257, -1, 0, SHMPOOL_STATUS_BAD_MESSAGE, 77},
        {"wrong magic", 256, 0, 'X', SHMPOOL_STATUS_BAD_MESSAGE, 0},
        {"version 1", 256, 4, 1, SHMPOOL_STATUS_BAD_VERSION, 77},
        {"version 3", 256, 4, 3, SHMPOOL_STATUS_BAD_VERSION, 77},
        {"op 9", 256, 6, 9, SHMPOOL_STATUS_BAD_MESSAGE, 77},
        {"flags 1", 256, SHMPOOL_REQ_OFF_FLAGS, 1, SHMPOOL_STATUS_BAD_MESSAGE, 77},
        {"nparams 9", 256, SHMPOOL_REQ_OFF_NPARAMS, 9, SHMPOOL_STATUS_BAD_MESSAGE, 77},
        {"nvalues 1 on PING", 264, SHMPOOL_REQ_OFF_NVALUES, 1, SHMPOOL_STATUS_BAD_MESSAGE, 77},
        {"reserved 1", 256, SHMPOOL_REQ_OFF_RESERVED, 1, SHMPOOL_STATUS_BAD_MESSAGE, 77},
    };

    begin();
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", g_socket);
    CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0, "connect: %s",
          strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    end("server: raw connection");
    if (t_failed) {
        if (fd >= 0)
            close(fd);
        return;
    }
    req.request_id = 77;
    for (i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        ssize_t n;
        begin();
        memset(pkt, 0, sizeof pkt);
        shmpool_request_encode(&req, pkt, sizeof pkt);
        if (cases[i].off >= 0)
            pkt[cases[i].off] = (unsigned char)cases[i].byte;
        n = send(fd, pkt, (size_t)cases[i].len, MSG_NOSIGNAL);
        CHECK(n == cases[i].len, "send: %s", strerror(errno));
        n = recv(fd, buf, sizeof buf, 0);
        CHECK(n >= SHMPOOL_REPLY_HEAD_SIZE, "no reply (%zd, %s)", n,
              n == 0 ? "the worker closed the connection" : strerror(errno));
        if (n >= SHMPOOL_REPLY_HEAD_SIZE) {
            int err = shmpool_reply_decode(buf, (size_t)n, &rep);
            CHECK(err == 0, "malformed reply");
            CHECK(rep.status == cases[i].want, "status %u %s", rep.status,
                  shmpool_status_name(rep.status));
            /* 0 when the packet is too short to hold one or is not a request
             * (bad magic, 2.6 step 1), else echoed */
            CHECK(rep.request_id == cases[i].want_id, "request_id %llu, want %llu",
                  (unsigned long long)rep.request_id, (unsigned long long)cases[i].want_id);
            if (rep.message_len)
                printf("       %.*s\n", (int)rep.message_len, rep.message);
        }
        end("server: %s -> %s", cases[i].what, shmpool_status_name(cases[i].want));
        if (n == 0)
            break;
    }
    begin();
    shmpool_request_encode(&req, pkt, sizeof pkt);
    CHECK(send(fd, pkt, SHMPOOL_REQUEST_HEAD_SIZE, MSG_NOSIGNAL) == SHMPOOL_REQUEST_HEAD_SIZE,
          "send");
    {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        CHECK(n >= SHMPOOL_REPLY_HEAD_SIZE && shmpool_reply_decode(buf, (size_t)n, &rep) == 0 &&
                  rep.status == 0 && rep.request_id == 77, "ping after bad packets");
    }
    end("server: the connection stays open after bad packets");
    close(fd);
}

typedef struct {
    int id, failures, calls;
    char first_error[256];
} thread_job;

static void *thread_main(void *arg)
{
    thread_job *job = (thread_job *)arg;
    shmpool_client *c = NULL;
    shmpool_segment *data = NULL, *res = NULL;
    double x[1000];
    uint64_t st = 0x1234567ull + (uint64_t)job->id * 7919;
    int call, i, err, ncalls = g_quick ? 25 : 100;

    err = shmpool_dial_timeout(g_socket, 60000, &c);
    if (err == 0)
        err = shmpool_data_create(1000, &data);
    if (err == 0)
        err = shmpool_result_create(8, &res);
    if (err != 0) {
        job->failures++;
        snprintf(job->first_error, sizeof job->first_error, "setup: %s", shmpool_strerror(err));
        goto out;
    }
    for (call = 0; call < ncalls; call++) {
        int64_t want[3], *idx = NULL;
        size_t n = 0;
        uint64_t cnt = 0;
        const int64_t *got;
        want[0] = (call * 3 + job->id) % 300;
        want[1] = 300 + (call * 7 + job->id) % 300;
        want[2] = 600 + (call * 11 + job->id) % 400;
        for (i = 0; i < 1000; i++) {
            st ^= st >> 12;
            st ^= st << 25;
            st ^= st >> 27;
            x[i] = (double)((st * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
        }
        for (i = 0; i < 3; i++)
            x[want[i]] += 97;
        if (call % 2 == 0) {
            err = shmpool_detect(c, x, 1000, &idx, &n);
            got = idx;
        } else {
            memcpy(shmpool_data_values(data), x, sizeof x);
            err = shmpool_detect_into(c, data, 0, 1000, res, &cnt, NULL);
            got = shmpool_result_indices(res);
            n = (size_t)cnt;
        }
        job->calls++;
        if (err != 0 || !same_indices(got, n, want, 3)) {
            if (job->failures++ == 0)
                snprintf(job->first_error, sizeof job->first_error,
                         "call %d: err %d (%s) n %zu msg '%s'", call, err,
                         shmpool_strerror(err), n, shmpool_last_error_message(c));
        }
        shmpool_free(idx);
    }
out:
    shmpool_segment_destroy(data);
    shmpool_segment_destroy(res);
    shmpool_close(c);
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[4];
    thread_job jobs[4];
    int i, started[4];
    struct timespec t0;

    begin();
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < 4; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].id = i;
        started[i] = pthread_create(&th[i], NULL, thread_main, &jobs[i]) == 0;
        CHECK(started[i], "pthread_create");
    }
    for (i = 0; i < 4; i++) {
        if (!started[i])
            continue;
        pthread_join(th[i], NULL);
        CHECK(jobs[i].failures == 0 && jobs[i].calls == (g_quick ? 25 : 100),
              "thread %d: %d failures in %d calls; first: %s", i, jobs[i].failures,
              jobs[i].calls, jobs[i].first_error);
    }
    end("server: 4 threads, one client each (%.0f ms)", elapsed_ms(&t0));
}

/* A server of 3 workers: the 3-lane call vector, split over 3 workers. */
static void test_three_workers(void)
{
    server_t s;
    memset(&s, 0, sizeof s);
    begin();
    if (server_start(&s, "three", "--workers", "3", NULL, NULL, NULL, NULL) != 0) {
        end("server with 3 workers: start");
        return;
    }
    end("server with 3 workers: started on %s", s.path);
    call_vectors_on(s.path, 3);
    begin();
    CHECK(server_stop(&s, SIGTERM) == 0, "exit status");
    end("server with 3 workers: SIGTERM -> exit 0");
}

/* A server whose detector raises: type, message and traceback arrive. */
static void test_detector_error(void)
{
    server_t s;
    shmpool_client *c;
    static double x[1000];
    static const int64_t want[] = {7, 113, 835};
    int64_t *idx = NULL;
    size_t n = 0;
    int err;

    memset(&s, 0, sizeof s);
    begin();
    if (server_start(&s, "fail", "--workers", "2", "--detector",
                     "shmpool.testing:fail_on_negative", "--detector", "classic") != 0) {
        end("server --detector shmpool.testing:fail_on_negative --detector classic: start");
        return;
    }
    c = dial_at(s.path);
    if (c) {
        const shmpool_detector *row = shmpool_detector_at(c, 0);
        CHECK(row && strcmp(row->name, "shmpool.testing:fail_on_negative") == 0 && !row->split &&
                  row->nparams == 1 && strcmp(row->param_names[0], "threshold") == 0,
              "table row 0: %s %s", row ? row->name : "-", row && row->split ? "split" : "whole");
        seed_data(x);
        err = shmpool_detect(c, x, 1000, &idx, &n);
        CHECK(err == 0, "positive data: %d %s", err, shmpool_last_error_message(c));
        CHECK_INDICES(idx, n, want, 3, "demo data");
        shmpool_free(idx);
        idx = NULL;
        x[42] = -1.0;
        err = shmpool_detect(c, x, 1000, &idx, &n);
        CHECK(err == SHMPOOL_STATUS_DETECTOR_ERROR, "negative data: %d", err);
        CHECK(idx == NULL && n == 0, "indices on error");
        CHECK(strcmp(shmpool_last_error_type(c), "ValueError") == 0, "type '%s'",
              shmpool_last_error_type(c));
        CHECK(strstr(shmpool_last_error_message(c), "negative") != NULL, "message '%s'",
              shmpool_last_error_message(c));
        CHECK(strstr(shmpool_last_error_traceback(c), "Traceback") != NULL &&
                  strstr(shmpool_last_error_traceback(c), "fail_on_negative") != NULL,
              "traceback '%.200s'", shmpool_last_error_traceback(c));
        printf("       %s: %s\n       traceback: %zu bytes\n", shmpool_last_error_type(c),
               shmpool_last_error_message(c), strlen(shmpool_last_error_traceback(c)));
        x[42] = 0.5;
        err = shmpool_detect(c, x, 1000, &idx, &n);
        CHECK(err == 0 && n == 3, "the next call works: %d", err);
        shmpool_free(idx);
        idx = NULL;
        {
            shmpool_segment *big = splitmix_segment(300000, 2, 1000, -1);
            err = big ? shmpool_detect_segment(c, big, 0, 300000, &idx, &n) : -1;
            CHECK(err == 0 && n == 300 && shmpool_last_chunks(c) == 1,
                  "a whole row runs whole: %d %zu chunks %u", err, n, shmpool_last_chunks(c));
            shmpool_free(idx);
            idx = NULL;
            err = big ? raw_call(c, SHMPOOL_OP_SUMMARIZE, shmpool_segment_name(big), "", 0, 100,
                                 NAN, 0, 0)
                      : -1;
            CHECK(err == SHMPOOL_STATUS_BAD_VALUE, "SUMMARIZE on a whole row: %d", err);
            /* row 1, classic, by name: split over the 2 workers */
            CHECK(shmpool_detector_count(c) == 2 &&
                      strcmp(shmpool_detector_at(c, 1)->name, "classic") == 0 &&
                      shmpool_detector_at(c, 1)->split, "row 1 is classic");
            CHECK(shmpool_set_detector(c, "classic") == 0 && shmpool_detector_row(c) == 1,
                  "set_detector classic");
            err = big ? shmpool_detect_segment(c, big, 0, 300000, &idx, &n) : -1;
            CHECK(err == 0 && n == 300 && shmpool_last_chunks(c) == 2,
                  "classic row split: %d %zu chunks %u (%s)", err, n, shmpool_last_chunks(c),
                  shmpool_last_error_message(c));
            shmpool_free(idx);
            idx = NULL;
            x[42] = -1.0;
            err = shmpool_detect(c, x, 1000, &idx, &n);
            CHECK(err == 0 && n == 3, "classic takes negative values: %d", err);
            shmpool_free(idx);
            idx = NULL;
            CHECK(shmpool_set_detector(c, NULL) == 0, "back to row 0");
            err = shmpool_detect(c, x, 1000, &idx, &n);
            CHECK(err == SHMPOOL_STATUS_DETECTOR_ERROR, "row 0 again: %d", err);
            shmpool_segment_destroy(big);
        }
        shmpool_close(c);
    }
    CHECK(server_stop(&s, SIGTERM) == 0, "exit status");
    end("server --detector shmpool.testing:fail_on_negative --detector classic: "
        "DETECTOR_ERROR with type, message, traceback; whole row never split; rows by name");
}

/* Workers that die: killed while idle (the lane reconnects) and during a
 * call (WORKER_DIED); and the server's --timeout. */
static void test_worker_death(void)
{
    server_t s;
    shmpool_client *c;
    double x[13];
    int64_t *idx = NULL;
    size_t n = 0;
    int err, i;
    int64_t pid0, pid1;
    struct timespec t0;
    pid_t killer;

    memset(&s, 0, sizeof s);
    begin();
    if (server_start(&s, "slow", "--workers", "2", "--detector", "shmpool.testing:slow_on_13",
                     "--timeout", "2") != 0) {
        end("server --detector shmpool.testing:slow_on_13 --timeout 2: start");
        return;
    }
    c = dial_at(s.path);
    for (i = 0; i < 13; i++)
        x[i] = i == 5 ? 100.0 : (double)(i % 3);
    if (c) {
        /* killed while idle: the next request reconnects (EPIPE / hang-up) */
        pid0 = shmpool_lane_pid(c, 0);
        CHECK(pid0 > 0 && kill((pid_t)pid0, SIGKILL) == 0, "kill worker %lld",
              (long long)pid0);
        sleep_ms(300);
        err = shmpool_detect(c, x, 12, &idx, &n);
        CHECK(err == 0, "after the idle worker died: %d %s", err, shmpool_last_error_message(c));
        pid1 = shmpool_lane_pid(c, 0);
        CHECK(pid1 > 0 && pid1 != pid0, "lane 0 still on pid %lld", (long long)pid1);
        shmpool_free(idx);
        idx = NULL;
        /* killed during a call: WORKER_DIED, promptly */
        fflush(NULL);
        killer = fork();
        if (killer == 0) {
            sleep_ms(500);
            kill((pid_t)pid1, SIGKILL);
            _exit(0);
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        err = shmpool_detect(c, x, 13, &idx, &n);
        waitpid(killer, NULL, 0);
        CHECK(err == SHMPOOL_STATUS_WORKER_DIED, "killed mid-call: %d (%s)", err,
              shmpool_last_error_message(c));
        CHECK(elapsed_ms(&t0) < 1900, "took %.0f ms", elapsed_ms(&t0));
        printf("       WORKER_DIED: %s\n", shmpool_last_error_message(c));
        shmpool_free(idx);
        idx = NULL;
        /* the server's --timeout */
        clock_gettime(CLOCK_MONOTONIC, &t0);
        err = shmpool_detect(c, x, 13, &idx, &n);
        CHECK(err == SHMPOOL_STATUS_TIMEOUT, "--timeout 2: %d (%s)", err,
              shmpool_last_error_message(c));
        CHECK(elapsed_ms(&t0) > 1500 && elapsed_ms(&t0) < 20000, "took %.0f ms",
              elapsed_ms(&t0));
        shmpool_free(idx);
        idx = NULL;
        err = shmpool_detect(c, x, 12, &idx, &n);
        CHECK(err == 0, "after TIMEOUT: %d %s", err, shmpool_last_error_message(c));
        shmpool_free(idx);
        idx = NULL;
        shmpool_close(c);
    }
    CHECK(server_stop(&s, SIGTERM) == 0, "exit status");
    end("server: worker killed idle -> reconnect; killed mid-call -> WORKER_DIED; --timeout "
        "-> TIMEOUT");
}

/* SIGKILL the server under a client, then start it again on the same path. */
static void test_kill_restart(void)
{
    server_t s;
    shmpool_client *c;
    shmpool_segment *data;
    int64_t *idx = NULL;
    size_t n = 0;
    int err;
    int64_t before;
    struct timespec t0;

    memset(&s, 0, sizeof s);
    begin();
    if (server_start(&s, "restart", "--workers", "2", NULL, NULL, NULL, NULL) != 0) {
        end("server kill/restart: start");
        return;
    }
    c = dial_at(s.path);
    data = splitmix_segment(300000, 2, 1000, -1);
    if (c && data) {
        err = shmpool_detect_segment(c, data, 0, 300000, &idx, &n);
        CHECK(err == 0 && n == 300 && shmpool_last_chunks(c) == 2, "before: %d %zu", err, n);
        shmpool_free(idx);
        idx = NULL;
        before = shmpool_lane_pid(c, 1);
        CHECK(server_stop(&s, SIGKILL) == 128 + SIGKILL, "SIGKILL");
        sleep_ms(300);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        err = shmpool_detect_segment(c, data, 0, 300000, &idx, &n);
        CHECK(err == -ECONNREFUSED || err == SHMPOOL_STATUS_WORKER_DIED || err == -EPIPE ||
                  err == -ECONNRESET,
              "after SIGKILL: %d (%s)", err, shmpool_last_error_message(c));
        CHECK(idx == NULL && n == 0, "an answer from a dead server");
        CHECK(elapsed_ms(&t0) < 5000, "took %.0f ms", elapsed_ms(&t0));
        printf("       after SIGKILL: %s (%s) in %.0f ms\n", shmpool_strerror(err),
               shmpool_last_error_message(c), elapsed_ms(&t0));
        err = shmpool_ping(c);
        CHECK(err == -ECONNREFUSED, "ping with the stale socket file: %d", err);
        begin();
        end("(restarting)");
        if (server_start(&s, "restart", "--workers", "2", NULL, NULL, NULL, NULL) == 0) {
            err = shmpool_detect_segment(c, data, 0, 300000, &idx, &n);
            CHECK(err == 0 && n == 300 && shmpool_last_chunks(c) == 2,
                  "after restart: %d %zu (%s)", err, n, shmpool_last_error_message(c));
            CHECK(shmpool_lane_pid(c, 1) > 0 && shmpool_lane_pid(c, 1) != before,
                  "lane 1 on the old pid");
            shmpool_free(idx);
            idx = NULL;
            CHECK(server_stop(&s, SIGTERM) == 0, "exit status");
        }
    }
    shmpool_segment_destroy(data);
    shmpool_close(c);
    if (s.pid > 0)
        server_stop(&s, SIGKILL);
    unlink(s.path);
    end("server SIGKILLed under a client -> prompt error; restarted on the same path -> the "
        "same client works again");
}

/* Last: SIGTERM the Makefile's server under a connected client. */
static void test_server_shutdown(const char *pid_text)
{
    shmpool_client *c = dial_or_fail(), *c2 = NULL;
    double x[100];
    long pid = strtol(pid_text, NULL, 10);
    struct timespec t0;
    int st = 0, k, err = 0;
    if (c == NULL || pid <= 1) {
        CHECK(pid > 1, "bad SHMPOOL_TEST_SERVER_PID %s", pid_text);
        end("server: stopping it under a connected client");
        shmpool_close(c);
        return;
    }
    for (k = 0; k < 100; k++)
        x[k] = k % 10;
    shmpool_set_timeout(c, 10000);
    CHECK(shmpool_ping(c) == 0, "ping before stop");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(kill((pid_t)pid, SIGTERM) == 0, "kill %ld: %s", pid, strerror(errno));
    for (k = 0; k < 200; k++) {
        int64_t *idx = NULL;
        size_t n;
        st = k % 2 ? shmpool_ping(c) : shmpool_detect(c, x, 100, &idx, &n);
        shmpool_free(idx);
        if (st < 0)
            break;
        CHECK(st == 0 || st == SHMPOOL_STATUS_SHUTTING_DOWN ||
                  st == SHMPOOL_STATUS_WORKER_DIED, "status %d while stopping", st);
        sleep_ms(20);
    }
    printf("       after SIGTERM: %d (%s) after %.0f ms: %s\n", st, shmpool_strerror(st),
           elapsed_ms(&t0), shmpool_last_error_message(c));
    CHECK(st == -ENOENT || st == -ECONNREFUSED, "got %d (%s), want no server", st,
          shmpool_strerror(st));
    CHECK(elapsed_ms(&t0) < 9000, "took %.0f ms", elapsed_ms(&t0));
    shmpool_close(c);
    for (k = 0; k < 100; k++) { /* until the server has gone */
        err = shmpool_dial(g_socket, &c2);
        shmpool_close(c2);
        if (err != 0)
            break;
        sleep_ms(50);
    }
    CHECK(err == -ENOENT || err == -ECONNREFUSED, "dial after stop: %d (%s)", err,
          shmpool_strerror(err));
    end("server: SIGTERM under a connected client -> prompt error, no hang");
}

static void test_leftovers(void)
{
    char first[256] = "";
    int n;
    begin();
    shmpool_cleanup();
    n = count_prefixed(g_prefix, first, sizeof first);
    CHECK(n == 0, "%d entries left in /dev/shm, e.g. %s", n, first);
    end("no /dev/shm entries with prefix %s left", g_prefix);
}

int main(int argc, char **argv)
{
    const char *vectors = NULL, *w;
    int integration = 1, i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--vectors") == 0 && i + 1 < argc)
            vectors = argv[++i];
        else if (strcmp(argv[i], "--no-integration") == 0)
            integration = 0;
        else if (strcmp(argv[i], "--quick") == 0)
            g_quick = 1;
        else if (argv[i][0] != '-')
            vectors = argv[i];
        else {
            fprintf(stderr, "usage: %s [--vectors PATH] [--no-integration] [--quick]\n",
                    argv[0]);
            return 2;
        }
    }
    if (vectors == NULL)
        vectors = access("../../tests/vectors/v2.txt", R_OK) == 0
                      ? "../../tests/vectors/v2.txt"
                      : "../../../tests/vectors/v2.txt";
    snprintf(g_prefix, sizeof g_prefix, "shmpool-%ld-", (long)getpid());
    signal(SIGPIPE, SIG_IGN); /* the fake workers send to closed peers */

    printf("== layout vectors\n");
    run_vectors(vectors);
    printf("== codec edge cases\n");
    test_header_checks();
    test_names();
    test_request_edges();
    test_reply_edges();
    test_table_edges();
    test_split_rule();
    printf("== segments and the owner lock\n");
    test_segment_create();
    test_owner_fork();
    test_owner_reaped_after_death();
    test_cleanup();
    test_segment_enospc();
    printf("== client logic (fake workers)\n");
    test_fake_basic();
    test_fake_calls();
    test_fake_too_small();
    test_fake_faults();
    test_fake_refusals();
    test_fake_lane_failures();
    test_fake_connect();
    test_fake_rows();
    if (integration) {
        printf("== integration\n");
        g_socket = getenv("SHMPOOL_SOCKET");
        w = getenv("SHMPOOL_TEST_WORKERS");
        if (w != NULL && atoi(w) > 0)
            g_workers = (unsigned)atoi(w);
        begin();
        CHECK(g_socket != NULL && g_socket[0] != '\0',
              "SHMPOOL_SOCKET is not set (use --no-integration to skip on purpose)");
        end("integration: $SHMPOOL_SOCKET = %s", g_socket ? g_socket : "(unset)");
        if (g_socket != NULL && g_socket[0] != '\0') {
            const char *slash = strrchr(g_socket, '/');
            if (slash && slash != g_socket && (size_t)(slash - g_socket) < 100)
                snprintf(g_sockdir, sizeof g_sockdir, "%.*s", (int)(slash - g_socket), g_socket);
            else
                snprintf(g_sockdir, sizeof g_sockdir, "/tmp");
            test_ping_info();
            test_seed();
            test_parity();
            call_vectors_on(g_socket, g_workers);
            test_zero_copy();
            test_nan();
            test_server_checks();
            test_bad_packets();
            test_threads();
            test_three_workers();
            test_detector_error();
            test_worker_death();
            test_kill_restart();
            if (getenv("SHMPOOL_TEST_SERVER_PID") != NULL) {
                begin();
                test_server_shutdown(getenv("SHMPOOL_TEST_SERVER_PID"));
            }
        }
    }
    test_leftovers();
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
