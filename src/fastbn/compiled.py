"""The compiled backend: the classic batch-norm API on the Cython kernels.

Same signatures and results as :mod:`fastbn.reference`, plus ``out=`` /
``dx=`` buffers.  The cache is lean: the input itself (not a copy), the
per-feature mean and inverse standard deviation in float64, gamma and the
mode.  Arrays are handed to the kernels as strided views, never transposed
copies: an ``(N, D)`` C-ordered array and a channels-last 4-D array go to the
row kernels, NCHW and Fortran-ordered arrays to the channel kernels.
"""
import math

import numpy as np

from ._config import SERIAL_BELOW, threads_for
from ._dispatch import KERNEL_ISA, matching_build  # noqa: F401 (KERNEL_ISA re-exported)
from ._alloc import MIN_BYTES
from ._layout import PlainPolicy, kernel_view, output, rows_output, uses_rows
from ._validation import (check_batchnorm_args, check_cache_arrays, check_dout,
                          store_running, warn_batch_of_one)
# layer normalization lives in its own module; re-exported so this module
# stays the whole compiled backend
from .compiled_ln import LayerNormCache, layernorm_backward, layernorm_forward  # noqa: F401
from .compiled_gn import (GroupNormCache, spatial_groupnorm_backward,  # noqa: F401
                          spatial_groupnorm_forward)

F64 = np.float64

# the kernel module every call below goes through (a module attribute, so
# tests can patch it)
_bn = matching_build("_bn")


class BatchNormCache:
    """State kept from a forward pass for the backward pass.

    Attributes
    ----------
    x : ndarray
        The forward input, not a copy: modifying it in place before the
        backward pass changes the gradients, as in PyTorch.
    gamma : ndarray, shape (D,)
    mean, invstd : ndarray of float64, shape (D,)
        Batch statistics (train mode) or running statistics (test mode).
    train : bool
    spatial : bool
        True for a cache of :func:`spatial_batchnorm_forward`.
    """
    __slots__ = ("x", "gamma", "mean", "invstd", "train", "spatial")

    def __init__(self, x, gamma, mean, invstd, train, spatial):
        self.x, self.gamma, self.mean, self.invstd = x, gamma, mean, invstd
        self.train, self.spatial = train, spatial

    def __repr__(self):
        kind = "spatial_batchnorm" if self.spatial else "batchnorm"
        mode = "train" if self.train else "test"
        return f"<fastbn {kind} cache, mode={mode!r}, x{self.x.shape} {self.x.dtype}>"


# what the one-step path of plain (N, D) calls asks of this side (_plain.pxd)
_PLAIN = PlainPolicy(BatchNormCache, threads_for, rows_output, SERIAL_BELOW, MIN_BYTES)


# -- features with non-finite parameters ------------------------------------
# The kernels fold each feature's parameters into a few coefficients
# (``(x - m) * scale + offset`` with a rounding correction folded into the
# offset), which turns an infinite gamma, running mean or 1/sqrt(var + eps)
# into NaN where the textbook expressions give +-inf or a finite value.  Such
# features (rare: the check is one reduction per parameter) are recomputed
# elementwise with the expressions that define the result in
# :mod:`fastbn.reference` ("Non-finite parameters" there).

def _nonfinite(a, b):
    """Indices of the features where ``a`` or ``b`` is not finite, or None.

    One dot product decides the common case: a non-finite term makes the
    sum non-finite (a finite overflow only sends it to the elementwise check).
    """
    if math.isfinite(a.dot(b)):     # (a dot product raises no FP warnings)
        return None
    bad = np.flatnonzero(~(np.isfinite(a) & np.isfinite(b)))
    return bad if bad.size else None


def _per_feature(v, J, ndim):
    """``v[J]`` shaped to broadcast along axis 1 of an ndim-D array."""
    return v[J].reshape((1, len(J)) + (1,) * (ndim - 2))


def _textbook_forward(target, x, J, mean, std, gamma, beta):
    """``target[:, J] = gamma * ((x - mean) / std) + beta`` elementwise, in x's dtype."""
    n = x.ndim
    with np.errstate(all="ignore"):
        x_centered = (x[:, J] - _per_feature(mean, J, n)).astype(x.dtype, copy=False)
        x_hat = x_centered / _per_feature(std, J, n)
        target[:, J] = _per_feature(gamma, J, n) * x_hat + _per_feature(beta, J, n)


