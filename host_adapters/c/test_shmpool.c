/*
 * test_shmpool: tests of the shmpool C host adapter.
 *
 *   test_shmpool [--vectors PATH] [--no-integration]
 *
 * (a) layout: every line of tests/vectors/v1.txt encoded and decoded
 *     byte-for-byte both ways, every bad_request rejected with its status;
 *     header checks, names, reply codec edge cases.
 * (b) segments: creation per LAYOUT.md 1.4 (name, mode, size, header), grow,
 *     unlink, ENOSPC instead of SIGBUS.
 * (c) client failure handling against an in-process fake server: EOF,
 *     silence + timeout, garbage, wrong request id, oversized reply.
 * (d) integration against the real server at $SHMPOOL_SOCKET (required
 *     unless --no-integration: unset is a failure, not a skip).
 *
 * Prints `N passed, M failed` last and exits non-zero on any failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "shmpool.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- tiny harness ------------------------------------------------------- */

static int g_passed, g_failed;
static int t_failed; /* failures in the current test (main thread only) */

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

/* The classic demo data: 1000 uniform values, +97 at 7, 113, 835. */
static void seed_data(double *x)
{
    int i;
    for (i = 0; i < 1000; i++)
        x[i] = rng_uniform();
    x[7] += 97;
    x[113] += 97;
    x[835] += 97;
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

static char g_prefix[64]; /* "shmpool-<pid>-" */

/* Names in /dev/shm that start with this process's prefix. */
static int count_own_segments(char *first, size_t first_size)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    int n = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, g_prefix, strlen(g_prefix)) == 0) {
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

/* ---- (a) golden vectors ------------------------------------------------- */

#define MAX_TOKENS 32

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
    if (v == NULL) {
        *ok = 0;
        return 0;
    }
    errno = 0;
    r = strtoull(v, &end, 10);
    if (*end != '\0' || errno != 0)
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

static void vector_header(const vline *l)
{
    unsigned char want[SHMPOOL_MAX_REPLY], got[SHMPOOL_HEADER_SIZE];
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
    unsigned char want[SHMPOOL_MAX_REPLY], got[SHMPOOL_REQUEST_SIZE];
    shmpool_request e = shmpool_request_make(0), d;
    char why[256];
    int ok = 1, st;
    long n = unhex(sfield(l, "hex", &ok), want, sizeof want);
    const char *thr = sfield(l, "threshold", &ok);

    begin();
    e.op = (uint16_t)ufield(l, "op", &ok);
    e.request_id = ufield(l, "request_id", &ok);
    e.start = ufield(l, "start", &ok);
    e.count = ufield(l, "count", &ok);
    e.threshold = strtod(thr, NULL);
    e.nan_policy = (uint32_t)ufield(l, "nan_policy", &ok);
    snprintf(e.data_name, sizeof e.data_name, "%s", sfield(l, "data_name", &ok));
    snprintf(e.out_name, sizeof e.out_name, "%s", sfield(l, "out_name", &ok));
    CHECK(ok && n == SHMPOOL_REQUEST_SIZE, "malformed vector line");
    if (ok && n == SHMPOOL_REQUEST_SIZE) {
        CHECK(shmpool_request_encode(&e, got) == 0, "encode failed");
        CHECK(memcmp(got, want, SHMPOOL_REQUEST_SIZE) == 0, "encode differs from golden bytes");
        st = shmpool_request_decode(want, (size_t)n, &d, why, sizeof why);
        CHECK(st == SHMPOOL_STATUS_OK, "decode rejected it: %d %s", st, why);
        CHECK(d.magic == SHMPOOL_REQUEST_MAGIC && d.version == SHMPOOL_VERSION && d.flags == 0,
              "decoded fixed fields");
        CHECK(d.op == e.op && d.request_id == e.request_id && d.start == e.start &&
              d.count == e.count && d.nan_policy == e.nan_policy, "decoded integers differ");
        CHECK(isnan(e.threshold) ? isnan(d.threshold) : d.threshold == e.threshold,
              "decoded threshold %g, want %g", d.threshold, e.threshold);
        CHECK(strcmp(d.data_name, e.data_name) == 0 && strcmp(d.out_name, e.out_name) == 0,
              "decoded names differ");
    }
    end("vector request %s", l->name);
}

static void vector_reply(const vline *l)
{
    unsigned char want[SHMPOOL_MAX_REPLY], got[SHMPOOL_MAX_REPLY];
    shmpool_reply e, d;
    int ok = 1, err;
    long n = unhex(sfield(l, "hex", &ok), want, sizeof want), m;

    begin();
    memset(&e, 0, sizeof e);
    e.magic = SHMPOOL_REPLY_MAGIC;
    e.version = SHMPOOL_VERSION;
    e.status = (uint16_t)ufield(l, "status", &ok);
    e.request_id = ufield(l, "request_id", &ok);
    e.count = ufield(l, "count", &ok);
    e.needed = ufield(l, "needed", &ok);
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
    unsigned char raw[SHMPOOL_MAX_REPLY];
    shmpool_request d;
    char why[256];
    int ok = 1, st;
    long n = unhex(sfield(l, "hex", &ok), raw, sizeof raw);
    int want = (int)ufield(l, "status", &ok);

    begin();
    CHECK(ok && n >= 0, "malformed vector line");
    if (ok && n >= 0) {
        st = shmpool_request_decode(raw, (size_t)n, &d, why, sizeof why);
        CHECK(st == want, "decode gave %d (%s), want %d", st, why, want);
        CHECK(why[0] != '\0', "no reason given");
    }
    end("vector bad_request %s -> %s (%s)", l->name, shmpool_status_name(want), why);
}

static void run_vectors(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[8192];
    int counts[4] = {0, 0, 0, 0};

    begin();
    CHECK(f != NULL, "cannot open %s: %s", path, strerror(errno));
    end("vector file %s opens", path);
    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f) != NULL) {
        vline l;
        char *tok, *save = NULL;
        size_t len = strlen(line);
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
        if (l.name == NULL) {
            begin();
            CHECK(0, "malformed line");
            end("vector line");
        } else if (strcmp(l.kind, "header") == 0) {
            vector_header(&l);
            counts[0]++;
        } else if (strcmp(l.kind, "request") == 0) {
            vector_request(&l);
            counts[1]++;
        } else if (strcmp(l.kind, "reply") == 0) {
            vector_reply(&l);
            counts[2]++;
        } else if (strcmp(l.kind, "bad_request") == 0) {
            vector_bad_request(&l);
            counts[3]++;
        } else {
            begin();
            CHECK(0, "unknown struct %s", l.kind);
            end("vector %s %s", l.kind, l.name);
        }
    }
    fclose(f);
    begin();
    CHECK(counts[0] > 0 && counts[1] > 0 && counts[2] > 0 && counts[3] > 0,
          "a struct has no vectors: %d %d %d %d", counts[0], counts[1], counts[2], counts[3]);
    end("vector file covers header/request/reply/bad_request (%d/%d/%d/%d lines)",
        counts[0], counts[1], counts[2], counts[3]);
}

