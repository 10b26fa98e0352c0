/* Group normalization kernels: statistics per (sample, group) of an
 * (N, C, H, W) array, the output, and the fused backward.
 *
 * Every function here works on one unit of a parallel loop and touches
 * nothing outside it; the caller (``_gn.pyx``) hands the units to OpenMP
 * threads.  Two units, by layout:
 *
 * - block: one (n, g) of a channel-major array (NCHW and anything whose
 *   channel stride is at least its spatial one).  A group's values are C/G
 *   runs along W; a block of the benchmark shapes (6-25 KiB) stays in L1/L2
 *   between the statistics pass and the output pass, so the data cross the
 *   memory bus once each way.
 * - sample: one n of a channels-inner array (channels-last): the inner loop
 *   runs over the C channels of one pixel, all groups at once, with
 *   per-channel coefficient arrays.
 *
 * Element strides are signed and arbitrary; unit-stride runs take the
 * vector loops.  float and double variants come from one macro per kernel
 * (FASTBN_GN_DEFINE), the contiguous run sums from runs_f32.h.
 *
 * Accuracy (float32).  Sums are taken of d = x - c, with c one sample of
 * the group, in float32 lanes carried into float64: the bound derived in
 * runs_f32.h, so the error does not grow with the group size.
 */
#ifndef FASTBN_GROUPNORM_H
#define FASTBN_GROUPNORM_H

#include <math.h>
#include <stdlib.h>
#include <Python.h> /* Py_ssize_t */

#if defined(_MSC_VER)
#define FASTBN_GN_RESTRICT __restrict
#else
#define FASTBN_GN_RESTRICT __restrict__
#endif

/* Element strides of one (N, C, H, W) array. */
typedef struct {
    Py_ssize_t n, c, h, w;
} fastbn_gn_strides;

#include "fastbn/output.h"
#include "fastbn/runs_f32.h"

/* Sums of d = p[i] - c and d^2 over a run of n floats, added into out[0..1]. */
static inline void fastbn_gn_run_sums_f(const float *p, Py_ssize_t n, Py_ssize_t st, float c,
                                        double *out)
{
    if (st == 1) {
        fastbn_run_sums_f32(p, n, c, out);
        return;
    }
    double s1 = 0.0, s2 = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double d = (double)(p[i * st] - c);
        s1 += d;
        s2 += d * d;
    }
    out[0] += s1;
    out[1] += s2;
}

/* Sums of g = q[i] and g * (p[i] - m) over a run of n floats, into out[0..1]. */
static inline void fastbn_gn_run_grad_f(const float *p, Py_ssize_t sp, const float *q,
                                        Py_ssize_t sq, Py_ssize_t n, float m, double *out)
{
    if (sp == 1 && sq == 1) {
        fastbn_run_grad_f32(p, q, n, m, out);
        return;
    }
    double s1 = 0.0, s2 = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        s1 += (double)q[i * sq];
        s2 += (double)q[i * sq] * (double)(p[i * sp] - m);
    }
    out[0] += s1;
    out[1] += s2;
}

/* float64: the same sums in float64, four independent accumulators. */
static inline void fastbn_gn_run_sums_d(const double *p, Py_ssize_t n, Py_ssize_t st, double c,
                                        double *out)
{
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, b0 = 0.0, b1 = 0.0, b2 = 0.0, b3 = 0.0;
    Py_ssize_t i = 0;
    if (st == 1) {
        for (; i + 4 <= n; i += 4) {
            double d0 = p[i] - c, d1 = p[i + 1] - c, d2 = p[i + 2] - c, d3 = p[i + 3] - c;
            a0 += d0;
            a1 += d1;
            a2 += d2;
            a3 += d3;
            b0 += d0 * d0;
            b1 += d1 * d1;
            b2 += d2 * d2;
            b3 += d3 * d3;
        }
    }
    for (; i < n; i++) {
        double d = p[i * st] - c;
        a0 += d;
        b0 += d * d;
    }
    out[0] += (a0 + a1) + (a2 + a3);
    out[1] += (b0 + b1) + (b2 + b3);
}

