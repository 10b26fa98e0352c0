/* Kernel calls in flight in the including module.  A call that starts while
   another runs (Python threads each calling fastbn: the kernels release the
   GIL) takes one thread instead of a full team, so N Python threads use about
   N cores, not N * nthreads.  Every kernel module includes this header and
   so keeps a counter of its own. */
#ifndef FASTBN_TEAM_H
#define FASTBN_TEAM_H

#if defined(_MSC_VER)
#include <intrin.h>
static volatile long fastbn_active_calls = 0;
static inline int fastbn_enter(void)
{
    return (int)_InterlockedIncrement(&fastbn_active_calls) - 1;
}
static inline void fastbn_leave(void) { _InterlockedDecrement(&fastbn_active_calls); }
static inline int fastbn_active(void) { return (int)fastbn_active_calls; }
#else
static int fastbn_active_calls = 0;
static inline int fastbn_enter(void)
{
    return __atomic_fetch_add(&fastbn_active_calls, 1, __ATOMIC_RELAXED);
}
static inline void fastbn_leave(void)
{
    __atomic_fetch_sub(&fastbn_active_calls, 1, __ATOMIC_RELAXED);
}
static inline int fastbn_active(void)
{
    return __atomic_load_n(&fastbn_active_calls, __ATOMIC_RELAXED);
}
#endif

/* Register a kernel call; the number of threads it may use (1 if another
   call of this module is running).  Pair with fastbn_leave(). */
static inline int fastbn_team(int nthreads) { return fastbn_enter() > 0 ? 1 : nthreads; }

/* The number of threads a call starting now would get (tests ask this
   while another call runs). */
static inline int fastbn_team_size(int nthreads) { return fastbn_active() > 0 ? 1 : nthreads; }

#endif /* FASTBN_TEAM_H */