/* ---- (a') codec edge cases ---------------------------------------------- */

static void test_header_checks(void)
{
    shmpool_header h = shmpool_header_make(SHMPOOL_KIND_DATA, 10, 10), b;
    uint64_t size = SHMPOOL_HEADER_SIZE + 80;

    begin();
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, size) == NULL, "sound header rejected");
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, size + 4096) == NULL,
          "page-rounded file rejected");
    b = h; b.magic ^= 1;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "bad magic accepted");
    b = h; b.version = 2;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_DATA, size) != NULL, "version 2 accepted");
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
    b = shmpool_header_make(SHMPOOL_KIND_RESULT, 10, 0); b.needed = 99; b.count = 0;
    CHECK(shmpool_header_check(&b, SHMPOOL_KIND_RESULT, size) == NULL, "result header rejected");
    end("header checks of LAYOUT.md 1.2");
}

static void test_names(void)
{
    char n63[64 + 2];
    begin();
    CHECK(shmpool_valid_name("shmpool-a"), "shmpool-a");
    CHECK(shmpool_valid_name("shmpool-1234-5678-00112233aabbccdd"), "owned name");
    CHECK(shmpool_valid_name("shmpool-A_b-9"), "underscore, dash");
    CHECK(!shmpool_valid_name("shmpool-"), "empty tail");
    CHECK(!shmpool_valid_name("shmpool-../etc"), "dots and slash");
    CHECK(!shmpool_valid_name("shmpool-a.b"), "dot");
    CHECK(!shmpool_valid_name("shmpool-a b"), "space");
    CHECK(!shmpool_valid_name("psm_1234"), "other prefix");
    CHECK(!shmpool_valid_name("/shmpool-a"), "leading slash");
    CHECK(!shmpool_valid_name(""), "empty");
    memset(n63, 'x', sizeof n63);
    memcpy(n63, "shmpool-", 8);
    n63[63] = '\0';
    CHECK(shmpool_valid_name(n63), "63 bytes");
    n63[63] = 'x';
    n63[64] = '\0';
    CHECK(!shmpool_valid_name(n63), "64 bytes");
    end("names of LAYOUT.md 1.3");
}

static void test_request_edges(void)
{
    unsigned char raw[SHMPOOL_REQUEST_SIZE];
    shmpool_request r = shmpool_request_make(SHMPOOL_OP_DETECT), d;
    char why[256];
    int st;

    begin();
    strcpy(r.data_name, "shmpool-x");
    strcpy(r.out_name, "shmpool-y");
    r.request_id = 5;
    CHECK(shmpool_request_encode(&r, raw) == 0, "encode");
    CHECK(shmpool_request_decode(raw, sizeof raw, &d, why, sizeof why) == 0, "decode: %s", why);
    /* -0.0 and 0 are valid thresholds, as in layout.py (0.0 <= -0.0). */
    r.threshold = -0.0;
    shmpool_request_encode(&r, raw);
    CHECK(shmpool_request_decode(raw, sizeof raw, &d, NULL, 0) == 0, "-0.0 threshold");
    r.threshold = -1e-300;
    shmpool_request_encode(&r, raw);
    CHECK(shmpool_request_decode(raw, sizeof raw, &d, NULL, 0) == SHMPOOL_STATUS_BAD_VALUE,
          "tiny negative threshold");
    CHECK(d.request_id == 5, "request_id kept on a field error");
    r.threshold = -INFINITY;
    shmpool_request_encode(&r, raw);
    CHECK(shmpool_request_decode(raw, sizeof raw, &d, NULL, 0) == SHMPOOL_STATUS_BAD_VALUE,
          "-inf threshold");
    r.threshold = NAN;
    /* A 64-byte name field with no NUL: BAD_NAME for DETECT. */
    shmpool_request_encode(&r, raw);
    memset(raw + SHMPOOL_REQ_OFF_OUT_NAME, 'a', SHMPOOL_NAME_SIZE);
    memcpy(raw + SHMPOOL_REQ_OFF_OUT_NAME, "shmpool-", 8);
    CHECK(shmpool_request_decode(raw, sizeof raw, &d, NULL, 0) == SHMPOOL_STATUS_BAD_NAME,
          "name without NUL");
    /* Non-ASCII. */
    shmpool_request_encode(&r, raw);
    raw[SHMPOOL_REQ_OFF_DATA_NAME + 9] = 0xC3;
    CHECK(shmpool_request_decode(raw, sizeof raw, &d, NULL, 0) == SHMPOOL_STATUS_BAD_NAME,
          "non-ASCII name");
    /* PING ignores names as long as the fields are well formed. */
    r.op = SHMPOOL_OP_PING;
    strcpy(r.data_name, "anything goes");
    r.out_name[0] = '\0';
    shmpool_request_encode(&r, raw);
    CHECK(shmpool_request_decode(raw, sizeof raw, &d, NULL, 0) == 0, "PING with odd names");
    /* Order: flags (BAD_MESSAGE) before policy (BAD_VALUE) before names. */
    r.op = SHMPOOL_OP_DETECT;
    r.flags = 1;
    r.nan_policy = 9;
    shmpool_request_encode(&r, raw);
    st = shmpool_request_decode(raw, sizeof raw, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_MESSAGE, "flags first: %d", st);
    r.flags = 0;
    shmpool_request_encode(&r, raw);
    st = shmpool_request_decode(raw, sizeof raw, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_VALUE, "policy before names: %d", st);
    /* Short packet: request_id 0. */
    st = shmpool_request_decode(raw, 20, &d, NULL, 0);
    CHECK(st == SHMPOOL_STATUS_BAD_MESSAGE && d.request_id == 0, "short packet");
    /* Names of 64 bytes do not fit a field. */
    memset(r.data_name, 'a', SHMPOOL_NAME_SIZE);
    r.data_name[SHMPOOL_NAME_SIZE] = '\0';
    CHECK(shmpool_request_encode(&r, raw) == -ENAMETOOLONG, "64-byte name encoded");
    end("request codec edge cases (order, -0.0, names)");
}

