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

``_bn_avx2.pyx`` includes this file to build the same kernels with AVX2 and
FMA; :mod:`fastbn._dispatch` asks :func:`cpu_has_avx2_fma` (of the baseline
build) which one the running CPU can execute.  The loops themselves are C, in
``include/fastbn`` (declared in ``_cheaders.pxd``).
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from cython cimport floating

from fastbn._cheaders cimport (
    fastbn_active, fastbn_blend, fastbn_center_fold, fastbn_chan_dx, fastbn_chan_grad_sums,
    fastbn_chan_normalize, fastbn_chan_sums, fastbn_cpu_has_avx2_fma,
    fastbn_cpu_has_avx512, fastbn_dx_centered, fastbn_dx_coef, fastbn_finish1,
    fastbn_finish_moments_v, fastbn_fold_forward,
    fastbn_kernel_isa, fastbn_leave, fastbn_team, fastbn_team_size,
)
from fastbn._kernels cimport (
    Steps, _steps, _chans_dx_all, _chans_grad_sums_all, _chans_normalize_all, _chans_sums_all,
    _channel_split, _row_chunks, _rows_dx_all, _rows_grad_sums_all, _rows_normalize_all,
    _rows_sums_all,
)


def _active_calls():
    """Kernel calls of this module running right now (for tests)."""
    return fastbn_active()


def _team_size(int nthreads):
    """The threads a kernel call of this module starting now would get (for tests)."""
    return fastbn_team_size(nthreads)


def cpu_has_avx2_fma():
    """True when the running CPU (and OS) can execute the AVX2+FMA kernels."""
    return bool(fastbn_cpu_has_avx2_fma())


def cpu_has_avx512():
    """True when the running CPU (and OS) can execute the AVX-512 kernels."""
    return bool(fastbn_cpu_has_avx512())


def kernel_isa():
    """The instruction set this module was compiled for: 'baseline', 'avx2' or 'avx512'."""
    return fastbn_kernel_isa.decode()


# --------------------------------------------------------------------------
# Python entry points.  All run without the GIL.  The output passes compute in
# x's own precision with coefficients from fastbn_center_fold; statistics and
# gradient sums accumulate in float64.  ``stream=True`` writes the output with
# non-temporal stores where the build has them (the caller decides:
# fastbn.compiled._output); the values are the same either way.
# --------------------------------------------------------------------------

def rows_forward_train(const floating[:, :] x, const floating[::1] gamma,
                       const floating[::1] beta, double eps, floating[:, :] out,
                       double[:, ::1] stats, const floating[::1] running_mean,
                       const floating[::1] running_var, double momentum,
                       floating[:, ::1] new_running, int nthreads, bint stream=False):
    """Train-mode forward on an (R, D) view.

    Fills ``stats`` (3, D) float64 with mean, var, invstd, and ``new_running``
    (2, D) with ``momentum * running + (1 - momentum) * batch`` (float64
    arithmetic) for the running mean and variance.
    """
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef double* mean = &stats[0, 0]
    cdef double* var = &stats[1, 0]
    cdef double* invstd = &stats[2, 0]
    cdef Steps xs = _steps(x.strides, 2, sizeof(floating))
    cdef Steps ys = _steps(out.strides, 2, sizeof(floating))
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), j
    cdef const floating* xp = &x[0, 0]
    cdef floating* yp = &out[0, 0]
    cdef double* part = <double*>malloc((2 * nch + 3) * D * sizeof(double))
    cdef floating* coef = <floating*>malloc(3 * D * sizeof(floating))
    if part == NULL or coef == NULL:
        free(part)
        free(coef)
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* center = part + 2 * nch * D
    cdef double* s1 = center + D
    cdef double* s2 = s1 + D
    with nogil:
        nthreads = fastbn_team(nthreads)
        for j in range(D):
            center[j] = xp[j * xs.s1]
        _rows_sums_all(xp, xs.s0, xs.s1, R, D, nch, nthreads, center, part, s1, s2)
        fastbn_finish_moments_v(s1, s2, center, D, <double>R, eps, mean, var, invstd)
        fastbn_fold_forward(D, mean, var, invstd, &gamma[0], &beta[0], coef, coef + D, coef + 2 * D,
                            &running_mean[0], &running_var[0], momentum, &new_running[0, 0],
                            &new_running[1, 0])
        _rows_normalize_all(xp, xs.s0, xs.s1, yp, ys.s0, ys.s1, R, D, nch, nthreads, coef,
                            stream)
    fastbn_leave()
    free(part)
    free(coef)


