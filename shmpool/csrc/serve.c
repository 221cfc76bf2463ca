/* The worker's request loop.
 *
 *     supervisor ──ctrl──┐                      ┌── reply ──> host
 *     host conn 1 ───────┤ poll ─> recv ─> classic detector? ─ yes: cache, kernel
 *     host conn N ───────┘                      └─ no: hand the packet to Python
 *
 * Runs without the GIL.  It answers by itself what the classic detector
 * needs on the hot path (PING, DETECT, SUMMARIZE, FLAG on a classic row,
 * with every check of docs/LAYOUT.md 2.6 passing); anything else (other
 * ops, user detectors, every error, non-finite data) goes back to Python as
 * EV_REQUEST with the packet, and Python answers it with the same cache.  A
 * watchdog thread ends the process when the supervisor's control socket
 * closes, even in the middle of a call, and enforces the server's timeout.
 */
#define _GNU_SOURCE 1
#include "serve.h"
#include "kernel.h"
#include "proto.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SWEEP_NS 1000000000LL   /* unmap unlinked segments about once a second */
#define SEND_WAIT_MS 5000       /* a host that reads no replies this long is dropped */
#define EXIT_TIMEOUT 124

int64_t serve_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int serve_init(serve_loop *l, int ctrl, cache *c, size_t max_request)
{
    memset(l, 0, sizeof *l);
    l->ctrl = ctrl;
    l->cache = c;
    l->reqcap = max_request + 1;   /* one byte more: an oversize packet shows */
    l->req = malloc(l->reqcap);
    l->rep = malloc(P_MAX_REPLY);
    atomic_store(&l->cur_fd, -1);
    l->next_sweep_ns = serve_now_ns() + SWEEP_NS;
    return l->req && l->rep ? 0 : -1;
}

void serve_free(serve_loop *l)
{
    free(l->req);
    free(l->rep);
    free(l->conns);
    free(l->rows);
    l->req = l->rep = NULL;
    l->conns = NULL;
    l->rows = NULL;
}

int serve_add(serve_loop *l, int fd, long tag)
{
    if (l->nconns == l->capconns) {
        int cap = l->capconns ? 2 * l->capconns : 8;
        serve_conn *c = realloc(l->conns, (size_t)cap * sizeof *c);
        if (c == NULL)
            return -1;
        l->conns = c;
        l->capconns = cap;
    }
    l->conns[l->nconns++] = (serve_conn){fd, tag};
    return 0;
}

long serve_remove(serve_loop *l, int fd)
{
    for (int i = 0; i < l->nconns; i++)
        if (l->conns[i].fd == fd) {
            long tag = l->conns[i].tag;
            l->conns[i] = l->conns[--l->nconns];
            return tag;
        }
    return -1;
}

void serve_begin(serve_loop *l, int fd, uint64_t rid)
{
    atomic_store(&l->cur_rid, rid);
    atomic_store(&l->cur_start_ns, serve_now_ns());
    atomic_store(&l->cur_fd, fd);
}

