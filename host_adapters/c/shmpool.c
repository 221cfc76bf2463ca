/*
 * shmpool.c - C host adapter for shmpool, layout and protocol version 2.
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
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
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
/* Segment header (1.1): fields back to back, 64 bytes. */
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
/* Request head (2.3): 256 bytes. */
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_VERSION == SHMPOOL_REQ_OFF_MAGIC + 4, req_version);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_OP == SHMPOOL_REQ_OFF_VERSION + 2, req_op);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_REQUEST_ID == SHMPOOL_REQ_OFF_OP + 2, req_id);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_START == SHMPOOL_REQ_OFF_REQUEST_ID + 8, req_start);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_COUNT == SHMPOOL_REQ_OFF_START + 8, req_count);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_BASE == SHMPOOL_REQ_OFF_COUNT + 8, req_base);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_DETECTOR == SHMPOOL_REQ_OFF_BASE + 8, req_detector);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_NAN_POLICY == SHMPOOL_REQ_OFF_DETECTOR + 4, req_policy);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_FLAGS == SHMPOOL_REQ_OFF_NAN_POLICY + 4, req_flags);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_NPARAMS == SHMPOOL_REQ_OFF_FLAGS + 4, req_nparams);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_PARAMS == SHMPOOL_REQ_OFF_NPARAMS + 4, req_params);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_DATA_NAME == SHMPOOL_REQ_OFF_PARAMS + 8 * SHMPOOL_MAX_PARAMS,
                      req_data);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_OUT_NAME == SHMPOOL_REQ_OFF_DATA_NAME + SHMPOOL_NAME_SIZE,
                      req_out);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_NVALUES == SHMPOOL_REQ_OFF_OUT_NAME + SHMPOOL_NAME_SIZE,
                      req_nvalues);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_RESERVED == SHMPOOL_REQ_OFF_NVALUES + 4, req_reserved);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQUEST_HEAD_SIZE == SHMPOOL_REQ_OFF_RESERVED + 4, req_size);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REQ_OFF_VALUES == SHMPOOL_REQUEST_HEAD_SIZE, req_values);
/* Reply head (2.4): 48 bytes; the largest reply fits MAX_REPLY. */
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_VERSION == SHMPOOL_REP_OFF_MAGIC + 4, rep_version);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_STATUS == SHMPOOL_REP_OFF_VERSION + 2, rep_status);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_REQUEST_ID == SHMPOOL_REP_OFF_STATUS + 2, rep_id);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_COUNT == SHMPOOL_REP_OFF_REQUEST_ID + 8, rep_count);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_NEEDED == SHMPOOL_REP_OFF_COUNT + 8, rep_needed);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_TYPE_LEN == SHMPOOL_REP_OFF_NEEDED + 8, rep_tlen);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_MESSAGE_LEN == SHMPOOL_REP_OFF_TYPE_LEN + 4, rep_mlen);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_TRACEBACK_LEN == SHMPOOL_REP_OFF_MESSAGE_LEN + 4, rep_tblen);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_NVALUES == SHMPOOL_REP_OFF_TRACEBACK_LEN + 4, rep_nvalues);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REPLY_HEAD_SIZE == SHMPOOL_REP_OFF_NVALUES + 4, rep_size);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REP_OFF_VALUES == SHMPOOL_REPLY_HEAD_SIZE, rep_values);
SHMPOOL_STATIC_ASSERT(SHMPOOL_REPLY_HEAD_SIZE + 8 * SHMPOOL_MAX_REPLY_VALUES + SHMPOOL_MAX_TYPE +
                      SHMPOOL_MAX_MESSAGE + SHMPOOL_MAX_TRACEBACK <= SHMPOOL_MAX_REPLY,
                      reply_fits);
SHMPOOL_STATIC_ASSERT(SHMPOOL_MAX_REQUEST == 65792, max_request);
/* Longest name we create, shmpool-<pid>-<8 hex>-<16 hex>, fits a name field. */
SHMPOOL_STATIC_ASSERT(8 + 10 + 1 + 8 + 1 + 16 <= SHMPOOL_NAME_SIZE - 1, name_fits);

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
        return "segment layout version is not 2";
    if (h->kind != kind)
        return "wrong segment kind";
    if (h->header_size != SHMPOOL_HEADER_SIZE || h->flags != 0)
        return "header_size / flags not valid in v2";
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
    int i;
    memset(&r, 0, sizeof r);
    r.magic = SHMPOOL_REQUEST_MAGIC;
    r.version = SHMPOOL_VERSION;
    r.op = op;
    for (i = 0; i < SHMPOOL_MAX_PARAMS; i++)
        r.params[i] = NAN;
    return r;
}

size_t shmpool_request_size(const shmpool_request *r)
{
    return SHMPOOL_REQUEST_HEAD_SIZE + (size_t)8 * r->nvalues;
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

long shmpool_request_encode(const shmpool_request *r, void *out, size_t out_size)
{
    unsigned char *p = (unsigned char *)out;
    size_t total = shmpool_request_size(r), i;

    if (r->nvalues > 0 && r->values == NULL)
        return -EINVAL;
    if (out_size < total)
        return -ENOBUFS;
    memset(p, 0, SHMPOOL_REQUEST_HEAD_SIZE);
    put32(p + SHMPOOL_REQ_OFF_MAGIC, r->magic);
    put16(p + SHMPOOL_REQ_OFF_VERSION, r->version);
    put16(p + SHMPOOL_REQ_OFF_OP, r->op);
    put64(p + SHMPOOL_REQ_OFF_REQUEST_ID, r->request_id);
    put64(p + SHMPOOL_REQ_OFF_START, r->start);
    put64(p + SHMPOOL_REQ_OFF_COUNT, r->count);
    put64(p + SHMPOOL_REQ_OFF_BASE, r->base);
    put32(p + SHMPOOL_REQ_OFF_DETECTOR, r->detector);
    put32(p + SHMPOOL_REQ_OFF_NAN_POLICY, r->nan_policy);
    put32(p + SHMPOOL_REQ_OFF_FLAGS, r->flags);
    put32(p + SHMPOOL_REQ_OFF_NPARAMS, r->nparams);
    /* Slots past nparams are NaN, as layout.py pads them. */
    for (i = 0; i < SHMPOOL_MAX_PARAMS; i++)
        putf64(p + SHMPOOL_REQ_OFF_PARAMS + 8 * i, i < r->nparams ? r->params[i] : NAN);
    if (put_name(p + SHMPOOL_REQ_OFF_DATA_NAME, r->data_name) != 0 ||
        put_name(p + SHMPOOL_REQ_OFF_OUT_NAME, r->out_name) != 0)
        return -ENAMETOOLONG;
    put32(p + SHMPOOL_REQ_OFF_NVALUES, r->nvalues);
    put32(p + SHMPOOL_REQ_OFF_RESERVED, r->reserved);
    for (i = 0; i < r->nvalues; i++)
        putf64(p + SHMPOOL_REQ_OFF_VALUES + 8 * i, r->values[i]);
    return (long)total;
}

double shmpool_request_value(const shmpool_request *r, size_t i)
{
    if (r == NULL || i >= r->nvalues)
        return NAN;
    if (r->values != NULL)
        return r->values[i];
    if (r->values_wire != NULL)
        return getf64(r->values_wire + 8 * i);
    return NAN;
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

static int op_known(unsigned op)
{
    return op >= SHMPOOL_OP_DETECT && op <= SHMPOOL_OP_FLAG;
}

static int op_uses_data(unsigned op)
{
    return op == SHMPOOL_OP_DETECT || op == SHMPOOL_OP_SUMMARIZE || op == SHMPOOL_OP_FLAG;
}

static int op_uses_out(unsigned op)
{
    return op == SHMPOOL_OP_DETECT || op == SHMPOOL_OP_FLAG;
}

int shmpool_request_decode(const void *buf, size_t len, shmpool_request *r,
                           char *why, size_t why_size)
{
    const unsigned char *p = (const unsigned char *)buf;
    uint64_t want;
    int st, i;

    memset(r, 0, sizeof *r);
    if (why != NULL && why_size > 0)
        why[0] = '\0';
    /* 1. magic */
    if (len < 8 || get32(p + SHMPOOL_REQ_OFF_MAGIC) != SHMPOOL_REQUEST_MAGIC)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "not a shmpool request (bad magic or under 8 bytes)");
    r->magic = SHMPOOL_REQUEST_MAGIC;
    r->version = get16(p + SHMPOOL_REQ_OFF_VERSION);
    r->op = get16(p + SHMPOOL_REQ_OFF_OP);
    if (len >= 16)
        r->request_id = get64(p + SHMPOOL_REQ_OFF_REQUEST_ID);
    /* 2. version */
    if (r->version != SHMPOOL_VERSION)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_VERSION,
                      "request version %u: this side speaks LAYOUT v%d only",
                      (unsigned)r->version, SHMPOOL_VERSION);
    /* 3. size, op, flags, reserved, nparams, nvalues */
    if (len < SHMPOOL_REQUEST_HEAD_SIZE)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "request is %zu bytes; a v2 head is %d", len, SHMPOOL_REQUEST_HEAD_SIZE);
    r->start = get64(p + SHMPOOL_REQ_OFF_START);
    r->count = get64(p + SHMPOOL_REQ_OFF_COUNT);
    r->base = get64(p + SHMPOOL_REQ_OFF_BASE);
    r->detector = get32(p + SHMPOOL_REQ_OFF_DETECTOR);
    r->nan_policy = get32(p + SHMPOOL_REQ_OFF_NAN_POLICY);
    r->flags = get32(p + SHMPOOL_REQ_OFF_FLAGS);
    r->nparams = get32(p + SHMPOOL_REQ_OFF_NPARAMS);
    for (i = 0; i < SHMPOOL_MAX_PARAMS; i++)
        r->params[i] = getf64(p + SHMPOOL_REQ_OFF_PARAMS + 8 * i);
    r->nvalues = get32(p + SHMPOOL_REQ_OFF_NVALUES);
    r->reserved = get32(p + SHMPOOL_REQ_OFF_RESERVED);
    if (!op_known(r->op))
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE, "unknown op %u",
                      (unsigned)r->op);
    if (r->flags != 0 || r->reserved != 0)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "flags %u / reserved %u must be 0", (unsigned)r->flags,
                      (unsigned)r->reserved);
    if (r->nparams > SHMPOOL_MAX_PARAMS)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE, "nparams %u exceeds %d",
                      (unsigned)r->nparams, SHMPOOL_MAX_PARAMS);
    if (r->nvalues > SHMPOOL_MAX_REQUEST_VALUES ||
        (r->nvalues != 0 && r->op != SHMPOOL_OP_COMBINE))
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "nvalues %u is not allowed for op %u (COMBINE only, at most %d)",
                      (unsigned)r->nvalues, (unsigned)r->op, SHMPOOL_MAX_REQUEST_VALUES);
    want = SHMPOOL_REQUEST_HEAD_SIZE + (uint64_t)8 * r->nvalues;
    if ((uint64_t)len != want)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_MESSAGE,
                      "request is %zu bytes; its head says %llu", len, (unsigned long long)want);
    /* 4. nan_policy */
    if (r->nan_policy > SHMPOOL_POLICY_RAISE)
        return reason(why, why_size, SHMPOOL_STATUS_BAD_VALUE, "unknown nan_policy %u",
                      (unsigned)r->nan_policy);
    /* 5. names: both fields well formed, then the rule for the ones used */
    st = decode_name(p + SHMPOOL_REQ_OFF_DATA_NAME, r->data_name, "data_name", why, why_size);
    if (st != SHMPOOL_STATUS_OK)
        return st;
    st = decode_name(p + SHMPOOL_REQ_OFF_OUT_NAME, r->out_name, "out_name", why, why_size);
    if (st != SHMPOOL_STATUS_OK)
        return st;
    if (op_uses_data(r->op) && !shmpool_valid_name(r->data_name))
        return reason(why, why_size, SHMPOOL_STATUS_BAD_NAME,
                      "data_name '%s' breaks the naming rule", r->data_name);
    if (op_uses_out(r->op) && !shmpool_valid_name(r->out_name))
        return reason(why, why_size, SHMPOOL_STATUS_BAD_NAME,
                      "out_name '%s' breaks the naming rule", r->out_name);
    r->values_wire = r->nvalues ? p + SHMPOOL_REQ_OFF_VALUES : NULL;
    return SHMPOOL_STATUS_OK;
}

