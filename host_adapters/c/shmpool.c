/*
 * shmpool.c - C host adapter for shmpool, layout and protocol version 1.
 * See shmpool.h for the API and docs/LAYOUT.md for the contract.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* SO_PEERCRED / struct ucred, getrandom, MSG_NOSIGNAL */
#endif

#include "shmpool.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- compile-time checks ------------------------------------------------ */

#define SHMPOOL_STATIC_ASSERT(cond, tag) \
    typedef char shmpool_static_assert_##tag[(cond) ? 1 : -1]

SHMPOOL_STATIC_ASSERT(CHAR_BIT == 8, char_bit);
SHMPOOL_STATIC_ASSERT(sizeof(double) == 8, double_is_binary64);
SHMPOOL_STATIC_ASSERT(sizeof(int64_t) == SHMPOOL_ITEM_SIZE, item_size);
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
SHMPOOL_STATIC_ASSERT(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, little_endian_host);
#endif
/* Segment header: fields back to back, 64 bytes. */
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_VERSION == SHMPOOL_OFF_MAGIC + 4, hdr_version);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_KIND == SHMPOOL_OFF_VERSION + 2, hdr_kind);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_HEADER_SIZE == SHMPOOL_OFF_KIND + 2, hdr_hsize);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_FLAGS == SHMPOOL_OFF_HEADER_SIZE + 4, hdr_flags);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_CAPACITY == SHMPOOL_OFF_FLAGS + 4, hdr_capacity);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_COUNT == SHMPOOL_OFF_CAPACITY + 8, hdr_count);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_STATUS == SHMPOOL_OFF_COUNT + 8, hdr_status);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_RESERVED1 == SHMPOOL_OFF_STATUS + 4, hdr_res1);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_NEEDED == SHMPOOL_OFF_RESERVED1 + 4, hdr_needed);
SHMPOOL_STATIC_ASSERT(SHMPOOL_OFF_RESERVED2 == SHMPOOL_OFF_NEEDED + 8, hdr_res2);
SHMPOOL_STATIC_ASSERT(SHMPOOL_HEADER_SIZE == SHMPOOL_OFF_RESERVED2 + 16, hdr_size);
SHMPOOL_STATIC_ASSERT(SHMPOOL_HEADER_SIZE % 64 == 0, region_aligned);
/* Request: 176 bytes. */
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_VERSION == SHMPOOL_REQ_OFF_MAGIC + 4, req_version);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_OP == SHMPOOL_REQ_OFF_VERSION + 2, req_op);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_REQUEST_ID == SHMPOOL_REQ_OFF_OP + 2, req_id);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_START == SHMPOOL_REQ_OFF_REQUEST_ID + 8, req_start);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_COUNT == SHMPOOL_REQ_OFF_START + 8, req_count);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_THRESHOLD == SHMPOOL_REQ_OFF_COUNT + 8, req_threshold);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_NAN_POLICY == SHMPOOL_REQ_OFF_THRESHOLD + 8, req_policy);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_FLAGS == SHMPOOL_REQ_OFF_NAN_POLICY + 4, req_flags);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_DATA_NAME == SHMPOOL_REQ_OFF_FLAGS + 4, req_data);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_OUT_NAME == SHMPOOL_REQ_OFF_DATA_NAME + SHMPOOL_NAME_SIZE, req_out);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQUEST_SIZE == SHMPOOL_REQ_OFF_OUT_NAME + SHMPOOL_NAME_SIZE, req_size);
/* Reply: 48-byte head; the largest reply fits MAX_REPLY. */
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_VERSION == SHMPOOL_REP_OFF_MAGIC + 4, rep_version);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_STATUS == SHMPOOL_REP_OFF_VERSION + 2, rep_status);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_REQUEST_ID == SHMPOOL_REP_OFF_STATUS + 2, rep_id);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_COUNT == SHMPOOL_REP_OFF_REQUEST_ID + 8, rep_count);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_NEEDED == SHMPOOL_REP_OFF_COUNT + 8, rep_needed);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_TYPE_LEN == SHMPOOL_REP_OFF_NEEDED + 8, rep_tlen);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_MESSAGE_LEN == SHMPOOL_REP_OFF_TYPE_LEN + 4, rep_mlen);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_TRACEBACK_LEN == SHMPOOL_REP_OFF_MESSAGE_LEN + 4, rep_tblen);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_RESERVED == SHMPOOL_REP_OFF_TRACEBACK_LEN + 4, rep_res);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REPLY_HEAD_SIZE == SHMPOOL_REP_OFF_RESERVED + 4, rep_size);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REPLY_HEAD_SIZE + SHMPOOL_MAX_TYPE + SHMPOOL_MAX_MESSAGE +
                      SHMPOOL_MAX_TRACEBACK <= SHMPOOL_MAX_REPLY, reply_fits);
/* Longest name we create: shmpool-<pid>-<start>-<16 hex> fits a name field. */
SHMPOOL_STATIC_ASSERT(8 + 10 + 1 + 20 + 1 + 16 <= SHMPOOL_NAME_SIZE - 1, name_fits);

