#define _GNU_SOURCE 1
#include "cache.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHM_DIR "/dev/shm/"

int cache_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n < 9 || n > 63 || memcmp(name, "shmpool-", 8) != 0)
        return 0;
    for (size_t i = 8; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

void cache_init(cache *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->uid = geteuid();
}

static void release(mapping *m)
{
    munmap(m->base, m->size);
    free(m);
}

/* Take slot i out of the table (mu held). */
static void drop(cache *c, int i)
{
    mapping *m = c->slot[i];
    c->slot[i] = c->slot[--c->n];
    c->slot[c->n] = NULL;
    if (m->pins > 0)
        m->doomed = 1;
    else
        release(m);
}

void cache_clear(cache *c)
{
    pthread_mutex_lock(&c->mu);
    while (c->n > 0)
        drop(c, c->n - 1);
    pthread_mutex_unlock(&c->mu);
}

static mapping *fail(cache_error *e, int status, const char *fmt, const char *name, const char *extra)
{
    e->status = status;
    snprintf(e->msg, sizeof e->msg, fmt, name, extra);
    return NULL;
}

uint64_t cache_capacity(const mapping *m) { return rd64(m->base + P_OFF_H_CAPACITY); }
uint64_t cache_count(const mapping *m) { return rd64(m->base + P_OFF_COUNT); }

void cache_set_result(mapping *m, uint64_t count, uint32_t status, uint64_t needed)
{
    wr64(m->base + P_OFF_COUNT, count);
    wr32(m->base + P_OFF_STATUS, status);
    wr64(m->base + P_OFF_NEEDED, needed);
}

/* LAYOUT.md 1.2, in order; NULL when sound. */
static const char *check_header(const mapping *m, int kind, char *buf, size_t len)
{
    const unsigned char *h = m->base;
    uint32_t magic = rd32(h + P_OFF_H_MAGIC);
    uint16_t version = rd16(h + P_OFF_H_VERSION), k = rd16(h + P_OFF_H_KIND);
    uint64_t capacity = rd64(h + P_OFF_H_CAPACITY), count = rd64(h + P_OFF_COUNT);
    if (magic != P_SEGMENT_MAGIC)
        snprintf(buf, len, "bad magic 0x%08x (want 0x%08x)", magic, P_SEGMENT_MAGIC);
    else if (version != P_VERSION)
        snprintf(buf, len, "segment layout version %u; this reader speaks %d", version, P_VERSION);
    else if (k != kind)
        snprintf(buf, len, "segment kind %u, expected %d", k, kind);
    else if (rd32(h + P_OFF_H_HEADER_SIZE) != P_HEADER_SIZE || rd32(h + P_OFF_H_FLAGS) != 0)
        snprintf(buf, len, "header_size %u / flags %u not valid in v%d",
                 rd32(h + P_OFF_H_HEADER_SIZE), rd32(h + P_OFF_H_FLAGS), P_VERSION);
    else if (capacity > (m->size - P_HEADER_SIZE) / 8)
        snprintf(buf, len, "capacity %llu does not fit in a segment of %zu bytes",
                 (unsigned long long)capacity, m->size);
    else if (kind == P_KIND_DATA && count > capacity)
        snprintf(buf, len, "count %llu exceeds capacity %llu", (unsigned long long)count,
                 (unsigned long long)capacity);
    else
        return NULL;
    return buf;
}

static mapping *attach(cache *c, const char *name, const char *path, int kind, cache_error *e)
{
    int writable = kind == P_KIND_RESULT;
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT)
            return fail(e, 3, "no segment named '%s'%s", name, "");
        if (err == ELOOP)
            return fail(e, 4, "segment '%s' is a symlink%s", name, "");
        if (err == EACCES || err == EPERM || err == ENXIO || err == EISDIR)
            return fail(e, 4, "segment '%s': %s", name, strerror(err));
        return fail(e, 3, "segment '%s': %s", name, strerror(err));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return fail(e, 3, "segment '%s': %s", name, strerror(errno));
    }
    char why[120];
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(e, 4, "segment '%s' is not a regular file%s", name, "");
    }
    if (st.st_uid != c->uid) {
        close(fd);
        snprintf(why, sizeof why, " belongs to uid %u, not %u", (unsigned)st.st_uid, (unsigned)c->uid);
        return fail(e, 4, "segment '%s'%s", name, why);
    }
    if (st.st_mode & 077) {
        close(fd);
        snprintf(why, sizeof why, " has mode %04o; 0600 or narrower is required",
                 (unsigned)(st.st_mode & 07777));
        return fail(e, 4, "segment '%s'%s", name, why);
    }
    if (st.st_size < P_HEADER_SIZE) {
        close(fd);
        snprintf(why, sizeof why, " is %lld bytes, smaller than its header", (long long)st.st_size);
        return fail(e, 5, "segment '%s'%s", name, why);
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED,
                      fd, 0);
    int err = errno;
    close(fd);
    if (base == MAP_FAILED)
        return fail(e, 3, "segment '%s': mmap: %s", name, strerror(err));
    mapping *m = calloc(1, sizeof *m);
    if (m == NULL) {
        munmap(base, (size_t)st.st_size);
        return fail(e, 14, "segment '%s': %s", name, "out of memory");
    }
    strcpy(m->name, name);
    m->kind = kind;
    m->base = base;
    m->size = (size_t)st.st_size;
    m->dev = st.st_dev;
    m->ino = st.st_ino;
    m->mode = st.st_mode;
    m->uid = st.st_uid;
    m->conn = -2;
    return m;
}

