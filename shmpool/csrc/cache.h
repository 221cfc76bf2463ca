/* The segments a worker has mapped (docs/LAYOUT.md 1.2, 1.5).
 *
 * Every get() re-checks the file by path (inode, size, mode, owner) and the
 * header, since a host may recreate, shrink, chmod or overwrite a segment
 * between calls.  Mappings leave when their file is unlinked or replaced
 * (sweep, about once a second), when the one connection that used them
 * closes, or when more than CACHE_MAX are held (least recently used first).
 * A mapping that Python code still views is unmapped when the last view
 * goes.  Thread-safe: the worker loop runs without the GIL while views may be
 * released on other threads.
 */
#ifndef SHMPOOL_CACHE_H
#define SHMPOOL_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CACHE_MAX 64

typedef struct mapping {
    char name[64];
    int kind;            /* P_KIND_DATA (mapped read-only) or P_KIND_RESULT */
    unsigned char *base; /* the whole file: header then region */
    size_t size;
    dev_t dev;
    ino_t ino;
    mode_t mode;
    uid_t uid;
    uint64_t used;       /* LRU clock */
    long conn;           /* the only connection that used it; -1: several */
    int pins;            /* Python views alive */
    int doomed;          /* out of the table: unmap at the last unpin */
} mapping;

typedef struct {
    int status;          /* a LAYOUT status code */
    char msg[300];
} cache_error;

typedef struct cache {
    pthread_mutex_t mu;
    mapping *slot[CACHE_MAX];
    int n;
    uint64_t clock;
    uid_t uid;
} cache;

void cache_init(cache *c);
void cache_clear(cache *c);
/* The checked mapping of `name` as a segment of `kind` used by connection
 * `conn`, or NULL with *e filled in.  The region's capacity and the data
 * count are read from the header: see cache_capacity / cache_count. */
mapping *cache_get(cache *c, const char *name, int kind, long conn, cache_error *e);
uint64_t cache_capacity(const mapping *m);
uint64_t cache_count(const mapping *m);
void cache_set_result(mapping *m, uint64_t count, uint32_t status, uint64_t needed);
void cache_pin(cache *c, mapping *m);
void cache_unpin(cache *c, mapping *m);
void cache_sweep(cache *c);
void cache_conn_closed(cache *c, long conn);
int cache_len(cache *c);
/* 1 when name matches shmpool-[A-Za-z0-9_-]{1,55} */
int cache_valid_name(const char *name);

#endif
