# cython: language_level=3
"""What the OpenMP runtime offers, queried through the C API.

`omp_get_max_threads` honours OMP_NUM_THREADS and threadpoolctl's limits,
which is why the Python side asks here instead of caching os.cpu_count().
"""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastbn_openmp_enabled(void) { return 1; }
    static int fastbn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fastbn_openmp_enabled(void) { return 0; }
    static int fastbn_omp_max_threads(void) { return 1; }
    #endif
    """
    int fastbn_openmp_enabled() nogil
    int fastbn_omp_max_threads() nogil


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fastbn_openmp_enabled())


def omp_max_threads():
    """``omp_get_max_threads()``, or 1 in a serial build."""
    return fastbn_omp_max_threads()