/* ---- reply -------------------------------------------------------------- */

long shmpool_reply_encode(const shmpool_reply *r, void *out, size_t out_size)
{
    unsigned char *p = (unsigned char *)out;
    size_t tlen = r->type ? r->type_len : 0;
    size_t mlen = r->message ? r->message_len : 0;
    size_t tblen = r->traceback ? r->traceback_len : 0;
    size_t nv = r->nvalues < SHMPOOL_MAX_REPLY_VALUES ? r->nvalues : SHMPOOL_MAX_REPLY_VALUES;
    const char *tb = r->traceback;
    size_t total, i;

    if (tlen > SHMPOOL_MAX_TYPE)
        tlen = SHMPOOL_MAX_TYPE;
    if (mlen > SHMPOOL_MAX_MESSAGE)
        mlen = SHMPOOL_MAX_MESSAGE;
    if (tblen > SHMPOOL_MAX_TRACEBACK) { /* keep the end, like layout.py */
        tb += tblen - SHMPOOL_MAX_TRACEBACK;
        tblen = SHMPOOL_MAX_TRACEBACK;
    }
    total = SHMPOOL_REPLY_HEAD_SIZE + 8 * nv + tlen + mlen + tblen;
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
    put32(p + SHMPOOL_REP_OFF_NVALUES, (uint32_t)nv);
    p += SHMPOOL_REPLY_HEAD_SIZE;
    for (i = 0; i < nv; i++, p += 8)
        putf64(p, r->values[i]);
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
    uint32_t i;

    memset(r, 0, sizeof *r);
    if (len < 16)
        return -EPROTO;
    /* The first 16 bytes are laid out alike in every version (2.4). */
    r->magic = get32(p + SHMPOOL_REP_OFF_MAGIC);
    r->version = get16(p + SHMPOOL_REP_OFF_VERSION);
    r->status = get16(p + SHMPOOL_REP_OFF_STATUS);
    r->request_id = get64(p + SHMPOOL_REP_OFF_REQUEST_ID);
    if (r->magic != SHMPOOL_REPLY_MAGIC)
        return -EPROTO;
    if (r->version != SHMPOOL_VERSION)
        return -EPROTONOSUPPORT;
    if (len < SHMPOOL_REPLY_HEAD_SIZE)
        return -EPROTO;
    r->count = get64(p + SHMPOOL_REP_OFF_COUNT);
    r->needed = get64(p + SHMPOOL_REP_OFF_NEEDED);
    r->type_len = get32(p + SHMPOOL_REP_OFF_TYPE_LEN);
    r->message_len = get32(p + SHMPOOL_REP_OFF_MESSAGE_LEN);
    r->traceback_len = get32(p + SHMPOOL_REP_OFF_TRACEBACK_LEN);
    r->nvalues = get32(p + SHMPOOL_REP_OFF_NVALUES);
    if (r->nvalues > SHMPOOL_MAX_REPLY_VALUES ||
        (uint64_t)SHMPOOL_REPLY_HEAD_SIZE + (uint64_t)8 * r->nvalues + r->type_len +
                r->message_len + r->traceback_len != (uint64_t)len) {
        uint32_t keep = r->nvalues;
        r->nvalues = 0;
        r->type_len = r->message_len = r->traceback_len = 0;
        (void)keep;
        return -EPROTO;
    }
    for (i = 0; i < r->nvalues; i++)
        r->values[i] = getf64(p + SHMPOOL_REP_OFF_VALUES + 8 * i);
    text = (const char *)p + SHMPOOL_REP_OFF_VALUES + 8 * r->nvalues;
    r->type = text;
    r->message = text + r->type_len;
    r->traceback = text + r->type_len + r->message_len;
    return 0;
}