def _textbook_test_backward(dx, dgamma, x, dout, J, gamma, mean, invstd):
    """Test mode: ``dx = dout * gamma / std`` and ``dgamma = sum(dout * x_hat)`` for J."""
    n = x.ndim
    axes = (0,) + tuple(range(2, n))
    with np.errstate(all="ignore"):
        std = (1.0 / invstd).astype(x.dtype)
        dx[:, J] = dout[:, J] * _per_feature(gamma, J, n) / _per_feature(std, J, n)
        x_hat = ((x[:, J] - _per_feature(mean, J, n)).astype(x.dtype, copy=False)
                 / _per_feature(std, J, n))
        dgamma[J] = (dout[:, J] * x_hat).sum(axis=axes)


# -- forward ---------------------------------------------------------------

def _forward(p, bn_param, out, spatial):
    x = p.x
    D = x.shape[1]
    rows = uses_rows(x, spatial)
    # out must not overlap anything the kernel reads, running statistics included.
    running = [a for a in (p.running_mean, p.running_var) if a is not None]
    # A mapping other than a dict may refuse the running statistics: out= is
    # then written only after it has taken both (store_running).
    result, out_view, staged, stream = output(x, out, "out", rows, spatial, x, p.gamma,
                                              p.beta, *running,
                                              stage=type(bn_param) is not dict)
    x_view = kernel_view(x, rows, spatial)
    gamma = np.ascontiguousarray(p.gamma)
    beta = np.ascontiguousarray(p.beta)
    nthreads = threads_for(x.size)
    running_mean = p.running_mean if p.running_mean is not None else np.zeros(D, x.dtype)
    running_var = p.running_var if p.running_var is not None else np.zeros(D, x.dtype)

    if p.mode == "train":
        # the kernel also does the running-statistics update: on a small
        # batch a dozen small NumPy calls would cost more than the kernel
        stats = np.empty((3, D), F64)
        new_running = np.empty((2, D), x.dtype)
        kernel = _bn.rows_forward_train if rows else _bn.chans_forward_train
        kernel(x_view, gamma, beta, p.eps, out_view, stats,
               np.ascontiguousarray(running_mean), np.ascontiguousarray(running_var),
               p.momentum, new_running, nthreads, stream)
        mean, var, invstd = stats[0], stats[1], stats[2]
        bad = _nonfinite(gamma, beta)
        if p.eps == 0.0:    # a constant feature has 1/sqrt(var + eps) = inf
            bad_std = _nonfinite(invstd, invstd)
            if bad_std is not None:
                bad = bad_std if bad is None else np.union1d(bad, bad_std)
        if bad is not None:
            with np.errstate(all="ignore"):
                std = np.sqrt(var + p.eps).astype(x.dtype, copy=False)
            _textbook_forward(result if staged is None else staged, x, bad, mean, std,
                              gamma, beta)
        running_mean, running_var = new_running[0], new_running[1]
    else:
        mean = running_mean.astype(F64)
        with np.errstate(divide="ignore"):
            invstd = 1.0 / np.sqrt(running_var.astype(F64) + p.eps)
        alpha = gamma * invstd
        beta64 = beta.astype(F64)
        kernel = _bn.rows_normalize if rows else _bn.chans_normalize
        kernel(x_view, mean, alpha, beta64, out_view, nthreads, stream)
        bad = _nonfinite(alpha * mean, beta64)
        if bad is not None:
            with np.errstate(all="ignore"):
                std = np.sqrt(running_var + p.eps).astype(x.dtype, copy=False)
            _textbook_forward(result if staged is None else staged, x, bad, running_mean,
                              std, gamma, beta)

    store_running(bn_param, running_mean, running_var)
    if staged is not None:
        np.copyto(result, staged)
    return result, BatchNormCache(x, gamma, mean, invstd, p.mode == "train", spatial)


