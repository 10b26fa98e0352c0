# cython: language_level=3
"""The streaming floor for ``fastbn bench``: one pass over the bytes, threaded
like the kernels (same OpenMP runtime, compiler and thread count), so the
bench's ``fastbn / stream`` ratio compares like with like."""
from cython.parallel cimport prange
from cython cimport floating


def scale2(const floating[::1] x, floating[::1] out, int nthreads):
    """out = x * 2 (read x, write out)."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, num_threads=nthreads, schedule="static"):
            out[i] = x[i] * 2


def add(const floating[::1] x, const floating[::1] y, floating[::1] out, int nthreads):
    """out = x + y (read x and y, write out)."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, num_threads=nthreads, schedule="static"):
            out[i] = x[i] + y[i]