/* ---- detector table (INFO message) -------------------------------------- */

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* A token [s, s+n) as a NUL-terminated string in buf (size bytes). */
static int token_copy(char *buf, size_t size, const char *s, size_t n)
{
    if (n >= size)
        return -ENAMETOOLONG;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

static int parse_row(const char *line, size_t len, shmpool_detector *row)
{
    const char *tok[3 + SHMPOOL_MAX_PARAMS];
    size_t tlen[3 + SHMPOOL_MAX_PARAMS];
    size_t ntok = 0, pos = 0, i;
    char num[64], *end;
    unsigned long size;

    memset(row, 0, sizeof *row);
    while (pos < len) {
        size_t start;
        while (pos < len && is_space(line[pos]))
            pos++;
        if (pos >= len)
            break;
        start = pos;
        while (pos < len && !is_space(line[pos]))
            pos++;
        if (ntok == sizeof tok / sizeof tok[0])
            return -E2BIG; /* more than MAX_PARAMS parameters */
        tok[ntok] = line + start;
        tlen[ntok] = pos - start;
        ntok++;
    }
    if (ntok == 0)
        return 1; /* blank line */
    if (ntok < 3)
        return -EPROTO;
    if (token_copy(row->name, sizeof row->name, tok[0], tlen[0]) != 0)
        return -ENAMETOOLONG;
    if (tlen[1] == 5 && memcmp(tok[1], "split", 5) == 0)
        row->split = 1;
    else if (tlen[1] == 5 && memcmp(tok[1], "whole", 5) == 0)
        row->split = 0;
    else
        return -EPROTO;
    if (token_copy(num, sizeof num, tok[2], tlen[2]) != 0 || num[0] < '0' || num[0] > '9')
        return -EPROTO;
    errno = 0;
    size = strtoul(num, &end, 10);
    if (*end != '\0' || errno != 0)
        return -EPROTO;
    if (size > SHMPOOL_MAX_REPLY_VALUES)
        return -E2BIG;
    row->summary_size = (uint32_t)size;
    for (i = 3; i < ntok; i++) {
        const char *eq = (const char *)memchr(tok[i], '=', tlen[i]);
        size_t nlen;
        if (eq == NULL || eq == tok[i])
            return -EPROTO;
        nlen = (size_t)(eq - tok[i]);
        if (token_copy(row->param_names[row->nparams], SHMPOOL_PARAM_NAME_MAX + 1, tok[i],
                       nlen) != 0)
            return -ENAMETOOLONG;
        if (token_copy(num, sizeof num, eq + 1, tlen[i] - nlen - 1) != 0 || num[0] == '\0')
            return -EPROTO;
        row->param_defaults[row->nparams] = strtod(num, &end);
        if (*end != '\0')
            return -EPROTO;
        row->nparams++;
    }
    return 0;
}

int shmpool_table_parse(const char *text, size_t len, shmpool_detector *rows, size_t max_rows,
                        size_t *n_rows)
{
    size_t pos = 0, n = 0;
    if (n_rows)
        *n_rows = 0;
    if (text == NULL && len > 0)
        return -EINVAL;
    while (pos < len) {
        const char *nl = (const char *)memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        shmpool_detector row;
        int err = parse_row(text + pos, end - pos, &row);
        if (err < 0)
            return err;
        if (err == 0) {
            if (n < max_rows && rows != NULL)
                rows[n] = row;
            n++;
        }
        pos = end + 1;
    }
    if (n_rows)
        *n_rows = n;
    return 0;
}

/* ---- splitting (5) ------------------------------------------------------ */

uint64_t shmpool_split_count(uint64_t n, uint64_t lanes)
{
    uint64_t k;
    if (n < SHMPOOL_SPLIT_MIN)
        return 1;
    k = n / SHMPOOL_SPLIT_CHUNK_MIN;
    if (lanes < k)
        k = lanes;
    return k < 1 ? 1 : k;
}

uint64_t shmpool_split_bound(uint64_t n, uint64_t k, uint64_t i)
{
    uint64_t q, r;
    if (k == 0 || i >= k)
        return n;
    /* floor(n * i / k) without overflow: n = q k + r, so n i / k = q i + r i / k. */
    q = n / k;
    r = n % k;
    return (q * i + (r * i) / k) / 8 * 8;
}

/* ---- status text -------------------------------------------------------- */

static const char *const status_names[] = {
    "OK", "BAD_MESSAGE", "BAD_NAME", "NO_SEGMENT", "NOT_PERMITTED", "BAD_HEADER",
    "OUT_OF_RANGE", "TOO_SMALL", "DETECTOR_ERROR", "WORKER_DIED", "NON_FINITE",
    "BAD_VALUE", "TIMEOUT", "SHUTTING_DOWN", "INTERNAL", "BUSY", "BAD_VERSION",
};

static const char *const status_texts[] = {
    "OK: success",
    "BAD_MESSAGE: request of the wrong size, magic, op, flags, nparams or nvalues",
    "BAD_NAME: a segment name breaks the naming rule",
    "NO_SEGMENT: no such segment",
    "NOT_PERMITTED: not a regular file, another uid, or mode wider than 0600",
    "BAD_HEADER: segment header invalid, or capacity larger than the segment",
    "OUT_OF_RANGE: start + count beyond the data segment's count",
    "TOO_SMALL: result segment capacity smaller than the answer",
    "DETECTOR_ERROR: the detector raised",
    "WORKER_DIED: the worker died during the call",
    "NON_FINITE: NaN or inf in the data under nan_policy raise, or overflowing statistics",
    "BAD_VALUE: a parameter, nan_policy, detector row or values count out of range",
    "TIMEOUT: the call exceeded the server's time limit",
    "SHUTTING_DOWN: the server is stopping",
    "INTERNAL: a bug in shmpool",
    "BUSY: the server holds as many connections as it can",
    "BAD_VERSION: the worker does not speak this layout version",
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

/* ---- randomness --------------------------------------------------------- */

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

static void hex_into(char *out, const unsigned char *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* ==== segments and the owner lock (1.3 - 1.5) ============================ */

/* A name this process created and has not unlinked: unlinked at cleanup
 * (exit) even when the segment object was closed without unlinking. */
typedef struct live_name {
    struct live_name *prev, *next;
    struct shmpool_segment *seg;   /* NULL once the segment object is closed */
    char name[SHMPOOL_NAME_SIZE];
} live_name;

struct shmpool_segment {
    unsigned char *base;   /* mapping: header then region */
    size_t map_size;
    uint64_t capacity;
    unsigned kind;
    int unlinked;
    pid_t creator;         /* only this process unlinks */
    live_name *node;       /* on g_owner.live while linked (creator only) */
    char name[SHMPOOL_NAME_SIZE];
};

/* This process's owner (1.4).  All fields under g_lock. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    pid_t pid;                 /* process holding `fd`; 0: none */
    int fd;                    /* the flock(LOCK_SH)ed owner file */
    char id[32];               /* "<pid>-<8 hex>" */
    live_name *live;           /* names created and not yet unlinked */
    int hooks;                 /* atexit / pthread_atfork registered */
} g_owner = {0, -1, "", NULL, 0};

static void owner_path(char *buf, size_t size, const char *id)
{
    snprintf(buf, size, "/dev/shm/" SHMPOOL_NAME_PREFIX "%s-" SHMPOOL_OWNER_LOCK_SUFFIX, id);
}

static void free_names(live_name *n)
{
    while (n != NULL) {
        live_name *next = n->next;
        free(n);
        n = next;
    }
}

static void fork_prepare(void) { pthread_mutex_lock(&g_lock); }
static void fork_parent(void) { pthread_mutex_unlock(&g_lock); }

static void forget_owner_locked(void)
{
    if (g_owner.fd >= 0)
        close(g_owner.fd);
    g_owner.pid = 0;
    g_owner.fd = -1;
    g_owner.id[0] = '\0';
    free_names(g_owner.live);
    g_owner.live = NULL;
}

/* In the child: the inherited descriptor shares the parent's lock; closing
 * our copy leaves the parent's lock held (the parent keeps its own).  The
 * child takes an owner of its own at its first segment (1.3); the parent's
 * names are the parent's to unlink (inherited segment objects have another
 * creator pid and never touch the list). */
static void fork_child(void)
{
    forget_owner_locked(); /* g_lock is held: fork_prepare took it */
    pthread_mutex_unlock(&g_lock);
}

static void cleanup_locked(void);

static void at_exit(void)
{
    /* Never block exit on a lock another thread holds. */
    if (pthread_mutex_trylock(&g_lock) != 0)
        return;
    cleanup_locked();
    pthread_mutex_unlock(&g_lock);
}

static int owner_take_locked(void)
{
    pid_t me = getpid();
    int tries;

    if (g_owner.pid == me && g_owner.fd >= 0)
        return 0;
    if (g_owner.pid != me && g_owner.pid != 0) /* forked around the atfork hook */
        forget_owner_locked();
    if (!g_owner.hooks) {
        if (atexit(at_exit) != 0 || pthread_atfork(fork_prepare, fork_parent, fork_child) != 0)
            return -ENOMEM;
        g_owner.hooks = 1;
    }
    for (tries = 0; tries < 16; tries++) {
        unsigned char rnd[4];
        char hex[9], id[32], path[96];
        struct stat by_path, by_fd;
        int fd, err;

        err = random_bytes(rnd, sizeof rnd);
        if (err != 0)
            return err;
        hex_into(hex, rnd, sizeof rnd);
        snprintf(id, sizeof id, "%ld-%s", (long)me, hex);
        owner_path(path, sizeof path, id);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            if (errno == EEXIST || errno == EINTR)
                continue;
            return -errno;
        }
        if (fchmod(fd, 0600) != 0) { /* against a restrictive umask */
            err = -errno;
            unlink(path);
            close(fd);
            return err;
        }
        while (flock(fd, LOCK_SH) != 0) {
            if (errno != EINTR) {
                err = -errno;
                close(fd);
                return err;
            }
        }
        /* A reaper that opened the file between our open and our flock found
         * it unlocked and removed it: the path must still name our file. */
        if (stat(path, &by_path) != 0 || fstat(fd, &by_fd) != 0 ||
            by_path.st_dev != by_fd.st_dev || by_path.st_ino != by_fd.st_ino) {
            close(fd);
            continue;
        }
        g_owner.pid = me;
        g_owner.fd = fd;
        snprintf(g_owner.id, sizeof g_owner.id, "%s", id);
        g_owner.live = NULL;
        return 0;
    }
    return -EEXIST;
}

int shmpool_owner_id(char *buf, size_t size)
{
    int err;
    if (buf == NULL || size == 0)
        return -EINVAL;
    pthread_mutex_lock(&g_lock);
    err = owner_take_locked();
    if (err == 0) {
        if (strlen(g_owner.id) >= size)
            err = -ENAMETOOLONG;
        else
            strcpy(buf, g_owner.id);
    }
    pthread_mutex_unlock(&g_lock);
    return err;
}

static void name_remove_locked(live_name *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        g_owner.live = n->next;
    if (n->next)
        n->next->prev = n->prev;
    if (n->seg)
        n->seg->node = NULL;
    free(n);
}

static void cleanup_locked(void)
{
    char path[128];
    if (g_owner.pid != getpid() || g_owner.fd < 0)
        return;
    while (g_owner.live != NULL) {
        live_name *n = g_owner.live;
        snprintf(path, sizeof path, "/dev/shm/%s", n->name);
        unlink(path);
        if (n->seg)
            n->seg->unlinked = 1;
        name_remove_locked(n);
    }
    owner_path(path, sizeof path, g_owner.id);
    unlink(path);
    close(g_owner.fd);
    g_owner.fd = -1;
    g_owner.pid = 0;
    g_owner.id[0] = '\0';
}

void shmpool_cleanup(void)
{
    pthread_mutex_lock(&g_lock);
    cleanup_locked();
    pthread_mutex_unlock(&g_lock);
}

static void write_u64_at(shmpool_segment *s, size_t off, uint64_t v)
{
    put64(s->base + off, v);
}

int shmpool_segment_create(unsigned kind, uint64_t capacity, shmpool_segment **out)
{
    shmpool_segment *s;
    char path[sizeof "/dev/shm/" + SHMPOOL_NAME_SIZE];
    shmpool_header h;
    uint64_t size;
    int fd = -1, err, tries;
    live_name *node;
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
    s = (shmpool_segment *)calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;

    /* Owner first (1.4), then the name under it; the name joins the owner's
     * list in the same critical section, so that a cleanup never leaves it
     * behind without its owner file. */
    node = (live_name *)calloc(1, sizeof *node);
    if (node == NULL) {
        free(s);
        return -ENOMEM;
    }
    pthread_mutex_lock(&g_lock);
    err = owner_take_locked();
    for (tries = 0; err == 0 && tries < 16; tries++) {
        unsigned char rnd[8];
        char hex[17];
        err = random_bytes(rnd, sizeof rnd);
        if (err != 0)
            break;
        hex_into(hex, rnd, sizeof rnd);
        snprintf(s->name, sizeof s->name, SHMPOOL_NAME_PREFIX "%s-%s", g_owner.id, hex);
        snprintf(path, sizeof path, "/dev/shm/%s", s->name);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0)
            break;
        err = -errno;
        if (errno != EEXIST && errno != EINTR)
            break;
        err = 0;
    }
    if (fd < 0) {
        pthread_mutex_unlock(&g_lock);
        free(node);
        free(s);
        return err != 0 ? err : -EEXIST;
    }
    s->creator = getpid();
    memcpy(node->name, s->name, sizeof node->name);
    node->seg = s;
    node->next = g_owner.live;
    if (g_owner.live)
        g_owner.live->prev = node;
    g_owner.live = node;
    s->node = node;
    pthread_mutex_unlock(&g_lock);

    /* A restrictive umask must not leave the workers unable to open it. */
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
    close(fd);
    pthread_mutex_lock(&g_lock);
    if (s->node != NULL) { /* else a concurrent cleanup unlinked it */
        unlink(path);
        name_remove_locked(s->node);
    }
    pthread_mutex_unlock(&g_lock);
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
    if (s->creator == getpid()) {
        /* Closed but still linked: the name stays on the owner's list, so
         * that cleanup (at exit) unlinks it. */
        pthread_mutex_lock(&g_lock);
        if (s->node != NULL)
            s->node->seg = NULL;
        s->node = NULL;
        pthread_mutex_unlock(&g_lock);
    }
    if (s->base != NULL)
        munmap(s->base, s->map_size);
    free(s);
}

