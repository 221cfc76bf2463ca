/* The worker's request loop, without the GIL (see serve.c). */
#ifndef SHMPOOL_SERVE_H
#define SHMPOOL_SERVE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

enum { ROW_PYTHON, ROW_CLASSIC, ROW_WHOLE };

typedef struct {
    int kind;             /* ROW_CLASSIC: served natively; ROW_WHOLE: a Python function
                             whose checked DETECTs come back as EV_CALL; ROW_PYTHON: other */
    double threshold;     /* the classic detector's default threshold */
} serve_row;

/* A checked DETECT of a ROW_WHOLE row, for Python to compute (EV_CALL). */
typedef struct {
    int fd;
    long tag;
    uint64_t rid, start, count, base;
    uint32_t row, policy, nparams;
    double params[8];
    mapping *data, *out;
} serve_call;

typedef struct {
    int fd;
    long tag;
} serve_conn;

enum { EV_NONE, EV_CTRL, EV_REQUEST, EV_CLOSED, EV_ERROR, EV_CALL };

typedef struct serve_loop {
    int ctrl;
    cache *cache;
    serve_row *rows;
    int nrows;
    int default_policy;   /* P_POLICY_* other than DEFAULT */
    double timeout;       /* the server's per-call limit in seconds; 0: none */
    serve_conn *conns;
    int nconns, capconns;
    size_t next;          /* where the next scan starts, for fairness */
    unsigned char *req;   /* receive buffer: MAX_REQUEST + 1 bytes */
    size_t reqcap;
    unsigned char *rep;   /* reply buffer: P_MAX_REPLY bytes */
    int64_t next_sweep_ns;
    /* the request in progress: the reply and the watchdog's TIMEOUT claim it
       with atomic_exchange(&cur_fd, -1), so only one of them answers */
    _Atomic int cur_fd;
    _Atomic uint64_t cur_rid;
    _Atomic int64_t cur_start_ns;
    /* the event handed to Python */
    int ev_fd;
    long ev_tag;
    size_t ev_len;
    int ev_errno;
    serve_call call;      /* EV_CALL: the request, its mappings pinned by the caller */
} serve_loop;

int serve_init(serve_loop *l, int ctrl, cache *c, size_t max_request);
void serve_free(serve_loop *l);
int serve_add(serve_loop *l, int fd, long tag);
/* Remove fd from the loop (not closed); returns its tag or -1. */
long serve_remove(serve_loop *l, int fd);
/* Serve until Python is needed; returns an EV_* code. Runs without the GIL. */
int serve_run(serve_loop *l);
/* Mark a request as running (for the watchdog). */
void serve_begin(serve_loop *l, int fd, uint64_t rid);
/* Send a reply for the running request: 0, or -1 (errno) when the
 * connection is unusable.  If the watchdog has already answered, never
 * returns (the process is exiting). */
int serve_reply(serve_loop *l, int fd, const void *buf, size_t len);
/* Answer an EV_CALL with its indices idx[0:n] (ascending, in [0, count)):
 * write them plus base to the result mapping if they fit, set its header,
 * reply OK or TOO_SMALL.  0, or -1 (errno) when the connection is unusable. */
int serve_finish(serve_loop *l, const serve_call *call, const int64_t *idx, size_t n);
/* Start the thread that ends the process when its supervisor's control
 * socket closes, and enforces l->timeout. */
int serve_start_watchdog(serve_loop *l);
int64_t serve_now_ns(void);

#endif
