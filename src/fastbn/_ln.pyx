# cython: language_level=3
"""Compiled layer-normalization kernels (float32 and float64 via ``floating``).

Layer norm normalizes each row of an ``(N, D)`` array over its D features, so
the natural unit of work is a row: threads take contiguous blocks of rows
(one block per thread), and every row is read while it is still in cache.

* Forward: one pass per row computes sums of ``x - c`` and ``(x - c)**2``
  (float64; contiguous float32 rows in float32 lanes carried into float64,
  ``include/fastbn/runs_f32.h``) with ``c`` the row's first value (the shifted-data
  algorithm: stable when the data sit far from zero), then a second pass
  writes ``out = gamma * (x * alpha + shift) + beta`` once per element with
  the row's ``alpha = invstd`` and ``shift = -mean * invstd``.
* Backward (fused): one pass per row computes ``sum(dout * gamma)`` and
  ``sum(dout * gamma * (x - mean))`` -- and, in the same pass, adds the row
  into the thread's float64 partial column sums for ``dbeta`` and
  ``dgamma`` -- then a second pass writes ``dx``.  The per-thread partials
  (``2 * D`` doubles each) are merged at the end: no N x D temporaries.
  Contiguous float32 rows run the same scheme in float32 lanes
  (``include/fastbn/layernorm.h``).

Any strides work (element strides, possibly negative or zero).  Row-major
data run the per-row loops with the features innermost; column-major data
(Fortran order, transposed views) run blocked loops that sweep the features
over BLK rows at a time with the rows innermost, so the inner loop is
contiguous either way; a unit stride gets its own loop so the compiler
emits vector loads.  The
Python layer validates everything before calling in: these functions assume
non-empty, shape-consistent arguments of one dtype.
"""
from cython.parallel cimport prange
from libc.math cimport isfinite
from cython cimport floating

from fastbn._cheaders cimport (
    FASTBN_SUM_ROWS, fastbn_active, fastbn_add_row_partials, fastbn_center_fold, fastbn_finish1,
    fastbn_free64, fastbn_malloc64,
    fastbn_kernel_isa, fastbn_leave, fastbn_ln_rows_backward_f, fastbn_part_stride,
    fastbn_row_blocks, fastbn_rows_sums, fastbn_seg_sums, fastbn_team, fastbn_team_size,
)
from fastbn._kernels cimport Steps, _c_steps, _steps, _chunk_row, _row_chunks, _row_part_stride
from fastbn._plain cimport (
    NPY_DOUBLE, PyArrayObject, PyArray_CheckExact, PyArray_DIMS, PyArray_EMPTY, _data,
    _import_array, _plain, _plain_float, _plain_output, _plain_rows, _plain_threads, _vector,
    npy_intp,
)

_import_array()


def kernel_isa():
    """The instruction set this module was compiled for: 'baseline', 'avx2' or 'avx512'."""
    return fastbn_kernel_isa.decode()


def _active_calls():
    """Kernel calls of this module running right now (for tests)."""
    return fastbn_active()


def _team_size(int nthreads):
    """The threads a kernel call of this module starting now would get (for tests)."""
    return fastbn_team_size(nthreads)


cdef inline void _forward_rows(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                               floating* y, Py_ssize_t yr, Py_ssize_t yd,
                               Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                               const floating* gamma, const floating* beta,
                               double eps, double* mean,
                               double* invstd) noexcept nogil:
    """Rows r0..r1: statistics, then the output, row by row.

    Contiguous rows take their sums one row ahead (the channel-run sums of
    batch norm; float32 in float32 lanes): row i + 1's sums are issued
    before row i's statistics and output, which depend on the end of a
    reduction and a square root, so the core works on the next row while
    they finish (3-6 % off a (16384, 256) float32 forward on a Xeon)."""
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef floating* yrow
    cdef double c, v, s1, s2, var, alpha, shift
    cdef double acc[2]
    cdef floating mf, af, of
    acc[0] = 0.0
    acc[1] = 0.0
    if sd == 1 and r0 < r1:
        fastbn_seg_sums(x + r0 * sr, D, <double>x[r0 * sr], acc)
    for i in range(r0, r1):
        xr = x + i * sr
        yrow = y + i * yr
        c = xr[0]
        s1 = 0.0
        s2 = 0.0
        if sd == 1:
            s1 = acc[0]
            s2 = acc[1]
            acc[0] = 0.0
            acc[1] = 0.0
            if i + 1 < r1:
                fastbn_seg_sums(xr + sr, D, <double>xr[sr], acc)
        else:
            for j in range(D):
                v = xr[j * sd] - c
                s1 += v
                s2 += v * v
        fastbn_finish1(s1, s2, <double>D, c, eps, &mean[i], &var, &invstd[i])
        alpha = invstd[i]
        shift = -mean[i] * alpha
        if floating is float and sd == 1 and yd == 1:
            # in float32 (twice the vector width), centred as in batch norm's
            # output pass: exact x - m near the mean, the rest in the offset
            fastbn_center_fold(mean[i], alpha, 0.0, &mf, &af, &of)
            for j in range(D):
                yrow[j] = gamma[j] * ((xr[j] - mf) * af + of) + beta[j]
        elif sd == 1 and yd == 1:
            for j in range(D):
                yrow[j] = <floating>(gamma[j] * (xr[j] * alpha + shift) + beta[j])
        else:
            for j in range(D):
                yrow[j * yd] = <floating>(gamma[j] * (xr[j * sd] * alpha + shift) + beta[j])