/* ---- little-endian byte access ------------------------------------------ */

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    int i;
    for (i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    int i;
    for (i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void putf64(unsigned char *p, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    put64(p, bits);
}

static double getf64(const unsigned char *p)
{
    uint64_t bits = get64(p);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* ---- segment header ----------------------------------------------------- */

shmpool_header shmpool_header_make(uint16_t kind, uint64_t capacity, uint64_t count)
{
    shmpool_header h;
    memset(&h, 0, sizeof h);
    h.magic = SHMPOOL_SEGMENT_MAGIC;
    h.version = SHMPOOL_VERSION;
    h.kind = kind;
    h.header_size = SHMPOOL_HEADER_SIZE;
    h.capacity = capacity;
    h.count = count;
    return h;
}

void shmpool_header_encode(const shmpool_header *h, unsigned char out[SHMPOOL_HEADER_SIZE])
{
    memset(out, 0, SHMPOOL_HEADER_SIZE);
    put32(out + SHMPOOL_OFF_MAGIC, h->magic);
    put16(out + SHMPOOL_OFF_VERSION, h->version);
    put16(out + SHMPOOL_OFF_KIND, h->kind);
    put32(out + SHMPOOL_OFF_HEADER_SIZE, h->header_size);
    put32(out + SHMPOOL_OFF_FLAGS, h->flags);
    put64(out + SHMPOOL_OFF_CAPACITY, h->capacity);
    put64(out + SHMPOOL_OFF_COUNT, h->count);
    put32(out + SHMPOOL_OFF_STATUS, h->status);
    put64(out + SHMPOOL_OFF_NEEDED, h->needed);
}

void shmpool_header_decode(const unsigned char in[SHMPOOL_HEADER_SIZE], shmpool_header *h)
{
    h->magic = get32(in + SHMPOOL_OFF_MAGIC);
    h->version = get16(in + SHMPOOL_OFF_VERSION);
    h->kind = get16(in + SHMPOOL_OFF_KIND);
    h->header_size = get32(in + SHMPOOL_OFF_HEADER_SIZE);
    h->flags = get32(in + SHMPOOL_OFF_FLAGS);
    h->capacity = get64(in + SHMPOOL_OFF_CAPACITY);
    h->count = get64(in + SHMPOOL_OFF_COUNT);
    h->status = get32(in + SHMPOOL_OFF_STATUS);
    h->needed = get64(in + SHMPOOL_OFF_NEEDED);
}

const char *shmpool_header_check(const shmpool_header *h, unsigned kind, uint64_t file_size)
{
    if (h->magic != SHMPOOL_SEGMENT_MAGIC)
        return "bad magic";
    if (h->version != SHMPOOL_VERSION)
        return "unsupported layout version";
    if (h->kind != kind)
        return "wrong segment kind";
    if (h->header_size != SHMPOOL_HEADER_SIZE || h->flags != 0)
        return "header_size / flags not valid in v1";
    if (file_size < SHMPOOL_HEADER_SIZE ||
        h->capacity > (file_size - SHMPOOL_HEADER_SIZE) / SHMPOOL_ITEM_SIZE)
        return "capacity does not fit in the segment";
    if (kind == SHMPOOL_KIND_DATA && h->count > h->capacity)
        return "count exceeds capacity";
    return NULL;
}

/* ---- names -------------------------------------------------------------- */

int shmpool_valid_name(const char *name)
{
    size_t plen = sizeof SHMPOOL_NAME_PREFIX - 1, len, i;
    if (name == NULL || strncmp(name, SHMPOOL_NAME_PREFIX, plen) != 0)
        return 0;
    len = strlen(name);
    if (len <= plen || len - plen > SHMPOOL_NAME_MAX_TAIL)
        return 0;
    for (i = plen; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* ---- request ------------------------------------------------------------ */

shmpool_request shmpool_request_make(uint16_t op)
{
    shmpool_request r;
    memset(&r, 0, sizeof r);
    r.magic = SHMPOOL_REQUEST_MAGIC;
    r.version = SHMPOOL_VERSION;
    r.op = op;
    r.threshold = NAN;
    return r;
}

static int put_name(unsigned char *field, const char *name)
{
    size_t len = strnlen(name, SHMPOOL_NAME_SIZE + 1);
    if (len >= SHMPOOL_NAME_SIZE)
        return -ENAMETOOLONG;
    memset(field, 0, SHMPOOL_NAME_SIZE);
    memcpy(field, name, len);
    return 0;
}

int shmpool_request_encode(const shmpool_request *r, unsigned char out[SHMPOOL_REQUEST_SIZE])
{
    memset(out, 0, SHMPOOL_REQUEST_SIZE);
    put32(out + SHMPOOL_REQ_OFF_MAGIC, r->magic);
    put16(out + SHMPOOL_REQ_OFF_VERSION, r->version);
    put16(out + SHMPOOL_REQ_OFF_OP, r->op);
    put64(out + SHMPOOL_REQ_OFF_REQUEST_ID, r->request_id);
    put64(out + SHMPOOL_REQ_OFF_START, r->start);
    put64(out + SHMPOOL_REQ_OFF_COUNT, r->count);
    putf64(out + SHMPOOL_REQ_OFF_THRESHOLD, r->threshold);
    put32(out + SHMPOOL_REQ_OFF_NAN_POLICY, r->nan_policy);
    put32(out + SHMPOOL_REQ_OFF_FLAGS, r->flags);
    if (put_name(out + SHMPOOL_REQ_OFF_DATA_NAME, r->data_name) != 0 ||
        put_name(out + SHMPOOL_REQ_OFF_OUT_NAME, r->out_name) != 0)
        return -ENAMETOOLONG;
    return 0;
}

static int reason(char *why, size_t why_size, int status, const char *fmt, ...)
{
    if (why != NULL && why_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_size, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* layout.py _decode_name: text up to the first NUL, only NULs after it, ASCII. */
static int decode_name(const unsigned char *field, char *dst, const char *which,
                       char *why, size_t why_size)
{
    size_t len = 0, i;
    while (len < SHMPOOL_NAME_SIZE && field[len] != 0)
        len++;
    for (i = len; i < SHMPOOL_NAME_SIZE; i++)
        if (field[i] != 0)
            return reason(why, why_size, SHMPOOL_STATUS_BAD_NAME,
                          "%s: bytes after the terminating NUL", which);
    for (i = 0; i < len; i++)
        if (field[i] >= 0x80)
            return reason(why, why_size, SHMPOOL_STATUS_BAD_NAME, "%s: not ASCII", which);
    memcpy(dst, field, len);
    dst[len] = '\0';
    return SHMPOOL_STATUS_OK;
}

int shmpool_request_decode(const void *buf, size_t len, shmpool_request *r,
                           char *why, size_t why_size)
{
    const unsigned char *p = (const unsigned char *)buf;
    int st;

    memset(r, 0, sizeof *r);
    if (why != NULL && why_size > 0)
        why[0] = '\0';
    if (len != SHMPOOL_REQUEST_SIZE)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "request is %zu bytes; v1 requests are %d", len, SHMPOOL_REQUEST_SIZE);
    r->magic = get32(p + SHMPOOL_REQ_OFF_MAGIC);
    if (r->magic != SHMPOOL_REQUEST_MAGIC)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "bad request magic 0x%08x", (unsigned)r->magic);
    r->version = get16(p + SHMPOOL_REQ_OFF_VERSION);
    r->op = get16(p + SHMPOOL_REQ_OFF_OP);
    r->request_id = get64(p + SHMPOOL_REQ_OFF_REQUEST_ID);
    r->start = get64(p + SHMPOOL_REQ_OFF_START);
    r->count = get64(p + SHMPOOL_REQ_OFF_COUNT);
    r->threshold = getf64(p + SHMPOOL_REQ_OFF_THRESHOLD);
    r->nan_policy = get32(p + SHMPOOL_REQ_OFF_NAN_POLICY);
    r->flags = get32(p + SHMPOOL_REQ_OFF_FLAGS);
    if (r->version != SHMPOOL_VERSION)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "unsupported protocol version %u (this side speaks %d)",
                      (unsigned)r->version, SHMPOOL_VERSION);
    if (r->op != SHMPOOL_OP_DETECT && r->op != SHMPOOL_OP_PING)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE, "unknown op %u",
                      (unsigned)r->op);
    if (r->flags != 0)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "flags must be 0 in v1, got %u", (unsigned)r->flags);
    if (r->nan_policy > SHMPOOL_POLICY_RAISE)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_VALUE, "unknown nan_policy %u",
                      (unsigned)r->nan_policy);
    if (!isnan(r->threshold) && !(r->threshold >= 0.0 && r->threshold < INFINITY))
        return reason(why, why_size, SHMPOOL_STATUS_BAD_VALUE,
                      "threshold must be finite and >= 0, got %g", r->threshold);
    st = decode_name(p + SHMPOOL_REQ_OFF_DATA_NAME, r->data_name, "data_name", why, why_size);
    if (st != SHMPOOL_STATUS_OK)
        return st;
    st = decode_name(p + SHMPOOL_REQ_OFF_OUT_NAME, r->out_name, "out_name", why, why_size);
    if (st != SHMPOOL_STATUS_OK)
        return st;
    if (r->op == SHMPOOL_OP_DETECT) {
        if (!shmpool_valid_name(r->data_name))
            return reason(why, why_size, SHMPOOL_STATUS_BAD_NAME,
                          "data_name '%s' breaks the naming rule", r->data_name);
        if (!shmpool_valid_name(r->out_name))
            return reason(why, why_size, SHMPOOL_STATUS_BAD_NAME,
                          "out_name '%s' breaks the naming rule", r->out_name);
    }
    return SHMPOOL_STATUS_OK;
}

/* ---- reply -------------------------------------------------------------- */

long shmpool_reply_encode(const shmpool_reply *r, void *out, size_t out_size)
{
    unsigned char *p = (unsigned char *)out;
    size_t tlen = r->type ? r->type_len : 0;
    size_t mlen = r->message ? r->message_len : 0;
    size_t tblen = r->traceback ? r->traceback_len : 0;
    const char *tb = r->traceback;
    size_t total;

    if (tlen > SHMPOOL_MAX_TYPE)
        tlen = SHMPOOL_MAX_TYPE;
    if (mlen > SHMPOOL_MAX_MESSAGE)
        mlen = SHMPOOL_MAX_MESSAGE;
    if (tblen > SHMPOOL_MAX_TRACEBACK) { /* keep the end, like layout.py */
        tb += tblen - SHMPOOL_MAX_TRACEBACK;
        tblen = SHMPOOL_MAX_TRACEBACK;
    }
    total = SHMPOOL_REPLY_HEAD_SIZE + tlen + mlen + tblen;
    if (out_size < total)
        return -ENOBUFS;
    memset(p, 0, SHMPOOL_REPLY_HEAD_SIZE);
    put32(p + SHMPOOL_REP_OFF_MAGIC, r->magic);
    put16(p + SHMPOOL_REP_OFF_VERSION, r->version);
    put16(p + SHMPOOL_REP_OFF_STATUS, r->status);
    put64(p + SHMPOOL_REP_OFF_REQUEST_ID, r->request_id);
    put64(p + SHMPOOL_REP_OFF_COUNT, r->count);
    put64(p + SHMPOOL_REP_OFF_NEEDED, r->needed);
    put32(p + SHMPOOL_REP_OFF_TYPE_LEN, (uint32_t)tlen);
    put32(p + SHMPOOL_REP_OFF_MESSAGE_LEN, (uint32_t)mlen);
    put32(p + SHMPOOL_REP_OFF_TRACEBACK_LEN, (uint32_t)tblen);
    p += SHMPOOL_REPLY_HEAD_SIZE;
    if (tlen) memcpy(p, r->type, tlen);
    p += tlen;
    if (mlen) memcpy(p, r->message, mlen);
    p += mlen;
    if (tblen) memcpy(p, tb, tblen);
    return (long)total;
}

int shmpool_reply_decode(const void *buf, size_t len, shmpool_reply *r)
{
    const unsigned char *p = (const unsigned char *)buf;
    const char *text;

    memset(r, 0, sizeof *r);
    if (len < SHMPOOL_REPLY_HEAD_SIZE)
        return -EPROTO;
    r->magic = get32(p + SHMPOOL_REP_OFF_MAGIC);
    r->version = get16(p + SHMPOOL_REP_OFF_VERSION);
    r->status = get16(p + SHMPOOL_REP_OFF_STATUS);
    r->request_id = get64(p + SHMPOOL_REP_OFF_REQUEST_ID);
    r->count = get64(p + SHMPOOL_REP_OFF_COUNT);
    r->needed = get64(p + SHMPOOL_REP_OFF_NEEDED);
    r->type_len = get32(p + SHMPOOL_REP_OFF_TYPE_LEN);
    r->message_len = get32(p + SHMPOOL_REP_OFF_MESSAGE_LEN);
    r->traceback_len = get32(p + SHMPOOL_REP_OFF_TRACEBACK_LEN);
    if (r->magic != SHMPOOL_REPLY_MAGIC || r->version != SHMPOOL_VERSION)
        return -EPROTO;
    if ((uint64_t)SHMPOOL_REPLY_HEAD_SIZE + r->type_len + r->message_len + r->traceback_len !=
        (uint64_t)len)
        return -EPROTO;
    text = (const char *)p + SHMPOOL_REPLY_HEAD_SIZE;
    r->type = text;
    r->message = text + r->type_len;
    r->traceback = text + r->type_len + r->message_len;
    return 0;
}

/* ---- status text -------------------------------------------------------- */

static const char *const status_names[] = {
    "OK", "BAD_MESSAGE", "BAD_NAME", "NO_SEGMENT", "NOT_PERMITTED", "BAD_HEADER",
    "OUT_OF_RANGE", "TOO_SMALL", "DETECTOR_ERROR", "WORKER_DIED", "NON_FINITE",
    "BAD_VALUE", "TIMEOUT", "SHUTTING_DOWN", "INTERNAL",
};

static const char *const status_texts[] = {
    "OK: success",
    "BAD_MESSAGE: request of the wrong size, magic, version, op or flags",
    "BAD_NAME: a segment name breaks the naming rule",
    "NO_SEGMENT: no such segment",
    "NOT_PERMITTED: segment not a regular file, owned by another uid, or mode wider than 0600",
    "BAD_HEADER: segment header invalid, or capacity larger than the segment",
    "OUT_OF_RANGE: start + count beyond the data segment's count",
    "TOO_SMALL: result segment capacity smaller than the answer; nothing written",
    "DETECTOR_ERROR: the detector raised",
    "WORKER_DIED: the worker died during the call",
    "NON_FINITE: NaN or inf in the data under nan_policy raise",
    "BAD_VALUE: threshold negative or not finite, or unknown nan_policy",
    "TIMEOUT: the call exceeded the server's time limit",
    "SHUTTING_DOWN: the server is stopping",
    "INTERNAL: a bug in shmpool",
};

SHMPOOL_STATIC_ASSERT(sizeof status_names / sizeof status_names[0] == SHMPOOL_STATUS_MAX + 1,
                      status_names_complete);
SHMPOOL_STATIC_ASSERT(sizeof status_texts / sizeof status_texts[0] == SHMPOOL_STATUS_MAX + 1,
                      status_texts_complete);

const char *shmpool_status_name(int status)
{
    if (status < 0 || status > SHMPOOL_STATUS_MAX)
        return "UNKNOWN";
    return status_names[status];
}

const char *shmpool_strerror(int code)
{
    if (code < 0)
        return strerror(-code);
    if (code > SHMPOOL_STATUS_MAX)
        return "unknown shmpool status";
    return status_texts[code];
}

/* ---- segments ----------------------------------------------------------- */

struct shmpool_segment {
    unsigned char *base;   /* mapping: header then region */
    size_t map_size;
    uint64_t capacity;
    unsigned kind;
    int unlinked;
    char name[SHMPOOL_NAME_SIZE];
};

/* Field 22 of /proc/self/stat (start time in clock ticks since boot). */
static int proc_start_time(unsigned long long *out)
{
    char buf[1024];
    size_t got = 0;
    int fd, field;
    char *p, *end;

    fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (;;) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0 || (got += (size_t)n) == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[got] = '\0';
    p = strrchr(buf, ')'); /* comm may contain spaces and ')' */
    if (p == NULL)
        return -EPROTO;
    p++;
    /* After ") " come fields 3, 4, ...; skip to field 22. */
    for (field = 3; field < 22; field++) {
        while (*p == ' ')
            p++;
        while (*p != ' ' && *p != '\0')
            p++;
        if (*p == '\0')
            return -EPROTO;
    }
    while (*p == ' ')
        p++;
    errno = 0;
    *out = strtoull(p, &end, 10);
    if (end == p || errno != 0)
        return -EPROTO;
    return 0;
}

static int random_bytes(unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        got += (size_t)n;
    }
    if (got < len) { /* no getrandom (ENOSYS): /dev/urandom */
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        while (got < len) {
            ssize_t n = read(fd, buf + got, len - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                int e = n < 0 ? errno : EIO;
                close(fd);
                return -e;
            }
            got += (size_t)n;
        }
        close(fd);
    }
    return 0;
}