def chans_forward_train(const floating[:, :, :] x, const floating[::1] gamma,
                        const floating[::1] beta, double eps, floating[:, :, :] out,
                        double[:, ::1] stats, const floating[::1] running_mean,
                        const floating[::1] running_var, double momentum,
                        floating[:, ::1] new_running, int nthreads, bint stream=False):
    """Train-mode forward on an (A, C, B) view; statistics per channel C.

    ``stats`` and ``new_running`` as for :func:`rows_forward_train`.
    """
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef double* mean = &stats[0, 0]
    cdef double* var = &stats[1, 0]
    cdef double* invstd = &stats[2, 0]
    cdef Steps xs = _steps(x.strides, 3, sizeof(floating))
    cdef Steps ys = _steps(out.strides, 3, sizeof(floating))
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t n_items = C * split, c
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &out[0, 0, 0]
    cdef double* part = <double*>malloc((2 * n_items + 2 * C) * sizeof(double))
    cdef floating* coef = <floating*>malloc(3 * C * sizeof(floating))
    if part == NULL or coef == NULL:
        free(part)
        free(coef)
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* s1 = part + 2 * n_items     # per-channel sums when split > 1
    cdef double* s2 = s1 + C
    with nogil:
        nthreads = fastbn_team(nthreads)
        if split == 1:
            # whole channels: statistics then output while the channel is cached
            for c in prange(C, num_threads=nthreads, schedule="static"):
                fastbn_chan_sums(xp + c * xs.s1, xs.s0, xs.s2, B, 0, L, xp[c * xs.s1], part + 2 * c)
                fastbn_finish1(part[2 * c], part[2 * c + 1], <double>L, xp[c * xs.s1], eps,
                               &mean[c], &var[c], &invstd[c])
                fastbn_center_fold(mean[c], gamma[c] * invstd[c], beta[c], &coef[3 * c],
                                   &coef[3 * c + 1], &coef[3 * c + 2])
                fastbn_chan_normalize(xp + c * xs.s1, xs.s0, xs.s2, yp + c * ys.s1, ys.s0, ys.s2, B,
                                      0, L, coef[3 * c], coef[3 * c + 1], coef[3 * c + 2], stream)
        else:
            _chans_sums_all(xp, xs.s0, xs.s1, xs.s2, B, L, C, split, nthreads, part, s1, s2)
            for c in range(C):
                fastbn_finish1(s1[c], s2[c], <double>L, xp[c * xs.s1], eps, &mean[c], &var[c],
                               &invstd[c])
                fastbn_center_fold(mean[c], gamma[c] * invstd[c], beta[c], &coef[3 * c],
                                   &coef[3 * c + 1], &coef[3 * c + 2])
            _chans_normalize_all(xp, xs.s0, xs.s1, xs.s2, yp, ys.s0, ys.s1, ys.s2, B, L, C, split,
                                 nthreads, coef, stream)
        for c in range(C):
            new_running[0, c] = fastbn_blend(momentum, running_mean[c], mean[c])
            new_running[1, c] = fastbn_blend(momentum, running_var[c], var[c])
    fastbn_leave()
    free(part)
    free(coef)


def rows_normalize(const floating[:, :] x, const double[::1] mean,
                   const double[::1] alpha, const double[::1] beta,
                   floating[:, :] out, int nthreads, bint stream=False):
    """out = (x - mean) * alpha + beta per feature on an (R, D) view (test mode)."""
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Steps xs = _steps(x.strides, 2, sizeof(floating))
    cdef Steps ys = _steps(out.strides, 2, sizeof(floating))
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), j
    cdef const floating* xp = &x[0, 0]
    cdef floating* yp = &out[0, 0]
    cdef floating* coef = <floating*>malloc(3 * D * sizeof(floating))
    if coef == NULL:
        raise MemoryError("fastbn: cannot allocate coefficients")
    with nogil:
        nthreads = fastbn_team(nthreads)
        for j in range(D):
            fastbn_center_fold(mean[j], alpha[j], beta[j], &coef[j], &coef[D + j], &coef[2 * D + j])
        _rows_normalize_all(xp, xs.s0, xs.s1, yp, ys.s0, ys.s1, R, D, nch, nthreads, coef,
                            stream)
    fastbn_leave()
    free(coef)


