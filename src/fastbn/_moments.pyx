# cython: language_level=3
"""Batch norm taken apart: the reductions and apply-steps, each on its own.

The fused kernels in ``_bn`` do statistics and output in one call because a
single process has everything at hand.  When the batch is spread over
processes (``fastbn.distributed``) the work splits at the reductions:

1. per-feature partial moments of the local batch (count, mean, M2),
2. a merge of partial moments (Chan et al.), done across processes,
3. the affine step with the merged mean and inverse std,

and backward likewise: per-feature partial sums ``sum(dy)`` and
``sum(dy * (x - mean))``, a sum across processes, then the ``dx`` step.

The reductions and the dx coefficients are the very functions of
``_kernels.pxd`` and ``include/fastbn`` the fused kernels call (``_rows_sums_all``,
``_chans_grad_sums_all``, ``fastbn_dx_centered``, ...), so the pieces compute
exactly what the fused path computes.  The normalize step needs nothing
beyond the fused module's ``rows_normalize``/``chans_normalize``, which
:mod:`fastbn.moments` calls directly.  The Python layer validates arguments
and picks the row or channel view; these functions assume non-empty,
shape-consistent arguments.
"""
from libc.stdlib cimport malloc, free
from cython cimport floating

from fastbn._cheaders cimport (
    fastbn_active, fastbn_dx_centered, fastbn_free64, fastbn_kernel_isa, fastbn_leave,
    fastbn_malloc64, fastbn_team, fastbn_team_size,
)
from fastbn._kernels cimport (
    Steps, _steps, _chans_dx_all, _chans_grad_sums_all, _chans_sums_all, _channel_split,
    _row_chunks, _row_part_stride, _rows_dx_all, _rows_grad_sums_all, _rows_sums_all,
)


def kernel_isa():
    """The instruction set this module was compiled for: 'baseline', 'avx2' or 'avx512'."""
    return fastbn_kernel_isa.decode()


def _active_calls():
    """Kernel calls of this module running right now (for tests)."""
    return fastbn_active()


def _team_size(int nthreads):
    """The threads a kernel call of this module starting now would get (for tests)."""
    return fastbn_team_size(nthreads)


cdef inline void _moments_from_sums(double s1, double s2, double n, double center,
                                    double* mean, double* m2) noexcept nogil:
    """(mean, M2) from sums of x - center and (x - center)**2 over n values."""
    cdef double d = s1 / n
    cdef double v = s2 - s1 * d
    if v < 0.0:          # rounding only; a NaN fails the test and stays NaN
        v = 0.0
    mean[0] = center + d
    m2[0] = v


# --------------------------------------------------------------------------
# Forward reduction: partial moments of a local batch.
# --------------------------------------------------------------------------

