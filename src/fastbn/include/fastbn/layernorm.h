/* Layer-norm backward of contiguous float32 rows, in float32 lanes.

   Per row i (features j, g = dout, e = g * gamma, xhat = (x - mean) * invstd):
       dx = invstd * e + b * (x - mean) + c0,
       b = -invstd^3 * sum(e (x - mean)) / D,  c0 = -invstd * sum(e) / D,
   and the column sums dbeta[j] = sum_i g, dgamma[j] = sum_i g * xhat.  One
   pass per row computes the row's two sums and adds the row into the column
   partials; a second pass writes dx while the row is still in L1.

   Rounding (u = 2^-24).  The row sums add their terms in float32 four
   vectors at a time, pairwise, and each 4-term partial goes into float64 at
   once (as group norm's sums): a partial errs by at most 4u times the sum of
   its |terms| (the subtraction x - m and the products included), and the
   float64 carry keeps that independent of D.  x - m uses m = fl(mean): exact near the mean (Sterbenz), and
   sum(e (x - mean)) = sum(e (x - m)) + (m - mean) sum(e) exactly, which the
   float64 finish applies.  The column partials add blocks of 8 consecutive
   rows (FASTBN_LN_BLOCK_ROWS) in float32 before each float64 carry, xhat computed as
   (x - m) * invstd + (m - mean) * invstd: within 12u of the sums of
   |g| and |g xhat| over the block.  dx is the float32 formula of batch
   norm's dx pass (fastbn_center_fold_f). */
#ifndef FASTBN_LAYERNORM_H
#define FASTBN_LAYERNORM_H

#include "fastbn/algebra.h"
#include "fastbn/simd_f32.h"

enum { FASTBN_LN_BLOCK_ROWS = 8 };

/* Row i's sums of e and e * (x - m), and its terms added into the float32
   column partials tb (g) and tg (g * xhat). */
static inline void fastbn_ln_row_grad_f(const float *FASTBN_RESTRICT x,
                                        const float *FASTBN_RESTRICT g,
                                        const float *FASTBN_RESTRICT gamma, Py_ssize_t D, float m,
                                        float inv, float shift, float *FASTBN_RESTRICT tb,
                                        float *FASTBN_RESTRICT tg, double *sg, double *sgx)
{
    double s = 0.0, sx = 0.0;
    Py_ssize_t j = 0;
#ifdef FASTBN_VFW
    fastbn_vf mv = fastbn_vf_set1(m), iv = fastbn_vf_set1(inv), sv = fastbn_vf_set1(shift);
    fastbn_vfacc a = fastbn_vfacc_zero(), b = a;
    for (; j + 4 * FASTBN_VFW <= D; j += 4 * FASTBN_VFW) {
        fastbn_vf e[4], c[4];
        for (int k = 0; k < 4; k++) {
            Py_ssize_t o = j + k * FASTBN_VFW;
            fastbn_vf h = fastbn_vf_load(g + o);
            c[k] = fastbn_vf_sub(fastbn_vf_load(x + o), mv);
            e[k] = fastbn_vf_mul(h, fastbn_vf_load(gamma + o));
            fastbn_vf_store(tb + o, fastbn_vf_add(fastbn_vf_load(tb + o), h));
            fastbn_vf_store(tg + o,
                            fastbn_vf_fma(h, fastbn_vf_fma(c[k], iv, sv), fastbn_vf_load(tg + o)));
        }
        /* 4-term pairwise float32 partials, straight into float64 */
        fastbn_vf se = fastbn_vf_add(fastbn_vf_add(e[0], e[1]), fastbn_vf_add(e[2], e[3]));
        fastbn_vf sc = fastbn_vf_add(fastbn_vf_fma(e[1], c[1], fastbn_vf_mul(e[0], c[0])),
                                     fastbn_vf_fma(e[3], c[3], fastbn_vf_mul(e[2], c[2])));
        fastbn_vfacc_add(&a, se);
        fastbn_vfacc_add(&b, sc);
    }
    s = fastbn_vfacc_sum(a);
    sx = fastbn_vfacc_sum(b);
#endif
    for (; j < D; j++) {
        float h = g[j], c = x[j] - m, e = h * gamma[j];
        s += (double)e;
        sx += (double)e * (double)c;
        tb[j] += h;
        tg[j] += h * (c * inv + shift);
    }
    *sg = s;
    *sgx = sx;
}

/* Rows r0..r1 (r0 a multiple of FASTBN_LN_BLOCK_ROWS, so the row blocks, and
   with them the float32 sums, do not depend on how the rows are shared
   out): dx, and the column
   sums of g and g * xhat into pbeta and pgamma (float64, zeroed here).  tb
   and tg: D floats of scratch each. */
static inline void fastbn_ln_rows_backward_f(
    const float *x, Py_ssize_t sr, const float *dy, Py_ssize_t gr, float *dx, Py_ssize_t dr,
    Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1, const float *FASTBN_RESTRICT gamma,
    const double *mean, const double *invstd, float *FASTBN_RESTRICT tb, float *FASTBN_RESTRICT tg,
    double *FASTBN_RESTRICT pgamma, double *FASTBN_RESTRICT pbeta)
{
    for (Py_ssize_t j = 0; j < D; j++) {
        pgamma[j] = 0.0;
        pbeta[j] = 0.0;
    }
    for (Py_ssize_t i0 = r0; i0 < r1; i0 += FASTBN_LN_BLOCK_ROWS) {
        Py_ssize_t i1 = r1 - i0 < FASTBN_LN_BLOCK_ROWS ? r1 : i0 + FASTBN_LN_BLOCK_ROWS;
        for (Py_ssize_t j = 0; j < D; j++) {
            tb[j] = 0.0f;
            tg[j] = 0.0f;
        }
        for (Py_ssize_t i = i0; i < i1; i++) {
            const float *FASTBN_RESTRICT xr = x + i * sr;
            const float *FASTBN_RESTRICT g = dy + i * gr;
            float *FASTBN_RESTRICT d = dx + i * dr;
            double mu = mean[i], iv = invstd[i], sg, sgx;
            float m = (float)mu, ca, cm, cb, cc;
            fastbn_ln_row_grad_f(xr, g, gamma, D, m, (float)iv, (float)(((double)m - mu) * iv), tb,
                                 tg, &sg, &sgx);
            sgx += ((double)m - mu) * sg;
            ca = (float)iv;
            fastbn_center_fold_f(mu, -iv * iv * iv * sgx / (double)D, -iv * sg / (double)D, &cm,
                                 &cb, &cc);
            for (Py_ssize_t j = 0; j < D; j++)
                d[j] = ca * (gamma[j] * g[j]) + cb * (xr[j] - cm) + cc;
        }
        for (Py_ssize_t j = 0; j < D; j++) {
            pbeta[j] += tb[j];
            pgamma[j] += tg[j];
        }
    }
}

#endif /* FASTBN_LAYERNORM_H */