static void write_u64_at(shmpool_segment *s, size_t off, uint64_t v)
{
    put64(s->base + off, v);
}

int shmpool_segment_create(unsigned kind, uint64_t capacity, shmpool_segment **out)
{
    shmpool_segment *s;
    unsigned long long start = 0;
    unsigned char rnd[8];
    char path[sizeof "/dev/shm/" + SHMPOOL_NAME_SIZE];
    shmpool_header h;
    uint64_t size;
    int fd = -1, err, tries;
    void *map;

    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (kind != SHMPOOL_KIND_DATA && kind != SHMPOOL_KIND_RESULT)
        return -EINVAL;
    if (capacity > (UINT64_MAX - SHMPOOL_HEADER_SIZE) / SHMPOOL_ITEM_SIZE)
        return -EOVERFLOW;
    size = SHMPOOL_HEADER_SIZE + SHMPOOL_ITEM_SIZE * capacity;
    if (size > (uint64_t)SIZE_MAX || size > (uint64_t)INT64_MAX)
        return -EOVERFLOW;
    err = proc_start_time(&start);
    if (err != 0)
        return err;
    s = (shmpool_segment *)calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;

    for (tries = 0; tries < 16; tries++) {
        int i, n;
        err = random_bytes(rnd, sizeof rnd);
        if (err != 0)
            goto fail;
        n = snprintf(s->name, sizeof s->name, SHMPOOL_NAME_PREFIX "%ld-%llu-",
                     (long)getpid(), start);
        for (i = 0; i < 8; i++)
            n += snprintf(s->name + n, sizeof s->name - (size_t)n, "%02x", rnd[i]);
        snprintf(path, sizeof path, "/dev/shm/%s", s->name);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0)
            break;
        if (errno != EEXIST && errno != EINTR) {
            err = -errno;
            goto fail;
        }
    }
    if (fd < 0) {
        err = -EEXIST;
        goto fail;
    }
    /* A restrictive umask must not leave the server unable to open it. */
    if (fchmod(fd, 0600) != 0) {
        err = -errno;
        goto fail_unlink;
    }
    do
        err = posix_fallocate(fd, 0, (off_t)size);
    while (err == EINTR);
    if (err != 0) {
        err = -err;
        goto fail_unlink;
    }
    map = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        err = -errno;
        goto fail_unlink;
    }
    close(fd);
    s->base = (unsigned char *)map;
    s->map_size = (size_t)size;
    s->capacity = capacity;
    s->kind = kind;
    h = shmpool_header_make((uint16_t)kind, capacity,
                            kind == SHMPOOL_KIND_DATA ? capacity : 0);
    shmpool_header_encode(&h, s->base);
    *out = s;
    return 0;