static void test_reply_edges(void)
{
    static unsigned char buf[SHMPOOL_MAX_REPLY * 2];
    static char tb[40000];
    shmpool_reply r, d;
    long n;

    begin();
    memset(&r, 0, sizeof r);
    r.magic = SHMPOOL_REPLY_MAGIC;
    r.version = SHMPOOL_VERSION;
    r.status = SHMPOOL_STATUS_DETECTOR_ERROR;
    r.request_id = 9;
    memset(tb, 'a', sizeof tb);
    tb[sizeof tb - 1] = 'Z';
    r.type = tb; r.type_len = 1000;
    r.message = tb; r.message_len = 9000;
    r.traceback = tb; r.traceback_len = sizeof tb;
    n = shmpool_reply_encode(&r, buf, sizeof buf);
    CHECK(n == SHMPOOL_REPLY_HEAD_SIZE + SHMPOOL_MAX_TYPE + SHMPOOL_MAX_MESSAGE +
                   SHMPOOL_MAX_TRACEBACK, "cut lengths: %ld", n);
    CHECK(n <= SHMPOOL_MAX_REPLY, "fits MAX_REPLY");
    CHECK(n > 0 && buf[n - 1] == 'Z', "traceback keeps its end");
    CHECK(shmpool_reply_encode(&r, buf, 100) == -ENOBUFS, "small buffer");
    n = shmpool_reply_encode(&r, buf, sizeof buf);
    CHECK(shmpool_reply_decode(buf, (size_t)n, &d) == 0 && d.traceback_len == SHMPOOL_MAX_TRACEBACK,
          "decode cut reply");
    CHECK(shmpool_reply_decode(buf, (size_t)n - 1, &d) == -EPROTO, "length mismatch accepted");
    CHECK(shmpool_reply_decode(buf, 47, &d) == -EPROTO, "short reply accepted");
    buf[0] ^= 0xFF;
    CHECK(shmpool_reply_decode(buf, (size_t)n, &d) == -EPROTO, "bad magic accepted");
    buf[0] ^= 0xFF;
    buf[SHMPOOL_REP_OFF_VERSION] = 2;
    CHECK(shmpool_reply_decode(buf, (size_t)n, &d) == -EPROTO, "version 2 accepted");
    /* Lengths whose 32-bit sum would wrap. */
    memset(buf, 0, 64);
    r.type = r.message = r.traceback = NULL;
    n = shmpool_reply_encode(&r, buf, sizeof buf);
    buf[SHMPOOL_REP_OFF_TYPE_LEN + 3] = 0xFF;
    buf[SHMPOOL_REP_OFF_MESSAGE_LEN + 3] = 0x01;
    CHECK(shmpool_reply_decode(buf, (size_t)n, &d) == -EPROTO, "wrapping lengths accepted");
    CHECK(strcmp(shmpool_status_name(SHMPOOL_STATUS_NON_FINITE), "NON_FINITE") == 0 &&
          strcmp(shmpool_status_name(99), "UNKNOWN") == 0, "status names");
    CHECK(strstr(shmpool_strerror(SHMPOOL_STATUS_TOO_SMALL), "TOO_SMALL") != NULL &&
          strlen(shmpool_strerror(-ENOENT)) > 0, "strerror");
    end("reply codec edge cases (cuts, lengths, magic)");
}

/* ---- (b) segments ------------------------------------------------------- */

static unsigned long long own_start_time(void)
{
    FILE *f = fopen("/proc/self/stat", "r");
    char buf[1024], *p;
    unsigned long long v = 0;
    int i;
    size_t n;
    if (f == NULL)
        return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    p += 2; /* field 3 */
    for (i = 3; i < 22; i++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return 0;
        p++;
    }
    sscanf(p, "%llu", &v);
    return v;
}

static void test_segment_create(void)
{
    shmpool_segment *s = NULL, *r = NULL;
    struct stat st;
    shmpool_header h;
    char want_prefix[64], old_name[SHMPOOL_NAME_SIZE];
    const char *name, *hex;
    double *v;
    int err, i;

    begin();
    err = shmpool_data_create(1000, &s);
    CHECK(err == 0 && s != NULL, "create data: %s", shmpool_strerror(err));
    if (s == NULL) {
        end("data segment creation");
        return;
    }
    name = shmpool_segment_name(s);
    snprintf(want_prefix, sizeof want_prefix, "shmpool-%ld-%llu-", (long)getpid(),
             own_start_time());
    CHECK(strncmp(name, want_prefix, strlen(want_prefix)) == 0, "name %s, want prefix %s",
          name, want_prefix);
    hex = name + strlen(want_prefix);
    CHECK(strlen(hex) == 16 && strspn(hex, "0123456789abcdef") == 16, "16 hex digits: %s", hex);
    CHECK(shmpool_valid_name(name), "valid name");
    CHECK(shm_stat(name, &st) == 0, "no /dev/shm/%s", name);
    CHECK(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600, "mode %o", st.st_mode & 07777);
    CHECK(st.st_uid == getuid(), "owner");
    CHECK((uint64_t)st.st_size >= SHMPOOL_HEADER_SIZE + 8 * 1000, "size %lld",
          (long long)st.st_size);
    CHECK((uint64_t)st.st_blocks * 512 >= SHMPOOL_HEADER_SIZE + 8 * 1000,
          "bytes not reserved (st_blocks %lld)", (long long)st.st_blocks);
    shmpool_header_decode((const unsigned char *)shmpool_segment_base(s), &h);
    CHECK(h.magic == SHMPOOL_SEGMENT_MAGIC && h.version == 1 && h.kind == SHMPOOL_KIND_DATA &&
          h.header_size == 64 && h.flags == 0 && h.capacity == 1000 && h.count == 1000 &&
          h.status == 0 && h.needed == 0, "header as written");
    CHECK(shmpool_header_check(&h, SHMPOOL_KIND_DATA, (uint64_t)st.st_size) == NULL,
          "header fails the reader's check");
    v = shmpool_data_values(s);
    CHECK(v != NULL && ((uintptr_t)v % 64) == 0, "region 64-byte aligned");
    CHECK(shmpool_result_indices(s) == NULL, "data segment has no indices view");
    for (i = 0; i < 1000; i++)
        v[i] = i * 0.5;
    CHECK(shmpool_data_set_count(s, 500) == 0 && shmpool_data_count(s) == 500, "set_count");
    CHECK(shmpool_data_set_count(s, 1001) == -EINVAL, "count > capacity accepted");
    /* grow keeps the values and the count */
    snprintf(old_name, sizeof old_name, "%s", name);
    err = shmpool_segment_grow(&s, 3000);
    CHECK(err == 0 && shmpool_segment_capacity(s) == 3000, "grow: %s", shmpool_strerror(err));
    CHECK(shm_stat(old_name, &st) != 0, "grow left the old segment");
    v = shmpool_data_values(s);
    CHECK(v[999] == 999 * 0.5 && shmpool_data_count(s) == 500, "grow kept values/count");
    snprintf(old_name, sizeof old_name, "%s", shmpool_segment_name(s));
    CHECK(shmpool_segment_unlink(s) == 0 && shm_stat(old_name, &st) != 0, "unlink");
    CHECK(shmpool_segment_unlink(s) == 0, "unlink twice");
    v[0] = 1.0; /* mapping still usable after unlink */
    shmpool_segment_close(s);

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
    end("segment creation per LAYOUT.md 1.4 (name, 0600, fallocate, header, grow, unlink)");
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
    before = count_own_segments(NULL, 0);
    /* One GiB more than the whole file system: tmpfs refuses up front. */
    err = shmpool_data_create(((uint64_t)vfs.f_blocks * vfs.f_frsize + (1ull << 30)) / 8, &s);
    CHECK(err == -ENOSPC || err == -EFBIG, "got %d (%s), want -ENOSPC", err,
          shmpool_strerror(err));
    CHECK(s == NULL, "segment returned");
    after = count_own_segments(NULL, 0);
    CHECK(after == before, "failed creation left a file behind");
    end("segment bigger than /dev/shm -> %s (no SIGBUS later)", shmpool_strerror(err));
}