def rows_moments(const floating[:, :] x, double[::1] mean, double[::1] m2,
                 int nthreads):
    """Per-column mean and M2 (sum of squared deviations) of an (R, D) view.

    One pass of float64 sums shifted by each feature's first value, as in
    the fused forward; threads' partial sums share that shift and add.
    """
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Steps xs = _steps(x.strides, 2, sizeof(floating))
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), j
    cdef const floating* xp = &x[0, 0]
    cdef Py_ssize_t P = _row_part_stride(D)
    cdef double* part = <double*>fastbn_malloc64((2 * nch * P + 3 * D) * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* center = part + 2 * nch * P
    cdef double* s1 = center + D
    cdef double* s2 = s1 + D
    with nogil:
        nthreads = fastbn_team(nthreads)
        for j in range(D):
            center[j] = xp[j * xs.s1]
        _rows_sums_all(xp, xs.s0, xs.s1, R, D, nch, nthreads, center, part, s1, s2)
        for j in range(D):
            _moments_from_sums(s1[j], s2[j], <double>R, center[j], &mean[j], &m2[j])
    fastbn_leave()
    fastbn_free64(part)


def chans_moments(const floating[:, :, :] x, double[::1] mean, double[::1] m2,
                  int nthreads):
    """Per-channel mean and M2 of an (A, C, B) view (statistics over A and B)."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Steps xs = _steps(x.strides, 3, sizeof(floating))
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t c
    cdef const floating* xp = &x[0, 0, 0]
    cdef double* part = <double*>malloc(2 * (C * split + C) * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* s1 = part + 2 * C * split
    cdef double* s2 = s1 + C
    with nogil:
        nthreads = fastbn_team(nthreads)
        _chans_sums_all(xp, xs.s0, xs.s1, xs.s2, B, L, C, split, nthreads, part, s1, s2)
        for c in range(C):
            _moments_from_sums(s1[c], s2[c], <double>L, xp[c * xs.s1], &mean[c], &m2[c])
    fastbn_leave()
    free(part)


# --------------------------------------------------------------------------
# Merge of partial moments.
# --------------------------------------------------------------------------

cdef inline void _merge_into(double na, const double* ma, const double* qa,
                             double* nb, double* mb, double* qb,
                             Py_ssize_t D) noexcept nogil:
    """(nb, mb, qb) <- merge of (na, ma, qa) and (nb, mb, qb), Chan et al. (1979).

    With the two sides in a canonical order (1 before 2), per feature::

        mean = m1 + delta * n2/n,   M2 = (q1 + q2) + delta**2 * n1*n2/n,
        delta = m2 - m1.

    M2 never subtracts, so no cancellation whatever the data's offset.  The
    canonical order (larger count first, then larger mean, then larger M2)
    makes merge(a, b) and merge(b, a) run the very same operations, so they
    agree to the bit even where the compiler fuses multiply-adds (AVX2/FMA
    builds, arm64): a reduction tree combining in either order gives every
    process the same statistics.  An empty side returns the other unchanged.
    """
    cdef double n = na + nb[0], w, delta, n2, m1, m2, q1, q2
    cdef Py_ssize_t j
    cdef bint a_first
    if na == 0.0:
        return
    if nb[0] == 0.0:
        nb[0] = na
        for j in range(D):
            mb[j] = ma[j]
            qb[j] = qa[j]
        return
    w = na * nb[0] / n
    for j in range(D):
        if na != nb[0]:
            a_first = na > nb[0]
        elif ma[j] != mb[j]:
            a_first = ma[j] > mb[j]
        else:
            a_first = qa[j] >= qb[j]
        if a_first:
            n2, m1, m2, q1, q2 = nb[0], ma[j], mb[j], qa[j], qb[j]
        else:
            n2, m1, m2, q1, q2 = na, mb[j], ma[j], qb[j], qa[j]
        delta = m2 - m1
        mb[j] = m1 + delta * (n2 / n)
        qb[j] = (q1 + q2) + delta * delta * w
    nb[0] = n


def merge_packed(const double[::1] a, double[::1] b):
    """In place: ``b`` <- merge(a, b) for packed moments ``[n, mean(D), M2(D)]``.

    The layout of one MPI element in ``fastbn.distributed``'s all-reduce.
    """
    cdef Py_ssize_t D = (b.shape[0] - 1) // 2
    with nogil:
        _merge_into(a[0], &a[1], &a[1 + D], &b[0], &b[1], &b[1 + D], D)


# --------------------------------------------------------------------------
# Backward reduction: per-feature partial sums.
# --------------------------------------------------------------------------

def rows_grad_sums(const floating[:, :] x, const floating[:, :] dout,
                   const double[::1] mean, double[::1] sdy, double[::1] sdyx,
                   int nthreads):
    """sdy = sum(dout), sdyx = sum(dout * (x - mean)) per column of an (R, D) view."""
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Steps xs = _steps(x.strides, 2, sizeof(floating))
    cdef Steps gs = _steps(dout.strides, 2, sizeof(floating))
    cdef Py_ssize_t nch = _row_chunks(R, nthreads)
    cdef const floating* xp = &x[0, 0]
    cdef const floating* gp = &dout[0, 0]
    cdef double* part = <double*>fastbn_malloc64(
        2 * nch * _row_part_stride(D) * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    with nogil:
        nthreads = fastbn_team(nthreads)
        _rows_grad_sums_all(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, R, D, nch, nthreads, &mean[0], part,
                            &sdy[0], &sdyx[0])
    fastbn_leave()
    fastbn_free64(part)


def chans_grad_sums(const floating[:, :, :] x, const floating[:, :, :] dout,
                    const double[::1] mean, double[::1] sdy, double[::1] sdyx,
                    int nthreads):
    """Per-channel sum(dout) and sum(dout * (x - mean)) of (A, C, B) views."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Steps xs = _steps(x.strides, 3, sizeof(floating))
    cdef Steps gs = _steps(dout.strides, 3, sizeof(floating))
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* gp = &dout[0, 0, 0]
    cdef double* part = <double*>malloc(2 * C * split * sizeof(double))
    if part == NULL:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    with nogil:
        nthreads = fastbn_team(nthreads)
        _chans_grad_sums_all(xp, xs.s0, xs.s1, xs.s2, gp, gs.s0, gs.s1, gs.s2, B, L, C, split,
                             nthreads, &mean[0], part, &sdy[0], &sdyx[0])
    fastbn_leave()
    free(part)


# --------------------------------------------------------------------------
# Apply-step of backward: dx from per-feature sums (the normalize step is the
# fused module's rows_normalize / chans_normalize).
# --------------------------------------------------------------------------

def rows_dx(const floating[:, :] x, const floating[:, :] dout, const double[::1] gamma,
            const double[::1] mean, const double[::1] invstd, const double[::1] sdy,
            const double[::1] sdyx, double count, bint train, floating[:, :] dx,
            int nthreads, bint stream=False):
    """The input gradient on (R, D) views from per-feature sums over ``count`` values."""
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Steps xs = _steps(x.strides, 2, sizeof(floating))
    cdef Steps gs = _steps(dout.strides, 2, sizeof(floating))
    cdef Steps ds = _steps(dx.strides, 2, sizeof(floating))
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), j
    cdef const floating* xp = &x[0, 0]
    cdef const floating* gp = &dout[0, 0]
    cdef floating* dp = &dx[0, 0]
    cdef floating* coef = <floating*>fastbn_malloc64(4 * D * sizeof(floating))
    if coef == NULL:
        raise MemoryError("fastbn: cannot allocate coefficients")
    with nogil:
        nthreads = fastbn_team(nthreads)
        for j in range(D):
            fastbn_dx_centered(sdy[j], sdyx[j], count, gamma[j], mean[j], invstd[j], train,
                               &coef[j], &coef[D + j], &coef[2 * D + j], &coef[3 * D + j])
        _rows_dx_all(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, dp, ds.s0, ds.s1, R, D, nch, nthreads,
                     coef, stream)
    fastbn_leave()
    fastbn_free64(coef)