cdef inline void _backward_row_pair(const floating* x0, const floating* g0,
                                    floating* d0, Py_ssize_t sr, Py_ssize_t gr,
                                    Py_ssize_t dr, Py_ssize_t D,
                                    const floating* gamma, const double* mean,
                                    const double* invstd, double* pgamma,
                                    double* pbeta) noexcept nogil:
    """:func:`_backward_rows` for two contiguous rows at once."""
    cdef const floating* x1 = x0 + sr
    cdef const floating* g1 = g0 + gr
    cdef floating* d1 = d0 + dr
    cdef double mu0 = mean[0], mu1 = mean[1], inv0 = invstd[0], inv1 = invstd[1]
    cdef double sg0 = 0.0, sgx0 = 0.0, sg1 = 0.0, sgx1 = 0.0
    cdef double a0, a1, xc0, xc1, gj, b0, b1, e0, e1
    cdef Py_ssize_t j
    for j in range(D):
        a0 = g0[j]
        a1 = g1[j]
        xc0 = x0[j] - mu0
        xc1 = x1[j] - mu1
        pbeta[j] += a0 + a1
        pgamma[j] += a0 * (xc0 * inv0) + a1 * (xc1 * inv1)
        gj = gamma[j]
        sg0 += a0 * gj
        sgx0 += a0 * gj * xc0
        sg1 += a1 * gj
        sgx1 += a1 * gj * xc1
    b0 = -inv0 * inv0 * inv0 * sgx0 / D
    b1 = -inv1 * inv1 * inv1 * sgx1 / D
    e0 = -inv0 * sg0 / D
    e1 = -inv1 * sg1 / D
    _dx_row(x0, g0, d0, D, gamma, mu0, inv0, b0, e0)
    _dx_row(x1, g1, d1, D, gamma, mu1, inv1, b1, e1)


cdef inline void _dx_row(const floating* xr, const floating* grow, floating* drow,
                         Py_ssize_t D, const floating* gamma, double mu, double inv,
                         double b, double c0) noexcept nogil:
    """dx = inv * gamma * g + b * (x - mu) + c0 over one contiguous row
    (float64 rows: contiguous float32 rows take fastbn_ln_rows_backward_f)."""
    cdef Py_ssize_t j
    for j in range(D):
        drow[j] = <floating>(inv * (gamma[j] * grow[j]) + b * (xr[j] - mu) + c0)