/* ---- (c) fake server ---------------------------------------------------- */

enum { FAKE_EOF, FAKE_SILENT, FAKE_GARBAGE, FAKE_WRONG_ID, FAKE_HUGE, FAKE_ECHO };

typedef struct {
    int lfd, mode;
    char path[108];
} fake_server;

static void fake_wait_eof(int fd)
{
    char b[256];
    while (recv(fd, b, sizeof b, 0) > 0)
        ;
}

static void *fake_main(void *arg)
{
    fake_server *f = (fake_server *)arg;
    static unsigned char big[70000];
    unsigned char buf[SHMPOOL_MAX_REPLY];
    int fd = accept(f->lfd, NULL, NULL);
    ssize_t n;
    if (fd < 0)
        return NULL;
    for (;;) {
        shmpool_request req;
        shmpool_reply rep;
        long m;
        int st;
        n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            break;
        st = shmpool_request_decode(buf, (size_t)n, &req, NULL, 0);
        memset(&rep, 0, sizeof rep);
        rep.magic = SHMPOOL_REPLY_MAGIC;
        rep.version = SHMPOOL_VERSION;
        rep.status = (uint16_t)st;
        rep.request_id = req.request_id;
        if (f->mode == FAKE_EOF)
            break;
        if (f->mode == FAKE_SILENT) {
            fake_wait_eof(fd);
            break;
        }
        if (f->mode == FAKE_GARBAGE) {
            send(fd, "garbage", 7, MSG_NOSIGNAL);
            fake_wait_eof(fd);
            break;
        }
        if (f->mode == FAKE_HUGE) {
            memset(big, 0, sizeof big);
            send(fd, big, sizeof big, MSG_NOSIGNAL);
            fake_wait_eof(fd);
            break;
        }
        if (f->mode == FAKE_WRONG_ID)
            rep.request_id += 1000;
        m = shmpool_reply_encode(&rep, buf, sizeof buf);
        send(fd, buf, (size_t)m, MSG_NOSIGNAL);
        if (f->mode == FAKE_WRONG_ID) {
            fake_wait_eof(fd);
            break;
        }
    }
    close(fd);
    return NULL;
}

static int fake_start(fake_server *f, pthread_t *th, int mode)
{
    struct sockaddr_un addr;
    memset(f, 0, sizeof *f);
    f->mode = mode;
    snprintf(f->path, sizeof f->path, "/tmp/shmpool-ctest-%ld.sock", (long)getpid());
    unlink(f->path);
    f->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (f->lfd < 0)
        return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, f->path);
    if (bind(f->lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(f->lfd, 4) != 0) {
        close(f->lfd);
        return -1;
    }
    if (pthread_create(th, NULL, fake_main, f) != 0) {
        close(f->lfd);
        unlink(f->path);
        return -1;
    }
    return 0;
}

static void fake_stop(fake_server *f, pthread_t th)
{
    pthread_join(th, NULL);
    close(f->lfd);
    unlink(f->path);
}

static double elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void test_fake_servers(void)
{
    static const struct { int mode, want; const char *what; } cases[] = {
        {FAKE_EOF, -ECONNRESET, "server closes after the request (EOF)"},
        {FAKE_SILENT, -ETIMEDOUT, "server never answers (timeout 300 ms)"},
        {FAKE_GARBAGE, -EPROTO, "server answers garbage"},
        {FAKE_WRONG_ID, -EPROTO, "server answers another request_id"},
        {FAKE_HUGE, -EMSGSIZE, "server answers more than MAX_REPLY bytes"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake_server f;
        pthread_t th;
        shmpool_client *c = NULL;
        int err;
        struct timespec t0;
        begin();
        if (fake_start(&f, &th, cases[i].mode) != 0) {
            CHECK(0, "fake server: %s", strerror(errno));
            end("client: %s", cases[i].what);
            continue;
        }
        err = shmpool_dial(f.path, &c);
        CHECK(err == 0, "dial fake: %s", shmpool_strerror(err));
        if (c) {
            shmpool_set_timeout(c, cases[i].mode == FAKE_SILENT ? 300 : 10000);
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (cases[i].mode == FAKE_EOF) { /* through the copying detect */
                double x[4] = {1, 2, 3, 4};
                int64_t *idx = NULL;
                size_t n = 99;
                err = shmpool_detect(c, x, 4, &idx, &n);
                CHECK(idx == NULL && n == 0, "outputs not cleared");
            } else {
                err = shmpool_ping(c);
            }
            CHECK(err == cases[i].want, "got %d (%s), want %d", err, shmpool_strerror(err),
                  cases[i].want);
            CHECK(shmpool_last_status(c) == err, "last_status %d", shmpool_last_status(c));
            CHECK(strlen(shmpool_last_error_message(c)) > 0, "no message");
            if (cases[i].mode == FAKE_SILENT) {
                double ms = elapsed_ms(&t0);
                CHECK(ms >= 250 && ms < 5000, "timeout after %.0f ms", ms);
            }
            CHECK(shmpool_ping(c) == -ENOTCONN, "connection not closed after the error");
            shmpool_close(c); /* lets FAKE_SILENT etc. see EOF */
        }
        fake_stop(&f, th);
        end("client: %s -> %s", cases[i].what, shmpool_strerror(cases[i].want));
    }
    {
        fake_server f;
        pthread_t th;
        shmpool_client *c = NULL;
        int err, k;
        begin();
        if (fake_start(&f, &th, FAKE_ECHO) == 0) {
            err = shmpool_dial(f.path, &c);
            CHECK(err == 0, "dial fake: %s", shmpool_strerror(err));
            for (k = 0; c && k < 3; k++)
                CHECK(shmpool_ping(c) == 0, "ping %d: %s", k, shmpool_last_error_message(c));
            shmpool_close(c);
            fake_stop(&f, th);
        } else {
            CHECK(0, "fake server: %s", strerror(errno));
        }
        end("client: PING round trips against a codec-only fake server");
    }
    {
        shmpool_client *c = (shmpool_client *)&c; /* must be reset to NULL */
        char longpath[200];
        int err;
        begin();
        err = shmpool_dial("/nonexistent-dir/shmpool.sock", &c);
        CHECK(err == -ENOENT && c == NULL, "missing socket: %d", err);
        memset(longpath, 'a', sizeof longpath);
        longpath[0] = '/';
        longpath[sizeof longpath - 1] = '\0';
        CHECK(shmpool_dial(longpath, &c) == -ENAMETOOLONG, "long path");
        shmpool_close(NULL);
        end("dial errors (no server, path too long), close(NULL)");
    }
}

/* ---- (d) integration ---------------------------------------------------- */

static const char *g_socket;

static shmpool_client *dial_or_fail(void)
{
    shmpool_client *c = NULL;
    int err = shmpool_dial(g_socket, &c);
    CHECK(err == 0, "dial %s: %s", g_socket, shmpool_strerror(err));
    if (c)
        shmpool_set_timeout(c, 60000);
    return c;
}

static void show_error(shmpool_client *c)
{
    printf("       -> status %d %s | type '%s' | message '%s'\n", shmpool_last_status(c),
           shmpool_status_name(shmpool_last_status(c)), shmpool_last_error_type(c),
           shmpool_last_error_message(c));
}

static void test_ping(void)
{
    shmpool_client *c;
    shmpool_request req = shmpool_request_make(SHMPOOL_OP_PING);
    shmpool_reply rep;
    struct stat sst;
    int st;
    begin();
    CHECK(stat(g_socket, &sst) == 0 && S_ISSOCK(sst.st_mode) && (sst.st_mode & 0777) == 0600 &&
          sst.st_uid == getuid(), "socket %s is not a 0600 socket of ours", g_socket);
    c = dial_or_fail();
    if (c) {
        st = shmpool_ping(c);
        CHECK(st == 0, "ping: %d %s", st, shmpool_last_error_message(c));
        req.threshold = 0;
        st = shmpool_roundtrip(c, &req, &rep);
        CHECK(st == 0 && rep.request_id == req.request_id && rep.type_len == 0 &&
              rep.message_len == 0 && rep.traceback_len == 0,
              "ping reply: st %d id %llu/%llu", st, (unsigned long long)rep.request_id,
              (unsigned long long)req.request_id);
        shmpool_close(c);
    }
    end("server: socket mode 0600; PING -> OK, request_id echoed");
}

static void test_seed(void)
{
    static double x[1000];
    static const int64_t want[] = {7, 113, 835};
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
        CHECK_INDICES(idx, n, want, 3, "seed data");
        shmpool_free(idx);
        /* the same client again (segments reused) */
        x[500] += 97;
        err = shmpool_detect(c, x, 1000, &idx, &n);
        {
            static const int64_t want2[] = {7, 113, 500, 835};
            CHECK(err == 0, "detect 2: %s", shmpool_strerror(err));
            CHECK_INDICES(idx, n, want2, 4, "seed data + 500");
        }
        shmpool_free(idx);
        shmpool_close(c);
    }
    end("server: seed data -> [7 113 835] (default threshold and policy)");
}

