/* Sums over one contiguous run of float32 values, in float32 lanes carried
   into float64: the statistics and gradient sums of batch norm's channel
   runs, layer norm's rows and group norm's runs.

   Accuracy (u = 2^-24).  Sums are taken of d = x - c, with c one sample of
   the same feature: at a large offset x and c lie within a factor of 2 of
   each other and d is exact (Sterbenz), so the offset never enters a sum.
   The d's are added in float32 lanes four vectors at a time, pairwise
   ((d0 + d1) + (d2 + d3), the squares the same way with FMA), and each such
   4-term partial goes into float64 accumulators at once; the last vectors
   of a run go in one by one.  A 4-term pairwise float32 sum has relative
   error <= 2u of the sum of its |terms|, so with mu = mean(d), s^2 = var:
     |mean - exact| <= 2u * mean|d| + (float64 terms),
     |var - exact|  <= 3u * mean(d^2) = 3u * (s^2 + mu^2) (+ the mean's part),
   i.e. 1.2e-7 * sigma and 1.8e-7 * (1 + mu^2/s^2) * var: within the float32
   contract's 1e-6 * sigma and 2e-6 * var while the shift sample lies within
   ~3 sigma of the mean (|mu| <= 3s), as any sample of a non-degenerate
   feature does with high probability; the float64 carry keeps the error
   from growing with the run length.  The gradient sums are the same
   4-term partials of dy and dy * (x - m), m a float32 value near the mean. */
#ifndef FASTBN_RUNS_F32_H
#define FASTBN_RUNS_F32_H

#include <Python.h> /* Py_ssize_t */

#include "fastbn/simd_f32.h"

/* Running sums over several runs: float64 vector accumulators (one pair per
   sum) and float64 scalars for the values past the last full vector, added
   up once, by fastbn_runacc_finish, not once per run. */
typedef struct {
#ifdef FASTBN_VFW
    fastbn_vfacc a, b;
#endif
    double s1, s2;
} fastbn_runacc;

static inline void fastbn_runacc_zero(fastbn_runacc *r)
{
#ifdef FASTBN_VFW
    r->a = fastbn_vfacc_zero();
    r->b = r->a;
#endif
    r->s1 = 0.0;
    r->s2 = 0.0;
}

/* out[0] += the first sum, out[1] += the second */
static inline void fastbn_runacc_finish(const fastbn_runacc *r, double *out)
{
#ifdef FASTBN_VFW
    out[0] += r->s1 + fastbn_vfacc_sum(r->a);
    out[1] += r->s2 + fastbn_vfacc_sum(r->b);
#else
    out[0] += r->s1;
    out[1] += r->s2;
#endif
}

/* r += (sum(p[i] - c), sum((p[i] - c)^2)), i < n */
static inline void fastbn_runacc_sums(fastbn_runacc *r, const float *p, Py_ssize_t n, float c)
{
    Py_ssize_t i = 0;
#ifdef FASTBN_VFW
    fastbn_vf cv = fastbn_vf_set1(c);
    for (; i + 4 * FASTBN_VFW <= n; i += 4 * FASTBN_VFW) {
        fastbn_vf d0 = fastbn_vf_sub(fastbn_vf_load(p + i), cv);
        fastbn_vf d1 = fastbn_vf_sub(fastbn_vf_load(p + i + FASTBN_VFW), cv);
        fastbn_vf d2 = fastbn_vf_sub(fastbn_vf_load(p + i + 2 * FASTBN_VFW), cv);
        fastbn_vf d3 = fastbn_vf_sub(fastbn_vf_load(p + i + 3 * FASTBN_VFW), cv);
        fastbn_vf s = fastbn_vf_add(fastbn_vf_add(d0, d1), fastbn_vf_add(d2, d3));
        fastbn_vf q = fastbn_vf_add(fastbn_vf_fma(d1, d1, fastbn_vf_mul(d0, d0)),
                                    fastbn_vf_fma(d3, d3, fastbn_vf_mul(d2, d2)));
        fastbn_vfacc_add(&r->a, s);
        fastbn_vfacc_add(&r->b, q);
    }
    for (; i + FASTBN_VFW <= n; i += FASTBN_VFW) {
        fastbn_vf d = fastbn_vf_sub(fastbn_vf_load(p + i), cv);
        fastbn_vfacc_add(&r->a, d);
        fastbn_vfacc_add(&r->b, fastbn_vf_mul(d, d));
    }
#endif
    for (; i < n; i++) {
        double d = (double)(p[i] - c);
        r->s1 += d;
        r->s2 += d * d;
    }
}