fail_unlink:
    unlink(path);
    close(fd);
fail:
    free(s);
    return err;
}

int shmpool_data_create(uint64_t capacity, shmpool_segment **out)
{
    return shmpool_segment_create(SHMPOOL_KIND_DATA, capacity, out);
}

int shmpool_result_create(uint64_t capacity, shmpool_segment **out)
{
    return shmpool_segment_create(SHMPOOL_KIND_RESULT, capacity, out);
}

void shmpool_segment_close(shmpool_segment *s)
{
    if (s == NULL)
        return;
    if (s->base != NULL)
        munmap(s->base, s->map_size);
    free(s);
}

int shmpool_segment_unlink(shmpool_segment *s)
{
    char path[sizeof "/dev/shm/" + SHMPOOL_NAME_SIZE];
    if (s == NULL)
        return -EINVAL;
    if (s->unlinked)
        return 0;
    snprintf(path, sizeof path, "/dev/shm/%s", s->name);
    if (unlink(path) != 0 && errno != ENOENT)
        return -errno;
    s->unlinked = 1;
    return 0;
}

void shmpool_segment_destroy(shmpool_segment *s)
{
    if (s == NULL)
        return;
    shmpool_segment_unlink(s);
    shmpool_segment_close(s);
}

int shmpool_segment_grow(shmpool_segment **sp, uint64_t capacity)
{
    shmpool_segment *old, *neu;
    int err;
    if (sp == NULL || *sp == NULL)
        return -EINVAL;
    old = *sp;
    err = shmpool_segment_create(old->kind, capacity, &neu);
    if (err != 0)
        return err;
    if (old->kind == SHMPOOL_KIND_DATA) {
        uint64_t keep = old->capacity < capacity ? old->capacity : capacity;
        uint64_t count = shmpool_data_count(old);
        if (keep)
            memcpy(neu->base + SHMPOOL_HEADER_SIZE, old->base + SHMPOOL_HEADER_SIZE,
                   (size_t)keep * SHMPOOL_ITEM_SIZE);
        write_u64_at(neu, SHMPOOL_OFF_COUNT, count < capacity ? count : capacity);
    }
    shmpool_segment_destroy(old);
    *sp = neu;
    return 0;
}