/* Reference detector: indices with |x - mean| > k * std (population). */
static size_t reference(const double *x, size_t n, double k, int64_t *out, double *kstd,
                        double *mean_out)
{
    long double s = 0, ss = 0, mean, sd;
    size_t i, m = 0;
    for (i = 0; i < n; i++)
        s += x[i];
    mean = s / (long double)n;
    for (i = 0; i < n; i++)
        ss += ((long double)x[i] - mean) * ((long double)x[i] - mean);
    sd = sqrtl(ss / (long double)n);
    *kstd = (double)((long double)k * sd);
    *mean_out = (double)mean;
    for (i = 0; i < n; i++)
        if (fabs(x[i] - (double)mean) > *kstd)
            out[m++] = (int64_t)i;
    return m;
}

static void test_parity(void)
{
    static const size_t sizes[] = {1, 2, 3, 10, 1000, 4097, 100000, 1000000};
    static const double ks[] = {1.0, 2.0, 3.0};
    shmpool_client *c = dial_or_fail();
    size_t si;
    if (c == NULL) {
        end("server: parity (no connection)");
        return;
    }
    for (si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si], ki;
        double *x = (double *)malloc(n * sizeof *x);
        int64_t *ref = (int64_t *)malloc(n * sizeof *ref);
        size_t i;
        for (i = 0; i < n; i++) {
            double v = rng_normal() * 3.0 + 10.0;
            if (rng_uniform() < 0.01)
                v += rng_normal() * 40.0; /* heavy tail */
            x[i] = v;
        }
        for (ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            double k = ks[ki], kstd, mean;
            size_t m = reference(x, n, k, ref, &kstd, &mean), got_n = 0, a = 0, b = 0, diffs = 0;
            int64_t *got = NULL;
            int err;
            begin();
            shmpool_set_threshold(c, k);
            err = shmpool_detect(c, x, n, &got, &got_n);
            CHECK(err == 0, "detect: %s", shmpool_strerror(err));
            if (err)
                show_error(c);
            /* merge the two sorted lists; every difference must be a tie */
            while (err == 0 && (a < got_n || b < m)) {
                int64_t i2;
                if (a < got_n && b < m && got[a] == ref[b]) {
                    a++;
                    b++;
                    continue;
                }
                if (a < got_n && (b >= m || got[a] < ref[b]))
                    i2 = got[a++];
                else
                    i2 = ref[b++];
                diffs++;
                CHECK(i2 >= 0 && (size_t)i2 < n, "index %lld out of range", (long long)i2);
                if (i2 >= 0 && (size_t)i2 < n) {
                    double dist = fabs(x[i2] - mean);
                    CHECK(fabs(dist - kstd) <= 1e-9 * fabs(kstd),
                          "index %lld differs and is no tie: |x-mean| %.17g vs k*std %.17g",
                          (long long)i2, dist, kstd);
                }
            }
            CHECK(err != 0 || (got_n == 0 || got[0] >= 0), "ascending");
            for (i = 1; err == 0 && i < got_n; i++)
                CHECK(got[i] > got[i - 1], "not ascending at %zu", i);
            shmpool_free(got);
            end("server: parity n=%zu k=%g (%zu outliers, %zu tie differences)", n, k, m,
                diffs);
        }
        free(x);
        free(ref);
    }
    shmpool_close(c);
}

