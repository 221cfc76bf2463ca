/* The classic detector's two passes, fused, for arrays beyond one block.
 *
 * numpy spends four full-array operations (and temporaries) per pass; these
 * loops read each value once from memory and keep their per-block work in
 * cache, so the detector runs near memory bandwidth.  The arithmetic is the
 * same as shmpool/detectors.py (block sums, block means, squared deviations
 * from the block mean, Chan's merge; then |x - mean| > cut), so the Python
 * and C paths agree to rounding.  The GIL is released around every loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define BLOCK 65536

/* Sum of x[0:n] with eight accumulators: vectorizable and, like numpy's
 * pairwise sum, with an error far below the naive loop's. */
static double sum8(const double *x, Py_ssize_t n)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            a[j] += x[i + j];
    double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < n; i++)
        s += x[i];
    return s;
}

static double sqdev8(const double *x, Py_ssize_t n, double m)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            double d = x[i + j] - m;
            a[j] += d * d;
        }
    double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < n; i++) {
        double d = x[i] - m;
        s += d * d;
    }
    return s;
}

/* chunk_stats(x) -> (n, mean, m2), or None when a block holds NaN/inf (the
 * caller then takes the numpy path, which applies the nan_policy). */
static PyObject *chunk_stats(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf))
        return NULL;
    const double *x = (const double *)buf.buf;
    Py_ssize_t n = buf.len / (Py_ssize_t)sizeof(double);
    double cnt = 0, mean = 0, m2 = 0;
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i += BLOCK) {
        Py_ssize_t nb = n - i < BLOCK ? n - i : BLOCK;
        double s = sum8(x + i, nb);
        if (!isfinite(s)) {
            finite = 0;
            break;
        }
        double mb = s / (double)nb;
        double qb = sqdev8(x + i, nb, mb);
        if (cnt == 0) {
            cnt = (double)nb, mean = mb, m2 = qb;
        } else {
            double tot = cnt + (double)nb, delta = mb - mean;
            mean = mean + delta * ((double)nb / tot);
            m2 = m2 + qb + delta * delta * (cnt * (double)nb / tot);
            cnt = tot;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (!finite)
        Py_RETURN_NONE;
    return Py_BuildValue("(ndd)", (Py_ssize_t)cnt, mean, m2);
}

/* chunk_threshold(x, mean, cut, base, out) -> total
 * Writes base + i for every |x[i] - mean| > cut into out while it has room
 * and returns how many there are in all (more than len(out): call again with
 * a buffer of that size).  A non-finite x[i] is never reported: pass 2 only
 * runs on data whose non-finite values the nan_policy said to omit. */
static PyObject *chunk_threshold(PyObject *self, PyObject *args)
{
    Py_buffer xb, ob;
    double mean, cut;
    long long base;
    if (!PyArg_ParseTuple(args, "y*ddLw*", &xb, &mean, &cut, &base, &ob))
        return NULL;
    const double *x = (const double *)xb.buf;
    Py_ssize_t n = xb.len / (Py_ssize_t)sizeof(double);
    int64_t *out = (int64_t *)ob.buf;
    Py_ssize_t room = ob.len / (Py_ssize_t)sizeof(int64_t), k = 0, i = 0;
    int64_t spill;   /* where a store goes once out is full */
    Py_BEGIN_ALLOW_THREADS
#ifdef __SSE2__
    /* Test eight values at once with the scalar loop's exact arithmetic
     * (subtract, fabs, ordered compares: NaN and inf never count), then
     * spend one step per outlier and none per inlier. */
    const __m128d vm = _mm_set1_pd(mean), vc = _mm_set1_pd(cut),
                  vinf = _mm_set1_pd(INFINITY), sign = _mm_set1_pd(-0.0);
    for (; i + 8 <= n; i += 8) {
        unsigned m = 0;
        for (int j = 0; j < 8; j += 2) {
            __m128d d = _mm_andnot_pd(sign, _mm_sub_pd(_mm_loadu_pd(x + i + j), vm));
            __m128d hit = _mm_and_pd(_mm_cmpgt_pd(d, vc), _mm_cmplt_pd(d, vinf));
            m |= (unsigned)_mm_movemask_pd(hit) << j;
        }
        while (m) {
            *(k < room ? out + k : &spill) = base + i + __builtin_ctz(m);
            k++;
            m &= m - 1;
        }
    }
#endif
    for (; i < n; i++) {
        double d = fabs(x[i] - mean);
        *(k < room ? out + k : &spill) = base + i;
        k += (d > cut) & (d < INFINITY);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    return PyLong_FromSsize_t(k);
}

static PyMethodDef methods[] = {
    {"chunk_stats", chunk_stats, METH_VARARGS, "(n, mean, m2) of a float64 buffer, or None if not finite"},
    {"chunk_threshold", chunk_threshold, METH_VARARGS, "write indices beyond the cut-off; return their count"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "shmpool._kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