static inline void fastbn_gn_run_grad_d(const double *p, Py_ssize_t sp, const double *q,
                                        Py_ssize_t sq, Py_ssize_t n, double m, double *out)
{
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, b0 = 0.0, b1 = 0.0, b2 = 0.0, b3 = 0.0;
    Py_ssize_t i = 0;
    if (sp == 1 && sq == 1) {
        for (; i + 4 <= n; i += 4) {
            a0 += q[i];
            a1 += q[i + 1];
            a2 += q[i + 2];
            a3 += q[i + 3];
            b0 += q[i] * (p[i] - m);
            b1 += q[i + 1] * (p[i + 1] - m);
            b2 += q[i + 2] * (p[i + 2] - m);
            b3 += q[i + 3] * (p[i + 3] - m);
        }
    }
    for (; i < n; i++) {
        a0 += q[i * sq];
        b0 += q[i * sq] * (p[i * sp] - m);
    }
    out[0] += (a0 + a1) + (a2 + a3);
    out[1] += (b0 + b1) + (b2 + b3);
}

/* mean, 1/sqrt(var + eps) from sums of d = x - center and d^2 over n values */
static inline void fastbn_gn_finish(double s1, double s2, double n, double center, double eps,
                                    double *mean, double *invstd)
{
    double m = s1 / n;
    double v = s2 / n - m * m;
    v = v < 0.0 ? 0.0 : v; /* rounding only; NaN stays NaN */
    *mean = center + m;
    *invstd = 1.0 / sqrt(v + eps);
}

/* ---- the kernels, for T = float (SFX f) and double (SFX d) ----
 *
 * The output is written centred, y = (x - m) * a + b with m the mean in T
 * and the rounding of m folded into b: no cancellation between a large
 * x * a and b at an offset (in float32, 1e4 * ulp would be 1e-3).
 * The backward is the closed form per group, with g = dout * gamma,
 * M = C/G * H * W and xc = x - mean:
 *   dx = invstd * g - invstd^3 * sum(g * xc) / M * xc - invstd * sum(g) / M,
 * its two group sums built from per-channel sums of dout and dout * xc,
 * which also give dbeta and dgamma; dx is then one fused pass.
 *
 * Contiguous runs are written by output.h's run functions: with nt != 0
 * in non-temporal stores (a large output goes to memory without first being
 * read in), the same values either way. */
