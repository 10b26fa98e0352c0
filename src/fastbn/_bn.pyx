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

Statistics are one pass: sums of ``x - c`` and ``(x - c)**2`` where ``c`` is
the feature's first value, in float64 (float32 data: in float32 lanes carried
into float64; ``include/fastbn/stats.h`` and ``runs_f32.h`` derive the
bounds).  Shifting by a sample keeps the subtraction in
``var = E[(x-c)^2] - E[x-c]^2`` benign even when the data sit far from zero,
and partial sums around a common shift merge by plain addition.

The Python layer validates everything before calling in: these functions
assume non-empty, shape-consistent arguments of one dtype.

``_bn_avx2.pyx`` includes this file to build the same kernels with AVX2 and
FMA; :mod:`fastbn._dispatch` asks :func:`cpu_has_avx2_fma` (of the baseline
build) which one the running CPU can execute.  The loops themselves are C, in
``include/fastbn`` (declared in ``_cheaders.pxd``).
"""
from cython.parallel cimport prange
from libc.math cimport isfinite
from libc.stdlib cimport calloc, malloc, free
from cython cimport floating

from fastbn._cheaders cimport (
    fastbn_active, fastbn_blend, fastbn_center_fold, fastbn_chan_dx, fastbn_chan_grad_sums,
    fastbn_chan_normalize, fastbn_chan_sums, fastbn_cpu_amd_family, fastbn_cpu_has_avx2_fma,
    fastbn_cpu_has_avx512, fastbn_dx_centered, fastbn_dx_coef, fastbn_finish1,
    fastbn_finish_moments_v, fastbn_fold_forward, fastbn_free64, fastbn_malloc64,
    fastbn_kernel_isa, fastbn_leave, fastbn_team, fastbn_team_size,
)
from fastbn._plain cimport (
    NPY_DOUBLE, PyArrayObject, PyArray_CheckExact, PyArray_DIMS, PyArray_EMPTY, _data,
    _import_array, _plain, _plain_float, _plain_output, _plain_rows, _plain_threads, _vector,
    npy_intp,
)
from fastbn._kernels cimport (
    Steps, _c_steps, _steps, _chans_dx_all, _chans_grad_sums_all, _chans_normalize_all,
    _chans_sums_all,
    _channel_split, _row_chunks, _row_part_stride, _rows_dx_all, _rows_grad_sums_all,
    _rows_normalize_all, _rows_sums_all,
)


_import_array()


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


def cpu_amd_family():
    """The CPU family of the running AMD processor (25: Zen 3 and 4, 26: Zen 5), 0 for
    another vendor or where it cannot be read."""
    return fastbn_cpu_amd_family()


def kernel_isa():
    """The instruction set this module was compiled for: 'baseline', 'avx2' or 'avx512'."""
    return fastbn_kernel_isa.decode()


# --------------------------------------------------------------------------
# Python entry points.  All run without the GIL.  The output passes compute in
# x's own precision with coefficients from fastbn_center_fold; statistics and
# gradient sums accumulate in float64 (float32 data: float32-lane partials
# carried into float64).  ``stream=True`` writes the output with
# non-temporal stores where the build has them (the caller decides:
# fastbn.compiled._output); the values are the same either way.
# --------------------------------------------------------------------------

cdef int _rows_forward_train_c(const floating* xp, Steps xs, floating* yp, Steps ys,
                               Py_ssize_t R, Py_ssize_t D, const floating* gamma,
                               const floating* beta, double eps, double* mean, double* var,
                               double* invstd, const floating* running_mean,
                               const floating* running_var, double momentum,
                               floating* new_mean, floating* new_var, int nthreads,
                               bint stream) noexcept nogil:
    """The train-mode forward of :func:`rows_forward_train` on raw pointers;
    -1 when its scratch cannot be allocated (nothing written then)."""
    cdef Py_ssize_t nch = _row_chunks(R, nthreads), j
    cdef Py_ssize_t P = _row_part_stride(D)
    cdef double* part = <double*>fastbn_malloc64((2 * nch * P + 3 * D) * sizeof(double))
    cdef floating* coef = <floating*>fastbn_malloc64(3 * D * sizeof(floating))
    if part == NULL or coef == NULL:
        fastbn_free64(part)
        fastbn_free64(coef)
        return -1
    cdef double* center = part + 2 * nch * P
    cdef double* s1 = center + D
    cdef double* s2 = s1 + D
    nthreads = fastbn_team(nthreads)
    for j in range(D):
        center[j] = xp[j * xs.s1]
    _rows_sums_all(xp, xs.s0, xs.s1, R, D, nch, nthreads, center, part, s1, s2)
    fastbn_finish_moments_v(s1, s2, center, D, <double>R, eps, mean, var, invstd)
    fastbn_fold_forward(D, mean, var, invstd, gamma, beta, coef, coef + D, coef + 2 * D,
                        running_mean, running_var, momentum, new_mean, new_var)
    _rows_normalize_all(xp, xs.s0, xs.s1, yp, ys.s0, ys.s1, R, D, nch, nthreads, coef, stream)
    fastbn_leave()
    fastbn_free64(part)
    fastbn_free64(coef)
    return 0


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
    cdef int rc
    with nogil:
        rc = _rows_forward_train_c(&x[0, 0], _steps(x.strides, 2, sizeof(floating)), &out[0, 0],
                                   _steps(out.strides, 2, sizeof(floating)), x.shape[0],
                                   x.shape[1], &gamma[0], &beta[0], eps, &stats[0, 0],
                                   &stats[1, 0], &stats[2, 0], &running_mean[0],
                                   &running_var[0], momentum, &new_running[0, 0],
                                   &new_running[1, 0], nthreads, stream)
    if rc != 0:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")


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
    cdef floating* coef = <floating*>fastbn_malloc64(3 * D * sizeof(floating))
    if coef == NULL:
        raise MemoryError("fastbn: cannot allocate coefficients")
    with nogil:
        nthreads = fastbn_team(nthreads)
        for j in range(D):
            fastbn_center_fold(mean[j], alpha[j], beta[j], &coef[j], &coef[D + j], &coef[2 * D + j])
        _rows_normalize_all(xp, xs.s0, xs.s1, yp, ys.s0, ys.s1, R, D, nch, nthreads, coef,
                            stream)
    fastbn_leave()
    fastbn_free64(coef)


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


cdef int _rows_backward_c(const floating* xp, Steps xs, const floating* gp, Steps gs,
                          floating* dp, Steps ds, Py_ssize_t R, Py_ssize_t D,
                          const floating* gamma, const double* mean, const double* invstd,
                          bint train, floating* dgamma, floating* dbeta, int nthreads,
                          bint stream) noexcept nogil:
    """The backward of :func:`rows_backward` on raw pointers; -1 when its
    scratch cannot be allocated (nothing written then)."""
    cdef Py_ssize_t nch = _row_chunks(R, nthreads)
    cdef Py_ssize_t P = _row_part_stride(D)
    cdef double* part = <double*>fastbn_malloc64((2 * nch * P + 2 * D) * sizeof(double))
    cdef floating* coef = <floating*>fastbn_malloc64(4 * D * sizeof(floating))
    if part == NULL or coef == NULL:
        fastbn_free64(part)
        fastbn_free64(coef)
        return -1
    cdef double* sdy = part + 2 * nch * P
    cdef double* sdyx = sdy + D
    nthreads = fastbn_team(nthreads)
    _rows_grad_sums_all(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, R, D, nch, nthreads, mean, part,
                        sdy, sdyx)
    fastbn_dx_coef(D, sdy, sdyx, <double>R, gamma, mean, invstd, train, coef, coef + D,
                   coef + 2 * D, coef + 3 * D, dgamma, dbeta)
    _rows_dx_all(xp, xs.s0, xs.s1, gp, gs.s0, gs.s1, dp, ds.s0, ds.s1, R, D, nch, nthreads,
                 coef, stream)
    fastbn_leave()
    fastbn_free64(part)
    fastbn_free64(coef)
    return 0


def rows_backward(const floating[:, :] x, const floating[:, :] dout,
                  const floating[::1] gamma, const double[::1] mean,
                  const double[::1] invstd, bint train, floating[:, :] dx,
                  floating[::1] dgamma, floating[::1] dbeta, int nthreads,
                  bint stream=False):
    """Fused backward on an (R, D) view: one pass of sums, one pass writing dx."""
    cdef int rc
    with nogil:
        rc = _rows_backward_c(&x[0, 0], _steps(x.strides, 2, sizeof(floating)), &dout[0, 0],
                              _steps(dout.strides, 2, sizeof(floating)), &dx[0, 0],
                              _steps(dx.strides, 2, sizeof(floating)), x.shape[0], x.shape[1],
                              &gamma[0], &mean[0], &invstd[0], train, &dgamma[0], &dbeta[0],
                              nthreads, stream)
    if rc != 0:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")


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


# --------------------------------------------------------------------------
# Plain calls in one step.  A (4, 3) batch costs far less to normalize than to
# validate in Python and to hand to the kernels as ten memoryviews, and on a
# (256, 1024) batch the general path's Python steps still cost a sixth of the
# call.  So a call whose arguments are all in their plain form is checked
# here, in C, and run on the same C functions as above with the thread count
# and output the general path would choose (``threads_for``; a large output
# from ``rows_output``, the buffer cache placed away from the inputs), which
# gives the same bits.  Anything else -- another dtype or layout, a subclass,
# a mapping other than a dict, test mode, non-finite or integer parameters,
# eps = 0, a batch of one, a parameter vector of the buffer cache's size --
# returns None, and the caller takes the general path, which converts, warns
# or raises as documented.  The checks and outputs: ``_plain.pxd``.
# --------------------------------------------------------------------------

cdef inline int _plain_batch(object x, object policy) noexcept:
    """:func:`_plain_rows` for batch norm: N, D >= 2 too (a batch of one
    warns on the general path, one feature takes the channel kernels)."""
    cdef int typenum = _plain_rows(x, <Py_ssize_t>policy.min_bytes)
    if typenum == 0:
        return 0
    cdef npy_intp* dims = PyArray_DIMS(<PyArrayObject*>x)
    return typenum if dims[0] >= 2 and dims[1] >= 2 else 0


cdef object _plain_forward_train(const floating* xp, object x, object gamma, object beta,
                                 object rm, object rv, double eps, double momentum,
                                 dict bn_param, object policy, int typenum):
    cdef npy_intp* dims = PyArray_DIMS(<PyArrayObject*>x)
    cdef npy_intp D = dims[1]
    cdef Py_ssize_t R = dims[0], j
    cdef const floating* g = <const floating*>_data(gamma)
    cdef const floating* b = <const floating*>_data(beta)
    cdef const floating* rmp = NULL
    cdef const floating* rvp = NULL
    cdef floating* yp
    cdef floating* nmp
    cdef floating* nvp
    cdef double* mp
    cdef double* ip
    cdef double* var
    cdef floating* zeros
    cdef int rc = -1, nthreads
    cdef bint stream
    for j in range(D):
        if not (isfinite(g[j]) and isfinite(b[j])):
            return None
    if rv is not None:
        rvp = <const floating*>_data(rv)
        for j in range(D):
            if rvp[j] < 0:
                return None
    if rm is not None:
        rmp = <const floating*>_data(rm)
    nthreads = _plain_threads(policy, R * D)
    out, stream = _plain_output(policy, x, None, typenum)
    mean = PyArray_EMPTY(1, &D, NPY_DOUBLE, 0)
    invstd = PyArray_EMPTY(1, &D, NPY_DOUBLE, 0)
    new_mean = PyArray_EMPTY(1, &D, typenum, 0)
    new_var = PyArray_EMPTY(1, &D, typenum, 0)
    yp = <floating*>_data(out)
    mp = <double*>_data(mean)
    ip = <double*>_data(invstd)
    nmp = <floating*>_data(new_mean)
    nvp = <floating*>_data(new_var)
    var = <double*>malloc(D * sizeof(double))
    zeros = <floating*>calloc(D, sizeof(floating))     # absent running statistics
    if var != NULL and zeros != NULL:
        if rmp == NULL:
            rmp = zeros
        if rvp == NULL:
            rvp = zeros
        with nogil:
            rc = _rows_forward_train_c(xp, _c_steps(D), yp, _c_steps(D), R, D, g, b, eps, mp,
                                       var, ip, rmp, rvp, momentum, nmp, nvp, nthreads, stream)
    free(var)
    free(zeros)
    if rc != 0:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    bn_param["running_mean"] = new_mean
    bn_param["running_var"] = new_var
    return out, policy.cache_type(x, gamma, mean, invstd, True, False)


def plain_batchnorm_forward(x, gamma, beta, bn_param, policy):
    """``batchnorm_forward(x, gamma, beta, bn_param)`` for a call in plain
    form, in one step, or None for the general path.

    Plain: ``x`` a C-contiguous, aligned (N, D) float32/float64 ndarray with
    N >= 2, D >= 2 (the general path's row kernels) and a row below the
    buffer cache's size; ``gamma`` and ``beta``
    finite (D,) ndarrays of x's dtype; ``bn_param`` a dict in train mode
    whose ``eps`` (> 0) and ``momentum`` (in [0, 1]) are absent or Python
    floats and whose running statistics are absent, None or (D,) ndarrays of
    x's dtype (variance >= 0).  ``policy``: see above.
    """
    if type(bn_param) is not dict:
        return None
    cdef int typenum = _plain_batch(x, policy)
    if typenum == 0:
        return None
    cdef Py_ssize_t D = PyArray_DIMS(<PyArrayObject*>x)[1]
    if not (_vector(gamma, D, typenum) and _vector(beta, D, typenum)):
        return None
    mode = bn_param.get("mode")
    if type(mode) is not str or mode != "train":
        return None
    cdef double eps = 1e-5, momentum = 0.9
    if not (_plain_float(bn_param, "eps", &eps) and _plain_float(bn_param, "momentum", &momentum)):
        return None
    if not (eps > 0 and isfinite(eps) and 0 <= momentum <= 1):
        return None
    rm = bn_param.get("running_mean")
    rv = bn_param.get("running_var")
    if (rm is not None and not _vector(rm, D, typenum)) or (
            rv is not None and not _vector(rv, D, typenum)):
        return None
    if typenum == NPY_DOUBLE:
        return _plain_forward_train(<const double*>_data(x), x, gamma, beta, rm, rv, eps,
                                    momentum, bn_param, policy, typenum)
    return _plain_forward_train(<const float*>_data(x), x, gamma, beta, rm, rv, eps, momentum,
                                bn_param, policy, typenum)


cdef object _plain_backward(const floating* xp, object x, object dout, object gamma,
                            object mean, object invstd, object policy, int typenum):
    cdef npy_intp* dims = PyArray_DIMS(<PyArrayObject*>x)
    cdef npy_intp D = dims[1]
    cdef const floating* gp = <const floating*>_data(dout)
    cdef const floating* gam = <const floating*>_data(gamma)
    cdef const double* mp = <const double*>_data(mean)
    cdef const double* ip = <const double*>_data(invstd)
    cdef floating* dp
    cdef floating* dgp
    cdef floating* dbp
    cdef int rc, nthreads = _plain_threads(policy, dims[0] * D)
    cdef bint stream
    dx, stream = _plain_output(policy, x, dout, typenum)
    dgamma = PyArray_EMPTY(1, &D, typenum, 0)
    dbeta = PyArray_EMPTY(1, &D, typenum, 0)
    dp = <floating*>_data(dx)
    dgp = <floating*>_data(dgamma)
    dbp = <floating*>_data(dbeta)
    with nogil:
        rc = _rows_backward_c(xp, _c_steps(D), gp, _c_steps(D), dp, _c_steps(D), dims[0], D, gam,
                              mp, ip, True, dgp, dbp, nthreads, stream)
    if rc != 0:
        raise MemoryError("fastbn: cannot allocate per-thread partial sums")
    return dx, dgamma, dbeta


def plain_batchnorm_backward(dout, cache, policy):
    """``batchnorm_backward(dout, cache)`` for a train-mode call in plain
    form, in one step, or None for the general path.

    Plain: ``cache`` an exact ``policy.cache_type`` of a 2-D train-mode
    forward whose x, gamma, mean and invstd still have the forward's plain
    form, and ``dout`` a C-contiguous, aligned ndarray of x's shape and
    dtype.
    """
    if type(cache) is not policy.cache_type or not PyArray_CheckExact(dout):
        return None
    if cache.train is not True or cache.spatial is not False:
        return None
    x = cache.x
    cdef int typenum = _plain_batch(x, policy)
    if typenum == 0 or not _plain(dout, 2, typenum):
        return None
    cdef npy_intp* dims = PyArray_DIMS(<PyArrayObject*>x)
    cdef Py_ssize_t D = dims[1]
    cdef npy_intp* gdims = PyArray_DIMS(<PyArrayObject*>dout)
    if gdims[0] != dims[0] or gdims[1] != D:
        return None
    gamma, mean, invstd = cache.gamma, cache.mean, cache.invstd
    if not (_vector(gamma, D, typenum) and _vector(mean, D, NPY_DOUBLE)
            and _vector(invstd, D, NPY_DOUBLE)):
        return None
    if typenum == NPY_DOUBLE:
        return _plain_backward(<const double*>_data(x), x, dout, gamma, mean, invstd, policy,
                               typenum)
    return _plain_backward(<const float*>_data(x), x, dout, gamma, mean, invstd, policy, typenum)