const char *shmpool_segment_name(const shmpool_segment *s) { return s ? s->name : NULL; }
unsigned shmpool_segment_kind(const shmpool_segment *s) { return s ? s->kind : 0; }
uint64_t shmpool_segment_capacity(const shmpool_segment *s) { return s ? s->capacity : 0; }
void *shmpool_segment_base(shmpool_segment *s) { return s ? s->base : NULL; }

double *shmpool_data_values(shmpool_segment *s)
{
    if (s == NULL || s->kind != SHMPOOL_KIND_DATA)
        return NULL;
    return (double *)(void *)(s->base + SHMPOOL_HEADER_SIZE);
}

int shmpool_data_set_count(shmpool_segment *s, uint64_t count)
{
    if (s == NULL || s->kind != SHMPOOL_KIND_DATA || count > s->capacity)
        return -EINVAL;
    write_u64_at(s, SHMPOOL_OFF_COUNT, count);
    return 0;
}

uint64_t shmpool_data_count(const shmpool_segment *s)
{
    return s ? get64(s->base + SHMPOOL_OFF_COUNT) : 0;
}

const int64_t *shmpool_result_indices(const shmpool_segment *s)
{
    if (s == NULL || s->kind != SHMPOOL_KIND_RESULT)
        return NULL;
    return (const int64_t *)(const void *)(s->base + SHMPOOL_HEADER_SIZE);
}

