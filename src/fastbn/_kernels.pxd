# cython: language_level=3
"""How the kernel modules hand a view's slices to threads.

The C loops over one slice of data for one thread live in
``include/fastbn/*.h`` (declared in ``_cheaders.pxd``); the drivers here
cut a view into slices, run them on an OpenMP team and add the threads'
partial sums in a fixed order.  The fused kernels (``_bn``) and the
split-up ones (``_moments``) both call these, so they produce the same bits.
All take element strides, so any layout works.
"""
from cython.parallel cimport prange
from cython cimport floating

from fastbn._cheaders cimport (
    FASTBN_GRAD_ROWS, FASTBN_SUM_ROWS, fastbn_add_row_partials, fastbn_chan_dx,
    fastbn_chan_grad_sums, fastbn_chan_normalize, fastbn_chan_sums, fastbn_part_stride,
    fastbn_row_blocks, fastbn_rows_dx, fastbn_rows_grad_sums, fastbn_rows_normalize,
    fastbn_rows_sums,
)


cdef struct Steps:
    # element strides of a memoryview's axes (0 past its last axis)
    Py_ssize_t s0, s1, s2


cdef inline Steps _c_steps(Py_ssize_t D) noexcept nogil:
    """The element strides of a C-ordered (R, D) array."""
    cdef Steps s
    s.s0 = D
    s.s1 = 1
    s.s2 = 0
    return s


cdef inline Steps _steps(const Py_ssize_t* strides, int ndim,
                         Py_ssize_t itemsize) noexcept nogil:
    """Element strides from a memoryview's byte strides.

    ``_steps(x.strides, 2, sizeof(floating))`` for a 2-D view ``x``.
    """
    cdef Steps s
    s.s0 = strides[0] // itemsize
    s.s1 = strides[1] // itemsize if ndim > 1 else 0
    s.s2 = strides[2] // itemsize if ndim > 2 else 0
    return s


cdef inline Py_ssize_t _row_chunks(Py_ssize_t R, int nthreads) noexcept nogil:
    if nthreads < 1:
        return 1
    return R if R < nthreads else nthreads


cdef inline Py_ssize_t _chunk_row(Py_ssize_t t, Py_ssize_t R, Py_ssize_t nch) noexcept nogil:
    """First row of row chunk t of nch (t = nch: R).  A multiple of 8: layer
    norm's float32 backward adds its column partials over blocks of 8
    consecutive rows, which are then the same whatever the team size."""
    if t >= nch:
        return R
    return (t * R // nch) // 8 * 8


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
# ``part`` is scratch for the partial sums: 2 * nch * P doubles for the row
# drivers (P = _row_part_stride(D): the vectors of two threads share no cache
# line), 2 * C * split for the channel drivers.
# --------------------------------------------------------------------------

cdef inline Py_ssize_t _row_part_stride(Py_ssize_t D) noexcept nogil:
    """Doubles from one row-partial vector to the next in ``part``."""
    return fastbn_part_stride(D, sizeof(double))


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
    """s1[j] = sum(x[:, j] - center[j]), s2[j] = its sum of squares; the row
    blocks (fastbn_row_blocks) cut into nch chunks."""
    cdef Py_ssize_t t, nb = fastbn_row_blocks(R, FASTBN_SUM_ROWS), P = _row_part_stride(D)
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        fastbn_rows_sums(x, sr, sd, D, R, t * nb // nch, (t + 1) * nb // nch, center,
                         part + 2 * t * P, part + (2 * t + 1) * P)
    fastbn_add_row_partials(part, nch, D, s1, s2)


cdef inline void _rows_grad_sums_all(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                     const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                                     Py_ssize_t R, Py_ssize_t D, Py_ssize_t nch,
                                     int nthreads, const double* mean, double* part,
                                     double* sdy, double* sdyx) noexcept nogil:
    """sdy[j] = sum(dy[:, j]), sdyx[j] = sum(dy[:, j] * (x[:, j] - mean[j])); nch row chunks."""
    cdef Py_ssize_t t, nb = fastbn_row_blocks(R, FASTBN_GRAD_ROWS), P = _row_part_stride(D)
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        fastbn_rows_grad_sums(x, sr, sd, dy, gr, gd, D, R, t * nb // nch, (t + 1) * nb // nch,
                              mean, part + 2 * t * P, part + (2 * t + 1) * P)
    fastbn_add_row_partials(part, nch, D, sdy, sdyx)


cdef inline void _chans_sums_all(const floating* x, Py_ssize_t sa, Py_ssize_t sc,
                                 Py_ssize_t sb, Py_ssize_t B, Py_ssize_t L, Py_ssize_t C,
                                 Py_ssize_t split, int nthreads, double* part,
                                 double* s1, double* s2) noexcept nogil:
    """Per channel c: sums of x - x[c, first] and its squares; each channel in split slices."""
    cdef Py_ssize_t it, c, s
    for it in prange(C * split, num_threads=nthreads, schedule="static"):
        c = it // split
        s = it - c * split
        fastbn_chan_sums(x + c * sc, sa, sb, B, s * L // split, (s + 1) * L // split, x[c * sc],
                         part + 2 * it)
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
        fastbn_chan_grad_sums(x + c * sc, sa, sb, dy + c * gc, ga, gb, B, s * L // split,
                              (s + 1) * L // split, mean[c], part + 2 * it)
    _add_chan_partials(part, C, split, sdy, sdyx)


# --------------------------------------------------------------------------
# Whole-view apply-steps: the same slices handed to threads, per-feature
# coefficients from fastbn_center_fold / fastbn_dx_centered laid out as the callers fill
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
        fastbn_rows_normalize(x, sr, sd, y, yr, yd, D, _chunk_row(t, R, nch),
                              _chunk_row(t + 1, R, nch), coef, coef + D, coef + 2 * D, nt)


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
        fastbn_chan_normalize(x + c * sc, sa, sb, y + c * yc, ya, yb, B, s * L // split,
                              (s + 1) * L // split, coef[3 * c], coef[3 * c + 1], coef[3 * c + 2],
                              nt)


cdef inline void _rows_dx_all(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                              const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                              floating* dx, Py_ssize_t dr, Py_ssize_t dd,
                              Py_ssize_t R, Py_ssize_t D, Py_ssize_t nch, int nthreads,
                              const floating* coef, bint nt) noexcept nogil:
    """dx = ca*dy + cb*(x - m) + cc with coef = [ca(D), cb(D), m(D), cc(D)]; nch row chunks."""
    cdef Py_ssize_t t
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        fastbn_rows_dx(x, sr, sd, dy, gr, gd, dx, dr, dd, D, _chunk_row(t, R, nch),
                       _chunk_row(t + 1, R, nch), coef, coef + D, coef + 2 * D, coef + 3 * D, nt)


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
        fastbn_chan_dx(x + c * sc, sa, sb, dy + c * gc, ga, gb, dx + c * dc, da, db, B,
                       s * L // split, (s + 1) * L // split, coef[4 * c], coef[4 * c + 1],
                       coef[4 * c + 2], coef[4 * c + 3], nt)