def chans_dx(const floating[:, :, :] x, const floating[:, :, :] dout,
             const double[::1] gamma, const double[::1] mean, const double[::1] invstd,
             const double[::1] sdy, const double[::1] sdyx, double count, bint train,
             floating[:, :, :] dx, int nthreads, bint stream=False):
    """The input gradient on (A, C, B) views from per-channel sums over ``count`` values."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Steps xs = _steps(x.strides, 3, sizeof(floating))
    cdef Steps gs = _steps(dout.strides, 3, sizeof(floating))
    cdef Steps ds = _steps(dx.strides, 3, sizeof(floating))
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t c
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* gp = &dout[0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0]
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    if coef == NULL:
        raise MemoryError("fastbn: cannot allocate coefficients")
    with nogil:
        nthreads = fastbn_team(nthreads)
        for c in range(C):
            fastbn_dx_centered(sdy[c], sdyx[c], count, gamma[c], mean[c], invstd[c], train,
                               &coef[4 * c], &coef[4 * c + 1], &coef[4 * c + 2], &coef[4 * c + 3])
        _chans_dx_all(xp, xs.s0, xs.s1, xs.s2, gp, gs.s0, gs.s1, gs.s2, dp, ds.s0, ds.s1, ds.s2, B,
                      L, C, split, nthreads, coef, stream)
    fastbn_leave()
    free(coef)
