/* See embed.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "embed.h"

static PyObject *detect_fn;          /* the one-liner, a Python function */
static PyObject *blocks_fn;          /* sys.getallocatedblocks */
static PyThreadState *saved;         /* the init thread's state while the GIL is released */
static char err[4096];
static char versions[256];

const char *embed_error(void) { return err; }
const char *embed_versions(void) { return versions; }

/* The pending Python exception as text in err (clears it). */
static void python_error(const char *where) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    const char *text = "?";
    PyObject *s = value ? PyObject_Str(value) : NULL;
    if (s) {
        const char *t = PyUnicode_AsUTF8(s);
        if (t) text = t;
    }
    snprintf(err, sizeof err, "%s: %s: %s", where,
             type ? ((PyTypeObject *)type)->tp_name : "error", text);
    Py_XDECREF(s);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    PyErr_Clear();
}

static const char *SOURCE =
    "import numpy as np\n"
    "def detect(x):\n"
    "    return np.where(np.abs(x - x.mean()) > 2 * x.std())[0]\n";

int embed_tune_malloc(void) {
    /* glibc raises its mmap threshold (up to 32 MiB) and its trim threshold (to twice that) by
     * itself as a process frees large blocks, which a long-running CPython process has long done;
     * a fresh embedding process starts at 128 KiB and returns numpy's temporaries to the kernel
     * after every call, so it takes page faults on every call that a warm process does not. Set
     * the steady state at once. */
    return mallopt(M_MMAP_THRESHOLD, 32 << 20) && mallopt(M_TRIM_THRESHOLD, 64 << 20) ? 0 : -1;
}

int embed_init(const char *program, const char *paths) {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;      /* Go owns the signals */
    config.parse_argv = 0;
    PyStatus st = PyConfig_SetBytesString(&config, &config.program_name, program);
    if (!PyStatus_Exception(st))
        st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) {
        snprintf(err, sizeof err, "Py_InitializeFromConfig: %s", st.err_msg ? st.err_msg : "failed");
        return -1;
    }
    PyObject *sys_path = PySys_GetObject("path");              /* borrowed */
    Py_ssize_t at = 0;
    const char *p = paths;
    while (sys_path && p && *p) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len) {
            PyObject *s = PyUnicode_DecodeFSDefaultAndSize(p, (Py_ssize_t)len);
            if (!s) { python_error("sys.path"); return -1; }
            int has = PySequence_Contains(sys_path, s);
            if (has == 0 && PyList_Insert(sys_path, at++, s) < 0) has = -1;
            Py_DECREF(s);
            if (has < 0) { python_error("sys.path"); return -1; }
        }
        p = end ? end + 1 : NULL;
    }
    if (_import_array() < 0) { python_error("numpy C API (import_array)"); return -1; }
    PyObject *globals = PyDict_New();
    if (!globals) { python_error("dict"); return -1; }
    PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
    PyObject *r = PyRun_String(SOURCE, Py_file_input, globals, globals);
    if (!r) { python_error("defining the one-liner"); Py_DECREF(globals); return -1; }
    Py_DECREF(r);
    detect_fn = PyDict_GetItemString(globals, "detect");       /* borrowed */
    Py_XINCREF(detect_fn);
    r = PyRun_String("import sys\n"
                     "v = 'Python %s, numpy %s' % (sys.version.split()[0], np.__version__)\n",
                     Py_file_input, globals, globals);
    if (r) {
        Py_DECREF(r);
        PyObject *v = PyDict_GetItemString(globals, "v");
        const char *t = v ? PyUnicode_AsUTF8(v) : NULL;
        snprintf(versions, sizeof versions, "%s", t ? t : "?");
    }
    Py_DECREF(globals);
    blocks_fn = PySys_GetObject("getallocatedblocks");         /* borrowed */
    Py_XINCREF(blocks_fn);
    if (!detect_fn || !blocks_fn) {
        snprintf(err, sizeof err, "the one-liner or sys.getallocatedblocks is missing");
        return -1;
    }
    return 0;
}

long long embed_detect(const double *x, long long n, long long *out, long long cap, int gil) {
    PyGILState_STATE gs = PyGILState_UNLOCKED;
    if (gil) gs = PyGILState_Ensure();
    long long ret = -1;
    npy_intp dims[1] = {(npy_intp)n};
    /* A view of the Go memory: no copy, not owned, read-only. */
    PyObject *arr = PyArray_New(&PyArray_Type, 1, dims, NPY_FLOAT64, NULL, (void *)x, 0,
                                NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!arr) { python_error("PyArray_New"); goto done; }
    PyObject *res = PyObject_CallOneArg(detect_fn, arr);
    if (!res) {
        python_error("the one-liner");
    } else {
        PyArrayObject *a = (PyArrayObject *)res;
        if (!PyArray_Check(res) || PyArray_NDIM(a) != 1 || !PyArray_ISINTEGER(a) ||
            PyArray_ITEMSIZE(a) != 8 || !PyArray_IS_C_CONTIGUOUS(a)) {
            snprintf(err, sizeof err, "the one-liner returned something other than 1-D int64 indices");
        } else {
            long long k = (long long)PyArray_SIZE(a);
            if (k <= cap && k > 0) memcpy(out, PyArray_DATA(a), (size_t)k * 8);
            ret = k;
        }
        Py_DECREF(res);
    }
    /* Nothing may keep the view: it points into Go memory. */
    if (Py_REFCNT(arr) != 1) {
        snprintf(err, sizeof err, "the wrapped input is still referenced after the call (refcount %ld)",
                 (long)Py_REFCNT(arr));
        ret = -1;
        /* leak it on purpose rather than free what someone holds */
    } else {
        Py_DECREF(arr);
    }
done:
    if (gil) PyGILState_Release(gs);
    return ret;
}

void embed_release(void) { saved = PyEval_SaveThread(); }

void embed_reacquire(void) {
    PyEval_RestoreThread(saved);
    saved = NULL;
}

long long embed_allocated_blocks(int gil) {
    PyGILState_STATE gs = PyGILState_UNLOCKED;
    if (gil) gs = PyGILState_Ensure();
    long long v = -1;
    PyObject *r = PyObject_CallNoArgs(blocks_fn);
    if (r) {
        v = PyLong_AsLongLong(r);
        Py_DECREF(r);
    }
    if (v < 0) python_error("sys.getallocatedblocks");
    if (gil) PyGILState_Release(gs);
    return v;
}