def chans_normalize(const floating[:, :, :] x, const double[::1] mean,
                    const double[::1] alpha, const double[::1] beta,
                    floating[:, :, :] out, int nthreads, bint stream=False):
    """out = (x - mean) * alpha + beta per channel on an (A, C, B) view (test mode)."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Steps xs = _steps(x.strides, 3, sizeof(floating))
    cdef Steps ys = _steps(out.strides, 3, sizeof(floating))
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t c
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &out[0, 0, 0]
    cdef floating* coef = <floating*>malloc(3 * C * sizeof(floating))
    if coef == NULL:
        raise MemoryError("fastbn: cannot allocate coefficients")
    with nogil:
        nthreads = fastbn_team(nthreads)
        for c in range(C):
            fastbn_center_fold(mean[c], alpha[c], beta[c], &coef[3 * c], &coef[3 * c + 1],
                               &coef[3 * c + 2])
        _chans_normalize_all(xp, xs.s0, xs.s1, xs.s2, yp, ys.s0, ys.s1, ys.s2, B, L, C, split,
                             nthreads, coef, stream)
    fastbn_leave()
    free(coef)


def rows_backward(const floating[:, :] x, const floating[:, :] dout,
                  const floating[::1] gamma, const double[::1] mean,
                  const double[::1] invstd, bint train, floating[:, :] dx,
                  floating[::1] dgamma, floating[::1] dbeta, int nthreads,
                  bint stream=False):
    """Fused backward on an (R, D) view: one pass of sums, one pass writing dx."""
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1]
    cdef Steps xs = _steps(x.strides, 2, sizeof(floating))
    cdef Steps gs = _steps(dout.strides, 2, sizeof(floating))
    cdef Steps ds = _steps(dx.strides, 2, sizeof(floating))
    cdef Py_ssize_t nch = _row_chunks(R, nthreads)
    cdef const floating* xp = &x[0, 0]
    cdef const floating* gp = &dout[0, 0]
    cdef floating* dp = &dx[0, 0]
    cdef double* part = <double*>malloc(2 * (nch + 1) * D * sizeof(double))
    cdef floating* coef = <floating*>malloc(4 * D * sizeof(floating))
    if part == NULL or coef == NULL:
        free(part)
        free(coef)
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* sdy = part + 2 * nch * D
    cdef double* sdyx = sdy + D
    with nogil:
        nthreads = fastbn_team(nthreads)
        _rows_grad_sums_all(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, R, D, nch, nthreads, &mean[0], part,
                            sdy, sdyx)
        fastbn_dx_coef(D, sdy, sdyx, <double>R, &gamma[0], &mean[0], &invstd[0], train, coef,
                       coef + D, coef + 2 * D, coef + 3 * D, &dgamma[0], &dbeta[0])
        _rows_dx_all(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, dp, ds.s0, ds.s1, R, D, nch, nthreads,
                     coef, stream)
    fastbn_leave()
    free(part)
    free(coef)


def chans_backward(const floating[:, :, :] x, const floating[:, :, :] dout,
                   const floating[::1] gamma, const double[::1] mean,
                   const double[::1] invstd, bint train, floating[:, :, :] dx,
                   floating[::1] dgamma, floating[::1] dbeta, int nthreads,
                   bint stream=False):
    """Fused backward on an (A, C, B) view; per channel, sums then dx."""
    cdef Py_ssize_t A = x.shape[0], C = x.shape[1], B = x.shape[2]
    cdef Steps xs = _steps(x.strides, 3, sizeof(floating))
    cdef Steps gs = _steps(dout.strides, 3, sizeof(floating))
    cdef Steps ds = _steps(dx.strides, 3, sizeof(floating))
    cdef Py_ssize_t L = A * B
    cdef Py_ssize_t split = _channel_split(C, L, nthreads)
    cdef Py_ssize_t n_items = C * split, c
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* gp = &dout[0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0]
    cdef double* part = <double*>malloc((2 * n_items + 2 * C) * sizeof(double))
    cdef floating* coef = <floating*>malloc(4 * C * sizeof(floating))
    if part == NULL or coef == NULL:
        free(part)
        free(coef)
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    cdef double* sdy = part + 2 * n_items    # per-channel sums when split > 1
    cdef double* sdyx = sdy + C
    with nogil:
        nthreads = fastbn_team(nthreads)
        if split == 1:
            for c in prange(C, num_threads=nthreads, schedule="static"):
                fastbn_chan_grad_sums(xp + c * xs.s1, xs.s0, xs.s2, gp + c * gs.s1, gs.s0, gs.s2, B,
                                      0, L, mean[c], part + 2 * c)
                dbeta[c] = <floating>part[2 * c]
                dgamma[c] = <floating>(part[2 * c + 1] * invstd[c])
                fastbn_dx_centered(part[2 * c], part[2 * c + 1], L, gamma[c], mean[c], invstd[c],
                                   train, &coef[4 * c], &coef[4 * c + 1], &coef[4 * c + 2],
                                   &coef[4 * c + 3])
                fastbn_chan_dx(xp + c * xs.s1, xs.s0, xs.s2, gp + c * gs.s1, gs.s0, gs.s2,
                               dp + c * ds.s1, ds.s0, ds.s2, B, 0, L, coef[4 * c], coef[4 * c + 1],
                               coef[4 * c + 2], coef[4 * c + 3], stream)
        else:
            _chans_grad_sums_all(xp, xs.s0, xs.s1, xs.s2, gp, gs.s0, gs.s1, gs.s2, B, L, C, split,
                                 nthreads, &mean[0], part, sdy, sdyx)
            for c in range(C):
                dbeta[c] = <floating>sdy[c]
                dgamma[c] = <floating>(sdyx[c] * invstd[c])
                fastbn_dx_centered(sdy[c], sdyx[c], L, gamma[c], mean[c], invstd[c], train,
                                   &coef[4 * c], &coef[4 * c + 1], &coef[4 * c + 2],
                                   &coef[4 * c + 3])
            _chans_dx_all(xp, xs.s0, xs.s1, xs.s2, gp, gs.s0, gs.s1, gs.s2, dp, ds.s0, ds.s1, ds.s2,
                          B, L, C, split, nthreads, coef, stream)
    fastbn_leave()
    free(part)
    free(coef)