def batchnorm_forward(x, gamma, beta, bn_param, out=None):
    """Batch-normalize ``x`` of shape (N, D) over the batch axis.

    Parameters
    ----------
    x : array_like, shape (N, D)
        float32 or float64; the result has the same dtype.
    gamma, beta : ndarray, shape (D,)
        Scale and shift, same dtype as ``x``.
    bn_param : dict
        ``mode`` ('train' or 'test', required), ``eps`` (1e-5), ``momentum``
        (0.9), ``running_mean`` and ``running_var`` (zeros when absent).
        The updated running statistics are stored back as new arrays.
    out : ndarray, optional
        Buffer for the result, same shape and dtype as ``x``; must not
        overlap ``x`` (the cache keeps it), ``gamma``, ``beta`` or the
        running statistics: ``out=x`` is a ValueError.

    Returns
    -------
    out : ndarray, shape (N, D)
    cache : BatchNormCache
        For :func:`batchnorm_backward`.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument; nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (64, 3)).astype(np.float32)
    >>> gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    >>> bn_param = {"mode": "train"}
    >>> out, cache = fastbn.batchnorm_forward(x, gamma, beta, bn_param)
    >>> out.dtype, out.shape
    (dtype('float32'), (64, 3))
    >>> np.allclose(out.mean(axis=0), 0, atol=1e-6), np.allclose(out.std(axis=0), 1, atol=1e-3)
    (True, True)
    >>> sorted(bn_param)                     # running statistics created and updated
    ['mode', 'running_mean', 'running_var']
    >>> bn_param["mode"] = "test"            # now normalize with the running statistics
    >>> out_test, _ = fastbn.batchnorm_forward(x, gamma, beta, bn_param)
    """
    if out is None:
        got = _bn.plain_batchnorm_forward(x, gamma, beta, bn_param, _PLAIN)
        if got is not None:
            return got
    p = check_batchnorm_args(x, gamma, beta, bn_param, ndim=2)
    warn_batch_of_one(p)
    return _forward(p, bn_param, out, spatial=False)


def spatial_batchnorm_forward(x, gamma, beta, bn_param, out=None):
    """Batch-normalize ``x`` of shape (N, C, H, W) per channel over N, H, W.

    Parameters and returns as for :func:`batchnorm_forward`, with
    ``gamma``/``beta`` of shape (C,).  Works on the array's own layout
    (NCHW, channels-last or strided) without transposing copies.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        float32 or float64, any memory layout; the result has the same dtype.
    gamma, beta : ndarray, shape (C,)
        Per-channel scale and shift, same dtype as ``x``.
    bn_param : dict
        As for :func:`batchnorm_forward`; the running statistics have shape (C,).
    out : ndarray, optional
        Buffer for the result, same shape and dtype as ``x``; must not
        overlap ``x``, ``gamma``, ``beta`` or the running statistics.

    Returns
    -------
    out : ndarray, shape (N, C, H, W)
        In ``x``'s memory layout unless ``out`` was given.
    cache : BatchNormCache
        For :func:`spatial_batchnorm_backward`.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument; nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).standard_normal((8, 4, 5, 5)).astype(np.float32)
    >>> x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    >>> g, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    >>> out, _ = fastbn.spatial_batchnorm_forward(x, g, b, {"mode": "train"})
    >>> out_nhwc, _ = fastbn.spatial_batchnorm_forward(x_nhwc, g, b, {"mode": "train"})
    >>> np.allclose(out, out_nhwc, atol=1e-6), out_nhwc.strides == x_nhwc.strides
    (True, True)
    """
    p = check_batchnorm_args(x, gamma, beta, bn_param, ndim=4)
    warn_batch_of_one(p)
    return _forward(p, bn_param, out, spatial=True)


# -- backward --------------------------------------------------------------

def _check_cache(cache, spatial):
    if type(cache) is not BatchNormCache or cache.spatial != spatial:
        want = "spatial_batchnorm_forward" if spatial else "batchnorm_forward"
        hint = ""
        if isinstance(cache, dict) and "kind" in cache:
            hint = " (this looks like a cache from the NumPy reference backend)"
        elif type(cache) is BatchNormCache:
            hint = " (a cache from the other of batchnorm/spatial_batchnorm)"
        raise TypeError(f"cache must be the cache returned by fastbn's compiled "
                        f"{want}, got {type(cache).__name__}{hint}")
    _check_cache_contents(cache, 4 if spatial else 2)
    return cache


def _check_cache_contents(c, ndim):
    check_cache_arrays(c.x, ndim, c.gamma, (c.mean, c.invstd), stats_axis=1)
    if type(c.train) is not bool:
        raise ValueError(f"cache is inconsistent: train must be a bool, got {c.train!r}")


