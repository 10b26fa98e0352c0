# cython: language_level=3
"""Inline loops and per-feature algebra shared by the kernel modules.

Each loop covers one slice of data for one thread; the modules that
cimport these (``_bn``, and any other kernel module) decide how the slices
are handed out.  All loops are ``noexcept nogil`` and take element strides,
so any layout works; a unit stride gets its own loop so the compiler emits
contiguous vector loads.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt    # its #include <math.h> also serves the C blocks
from cython cimport floating


# float64 row sweeps in C: with every pointer of one type GCC cannot prove that
# the rows and the sums do not overlap and would leave the loop scalar;
# ``restrict`` says they do not (the callers pass disjoint buffers).
cdef extern from *:
    """
    #if defined(_MSC_VER)
    #define FASTBN_RESTRICT __restrict
    #else
    #define FASTBN_RESTRICT __restrict__
    #endif
    static inline void fastbn_rows4_sums_d(const double* FASTBN_RESTRICT a0, Py_ssize_t sr,
                                           Py_ssize_t D, const double* FASTBN_RESTRICT c,
                                           double* FASTBN_RESTRICT s1,
                                           double* FASTBN_RESTRICT s2) {
        const double* a1 = a0 + sr;
        const double* a2 = a1 + sr;
        const double* a3 = a2 + sr;
        for (Py_ssize_t j = 0; j < D; j++) {
            double v0 = a0[j] - c[j], v1 = a1[j] - c[j], v2 = a2[j] - c[j], v3 = a3[j] - c[j];
            s1[j] += (v0 + v1) + (v2 + v3);
            s2[j] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
        }
    }
    static inline void fastbn_rows2_grad_d(const double* FASTBN_RESTRICT x0, Py_ssize_t sr,
                                           const double* FASTBN_RESTRICT g0, Py_ssize_t gr,
                                           Py_ssize_t D, const double* FASTBN_RESTRICT m,
                                           double* FASTBN_RESTRICT sdy,
                                           double* FASTBN_RESTRICT sdyx) {
        const double* x1 = x0 + sr;
        const double* g1 = g0 + gr;
        for (Py_ssize_t j = 0; j < D; j++) {
            sdy[j] += g0[j] + g1[j];
            sdyx[j] += g0[j] * (x0[j] - m[j]) + g1[j] * (x1[j] - m[j]);
        }
    }

    /* One contiguous run of a channel, summed in float64 with four
       independent vector accumulators per sum.  With one accumulator every
       add waits for the previous one (4-cycle latency) and the loop runs at
       a fraction of the load bandwidth.  Written with intrinsics: GCC 12
       neither splits a reduction into several accumulators by itself nor
       converts float vectors to double vectors without a trip through the
       stack.  Each build (baseline SSE2, AVX2+FMA) gets its own width. */
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
    #define fastbn_vload_f(p) _mm_cvtps_pd(_mm_castpd_ps(_mm_load_sd((const double*)(p))))
    #define fastbn_vstore(p, a) _mm_storeu_pd(p, a)
    #endif

    #ifdef FASTBN_VW
    /* the sum of all lanes of four accumulators */
    static inline double fastbn_hsum4(fastbn_vd a0, fastbn_vd a1, fastbn_vd a2, fastbn_vd a3) {
        double t[FASTBN_VW], s = 0.0;
        fastbn_vstore(t, fastbn_vadd(fastbn_vadd(a0, a1), fastbn_vadd(a2, a3)));
        for (int l = 0; l < FASTBN_VW; l++) s += t[l];
        return s;
    }
    #define FASTBN_DEFINE_SEG(T, SFX)                                              \
    static inline void fastbn_seg_sums_##SFX(const T* FASTBN_RESTRICT p,          \
            Py_ssize_t n, double c, double* FASTBN_RESTRICT out) {                \
        fastbn_vd a0 = fastbn_vzero(), a1 = a0, a2 = a0, a3 = a0;                  \
        fastbn_vd b0 = a0, b1 = a0, b2 = a0, b3 = a0, cv = fastbn_vset1(c);        \
        double s1 = 0.0, s2 = 0.0;                                                 \
        Py_ssize_t i = 0;                                                          \
        for (; i + 4 * FASTBN_VW <= n; i += 4 * FASTBN_VW) {                       \
            fastbn_vd v0 = fastbn_vsub(fastbn_vload_##SFX(p + i), cv);             \
            fastbn_vd v1 = fastbn_vsub(fastbn_vload_##SFX(p + i + FASTBN_VW), cv); \
            fastbn_vd v2 = fastbn_vsub(fastbn_vload_##SFX(p + i + 2 * FASTBN_VW), cv); \
            fastbn_vd v3 = fastbn_vsub(fastbn_vload_##SFX(p + i + 3 * FASTBN_VW), cv); \
            a0 = fastbn_vadd(a0, v0); a1 = fastbn_vadd(a1, v1);                    \
            a2 = fastbn_vadd(a2, v2); a3 = fastbn_vadd(a3, v3);                    \
            b0 = fastbn_vmuladd(v0, v0, b0); b1 = fastbn_vmuladd(v1, v1, b1);      \
            b2 = fastbn_vmuladd(v2, v2, b2); b3 = fastbn_vmuladd(v3, v3, b3);      \
        }                                                                          \
        for (; i < n; i++) {                                                       \
            double v = (double)p[i] - c;                                           \
            s1 += v;                                                               \
            s2 += v * v;                                                           \
        }                                                                          \
        out[0] += s1 + fastbn_hsum4(a0, a1, a2, a3);                               \
        out[1] += s2 + fastbn_hsum4(b0, b1, b2, b3);                               \
    }                                                                              \
    static inline void fastbn_seg_grad_##SFX(const T* FASTBN_RESTRICT p,          \
            const T* FASTBN_RESTRICT q, Py_ssize_t n, double m,                    \
            double* FASTBN_RESTRICT out) {                                         \
        fastbn_vd a0 = fastbn_vzero(), a1 = a0, a2 = a0, a3 = a0;                  \
        fastbn_vd b0 = a0, b1 = a0, b2 = a0, b3 = a0, mv = fastbn_vset1(m);        \
        double s1 = 0.0, s2 = 0.0;                                                 \
        Py_ssize_t i = 0;                                                          \
        for (; i + 4 * FASTBN_VW <= n; i += 4 * FASTBN_VW) {                       \
            fastbn_vd g0 = fastbn_vload_##SFX(q + i);                              \
            fastbn_vd g1 = fastbn_vload_##SFX(q + i + FASTBN_VW);                  \
            fastbn_vd g2 = fastbn_vload_##SFX(q + i + 2 * FASTBN_VW);              \
            fastbn_vd g3 = fastbn_vload_##SFX(q + i + 3 * FASTBN_VW);              \
            a0 = fastbn_vadd(a0, g0); a1 = fastbn_vadd(a1, g1);                    \
            a2 = fastbn_vadd(a2, g2); a3 = fastbn_vadd(a3, g3);                    \
            b0 = fastbn_vmuladd(g0, fastbn_vsub(fastbn_vload_##SFX(p + i), mv), b0); \
            b1 = fastbn_vmuladd(g1, fastbn_vsub(fastbn_vload_##SFX(p + i + FASTBN_VW), mv), b1); \
            b2 = fastbn_vmuladd(g2, fastbn_vsub(fastbn_vload_##SFX(p + i + 2 * FASTBN_VW), mv), b2); \
            b3 = fastbn_vmuladd(g3, fastbn_vsub(fastbn_vload_##SFX(p + i + 3 * FASTBN_VW), mv), b3); \
        }                                                                          \
        for (; i < n; i++) {                                                       \
            double g = (double)q[i];                                               \
            s1 += g;                                                               \
            s2 += g * ((double)p[i] - m);                                          \
        }                                                                          \
        out[0] += s1 + fastbn_hsum4(a0, a1, a2, a3);                               \
        out[1] += s2 + fastbn_hsum4(b0, b1, b2, b3);                               \
    }
    #else  /* no SIMD header (not x86): plain loops, the compiler vectorizes */
    #define FASTBN_DEFINE_SEG(T, SFX)                                              \
    static inline void fastbn_seg_sums_##SFX(const T* FASTBN_RESTRICT p,          \
            Py_ssize_t n, double c, double* FASTBN_RESTRICT out) {                \
        double s1 = 0.0, s2 = 0.0;                                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                       \
            double v = (double)p[i] - c;                                           \
            s1 += v;                                                               \
            s2 += v * v;                                                           \
        }                                                                          \
        out[0] += s1;                                                              \
        out[1] += s2;                                                              \
    }                                                                              \
    static inline void fastbn_seg_grad_##SFX(const T* FASTBN_RESTRICT p,          \
            const T* FASTBN_RESTRICT q, Py_ssize_t n, double m,                    \
            double* FASTBN_RESTRICT out) {                                         \
        double s1 = 0.0, s2 = 0.0;                                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                       \
            double g = (double)q[i];                                               \
            s1 += g;                                                               \
            s2 += g * ((double)p[i] - m);                                          \
        }                                                                          \
        out[0] += s1;                                                              \
        out[1] += s2;                                                              \
    }
    #endif
    FASTBN_DEFINE_SEG(float, f)
    FASTBN_DEFINE_SEG(double, d)

    /* Ask for the first bytes of the next run of a channel while this one is
       summed: the runs of an NCHW channel are H*W elements apart by C*H*W,
       too short for the hardware prefetcher to ramp up on each. */
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTBN_PREFETCH_LOOP(p, nbytes, rw)                                    \
        const char* c = (const char*)(p);                                          \
        if (nbytes > 1024) nbytes = 1024;                                          \
        for (Py_ssize_t o = 0; o < nbytes; o += 64) __builtin_prefetch(c + o, rw, 3);
    #else
    #define FASTBN_PREFETCH_LOOP(p, nbytes, rw) (void)(p); (void)(nbytes);
    #endif
    static inline void fastbn_prefetch(const void* p, Py_ssize_t nbytes) {
        FASTBN_PREFETCH_LOOP(p, nbytes, 0)
    }
    static inline void fastbn_prefetch_w(void* p, Py_ssize_t nbytes) {
        FASTBN_PREFETCH_LOOP(p, nbytes, 1)
    }

    /* Output loops: y = (x - m) * a + b and dx = ca*dy + (cb*(x - m) + cc),
       over one contiguous run, with per-run scalars (channels) or per-column
       vectors (rows).  With nt != 0 the stores are non-temporal: a large
       output then goes to memory without first being read in (no
       read-for-ownership) and without evicting the input the pass re-reads
       from cache.  The AVX build writes both variants with the same
       intrinsics and fused multiply-adds, so nt changes where the bytes go,
       never their value; other builds ignore nt and leave the loops to the
       compiler. */
    #if defined(__AVX__) && (defined(__FMA__) || defined(_MSC_VER))
    #define FASTBN_HAVE_NT 1
    #include <math.h>
    #define FASTBN_DEFINE_OUT(T, SFX, V, W, LD, ST, STNT, SET1, SUB, FMA, SFMA)    \
    static inline void fastbn_norm_run_##SFX(const T* p, T* q, Py_ssize_t n,      \
            T m, T a, T b, int nt) {                                               \
        Py_ssize_t i = 0;                                                          \
        V mv = SET1(m), av = SET1(a), bv = SET1(b);                                \
        if (nt) while (i < n && ((size_t)(q + i) & 31)) {                          \
            q[i] = SFMA(p[i] - m, a, b); i++; }                                    \
        if (nt && !((size_t)(q + i) & 31))                                         \
            for (; i + W <= n; i += W) STNT(q + i, FMA(SUB(LD(p + i), mv), av, bv)); \
        else                                                                       \
            for (; i + W <= n; i += W) ST(q + i, FMA(SUB(LD(p + i), mv), av, bv)); \
        for (; i < n; i++) q[i] = SFMA(p[i] - m, a, b);                            \
    }                                                                              \
    static inline void fastbn_norm_row_##SFX(const T* p, T* q, Py_ssize_t n,      \
            const T* m, const T* a, const T* b, int nt) {                          \
        Py_ssize_t i = 0;                                                          \
        if (nt) while (i < n && ((size_t)(q + i) & 31)) {                          \
            q[i] = SFMA(p[i] - m[i], a[i], b[i]); i++; }                           \
        if (nt && !((size_t)(q + i) & 31))                                         \
            for (; i + W <= n; i += W)                                             \
                STNT(q + i, FMA(SUB(LD(p + i), LD(m + i)), LD(a + i), LD(b + i))); \
        else                                                                       \
            for (; i + W <= n; i += W)                                             \
                ST(q + i, FMA(SUB(LD(p + i), LD(m + i)), LD(a + i), LD(b + i)));   \
        for (; i < n; i++) q[i] = SFMA(p[i] - m[i], a[i], b[i]);                   \
    }                                                                              \
    static inline void fastbn_dx_run_##SFX(const T* p, const T* g, T* r,          \
            Py_ssize_t n, T ca, T cb, T m, T cc, int nt) {                         \
        Py_ssize_t i = 0;                                                          \
        V cav = SET1(ca), cbv = SET1(cb), mv = SET1(m), ccv = SET1(cc);            \
        if (nt) while (i < n && ((size_t)(r + i) & 31)) {                          \
            r[i] = SFMA(ca, g[i], SFMA(cb, p[i] - m, cc)); i++; }                  \
        if (nt && !((size_t)(r + i) & 31))                                         \
            for (; i + W <= n; i += W)                                             \
                STNT(r + i, FMA(cav, LD(g + i), FMA(cbv, SUB(LD(p + i), mv), ccv))); \
        else                                                                       \
            for (; i + W <= n; i += W)                                             \
                ST(r + i, FMA(cav, LD(g + i), FMA(cbv, SUB(LD(p + i), mv), ccv))); \
        for (; i < n; i++) r[i] = SFMA(ca, g[i], SFMA(cb, p[i] - m, cc));          \
    }                                                                              \
    static inline void fastbn_dx_row_##SFX(const T* p, const T* g, T* r,          \
            Py_ssize_t n, const T* ca, const T* cb, const T* m, const T* cc,       \
            int nt) {                                                              \
        Py_ssize_t i = 0;                                                          \
        if (nt) while (i < n && ((size_t)(r + i) & 31)) {                          \
            r[i] = SFMA(ca[i], g[i], SFMA(cb[i], p[i] - m[i], cc[i])); i++; }      \
        if (nt && !((size_t)(r + i) & 31))                                         \
            for (; i + W <= n; i += W)                                             \
                STNT(r + i, FMA(LD(ca + i), LD(g + i),                             \
                                FMA(LD(cb + i), SUB(LD(p + i), LD(m + i)), LD(cc + i)))); \
        else                                                                       \
            for (; i + W <= n; i += W)                                             \
                ST(r + i, FMA(LD(ca + i), LD(g + i),                               \
                              FMA(LD(cb + i), SUB(LD(p + i), LD(m + i)), LD(cc + i)))); \
        for (; i < n; i++) r[i] = SFMA(ca[i], g[i], SFMA(cb[i], p[i] - m[i], cc[i])); \
    }
    FASTBN_DEFINE_OUT(float, f, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps,
                      _mm256_stream_ps, _mm256_set1_ps, _mm256_sub_ps, _mm256_fmadd_ps, fmaf)
    FASTBN_DEFINE_OUT(double, d, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd,
                      _mm256_stream_pd, _mm256_set1_pd, _mm256_sub_pd, _mm256_fmadd_pd, fma)
    #else
    #define FASTBN_HAVE_NT 0
    #define FASTBN_DEFINE_OUT(T, SFX)                                              \
    static inline void fastbn_norm_run_##SFX(const T* FASTBN_RESTRICT p,          \
            T* FASTBN_RESTRICT q, Py_ssize_t n, T m, T a, T b, int nt) {           \
        (void)nt;                                                                  \
        for (Py_ssize_t i = 0; i < n; i++) q[i] = (p[i] - m) * a + b;              \
    }                                                                              \
    static inline void fastbn_norm_row_##SFX(const T* FASTBN_RESTRICT p,          \
            T* FASTBN_RESTRICT q, Py_ssize_t n, const T* FASTBN_RESTRICT m,        \
            const T* FASTBN_RESTRICT a, const T* FASTBN_RESTRICT b, int nt) {      \
        (void)nt;                                                                  \
        for (Py_ssize_t i = 0; i < n; i++) q[i] = (p[i] - m[i]) * a[i] + b[i];     \
    }                                                                              \
    static inline void fastbn_dx_run_##SFX(const T* FASTBN_RESTRICT p,            \
            const T* FASTBN_RESTRICT g, T* FASTBN_RESTRICT r, Py_ssize_t n,        \
            T ca, T cb, T m, T cc, int nt) {                                       \
        (void)nt;                                                                  \
        for (Py_ssize_t i = 0; i < n; i++) r[i] = ca * g[i] + (cb * (p[i] - m) + cc); \
    }                                                                              \
    static inline void fastbn_dx_row_##SFX(const T* FASTBN_RESTRICT p,            \
            const T* FASTBN_RESTRICT g, T* FASTBN_RESTRICT r, Py_ssize_t n,        \
            const T* FASTBN_RESTRICT ca, const T* FASTBN_RESTRICT cb,              \
            const T* FASTBN_RESTRICT m, const T* FASTBN_RESTRICT cc, int nt) {     \
        (void)nt;                                                                  \
        for (Py_ssize_t i = 0; i < n; i++)                                         \
            r[i] = ca[i] * g[i] + (cb[i] * (p[i] - m[i]) + cc[i]);                 \
    }
    FASTBN_DEFINE_OUT(float, f)
    FASTBN_DEFINE_OUT(double, d)
    #endif
    /* Streaming stores are weakly ordered: fence once at the end of a slice
       (not per run: a fence drains the write-combining buffers, and one per
       196-element run made a small NCHW batch 4x slower). */
    static inline void fastbn_stream_fence(int nt) {
    #if FASTBN_HAVE_NT
        if (nt) _mm_sfence();
    #else
        (void)nt;
    #endif
    }
    """
    void fastbn_stream_fence(int nt) noexcept nogil
    void fastbn_norm_run_f(const float* p, float* q, Py_ssize_t n, float m, float a,
                           float b, int nt) noexcept nogil
    void fastbn_norm_run_d(const double* p, double* q, Py_ssize_t n, double m, double a,
                           double b, int nt) noexcept nogil
    void fastbn_norm_row_f(const float* p, float* q, Py_ssize_t n, const float* m,
                           const float* a, const float* b, int nt) noexcept nogil
    void fastbn_norm_row_d(const double* p, double* q, Py_ssize_t n, const double* m,
                           const double* a, const double* b, int nt) noexcept nogil
    void fastbn_dx_run_f(const float* p, const float* g, float* r, Py_ssize_t n, float ca,
                         float cb, float m, float cc, int nt) noexcept nogil
    void fastbn_dx_run_d(const double* p, const double* g, double* r, Py_ssize_t n,
                         double ca, double cb, double m, double cc, int nt) noexcept nogil
    void fastbn_dx_row_f(const float* p, const float* g, float* r, Py_ssize_t n,
                         const float* ca, const float* cb, const float* m, const float* cc,
                         int nt) noexcept nogil
    void fastbn_dx_row_d(const double* p, const double* g, double* r, Py_ssize_t n,
                         const double* ca, const double* cb, const double* m,
                         const double* cc, int nt) noexcept nogil
    void fastbn_prefetch(const void* p, Py_ssize_t nbytes) noexcept nogil
    void fastbn_prefetch_w(void* p, Py_ssize_t nbytes) noexcept nogil
    void fastbn_seg_sums_f(const float* p, Py_ssize_t n, double c, double* out) noexcept nogil
    void fastbn_seg_sums_d(const double* p, Py_ssize_t n, double c, double* out) noexcept nogil
    void fastbn_seg_grad_f(const float* p, const float* q, Py_ssize_t n, double m,
                           double* out) noexcept nogil
    void fastbn_seg_grad_d(const double* p, const double* q, Py_ssize_t n, double m,
                           double* out) noexcept nogil
    void fastbn_rows4_sums_d(const double* a0, Py_ssize_t sr, Py_ssize_t D,
                             const double* c, double* s1, double* s2) noexcept nogil
    void fastbn_rows2_grad_d(const double* x0, Py_ssize_t sr, const double* g0,
                             Py_ssize_t gr, Py_ssize_t D, const double* m, double* sdy,
                             double* sdyx) noexcept nogil


# Per-feature algebra, defined once in C: the scalar helpers below
# (_finish_moments, _center_fold, _dx_centered: channel kernels, layer norm,
# the split-up pieces in _moments) call these, and so do the loops over a
# D-vector of features that the row kernels use.  Written as Cython loops
# over memoryviews those loops stayed scalar (GCC could not rule out
# aliasing); as restrict-qualified C the sqrt and divisions are 4-wide
# (AVX2), which cut the serial part of a (256, 4096) forward from ~18 to
# ~5 us.  One definition, so every caller gets the same bits.
cdef extern from *:
    """
    /* mean, biased variance and 1/sqrt(var + eps) from float64 sums of
       x - center and its squares over n values */
    static inline void fastbn_finish1(double s1, double s2, double n, double center,
                                      double eps, double* mean, double* var,
                                      double* invstd) {
        double m = s1 / n;
        double v = s2 / n - m * m;
        v = v < 0.0 ? 0.0 : v;      /* rounding only; NaN stays NaN */
        *mean = center + m;
        *var = v;
        *invstd = 1.0 / sqrt(v + eps);
    }
    static inline void fastbn_finish_moments_v(const double* FASTBN_RESTRICT s1,
                                               const double* FASTBN_RESTRICT s2,
                                               const double* FASTBN_RESTRICT center,
                                               Py_ssize_t D, double n, double eps,
                                               double* FASTBN_RESTRICT mean,
                                               double* FASTBN_RESTRICT var,
                                               double* FASTBN_RESTRICT invstd) {
        for (Py_ssize_t j = 0; j < D; j++)
            fastbn_finish1(s1[j], s2[j], n, center[j], eps, &mean[j], &var[j], &invstd[j]);
    }
    /* center_fold: coefficients of (x - mean) * scale + offset in T (see
       _center_fold).  dx_centered: the closed-form gradient's coefficients
       (see _dx_centered).  blend: a running statistic's update.  Then the
       loops over D features: the forward's output coefficients and running
       statistics, the backward's coefficients and parameter gradients. */
    #define FASTBN_DEFINE_FEATURE(T, SFX)                                          \
    static inline void fastbn_center_fold_##SFX(double mean, double scale,         \
            double offset, T* m, T* sc, T* off) {                                  \
        T mt = (T)mean;                                                            \
        *m = mt;                                                                   \
        *sc = (T)scale;                                                            \
        *off = (T)(offset - (mean - (double)mt) * scale);                          \
    }                                                                              \
    static inline void fastbn_dx_centered_##SFX(double sdy, double sdyx, double n, \
            double gamma, double mean, double invstd, int train, T* ca, T* cb,     \
            T* m, T* cc) {                                                         \
        double a = gamma * invstd;                                                 \
        *ca = (T)a;                                                                \
        if (train)                                                                 \
            fastbn_center_fold_##SFX(mean, -a * invstd * invstd * sdyx / n,        \
                                     -a * sdy / n, m, cb, cc);                     \
        else                                                                       \
            fastbn_center_fold_##SFX(mean, 0.0, 0.0, m, cb, cc);                   \
    }                                                                              \
    static inline T fastbn_blend_##SFX(double momentum, T running, double batch) { \
        return (T)(momentum * running + (1.0 - momentum) * batch);                 \
    }                                                                              \
    static inline void fastbn_fold_forward_##SFX(Py_ssize_t D,                     \
            const double* FASTBN_RESTRICT mean, const double* FASTBN_RESTRICT var, \
            const double* FASTBN_RESTRICT invstd, const T* FASTBN_RESTRICT gamma,  \
            const T* FASTBN_RESTRICT beta, T* FASTBN_RESTRICT cm,                  \
            T* FASTBN_RESTRICT calpha, T* FASTBN_RESTRICT cbeta,                   \
            const T* FASTBN_RESTRICT rmean, const T* FASTBN_RESTRICT rvar,         \
            double momentum, T* FASTBN_RESTRICT new_rmean,                         \
            T* FASTBN_RESTRICT new_rvar) {                                         \
        for (Py_ssize_t j = 0; j < D; j++) {                                       \
            fastbn_center_fold_##SFX(mean[j], gamma[j] * invstd[j], beta[j],       \
                                     &cm[j], &calpha[j], &cbeta[j]);               \
            new_rmean[j] = fastbn_blend_##SFX(momentum, rmean[j], mean[j]);        \
            new_rvar[j] = fastbn_blend_##SFX(momentum, rvar[j], var[j]);           \
        }                                                                          \
    }                                                                              \
    static inline void fastbn_dx_coef_##SFX(Py_ssize_t D,                          \
            const double* FASTBN_RESTRICT sdy, const double* FASTBN_RESTRICT sdyx, \
            double n, const T* FASTBN_RESTRICT gamma,                              \
            const double* FASTBN_RESTRICT mean,                                    \
            const double* FASTBN_RESTRICT invstd, int train,                       \
            T* FASTBN_RESTRICT ca, T* FASTBN_RESTRICT cb, T* FASTBN_RESTRICT cm,   \
            T* FASTBN_RESTRICT cc, T* FASTBN_RESTRICT dgamma,                      \
            T* FASTBN_RESTRICT dbeta) {                                            \
        for (Py_ssize_t j = 0; j < D; j++) {                                       \
            fastbn_dx_centered_##SFX(sdy[j], sdyx[j], n, gamma[j], mean[j],        \
                                     invstd[j], train, &ca[j], &cb[j], &cm[j],     \
                                     &cc[j]);                                      \
            dbeta[j] = (T)sdy[j];                                                  \
            dgamma[j] = (T)(sdyx[j] * invstd[j]);                                  \
        }                                                                          \
    }
    FASTBN_DEFINE_FEATURE(float, f)
    FASTBN_DEFINE_FEATURE(double, d)
    """
    void fastbn_finish1(double s1, double s2, double n, double center, double eps,
                        double* mean, double* var, double* invstd) noexcept nogil
    void fastbn_center_fold_f(double mean, double scale, double offset, float* m,
                              float* sc, float* off) noexcept nogil
    void fastbn_center_fold_d(double mean, double scale, double offset, double* m,
                              double* sc, double* off) noexcept nogil
    void fastbn_dx_centered_f(double sdy, double sdyx, double n, double gamma,
                              double mean, double invstd, int train, float* ca,
                              float* cb, float* m, float* cc) noexcept nogil
    void fastbn_dx_centered_d(double sdy, double sdyx, double n, double gamma,
                              double mean, double invstd, int train, double* ca,
                              double* cb, double* m, double* cc) noexcept nogil
    float fastbn_blend_f(double momentum, float running, double batch) noexcept nogil
    double fastbn_blend_d(double momentum, double running, double batch) noexcept nogil
    void fastbn_dx_coef_f(Py_ssize_t D, const double* sdy, const double* sdyx, double n,
                          const float* gamma, const double* mean, const double* invstd,
                          int train, float* ca, float* cb, float* cm, float* cc,
                          float* dgamma, float* dbeta) noexcept nogil
    void fastbn_dx_coef_d(Py_ssize_t D, const double* sdy, const double* sdyx, double n,
                          const double* gamma, const double* mean, const double* invstd,
                          int train, double* ca, double* cb, double* cm, double* cc,
                          double* dgamma, double* dbeta) noexcept nogil
    void fastbn_fold_forward_f(Py_ssize_t D, const double* mean, const double* var,
                               const double* invstd, const float* gamma, const float* beta,
                               float* cm, float* calpha, float* cbeta, const float* rmean,
                               const float* rvar, double momentum, float* new_rmean,
                               float* new_rvar) noexcept nogil
    void fastbn_fold_forward_d(Py_ssize_t D, const double* mean, const double* var,
                               const double* invstd, const double* gamma,
                               const double* beta, double* cm, double* calpha,
                               double* cbeta, const double* rmean, const double* rvar,
                               double momentum, double* new_rmean,
                               double* new_rvar) noexcept nogil
    void fastbn_finish_moments_v(const double* s1, const double* s2, const double* center,
                                 Py_ssize_t D, double n, double eps, double* mean,
                                 double* var, double* invstd) noexcept nogil


# The instruction set the including module is compiled for: each kernel
# module (baseline and AVX2 builds of _bn, _moments, _ln) reports its own.
cdef extern from *:
    """
    #if defined(__AVX2__) && defined(__FMA__)
    static const char fastbn_kernel_isa[] = "avx2";
    #elif defined(__AVX2__)    /* MSVC /arch:AVX2 implies FMA use but defines no __FMA__ */
    static const char fastbn_kernel_isa[] = "avx2";
    #else
    static const char fastbn_kernel_isa[] = "baseline";
    #endif
    """
    const char* fastbn_kernel_isa


# --------------------------------------------------------------------------
# Inner loops over one slice of data.  `sd`/`sb` == 1 gets its own loop so
# the compiler emits contiguous vector loads.
# --------------------------------------------------------------------------

cdef inline void _rows_sums(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                            Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                            const double* center, double* s1,
                            double* s2) noexcept nogil:
    """s1[j] = sum(x[:, j] - center[j]), s2[j] = sum of squares, rows r0..r1."""
    cdef Py_ssize_t i = r0, j
    cdef const floating* row
    cdef const floating* a0
    cdef const floating* a1
    cdef const floating* a2
    cdef const floating* a3
    cdef double v, v0, v1, v2, v3, c
    for j in range(D):
        s1[j] = 0.0
        s2[j] = 0.0
    if floating is float and sd == 1:
        # Four rows per sweep: the float64 accumulators are loaded and stored
        # once per four elements, not once per element (with wide rows they
        # live in L2, and the load/store ports were the bottleneck).  float32
        # only: with float64 data GCC cannot rule out that x aliases the sums
        # (7 pointers of one type, too many runtime checks) and would leave
        # this loop scalar; float64 goes through fastbn_rows4_sums_d instead.
        while i + 4 <= r1:
            a0 = x + i * sr
            a1 = a0 + sr
            a2 = a1 + sr
            a3 = a2 + sr
            for j in range(D):
                c = center[j]
                v0 = a0[j] - c
                v1 = a1[j] - c
                v2 = a2[j] - c
                v3 = a3[j] - c
                s1[j] += (v0 + v1) + (v2 + v3)
                s2[j] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
            i += 4
    elif floating is double and sd == 1:
        while i + 4 <= r1:
            fastbn_rows4_sums_d(x + i * sr, sr, D, center, s1, s2)
            i += 4
    for i in range(i, r1):
        row = x + i * sr
        if sd == 1:
            for j in range(D):
                v = row[j] - center[j]
                s1[j] += v
                s2[j] += v * v
        else:
            for j in range(D):
                v = row[j * sd] - center[j]
                s1[j] += v
                s2[j] += v * v


cdef inline void _rows_grad_sums(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                 const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                                 Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                 const double* mean, double* sdy,
                                 double* sdyx) noexcept nogil:
    """sdy[j] = sum(dy[:, j]), sdyx[j] = sum(dy[:, j] * (x[:, j] - mean[j]))."""
    cdef Py_ssize_t i = r0, j
    cdef const floating* xr
    cdef const floating* gr_
    cdef const floating* b0
    cdef const floating* b1
    cdef double g, g0, g1, g2, g3, m
    for j in range(D):
        sdy[j] = 0.0
        sdyx[j] = 0.0
    if floating is float and sd == 1 and gd == 1:
        # four rows per sweep, then two, as in _rows_sums (float32 only): the
        # float64 sums of a wide row live in L2, so each sweep costs a load
        # and a store of them
        while i + 4 <= r1:
            xr = x + i * sr
            b0 = dy + i * gr
            for j in range(D):
                m = mean[j]
                g0 = b0[j]
                g1 = b0[j + gr]
                g2 = b0[j + 2 * gr]
                g3 = b0[j + 3 * gr]
                sdy[j] += (g0 + g1) + (g2 + g3)
                sdyx[j] += ((g0 * (xr[j] - m) + g1 * (xr[j + sr] - m)) +
                            (g2 * (xr[j + 2 * sr] - m) + g3 * (xr[j + 3 * sr] - m)))
            i += 4
        while i + 2 <= r1:
            xr = x + i * sr
            b0 = dy + i * gr
            b1 = b0 + gr
            for j in range(D):
                m = mean[j]
                g0 = b0[j]
                g1 = b1[j]
                sdy[j] += g0 + g1
                sdyx[j] += g0 * (xr[j] - m) + g1 * (xr[j + sr] - m)
            i += 2
    elif floating is double and sd == 1 and gd == 1:
        while i + 2 <= r1:
            fastbn_rows2_grad_d(x + i * sr, sr, dy + i * gr, gr, D, mean, sdy, sdyx)
            i += 2
    for i in range(i, r1):
        xr = x + i * sr
        gr_ = dy + i * gr
        if sd == 1 and gd == 1:
            for j in range(D):
                g = gr_[j]
                sdy[j] += g
                sdyx[j] += g * (xr[j] - mean[j])
        else:
            for j in range(D):
                g = gr_[j * gd]
                sdy[j] += g
                sdyx[j] += g * (xr[j * sd] - mean[j])


cdef inline void _center_fold(double mean, double scale, double offset,
                              floating* m, floating* sc,
                              floating* off) noexcept nogil:
    """Coefficients to compute ``(x - mean) * scale + offset`` in x's precision.

    The mean is split as ``m + (mean - m)`` with ``m`` representable in x's
    dtype: ``x - m`` is exact for x near the mean (Sterbenz) and the
    remainder moves into ``off``.  Every term is then of the size of the
    result, so float32 arithmetic (twice the vector width of float64) stays
    within a couple of float32 ulps of the float64 formula, even for data
    far from zero.  For float64 this is the formula itself.
    """
    if floating is float:
        fastbn_center_fold_f(mean, scale, offset, m, sc, off)
    else:
        fastbn_center_fold_d(mean, scale, offset, m, sc, off)


cdef inline void _rows_normalize_folded(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                 floating* y, Py_ssize_t yr, Py_ssize_t yd,
                                 Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                 const floating* m, const floating* alpha,
                                 const floating* beta, bint nt) noexcept nogil:
    """y = (x - m) * alpha + beta per feature, coefficients from _center_fold.

    Centred rather than folded into ``x * a + b``: no cancellation between
    two large terms when the data sit far from zero, and x == mean gives
    exactly beta with or without fused multiply-adds.

    Rows run last to first: the statistics pass over the same rows just
    ended with the last ones, which are the ones still in cache.
    """
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef floating* yrow
    for i in range(r1 - 1, r0 - 1, -1):
        xr = x + i * sr
        yrow = y + i * yr
        if sd == 1 and yd == 1:
            if floating is float:
                fastbn_norm_row_f(xr, yrow, D, m, alpha, beta, nt)
            else:
                fastbn_norm_row_d(xr, yrow, D, m, alpha, beta, nt)
        else:
            for j in range(D):
                yrow[j * yd] = (xr[j * sd] - m[j]) * alpha[j] + beta[j]
    fastbn_stream_fence(nt)


cdef inline void _rows_dx_centered(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                   const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                                   floating* dx, Py_ssize_t xr_, Py_ssize_t xd_,
                                   Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                   const floating* ca, const floating* cb,
                                   const floating* m, const floating* cc,
                                   bint nt) noexcept nogil:
    """dx = ca * dy + cb * (x - m) + cc per feature (cb, m, cc from _center_fold).

    Rows last to first, as in _rows_normalize_folded.
    """
    cdef Py_ssize_t i, j
    cdef const floating* xrow
    cdef const floating* grow
    cdef floating* drow
    for i in range(r1 - 1, r0 - 1, -1):
        xrow = x + i * sr
        grow = dy + i * gr
        drow = dx + i * xr_
        if sd == 1 and gd == 1 and xd_ == 1:
            if floating is float:
                fastbn_dx_row_f(xrow, grow, drow, D, ca, cb, m, cc, nt)
            else:
                fastbn_dx_row_d(xrow, grow, drow, D, ca, cb, m, cc, nt)
        else:
            for j in range(D):
                drow[j * xd_] = ca[j] * grow[j * gd] + cb[j] * (xrow[j * sd] - m[j]) + cc[j]
    fastbn_stream_fence(nt)


# A channel slice is the flat range [k0, k1) of its A*B elements, so a
# channel can be cut anywhere, not only at a row of B.

cdef inline void _chan_sums(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                            Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                            double center, double* out) noexcept nogil:
    """out[0] = sum(x - center), out[1] = sum((x - center)**2) over the slice."""
    cdef double s1 = 0.0, s2 = 0.0, v
    cdef double acc[2]
    cdef Py_ssize_t k = k0, a, b, b0, b1
    cdef const floating* p
    acc[0] = 0.0
    acc[1] = 0.0
    while k < k1:
        a = k // B
        b0 = k - a * B
        b1 = b0 + (k1 - k)
        if b1 > B:
            b1 = B
        p = x + a * sa
        if sb == 1:
            if k + (b1 - b0) < k1:
                fastbn_prefetch(p + sa + b0, (b1 - b0) * sizeof(floating))
            if floating is float:
                fastbn_seg_sums_f(p + b0, b1 - b0, center, acc)
            else:
                fastbn_seg_sums_d(p + b0, b1 - b0, center, acc)
        else:
            for b in range(b0, b1):
                v = p[b * sb] - center
                s1 += v
                s2 += v * v
        k += b1 - b0
    out[0] = s1 + acc[0]
    out[1] = s2 + acc[1]


cdef inline void _chan_grad_sums(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                                 const floating* dy, Py_ssize_t ga, Py_ssize_t gb,
                                 Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                                 double mean, double* out) noexcept nogil:
    """out[0] = sum(dy), out[1] = sum(dy * (x - mean)) over the slice."""
    cdef double s1 = 0.0, s2 = 0.0, g
    cdef double acc[2]
    cdef Py_ssize_t k = k0, a, b, b0, b1
    cdef const floating* p
    cdef const floating* q
    acc[0] = 0.0
    acc[1] = 0.0
    while k < k1:
        a = k // B
        b0 = k - a * B
        b1 = b0 + (k1 - k)
        if b1 > B:
            b1 = B
        p = x + a * sa
        q = dy + a * ga
        if sb == 1 and gb == 1:
            if k + (b1 - b0) < k1:
                fastbn_prefetch(p + sa + b0, (b1 - b0) * sizeof(floating))
                fastbn_prefetch(q + ga + b0, (b1 - b0) * sizeof(floating))
            if floating is float:
                fastbn_seg_grad_f(p + b0, q + b0, b1 - b0, mean, acc)
            else:
                fastbn_seg_grad_d(p + b0, q + b0, b1 - b0, mean, acc)
        else:
            for b in range(b0, b1):
                g = q[b * gb]
                s1 += g
                s2 += g * (p[b * sb] - mean)
        k += b1 - b0
    out[0] = s1 + acc[0]
    out[1] = s2 + acc[1]


cdef inline void _chan_normalize_folded(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                                 floating* y, Py_ssize_t ya, Py_ssize_t yb,
                                 Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                                 floating m, floating alpha, floating beta,
                                 bint nt) noexcept nogil:
    """y = (x - m) * alpha + beta over the slice (coefficients from _center_fold).

    Runs through the slice's blocks last to first: the statistics pass just
    read them first to last, so the most recently read blocks -- the ones
    most likely still in cache -- are used before the writes evict them.
    """
    cdef Py_ssize_t k = k1, a, b, b0, b1
    cdef const floating* p
    cdef floating* q
    while k > k0:
        a = (k - 1) // B
        b1 = k - a * B
        b0 = k0 - a * B
        if b0 < 0:
            b0 = 0
        p = x + a * sa
        q = y + a * ya
        if sb == 1 and yb == 1:
            if not nt and k - (b1 - b0) > k0:
                fastbn_prefetch_w(q - ya + b0, (b1 - b0) * sizeof(floating))
            if floating is float:
                fastbn_norm_run_f(p + b0, q + b0, b1 - b0, m, alpha, beta, nt)
            else:
                fastbn_norm_run_d(p + b0, q + b0, b1 - b0, m, alpha, beta, nt)
        else:
            for b in range(b0, b1):
                q[b * yb] = (p[b * sb] - m) * alpha + beta
        k -= b1 - b0
    fastbn_stream_fence(nt)


cdef inline void _chan_dx_centered(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                                   const floating* dy, Py_ssize_t ga, Py_ssize_t gb,
                                   floating* dx, Py_ssize_t da, Py_ssize_t db,
                                   Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                                   floating ca, floating cb, floating m,
                                   floating cc, bint nt) noexcept nogil:
    """dx = ca * dy + cb * (x - m) + cc over the slice, blocks last to first."""
    cdef Py_ssize_t k = k1, a, b, b0, b1
    cdef const floating* p
    cdef const floating* q
    cdef floating* r
    while k > k0:
        a = (k - 1) // B
        b1 = k - a * B
        b0 = k0 - a * B
        if b0 < 0:
            b0 = 0
        p = x + a * sa
        q = dy + a * ga
        r = dx + a * da
        if sb == 1 and gb == 1 and db == 1:
            if not nt and k - (b1 - b0) > k0:
                fastbn_prefetch_w(r - da + b0, (b1 - b0) * sizeof(floating))
            if floating is float:
                fastbn_dx_run_f(p + b0, q + b0, r + b0, b1 - b0, ca, cb, m, cc, nt)
            else:
                fastbn_dx_run_d(p + b0, q + b0, r + b0, b1 - b0, ca, cb, m, cc, nt)
        else:
            for b in range(b0, b1):
                r[b * db] = ca * q[b * gb] + cb * (p[b * sb] - m) + cc
        k -= b1 - b0
    fastbn_stream_fence(nt)


# --------------------------------------------------------------------------
# Per-feature scalar algebra shared by both loop orders.
# --------------------------------------------------------------------------

cdef inline void _finish_moments(double s1, double s2, Py_ssize_t n, double center,
                                 double eps, double* mean, double* var,
                                 double* invstd) noexcept nogil:
    """Mean, var and invstd from sums of x - center and its squares over n values."""
    fastbn_finish1(s1, s2, <double>n, center, eps, mean, var, invstd)


cdef inline void _dx_centered(double sdy, double sdyx, double n, double gamma,
                              double mean, double invstd, bint train, floating* ca,
                              floating* cb, floating* m, floating* cc) noexcept nogil:
    """dx = ca*dy + cb*(x - m) + cc: the closed-form batch-norm gradient.

    From sums ``sdy = sum(dy)``, ``sdyx = sum(dy * (x - mean))`` over n values
    (a double: in a distributed batch it is the global count).
    Train mode: dx = a * (dy - mean(dy) - xhat * mean(dy * xhat)), a = gamma*invstd.
    Test mode: mean and invstd are constants of the running statistics, dx = a*dy.
    """
    if floating is float:
        fastbn_dx_centered_f(sdy, sdyx, n, gamma, mean, invstd, train, ca, cb, m, cc)
    else:
        fastbn_dx_centered_d(sdy, sdyx, n, gamma, mean, invstd, train, ca, cb, m, cc)


cdef inline Py_ssize_t _row_chunks(Py_ssize_t R, int nthreads) noexcept nogil:
    if nthreads < 1:
        return 1
    return R if R < nthreads else nthreads


cdef inline Py_ssize_t _channel_split(Py_ssize_t C, Py_ssize_t L,
                                      int nthreads) noexcept nogil:
    """How many slices to cut each channel into so all threads have work."""
    cdef Py_ssize_t split, cap
    if nthreads <= 1 or C % nthreads == 0 or C >= 8 * nthreads:
        return 1
    split = (8 * nthreads + C - 1) // C
    cap = L // 4096      # slices below a few thousand elements cost more than they save
    if cap < 1:
        cap = 1
    return split if split < cap else cap


# --------------------------------------------------------------------------
# Whole-view reductions: slices handed to threads, then the threads' partial
# sums added in a fixed order.  The fused kernels (``_bn``) and the split-up
# ones (``_moments``) both call these, so they produce the same bits.
# ``part`` is scratch for the partial sums: 2 * nch * D doubles for the row
# drivers, 2 * C * split for the channel drivers.
# --------------------------------------------------------------------------

cdef inline void _add_row_partials(const double* part, Py_ssize_t nch, Py_ssize_t D,
                                   double* s1, double* s2) noexcept nogil:
    """s1[j], s2[j] = sums over chunks t of part[2t*D + j], part[(2t+1)*D + j], in t order."""
    cdef Py_ssize_t t, j
    cdef double a, b
    for j in range(D):
        a = 0.0
        b = 0.0
        for t in range(nch):
            a = a + part[2 * t * D + j]
            b = b + part[(2 * t + 1) * D + j]
        s1[j] = a
        s2[j] = b


cdef inline void _add_chan_partials(const double* part, Py_ssize_t C, Py_ssize_t split,
                                    double* s1, double* s2) noexcept nogil:
    """s1[c], s2[c] = sums over slices s of part[2(c*split + s)] and the next, in s order."""
    cdef Py_ssize_t c, s
    cdef double a, b
    for c in range(C):
        a = 0.0
        b = 0.0
        for s in range(split):
            a = a + part[2 * (c * split + s)]
            b = b + part[2 * (c * split + s) + 1]
        s1[c] = a
        s2[c] = b


cdef inline void _rows_sums_all(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                Py_ssize_t R, Py_ssize_t D, Py_ssize_t nch,
                                int nthreads, const double* center, double* part,
                                double* s1, double* s2) noexcept nogil:
    """s1[j] = sum(x[:, j] - center[j]), s2[j] = its sum of squares; nch row chunks."""
    cdef Py_ssize_t t
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        _rows_sums(x, sr, sd, D, t * R // nch, (t + 1) * R // nch, center,
                   part + 2 * t * D, part + (2 * t + 1) * D)
    _add_row_partials(part, nch, D, s1, s2)


cdef inline void _rows_grad_sums_all(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                     const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                                     Py_ssize_t R, Py_ssize_t D, Py_ssize_t nch,
                                     int nthreads, const double* mean, double* part,
                                     double* sdy, double* sdyx) noexcept nogil:
    """sdy[j] = sum(dy[:, j]), sdyx[j] = sum(dy[:, j] * (x[:, j] - mean[j])); nch row chunks."""
    cdef Py_ssize_t t
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        _rows_grad_sums(x, sr, sd, dy, gr, gd, D, t * R // nch, (t + 1) * R // nch,
                        mean, part + 2 * t * D, part + (2 * t + 1) * D)
    _add_row_partials(part, nch, D, sdy, sdyx)


cdef inline void _chans_sums_all(const floating* x, Py_ssize_t sa, Py_ssize_t sc,
                                 Py_ssize_t sb, Py_ssize_t B, Py_ssize_t L, Py_ssize_t C,
                                 Py_ssize_t split, int nthreads, double* part,
                                 double* s1, double* s2) noexcept nogil:
    """Per channel c: sums of x - x[c, first] and its squares; each channel in split slices."""
    cdef Py_ssize_t it, c, s
    for it in prange(C * split, num_threads=nthreads, schedule="static"):
        c = it // split
        s = it - c * split
        _chan_sums(x + c * sc, sa, sb, B, s * L // split, (s + 1) * L // split,
                   x[c * sc], part + 2 * it)
    _add_chan_partials(part, C, split, s1, s2)


cdef inline void _chans_grad_sums_all(const floating* x, Py_ssize_t sa, Py_ssize_t sc,
                                      Py_ssize_t sb, const floating* dy, Py_ssize_t ga,
                                      Py_ssize_t gc, Py_ssize_t gb, Py_ssize_t B,
                                      Py_ssize_t L, Py_ssize_t C, Py_ssize_t split,
                                      int nthreads, const double* mean, double* part,
                                      double* sdy, double* sdyx) noexcept nogil:
    """Per channel c: sum(dy) and sum(dy * (x - mean[c])); each channel in split slices."""
    cdef Py_ssize_t it, c, s
    for it in prange(C * split, num_threads=nthreads, schedule="static"):
        c = it // split
        s = it - c * split
        _chan_grad_sums(x + c * sc, sa, sb, dy + c * gc, ga, gb, B, s * L // split,
                        (s + 1) * L // split, mean[c], part + 2 * it)
    _add_chan_partials(part, C, split, sdy, sdyx)


# --------------------------------------------------------------------------
# Whole-view apply-steps: the same slices handed to threads, per-feature
# coefficients from _center_fold / _dx_centered laid out as the callers fill
# them (rows: one D-vector per coefficient; channels: 3 or 4 per channel).
# --------------------------------------------------------------------------

cdef inline void _rows_normalize_all(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                     floating* y, Py_ssize_t yr, Py_ssize_t yd,
                                     Py_ssize_t R, Py_ssize_t D, Py_ssize_t nch,
                                     int nthreads, const floating* coef,
                                     bint nt) noexcept nogil:
    """y = (x - m) * alpha + beta with coef = [m(D), alpha(D), beta(D)]; nch row chunks."""
    cdef Py_ssize_t t
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        _rows_normalize_folded(x, sr, sd, y, yr, yd, D, t * R // nch, (t + 1) * R // nch,
                               coef, coef + D, coef + 2 * D, nt)


cdef inline void _chans_normalize_all(const floating* x, Py_ssize_t sa, Py_ssize_t sc,
                                      Py_ssize_t sb, floating* y, Py_ssize_t ya,
                                      Py_ssize_t yc, Py_ssize_t yb, Py_ssize_t B,
                                      Py_ssize_t L, Py_ssize_t C, Py_ssize_t split,
                                      int nthreads, const floating* coef,
                                      bint nt) noexcept nogil:
    """y = (x - m) * alpha + beta per channel, coef[3c:3c+3] = (m, alpha, beta)."""
    cdef Py_ssize_t it, c, s
    for it in prange(C * split, num_threads=nthreads, schedule="static"):
        c = it // split
        s = it - c * split
        _chan_normalize_folded(x + c * sc, sa, sb, y + c * yc, ya, yb, B,
                               s * L // split, (s + 1) * L // split,
                               coef[3 * c], coef[3 * c + 1], coef[3 * c + 2], nt)


cdef inline void _rows_dx_all(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                              const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                              floating* dx, Py_ssize_t dr, Py_ssize_t dd,
                              Py_ssize_t R, Py_ssize_t D, Py_ssize_t nch, int nthreads,
                              const floating* coef, bint nt) noexcept nogil:
    """dx = ca*dy + cb*(x - m) + cc with coef = [ca(D), cb(D), m(D), cc(D)]; nch row chunks."""
    cdef Py_ssize_t t
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        _rows_dx_centered(x, sr, sd, dy, gr, gd, dx, dr, dd, D, t * R // nch,
                          (t + 1) * R // nch, coef, coef + D, coef + 2 * D, coef + 3 * D, nt)


cdef inline void _chans_dx_all(const floating* x, Py_ssize_t sa, Py_ssize_t sc,
                               Py_ssize_t sb, const floating* dy, Py_ssize_t ga,
                               Py_ssize_t gc, Py_ssize_t gb, floating* dx, Py_ssize_t da,
                               Py_ssize_t dc, Py_ssize_t db, Py_ssize_t B, Py_ssize_t L,
                               Py_ssize_t C, Py_ssize_t split, int nthreads,
                               const floating* coef, bint nt) noexcept nogil:
    """dx = ca*dy + cb*(x - m) + cc per channel, coef[4c:4c+4] = (ca, cb, m, cc)."""
    cdef Py_ssize_t it, c, s
    for it in prange(C * split, num_threads=nthreads, schedule="static"):
        c = it // split
        s = it - c * split
        _chan_dx_centered(x + c * sc, sa, sb, dy + c * gc, ga, gb, dx + c * dc, da, db,
                          B, s * L // split, (s + 1) * L // split,
                          coef[4 * c], coef[4 * c + 1], coef[4 * c + 2], coef[4 * c + 3], nt)
