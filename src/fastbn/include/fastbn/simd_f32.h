/* float32 vectors of the build's widest width (16 lanes with AVX-512, 8 with
   AVX2, 4 with SSE2) and their float64 halves: the float32-lane loops of
   group norm and layer norm add float32 partials in these and carry them
   into float64 vectors (fastbn_vf_lo / fastbn_vf_hi).  FASTBN_VFW is left
   undefined where no vector unit is known; callers keep a scalar loop. */
#ifndef FASTBN_SIMD_F32_H
#define FASTBN_SIMD_F32_H

#if defined(__AVX512F__)
#include <immintrin.h>
#define FASTBN_VFW 16
typedef __m512 fastbn_vf;
typedef __m512d fastbn_vfd;
#define fastbn_vf_set1(a) _mm512_set1_ps(a)
#define fastbn_vf_load(p) _mm512_loadu_ps(p)
#define fastbn_vf_store(p, a) _mm512_storeu_ps(p, a)
#define fastbn_vf_sub(a, b) _mm512_sub_ps(a, b)
#define fastbn_vf_add(a, b) _mm512_add_ps(a, b)
#define fastbn_vf_mul(a, b) _mm512_mul_ps(a, b)
#define fastbn_vf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define fastbn_vfd_zero() _mm512_setzero_pd()
#define fastbn_vfd_add(a, b) _mm512_add_pd(a, b)
#define fastbn_vfd_load(p) _mm512_loadu_pd(p)
#define fastbn_vfd_store(p, a) _mm512_storeu_pd(p, a)
#define fastbn_vf_lo(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))
#define fastbn_vf_hi(v)                                                                            \
    _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
static inline double fastbn_vfd_sum(fastbn_vfd a) { return _mm512_reduce_add_pd(a); }
#elif defined(__AVX2__)
#include <immintrin.h>
#define FASTBN_VFW 8
typedef __m256 fastbn_vf;
typedef __m256d fastbn_vfd;
#define fastbn_vf_set1(a) _mm256_set1_ps(a)
#define fastbn_vf_load(p) _mm256_loadu_ps(p)
#define fastbn_vf_store(p, a) _mm256_storeu_ps(p, a)
#define fastbn_vf_sub(a, b) _mm256_sub_ps(a, b)
#define fastbn_vf_add(a, b) _mm256_add_ps(a, b)
#define fastbn_vf_mul(a, b) _mm256_mul_ps(a, b)
#if defined(__FMA__) || defined(_MSC_VER)
#define fastbn_vf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
#define fastbn_vf_fma(a, b, c) _mm256_add_ps(_mm256_mul_ps(a, b), c)
#endif
#define fastbn_vfd_zero() _mm256_setzero_pd()
#define fastbn_vfd_add(a, b) _mm256_add_pd(a, b)
#define fastbn_vfd_load(p) _mm256_loadu_pd(p)
#define fastbn_vfd_store(p, a) _mm256_storeu_pd(p, a)
#define fastbn_vf_lo(v) _mm256_cvtps_pd(_mm256_castps256_ps128(v))
#define fastbn_vf_hi(v) _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))
static inline double fastbn_vfd_sum(fastbn_vfd a)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
#elif defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define FASTBN_VFW 4
typedef __m128 fastbn_vf;
typedef __m128d fastbn_vfd;
#define fastbn_vf_set1(a) _mm_set1_ps(a)
#define fastbn_vf_load(p) _mm_loadu_ps(p)
#define fastbn_vf_store(p, a) _mm_storeu_ps(p, a)
#define fastbn_vf_sub(a, b) _mm_sub_ps(a, b)
#define fastbn_vf_add(a, b) _mm_add_ps(a, b)
#define fastbn_vf_mul(a, b) _mm_mul_ps(a, b)
#define fastbn_vf_fma(a, b, c) _mm_add_ps(_mm_mul_ps(a, b), c)
#define fastbn_vfd_zero() _mm_setzero_pd()
#define fastbn_vfd_add(a, b) _mm_add_pd(a, b)
#define fastbn_vfd_load(p) _mm_loadu_pd(p)
#define fastbn_vfd_store(p, a) _mm_storeu_pd(p, a)
#define fastbn_vf_lo(v) _mm_cvtps_pd(v)
#define fastbn_vf_hi(v) _mm_cvtps_pd(_mm_movehl_ps(v, v))
static inline double fastbn_vfd_sum(fastbn_vfd a)
{
    return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}
#endif

#ifdef FASTBN_VFW
/* float64 sums of FASTBN_VFW float32 lanes: one float64 vector per half */
typedef struct {
    fastbn_vfd lo, hi;
} fastbn_vfacc;

static inline fastbn_vfacc fastbn_vfacc_zero(void)
{
    fastbn_vfacc a = {fastbn_vfd_zero(), fastbn_vfd_zero()};
    return a;
}

/* a += v, lane by lane, in float64 */
static inline void fastbn_vfacc_add(fastbn_vfacc *a, fastbn_vf v)
{
    a->lo = fastbn_vfd_add(a->lo, fastbn_vf_lo(v));
    a->hi = fastbn_vfd_add(a->hi, fastbn_vf_hi(v));
}

/* the sum of all lanes of a */
static inline double fastbn_vfacc_sum(fastbn_vfacc a)
{
    return fastbn_vfd_sum(fastbn_vfd_add(a.lo, a.hi));
}

/* o[0..FASTBN_VFW) += v, in float64 */
static inline void fastbn_vf_add_to(double *o, fastbn_vf v)
{
    fastbn_vfd_store(o, fastbn_vfd_add(fastbn_vfd_load(o), fastbn_vf_lo(v)));
    fastbn_vfd_store(o + FASTBN_VFW / 2,
                     fastbn_vfd_add(fastbn_vfd_load(o + FASTBN_VFW / 2), fastbn_vf_hi(v)));
}
#endif

#endif /* FASTBN_SIMD_F32_H */