static void test_zero_copy(void)
{
    static const int64_t full[] = {7, 113, 835}, sub[] = {13, 735};
    shmpool_client *c;
    shmpool_segment *data = NULL, *res = NULL;
    int64_t *idx = NULL;
    size_t n = 0;
    uint64_t cnt = 0, needed = 0;
    const int64_t *view;
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
        shmpool_data_set_count(data, 1000);
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

        /* caller-managed result: TOO_SMALL -> grow -> OK */
        err = shmpool_detect_into(c, data, 100, 800, res, &cnt, &needed);
        CHECK(err == SHMPOOL_STATUS_TOO_SMALL, "capacity 1: got %d (%s)", err,
              shmpool_strerror(err));
        CHECK(needed == 2 && cnt == 0, "needed %llu count %llu", (unsigned long long)needed,
              (unsigned long long)cnt);
        CHECK(shmpool_result_status(res) == SHMPOOL_STATUS_TOO_SMALL &&
              shmpool_result_needed(res) == 2 && shmpool_result_count(res) == 0,
              "result header after TOO_SMALL: status %u needed %llu count %llu",
              shmpool_result_status(res), (unsigned long long)shmpool_result_needed(res),
              (unsigned long long)shmpool_result_count(res));
        /* LAYOUT.md 2.1: after TOO_SMALL the region's bytes are unspecified
         * (count = 0 says no index is valid); nothing beyond capacity is touched. */
        CHECK(shmpool_last_status(c) == SHMPOOL_STATUS_TOO_SMALL, "last status");
        printf("       TOO_SMALL reply: type '%s' message '%s'\n", shmpool_last_error_type(c),
               shmpool_last_error_message(c));
        err = shmpool_segment_grow(&res, needed);
        CHECK(err == 0, "grow: %s", shmpool_strerror(err));
        err = shmpool_detect_into(c, data, 100, 800, res, &cnt, &needed);
        CHECK(err == 0, "after grow: %d (%s)", err, shmpool_strerror(err));
        view = shmpool_result_indices(res);
        CHECK_INDICES(view, (size_t)cnt, sub, 2, "detect_into after grow");
        CHECK(shmpool_result_status(res) == 0 && shmpool_result_needed(res) == 2 &&
              shmpool_result_count(res) == 2, "result header after OK");
        /* full range no longer fits a capacity-2 segment */
        err = shmpool_detect_into(c, data, 0, 1000, res, &cnt, &needed);
        CHECK(err == SHMPOOL_STATUS_TOO_SMALL && needed == 3, "full range: %d needed %llu",
              err, (unsigned long long)needed);
        err = shmpool_segment_grow(&res, 64);
        CHECK(err == 0, "grow 64");
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
    shmpool_segment_destroy(data);
    shmpool_segment_destroy(res);
    shmpool_close(c);
    end("server: zero-copy data, sub-range, result TOO_SMALL -> grow -> OK, reuse");
}

static void test_nan(void)
{
    static double x[1000];
    static const int64_t want[] = {7, 113, 835};
    shmpool_client *c;
    int64_t *idx = NULL;
    size_t n = 0;
    int err;

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
    CHECK(shmpool_last_status(c) == SHMPOOL_STATUS_NON_FINITE, "last status");
    CHECK(strlen(shmpool_last_error_type(c)) > 0, "no error type");
    CHECK(strlen(shmpool_last_error_message(c)) > 0, "no error message");
    printf("       NON_FINITE: type '%s' message '%s'%s\n", shmpool_last_error_type(c),
           shmpool_last_error_message(c),
           shmpool_last_error_traceback(c)[0] ? " (+ traceback)" : "");
    CHECK(strstr(shmpool_last_error_message(c), "5") != NULL,
          "message does not name the first index (5)");
    end("server: NaN/inf with nan_policy raise -> NON_FINITE with type and message");

    begin();
    shmpool_set_nan_policy(c, SHMPOOL_POLICY_OMIT);
    err = shmpool_detect(c, x, 1000, &idx, &n);
    CHECK(err == 0, "omit: %d (%s)", err, shmpool_strerror(err));
    if (err)
        show_error(c);
    CHECK_INDICES(idx, n, want, 3, "omit");
    CHECK(shmpool_last_error_message(c)[0] == '\0', "error text left from the previous call");
    shmpool_free(idx);
    idx = NULL;
    end("server: nan_policy omit -> [7 113 835] (non-finite never reported)");

    begin();
    shmpool_set_nan_policy(c, SHMPOOL_POLICY_PROPAGATE);
    err = shmpool_detect(c, x, 1000, &idx, &n);
    CHECK(err == 0, "propagate: %d (%s)", err, shmpool_strerror(err));
    if (err)
        show_error(c);
    CHECK(n == 0, "propagate reported %zu indices", n);
    shmpool_free(idx);
    idx = NULL;
    end("server: nan_policy propagate -> []");

    begin();
    shmpool_set_nan_policy(c, SHMPOOL_POLICY_DEFAULT);
    err = shmpool_detect(c, x, 1000, &idx, &n);
    CHECK(err == SHMPOOL_STATUS_NON_FINITE, "default policy: got %d (%s)", err,
          shmpool_strerror(err));
    shmpool_free(idx);
    idx = NULL;
    CHECK(shmpool_set_nan_policy(c, 4) == -EINVAL, "policy 4 accepted locally");
    CHECK(shmpool_set_threshold(c, -1) == -EINVAL && shmpool_set_threshold(c, INFINITY) == -EINVAL,
          "bad threshold accepted locally");
    CHECK(shmpool_set_threshold(c, NAN) == 0 && shmpool_set_threshold(c, 0) == 0,
          "NaN/0 threshold refused");
    end("server: default nan_policy is raise (LAYOUT.md 4); local option checks");
    shmpool_close(c);
}

