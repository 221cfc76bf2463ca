/* The worker's request loop, without the GIL (see serve.c). */
#ifndef SHMPOOL_SERVE_H
#define SHMPOOL_SERVE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

typedef struct {
    int classic;          /* 1: the built-in classic detector, served natively */
    double threshold;     /* its default threshold */
} serve_row;

typedef struct {
    int fd;
    long tag;
} serve_conn;

enum { EV_NONE, EV_CTRL, EV_REQUEST, EV_CLOSED, EV_ERROR };

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
    /* the request in progress, for the watchdog (serve_claim) */
    _Atomic int cur_fd;
    _Atomic uint64_t cur_rid;
    _Atomic int64_t cur_start_ns;
    /* the event handed to Python */
    int ev_fd;
    long ev_tag;
    size_t ev_len;
    int ev_errno;
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
/* Start the thread that ends the process when its supervisor's control
 * socket closes, and enforces l->timeout. */
int serve_start_watchdog(serve_loop *l);
int64_t serve_now_ns(void);

#endif
