/* SIMD helpers shared by the kernel headers: restrict, float64 vectors of
   the build's width, prefetch and the fence after non-temporal stores.

   Each kernel module is compiled once per instruction set (baseline x86-64
   with SSE2, AVX2+FMA); the macros below pick the vector width of the
   build that includes them. */
#ifndef FASTBN_SIMD_H
#define FASTBN_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(_MSC_VER)
#define FASTBN_RESTRICT __restrict
#else
#define FASTBN_RESTRICT __restrict__
#endif

/* float64 vectors, FASTBN_VW lanes: the channel-run sums keep four
   independent accumulators per sum in them.  Written with intrinsics: GCC 12
   neither splits a reduction into several accumulators by itself nor
   converts float vectors to double vectors without a trip through the
   stack. */
#if defined(__AVX__)
#include <immintrin.h>
typedef __m256d fastbn_vd;
#define FASTBN_VW 4
#define fastbn_vzero() _mm256_setzero_pd()
#define fastbn_vset1(a) _mm256_set1_pd(a)
#define fastbn_vadd(a, b) _mm256_add_pd(a, b)
#define fastbn_vsub(a, b) _mm256_sub_pd(a, b)
#if defined(__FMA__) || defined(_MSC_VER)
#define fastbn_vmuladd(a, b, c) _mm256_fmadd_pd(a, b, c)
#else
#define fastbn_vmuladd(a, b, c) _mm256_add_pd(_mm256_mul_pd(a, b), c)
#endif
#define fastbn_vload_d(p) _mm256_loadu_pd(p)
#define fastbn_vload_f(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define fastbn_vstore(p, a) _mm256_storeu_pd(p, a)
#elif defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
typedef __m128d fastbn_vd;
#define FASTBN_VW 2
#define fastbn_vzero() _mm_setzero_pd()
#define fastbn_vset1(a) _mm_set1_pd(a)
#define fastbn_vadd(a, b) _mm_add_pd(a, b)
#define fastbn_vsub(a, b) _mm_sub_pd(a, b)
#define fastbn_vmuladd(a, b, c) _mm_add_pd(_mm_mul_pd(a, b), c)
#define fastbn_vload_d(p) _mm_loadu_pd(p)
#define fastbn_vload_f(p) _mm_cvtps_pd(_mm_castpd_ps(_mm_load_sd((const double *)(p))))
#define fastbn_vstore(p, a) _mm_storeu_pd(p, a)
#endif

#ifdef FASTBN_VW
/* the sum of all lanes of four accumulators */
static inline double fastbn_hsum4(fastbn_vd a0, fastbn_vd a1, fastbn_vd a2, fastbn_vd a3)
{
    double t[FASTBN_VW], s = 0.0;
    fastbn_vstore(t, fastbn_vadd(fastbn_vadd(a0, a1), fastbn_vadd(a2, a3)));
    for (int l = 0; l < FASTBN_VW; l++)
        s += t[l];
    return s;
}
#endif

/* Non-temporal stores: the AVX+FMA build writes large outputs around the
   cache (no read-for-ownership, the input the pass re-reads stays cached). */
#if defined(__AVX__) && (defined(__FMA__) || defined(_MSC_VER))
#define FASTBN_HAVE_NT 1
#else
#define FASTBN_HAVE_NT 0
#endif

/* Streaming stores are weakly ordered: fence once at the end of a slice,
   not per run (a fence drains the write-combining buffers, which costs a
   small NCHW batch with short runs dearly). */
static inline void fastbn_stream_fence(int nt)
{
#if FASTBN_HAVE_NT
    if (nt)
        _mm_sfence();
#else
    (void)nt;
#endif
}

/* Ask for the first bytes (at most 1 KiB) of the next run of a channel while
   this one is processed: the runs of an NCHW channel are H*W elements long
   and C*H*W apart, too short for the hardware prefetcher to ramp up on each.
   write: the run is about to be written (its lines are fetched for
   ownership). */
static inline void fastbn_prefetch_for(const void *p, Py_ssize_t nbytes, int write)
{
#if defined(__GNUC__) || defined(__clang__)
    const char *c = (const char *)p;
    if (nbytes > 1024)
        nbytes = 1024;
    for (Py_ssize_t o = 0; o < nbytes; o += 64) {
        if (write)
            __builtin_prefetch(c + o, 1, 3);
        else
            __builtin_prefetch(c + o, 0, 3);
    }
#else
    (void)p;
    (void)nbytes;
    (void)write;
#endif
}

static inline void fastbn_prefetch(const void *p, Py_ssize_t nbytes)
{
    fastbn_prefetch_for(p, nbytes, 0);
}
static inline void fastbn_prefetch_w(void *p, Py_ssize_t nbytes)
{
    fastbn_prefetch_for(p, nbytes, 1);
}

/* Scratch that vector loops load and store (coefficient vectors, column
   partials): malloc returns large blocks 16 bytes into a cache line, where
   every other AVX2 vector and every AVX-512 vector splits across two lines.
   fastbn_malloc64 returns memory starting on a 64-byte boundary (the block
   malloc gave is kept just before it), NULL when there is none; free it
   with fastbn_free64, which takes NULL. */
static inline void *fastbn_malloc64(size_t n)
{
    unsigned char *raw;
    uintptr_t a;
    if (n > SIZE_MAX - 64 - sizeof(void *)) /* the padding would wrap */
        return NULL;
    raw = (unsigned char *)malloc(n + 64 + sizeof(void *));
    if (raw == NULL)
        return NULL;
    a = ((uintptr_t)(raw + sizeof(void *)) + 63) & ~(uintptr_t)63;
    ((void **)a)[-1] = raw;
    return (void *)a;
}

static inline void fastbn_free64(void *p)
{
    if (p != NULL)
        free(((void **)p)[-1]);
}

#endif /* FASTBN_SIMD_H */