uint64_t shmpool_result_count(const shmpool_segment *s)
{
    return s ? get64(s->base + SHMPOOL_OFF_COUNT) : 0;
}

uint64_t shmpool_result_needed(const shmpool_segment *s)
{
    return s ? get64(s->base + SHMPOOL_OFF_NEEDED) : 0;
}

uint32_t shmpool_result_status(const shmpool_segment *s)
{
    return s ? get32(s->base + SHMPOOL_OFF_STATUS) : 0;
}

/* ---- client ------------------------------------------------------------- */

struct shmpool_client {
    int fd;                      /* -1 once the connection is gone */
    uint64_t next_id;
    double threshold;
    uint32_t nan_policy;
    int timeout_ms;
    shmpool_segment *data;       /* shmpool_detect's own segments */
    shmpool_segment *result;
    int last_status;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned char buf[SHMPOOL_MAX_REPLY + 1];
    char type[SHMPOOL_MAX_TYPE + 1];
    char message[SHMPOOL_MAX_MESSAGE + 1];
    char traceback[SHMPOOL_MAX_TRACEBACK + 1];
};

static int fail(shmpool_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    c->last_status = code;
    c->type[0] = '\0';
    c->traceback[0] = '\0';
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof c->message, fmt, ap);
    va_end(ap);
    return code;
}

static void copy_text(char *dst, size_t dst_size, const char *src, size_t len)
{
    if (len > dst_size - 1)
        len = dst_size - 1;
    if (len)
        memcpy(dst, src, len);
    dst[len] = '\0';
}

