# cython: language_level=3
"""Compiled batch-normalization kernels (float32 and float64 via ``floating``).

Two loop orders cover every layout without transposing copies:

* ``rows_*``: an ``(R, D)`` view with one feature per column -- ``(N, D)``
  C-ordered arrays, channels-last 4-D arrays.  Features run innermost so the
  loops vectorize; threads split the rows and their per-feature partial sums
  are added at the end.
* ``chans_*``: an ``(A, C, B)`` view with one feature per middle index -- NCHW
  arrays as ``(N, C, H*W)``, Fortran-ordered ``(N, D)`` arrays as ``(1, D, N)``.
  A thread takes a whole channel, so the second pass over it finds the channel
  still in cache; with fewer channels than threads, channels are cut in slices.

Statistics are one pass: float64 sums of ``x - c`` and ``(x - c)**2`` where
``c`` is the feature's first value.  Shifting by a sample keeps the
subtraction in ``var = E[(x-c)^2] - E[x-c]^2`` benign even when the data sit
far from zero, and partial sums around a common shift merge by plain addition.

The Python layer validates everything before calling in: these functions
assume non-empty, shape-consistent arguments of one dtype.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt
from cython cimport floating


# --------------------------------------------------------------------------
# Inner loops over one slice of data.  `sd`/`sb` == 1 gets its own loop so
# the compiler emits contiguous vector loads.
# --------------------------------------------------------------------------

cdef inline void _rows_sums(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                            Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                            const double* center, double* s1,
                            double* s2) noexcept nogil:
    """s1[j] = sum(x[:, j] - center[j]), s2[j] = sum of squares, rows r0..r1."""
    cdef Py_ssize_t i, j
    cdef const floating* row
    cdef double v
    for j in range(D):
        s1[j] = 0.0
        s2[j] = 0.0
    for i in range(r0, r1):
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
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef const floating* gr_
    cdef double g
    for j in range(D):
        sdy[j] = 0.0
        sdyx[j] = 0.0
    for i in range(r0, r1):
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


cdef inline void _rows_affine(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                              floating* y, Py_ssize_t yr, Py_ssize_t yd,
                              Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                              const double* alpha,
                              const double* shift) noexcept nogil:
    """y = x * alpha + shift, per feature, computed in float64."""
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef floating* yrow
    for i in range(r0, r1):
        xr = x + i * sr
        yrow = y + i * yr
        if sd == 1 and yd == 1:
            for j in range(D):
                yrow[j] = <floating>(xr[j] * alpha[j] + shift[j])
        else:
            for j in range(D):
                yrow[j * yd] = <floating>(xr[j * sd] * alpha[j] + shift[j])


cdef inline void _rows_dx(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                          const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                          floating* dx, Py_ssize_t xr_, Py_ssize_t xd_,
                          Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                          const double* a, const double* b,
                          const double* c) noexcept nogil:
    """dx = a * dy + b * x + c, per feature, computed in float64."""
    cdef Py_ssize_t i, j
    cdef const floating* xrow
    cdef const floating* grow
    cdef floating* drow
    for i in range(r0, r1):
        xrow = x + i * sr
        grow = dy + i * gr
        drow = dx + i * xr_
        if sd == 1 and gd == 1 and xd_ == 1:
            for j in range(D):
                drow[j] = <floating>(a[j] * grow[j] + b[j] * xrow[j] + c[j])
        else:
            for j in range(D):
                drow[j * xd_] = <floating>(a[j] * grow[j * gd] + b[j] * xrow[j * sd] + c[j])


# A channel slice is the flat range [k0, k1) of its A*B elements, so a
# channel can be cut anywhere, not only at a row of B.

cdef inline void _chan_sums(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                            Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                            double center, double* out) noexcept nogil:
    """out[0] = sum(x - center), out[1] = sum((x - center)**2) over the slice."""
    cdef double s1 = 0.0, s2 = 0.0, v
    cdef Py_ssize_t k = k0, a, b, b0, b1
    cdef const floating* p
    while k < k1:
        a = k // B
        b0 = k - a * B
        b1 = b0 + (k1 - k)
        if b1 > B:
            b1 = B
        p = x + a * sa
        if sb == 1:
            for b in range(b0, b1):
                v = p[b] - center
                s1 += v
                s2 += v * v
        else:
            for b in range(b0, b1):
                v = p[b * sb] - center
                s1 += v
                s2 += v * v
        k += b1 - b0
    out[0] = s1
    out[1] = s2


cdef inline void _chan_grad_sums(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                                 const floating* dy, Py_ssize_t ga, Py_ssize_t gb,
                                 Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                                 double mean, double* out) noexcept nogil:
    """out[0] = sum(dy), out[1] = sum(dy * (x - mean)) over the slice."""
    cdef double s1 = 0.0, s2 = 0.0, g
    cdef Py_ssize_t k = k0, a, b, b0, b1
    cdef const floating* p
    cdef const floating* q
    while k < k1:
        a = k // B
        b0 = k - a * B
        b1 = b0 + (k1 - k)
        if b1 > B:
            b1 = B
        p = x + a * sa
        q = dy + a * ga
        if sb == 1 and gb == 1:
            for b in range(b0, b1):
                g = q[b]
                s1 += g
                s2 += g * (p[b] - mean)
        else:
            for b in range(b0, b1):
                g = q[b * gb]
                s1 += g
                s2 += g * (p[b * sb] - mean)
        k += b1 - b0
    out[0] = s1
    out[1] = s2


cdef inline void _chan_affine(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                              floating* y, Py_ssize_t ya, Py_ssize_t yb,
                              Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                              double alpha, double shift) noexcept nogil:
    """y = x * alpha + shift over the slice, computed in float64."""
    cdef Py_ssize_t k = k0, a, b, b0, b1
    cdef const floating* p
    cdef floating* q
    while k < k1:
        a = k // B
        b0 = k - a * B
        b1 = b0 + (k1 - k)
        if b1 > B:
            b1 = B
        p = x + a * sa
        q = y + a * ya
        if sb == 1 and yb == 1:
            for b in range(b0, b1):
                q[b] = <floating>(p[b] * alpha + shift)
        else:
            for b in range(b0, b1):
                q[b * yb] = <floating>(p[b * sb] * alpha + shift)
        k += b1 - b0


cdef inline void _chan_dx(const floating* x, Py_ssize_t sa, Py_ssize_t sb,
                          const floating* dy, Py_ssize_t ga, Py_ssize_t gb,
                          floating* dx, Py_ssize_t da, Py_ssize_t db,
                          Py_ssize_t B, Py_ssize_t k0, Py_ssize_t k1,
                          double ca, double cb, double cc) noexcept nogil:
    """dx = ca * dy + cb * x + cc over the slice, computed in float64."""
    cdef Py_ssize_t k = k0, a, b, b0, b1
    cdef const floating* p
    cdef const floating* q
    cdef floating* r
    while k < k1:
        a = k // B
        b0 = k - a * B
        b1 = b0 + (k1 - k)
        if b1 > B:
            b1 = B
        p = x + a * sa
        q = dy + a * ga
        r = dx + a * da
        if sb == 1 and gb == 1 and db == 1:
            for b in range(b0, b1):
                r[b] = <floating>(ca * q[b] + cb * p[b] + cc)
        else:
            for b in range(b0, b1):
                r[b * db] = <floating>(ca * q[b * gb] + cb * p[b * sb] + cc)
        k += b1 - b0


# --------------------------------------------------------------------------
# Per-feature scalar algebra shared by both loop orders.
# --------------------------------------------------------------------------

cdef inline void _finish_moments(double s1, double s2, Py_ssize_t n, double center,
                                 double eps, double* mean, double* var,
                                 double* invstd) noexcept nogil:
    cdef double m = s1 / n
    cdef double v = s2 / n - m * m
    if v < 0.0:          # rounding only; a NaN fails the test and stays NaN
        v = 0.0
    mean[0] = center + m
    var[0] = v
    invstd[0] = 1.0 / sqrt(v + eps)


cdef inline void _dx_coefficients(double sdy, double sdyx, Py_ssize_t n,
                                  double gamma, double mean, double invstd,
                                  bint train, double* ca, double* cb,
                                  double* cc) noexcept nogil:
    """dx = ca*dy + cb*x + cc, the closed-form batch-norm gradient folded."""
    cdef double a = gamma * invstd, b
    ca[0] = a
    if train:
        # dx = a * (dy - mean(dy) - xhat * mean(dy * xhat))
        b = -a * invstd * invstd * sdyx / n
        cb[0] = b
        cc[0] = -a * sdy / n - b * mean
    else:
        # test mode: mean and invstd are constants of the running statistics
        cb[0] = 0.0
        cc[0] = 0.0


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
# Python entry points.  All run without the GIL.
# --------------------------------------------------------------------------

def rows_forward_train(const floating[:, :] x, const floating[::1] gamma,
                       const floating[::1] beta, double eps, floating[:, :] out,
                       double[::1] mean, double[::1] var, double[::1] invstd,
                       int nthreads):
    """Train-mode forward on an (R, D) view; fills mean, var, invstd (float64)."""
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t sr = x.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sd = x.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yr = out.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yd = out.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), t, j
    cdef const floating* xp = &x[0, 0]
    cdef floating* yp = &out[0, 0]
    cdef double s1, s2
    cdef double* part = <double*>malloc((2 * nch + 3) * D * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* center = part + 2 * nch * D
    cdef double* alpha = center + D
    cdef double* shift = alpha + D
    with nogil:
        for j in range(D):
            center[j] = xp[j * sd]
        for t in prange(nch, num_threads=nthreads, schedule="static"):
            _rows_sums(xp, sr, sd, D, t * R // nch, (t + 1) * R // nch, center,
                       part + 2 * t * D, part + (2 * t + 1) * D)
        for j in range(D):
            s1 = 0.0
            s2 = 0.0
            for t in range(nch):
                s1 = s1 + part[2 * t * D + j]
                s2 = s2 + part[(2 * t + 1) * D + j]
            _finish_moments(s1, s2, R, center[j], eps, &mean[j], &var[j], &invstd[j])
            alpha[j] = gamma[j] * invstd[j]
            shift[j] = beta[j] - mean[j] * alpha[j]
        for t in prange(nch, num_threads=nthreads, schedule="static"):
            _rows_affine(xp, sr, sd, yp, yr, yd, D, t * R // nch, (t + 1) * R // nch,
                         alpha, shift)
    free(part)


def chans_forward_train(const floating[:, :, :] x, const floating[::1] gamma,
                        const floating[::1] beta, double eps,
                        floating[:, :, :] out, double[::1] mean, double[::1] var,
                        double[::1] invstd, int nthreads):
    """Train-mode forward on an (A, C, B) view; statistics per channel C."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Py_ssize_t sa = x.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sc = x.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sb = x.strides[2] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t ya = out.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yc = out.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yb = out.strides[2] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t n_items = C * split, it, c, s
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &out[0, 0, 0]
    cdef double s1, s2, al
    cdef double* part = <double*>malloc((2 * n_items + 2 * C) * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* alpha = part + 2 * n_items
    cdef double* shift = alpha + C
    with nogil:
        if split == 1:
            # whole channels: statistics then output while the channel is cached
            for c in prange(C, num_threads=nthreads, schedule="static"):
                _chan_sums(xp + c * sc, sa, sb, B, 0, L, xp[c * sc], part + 2 * c)
                _finish_moments(part[2 * c], part[2 * c + 1], L, xp[c * sc], eps,
                                &mean[c], &var[c], &invstd[c])
                al = gamma[c] * invstd[c]
                _chan_affine(xp + c * sc, sa, sb, yp + c * yc, ya, yb, B, 0, L,
                             al, beta[c] - mean[c] * al)
        else:
            for it in prange(n_items, num_threads=nthreads, schedule="static"):
                c = it // split
                s = it - c * split
                _chan_sums(xp + c * sc, sa, sb, B, s * L // split,
                           (s + 1) * L // split, xp[c * sc], part + 2 * it)
            for c in range(C):
                s1 = 0.0
                s2 = 0.0
                for s in range(split):
                    s1 = s1 + part[2 * (c * split + s)]
                    s2 = s2 + part[2 * (c * split + s) + 1]
                _finish_moments(s1, s2, L, xp[c * sc], eps, &mean[c], &var[c],
                                &invstd[c])
                alpha[c] = gamma[c] * invstd[c]
                shift[c] = beta[c] - mean[c] * alpha[c]
            for it in prange(n_items, num_threads=nthreads, schedule="static"):
                c = it // split
                s = it - c * split
                _chan_affine(xp + c * sc, sa, sb, yp + c * yc, ya, yb, B,
                             s * L // split, (s + 1) * L // split, alpha[c], shift[c])
    free(part)


def rows_affine(const floating[:, :] x, const double[::1] alpha,
                const double[::1] shift, floating[:, :] out, int nthreads):
    """out = x * alpha + shift per feature on an (R, D) view (test mode)."""
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t sr = x.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sd = x.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yr = out.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yd = out.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), t
    cdef const floating* xp = &x[0, 0]
    cdef floating* yp = &out[0, 0]
    with nogil:
        for t in prange(nch, num_threads=nthreads, schedule="static"):
            _rows_affine(xp, sr, sd, yp, yr, yd, D, t * R // nch, (t + 1) * R // nch,
                         &alpha[0], &shift[0])


def chans_affine(const floating[:, :, :] x, const double[::1] alpha,
                 const double[::1] shift, floating[:, :, :] out, int nthreads):
    """out = x * alpha + shift per channel on an (A, C, B) view (test mode)."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Py_ssize_t sa = x.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sc = x.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sb = x.strides[2] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t ya = out.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yc = out.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t yb = out.strides[2] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t it, c, s
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &out[0, 0, 0]
    with nogil:
        for it in prange(C * split, num_threads=nthreads, schedule="static"):
            c = it // split
            s = it - c * split
            _chan_affine(xp + c * sc, sa, sb, yp + c * yc, ya, yb, B,
                         s * L // split, (s + 1) * L // split, alpha[c], shift[c])


def rows_backward(const floating[:, :] x, const floating[:, :] dout,
                  const floating[::1] gamma, const double[::1] mean,
                  const double[::1] invstd, bint train, floating[:, :] dx,
                  floating[::1] dgamma, floating[::1] dbeta, int nthreads):
    """Fused backward on an (R, D) view: one pass of sums, one pass writing dx."""
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t sr = x.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sd = x.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t gr = dout.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t gd = dout.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t dr = dx.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t dd = dx.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), t, j
    cdef const floating* xp = &x[0, 0]
    cdef const floating* gp = &dout[0, 0]
    cdef floating* dp = &dx[0, 0]
    cdef double s1, s2
    cdef double* part = <double*>malloc((2 * nch + 3) * D * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* ca = part + 2 * nch * D
    cdef double* cb = ca + D
    cdef double* cc = cb + D
    with nogil:
        for t in prange(nch, num_threads=nthreads, schedule="static"):
            _rows_grad_sums(xp, sr, sd, gp, gr, gd, D, t * R // nch,
                            (t + 1) * R // nch, &mean[0], part + 2 * t * D,
                            part + (2 * t + 1) * D)
        for j in range(D):
            s1 = 0.0
            s2 = 0.0
            for t in range(nch):
                s1 = s1 + part[2 * t * D + j]
                s2 = s2 + part[(2 * t + 1) * D + j]
            dbeta[j] = <floating>s1
            dgamma[j] = <floating>(s2 * invstd[j])
            _dx_coefficients(s1, s2, R, gamma[j], mean[j], invstd[j], train,
                             &ca[j], &cb[j], &cc[j])
        for t in prange(nch, num_threads=nthreads, schedule="static"):
            _rows_dx(xp, sr, sd, gp, gr, gd, dp, dr, dd, D, t * R // nch,
                     (t + 1) * R // nch, ca, cb, cc)
    free(part)


def chans_backward(const floating[:, :, :] x, const floating[:, :, :] dout,
                   const floating[::1] gamma, const double[::1] mean,
                   const double[::1] invstd, bint train, floating[:, :, :] dx,
                   floating[::1] dgamma, floating[::1] dbeta, int nthreads):
    """Fused backward on an (A, C, B) view; per channel, sums then dx."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Py_ssize_t sa = x.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sc = x.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t sb = x.strides[2] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t ga = dout.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t gc = dout.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t gb = dout.strides[2] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t da = dx.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t dc = dx.strides[1] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t db = dx.strides[2] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t n_items = C * split, it, c, s
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* gp = &dout[0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0]
    cdef double s1, s2
    cdef double* part = <double*>malloc((2 * n_items + 3 * C) * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* ca = part + 2 * n_items
    cdef double* cb = ca + C
    cdef double* cc = cb + C
    with nogil:
        if split == 1:
            for c in prange(C, num_threads=nthreads, schedule="static"):
                _chan_grad_sums(xp + c * sc, sa, sb, gp + c * gc, ga, gb, B, 0, L,
                                mean[c], part + 2 * c)
                dbeta[c] = <floating>part[2 * c]
                dgamma[c] = <floating>(part[2 * c + 1] * invstd[c])
                _dx_coefficients(part[2 * c], part[2 * c + 1], L, gamma[c], mean[c],
                                 invstd[c], train, &ca[c], &cb[c], &cc[c])
                _chan_dx(xp + c * sc, sa, sb, gp + c * gc, ga, gb, dp + c * dc, da, db,
                         B, 0, L, ca[c], cb[c], cc[c])
        else:
            for it in prange(n_items, num_threads=nthreads, schedule="static"):
                c = it // split
                s = it - c * split
                _chan_grad_sums(xp + c * sc, sa, sb, gp + c * gc, ga, gb, B,
                                s * L // split, (s + 1) * L // split, mean[c],
                                part + 2 * it)
            for c in range(C):
                s1 = 0.0
                s2 = 0.0
                for s in range(split):
                    s1 = s1 + part[2 * (c * split + s)]
                    s2 = s2 + part[2 * (c * split + s) + 1]
                dbeta[c] = <floating>s1
                dgamma[c] = <floating>(s2 * invstd[c])
                _dx_coefficients(s1, s2, L, gamma[c], mean[c], invstd[c], train,
                                 &ca[c], &cb[c], &cc[c])
            for it in prange(n_items, num_threads=nthreads, schedule="static"):
                c = it // split
                s = it - c * split
                _chan_dx(xp + c * sc, sa, sb, gp + c * gc, ga, gb, dp + c * dc, da, db,
                         B, s * L // split, (s + 1) * L // split, ca[c], cb[c], cc[c])
    free(part)
