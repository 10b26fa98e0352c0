# cython: language_level=3
"""Compiled group-normalization kernels (float32 and float64 via ``floating``).

The loops are C, in ``include/fastbn/groupnorm.h``; this module hands their
units of work to OpenMP threads without the GIL:

* channel-major arrays (NCHW, and any layout whose channel stride is at
  least its spatial one): one unit per (sample, group), N * G of them;
* channels-inner arrays (channels-last, Fortran order): one unit per
  sample, all of its groups at once.

Any element strides work; H and W are merged into one axis when every array
allows it, so an NCHW group is C/G contiguous runs.  The Python layer
validates everything before calling in: these functions assume non-empty,
shape-consistent arguments of one dtype, with G dividing C.
"""
from cython.parallel cimport prange
from cython cimport floating

from fastbn._cheaders cimport fastbn_kernel_isa


cdef extern from "fastbn/groupnorm.h" nogil:
    ctypedef struct fastbn_gn_strides:
        Py_ssize_t n, c, h, w
    void fastbn_gn_block_forward_f(const float* x, fastbn_gn_strides xs, float* y,
                                   fastbn_gn_strides ys, Py_ssize_t Cg, Py_ssize_t H,
                                   Py_ssize_t W, const float* gamma, const float* beta,
                                   double eps, double* mean, double* invstd, int nt)
    void fastbn_gn_block_forward_d(const double* x, fastbn_gn_strides xs, double* y,
                                   fastbn_gn_strides ys, Py_ssize_t Cg, Py_ssize_t H,
                                   Py_ssize_t W, const double* gamma, const double* beta,
                                   double eps, double* mean, double* invstd, int nt)
    void fastbn_gn_block_backward_f(const float* x, fastbn_gn_strides xs, const float* dy,
                                    fastbn_gn_strides gs, float* dx, fastbn_gn_strides ds,
                                    Py_ssize_t Cg, Py_ssize_t H, Py_ssize_t W,
                                    const float* gamma, double mu, double inv,
                                    double* pdgamma, double* pdbeta, int nt)
    void fastbn_gn_block_backward_d(const double* x, fastbn_gn_strides xs, const double* dy,
                                    fastbn_gn_strides gs, double* dx, fastbn_gn_strides ds,
                                    Py_ssize_t Cg, Py_ssize_t H, Py_ssize_t W,
                                    const double* gamma, double mu, double inv,
                                    double* pdgamma, double* pdbeta, int nt)
    int fastbn_gn_sample_forward_f(const float* x, fastbn_gn_strides xs, float* y,
                                   fastbn_gn_strides ys, Py_ssize_t C, Py_ssize_t H,
                                   Py_ssize_t W, Py_ssize_t G, const float* gamma,
                                   const float* beta, double eps, double* mean,
                                   double* invstd)
    int fastbn_gn_sample_forward_d(const double* x, fastbn_gn_strides xs, double* y,
                                   fastbn_gn_strides ys, Py_ssize_t C, Py_ssize_t H,
                                   Py_ssize_t W, Py_ssize_t G, const double* gamma,
                                   const double* beta, double eps, double* mean,
                                   double* invstd)
    int fastbn_gn_sample_backward_f(const float* x, fastbn_gn_strides xs, const float* dy,
                                    fastbn_gn_strides gs, float* dx, fastbn_gn_strides ds,
                                    Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t G,
                                    const float* gamma, const double* mean,
                                    const double* invstd, double* pdgamma, double* pdbeta)
    int fastbn_gn_sample_backward_d(const double* x, fastbn_gn_strides xs,
                                    const double* dy, fastbn_gn_strides gs, double* dx,
                                    fastbn_gn_strides ds, Py_ssize_t C, Py_ssize_t H,
                                    Py_ssize_t W, Py_ssize_t G, const double* gamma,
                                    const double* mean, const double* invstd,
                                    double* pdgamma, double* pdbeta)


def kernel_isa():
    """The instruction set this module was compiled for: 'baseline', 'avx2', ..."""
    return fastbn_kernel_isa.decode()


cdef fastbn_gn_strides _strides(Py_ssize_t* st, Py_ssize_t itemsize):
    cdef fastbn_gn_strides s
    s.n = st[0] // itemsize
    s.c = st[1] // itemsize
    s.h = st[2] // itemsize
    s.w = st[3] // itemsize
    return s