int shmpool_segment_unlink(shmpool_segment *s)
{
    char path[sizeof "/dev/shm/" + SHMPOOL_NAME_SIZE];
    int err = 0;
    if (s == NULL)
        return -EINVAL;
    if (s->creator != getpid())
        return s->unlinked ? 0 : -EPERM;
    pthread_mutex_lock(&g_lock);
    if (!s->unlinked) {
        snprintf(path, sizeof path, "/dev/shm/%s", s->name);
        if (unlink(path) != 0 && errno != ENOENT)
            err = -errno;
        if (err == 0) {
            s->unlinked = 1;
            if (s->node != NULL)
                name_remove_locked(s->node);
        }
    }
    pthread_mutex_unlock(&g_lock);
    return err;
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

static void result_set_header(shmpool_segment *s, uint64_t count, uint32_t status,
                              uint64_t needed)
{
    put64(s->base + SHMPOOL_OFF_COUNT, count);
    put32(s->base + SHMPOOL_OFF_STATUS, status);
    put64(s->base + SHMPOOL_OFF_NEEDED, needed);
}

/* ==== client ============================================================= */

#define CONNECT_DEFAULT_MS 10000   /* connect() retry deadline without a timeout */
#define MAX_LANE_SLOTS     1024    /* sanity bound on the lanes of one client */
#define GROW_ATTEMPTS      4       /* TOO_SMALL -> grow -> ask again, at most */

typedef struct lane {
    int fd;                   /* -1: not connected */
    int worker;               /* INFO: worker index; -1 when not connected */
    int64_t pid;              /* INFO: worker pid */
    uint64_t pending;         /* request_id awaited; 0: none */
    shmpool_segment *result;  /* this lane's own result segment */
} lane_t;

typedef struct setting {
    char name[SHMPOOL_PARAM_NAME_MAX + 1];
    double value;
} setting_t;

struct shmpool_client {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int timeout_ms;                /* <= 0: none */
    unsigned max_lanes;            /* 0: the server's workers */
    uint32_t nan_policy;
    uint64_t next_id;

    /* The detector table and the row in use (INFO). */
    shmpool_detector *rows;
    size_t nrows;
    char *table;                   /* the INFO message it was parsed from */
    size_t table_len;
    unsigned workers;
    size_t row;
    int row_missing;               /* the table changed and lost row_name */
    char row_name[SHMPOOL_DETECTOR_NAME_MAX + 1];  /* "": row 0 */
    setting_t set[SHMPOOL_MAX_PARAMS];
    unsigned nset;

    lane_t *lanes;
    unsigned nlanes;
    shmpool_segment *data;         /* shmpool_detect's own data segment */
    unsigned last_chunks;

    int last_status;
    int err_set;                   /* the current call has its (first) error */
    char type[SHMPOOL_MAX_TYPE + 1];
    char message[SHMPOOL_MAX_MESSAGE + 1];
    char traceback[SHMPOOL_MAX_TRACEBACK + 1];
    unsigned char rbuf[SHMPOOL_MAX_REPLY + 1];
    unsigned char sbuf[SHMPOOL_MAX_REQUEST];
};

static void clear_error(shmpool_client *c)
{
    c->last_status = 0;
    c->err_set = 0;
    c->type[0] = c->message[0] = c->traceback[0] = '\0';
}

/* Record a local error; the first error of a call wins.  Returns the call's
 * error code. */
static int fail(shmpool_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    if (c->err_set)
        return c->last_status;
    c->err_set = 1;
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

/* Record a worker's error reply (texts copied out of the receive buffer). */
static int reply_error(shmpool_client *c, const shmpool_reply *rep)
{
    if (c->err_set)
        return c->last_status;
    c->err_set = 1;
    c->last_status = rep->status;
    copy_text(c->type, sizeof c->type, rep->type, rep->type_len);
    copy_text(c->message, sizeof c->message, rep->message, rep->message_len);
    copy_text(c->traceback, sizeof c->traceback, rep->traceback, rep->traceback_len);
    if (c->message[0] == '\0')
        snprintf(c->message, sizeof c->message, "%s", shmpool_strerror(rep->status));
    return rep->status;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 0 means no deadline. */
static long long deadline_after(int ms)
{
    return ms > 0 ? now_ms() + ms : 0;
}

static int wait_left(long long deadline)
{
    long long left;
    if (deadline == 0)
        return -1;
    left = deadline - now_ms();
    if (left <= 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

static void sleep_ms(int ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void lane_close(shmpool_client *c, unsigned i)
{
    lane_t *l = &c->lanes[i];
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    l->pending = 0;
    l->worker = -1;
    l->pid = -1;
}

static int ensure_slots(shmpool_client *c, unsigned n)
{
    lane_t *grown;
    unsigned i;
    if (n <= c->nlanes)
        return 0;
    if (n > MAX_LANE_SLOTS)
        return -E2BIG;
    grown = (lane_t *)realloc(c->lanes, n * sizeof *grown);
    if (grown == NULL)
        return -ENOMEM;
    for (i = c->nlanes; i < n; i++) {
        memset(&grown[i], 0, sizeof grown[i]);
        grown[i].fd = -1;
        grown[i].worker = -1;
        grown[i].pid = -1;
    }
    c->lanes = grown;
    c->nlanes = n;
    return 0;
}

/* An idle lane must have nothing to read: readable means the worker closed
 * it (replaced, or the server stopped) or the stream is out of step. */
static int lane_stale(int fd)
{
    struct pollfd p;
    int r;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    do
        r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    return r != 0;
}

static int send_packet(int fd, const void *buf, size_t len, long long deadline)
{
    for (;;) {
        ssize_t s = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        struct pollfd p;
        int r;
        if (s == (ssize_t)len)
            return 0;
        if (s >= 0)
            return -EIO; /* a SEQPACKET send is all or nothing */
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        p.fd = fd;
        p.events = POLLOUT;
        p.revents = 0;
        r = poll(&p, 1, wait_left(deadline));
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r == 0)
            return -ETIMEDOUT;
    }
}

/* One packet into buf (cap bytes).  Returns its length, 0 at end-of-file,
 * or -errno (-ETIMEDOUT, -EMSGSIZE for a packet over cap - 1 bytes). */
static long recv_packet(int fd, unsigned char *buf, size_t cap, long long deadline)
{
    for (;;) {
        struct pollfd p;
        struct iovec iov;
        struct msghdr msg;
        ssize_t n;
        int r;

        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        r = poll(&p, 1, wait_left(deadline));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -ETIMEDOUT;
        memset(&msg, 0, sizeof msg);
        iov.iov_base = buf;
        iov.iov_len = cap;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        n = recvmsg(fd, &msg, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return -errno;
        }
        if ((msg.msg_flags & MSG_TRUNC) || (size_t)n >= cap)
            return -EMSGSIZE;
        return (long)n;
    }
}

/* ---- the detector table and INFO ---------------------------------------- */

static int row_index(const shmpool_client *c, const char *name, size_t *row)
{
    size_t i;
    if (name == NULL || name[0] == '\0') {
        *row = 0;
        return c->nrows > 0;
    }
    for (i = 0; i < c->nrows; i++)
        if (strcmp(c->rows[i].name, name) == 0) {
            *row = i;
            return 1;
        }
    return 0;
}

static int row_has_param(const shmpool_detector *r, const char *name)
{
    uint32_t i;
    for (i = 0; i < r->nparams; i++)
        if (strcmp(r->param_names[i], name) == 0)
            return 1;
    return 0;
}

/* Keep only the settings the row also has. */
static void settings_for_row(shmpool_client *c, const shmpool_detector *r)
{
    unsigned i, k = 0;
    for (i = 0; i < c->nset; i++)
        if (row_has_param(r, c->set[i].name))
            c->set[k++] = c->set[i];
    c->nset = k;
}

/* The facts and table of an INFO reply on lane i (2.5). */
static int apply_info(shmpool_client *c, unsigned i, const shmpool_reply *rep)
{
    double version, workers, worker, pid;
    if (rep->nvalues < SHMPOOL_INFO_VALUES)
        return fail(c, -EPROTO, "INFO reply from %s has %u values, expected %d", c->path,
                    (unsigned)rep->nvalues, SHMPOOL_INFO_VALUES);
    version = rep->values[SHMPOOL_INFO_VERSION];
    workers = rep->values[SHMPOOL_INFO_WORKERS];
    worker = rep->values[SHMPOOL_INFO_WORKER];
    pid = rep->values[SHMPOOL_INFO_PID];
    if (version != SHMPOOL_VERSION || !(workers >= 1 && workers <= MAX_LANE_SLOTS) ||
        workers != floor(workers) || !(worker >= 0 && worker < workers) ||
        worker != floor(worker) || !(pid >= 0 && pid < 9.2e18))
        return fail(c, -EPROTO, "INFO reply from %s makes no sense: version %g, workers %g, "
                    "worker %g, pid %g", c->path, version, workers, worker, pid);
    if (c->table == NULL || c->table_len != rep->message_len ||
        memcmp(c->table, rep->message, rep->message_len) != 0) {
        shmpool_detector *rows;
        size_t n = 0;
        char *text;
        int err = shmpool_table_parse(rep->message, rep->message_len, NULL, 0, &n);
        if (err == 0 && n == 0)
            err = -EPROTO;
        if (err != 0)
            return fail(c, -EPROTO, "INFO from %s: malformed detector table (%s): %.*s", c->path,
                        strerror(-err), (int)(rep->message_len > 300 ? 300 : rep->message_len),
                        rep->message);
        rows = (shmpool_detector *)calloc(n, sizeof *rows);
        text = (char *)malloc(rep->message_len + 1);
        if (rows == NULL || text == NULL) {
            free(rows);
            free(text);
            return fail(c, -ENOMEM, "out of memory for the detector table");
        }
        shmpool_table_parse(rep->message, rep->message_len, rows, n, &n);
        memcpy(text, rep->message, rep->message_len);
        text[rep->message_len] = '\0';
        free(c->rows);
        free(c->table);
        c->rows = rows;
        c->nrows = n;
        c->table = text;
        c->table_len = rep->message_len;
        c->row_missing = !row_index(c, c->row_name, &c->row);
        if (!c->row_missing)
            settings_for_row(c, &c->rows[c->row]);
    }
    c->workers = (unsigned)workers;
    if (ensure_slots(c, c->workers) != 0)
        return fail(c, -ENOMEM, "out of memory for %u lanes", c->workers);
    c->lanes[i].worker = (int)worker;
    c->lanes[i].pid = (int64_t)pid;
    return 0;
}

static int lane_recv(shmpool_client *c, unsigned i, long long deadline, shmpool_reply *rep,
                     int connecting);

/* Connect lane i: connect() (EAGAIN retried with backoff until the
 * deadline), SO_PEERCRED, INFO. */
static int lane_connect(shmpool_client *c, unsigned i)
{
    struct sockaddr_un addr;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    long long deadline = now_ms() + (c->timeout_ms > 0 ? c->timeout_ms : CONNECT_DEFAULT_MS);
    unsigned char pkt[SHMPOOL_REQUEST_HEAD_SIZE];
    shmpool_request req;
    shmpool_reply rep;
    int fd, err, backoff = 1, st;

    lane_close(c, i);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, c->path, sizeof addr.sun_path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return fail(c, -errno, "socket: %s", strerror(errno));
    for (;;) {
        int e, left;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
            break;
        e = errno;
        if (e == EINTR)
            continue;
        if (e == EINPROGRESS) { /* not for AF_UNIX today; handled anyway */
            struct pollfd p;
            int soerr = 0, r;
            socklen_t sl = sizeof soerr;
            p.fd = fd;
            p.events = POLLOUT;
            p.revents = 0;
            do
                r = poll(&p, 1, wait_left(deadline));
            while (r < 0 && errno == EINTR);
            if (r == 0)
                e = ETIMEDOUT;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
                e = errno;
            else
                e = soerr;
            if (e == 0)
                break;
        }
        if (e == EAGAIN) { /* the listen backlog is full: back off (2.1) */
            left = wait_left(deadline);
            if (left > 0) {
                sleep_ms(backoff < left ? backoff : left);
                backoff = backoff < 32 ? backoff * 2 : 50;
                continue;
            }
            e = ETIMEDOUT;
        }
        close(fd);
        if (e == ETIMEDOUT)
            return fail(c, -ETIMEDOUT, "cannot connect to %s: its listen backlog stayed full",
                        c->path);
        return fail(c, -e, "cannot connect to %s: %s", c->path, strerror(e));
    }
    /* The server must be us: our segments are 0600 and only our uid may
     * open them, and a stranger squatting on the path must not learn their
     * names (2.1). */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        err = -errno;
        close(fd);
        return fail(c, err, "SO_PEERCRED on %s: %s", c->path, strerror(-err));
    }
    if (cred.uid != geteuid()) {
        close(fd);
        return fail(c, -EPERM, "the server at %s runs as uid %lu, not %lu: refused", c->path,
                    (unsigned long)cred.uid, (unsigned long)geteuid());
    }
    c->lanes[i].fd = fd;
    req = shmpool_request_make(SHMPOOL_OP_INFO);
    req.request_id = c->next_id++;
    shmpool_request_encode(&req, pkt, sizeof pkt);
    err = send_packet(fd, pkt, sizeof pkt, deadline);
    if (err == -EPIPE || err == -ECONNRESET) {
        /* Refused at once (2.1): its BUSY / NOT_PERMITTED reply may be
         * waiting in our receive queue. */
        long n = recv_packet(fd, c->rbuf, sizeof c->rbuf, now_ms() + 1);
        lane_close(c, i);
        if (n > 0 && shmpool_reply_decode(c->rbuf, (size_t)n, &rep) == 0 && rep.status != 0)
            return reply_error(c, &rep);
        return fail(c, -ECONNRESET, "the server at %s closed the connection at once", c->path);
    }
    if (err != 0) {
        lane_close(c, i);
        return fail(c, err, "cannot send INFO to %s: %s", c->path, strerror(-err));
    }
    c->lanes[i].pending = req.request_id;
    st = lane_recv(c, i, deadline_after(c->timeout_ms), &rep, 1);
    if (st < 0)
        return st;
    if (st != SHMPOOL_STATUS_OK) {
        lane_close(c, i);
        return reply_error(c, &rep);
    }
    err = apply_info(c, i, &rep);
    if (err != 0) {
        lane_close(c, i);
        return err;
    }
    return 0;
}

/* Send a packet on lane i, connecting it first if needed.  A lane found
 * closed by its worker (hang-up before, or EPIPE while sending: nothing ran)
 * is reconnected and the packet sent again, once (2.8). */
static int lane_send(shmpool_client *c, unsigned i, uint64_t id, const void *pkt, size_t len,
                     long long deadline)
{
    int attempt, err = 0;
    for (attempt = 0; attempt < 2; attempt++) {
        if (c->lanes[i].fd >= 0 && lane_stale(c->lanes[i].fd))
            lane_close(c, i);
        if (c->lanes[i].fd < 0) {
            err = lane_connect(c, i);
            if (err != 0)
                return err;
        }
        err = send_packet(c->lanes[i].fd, pkt, len, deadline);
        if (err == 0) {
            c->lanes[i].pending = id;
            return 0;
        }
        lane_close(c, i);
        if (err != -EPIPE && err != -ECONNRESET)
            break;
    }
    return fail(c, err, "cannot send to %s (lane %u): %s", c->path, i, strerror(-err));
}

/* Receive the reply to lane i's pending request.  Returns its status (the
 * reply decoded in *rep, texts in c->rbuf until the next receive) or a
 * negative errno / WORKER_DIED, recorded as the call's error.  A lane that
 * fails is closed. */
static int lane_recv(shmpool_client *c, unsigned i, long long deadline, shmpool_reply *rep,
                     int connecting)
{
    uint64_t want = c->lanes[i].pending;
    int worker = c->lanes[i].worker;
    long long pid = (long long)c->lanes[i].pid;
    long n;
    int err;

    memset(rep, 0, sizeof *rep);
    n = recv_packet(c->lanes[i].fd, c->rbuf, sizeof c->rbuf, deadline);
    if (n <= 0) {
        lane_close(c, i);
        if (n == -ETIMEDOUT)
            return fail(c, -ETIMEDOUT, "no reply from %s (lane %u) within %d ms; connection "
                        "closed", c->path, i, c->timeout_ms);
        if (n == 0 || n == -ECONNRESET) {
            if (connecting)
                return fail(c, -ECONNRESET, "the server at %s closed the connection before "
                            "answering INFO", c->path);
            return fail(c, SHMPOOL_STATUS_WORKER_DIED, "worker %d (pid %lld) of %s closed the "
                        "connection during request %llu: it died, or the server stopped",
                        worker, pid, c->path, (unsigned long long)want);
        }
        return fail(c, (int)n, "receive from %s (lane %u): %s", c->path, i, strerror((int)-n));
    }
    err = shmpool_reply_decode(c->rbuf, (size_t)n, rep);
    if (err == -EPROTONOSUPPORT) {
        lane_close(c, i);
        if (rep->status == SHMPOOL_STATUS_BAD_VERSION)
            return fail(c, SHMPOOL_STATUS_BAD_VERSION, "the worker at %s speaks layout v%u, not "
                        "v%d", c->path, (unsigned)rep->version, SHMPOOL_VERSION);
        return fail(c, -EPROTO, "the worker at %s answered in layout v%u (status %u); this "
                    "host speaks v%d", c->path, (unsigned)rep->version, (unsigned)rep->status,
                    SHMPOOL_VERSION);
    }
    if (err != 0) {
        lane_close(c, i);
        return fail(c, -EPROTO, "malformed reply (%ld bytes) from %s", n, c->path);
    }
    if (rep->request_id != want) {
        if (rep->request_id == 0 &&
            (rep->status == SHMPOOL_STATUS_BUSY || rep->status == SHMPOOL_STATUS_NOT_PERMITTED ||
             rep->status == SHMPOOL_STATUS_BAD_VERSION ||
             rep->status == SHMPOOL_STATUS_BAD_MESSAGE)) {
            /* A refused connection (2.1) or an unreadable request: the
             * error of the outstanding request; the connection is done. */
            lane_close(c, i);
            return reply_error(c, rep);
        }
        lane_close(c, i);
        return fail(c, -EPROTO, "reply for request %llu from %s, expected %llu",
                    (unsigned long long)rep->request_id, c->path, (unsigned long long)want);
    }
    c->lanes[i].pending = 0;
    /* After TIMEOUT the worker exits, and after SHUTTING_DOWN it closes its
     * connections (2.8): done with this lane; the next call reconnects. */
    if (rep->status == SHMPOOL_STATUS_TIMEOUT || rep->status == SHMPOOL_STATUS_SHUTTING_DOWN)
        lane_close(c, i);
    return rep->status;
}

/* Encode *req (with a fresh request_id) and exchange it on lane i. */
static int exchange(shmpool_client *c, unsigned i, shmpool_request *req, shmpool_reply *rep)
{
    long n;
    int err;
    req->request_id = c->next_id++;
    n = shmpool_request_encode(req, c->sbuf, sizeof c->sbuf);
    if (n < 0)
        return fail(c, (int)n, "cannot encode the request: %s", strerror((int)-n));
    err = lane_send(c, i, req->request_id, c->sbuf, (size_t)n, deadline_after(c->timeout_ms));
    if (err != 0)
        return err;
    return lane_recv(c, i, deadline_after(c->timeout_ms), rep, 0);
}

/* ---- dial / close / options --------------------------------------------- */

int shmpool_socket_path(char *buf, size_t size)
{
    const char *env = getenv("SHMPOOL_SOCKET");
    int n;
    if (buf == NULL || size == 0)
        return -EINVAL;
    if (env != NULL && env[0] != '\0')
        n = snprintf(buf, size, "%s", env);
    else
        n = snprintf(buf, size, "/tmp/shmpool-%lu.sock", (unsigned long)getuid());
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int shmpool_dial_timeout(const char *path, int timeout_ms, shmpool_client **out)
{
    shmpool_client *c;
    char def[sizeof c->path];
    int err;

    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (path == NULL || path[0] == '\0') {
        err = shmpool_socket_path(def, sizeof def);
        if (err != 0)
            return err;
        path = def;
    }
    if (strlen(path) >= sizeof c->path)
        return -ENAMETOOLONG;
    c = (shmpool_client *)calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    strcpy(c->path, path);
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
    c->next_id = 1;
    c->nan_policy = SHMPOOL_POLICY_DEFAULT;
    err = ensure_slots(c, 1);
    if (err == 0)
        err = lane_connect(c, 0);
    if (err != 0) {
        shmpool_close(c);
        return err;
    }
    *out = c;
    return 0;
}

int shmpool_dial(const char *path, shmpool_client **out)
{
    return shmpool_dial_timeout(path, 0, out);
}

void shmpool_close(shmpool_client *c)
{
    unsigned i;
    if (c == NULL)
        return;
    for (i = 0; i < c->nlanes; i++) {
        lane_close(c, i);
        shmpool_segment_destroy(c->lanes[i].result);
    }
    shmpool_segment_destroy(c->data);
    free(c->lanes);
    free(c->rows);
    free(c->table);
    free(c);
}

int shmpool_set_detector(shmpool_client *c, const char *name)
{
    size_t row;
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
    if (!row_index(c, name, &row))
        return fail(c, -EINVAL, "the server at %s has no detector '%s' (INFO: %s)", c->path,
                    name ? name : "", c->table ? c->table : "");
    if (name != NULL && strlen(name) >= sizeof c->row_name)
        return fail(c, -ENAMETOOLONG, "detector name too long");
    snprintf(c->row_name, sizeof c->row_name, "%s", name ? name : "");
    c->row = row;
    c->row_missing = 0;
    settings_for_row(c, &c->rows[row]);
    return 0;
}

static setting_t *find_setting(const shmpool_client *c, const char *name)
{
    unsigned i;
    for (i = 0; i < c->nset; i++)
        if (strcmp(c->set[i].name, name) == 0)
            return (setting_t *)&c->set[i];
    return NULL;
}

int shmpool_set_param(shmpool_client *c, const char *name, double value)
{
    setting_t *s;
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
    if (name == NULL || c->row_missing || c->row >= c->nrows ||
        !row_has_param(&c->rows[c->row], name))
        return fail(c, -EINVAL, "detector '%s' has no parameter '%s'",
                    c->row < c->nrows ? c->rows[c->row].name : "?", name ? name : "(null)");
    s = find_setting(c, name);
    if (isnan(value)) {
        if (s != NULL)
            *s = c->set[--c->nset];
        return 0;
    }
    if (s == NULL) {
        s = &c->set[c->nset++]; /* a row has at most MAX_PARAMS names */
        snprintf(s->name, sizeof s->name, "%s", name);
    }
    s->value = value;
    return 0;
}

double shmpool_get_param(const shmpool_client *c, const char *name)
{
    const setting_t *s;
    if (c == NULL || name == NULL)
        return NAN;
    s = find_setting(c, name);
    return s ? s->value : NAN;
}

int shmpool_set_threshold(shmpool_client *c, double k)
{
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
    if (!isnan(k) && !(k >= 0.0 && k < INFINITY))
        return fail(c, -EINVAL, "threshold must be NaN (the default) or finite and >= 0");
    if (isnan(k) && find_setting(c, "threshold") == NULL)
        return 0;
    return shmpool_set_param(c, "threshold", k);
}

int shmpool_set_nan_policy(shmpool_client *c, uint32_t policy)
{
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
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

int shmpool_set_lanes(shmpool_client *c, unsigned max_lanes)
{
    if (c == NULL)
        return -EINVAL;
    c->max_lanes = max_lanes;
    return 0;
}

/* ---- facts -------------------------------------------------------------- */

int shmpool_info(shmpool_client *c, shmpool_server_info *out)
{
    shmpool_request req = shmpool_request_make(SHMPOOL_OP_INFO);
    shmpool_reply rep;
    int st;
    if (out)
        memset(out, 0, sizeof *out);
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
    st = exchange(c, 0, &req, &rep);
    if (st < 0)
        return st;
    if (st != SHMPOOL_STATUS_OK)
        return reply_error(c, &rep);
    st = apply_info(c, 0, &rep);
    if (st != 0) {
        lane_close(c, 0);
        return st;
    }
    if (out) {
        out->version = (uint32_t)rep.values[SHMPOOL_INFO_VERSION];
        out->workers = (uint32_t)rep.values[SHMPOOL_INFO_WORKERS];
        out->worker = (uint32_t)rep.values[SHMPOOL_INFO_WORKER];
        out->pid = (int64_t)rep.values[SHMPOOL_INFO_PID];
        out->nan_policy = (uint32_t)rep.values[SHMPOOL_INFO_NAN_POLICY];
        out->n_detectors = c->nrows;
    }
    return 0;
}

size_t shmpool_detector_count(const shmpool_client *c) { return c ? c->nrows : 0; }

const shmpool_detector *shmpool_detector_at(const shmpool_client *c, size_t row)
{
    return c && row < c->nrows ? &c->rows[row] : NULL;
}

size_t shmpool_detector_row(const shmpool_client *c) { return c ? c->row : 0; }
unsigned shmpool_workers(const shmpool_client *c) { return c ? c->workers : 0; }
unsigned shmpool_lane_count(const shmpool_client *c) { return c ? c->nlanes : 0; }
unsigned shmpool_last_chunks(const shmpool_client *c) { return c ? c->last_chunks : 0; }

int shmpool_lane_worker(const shmpool_client *c, unsigned lane)
{
    if (c == NULL || lane >= c->nlanes || c->lanes[lane].fd < 0)
        return -1;
    return c->lanes[lane].worker;
}

int64_t shmpool_lane_pid(const shmpool_client *c, unsigned lane)
{
    if (c == NULL || lane >= c->nlanes || c->lanes[lane].fd < 0)
        return -1;
    return c->lanes[lane].pid;
}

int shmpool_open_lanes(shmpool_client *c, unsigned n)
{
    unsigned i;
    int err;
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
    if (n > c->workers)
        n = c->workers;
    err = ensure_slots(c, n);
    if (err != 0)
        return fail(c, err, "cannot hold %u lanes", n);
    for (i = 0; i < n; i++) {
        if (c->lanes[i].fd >= 0 && lane_stale(c->lanes[i].fd))
            lane_close(c, i);
        if (c->lanes[i].fd < 0) {
            err = lane_connect(c, i);
            if (err != 0)
                return err;
        }
    }
    return 0;
}

/* ---- calls -------------------------------------------------------------- */

int shmpool_roundtrip_lane(shmpool_client *c, unsigned lane, shmpool_request *req,
                           shmpool_reply *rep)
{
    int st;
    if (c == NULL || req == NULL || rep == NULL)
        return -EINVAL;
    memset(rep, 0, sizeof *rep);
    clear_error(c);
    if (lane >= MAX_LANE_SLOTS)
        return fail(c, -EINVAL, "lane %u out of range", lane);
    st = ensure_slots(c, lane + 1);
    if (st != 0)
        return fail(c, st, "cannot hold %u lanes", lane + 1);
    st = exchange(c, lane, req, rep);
    if (st > 0)
        reply_error(c, rep);
    return st;
}

int shmpool_roundtrip(shmpool_client *c, shmpool_request *req, shmpool_reply *rep)
{
    return shmpool_roundtrip_lane(c, 0, req, rep);
}

int shmpool_ping(shmpool_client *c)
{
    shmpool_request req = shmpool_request_make(SHMPOOL_OP_PING);
    shmpool_reply rep;
    return shmpool_roundtrip(c, &req, &rep);
}

/* The request fields every op of a call shares. */
static void call_request(const shmpool_client *c, shmpool_request *req, uint16_t op,
                         const shmpool_segment *data)
{
    const shmpool_detector *r = &c->rows[c->row];
    uint32_t i;
    *req = shmpool_request_make(op);
    req->detector = (uint32_t)c->row;
    req->nan_policy = c->nan_policy;
    req->nparams = r->nparams;
    for (i = 0; i < r->nparams; i++) {
        const setting_t *s = find_setting(c, r->param_names[i]);
        req->params[i] = s ? s->value : NAN;
    }
    if (data != NULL)
        memcpy(req->data_name, data->name, sizeof data->name);
}

static int ensure_result(shmpool_client *c, unsigned lane, uint64_t chunk)
{
    int err;
    if (c->lanes[lane].result != NULL)
        return 0;
    err = shmpool_result_create((chunk < ((uint64_t)1 << 40) ? chunk / 32 : 0) + 64,
                                &c->lanes[lane].result);
    if (err != 0)
        return fail(c, err, "creating a result segment: %s", strerror(-err));
    return 0;
}

static int grow_result(shmpool_client *c, unsigned lane, uint64_t needed)
{
    int err = shmpool_segment_grow(&c->lanes[lane].result, needed + needed / 4 + 64);
    if (err != 0)
        return fail(c, err, "growing a result segment to %llu indices: %s",
                    (unsigned long long)needed, strerror(-err));
    return 0;
}

static int copy_out(shmpool_client *c, const int64_t *src, uint64_t n, int64_t **indices)
{
    int64_t *out;
    *indices = NULL;
    if (n == 0)
        return 0;
    if (n > SIZE_MAX / sizeof(int64_t))
        return fail(c, -ENOMEM, "result too large");
    out = (int64_t *)malloc((size_t)n * sizeof(int64_t));
    if (out == NULL)
        return fail(c, -ENOMEM, "out of memory for %llu indices", (unsigned long long)n);
    memcpy(out, src, (size_t)n * sizeof(int64_t));
    *indices = out;
    return 0;
}

/* A whole call: DETECT on lane 0. */
static int call_whole(shmpool_client *c, shmpool_segment *data, uint64_t start, uint64_t count,
                      shmpool_segment *user, int64_t **indices, uint64_t *n_out,
                      uint64_t *needed_out)
{
    int attempt;
    for (attempt = 0;; attempt++) {
        shmpool_segment *out = user;
        shmpool_request req;
        shmpool_reply rep;
        int st;
        if (out == NULL) {
            st = ensure_result(c, 0, count);
            if (st != 0)
                return st;
            out = c->lanes[0].result;
        }
        call_request(c, &req, SHMPOOL_OP_DETECT, data);
        req.start = start;
        req.count = count;
        memcpy(req.out_name, out->name, sizeof out->name);
        st = exchange(c, 0, &req, &rep);
        if (st < 0)
            return st;
        if (st == SHMPOOL_STATUS_OK) {
            if (rep.count != rep.needed || rep.count > out->capacity) {
                lane_close(c, 0);
                return fail(c, -EPROTO, "worker claims %llu indices (needed %llu) in a result "
                            "segment of capacity %llu", (unsigned long long)rep.count,
                            (unsigned long long)rep.needed, (unsigned long long)out->capacity);
            }
            *n_out = rep.count;
            *needed_out = rep.needed;
            if (indices != NULL)
                return copy_out(c, shmpool_result_indices(out), rep.count, indices);
            return 0;
        }
        if (st != SHMPOOL_STATUS_TOO_SMALL)
            return reply_error(c, &rep);
        if (rep.needed <= out->capacity) {
            lane_close(c, 0);
            return fail(c, -EPROTO, "TOO_SMALL for %llu indices in a result segment of "
                        "capacity %llu", (unsigned long long)rep.needed,
                        (unsigned long long)out->capacity);
        }
        *needed_out = rep.needed;
        if (user != NULL || attempt + 1 >= GROW_ATTEMPTS)
            return reply_error(c, &rep);
        st = grow_result(c, 0, rep.needed);
        if (st != 0)
            return st;
    }
}

/* Receive the pending replies of lanes 0 .. k-1 of one phase, calling
 * `take` for each (in chunk order); a lane without a pending request is
 * skipped.  Returns the call's error (the first by chunk order) or 0. */
typedef int (*take_fn)(shmpool_client *c, unsigned i, int st, shmpool_reply *rep, void *ctx);

static int gather(shmpool_client *c, unsigned k, take_fn take, void *ctx)
{
    long long deadline = deadline_after(c->timeout_ms);
    unsigned i;
    for (i = 0; i < k; i++) {
        shmpool_reply rep;
        int st;
        if (c->lanes[i].pending == 0 || c->lanes[i].fd < 0)
            continue;
        st = lane_recv(c, i, deadline, &rep, 0);
        if (st >= 0)
            take(c, i, st, &rep, ctx);
    }
    return c->err_set ? c->last_status : 0;
}

typedef struct split_call {
    uint64_t *b;           /* chunk bounds, k + 1 */
    uint32_t size;         /* summary_size */
    double *sums;          /* k * size */
    uint64_t *got;         /* FLAG: indices of chunk i (valid when !todo[i]) */
    unsigned char *todo;   /* FLAG: chunk i still to ask */
} split_call;

static int take_summary(shmpool_client *c, unsigned i, int st, shmpool_reply *rep, void *ctx)
{
    split_call *sc = (split_call *)ctx;
    if (st != SHMPOOL_STATUS_OK)
        return reply_error(c, rep);
    if (rep->nvalues != sc->size) {
        lane_close(c, i);
        return fail(c, -EPROTO, "SUMMARIZE reply with %u values; the detector's summary_size "
                    "is %u", (unsigned)rep->nvalues, (unsigned)sc->size);
    }
    memcpy(sc->sums + (size_t)i * sc->size, rep->values, sc->size * sizeof(double));
    return 0;
}

static int take_flag(shmpool_client *c, unsigned i, int st, shmpool_reply *rep, void *ctx)
{
    split_call *sc = (split_call *)ctx;
    uint64_t cap = c->lanes[i].result->capacity;
    if (st == SHMPOOL_STATUS_OK) {
        if (rep->count != rep->needed || rep->count > cap ||
            rep->count > sc->b[i + 1] - sc->b[i]) {
            lane_close(c, i);
            return fail(c, -EPROTO, "FLAG reply claims %llu indices (needed %llu) for a chunk "
                        "of %llu in a result segment of capacity %llu",
                        (unsigned long long)rep->count, (unsigned long long)rep->needed,
                        (unsigned long long)(sc->b[i + 1] - sc->b[i]),
                        (unsigned long long)cap);
        }
        sc->got[i] = rep->count;
        sc->todo[i] = 0;
        return 0;
    }
    if (st != SHMPOOL_STATUS_TOO_SMALL)
        return reply_error(c, rep);
    if (rep->needed <= cap) {
        lane_close(c, i);
        return fail(c, -EPROTO, "TOO_SMALL for %llu indices in a result segment of capacity "
                    "%llu", (unsigned long long)rep->needed, (unsigned long long)cap);
    }
    return grow_result(c, i, rep->needed);
}

/* A split call (section 5) over k chunks on lanes 0 .. k-1. */

/* Send chunk i's request *req (op, names, params already set): its range
 * and base from the split bounds b, a new request id.  0, or nonzero after
 * recording why (the caller then gathers what was sent). */
static int send_chunk(shmpool_client *c, unsigned i, shmpool_request *req, const uint64_t *b,
                      uint64_t start, const char *what)
{
    long n;
    req->start = start + b[i];
    req->count = b[i + 1] - b[i];
    req->base = b[i];
    req->request_id = c->next_id++;
    n = shmpool_request_encode(req, c->sbuf, sizeof c->sbuf);
    if (n < 0) {
        fail(c, (int)n, "cannot encode %s", what);
        return -1;
    }
    return lane_send(c, i, req->request_id, c->sbuf, (size_t)n, deadline_after(c->timeout_ms));
}

static int call_split(shmpool_client *c, shmpool_segment *data, uint64_t start, uint64_t count,
                      unsigned k, shmpool_segment *user, int64_t **indices, uint64_t *n_out,
                      uint64_t *needed_out)
{
    const uint32_t size = c->rows[c->row].summary_size;
    split_call sc;
    shmpool_request req;
    shmpool_reply rep;
    double flagp[SHMPOOL_MAX_PARAMS];
    uint32_t nflag;
    uint64_t total = 0;
    unsigned i, round;
    int st;

    memset(&sc, 0, sizeof sc);
    sc.size = size;
    sc.b = (uint64_t *)malloc((k + 1) * sizeof *sc.b);
    sc.sums = (double *)malloc((size_t)k * size * sizeof *sc.sums);
    sc.got = (uint64_t *)calloc(k, sizeof *sc.got);
    sc.todo = (unsigned char *)malloc(k);
    if (sc.b == NULL || sc.sums == NULL || sc.got == NULL || sc.todo == NULL) {
        st = fail(c, -ENOMEM, "out of memory");
        goto out;
    }
    st = ensure_slots(c, k);
    if (st != 0) {
        st = fail(c, st, "cannot hold %u lanes", k);
        goto out;
    }
    for (i = 0; i <= k; i++)
        sc.b[i] = shmpool_split_bound(count, k, i);

    /* Phase 1 (5.3): every SUMMARIZE is sent before any reply is read, so
     * that the workers run in parallel. */
    for (i = 0; i < k; i++) {
        call_request(c, &req, SHMPOOL_OP_SUMMARIZE, data);
        if (send_chunk(c, i, &req, sc.b, start, "SUMMARIZE") != 0)
            break;
    }
    st = gather(c, k, take_summary, &sc);
    if (st != 0)
        goto out;

    /* Combine once (5.4), on lane 0. */
    call_request(c, &req, SHMPOOL_OP_COMBINE, NULL);
    req.count = k;
    req.nvalues = k * size;
    req.values = sc.sums;
    st = exchange(c, 0, &req, &rep);
    if (st < 0)
        goto out;
    if (st != SHMPOOL_STATUS_OK) {
        st = reply_error(c, &rep);
        goto out;
    }
    if (rep.nvalues > SHMPOOL_MAX_PARAMS) {
        lane_close(c, 0);
        st = fail(c, -EPROTO, "COMBINE returned %u flag parameters; at most %d fit a request",
                  (unsigned)rep.nvalues, SHMPOOL_MAX_PARAMS);
        goto out;
    }
    nflag = rep.nvalues;
    if (nflag == 0) { /* nothing can be flagged: the answer is empty */
        *n_out = *needed_out = 0;
        if (user != NULL)
            result_set_header(user, 0, SHMPOOL_STATUS_OK, 0);
        else
            *indices = NULL;
        st = 0;
        goto out;
    }
    memcpy(flagp, rep.values, nflag * sizeof(double));

    /* Phase 2 (5.5): FLAG per chunk into the lane's own result segment; a
     * chunk that answers TOO_SMALL is asked again with a bigger one. */
    memset(sc.todo, 1, k);
    for (round = 0;; round++) {
        int left = 0;
        for (i = 0; i < k; i++) {
            if (!sc.todo[i])
                continue;
            if (ensure_result(c, i, sc.b[i + 1] - sc.b[i]) != 0)
                break;
            call_request(c, &req, SHMPOOL_OP_FLAG, data);
            req.nparams = nflag;
            memcpy(req.params, flagp, nflag * sizeof(double));
            memcpy(req.out_name, c->lanes[i].result->name, sizeof req.out_name - 1);
            if (send_chunk(c, i, &req, sc.b, start, "FLAG") != 0)
                break;
        }
        st = gather(c, k, take_flag, &sc);
        if (st != 0)
            goto out;
        for (i = 0; i < k; i++)
            left += sc.todo[i];
        if (left == 0)
            break;
        if (round + 1 >= GROW_ATTEMPTS) {
            st = fail(c, -EAGAIN, "the answer kept outgrowing the result segments");
            goto out;
        }
    }

    /* Assemble (5.6): chunk order; each chunk's indices ascending within it. */
    for (i = 0; i < k; i++) {
        const int64_t *v = shmpool_result_indices(c->lanes[i].result);
        uint64_t j;
        for (j = 0; j < sc.got[i]; j++) {
            if (v[j] < (int64_t)sc.b[i] || v[j] >= (int64_t)sc.b[i + 1] ||
                (j > 0 && v[j] <= v[j - 1])) {
                st = fail(c, -EPROTO, "worker %d wrote index %lld at %llu, outside chunk "
                          "[%llu, %llu) or out of order", c->lanes[i].worker, (long long)v[j],
                          (unsigned long long)j, (unsigned long long)sc.b[i],
                          (unsigned long long)sc.b[i + 1]);
                goto out;
            }
        }
        total += sc.got[i];
    }
    *needed_out = total;
    if (user != NULL) {
        int64_t *dst = (int64_t *)(void *)(user->base + SHMPOOL_HEADER_SIZE);
        if (total > user->capacity) {
            result_set_header(user, 0, SHMPOOL_STATUS_TOO_SMALL, total);
            st = fail(c, SHMPOOL_STATUS_TOO_SMALL, "the answer has %llu indices; the result "
                      "segment holds %llu", (unsigned long long)total,
                      (unsigned long long)user->capacity);
            goto out;
        }
        for (i = 0; i < k; i++) {
            if (sc.got[i])
                memcpy(dst, shmpool_result_indices(c->lanes[i].result),
                       (size_t)sc.got[i] * sizeof(int64_t));
            dst += sc.got[i];
        }
        result_set_header(user, total, SHMPOOL_STATUS_OK, total);
    } else if (total > 0) {
        int64_t *dst;
        if (total > SIZE_MAX / sizeof(int64_t) ||
            (dst = (int64_t *)malloc((size_t)total * sizeof(int64_t))) == NULL) {
            st = fail(c, -ENOMEM, "out of memory for %llu indices", (unsigned long long)total);
            goto out;
        }
        *indices = dst;
        for (i = 0; i < k; i++) {
            if (sc.got[i])
                memcpy(dst, shmpool_result_indices(c->lanes[i].result),
                       (size_t)sc.got[i] * sizeof(int64_t));
            dst += sc.got[i];
        }
    }
    *n_out = total;
    st = 0;
out:
    free(sc.b);
    free(sc.sums);
    free(sc.got);
    free(sc.todo);
    return st;
}

/* A detect call: whole on lane 0, or split (5) on a split row of at least
 * SPLIT_MIN values when more than one lane may be used. */
static int run_call(shmpool_client *c, shmpool_segment *data, uint64_t start, uint64_t count,
                    shmpool_segment *user, int64_t **indices, uint64_t *n_out,
                    uint64_t *needed_out)
{
    const shmpool_detector *r;
    uint64_t lanes, k;

    if (data == NULL || data->kind != SHMPOOL_KIND_DATA ||
        (user != NULL && user->kind != SHMPOOL_KIND_RESULT))
        return fail(c, -EINVAL, "detect needs a data segment (and a result segment)");
    if (c->row_missing || c->row >= c->nrows)
        return fail(c, -ESTALE, "the server's detector table no longer has '%s'; choose "
                    "another with shmpool_set_detector", c->row_name);
    r = &c->rows[c->row];
    lanes = c->workers;
    if (c->max_lanes > 0 && c->max_lanes < lanes)
        lanes = c->max_lanes;
    if (r->summary_size > 0 && lanes > SHMPOOL_MAX_REQUEST_VALUES / r->summary_size)
        lanes = SHMPOOL_MAX_REQUEST_VALUES / r->summary_size;
    k = r->split && r->summary_size > 0 ? shmpool_split_count(count, lanes) : 1;
    c->last_chunks = (unsigned)k;
    if (k <= 1)
        return call_whole(c, data, start, count, user, indices, n_out, needed_out);
    return call_split(c, data, start, count, (unsigned)k, user, indices, n_out, needed_out);
}

int shmpool_detect_into(shmpool_client *c, shmpool_segment *data,
                        uint64_t start, uint64_t count, shmpool_segment *result,
                        uint64_t *n_indices, uint64_t *needed)
{
    uint64_t n = 0, need = 0;
    int st;
    if (n_indices)
        *n_indices = 0;
    if (needed)
        *needed = 0;
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
    if (result == NULL)
        return fail(c, -EINVAL, "detect_into needs a result segment");
    st = run_call(c, data, start, count, result, NULL, &n, &need);
    if (needed && (st == 0 || st == SHMPOOL_STATUS_TOO_SMALL))
        *needed = need;
    if (st == 0 && n_indices)
        *n_indices = n;
    return st;
}

int shmpool_detect_segment(shmpool_client *c, shmpool_segment *data,
                           uint64_t start, uint64_t count,
                           int64_t **indices, size_t *n_indices)
{
    uint64_t n = 0, need = 0;
    int64_t *idx = NULL;
    int st;
    if (indices)
        *indices = NULL;
    if (n_indices)
        *n_indices = 0;
    if (c == NULL)
        return -EINVAL;
    clear_error(c);
    if (indices == NULL || n_indices == NULL)
        return fail(c, -EINVAL, "indices and n_indices must not be NULL");
    st = run_call(c, data, start, count, NULL, &idx, &n, &need);
    if (st != 0) {
        free(idx);
        return st;
    }
    *indices = idx;
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
    clear_error(c);
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