#define FASTBN_GN_DEFINE(T, SFX)                                                                   \
    static inline void fastbn_gn_block_forward_##SFX(                                              \
        const T *x, fastbn_gn_strides xs, T *y, fastbn_gn_strides ys, Py_ssize_t Cg, Py_ssize_t H, \
        Py_ssize_t W, const T *gamma, const T *beta, double eps, double *mean, double *invstd,     \
        int nt)                                                                                    \
    {                                                                                              \
        double acc[2] = {0.0, 0.0};                                                                \
        double M = (double)Cg * (double)H * (double)W, mu, inv;                                    \
        T c = x[0], m;                                                                             \
        Py_ssize_t k, h, w;                                                                        \
        if (xs.w == 1 && (H == 1 || xs.h == W) && xs.c == H * W) /* one run: the whole group */    \
            fastbn_gn_run_sums_##SFX(x, Cg * H * W, 1, c, acc);                                    \
        else                                                                                       \
            for (k = 0; k < Cg; k++)                                                               \
                for (h = 0; h < H; h++)                                                            \
                    fastbn_gn_run_sums_##SFX(x + k * xs.c + h * xs.h, W, xs.w, c, acc);            \
        fastbn_gn_finish(acc[0], acc[1], M, (double)c, eps, &mu, &inv);                            \
        *mean = mu;                                                                                \
        *invstd = inv;                                                                             \
        m = (T)mu;                                                                                 \
        for (k = 0; k < Cg; k++) {                                                                 \
            double a = (double)gamma[k] * inv;                                                     \
            T at = (T)a, bt = (T)((double)beta[k] - (mu - (double)m) * a);                         \
            for (h = 0; h < H; h++) {                                                              \
                const T *FASTBN_GN_RESTRICT p = x + k * xs.c + h * xs.h;                           \
                T *FASTBN_GN_RESTRICT q = y + k * ys.c + h * ys.h;                                 \
                if (xs.w == 1 && ys.w == 1) {                                                      \
                    fastbn_norm_run_##SFX(p, q, W, m, at, bt, nt);                                 \
                } else {                                                                           \
                    for (w = 0; w < W; w++)                                                        \
                        q[w * ys.w] = (p[w * xs.w] - m) * at + bt;                                 \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        fastbn_stream_fence(nt);                                                                   \
    }                                                                                              \
                                                                                                   \
    static inline void fastbn_gn_block_backward_##SFX(                                             \
        const T *x, fastbn_gn_strides xs, const T *dy, fastbn_gn_strides gs, T *dx,                \
        fastbn_gn_strides ds, Py_ssize_t Cg, Py_ssize_t H, Py_ssize_t W, const T *gamma,           \
        double mu, double inv, double *pdgamma, double *pdbeta, int nt)                            \
    {                                                                                              \
        double M = (double)Cg * (double)H * (double)W, A = 0.0, B = 0.0, b, e;                     \
        T m = (T)mu;                                                                               \
        Py_ssize_t k, h, w;                                                                        \
        for (k = 0; k < Cg; k++) {                                                                 \
            double acc[2] = {0.0, 0.0}, sdyx;                                                      \
            for (h = 0; h < H; h++)                                                                \
                fastbn_gn_run_grad_##SFX(x + k * xs.c + h * xs.h, xs.w, dy + k * gs.c + h * gs.h,  \
                                         gs.w, W, m, acc);                                         \
            sdyx = acc[1] + ((double)m - mu) * acc[0]; /* centred at the mean */                   \
            pdbeta[k] = acc[0];                                                                    \
            pdgamma[k] = sdyx * inv;                                                               \
            A += (double)gamma[k] * acc[0];                                                        \
            B += (double)gamma[k] * sdyx;                                                          \
        }                                                                                          \
        b = -inv * inv * inv * B / M;                                                              \
        e = -inv * A / M + b * ((double)m - mu);                                                   \
        for (k = 0; k < Cg; k++) {                                                                 \
            T ca = (T)((double)gamma[k] * inv), cb = (T)b, cc = (T)e;                              \
            for (h = 0; h < H; h++) {                                                              \
                const T *FASTBN_GN_RESTRICT p = x + k * xs.c + h * xs.h;                           \
                const T *FASTBN_GN_RESTRICT g = dy + k * gs.c + h * gs.h;                          \
                T *FASTBN_GN_RESTRICT r = dx + k * ds.c + h * ds.h;                                \
                if (xs.w == 1 && gs.w == 1 && ds.w == 1) {                                         \
                    fastbn_dx_run_##SFX(p, g, r, W, ca, cb, m, cc, nt);                            \
                } else {                                                                           \
                    for (w = 0; w < W; w++)                                                        \
                        r[w * ds.w] = ca * g[w * gs.w] + (cb * (p[w * xs.w] - m) + cc);            \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        fastbn_stream_fence(nt);                                                                   \
    }                                                                                              \
                                                                                                   \
    /* One sample of a channels-inner array; mean/invstd are this sample's G     \
   entries.  Returns -1 when its work memory cannot be allocated. */                 \
    static inline int fastbn_gn_sample_forward_##SFX(                                              \
        const T *x, fastbn_gn_strides xs, T *y, fastbn_gn_strides ys, Py_ssize_t C, Py_ssize_t H,  \
        Py_ssize_t W, Py_ssize_t G, const T *gamma, const T *beta, double eps, double *mean,       \
        double *invstd)                                                                            \
    {                                                                                              \
        Py_ssize_t Cg = C / G, k, h, w, g;                                                         \
        double M = (double)Cg * (double)H * (double)W;                                             \
        double *s = (double *)fastbn_malloc64(2 * C * sizeof(double));                             \
        T *cf = (T *)fastbn_malloc64(3 * C * sizeof(T));                                           \
        if (s == NULL || cf == NULL) {                                                             \
            fastbn_free64(s);                                                                      \
            fastbn_free64(cf);                                                                     \
            return -1;                                                                             \
        }                                                                                          \
        {                                                                                          \
            double *FASTBN_GN_RESTRICT s1 = s;                                                     \
            double *FASTBN_GN_RESTRICT s2 = s + C;                                                 \
            T *FASTBN_GN_RESTRICT cm = cf;     /* per channel: its group's shift, */               \
            T *FASTBN_GN_RESTRICT ca = cf + C; /* then its group's mean in T */                    \
            T *FASTBN_GN_RESTRICT cb = cf + 2 * C;                                                 \
            for (k = 0; k < C; k++) {                                                              \
                cm[k] = x[(k / Cg) * Cg * xs.c];                                                   \
                s1[k] = 0.0;                                                                       \
                s2[k] = 0.0;                                                                       \
            }                                                                                      \
            for (h = 0; h < H; h++)                                                                \
                for (w = 0; w < W; w++) {                                                          \
                    const T *p = x + h * xs.h + w * xs.w;                                          \
                    if (xs.c == 1) {                                                               \
                        for (k = 0; k < C; k++) {                                                  \
                            double d = (double)(p[k] - cm[k]);                                     \
                            s1[k] += d;                                                            \
                            s2[k] += d * d;                                                        \
                        }                                                                          \
                    } else {                                                                       \
                        for (k = 0; k < C; k++) {                                                  \
                            double d = (double)(p[k * xs.c] - cm[k]);                              \
                            s1[k] += d;                                                            \
                            s2[k] += d * d;                                                        \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
            for (g = 0; g < G; g++) {                                                              \
                double t1 = 0.0, t2 = 0.0, mu, inv;                                                \
                T m;                                                                               \
                for (k = g * Cg; k < (g + 1) * Cg; k++) {                                          \
                    t1 += s1[k];                                                                   \
                    t2 += s2[k];                                                                   \
                }                                                                                  \
                fastbn_gn_finish(t1, t2, M, (double)cm[g * Cg], eps, &mu, &inv);                   \
                mean[g] = mu;                                                                      \
                invstd[g] = inv;                                                                   \
                m = (T)mu;                                                                         \
                for (k = g * Cg; k < (g + 1) * Cg; k++) {                                          \
                    double a = (double)gamma[k] * inv;                                             \
                    cm[k] = m;                                                                     \
                    ca[k] = (T)a;                                                                  \
                    cb[k] = (T)((double)beta[k] - (mu - (double)m) * a);                           \
                }                                                                                  \
            }                                                                                      \
            for (h = 0; h < H; h++)                                                                \
                for (w = 0; w < W; w++) {                                                          \
                    const T *p = x + h * xs.h + w * xs.w;                                          \
                    T *q = y + h * ys.h + w * ys.w;                                                \
                    if (xs.c == 1 && ys.c == 1) {                                                  \
                        for (k = 0; k < C; k++)                                                    \
                            q[k] = (p[k] - cm[k]) * ca[k] + cb[k];                                 \
                    } else {                                                                       \
                        for (k = 0; k < C; k++)                                                    \
                            q[k * ys.c] = (p[k * xs.c] - cm[k]) * ca[k] + cb[k];                   \
                    }                                                                              \
                }                                                                                  \
        }                                                                                          \
        fastbn_free64(s);                                                                          \
        fastbn_free64(cf);                                                                         \
        return 0;                                                                                  \
    }                                                                                              \
                                                                                                   \
    static inline int fastbn_gn_sample_backward_##SFX(                                             \
        const T *x, fastbn_gn_strides xs, const T *dy, fastbn_gn_strides gs, T *dx,                \
        fastbn_gn_strides ds, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t G,              \
        const T *gamma, const double *mean, const double *invstd, double *pdgamma, double *pdbeta) \
    {                                                                                              \
        Py_ssize_t Cg = C / G, k, h, w, g;                                                         \
        double M = (double)Cg * (double)H * (double)W;                                             \
        double *s = (double *)fastbn_malloc64(2 * C * sizeof(double));                             \
        T *cf = (T *)fastbn_malloc64(4 * C * sizeof(T));                                           \
        if (s == NULL || cf == NULL) {                                                             \
            fastbn_free64(s);                                                                      \
            fastbn_free64(cf);                                                                     \
            return -1;                                                                             \
        }                                                                                          \
        {                                                                                          \
            double *FASTBN_GN_RESTRICT sg = s;                                                     \
            double *FASTBN_GN_RESTRICT sgx = s + C;                                                \
            T *FASTBN_GN_RESTRICT cm = cf;                                                         \
            T *FASTBN_GN_RESTRICT ca = cf + C;                                                     \
            T *FASTBN_GN_RESTRICT cb = cf + 2 * C;                                                 \
            T *FASTBN_GN_RESTRICT cc = cf + 3 * C;                                                 \
            for (k = 0; k < C; k++) {                                                              \
                cm[k] = (T)mean[k / Cg];                                                           \
                sg[k] = 0.0;                                                                       \
                sgx[k] = 0.0;                                                                      \
            }                                                                                      \
            for (h = 0; h < H; h++)                                                                \
                for (w = 0; w < W; w++) {                                                          \
                    const T *p = x + h * xs.h + w * xs.w;                                          \
                    const T *q = dy + h * gs.h + w * gs.w;                                         \
                    if (xs.c == 1 && gs.c == 1) {                                                  \
                        for (k = 0; k < C; k++) {                                                  \
                            sg[k] += (double)q[k];                                                 \
                            sgx[k] += (double)q[k] * (double)(p[k] - cm[k]);                       \
                        }                                                                          \
                    } else {                                                                       \
                        for (k = 0; k < C; k++) {                                                  \
                            sg[k] += (double)q[k * gs.c];                                          \
                            sgx[k] += (double)q[k * gs.c] * (double)(p[k * xs.c] - cm[k]);         \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
            for (g = 0; g < G; g++) {                                                              \
                double mu = mean[g], inv = invstd[g], A = 0.0, B = 0.0, b, e;                      \
                double dm = (double)cm[g * Cg] - mu;                                               \
                for (k = g * Cg; k < (g + 1) * Cg; k++) {                                          \
                    double sdyx = sgx[k] + dm * sg[k]; /* centred at the mean */                   \
                    pdbeta[k] = sg[k];                                                             \
                    pdgamma[k] = sdyx * inv;                                                       \
                    A += (double)gamma[k] * sg[k];                                                 \
                    B += (double)gamma[k] * sdyx;                                                  \
                }                                                                                  \
                b = -inv * inv * inv * B / M;                                                      \
                e = -inv * A / M + b * dm;                                                         \
                for (k = g * Cg; k < (g + 1) * Cg; k++) {                                          \
                    ca[k] = (T)((double)gamma[k] * inv);                                           \
                    cb[k] = (T)b;                                                                  \
                    cc[k] = (T)e;                                                                  \
                }                                                                                  \
            }                                                                                      \
            for (h = 0; h < H; h++)                                                                \
                for (w = 0; w < W; w++) {                                                          \
                    const T *p = x + h * xs.h + w * xs.w;                                          \
                    const T *q = dy + h * gs.h + w * gs.w;                                         \
                    T *r = dx + h * ds.h + w * ds.w;                                               \
                    if (xs.c == 1 && gs.c == 1 && ds.c == 1) {                                     \
                        for (k = 0; k < C; k++)                                                    \
                            r[k] = ca[k] * q[k] + (cb[k] * (p[k] - cm[k]) + cc[k]);                \
                    } else {                                                                       \
                        for (k = 0; k < C; k++)                                                    \
                            r[k * ds.c] =                                                          \
                                ca[k] * q[k * gs.c] + (cb[k] * (p[k * xs.c] - cm[k]) + cc[k]);     \
                    }                                                                              \
                }                                                                                  \
        }                                                                                          \
        fastbn_free64(s);                                                                          \
        fastbn_free64(cf);                                                                         \
        return 0;                                                                                  \
    }

FASTBN_GN_DEFINE(float, f)
FASTBN_GN_DEFINE(double, d)

#endif /* FASTBN_GROUPNORM_H */
