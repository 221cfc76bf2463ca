/* shmpool._native: the classic kernels, a worker's mapping cache and request
 * loop, and the host's send/receive, for shmpool's Python code.  Everything
 * here has a Python fallback (shmpool/_backend/native.py says which runs). */
#define PY_SSIZE_T_CLEAN
#define Py_LIMITED_API 0x030B0000   /* abi3: one wheel for every CPython >= 3.11 */
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cache.h"
#include "kernel.h"
#include "proto.h"
#include "serve.h"

static PyObject *CacheError;   /* (status, message) of a refused segment */
static PyObject *CacheType, *RegionType, *LoopType;   /* heap types (the limited API) */

static void free_instance(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

/* ---- kernels ---------------------------------------------------------------- */

static int float64_buffer(PyObject *obj, Py_buffer *b, int writable)
{
    if (PyObject_GetBuffer(obj, b, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (b->len % 8 != 0) {
        PyBuffer_Release(b);
        PyErr_SetString(PyExc_ValueError, "buffer is not a whole number of 8-byte items");
        return -1;
    }
    return 0;
}

static PyObject *py_chunk_stats(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    if (float64_buffer(arg, &b, 0) < 0)
        return NULL;
    kstats s;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = kernel_stats((const double *)b.buf, (size_t)b.len / 8, &s);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (r != 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(ndd)", (Py_ssize_t)s.n, s.mean, s.m2);
}

static PyObject *py_flag_into(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo;
    double mean, cut;
    long long base;
    if (!PyArg_ParseTuple(args, "OddLO", &xo, &mean, &cut, &base, &oo))
        return NULL;
    Py_buffer x, o;
    if (float64_buffer(xo, &x, 0) < 0)
        return NULL;
    if (float64_buffer(oo, &o, 1) < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    size_t total;
    Py_BEGIN_ALLOW_THREADS
    total = kernel_flag((const double *)x.buf, (size_t)x.len / 8, mean, cut, base,
                        (int64_t *)o.buf, (size_t)o.len / 8);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    PyBuffer_Release(&o);
    return PyLong_FromSize_t(total);
}

/* ---- Cache and Region ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    cache c;
} CacheObject;

typedef struct {
    PyObject_HEAD
    CacheObject *owner;
    mapping *m;
} RegionObject;

static PyObject *cache_new(PyTypeObject *t, PyObject *args, PyObject *kw)
{
    CacheObject *self = (CacheObject *)PyType_GenericAlloc(t, 0);
    if (self != NULL)
        cache_init(&self->c);
    return (PyObject *)self;
}

static void cache_dealloc(CacheObject *self)
{
    cache_clear(&self->c);
    free_instance((PyObject *)self);
}

/* A Region object (pinning m) of cache `owner`. */
static PyObject *new_region(CacheObject *owner, mapping *m)
{
    RegionObject *r = (RegionObject *)PyType_GenericAlloc((PyTypeObject *)RegionType, 0);
    if (r == NULL)
        return NULL;
    Py_INCREF((PyObject *)owner);
    r->owner = owner;
    r->m = m;
    cache_pin(&owner->c, m);
    return (PyObject *)r;
}

static PyObject *cache_region(CacheObject *self, PyObject *args)
{
    const char *name;
    int kind;
    long conn = -3;
    if (!PyArg_ParseTuple(args, "si|l", &name, &kind, &conn))
        return NULL;
    cache_error e;
    mapping *m = cache_get(&self->c, name, kind, conn, &e);
    if (m == NULL) {
        PyObject *v = Py_BuildValue("(is)", e.status, e.msg);
        if (v != NULL) {
            PyErr_SetObject(CacheError, v);
            Py_DECREF(v);
        }
        return NULL;
    }
    return new_region(self, m);
}

static PyObject *cache_sweep_py(CacheObject *self, PyObject *unused)
{
    cache_sweep(&self->c);
    Py_RETURN_NONE;
}

static PyObject *cache_conn_closed_py(CacheObject *self, PyObject *arg)
{
    long conn = PyLong_AsLong(arg);
    if (conn == -1 && PyErr_Occurred())
        return NULL;
    cache_conn_closed(&self->c, conn);
    Py_RETURN_NONE;
}

static Py_ssize_t cache_len_py(CacheObject *self) { return cache_len(&self->c); }

static PyMethodDef cache_methods[] = {
    {"region", (PyCFunction)cache_region, METH_VARARGS,
     "region(name, kind, conn=-3) -> Region: the checked segment's region (CacheError if refused)"},
    {"sweep", (PyCFunction)cache_sweep_py, METH_NOARGS, "unmap segments that were unlinked or replaced"},
    {"conn_closed", (PyCFunction)cache_conn_closed_py, METH_O, "unmap segments only this connection used"},
    {NULL},
};

static PyType_Slot cache_slots[] = {
    {Py_tp_doc, "The segments a worker has mapped (shmpool/csrc/cache.h)."},
    {Py_tp_new, cache_new},
    {Py_tp_dealloc, cache_dealloc},
    {Py_tp_methods, cache_methods},
    {Py_sq_length, cache_len_py},
    {0, NULL},
};

static PyType_Spec cache_spec = {"shmpool._native.Cache", sizeof(CacheObject), 0,
                                 Py_TPFLAGS_DEFAULT, cache_slots};

static void region_dealloc(RegionObject *self)
{
    cache_unpin(&self->owner->c, self->m);
    Py_DECREF((PyObject *)self->owner);
    free_instance((PyObject *)self);
}

static int region_getbuffer(RegionObject *self, Py_buffer *view, int flags)
{
    uint64_t cap = cache_capacity(self->m);
    return PyBuffer_FillInfo(view, (PyObject *)self, self->m->base + P_HEADER_SIZE,
                             (Py_ssize_t)(8 * cap), self->m->kind == P_KIND_DATA, flags);
}


static PyObject *region_capacity(RegionObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(cache_capacity(self->m));
}

static PyObject *region_count(RegionObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(cache_count(self->m));
}

static PyObject *region_name(RegionObject *self, void *c) { return PyUnicode_FromString(self->m->name); }

static PyObject *region_set_result(RegionObject *self, PyObject *args)
{
    unsigned long long count, needed;
    unsigned int status;
    if (!PyArg_ParseTuple(args, "KIK", &count, &status, &needed))
        return NULL;
    if (self->m->kind != P_KIND_RESULT) {
        PyErr_SetString(PyExc_TypeError, "not a result segment");
        return NULL;
    }
    cache_set_result(self->m, count, status, needed);
    Py_RETURN_NONE;
}

static PyGetSetDef region_getset[] = {
    {"capacity", (getter)region_capacity, NULL, "elements the region holds (header)", NULL},
    {"count", (getter)region_count, NULL, "the header's count, read now", NULL},
    {"name", (getter)region_name, NULL, "segment name", NULL},
    {NULL},
};

static PyMethodDef region_methods[] = {
    {"set_result", (PyCFunction)region_set_result, METH_VARARGS, "set_result(count, status, needed)"},
    {NULL},
};

static PyType_Slot region_slots[] = {
    {Py_tp_doc, "A mapped segment's region; keeps the mapping while alive."},
    {Py_tp_dealloc, region_dealloc},
    {Py_bf_getbuffer, region_getbuffer},
    {Py_tp_getset, region_getset},
    {Py_tp_methods, region_methods},
    {0, NULL},
};

static PyType_Spec region_spec = {"shmpool._native.Region", sizeof(RegionObject), 0,
                                  Py_TPFLAGS_DEFAULT, region_slots};

/* ---- Loop ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    serve_loop l;
    CacheObject *cache;
    int ready;
} LoopObject;

static int loop_init(LoopObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"ctrl", "cache", "rows", "default_policy", "timeout", "max_request", NULL};
    int ctrl, policy;
    PyObject *cache, *rows;
    double timeout;
    Py_ssize_t max_request;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOidn", names, &ctrl, &cache, &rows,
                                     &policy, &timeout, &max_request))
        return -1;
    if (!PyObject_TypeCheck(cache, (PyTypeObject *)CacheType)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a shmpool._native.Cache");
        return -1;
    }
    Py_ssize_t n = PySequence_Size(rows);
    if (n < 0)
        return -1;
    if (serve_init(&self->l, ctrl, &((CacheObject *)cache)->c, (size_t)max_request) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->l.rows = calloc((size_t)(n ? n : 1), sizeof(serve_row));
    for (Py_ssize_t i = 0; i < n; i++) {
        int kind;
        double k;
        PyObject *item = PySequence_GetItem(rows, i);
        int ok = item != NULL && PyArg_ParseTuple(item, "id", &kind, &k);
        Py_XDECREF(item);
        if (!ok)
            return -1;
        self->l.rows[i] = (serve_row){kind, k};
    }
    self->l.nrows = (int)n;
    self->l.default_policy = policy;
    self->l.timeout = timeout;
    Py_INCREF(cache);
    self->cache = (CacheObject *)cache;
    self->ready = 1;
    return 0;
}

static void loop_dealloc(LoopObject *self)
{
    if (self->ready)
        serve_free(&self->l);
    Py_XDECREF((PyObject *)self->cache);
    free_instance((PyObject *)self);
}

static PyObject *loop_add(LoopObject *self, PyObject *args)
{
    int fd;
    long tag;
    if (!PyArg_ParseTuple(args, "il", &fd, &tag))
        return NULL;
    if (serve_add(&self->l, fd, tag) != 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *loop_remove(LoopObject *self, PyObject *arg)
{
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(serve_remove(&self->l, fd));
}

static PyObject *loop_run(LoopObject *self, PyObject *unused)
{
    int ev;
    Py_BEGIN_ALLOW_THREADS
    ev = serve_run(&self->l);
    Py_END_ALLOW_THREADS
    switch (ev) {
    case EV_NONE:
        if (PyErr_CheckSignals() < 0)
            return NULL;
        return Py_BuildValue("(s)", "none");
    case EV_CTRL:
        return Py_BuildValue("(s)", "ctrl");
    case EV_REQUEST:
        return Py_BuildValue("(sily#)", "request", self->l.ev_fd, self->l.ev_tag,
                             (const char *)self->l.req, (Py_ssize_t)self->l.ev_len);
    case EV_CLOSED:
        return Py_BuildValue("(sil)", "closed", self->l.ev_fd, self->l.ev_tag);
    case EV_CALL: {
        serve_call *c = &self->l.call;
        PyObject *params = PyTuple_New(c->nparams), *data = NULL, *out = NULL, *r = NULL;
        for (uint32_t i = 0; params != NULL && i < c->nparams; i++)
            if (PyTuple_SetItem(params, (Py_ssize_t)i, PyFloat_FromDouble(c->params[i])) < 0)
                Py_CLEAR(params);
        data = new_region(self->cache, c->data);
        out = new_region(self->cache, c->out);
        if (params != NULL && data != NULL && out != NULL)
            r = Py_BuildValue("(silKIIKOOKKO)", "call", c->fd, c->tag, (unsigned long long)c->rid,
                              (unsigned)c->row, (unsigned)c->policy, (unsigned long long)c->base,
                              params, data, (unsigned long long)c->start,
                              (unsigned long long)c->count, out);
        Py_XDECREF(params);
        Py_XDECREF(data);
        Py_XDECREF(out);
        return r;
    }
    default:
        errno = self->l.ev_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

static PyObject *loop_begin(LoopObject *self, PyObject *args)
{
    int fd;
    unsigned long long rid;
    if (!PyArg_ParseTuple(args, "iK", &fd, &rid))
        return NULL;
    serve_begin(&self->l, fd, rid);
    Py_RETURN_NONE;
}

static PyObject *loop_reply(LoopObject *self, PyObject *args)
{
    int fd, r;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iy*", &fd, &b))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = serve_reply(&self->l, fd, b.buf, (size_t)b.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (r != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* finish(indices) -> True when the EV_CALL in progress was answered with these
 * indices (int64, strictly ascending, in [0, count)); False when they are
 * not such, for Python to check and mend first. */
static PyObject *loop_finish(LoopObject *self, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    const serve_call *c = &self->l.call;
    int ok = b.itemsize == 8 && b.format != NULL &&
             (strcmp(b.format, "q") == 0 || strcmp(b.format, "l") == 0 ||
              strcmp(b.format, "<q") == 0 || strcmp(b.format, "=q") == 0);
    size_t n = ok ? (size_t)b.len / 8 : 0;
    const int64_t *idx = b.buf;
    for (size_t i = 0; ok && i < n; i++)
        ok = idx[i] >= 0 && (uint64_t)idx[i] < c->count && (i == 0 || idx[i] > idx[i - 1]);
    int r = 0;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        r = serve_finish(&self->l, c, idx, n);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&b);
    if (r != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(ok);
}

static PyObject *loop_start_watchdog(LoopObject *self, PyObject *unused)
{
    int r = serve_start_watchdog(&self->l);
    if (r != 0) {
        errno = r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyMethodDef loop_methods[] = {
    {"add", (PyCFunction)loop_add, METH_VARARGS, "add(fd, tag): serve a connection"},
    {"remove", (PyCFunction)loop_remove, METH_O, "remove(fd) -> tag: stop serving it (not closed)"},
    {"run", (PyCFunction)loop_run, METH_NOARGS,
     "run() -> ('none',) | ('ctrl',) | ('request', fd, tag, packet) | ('closed', fd, tag) | "
     "('call', fd, tag, rid, row, policy, base, params, data, start, count, out)"},
    {"begin", (PyCFunction)loop_begin, METH_VARARGS, "begin(fd, request_id): a request is running"},
    {"finish", (PyCFunction)loop_finish, METH_O,
     "finish(indices) -> bool: answer the call in progress, if the indices are sound"},
    {"reply", (PyCFunction)loop_reply, METH_VARARGS, "reply(fd, packet): answer the running request"},
    {"start_watchdog", (PyCFunction)loop_start_watchdog, METH_NOARGS,
     "exit when the control socket closes; enforce the timeout"},
    {NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_doc, "Loop(ctrl, cache, rows, default_policy, timeout, max_request): a worker's request loop"},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, loop_init},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_methods, loop_methods},
    {0, NULL},
};

static PyType_Spec loop_spec = {"shmpool._native.Loop", sizeof(LoopObject), 0, Py_TPFLAGS_DEFAULT,
                                loop_slots};

/* ---- host I/O --------------------------------------------------------------- */

/* Wait up to timeout_ms (< 0: for ever) and receive one packet.  Returns the
 * length, 0 at end-of-file, -2 on timeout, -1 with errno set. */
static Py_ssize_t recv_wait(int fd, void *buf, size_t len, int timeout_ms)
{
    if (timeout_ms >= 0) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, timeout_ms);
        if (r == 0)
            return -2;
        if (r < 0)
            return -1;
    }
    return recv(fd, buf, len, timeout_ms >= 0 ? MSG_DONTWAIT : 0);
}

/* recv_wait with the GIL released, retried after signals that raise nothing. */
static PyObject *recv_result(int fd, Py_buffer *b, int timeout_ms)
{
    for (;;) {
        Py_ssize_t n;
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = recv_wait(fd, b->buf, (size_t)b->len, timeout_ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n >= 0)
            return PyLong_FromSsize_t(n);
        if (n == -2)
            Py_RETURN_NONE;
        if (err == EAGAIN)
            continue;       /* woken for nothing */
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;       /* the deadline is the caller's: it asks again with less */
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

static int send_packet(int fd, Py_buffer *b)
{
    for (;;) {
        ssize_t n;
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = send(fd, b->buf, (size_t)b->len, MSG_NOSIGNAL);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n >= 0)
            return 0;
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            continue;
        }
        errno = err;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, "send");   /* filename "send": nothing ran */
        return -1;
    }
}

static PyObject *py_send(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iy*", &fd, &b))
        return NULL;
    int r = send_packet(fd, &b);
    PyBuffer_Release(&b);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_recv_into(PyObject *self, PyObject *args)
{
    int fd, timeout_ms;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iw*i", &fd, &b, &timeout_ms))
        return NULL;
    PyObject *r = recv_result(fd, &b, timeout_ms);
    PyBuffer_Release(&b);
    return r;
}

static PyObject *py_exchange(PyObject *self, PyObject *args)
{
    int fd, timeout_ms;
    Py_buffer q, b;
    if (!PyArg_ParseTuple(args, "iy*w*i", &fd, &q, &b, &timeout_ms))
        return NULL;
    PyObject *r = NULL;
    if (send_packet(fd, &q) == 0)
        r = recv_result(fd, &b, timeout_ms);
    PyBuffer_Release(&q);
    PyBuffer_Release(&b);
    return r;
}

/* The hot path of a small call, in one step: copy x into the lane's data
 * segment and set its count, patch the lane's DETECT template, send it and
 * receive the reply.  Returns (length, status, count, needed), length 0 at
 * end-of-file, or None on timeout. */
static PyObject *py_whole(PyObject *self, PyObject *args)
{
    int fd, timeout_ms;
    unsigned long long rid, start, count;
    unsigned int detector, policy;
    PyObject *params, *xo, *datao;
    Py_buffer pkt, rep, data = {0}, x = {0};
    if (!PyArg_ParseTuple(args, "iw*w*iKKKIIOOO", &fd, &pkt, &rep, &timeout_ms, &rid, &start,
                          &count, &detector, &policy, &params, &datao, &xo))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t np = PyTuple_Check(params) ? PyTuple_Size(params) : -1;
    if (pkt.len < P_REQUEST_HEAD_SIZE || rep.len < P_REPLY_HEAD_SIZE || np < 0 ||
        np > P_MAX_PARAMS || (xo != Py_None && datao == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "whole(): bad packet, reply, params or data buffer");
        goto done;
    }
    if (xo != Py_None) {
        if (PyObject_GetBuffer(datao, &data, PyBUF_WRITABLE) < 0)
            goto done;
        if (float64_buffer(xo, &x, 0) < 0)
            goto done;
        if ((size_t)x.len != 8 * count || (size_t)data.len < P_HEADER_SIZE + (size_t)x.len) {
            PyErr_SetString(PyExc_ValueError, "whole(): x does not fit the data segment");
            goto done;
        }
        memcpy((char *)data.buf + P_HEADER_SIZE, x.buf, (size_t)x.len);
        wr64((unsigned char *)data.buf + P_OFF_COUNT, count);
    }
    unsigned char *q = pkt.buf;
    wr64(q + P_OFF_Q_REQUEST_ID, rid);
    wr64(q + P_OFF_Q_START, start);
    wr64(q + P_OFF_Q_COUNT, count);
    wr32(q + P_OFF_Q_DETECTOR, detector);
    wr32(q + P_OFF_Q_NAN_POLICY, policy);
    wr32(q + P_OFF_Q_NPARAMS, (uint32_t)np);
    for (Py_ssize_t i = 0; i < P_MAX_PARAMS; i++) {
        double v = i < np ? PyFloat_AsDouble(PyTuple_GetItem(params, i)) : NAN;
        if (v == -1.0 && PyErr_Occurred())
            goto done;
        wrf64(q + P_OFF_Q_PARAMS + 8 * i, v);
    }
    Py_buffer sendbuf = {.buf = pkt.buf, .len = P_REQUEST_HEAD_SIZE};
    if (send_packet(fd, &sendbuf) < 0)
        goto done;
    PyObject *n = recv_result(fd, &rep, timeout_ms);
    if (n == NULL || n == Py_None) {
        result = n;
        goto done;
    }
    Py_ssize_t got = PyLong_AsSsize_t(n);
    Py_DECREF(n);
    const unsigned char *r = rep.buf;
    if (got < P_REPLY_HEAD_SIZE)
        result = Py_BuildValue("(niKK)", got, -1, 0ULL, 0ULL);
    else if (rd32(r) != P_REPLY_MAGIC || rd16(r + 4) != P_VERSION ||
             (rd64(r + 8) != rid && rd64(r + 8) != 0))
        result = Py_BuildValue("(niKK)", got, -1, 0ULL, 0ULL);
    else
        result = Py_BuildValue("(niKK)", got, (int)rd16(r + 6), (unsigned long long)rd64(r + 16),
                               (unsigned long long)rd64(r + 24));
done:
    if (x.obj != NULL)
        PyBuffer_Release(&x);
    if (data.obj != NULL)
        PyBuffer_Release(&data);
    PyBuffer_Release(&pkt);
    PyBuffer_Release(&rep);
    return result;
}

static PyObject *py_layout_constants(PyObject *self, PyObject *unused)
{
    return Py_BuildValue(
        "{si si si si si si si si si si si si si si si si si si si si si si si si si si si si}",
        "VERSION", P_VERSION, "SEGMENT_MAGIC", P_SEGMENT_MAGIC, "KIND_DATA", P_KIND_DATA,
        "KIND_RESULT", P_KIND_RESULT, "HEADER_SIZE", P_HEADER_SIZE, "OFF_COUNT", P_OFF_COUNT,
        "OFF_STATUS", P_OFF_STATUS, "OFF_NEEDED", P_OFF_NEEDED, "REQUEST_MAGIC", P_REQUEST_MAGIC,
        "REQUEST_HEAD_SIZE", P_REQUEST_HEAD_SIZE, "REPLY_MAGIC", P_REPLY_MAGIC,
        "REPLY_HEAD_SIZE", P_REPLY_HEAD_SIZE, "MAX_REPLY", P_MAX_REPLY, "NAME_SIZE", P_NAME_SIZE,
        "MAX_PARAMS", P_MAX_PARAMS, "CLASSIC_SUMMARY_SIZE", P_CLASSIC_SUMMARY_SIZE,
        "Op.DETECT", P_OP_DETECT, "Op.PING", P_OP_PING, "Op.SUMMARIZE", P_OP_SUMMARIZE,
        "Op.FLAG", P_OP_FLAG, "POLICY_DEFAULT", P_POLICY_DEFAULT, "POLICY_OMIT", P_POLICY_OMIT,
        "POLICY_RAISE", P_POLICY_RAISE, "Status.OK", P_STATUS_OK, "Status.TOO_SMALL",
        P_STATUS_TOO_SMALL, "Status.TIMEOUT", P_STATUS_TIMEOUT, "request.OFF_PARAMS",
        P_OFF_Q_PARAMS, "request.OFF_NVALUES", P_OFF_Q_NVALUES);
}

static PyMethodDef methods[] = {
    {"chunk_stats", py_chunk_stats, METH_O, "(n, mean, m2) of a float64 buffer, or None if not finite"},
    {"flag_into", py_flag_into, METH_VARARGS,
     "flag_into(x, mean, cut, base, out) -> total: indices beyond the cut-off into out"},
    {"send", py_send, METH_VARARGS, "send(fd, packet)"},
    {"recv_into", py_recv_into, METH_VARARGS,
     "recv_into(fd, buffer, timeout_ms) -> length, 0 at EOF, or None on timeout"},
    {"exchange", py_exchange, METH_VARARGS,
     "exchange(fd, packet, buffer, timeout_ms) -> send, then recv_into"},
    {"whole", py_whole, METH_VARARGS,
     "whole(fd, packet, reply, timeout_ms, rid, start, count, detector, policy, params, data, x)"
     " -> "
     "(length, status, count, needed) | None: the small call's copy, send and receive"},
    {"layout_constants", py_layout_constants, METH_NOARGS, "the layout numbers compiled in"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shmpool._native",
                                    "shmpool's C parts: kernels, worker loop, host I/O", -1, methods};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    CacheType = PyType_FromSpec(&cache_spec);
    RegionType = PyType_FromSpec(&region_spec);
    LoopType = PyType_FromSpec(&loop_spec);
    CacheError = PyErr_NewException("shmpool._native.CacheError", NULL, NULL);
    if (CacheType == NULL || RegionType == NULL || LoopType == NULL || CacheError == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(CacheType);
    Py_INCREF(RegionType);
    Py_INCREF(LoopType);
    Py_INCREF(CacheError);
    if (PyModule_AddObject(m, "CacheError", CacheError) < 0 ||
        PyModule_AddObject(m, "Cache", CacheType) < 0 ||
        PyModule_AddObject(m, "Region", RegionType) < 0 ||
        PyModule_AddObject(m, "Loop", LoopType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