cdef inline void _backward_rows(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                                floating* dx, Py_ssize_t dr, Py_ssize_t dd,
                                Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                const floating* gamma, const double* mean,
                                const double* invstd, double* pgamma,
                                double* pbeta) noexcept nogil:
    """Rows r0..r1: dx, and this block's column sums for dgamma and dbeta.

    With g = dout * gamma and xc = x - mean, the closed form
    dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) per row becomes
    dx = invstd * g + b * xc + c0 with the row's scalars
    b = -invstd**3 * sum(g * xc) / D and c0 = -invstd * sum(g) / D.
    """
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef const floating* grow
    cdef floating* drow
    cdef double mu, inv, g, gg, xc, sg, sgx, b, c0
    for j in range(D):
        pgamma[j] = 0.0
        pbeta[j] = 0.0
    i = r0
    if sd == 1 and gd == 1 and dd == 1:
        # contiguous rows two at a time: half the loads and stores of the
        # column partials, which otherwise cost as much as the row sums
        while i + 1 < r1:
            _backward_row_pair(x + i * sr, dy + i * gr, dx + i * dr, sr, gr, dr, D,
                               gamma, mean + i, invstd + i, pgamma, pbeta)
            i += 2
    for i in range(i, r1):
        xr = x + i * sr
        grow = dy + i * gr
        drow = dx + i * dr
        mu = mean[i]
        inv = invstd[i]
        sg = 0.0
        sgx = 0.0
        if sd == 1 and gd == 1:
            for j in range(D):
                g = grow[j]
                xc = xr[j] - mu
                pbeta[j] += g
                pgamma[j] += g * (xc * inv)
                gg = g * gamma[j]
                sg += gg
                sgx += gg * xc
        else:
            for j in range(D):
                g = grow[j * gd]
                xc = xr[j * sd] - mu
                pbeta[j] += g
                pgamma[j] += g * (xc * inv)
                gg = g * gamma[j]
                sg += gg
                sgx += gg * xc
        b = -inv * inv * inv * sgx / D
        c0 = -inv * sg / D
        if sd == 1 and gd == 1 and dd == 1:
            _dx_row(xr, grow, drow, D, gamma, mu, inv, b, c0)
        else:
            for j in range(D):
                drow[j * dd] = <floating>(inv * (gamma[j] * <double>grow[j * gd])
                                          + b * (xr[j * sd] - mu) + c0)


# Column-major inputs (features further apart in memory than rows: Fortran
# order, transposed views) would make the per-row loops above jump a whole
# column per element.  Instead, take BLK rows at a time and sweep the
# features, the inner loop running down a column over the block's rows:
# contiguous, vectorizable, and the block's per-row sums live on the stack.
cdef enum:
    BLK = 512        # rows per block; 4 per-row double arrays of BLK live on the stack


cdef inline void _forward_cols(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                               floating* y, Py_ssize_t yr, Py_ssize_t yd,
                               Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                               const floating* gamma, const floating* beta,
                               double eps, double* mean,
                               double* invstd) noexcept nogil:
    """Rows r0..r1, BLK rows at a time, sweeping the features."""
    cdef double c[BLK]
    cdef double s1[BLK]
    cdef double s2[BLK]
    cdef double alpha[BLK]
    cdef double shift[BLK]
    cdef Py_ssize_t i0, nb, k, j
    cdef const floating* p
    cdef floating* q
    cdef double var, gj, bj
    i0 = r0
    while i0 < r1:
        nb = r1 - i0
        if nb > BLK:
            nb = BLK
        for k in range(nb):
            c[k] = x[(i0 + k) * sr]
        # the block's row sums are batch norm's column sums of its transpose
        # (features as rows, rows as columns): the row-block sums load and
        # store the per-row accumulators once per block of features
        fastbn_rows_sums(x + i0 * sr, sd, sr, nb, D, 0, fastbn_row_blocks(D, FASTBN_SUM_ROWS), c,
                         s1, s2)
        for k in range(nb):
            fastbn_finish1(s1[k], s2[k], <double>D, c[k], eps, &mean[i0 + k], &var, &invstd[i0 + k])
            alpha[k] = invstd[i0 + k]
            shift[k] = -mean[i0 + k] * alpha[k]
        for j in range(D):
            p = x + j * sd + i0 * sr
            q = y + j * yd + i0 * yr
            gj = gamma[j]
            bj = beta[j]
            if sr == 1 and yr == 1:
                for k in range(nb):
                    q[k] = <floating>(gj * (p[k] * alpha[k] + shift[k]) + bj)
            else:
                for k in range(nb):
                    q[k * yr] = <floating>(gj * (p[k * sr] * alpha[k] + shift[k]) + bj)
        i0 += nb


