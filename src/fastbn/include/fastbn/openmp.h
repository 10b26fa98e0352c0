/* What the OpenMP runtime offers; a serial build answers for itself. */
#ifndef FASTBN_OPENMP_H
#define FASTBN_OPENMP_H

#ifdef _OPENMP
#include <omp.h>
static inline int fastbn_openmp_enabled(void) { return 1; }
static inline int fastbn_omp_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int fastbn_openmp_enabled(void) { return 0; }
static inline int fastbn_omp_max_threads(void) { return 1; }
#endif

#endif /* FASTBN_OPENMP_H */