/* A DETECT through roundtrip with explicit fields; returns the status. */
static int raw_detect(shmpool_client *c, const char *data, const char *out, uint64_t start,
                      uint64_t count, double k, uint32_t policy)
{
    shmpool_request req = shmpool_request_make(SHMPOOL_OP_DETECT);
    shmpool_reply rep;
    req.start = start;
    req.count = count;
    req.threshold = k;
    req.nan_policy = policy;
    snprintf(req.data_name, sizeof req.data_name, "%s", data);
    snprintf(req.out_name, sizeof req.out_name, "%s", out);
    return shmpool_roundtrip(c, &req, &rep);
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
    char path[160], lnk[160], ghost[128];
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
    for (st = 0; st < 100; st++)
        shmpool_data_values(d)[st] = st % 7;
    snprintf(ghost, sizeof ghost, "%s0-ffffffffffffffff", g_prefix);

    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 0, 100, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OK, "sound DETECT via roundtrip");
    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 50, 51, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OUT_OF_RANGE, "start + count > data count");
    shmpool_data_set_count(d, 40);
    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 0, 41, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OUT_OF_RANGE, "count beyond a lowered header count");
    shmpool_data_set_count(d, 100);
    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), UINT64_MAX, 2, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_OUT_OF_RANGE, "start + count overflowing u64");
    st = raw_detect(c, ghost, shmpool_segment_name(r), 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_NO_SEGMENT, "data segment never created");
    st = raw_detect(c, shmpool_segment_name(d), ghost, 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_NO_SEGMENT, "result segment never created");
    st = raw_detect(c, "shmpool-../etc", shmpool_segment_name(r), 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_NAME, "name with ../");
    st = raw_detect(c, shmpool_segment_name(d), "", 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_NAME, "empty out_name");
    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 0, 100, -1.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "negative threshold");
    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 0, 100, INFINITY, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "infinite threshold");
    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 0, 100, 2.0, 4);
    expect_status(c, st, SHMPOOL_STATUS_BAD_VALUE, "nan_policy 4");
    st = raw_detect(c, shmpool_segment_name(r), shmpool_segment_name(r), 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "result segment named as data");
    st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(d), 0, 1, 2.0, 0);
    expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "data segment named as result");

    /* Fresh segments the server has never seen, each broken one way. */
    s = fresh_data();
    if (s) {
        ((unsigned char *)shmpool_segment_base(s))[0] ^= 0xFF;
        st = raw_detect(c, shmpool_segment_name(s), shmpool_segment_name(r), 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "data header with a bad magic");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) {
        ((unsigned char *)shmpool_segment_base(s))[SHMPOOL_OFF_VERSION] = 2;
        st = raw_detect(c, shmpool_segment_name(s), shmpool_segment_name(r), 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "data header version 2");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) { /* capacity beyond the file (header claims 1e6 elements) */
        shmpool_header h;
        shmpool_header_decode((unsigned char *)shmpool_segment_base(s), &h);
        h.capacity = 1000000;
        h.count = 1000000;
        shmpool_header_encode(&h, (unsigned char *)shmpool_segment_base(s));
        st = raw_detect(c, shmpool_segment_name(s), shmpool_segment_name(r), 0, 1000000, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "capacity larger than the file");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) { /* count > capacity */
        unsigned char *b = (unsigned char *)shmpool_segment_base(s);
        b[SHMPOOL_OFF_COUNT] = 101;
        st = raw_detect(c, shmpool_segment_name(s), shmpool_segment_name(r), 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "data count > capacity");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) { /* mode wider than 0600 */
        snprintf(path, sizeof path, "/dev/shm/%s", shmpool_segment_name(s));
        chmod(path, 0640);
        st = raw_detect(c, shmpool_segment_name(s), shmpool_segment_name(r), 0, 1, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_NOT_PERMITTED, "data segment mode 0640");
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) { /* a symlink in /dev/shm (opened with O_NOFOLLOW) */
        snprintf(path, sizeof path, "/dev/shm/%s", shmpool_segment_name(s));
        snprintf(lnk, sizeof lnk, "/dev/shm/%s0-1111111111111111", g_prefix);
        if (symlink(path, lnk) == 0) {
            st = raw_detect(c, lnk + 9, shmpool_segment_name(r), 0, 1, 2.0, 0);
            expect_status(c, st, SHMPOOL_STATUS_NOT_PERMITTED, "data name is a symlink");
            unlink(lnk);
        }
        shmpool_segment_destroy(s);
    }
    s = fresh_data();
    if (s) { /* unlinked after use: the next request names a missing segment */
        st = raw_detect(c, shmpool_segment_name(s), shmpool_segment_name(r), 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_OK, "fresh segment");
        shmpool_segment_unlink(s);
        st = raw_detect(c, shmpool_segment_name(s), shmpool_segment_name(r), 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_NO_SEGMENT, "segment unlinked after use");
        shmpool_segment_close(s);
    }
    /* The same segment the server has mapped already, corrupted afterwards:
     * LAYOUT.md 1.2 says every request's segments are checked. */
    {
        unsigned char *b = (unsigned char *)shmpool_segment_base(d);
        b[0] ^= 0xFF;
        st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER, "known data segment, magic broken later");
        b[0] ^= 0xFF;
        st = raw_detect(c, shmpool_segment_name(d), shmpool_segment_name(r), 0, 100, 2.0, 0);
        expect_status(c, st, SHMPOOL_STATUS_OK, "known data segment repaired");
    }
    /* Known segments whose file shrinks later: the header's capacity no
     * longer fits the file (LAYOUT.md 1.2 check 5: "so no read or write
     * leaves the mapping").  We touch only the header page afterwards. */
    s = fresh_data();
    if (s) {
        shmpool_segment *big = NULL;
        shmpool_data_create(100000, &big);
        if (big) {
            st = raw_detect(c, shmpool_segment_name(big), shmpool_segment_name(r), 0, 100000,
                            1e9, 0);
            expect_status(c, st, SHMPOOL_STATUS_OK, "large data segment, first use");
            snprintf(path, sizeof path, "/dev/shm/%s", shmpool_segment_name(big));
            if (truncate(path, 64) == 0) {
                st = raw_detect(c, shmpool_segment_name(big), shmpool_segment_name(r), 5000,
                                1000, 1e9, 0);
                expect_status(c, st, SHMPOOL_STATUS_BAD_HEADER,
                              "known data segment, file shrunk to 64 bytes later");
            }
            shmpool_segment_destroy(big);
        }
        shmpool_segment_destroy(s);
    }
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
                /* k = 0: ~8,600 indices, written far past the shrunk file */
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