cdef inline void _backward_cols(const floating* x, Py_ssize_t sr, Py_ssize_t sd,
                                const floating* dy, Py_ssize_t gr, Py_ssize_t gd,
                                floating* dx, Py_ssize_t dr, Py_ssize_t dd,
                                Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                const floating* gamma, const double* mean,
                                const double* invstd, double* pgamma,
                                double* pbeta) noexcept nogil:
    """As :func:`_backward_rows`, BLK rows at a time, sweeping the features."""
    cdef double sg[BLK]
    cdef double sgx[BLK]
    cdef double b[BLK]
    cdef double c0[BLK]
    cdef Py_ssize_t i0, nb, k, j
    cdef const floating* p
    cdef const floating* q
    cdef floating* o
    cdef const double* mu
    cdef const double* inv
    cdef double g, gg, xc, gj, tb, tg
    for j in range(D):
        pgamma[j] = 0.0
        pbeta[j] = 0.0
    i0 = r0
    while i0 < r1:
        nb = r1 - i0
        if nb > BLK:
            nb = BLK
        mu = mean + i0
        inv = invstd + i0
        for k in range(nb):
            sg[k] = 0.0
            sgx[k] = 0.0
        for j in range(D):
            p = x + j * sd + i0 * sr
            q = dy + j * gd + i0 * gr
            gj = gamma[j]
            tb = 0.0
            tg = 0.0
            if sr == 1 and gr == 1:
                for k in range(nb):
                    g = q[k]
                    xc = p[k] - mu[k]
                    tb += g
                    tg += g * (xc * inv[k])
                    gg = g * gj
                    sg[k] += gg
                    sgx[k] += gg * xc
            else:
                for k in range(nb):
                    g = q[k * gr]
                    xc = p[k * sr] - mu[k]
                    tb += g
                    tg += g * (xc * inv[k])
                    gg = g * gj
                    sg[k] += gg
                    sgx[k] += gg * xc
            pbeta[j] += tb
            pgamma[j] += tg
        for k in range(nb):
            b[k] = -inv[k] * inv[k] * inv[k] * sgx[k] / D
            c0[k] = -inv[k] * sg[k] / D
        for j in range(D):
            p = x + j * sd + i0 * sr
            q = dy + j * gd + i0 * gr
            o = dx + j * dd + i0 * dr
            gj = gamma[j]
            if sr == 1 and gr == 1 and dr == 1:
                for k in range(nb):
                    o[k] = <floating>(inv[k] * (gj * <double>q[k])
                                      + b[k] * (p[k] - mu[k]) + c0[k])
            else:
                for k in range(nb):
                    o[k * dr] = <floating>(inv[k] * (gj * <double>q[k * gr])
                                           + b[k] * (p[k * sr] - mu[k]) + c0[k])
        i0 += nb


cdef inline bint _column_major(Py_ssize_t R, Py_ssize_t D, Py_ssize_t sr,
                               Py_ssize_t sd) noexcept nogil:
    """True when sweeping features down blocks of rows is the cache-friendly order."""
    if R == 1 or D == 1:
        return False
    if sr < 0:
        sr = -sr
    if sd < 0:
        sd = -sd
    return sd > sr


# --------------------------------------------------------------------------
# Python entry points.  All run without the GIL.
# --------------------------------------------------------------------------