static int send_all(int fd, const void *buf, size_t len)
{
    for (;;) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -1;
        struct pollfd p = {fd, POLLOUT, 0};
        int r = poll(&p, 1, SEND_WAIT_MS);
        if (r == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

int serve_reply(serve_loop *l, int fd, const void *buf, size_t len)
{
    int mine = atomic_exchange(&l->cur_fd, -1);
    if (mine < 0 && l->timeout > 0 && atomic_load(&l->cur_start_ns) != 0) {
        for (;;)
            pause();              /* the watchdog answered TIMEOUT and is ending us */
    }
    atomic_store(&l->cur_start_ns, 0);
    return send_all(fd, buf, len);
}

/* ---- the watchdog ---------------------------------------------------------- */

static size_t timeout_reply(unsigned char *b, uint64_t rid, double limit)
{
    char msg[160];
    static const char type[] = "DetectTimeout";
    int mlen = snprintf(msg, sizeof msg, "the call ran longer than the server's limit of %g s; "
                        "its worker was stopped and will be replaced", limit);
    memset(b, 0, P_REPLY_HEAD_SIZE);
    wr32(b, P_REPLY_MAGIC);
    wr16(b + 4, P_VERSION);
    wr16(b + 6, P_STATUS_TIMEOUT);
    wr64(b + 8, rid);
    wr32(b + 32, sizeof type - 1);
    wr32(b + 36, (uint32_t)mlen);
    memcpy(b + P_REPLY_HEAD_SIZE, type, sizeof type - 1);
    memcpy(b + P_REPLY_HEAD_SIZE + sizeof type - 1, msg, (size_t)mlen);
    return P_REPLY_HEAD_SIZE + sizeof type - 1 + (size_t)mlen;
}

static void *watchdog(void *arg)
{
    serve_loop *l = arg;
    unsigned char buf[P_REPLY_HEAD_SIZE + 200];
    for (;;) {
        struct pollfd p = {l->ctrl, 0, 0};          /* no events: hang-up only */
        int wait = l->timeout > 0 ? 50 : -1;
        if (poll(&p, 1, wait) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
            _exit(0);                                /* the supervisor is gone */
        int64_t start = atomic_load(&l->cur_start_ns);
        if (l->timeout > 0 && start != 0 && serve_now_ns() - start > (int64_t)(l->timeout * 1e9)) {
            int fd = atomic_exchange(&l->cur_fd, -1);
            if (fd >= 0) {
                size_t n = timeout_reply(buf, atomic_load(&l->cur_rid), l->timeout);
                send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
                _exit(EXIT_TIMEOUT);
            }
        }
    }
    return NULL;
}

int serve_start_watchdog(serve_loop *l)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 1 << 16);
    int r = pthread_create(&t, &a, watchdog, l);
    pthread_attr_destroy(&a);
    return r;
}

/* ---- native requests ------------------------------------------------------- */

static size_t reply_head(unsigned char *b, uint16_t status, uint64_t rid, uint64_t count,
                         uint64_t needed, uint32_t nvalues)
{
    memset(b, 0, P_REPLY_HEAD_SIZE);
    wr32(b, P_REPLY_MAGIC);
    wr16(b + 4, P_VERSION);
    wr16(b + 6, status);
    wr64(b + 8, rid);
    wr64(b + 16, count);
    wr64(b + 24, needed);
    wr32(b + 44, nvalues);
    return P_REPLY_HEAD_SIZE + 8 * (size_t)nvalues;
}

/* A name field: NUL-terminated within 64 bytes, NUL padding, a valid name. */
static int name_field(const unsigned char *f, char *out)
{
    size_t n = strnlen((const char *)f, P_NAME_SIZE);
    if (n == P_NAME_SIZE)
        return -1;
    for (size_t i = n; i < P_NAME_SIZE; i++)
        if (f[i] != 0)
            return -1;
    memcpy(out, f, n + 1);
    return cache_valid_name(out) ? 0 : -1;
}

/* The data range of a request, or NULL (the Python path reports why). */
static const double *data_range(serve_loop *l, const char *name, long tag, uint64_t start,
                                uint64_t count, mapping **found)
{
    cache_error e;
    mapping *d = cache_get(l->cache, name, P_KIND_DATA, tag, &e);
    if (found != NULL)
        *found = d;
    if (d == NULL)
        return NULL;
    uint64_t valid = cache_count(d), cap = cache_capacity(d);
    if (valid > cap)
        valid = cap;
    if (start > valid || count > valid - start)
        return NULL;
    return (const double *)(d->base + P_HEADER_SIZE) + start;
}

/* The result header and the reply for an answer of `total` indices already
 * written to the region when they fit; returns the reply's length. */
static size_t result_reply(serve_loop *l, mapping *out, uint64_t rid, size_t total)
{
    uint64_t cap = cache_capacity(out);
    if (total <= cap) {
        cache_set_result(out, total, P_STATUS_OK, total);
        return reply_head(l->rep, P_STATUS_OK, rid, total, total, 0);
    }
    cache_set_result(out, 0, P_STATUS_TOO_SMALL, total);
    size_t len = reply_head(l->rep, P_STATUS_TOO_SMALL, rid, 0, total, 0);
    static const char type[] = "ResultTooSmall";
    int m = snprintf((char *)l->rep + len + sizeof type - 1, 300,
                     "the answer has %zu indices; the result segment '%s' holds %llu; its count "
                     "is 0 and its region's contents are unspecified", total, out->name,
                     (unsigned long long)cap);
    memcpy(l->rep + len, type, sizeof type - 1);
    wr32(l->rep + 32, sizeof type - 1);
    wr32(l->rep + 36, (uint32_t)m);
    return len + sizeof type - 1 + (size_t)m;
}

/* Flag x into the result mapping and build the reply; returns its length. */
static size_t flag_reply(serve_loop *l, mapping *out, uint64_t rid, const double *x, uint64_t n,
                         double mean, double cut, uint64_t base)
{
    size_t total = kernel_flag(x, n, mean, cut, (int64_t)base,
                               (int64_t *)(out->base + P_HEADER_SIZE), cache_capacity(out));
    return result_reply(l, out, rid, total);
}

int serve_finish(serve_loop *l, const serve_call *call, const int64_t *idx, size_t n)
{
    mapping *out = call->out;
    if (n <= cache_capacity(out)) {
        int64_t *dst = (int64_t *)(out->base + P_HEADER_SIZE);
        for (size_t i = 0; i < n; i++)
            dst[i] = idx[i] + (int64_t)call->base;
    }
    size_t len = result_reply(l, out, call->rid, n);
    return serve_reply(l, call->fd, l->rep, len);
}

/* A DETECT of a Python function's row whose every check passes: map its
 * segments and hand it to Python as EV_CALL (2); 0 to let Python see why not. */
static int whole_call(serve_loop *l, int fd, long tag, uint32_t row, uint32_t policy,
                      uint32_t nparams)
{
    const unsigned char *q = l->req;
    char data[P_NAME_SIZE], out_name[P_NAME_SIZE];
    if (name_field(q + P_OFF_Q_DATA_NAME, data) != 0 || name_field(q + P_OFF_Q_OUT_NAME, out_name) != 0)
        return 0;
    serve_call *c = &l->call;
    c->start = rd64(q + P_OFF_Q_START);
    c->count = rd64(q + P_OFF_Q_COUNT);
    cache_error e;
    c->out = cache_get(l->cache, out_name, P_KIND_RESULT, tag, &e);
    if (c->out == NULL || data_range(l, data, tag, c->start, c->count, &c->data) == NULL)
        return 0;
    c->fd = fd;
    c->tag = tag;
    c->rid = rd64(q + P_OFF_Q_REQUEST_ID);
    c->base = rd64(q + P_OFF_Q_BASE);
    c->row = row;
    c->policy = policy;
    c->nparams = nparams;
    for (uint32_t i = 0; i < nparams; i++)
        c->params[i] = rdf64(q + P_OFF_Q_PARAMS + 8 * i);
    serve_begin(l, fd, c->rid);
    return 2;
}

/* Answer the request in l->req[0:n] if it is a hot-path one whose checks all
 * pass; 1 when answered (or the connection died), 2 when Python is to
 * compute it (EV_CALL), 0 to hand the packet to Python. */
static int handle(serve_loop *l, int fd, long tag, size_t n)
{
    const unsigned char *q = l->req;
    if (n != P_REQUEST_HEAD_SIZE || rd32(q + P_OFF_Q_MAGIC) != P_REQUEST_MAGIC ||
        rd16(q + P_OFF_Q_VERSION) != P_VERSION ||
        rd32(q + P_OFF_Q_FLAGS) != 0 || rd32(q + P_OFF_Q_RESERVED) != 0 ||
        rd32(q + P_OFF_Q_NVALUES) != 0 || rd32(q + P_OFF_Q_NPARAMS) > P_MAX_PARAMS)
        return 0;
    uint16_t op = rd16(q + P_OFF_Q_OP);
    uint64_t rid = rd64(q + P_OFF_Q_REQUEST_ID);
    size_t len;
    if (op == P_OP_PING) {
        serve_begin(l, fd, rid);
        len = reply_head(l->rep, P_STATUS_OK, rid, 0, 0, 0);
        goto send;
    }
    if (op != P_OP_DETECT && op != P_OP_SUMMARIZE && op != P_OP_FLAG)
        return 0;
    uint32_t row = rd32(q + P_OFF_Q_DETECTOR), policy = rd32(q + P_OFF_Q_NAN_POLICY);
    uint32_t nparams = rd32(q + P_OFF_Q_NPARAMS);
    if (row >= (uint32_t)l->nrows || policy > P_POLICY_RAISE)
        return 0;
    if (l->rows[row].kind == ROW_WHOLE && op == P_OP_DETECT)
        return whole_call(l, fd, tag, row, policy, nparams);
    if (l->rows[row].kind != ROW_CLASSIC)
        return 0;
    char data[P_NAME_SIZE], out_name[P_NAME_SIZE];
    if (name_field(q + P_OFF_Q_DATA_NAME, data) != 0)
        return 0;
    uint64_t start = rd64(q + P_OFF_Q_START), count = rd64(q + P_OFF_Q_COUNT);
    uint64_t base = rd64(q + P_OFF_Q_BASE);
    (void)policy;   /* finite data (checked below) means the same under every policy */
    serve_begin(l, fd, rid);
    if (op == P_OP_SUMMARIZE) {
        if (nparams > 1 || (nparams == 1 && !isnan(rdf64(q + P_OFF_Q_PARAMS)) &&
                            !(isfinite(rdf64(q + P_OFF_Q_PARAMS)) && rdf64(q + P_OFF_Q_PARAMS) >= 0)))
            return 0;
        const double *x = data_range(l, data, tag, start, count, NULL);
        kstats s;
        if (x == NULL || kernel_stats(x, count, &s) != 0)
            return 0;
        len = reply_head(l->rep, P_STATUS_OK, rid, 0, 0, P_CLASSIC_SUMMARY_SIZE);
        double v[P_CLASSIC_SUMMARY_SIZE] = {s.n, s.mean, s.m2, 0.0, -1.0};
        memcpy(l->rep + P_REPLY_HEAD_SIZE, v, sizeof v);
        goto send;
    }
    if (name_field(q + P_OFF_Q_OUT_NAME, out_name) != 0)
        return 0;
    cache_error e;
    mapping *out = cache_get(l->cache, out_name, P_KIND_RESULT, tag, &e);
    if (out == NULL)
        return 0;
    const double *x = data_range(l, data, tag, start, count, NULL);
    if (x == NULL)
        return 0;
    double mean, cut;
    if (op == P_OP_FLAG) {
        if (nparams != 2)
            return 0;
        mean = rdf64(q + P_OFF_Q_PARAMS);
        cut = rdf64(q + P_OFF_Q_PARAMS + 8);
    } else {
        double k = nparams >= 1 ? rdf64(q + P_OFF_Q_PARAMS) : NAN;
        if (nparams > 1)
            return 0;
        if (isnan(k))
            k = l->rows[row].threshold;
        if (!(isfinite(k) && k >= 0))
            return 0;
        kstats s;
        if (kernel_stats(x, count, &s) != 0)
            return 0;
        if (count == 0) {
            cache_set_result(out, 0, P_STATUS_OK, 0);
            len = reply_head(l->rep, P_STATUS_OK, rid, 0, 0, 0);
            goto send;
        }
        mean = s.mean;
        cut = k * sqrt(s.m2 / s.n);
        if (!isfinite(mean) || !isfinite(cut))
            return 0;
    }
    len = flag_reply(l, out, rid, x, count, mean, cut, base);
send:
    if (serve_reply(l, fd, l->rep, len) != 0) {
        l->ev_fd = fd;
        l->ev_errno = errno;
        return -1;     /* the connection is unusable: close it */
    }
    return 1;
}

/* ---- the loop -------------------------------------------------------------- */

static int hung_up(int fd)
{
    struct pollfd p = {fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

int serve_run(serve_loop *l)
{
    struct pollfd *fds = NULL;
    int cap = 0, ev = EV_ERROR;
    for (;;) {
        int n = l->nconns + 1;
        if (n > cap) {
            struct pollfd *f = realloc(fds, (size_t)n * sizeof *f);
            if (f == NULL)
                break;
            fds = f;
            cap = n;
        }
        fds[0] = (struct pollfd){l->ctrl, POLLIN, 0};
        for (int i = 0; i < l->nconns; i++)
            fds[i + 1] = (struct pollfd){l->conns[i].fd, POLLIN, 0};
        int64_t now = serve_now_ns();
        int wait = -1;
        if (cache_len(l->cache) > 0)
            wait = l->next_sweep_ns <= now ? 0 : (int)((l->next_sweep_ns - now) / 1000000 + 1);
        int r = poll(fds, (nfds_t)n, wait);
        if (r < 0) {
            if (errno == EINTR) {
                ev = EV_NONE;      /* let Python look at its signals */
                break;
            }
            l->ev_errno = errno;
            break;
        }
        if (serve_now_ns() >= l->next_sweep_ns) {
            cache_sweep(l->cache);
            l->next_sweep_ns = serve_now_ns() + SWEEP_NS;
        }
        if (fds[0].revents) {
            ev = EV_CTRL;
            break;
        }
        int found = 0;
        for (int j = 0; j < l->nconns && !found; j++) {
            int i = (int)((l->next + (size_t)j) % (size_t)l->nconns);
            short re = fds[i + 1].revents;
            if (!re)
                continue;
            int fd = l->conns[i].fd;
            long tag = l->conns[i].tag;
            ssize_t got = recv(fd, l->req, l->reqcap, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got < 0 || (got == 0 && hung_up(fd))) {
                serve_remove(l, fd);
                cache_conn_closed(l->cache, tag);
                l->ev_fd = fd;
                l->ev_tag = tag;
                ev = EV_CLOSED;
                found = 1;
                break;
            }
            l->next = (size_t)i + 1;
            int h = handle(l, fd, tag, (size_t)got);
            if (h == 1)
                continue;
            if (h == 2) {
                ev = EV_CALL;
                found = 1;
                break;
            }
            if (h < 0) {
                serve_remove(l, fd);
                cache_conn_closed(l->cache, tag);
                l->ev_tag = tag;
                ev = EV_CLOSED;
                found = 1;
                break;
            }
            l->ev_fd = fd;
            l->ev_tag = tag;
            l->ev_len = (size_t)got;
            ev = EV_REQUEST;
            found = 1;
        }
        if (found)
            break;
    }
    free(fds);
    return ev;
}