/* Bad packets over a raw socket: BAD_MESSAGE, and the connection stays open. */
static void test_bad_packets(void)
{
    struct sockaddr_un addr;
    unsigned char pkt[SHMPOOL_REQUEST_SIZE + 8], buf[SHMPOOL_MAX_REPLY];
    shmpool_request req = shmpool_request_make(SHMPOOL_OP_PING);
    shmpool_reply rep;
    struct timeval tv = {30, 0};
    int fd, i;
    static const struct { const char *what; int len, off, byte; uint64_t want_id; } cases[] = {
        {"short packet (100 bytes)", 100, -1, 0, 0},
        {"long packet (177 bytes)", 177, -1, 0, 77},
        {"wrong magic", 176, 0, 'X', 0},
        {"version 2", 176, 4, 2, 77},
        {"op 9", 176, 6, 9, 77},
        {"flags 1", 176, 44, 1, 77},
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
    req.threshold = 0;
    req.request_id = 77;
    for (i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        ssize_t n;
        int err;
        begin();
        memset(pkt, 0, sizeof pkt);
        shmpool_request_encode(&req, pkt);
        if (cases[i].off >= 0)
            pkt[cases[i].off] = (unsigned char)cases[i].byte;
        n = send(fd, pkt, (size_t)cases[i].len, MSG_NOSIGNAL);
        CHECK(n == cases[i].len, "send: %s", strerror(errno));
        n = recv(fd, buf, sizeof buf, 0);
        CHECK(n >= SHMPOOL_REPLY_HEAD_SIZE, "no reply (%zd, %s)", n, strerror(errno));
        if (n >= SHMPOOL_REPLY_HEAD_SIZE) {
            err = shmpool_reply_decode(buf, (size_t)n, &rep);
            CHECK(err == 0, "malformed reply");
            CHECK(rep.status == SHMPOOL_STATUS_BAD_MESSAGE, "status %u %s", rep.status,
                  shmpool_status_name(rep.status));
            /* request_id: 0 when unreadable; the Python reference echoes it
             * once magic is right.  Report, accept either for long/short. */
            CHECK(rep.request_id == cases[i].want_id || rep.request_id == 0,
                  "request_id %llu", (unsigned long long)rep.request_id);
            if (rep.message_len)
                printf("       %.*s\n", (int)rep.message_len, rep.message);
        }
        end("server: %s -> BAD_MESSAGE", cases[i].what);
    }
    begin();
    shmpool_request_encode(&req, pkt);
    CHECK(send(fd, pkt, SHMPOOL_REQUEST_SIZE, MSG_NOSIGNAL) == SHMPOOL_REQUEST_SIZE, "send");
    {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        CHECK(n >= SHMPOOL_REPLY_HEAD_SIZE && shmpool_reply_decode(buf, (size_t)n, &rep) == 0 &&
              rep.status == 0 && rep.request_id == 77, "ping after bad packets");
    }
    end("server: connection stays open after bad packets");
    close(fd);

    /* A zero-length packet is "not exactly 176 bytes" too (LAYOUT.md 2.3):
     * BAD_MESSAGE, connection open.  On its own connection. */
    begin();
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        ssize_t n;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        CHECK(send(fd, pkt, 0, MSG_NOSIGNAL) == 0, "send empty: %s", strerror(errno));
        n = recv(fd, buf, sizeof buf, 0);
        CHECK(n >= SHMPOOL_REPLY_HEAD_SIZE && shmpool_reply_decode(buf, (size_t)n, &rep) == 0 &&
              rep.status == SHMPOOL_STATUS_BAD_MESSAGE,
              "no BAD_MESSAGE reply (recv %zd%s)", n, n == 0 ? ": the server closed the connection" : "");
        shmpool_request_encode(&req, pkt);
        send(fd, pkt, SHMPOOL_REQUEST_SIZE, MSG_NOSIGNAL);
        n = recv(fd, buf, sizeof buf, 0);
        CHECK(n >= SHMPOOL_REPLY_HEAD_SIZE, "connection closed after an empty packet");
    } else {
        CHECK(0, "connect: %s", strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    end("server: empty packet (0 bytes) -> BAD_MESSAGE, connection stays open");
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
    int call, i, err;

    err = shmpool_dial(g_socket, &c);
    if (err == 0)
        err = shmpool_data_create(1000, &data);
    if (err == 0)
        err = shmpool_result_create(8, &res);
    if (err != 0) {
        job->failures++;
        snprintf(job->first_error, sizeof job->first_error, "setup: %s", shmpool_strerror(err));
        goto out;
    }
    shmpool_set_timeout(c, 60000);
    for (call = 0; call < 200; call++) {
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
        CHECK(jobs[i].failures == 0 && jobs[i].calls == 200,
              "thread %d: %d failures in %d calls; first: %s", i, jobs[i].failures,
              jobs[i].calls, jobs[i].first_error);
    }
    end("server: 4 threads x 200 calls, one client each (%.0f ms)", elapsed_ms(&t0));
}

/* Last: stop the server (SIGTERM to $SHMPOOL_TEST_SERVER_PID, set by the
 * Makefile for the server it started) under a connected client.  Calls must
 * fail promptly (EOF -> -ECONNRESET, or SHUTTING_DOWN), never hang. */
static void test_server_shutdown(const char *pid_text)
{
    shmpool_client *c = dial_or_fail(), *c2 = NULL;
    double x[100];
    long pid = strtol(pid_text, NULL, 10);
    struct timespec t0;
    int st = 0, k, err;
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
        CHECK(st == 0 || st == SHMPOOL_STATUS_SHUTTING_DOWN, "status %d while stopping", st);
        usleep(20000);
    }
    printf("       after SIGTERM: %d (%s) after %.0f ms: %s\n", st, shmpool_strerror(st),
           elapsed_ms(&t0), shmpool_last_error_message(c));
    CHECK(st == -ECONNRESET || st == -ENOTCONN, "got %d (%s), want the connection closed", st,
          shmpool_strerror(st));
    CHECK(elapsed_ms(&t0) < 9000, "took %.0f ms", elapsed_ms(&t0));
    CHECK(shmpool_ping(c) == -ENOTCONN, "client not closed");
    shmpool_close(c);
    for (k = 0; k < 100; k++) { /* until the server has gone */
        err = shmpool_dial(g_socket, &c2);
        shmpool_close(c2);
        if (err != 0)
            break;
        usleep(50000);
    }
    CHECK(err == -ENOENT || err == -ECONNREFUSED, "dial after stop: %d (%s)", err,
          shmpool_strerror(err));
    end("server: stopped under a connected client -> prompt error, no hang");
}

static void test_leftovers(void)
{
    char first[256] = "";
    int n;
    begin();
    n = count_own_segments(first, sizeof first);
    CHECK(n == 0, "%d entries left in /dev/shm, e.g. %s", n, first);
    end("no /dev/shm entries with prefix %s left", g_prefix);
}

int main(int argc, char **argv)
{
    const char *vectors = NULL;
    int integration = 1, i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--vectors") == 0 && i + 1 < argc)
            vectors = argv[++i];
        else if (strcmp(argv[i], "--no-integration") == 0)
            integration = 0;
        else if (argv[i][0] != '-')
            vectors = argv[i];
        else {
            fprintf(stderr, "usage: %s [--vectors PATH] [--no-integration]\n",
                    argv[0]);
            return 2;
        }
    }
    if (vectors == NULL)
        vectors = access("../../tests/vectors/v1.txt", R_OK) == 0
                      ? "../../tests/vectors/v1.txt"
                      : "../../../tests/vectors/v1.txt";
    snprintf(g_prefix, sizeof g_prefix, "shmpool-%ld-", (long)getpid());

    printf("== layout vectors\n");
    run_vectors(vectors);
    printf("== codec edge cases\n");
    test_header_checks();
    test_names();
    test_request_edges();
    test_reply_edges();
    printf("== segments\n");
    test_segment_create();
    test_segment_enospc();
    printf("== client failure handling (fake servers)\n");
    test_fake_servers();
    if (integration) {
        printf("== integration\n");
        g_socket = getenv("SHMPOOL_SOCKET");
        begin();
        CHECK(g_socket != NULL && g_socket[0] != '\0',
              "SHMPOOL_SOCKET is not set (use --no-integration to skip on purpose)");
        end("integration: $SHMPOOL_SOCKET = %s", g_socket ? g_socket : "(unset)");
        if (g_socket != NULL && g_socket[0] != '\0') {
            test_ping();
            test_seed();
            test_parity();
            test_zero_copy();
            test_nan();
            test_server_checks();
            test_bad_packets();
            test_threads();
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