static void drop_connection(shmpool_client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int shmpool_dial(const char *path, shmpool_client **out)
{
    shmpool_client *c;
    struct sockaddr_un addr;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    char def[64];
    int fd, err;

    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (path == NULL || path[0] == '\0') {
        const char *env = getenv("SHMPOOL_SOCKET");
        if (env != NULL && env[0] != '\0') {
            path = env;
        } else {
            snprintf(def, sizeof def, "/tmp/shmpool-%lu.sock", (unsigned long)getuid());
            path = def;
        }
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path)
        return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);

    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno != EINTR) {
            err = -errno;
            close(fd);
            return err;
        }
        /* Interrupted: the connect continues; wait for it and collect it. */
        for (;;) {
            struct pollfd pfd;
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            pfd.fd = fd;
            pfd.events = POLLOUT;
            if (poll(&pfd, 1, -1) < 0) {
                if (errno == EINTR)
                    continue;
                err = -errno;
                close(fd);
                return err;
            }
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
                soerr = errno;
            if (soerr != 0) {
                close(fd);
                return -soerr;
            }
            break;
        }
    }
    /* The server must be us: segments are 0600 and only its uid may open
     * them, and anyone else squatting on the path must not get our names. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        err = -errno;
        close(fd);
        return err;
    }
    if (cred.uid != getuid()) {
        close(fd);
        return -EPERM;
    }
    c = (shmpool_client *)calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    c->next_id = 1;
    c->threshold = NAN;
    c->nan_policy = SHMPOOL_POLICY_DEFAULT;
    c->timeout_ms = 0;
    strcpy(c->path, path);
    *out = c;
    return 0;
}

void shmpool_close(shmpool_client *c)
{
    if (c == NULL)
        return;
    drop_connection(c);
    shmpool_segment_destroy(c->data);
    shmpool_segment_destroy(c->result);
    free(c);
}

int shmpool_set_threshold(shmpool_client *c, double k)
{
    if (c == NULL)
        return -EINVAL;
    if (!isnan(k) && !(k >= 0.0 && k < INFINITY))
        return fail(c, -EINVAL, "threshold must be NaN (server default) or finite and >= 0");
    c->threshold = k;
    return 0;
}

int shmpool_set_nan_policy(shmpool_client *c, uint32_t policy)
{
    if (c == NULL)
        return -EINVAL;
    if (policy > SHMPOOL_POLICY_RAISE)
        return fail(c, -EINVAL, "unknown nan_policy %u", (unsigned)policy);
    c->nan_policy = policy;
    return 0;
}

int shmpool_set_timeout(shmpool_client *c, int timeout_ms)
{
    if (c == NULL)
        return -EINVAL;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
    return 0;
}

/* Wait for one packet into c->buf.  Returns its length or -errno. */
static long receive(shmpool_client *c)
{
    long long deadline = c->timeout_ms > 0 ? now_ms() + c->timeout_ms : 0;
    for (;;) {
        struct pollfd pfd;
        struct iovec iov;
        struct msghdr msg;
        ssize_t n;
        int wait = -1, r;

        if (deadline) {
            long long left = deadline - now_ms();
            wait = left > 0 ? (int)left : 0;
        }
        pfd.fd = c->fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        r = poll(&pfd, 1, wait);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -ETIMEDOUT;
        if (pfd.revents & POLLNVAL)
            return -EBADF;
        memset(&msg, 0, sizeof msg);
        iov.iov_base = c->buf;
        iov.iov_len = sizeof c->buf; /* one byte more than MAX_REPLY */
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        n = recvmsg(c->fd, &msg, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return -errno;
        }
        if (n == 0)
            return -ECONNRESET; /* EOF: the server closed the connection */
        if ((msg.msg_flags & MSG_TRUNC) || n > SHMPOOL_MAX_REPLY)
            return -EMSGSIZE;
        return (long)n;
    }
}

int shmpool_roundtrip(shmpool_client *c, shmpool_request *req, shmpool_reply *rep)
{
    unsigned char packet[SHMPOOL_REQUEST_SIZE];
    long n;
    int err;

    if (c == NULL || req == NULL || rep == NULL)
        return -EINVAL;
    memset(rep, 0, sizeof *rep);
    if (c->fd < 0)
        return fail(c, -ENOTCONN, "connection to %s is closed (after an earlier error)",
                    c->path);
    req->request_id = c->next_id++;
    err = shmpool_request_encode(req, packet);
    if (err != 0)
        return fail(c, err, "segment name too long for a request");
    for (;;) {
        ssize_t s = send(c->fd, packet, sizeof packet, MSG_NOSIGNAL);
        if (s == (ssize_t)sizeof packet)
            break;
        if (s < 0 && errno == EINTR)
            continue;
        err = s < 0 ? -errno : -EIO;
        drop_connection(c);
        if (err == -EPIPE)
            err = -ECONNRESET;
        return fail(c, err, "send to %s: %s", c->path, strerror(-err));
    }
    n = receive(c);
    if (n < 0) {
        drop_connection(c);
        if (n == -ETIMEDOUT)
            return fail(c, -ETIMEDOUT, "no reply from %s within %d ms; connection closed",
                        c->path, c->timeout_ms);
        if (n == -ECONNRESET)
            return fail(c, -ECONNRESET, "server %s closed the connection", c->path);
        return fail(c, (int)n, "receive from %s: %s", c->path, strerror((int)-n));
    }
    err = shmpool_reply_decode(c->buf, (size_t)n, rep);
    if (err != 0) {
        drop_connection(c);
        return fail(c, -EPROTO, "malformed reply (%ld bytes) from %s", n, c->path);
    }
    if (rep->request_id != req->request_id &&
        !(rep->request_id == 0 && rep->status == SHMPOOL_STATUS_BAD_MESSAGE)) {
        drop_connection(c);
        return fail(c, -EPROTO, "reply for request %llu, expected %llu",
                    (unsigned long long)rep->request_id,
                    (unsigned long long)req->request_id);
    }
    c->last_status = rep->status;
    copy_text(c->type, sizeof c->type, rep->type, rep->type_len);
    copy_text(c->message, sizeof c->message, rep->message, rep->message_len);
    copy_text(c->traceback, sizeof c->traceback, rep->traceback, rep->traceback_len);
    return rep->status;
}