def _backward(dout, cache, dx, spatial):
    if dx is None and not spatial:
        got = _bn.plain_batchnorm_backward(dout, cache, _PLAIN)
        if got is not None:
            return got
    c = _check_cache(cache, spatial)
    x = c.x
    dout = check_dout(dout, x)
    D = x.shape[1]
    rows = uses_rows(x, spatial)
    result, dx_view, staged, stream = output(x, dx, "dx", rows, spatial, x, dout, c.gamma)
    dgamma, dbeta = np.empty(D, x.dtype), np.empty(D, x.dtype)
    kernel = _bn.rows_backward if rows else _bn.chans_backward
    kernel(kernel_view(x, rows, spatial), kernel_view(dout, rows, spatial), c.gamma, c.mean,
           c.invstd, c.train, dx_view, dgamma, dbeta, threads_for(x.size), stream)
    if not c.train:
        bad = _nonfinite(c.gamma * c.invstd, c.mean)
        if bad is not None:
            _textbook_test_backward(result if staged is None else staged, dgamma, x, dout,
                                    bad, c.gamma, c.mean, c.invstd)
    if staged is not None:
        np.copyto(result, staged)
    return result, dgamma, dbeta


def batchnorm_backward(dout, cache, dx=None):
    """Gradients of :func:`batchnorm_forward`, fused in two passes.

    Parameters
    ----------
    dout : ndarray, shape (N, D)
        Upstream gradient, same dtype as the forward input.
    cache : BatchNormCache
        From :func:`batchnorm_forward`.
    dx : ndarray, optional
        Buffer for the input gradient; must not overlap ``x``, ``dout`` or
        ``gamma``.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)

    Raises
    ------
    TypeError, ValueError
        For a ``dout`` whose shape or dtype does not match the forward input,
        a cache that is not this backend's cache of the matching forward
        function, or a cache whose arrays were changed after the forward pass;
        nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).standard_normal((64, 3))
    >>> out, cache = fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> dx, dgamma, dbeta = fastbn.batchnorm_backward(np.ones_like(out), cache)
    >>> dx.shape, dgamma.shape, dbeta
    ((64, 3), (3,), array([64., 64., 64.]))
    >>> np.allclose(dx, 0)                   # a constant upstream gradient cancels out
    True
    """
    return _backward(dout, cache, dx, spatial=False)


def batchnorm_backward_alt(dout, cache, dx=None):
    """Same as :func:`batchnorm_backward`: the kernel is the closed form.

    Kept as its own name so code written against the classic API runs
    unchanged.

    Parameters
    ----------
    dout : ndarray, shape (N, D)
        Upstream gradient, same dtype as the forward input.
    cache : BatchNormCache
        From :func:`batchnorm_forward`.
    dx : ndarray, optional
        Buffer for the input gradient; must not overlap ``x``, ``dout`` or
        ``gamma``.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)

    Raises
    ------
    TypeError, ValueError
        For a ``dout`` whose shape or dtype does not match the forward input,
        a cache that is not this backend's cache of the matching forward
        function, or a cache whose arrays were changed after the forward pass;
        nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> rng = np.random.default_rng(0)
    >>> x, dout = rng.standard_normal((64, 3)), rng.standard_normal((64, 3))
    >>> out, cache = fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> a = fastbn.batchnorm_backward(dout, cache)
    >>> b = fastbn.batchnorm_backward_alt(dout, cache)
    >>> all(np.array_equal(u, v) for u, v in zip(a, b))
    True
    """
    return _backward(dout, cache, dx, spatial=False)


def spatial_batchnorm_backward(dout, cache, dx=None):
    """Gradients of :func:`spatial_batchnorm_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H, W)
        Upstream gradient, same dtype as the forward input, any layout.
    cache : BatchNormCache
        From :func:`spatial_batchnorm_forward`.
    dx : ndarray, optional
        Buffer for the input gradient; must not overlap ``x``, ``dout`` or
        ``gamma``.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dgamma, dbeta : ndarray, shape (C,)

    Raises
    ------
    TypeError, ValueError
        For a ``dout`` whose shape or dtype does not match the forward input,
        a cache that is not this backend's cache of the matching forward
        function, or a cache whose arrays were changed after the forward pass;
        nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).standard_normal((8, 4, 5, 5))
    >>> out, cache = fastbn.spatial_batchnorm_forward(x, np.ones(4), np.zeros(4),
    ...                                               {"mode": "train"})
    >>> dx, dgamma, dbeta = fastbn.spatial_batchnorm_backward(np.ones_like(out), cache)
    >>> dx.shape, dbeta
    ((8, 4, 5, 5), array([200., 200., 200., 200.]))
    """
    return _backward(dout, cache, dx, spatial=True)