mapping *cache_get(cache *c, const char *name, int kind, long conn, cache_error *e)
{
    if (!cache_valid_name(name))
        return fail(e, 2, "segment name '%s' breaks the naming rule shmpool-[A-Za-z0-9_-]{1,55}%s",
                    name, "");
    char path[sizeof SHM_DIR + 64];
    snprintf(path, sizeof path, "%s%s", SHM_DIR, name);
    struct stat st;
    int gone = lstat(path, &st) != 0;
    pthread_mutex_lock(&c->mu);
    mapping *m = NULL;
    for (int i = 0; i < c->n; i++) {
        mapping *s = c->slot[i];
        if (s->kind == kind && strcmp(s->name, name) == 0) {
            if (!gone && s->ino == st.st_ino && s->dev == st.st_dev && (size_t)st.st_size == s->size &&
                s->mode == st.st_mode && s->uid == st.st_uid)
                m = s;
            else
                drop(c, i);       /* gone, recreated, resized or chmod-ed: look again */
            break;
        }
    }
    if (m == NULL) {
        pthread_mutex_unlock(&c->mu);
        if (gone)
            return fail(e, 3, "no segment named '%s'%s", name, "");
        m = attach(c, name, path, kind, e);
        if (m == NULL)
            return NULL;
        pthread_mutex_lock(&c->mu);
        if (c->n == CACHE_MAX) {
            int old = 0;
            for (int i = 1; i < c->n; i++)
                if (c->slot[i]->used < c->slot[old]->used)
                    old = i;
            drop(c, old);
        }
        c->slot[c->n++] = m;
    }
    m->used = ++c->clock;
    m->conn = m->conn == -2 || m->conn == conn ? conn : -1;
    pthread_mutex_unlock(&c->mu);
    char why[200];
    if (check_header(m, kind, why, sizeof why) != NULL) {
        e->status = 5;
        snprintf(e->msg, sizeof e->msg, "segment '%s': %s", name, why);
        return NULL;
    }
    return m;
}

void cache_pin(cache *c, mapping *m)
{
    pthread_mutex_lock(&c->mu);
    m->pins++;
    pthread_mutex_unlock(&c->mu);
}

void cache_unpin(cache *c, mapping *m)
{
    pthread_mutex_lock(&c->mu);
    int last = --m->pins == 0 && m->doomed;
    pthread_mutex_unlock(&c->mu);
    if (last)
        release(m);
}

void cache_sweep(cache *c)
{
    pthread_mutex_lock(&c->mu);
    for (int i = c->n - 1; i >= 0; i--) {
        char path[sizeof SHM_DIR + 64];
        struct stat st;
        snprintf(path, sizeof path, "%s%s", SHM_DIR, c->slot[i]->name);
        if (lstat(path, &st) != 0 || st.st_ino != c->slot[i]->ino || st.st_dev != c->slot[i]->dev)
            drop(c, i);
    }
    pthread_mutex_unlock(&c->mu);
}

void cache_conn_closed(cache *c, long conn)
{
    pthread_mutex_lock(&c->mu);
    for (int i = c->n - 1; i >= 0; i--)
        if (c->slot[i]->conn == conn)
            drop(c, i);
    pthread_mutex_unlock(&c->mu);
}

int cache_len(cache *c)
{
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}
