# cython: language_level=3
"""What the OpenMP runtime offers, queried through the C API.

`omp_get_max_threads` honours OMP_NUM_THREADS and threadpoolctl's limits,
which is why the Python side asks here instead of caching os.cpu_count().
"""

cdef extern from "fastbn/openmp.h" nogil:
    int fastbn_openmp_enabled() noexcept
    int fastbn_omp_max_threads() noexcept


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fastbn_openmp_enabled())


def omp_max_threads():
    """``omp_get_max_threads()``, or 1 in a serial build."""
    return fastbn_omp_max_threads()