int shmpool_ping(shmpool_client *c)
{
    shmpool_request req = shmpool_request_make(SHMPOOL_OP_PING);
    shmpool_reply rep;
    req.threshold = 0.0; /* PING: send zeros */
    return shmpool_roundtrip(c, &req, &rep);
}

int shmpool_detect_into(shmpool_client *c, shmpool_segment *data,
                        uint64_t start, uint64_t count, shmpool_segment *result,
                        uint64_t *n_indices, uint64_t *needed)
{
    shmpool_request req;
    shmpool_reply rep;
    int st;

    if (n_indices)
        *n_indices = 0;
    if (needed)
        *needed = 0;
    if (c == NULL)
        return -EINVAL;
    if (data == NULL || result == NULL || data->kind != SHMPOOL_KIND_DATA ||
        result->kind != SHMPOOL_KIND_RESULT)
        return fail(c, -EINVAL, "detect needs a data segment and a result segment");
    req = shmpool_request_make(SHMPOOL_OP_DETECT);
    req.start = start;
    req.count = count;
    req.threshold = c->threshold;
    req.nan_policy = c->nan_policy;
    strcpy(req.data_name, data->name);
    strcpy(req.out_name, result->name);
    st = shmpool_roundtrip(c, &req, &rep);
    if (st < 0)
        return st;
    if (needed)
        *needed = rep.needed;
    if (st == SHMPOOL_STATUS_OK) {
        if (rep.count > result->capacity || rep.count != rep.needed) {
            drop_connection(c);
            return fail(c, -EPROTO, "reply claims %llu indices (needed %llu) in a result "
                        "segment of capacity %llu", (unsigned long long)rep.count,
                        (unsigned long long)rep.needed, (unsigned long long)result->capacity);
        }
        if (n_indices)
            *n_indices = rep.count;
    }
    return st;
}

int shmpool_detect_segment(shmpool_client *c, shmpool_segment *data,
                           uint64_t start, uint64_t count,
                           int64_t **indices, size_t *n_indices)
{
    uint64_t n = 0, needed = 0;
    int st, attempt, err;

    if (indices)
        *indices = NULL;
    if (n_indices)
        *n_indices = 0;
    if (c == NULL)
        return -EINVAL;
    if (indices == NULL || n_indices == NULL)
        return fail(c, -EINVAL, "indices and n_indices must not be NULL");
    if (c->result == NULL) {
        uint64_t cap = (count < (uint64_t)1 << 40 ? count / 32 : 0) + 64;
        err = shmpool_result_create(cap, &c->result);
        if (err != 0)
            return fail(c, err, "creating a result segment: %s", strerror(-err));
    }
    for (attempt = 0;; attempt++) {
        st = shmpool_detect_into(c, data, start, count, c->result, &n, &needed);
        if (st != SHMPOOL_STATUS_TOO_SMALL || attempt == 4)
            break;
        /* Grow with some headroom so that later calls can reuse it. */
        err = shmpool_segment_grow(&c->result, needed + needed / 4 + 64);
        if (err != 0)
            return fail(c, err, "growing the result segment to %llu: %s",
                        (unsigned long long)needed, strerror(-err));
    }
    if (st != SHMPOOL_STATUS_OK)
        return st;
    if (n > 0) {
        int64_t *out;
        if (n > SIZE_MAX / sizeof(int64_t))
            return fail(c, -ENOMEM, "result too large");
        out = (int64_t *)malloc((size_t)n * sizeof(int64_t));
        if (out == NULL)
            return fail(c, -ENOMEM, "out of memory for %llu indices", (unsigned long long)n);
        memcpy(out, shmpool_result_indices(c->result), (size_t)n * sizeof(int64_t));
        *indices = out;
    }
    *n_indices = (size_t)n;
    return 0;
}

int shmpool_detect(shmpool_client *c, const double *x, size_t n,
                   int64_t **indices, size_t *count)
{
    int err;
    if (indices)
        *indices = NULL;
    if (count)
        *count = 0;
    if (c == NULL)
        return -EINVAL;
    if ((x == NULL && n > 0) || indices == NULL || count == NULL)
        return fail(c, -EINVAL, "bad arguments to shmpool_detect");
    if (c->data == NULL || c->data->capacity < n) {
        uint64_t cap = n;
        if (c->data != NULL && c->data->capacity * 2 > cap)
            cap = c->data->capacity * 2;
        shmpool_segment_destroy(c->data);
        c->data = NULL;
        err = shmpool_data_create(cap, &c->data);
        if (err != 0)
            return fail(c, err, "creating a data segment of %zu values: %s", n, strerror(-err));
    }
    if (n)
        memcpy(shmpool_data_values(c->data), x, n * sizeof(double));
    shmpool_data_set_count(c->data, n);
    return shmpool_detect_segment(c, c->data, 0, n, indices, count);
}

void shmpool_free(void *p)
{
    free(p);
}

int shmpool_last_status(const shmpool_client *c) { return c ? c->last_status : -EINVAL; }
const char *shmpool_last_error_type(const shmpool_client *c) { return c ? c->type : ""; }
const char *shmpool_last_error_message(const shmpool_client *c) { return c ? c->message : ""; }
const char *shmpool_last_error_traceback(const shmpool_client *c) { return c ? c->traceback : ""; }
const char *shmpool_client_path(const shmpool_client *c) { return c ? c->path : ""; }