cdef inline bint _mergeable(fastbn_gn_strides s, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    """Can (H, W) be walked as one axis of H * W with a single stride?"""
    return H == 1 or W == 1 or s.h == W * s.w


cdef inline void _merge(fastbn_gn_strides* s, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    if W == 1:
        s.w = s.h
    s.h = H * W * s.w        # never stepped: the merged H is 1


cdef inline Py_ssize_t _abs(Py_ssize_t v) noexcept nogil:
    return -v if v < 0 else v


cdef inline bint _channels_inner(fastbn_gn_strides s, Py_ssize_t C, Py_ssize_t H,
                                 Py_ssize_t W) noexcept nogil:
    """True when the channels of one pixel are closer in memory than its
    neighbours along W (channels-last): sweep the channels innermost."""
    if C == 1:
        return False
    if H * W == 1:
        return True
    return _abs(s.c) < _abs(s.w) if W > 1 else _abs(s.c) < _abs(s.h)


def forward(const floating[:, :, :, :] x, const floating[::1] gamma,
            const floating[::1] beta, Py_ssize_t G, double eps,
            floating[:, :, :, :] out, double[::1] mean, double[::1] invstd, int nthreads,
            bint stream=False):
    """Group-norm forward on (N, C, H, W); fills mean and invstd (N * G, float64).

    ``stream``: write the output's contiguous runs with non-temporal stores.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t isz = sizeof(floating), Cg = C // G, b, n, g
    cdef fastbn_gn_strides xs = _strides(x.strides, isz), ys = _strides(out.strides, isz)
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* yp = &out[0, 0, 0, 0]
    cdef bint inner = _channels_inner(xs, C, H, W)
    cdef int failed = 0
    if _mergeable(xs, H, W) and _mergeable(ys, H, W):
        _merge(&xs, H, W)
        _merge(&ys, H, W)
        W = H * W
        H = 1
    with nogil:
        if inner:
            for n in prange(N, num_threads=nthreads, schedule="static"):
                if floating is float:
                    failed += fastbn_gn_sample_forward_f(
                        xp + n * xs.n, xs, yp + n * ys.n, ys, C, H, W, G, &gamma[0],
                        &beta[0], eps, &mean[n * G], &invstd[n * G]) != 0
                else:
                    failed += fastbn_gn_sample_forward_d(
                        xp + n * xs.n, xs, yp + n * ys.n, ys, C, H, W, G, &gamma[0],
                        &beta[0], eps, &mean[n * G], &invstd[n * G]) != 0
        else:
            for b in prange(N * G, num_threads=nthreads, schedule="static"):
                n = b // G
                g = b - n * G
                if floating is float:
                    fastbn_gn_block_forward_f(xp + n * xs.n + g * Cg * xs.c, xs,
                                              yp + n * ys.n + g * Cg * ys.c, ys, Cg, H, W,
                                              &gamma[g * Cg], &beta[g * Cg], eps,
                                              &mean[b], &invstd[b], stream)
                else:
                    fastbn_gn_block_forward_d(xp + n * xs.n + g * Cg * xs.c, xs,
                                              yp + n * ys.n + g * Cg * ys.c, ys, Cg, H, W,
                                              &gamma[g * Cg], &beta[g * Cg], eps,
                                              &mean[b], &invstd[b], stream)
    if failed:
        raise MemoryError("fastbn: cannot allocate group-norm work memory")


def backward(const floating[:, :, :, :] x, const floating[:, :, :, :] dout,
             const floating[::1] gamma, Py_ssize_t G, const double[::1] mean,
             const double[::1] invstd, floating[:, :, :, :] dx,
             floating[::1] dgamma, floating[::1] dbeta, double[:, ::1] work,
             int nthreads, bint stream=False):
    """Fused group-norm backward on (N, C, H, W): dx, dgamma and dbeta.

    ``work`` (2, N * C) receives the per-(sample, channel) partial sums of
    dgamma, then of dbeta, added up per channel at the end (a fixed order:
    the same bits on any thread count).  ``stream``: write dx's contiguous
    runs with non-temporal stores.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t isz = sizeof(floating), Cg = C // G, b, n, g, k
    cdef fastbn_gn_strides xs = _strides(x.strides, isz), gs = _strides(dout.strides, isz)
    cdef fastbn_gn_strides ds = _strides(dx.strides, isz)
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* gp = &dout[0, 0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0, 0]
    cdef bint inner = _channels_inner(xs, C, H, W)
    cdef int failed = 0
    cdef double t1, t2
    cdef double* part = &work[0, 0]
    cdef double* pdb = &work[1, 0]
    if _mergeable(xs, H, W) and _mergeable(gs, H, W) and _mergeable(ds, H, W):
        _merge(&xs, H, W)
        _merge(&gs, H, W)
        _merge(&ds, H, W)
        W = H * W
        H = 1
    with nogil:
        if inner:
            for n in prange(N, num_threads=nthreads, schedule="static"):
                if floating is float:
                    failed += fastbn_gn_sample_backward_f(
                        xp + n * xs.n, xs, gp + n * gs.n, gs, dp + n * ds.n, ds, C, H, W, G,
                        &gamma[0], &mean[n * G], &invstd[n * G], part + n * C,
                        pdb + n * C) != 0
                else:
                    failed += fastbn_gn_sample_backward_d(
                        xp + n * xs.n, xs, gp + n * gs.n, gs, dp + n * ds.n, ds, C, H, W, G,
                        &gamma[0], &mean[n * G], &invstd[n * G], part + n * C,
                        pdb + n * C) != 0
        else:
            for b in prange(N * G, num_threads=nthreads, schedule="static"):
                n = b // G
                g = b - n * G
                if floating is float:
                    fastbn_gn_block_backward_f(xp + n * xs.n + g * Cg * xs.c, xs,
                                               gp + n * gs.n + g * Cg * gs.c, gs,
                                               dp + n * ds.n + g * Cg * ds.c, ds, Cg, H, W,
                                               &gamma[g * Cg], mean[b], invstd[b],
                                               part + n * C + g * Cg, pdb + n * C + g * Cg, stream)
                else:
                    fastbn_gn_block_backward_d(xp + n * xs.n + g * Cg * xs.c, xs,
                                               gp + n * gs.n + g * Cg * gs.c, gs,
                                               dp + n * ds.n + g * Cg * ds.c, ds, Cg, H, W,
                                               &gamma[g * Cg], mean[b], invstd[b],
                                               part + n * C + g * Cg, pdb + n * C + g * Cg, stream)
        if not failed:
            for k in range(C):
                t1 = 0.0
                t2 = 0.0
                for n in range(N):
                    t1 = t1 + part[n * C + k]
                    t2 = t2 + pdb[n * C + k]
                dgamma[k] = <floating>t1
                dbeta[k] = <floating>t2
    if failed:
        raise MemoryError("fastbn: cannot allocate group-norm work memory")