/* r += (sum(q[i]), sum(q[i] * (p[i] - m))), i < n */
static inline void fastbn_runacc_grad(fastbn_runacc *r, const float *p, const float *q,
                                      Py_ssize_t n, float m)
{
    Py_ssize_t i = 0;
#ifdef FASTBN_VFW
    fastbn_vf mv = fastbn_vf_set1(m);
    for (; i + 4 * FASTBN_VFW <= n; i += 4 * FASTBN_VFW) {
        fastbn_vf g0 = fastbn_vf_load(q + i);
        fastbn_vf g1 = fastbn_vf_load(q + i + FASTBN_VFW);
        fastbn_vf g2 = fastbn_vf_load(q + i + 2 * FASTBN_VFW);
        fastbn_vf g3 = fastbn_vf_load(q + i + 3 * FASTBN_VFW);
        fastbn_vf x0 = fastbn_vf_sub(fastbn_vf_load(p + i), mv);
        fastbn_vf x1 = fastbn_vf_sub(fastbn_vf_load(p + i + FASTBN_VFW), mv);
        fastbn_vf x2 = fastbn_vf_sub(fastbn_vf_load(p + i + 2 * FASTBN_VFW), mv);
        fastbn_vf x3 = fastbn_vf_sub(fastbn_vf_load(p + i + 3 * FASTBN_VFW), mv);
        fastbn_vf s = fastbn_vf_add(fastbn_vf_add(g0, g1), fastbn_vf_add(g2, g3));
        fastbn_vf t = fastbn_vf_add(fastbn_vf_fma(g1, x1, fastbn_vf_mul(g0, x0)),
                                    fastbn_vf_fma(g3, x3, fastbn_vf_mul(g2, x2)));
        fastbn_vfacc_add(&r->a, s);
        fastbn_vfacc_add(&r->b, t);
    }
    for (; i + FASTBN_VFW <= n; i += FASTBN_VFW) {
        fastbn_vf g = fastbn_vf_load(q + i);
        fastbn_vfacc_add(&r->a, g);
        fastbn_vfacc_add(&r->b, fastbn_vf_mul(g, fastbn_vf_sub(fastbn_vf_load(p + i), mv)));
    }
#endif
    for (; i < n; i++) {
        r->s1 += (double)q[i];
        r->s2 += (double)q[i] * (double)(p[i] - m);
    }
}

/* out[0] += sum(p[i] - c), out[1] += sum((p[i] - c)^2), i < n */
static inline void fastbn_run_sums_f32(const float *p, Py_ssize_t n, float c, double *out)
{
    fastbn_runacc r;
    fastbn_runacc_zero(&r);
    fastbn_runacc_sums(&r, p, n, c);
    fastbn_runacc_finish(&r, out);
}

/* out[0] += sum(q[i]), out[1] += sum(q[i] * (p[i] - m)), i < n */
static inline void fastbn_run_grad_f32(const float *p, const float *q, Py_ssize_t n, float m,
                                       double *out)
{
    fastbn_runacc r;
    fastbn_runacc_zero(&r);
    fastbn_runacc_grad(&r, p, q, n, m);
    fastbn_runacc_finish(&r, out);
}

#endif /* FASTBN_RUNS_F32_H */