cdef void _forward_c(const floating* xp, Steps xs, floating* yp, Steps ys, Py_ssize_t R,
                     Py_ssize_t D, const floating* gamma, const floating* beta, double eps,
                     double* mean, double* invstd, int nthreads) noexcept nogil:
    """:func:`forward` on raw pointers and element strides."""
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), t
    cdef bint cols = _column_major(R, D, xs.s0, xs.s1)
    nthreads = fastbn_team(nthreads)
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        if cols:
            _forward_cols(xp, xs.s0, xs.s1, yp, ys.s0, ys.s1, D, t * R // nch,
                          (t + 1) * R // nch, gamma, beta, eps, mean, invstd)
        else:
            _forward_rows(xp, xs.s0, xs.s1, yp, ys.s0, ys.s1, D, t * R // nch,
                          (t + 1) * R // nch, gamma, beta, eps, mean, invstd)
    fastbn_leave()


def forward(const floating[:, :] x, const floating[::1] gamma,
            const floating[::1] beta, double eps, floating[:, :] out,
            double[::1] mean, double[::1] invstd, int nthreads):
    """Layer-norm forward on (N, D); fills the per-row mean and invstd (float64)."""
    with nogil:
        _forward_c(&x[0, 0], _steps(x.strides, 2, sizeof(floating)), &out[0, 0],
                   _steps(out.strides, 2, sizeof(floating)), x.shape[0], x.shape[1], &gamma[0],
                   &beta[0], eps, &mean[0], &invstd[0], nthreads)


cdef int _backward_c(const floating* xp, Steps xs, const floating* gp, Steps gs,
                     floating* dp, Steps ds, Py_ssize_t R, Py_ssize_t D,
                     const floating* gamma, const double* mean, const double* invstd,
                     floating* dgamma, floating* dbeta, int nthreads) noexcept nogil:
    """:func:`backward` on raw pointers and element strides; -1 when its
    scratch cannot be allocated (nothing written then)."""
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), t, j
    # per block: D partial sums for dgamma, then D for dbeta; then their totals
    cdef Py_ssize_t P = _row_part_stride(D), Q = fastbn_part_stride(D, sizeof(float))
    cdef double* part = <double*>fastbn_malloc64((2 * nch * P + 2 * D) * sizeof(double))
    cdef bint cols = _column_major(R, D, xs.s0, xs.s1)
    # contiguous float32 rows: the float32-lane kernel, with D floats of
    # column scratch twice per thread
    cdef bint lanes = (floating is float and not cols and xs.s1 == 1 and gs.s1 == 1
                       and ds.s1 == 1)
    cdef float* scratch = <float*>fastbn_malloc64(2 * nch * Q * sizeof(float)) if lanes else NULL
    if part == NULL or (lanes and scratch == NULL):
        fastbn_free64(part)
        fastbn_free64(scratch)
        return -1
    cdef double* sgamma = part + 2 * nch * P
    cdef double* sbeta = sgamma + D
    nthreads = fastbn_team(nthreads)
    for t in prange(nch, num_threads=nthreads, schedule="static"):
        if floating is float and lanes:
            fastbn_ln_rows_backward_f(xp, xs.s0, gp, gs.s0, dp, ds.s0, D, _chunk_row(t, R, nch),
                                      _chunk_row(t + 1, R, nch), gamma, mean, invstd,
                                      scratch + 2 * t * Q, scratch + (2 * t + 1) * Q,
                                      part + 2 * t * P, part + (2 * t + 1) * P)
        elif cols:
            _backward_cols(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, dp, ds.s0, ds.s1, D,
                           t * R // nch, (t + 1) * R // nch, gamma, mean, invstd,
                           part + 2 * t * P, part + (2 * t + 1) * P)
        else:
            _backward_rows(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, dp, ds.s0, ds.s1, D,
                           t * R // nch, (t + 1) * R // nch, gamma, mean, invstd,
                           part + 2 * t * P, part + (2 * t + 1) * P)
    fastbn_add_row_partials(part, nch, D, sgamma, sbeta)
    for j in range(D):
        dgamma[j] = <floating>sgamma[j]
        dbeta[j] = <floating>sbeta[j]
    fastbn_leave()
    fastbn_free64(part)
    fastbn_free64(scratch)
    return 0


def backward(const floating[:, :] x, const floating[:, :] dout,
             const floating[::1] gamma, const double[::1] mean,
             const double[::1] invstd, floating[:, :] dx,
             floating[::1] dgamma, floating[::1] dbeta, int nthreads):
    """Fused layer-norm backward on (N, D): dx, dgamma and dbeta."""
    cdef int rc
    with nogil:
        rc = _backward_c(&x[0, 0], _steps(x.strides, 2, sizeof(floating)), &dout[0, 0],
                         _steps(dout.strides, 2, sizeof(floating)), &dx[0, 0],
                         _steps(dx.strides, 2, sizeof(floating)), x.shape[0], x.shape[1],
                         &gamma[0], &mean[0], &invstd[0], &dgamma[0], &dbeta[0], nthreads)
    if rc != 0:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")


# --------------------------------------------------------------------------
# Plain calls in one step (as batch norm's, ``_bn.pyx``): C-ordered rows in
# their plain form are checked here and run on the functions above with the
# thread count and output the general path would choose, so with the same
# bits; anything else returns None for the general path.  The checks and
# outputs: ``_plain.pxd``.
# --------------------------------------------------------------------------

cdef object _plain_forward(const floating* xp, object x, object gamma, object beta, double eps,
                           object policy, int typenum):
    cdef npy_intp* dims = PyArray_DIMS(<PyArrayObject*>x)
    cdef Py_ssize_t R = dims[0], D = dims[1]
    cdef int nthreads = _plain_threads(policy, R * D)
    out = _plain_output(policy, x, None, typenum)[0]
    mean = PyArray_EMPTY(1, dims, NPY_DOUBLE, 0)
    invstd = PyArray_EMPTY(1, dims, NPY_DOUBLE, 0)
    cdef floating* yp = <floating*>_data(out)
    cdef const floating* gp = <const floating*>_data(gamma)
    cdef const floating* bp = <const floating*>_data(beta)
    cdef double* mp = <double*>_data(mean)
    cdef double* ip = <double*>_data(invstd)
    with nogil:
        _forward_c(xp, _c_steps(D), yp, _c_steps(D), R, D, gp, bp, eps, mp, ip, nthreads)
    return out, policy.cache_type(x, gamma, mean, invstd)


def plain_layernorm_forward(x, gamma, beta, ln_param, policy):
    """``layernorm_forward(x, gamma, beta, ln_param)`` for a call in plain
    form, in one step, or None for the general path.

    Plain: ``x`` a C-contiguous, aligned, non-empty (N, D) float32/float64
    ndarray with rows below the buffer cache's size; ``gamma`` and ``beta``
    (D,) ndarrays of x's dtype; ``ln_param`` a dict whose ``eps`` is absent
    or a finite Python float >= 0.  ``policy``: a
    :class:`fastbn._layout.PlainPolicy` (``_plain.pxd``).
    """
    if type(ln_param) is not dict:
        return None
    cdef int typenum = _plain_rows(x, <Py_ssize_t>policy.min_bytes)
    if typenum == 0:
        return None
    cdef Py_ssize_t D = PyArray_DIMS(<PyArrayObject*>x)[1]
    if not (_vector(gamma, D, typenum) and _vector(beta, D, typenum)):
        return None
    cdef double eps = 1e-5
    if not _plain_float(<dict>ln_param, "eps", &eps):
        return None
    if not (eps >= 0 and isfinite(eps)):
        return None
    if typenum == NPY_DOUBLE:
        return _plain_forward(<const double*>_data(x), x, gamma, beta, eps, policy, typenum)
    return _plain_forward(<const float*>_data(x), x, gamma, beta, eps, policy, typenum)


cdef object _plain_backward(const floating* xp, object x, object dout, object gamma,
                            object mean, object invstd, object policy, int typenum):
    cdef npy_intp* dims = PyArray_DIMS(<PyArrayObject*>x)
    cdef Py_ssize_t R = dims[0]
    cdef npy_intp D = dims[1]
    cdef int rc, nthreads = _plain_threads(policy, R * D)
    dx = _plain_output(policy, x, dout, typenum)[0]
    dgamma = PyArray_EMPTY(1, &D, typenum, 0)
    dbeta = PyArray_EMPTY(1, &D, typenum, 0)
    cdef const floating* gp = <const floating*>_data(dout)
    cdef floating* dp = <floating*>_data(dx)
    cdef const floating* gam = <const floating*>_data(gamma)
    cdef const double* mp = <const double*>_data(mean)
    cdef const double* ip = <const double*>_data(invstd)
    cdef floating* dgp = <floating*>_data(dgamma)
    cdef floating* dbp = <floating*>_data(dbeta)
    with nogil:
        rc = _backward_c(xp, _c_steps(D), gp, _c_steps(D), dp, _c_steps(D), R, D, gam, mp, ip,
                         dgp, dbp, nthreads)
    if rc != 0:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    return dx, dgamma, dbeta


def plain_layernorm_backward(dout, cache, policy):
    """``layernorm_backward(dout, cache)`` for a call in plain form, in one
    step, or None for the general path.

    Plain: ``cache`` an exact ``policy.cache_type`` whose x, gamma, mean and
    invstd still have the plain form of a forward call, and ``dout`` a
    C-contiguous, aligned ndarray of x's shape and dtype.
    """
    if type(cache) is not policy.cache_type or not PyArray_CheckExact(dout):
        return None
    x = cache.x
    cdef int typenum = _plain_rows(x, <Py_ssize_t>policy.min_bytes)
    if typenum == 0 or not _plain(dout, 2, typenum):
        return None
    cdef npy_intp* dims = PyArray_DIMS(<PyArrayObject*>x)
    cdef npy_intp* gdims = PyArray_DIMS(<PyArrayObject*>dout)
    if gdims[0] != dims[0] or gdims[1] != dims[1]:
        return None
    gamma, mean, invstd = cache.gamma, cache.mean, cache.invstd
    if not (_vector(gamma, dims[1], typenum) and _vector(mean, dims[0], NPY_DOUBLE)
            and _vector(invstd, dims[0], NPY_DOUBLE)):
        return None
    if typenum == NPY_DOUBLE:
        return _plain_backward(<const double*>_data(x), x, dout, gamma, mean, invstd, policy,
                               typenum)
    return _plain_backward(<const float*>_data(x), x, dout, gamma, mean, invstd, policy, typenum)
