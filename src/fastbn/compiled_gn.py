"""The compiled backend's group normalization, on the ``_gn`` kernels.

Same signatures and results as
:func:`fastbn.reference.spatial_groupnorm_forward` /
:func:`fastbn.reference.spatial_groupnorm_backward`, plus ``out=`` / ``dx=``
buffers.  The kernels take any strides, so inputs and buffers are passed as
they are (NCHW, channels-last and other views alike): no copies, no
transposes; fresh outputs get the input's memory order.  The cache is lean:
the input itself, gamma, and the per-(sample, group) mean and inverse
standard deviation in float64.
"""
import numpy as np

from ._alloc import empty
from ._config import threads_for
from ._dispatch import matching_build
from ._layout import empty_like_order_reused, group_stream_stores
from ._validation import check_cache_arrays, check_dout, check_groupnorm_args, check_out

_gn = matching_build("_gn")

F64 = np.float64


class GroupNormCache:
    """State kept from a group-norm forward pass for the backward pass.

    Attributes
    ----------
    x : ndarray, shape (N, C, H, W)
        The forward input, not a copy: modifying it in place before the
        backward pass changes the gradients, as in PyTorch.
    gamma : ndarray, shape (C,)
    G : int
        Number of groups.
    mean, invstd : ndarray of float64, shape (N * G,)
        Per-(sample, group) statistics, sample-major.
    param_shape : tuple
        The forward's gamma shape, ``(1, C, 1, 1)`` or ``(C,)``: the shape
        of dgamma and dbeta.
    """
    __slots__ = ("x", "gamma", "G", "mean", "invstd", "param_shape")

    def __init__(self, x, gamma, G, mean, invstd, param_shape):
        self.x, self.gamma, self.G = x, gamma, G
        self.mean, self.invstd, self.param_shape = mean, invstd, param_shape

    def __repr__(self):
        return f"<fastbn groupnorm cache, G={self.G}, x{self.x.shape} {self.x.dtype}>"


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param, out=None):
    """Group-normalize ``x`` (N, C, H, W): statistics per (sample, group of C/G channels).

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        float32 or float64, any memory layout; the result has the same dtype.
    gamma, beta : ndarray, shape (1, C, 1, 1) or (C,)
        Per-channel scale and shift, same dtype as ``x``.
    G : int
        Number of groups, dividing C; group g holds channels
        ``g * C // G`` to ``(g + 1) * C // G - 1``.  G = 1 is layer norm
        over (C, H, W), G = C instance norm.
    gn_param : dict
        ``eps`` (default 1e-5); other keys are ignored.
    out : ndarray, optional
        Buffer for the result, same shape and dtype as ``x``, any strides;
        must not overlap ``x``, ``gamma`` or ``beta``.

    Returns
    -------
    out : ndarray, shape (N, C, H, W)
        In ``x``'s memory order (NCHW or channels-last) unless ``out`` was given.
    cache : GroupNormCache
        For :func:`spatial_groupnorm_backward`.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument; nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).normal(2.0, 3.0, (2, 6, 4, 4)).astype(np.float32)
    >>> gamma, beta = np.ones((1, 6, 1, 1), np.float32), np.zeros((1, 6, 1, 1), np.float32)
    >>> out, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, 3, {"eps": 1e-5})
    >>> groups = out.reshape(2, 3, -1)          # (sample, group, values of the group)
    >>> np.allclose(groups.mean(axis=2), 0, atol=1e-6)
    True
    >>> np.allclose(groups.std(axis=2), 1, atol=1e-3)
    True
    """
    p = check_groupnorm_args(x, gamma, beta, G, gn_param)
    x = p.x
    if out is None:
        out, warm = empty_like_order_reused(x, (x,))
    else:
        check_out(out, "out", x.shape, x.dtype, x, p.gamma, p.beta)
        warm = True
    gamma = np.ascontiguousarray(p.gamma)
    beta = np.ascontiguousarray(p.beta)
    NG = x.shape[0] * p.G
    mean, invstd = np.empty(NG, F64), np.empty(NG, F64)
    _gn.forward(x, gamma, beta, p.G, p.eps, out, mean, invstd, threads_for(x.size),
                group_stream_stores(out, warm))
    return out, GroupNormCache(x, gamma, p.G, mean, invstd, p.param_shape)


def _check_cache(cache):
    if type(cache) is not GroupNormCache:
        hint = ""
        if isinstance(cache, dict) and "kind" in cache:
            hint = " (this looks like a cache from the NumPy reference backend)"
        raise TypeError(f"cache must be the cache returned by fastbn's compiled "
                        f"spatial_groupnorm_forward, got {type(cache).__name__}{hint}")
    _check_cache_contents(cache)
    return cache


def _check_cache_contents(c):
    """The kernel indexes gamma by channel and mean/invstd by (sample, group),
    unchecked; a cache's attributes are writable and ``c.x`` is the caller's
    array, so make sure they still agree before a kernel reads them."""
    x = c.x
    G = c.G
    ok = (type(x) is np.ndarray and x.ndim == 4 and type(G) is int and G > 0
          and x.shape[1] % G == 0 and c.param_shape in ((x.shape[1],), (1, x.shape[1], 1, 1)))
    if not ok:
        raise ValueError("cache is inconsistent (its arrays were modified or the forward "
                         "input was reshaped in place after the forward pass); run the "
                         "forward pass again")
    check_cache_arrays(x, 4, c.gamma, (c.mean, c.invstd), stats_len=x.shape[0] * G)


def spatial_groupnorm_backward(dout, cache, dx=None):
    """Gradients of :func:`spatial_groupnorm_forward`, fused in two passes per group.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H, W)
        Upstream gradient, same dtype as the forward input, any layout.
    cache : GroupNormCache
        From :func:`spatial_groupnorm_forward`.
    dx : ndarray, optional
        Buffer for the input gradient, any strides; must not overlap ``x``,
        ``dout`` or gamma.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dgamma, dbeta : ndarray, the shape of the forward's gamma
        ``(1, C, 1, 1)`` or ``(C,)``.

    Raises
    ------
    TypeError, ValueError
        For a ``dout`` whose shape or dtype does not match the forward input,
        a cache that is not this backend's group-norm cache, or a cache whose
        arrays were changed after the forward pass; nothing the caller owns
        is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 4, 4))
    >>> gamma, beta = np.ones((1, 6, 1, 1)), np.zeros((1, 6, 1, 1))
    >>> out, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, 3, {})
    >>> dx, dgamma, dbeta = fastbn.spatial_groupnorm_backward(np.ones_like(out), cache)
    >>> dx.shape, dgamma.shape, np.allclose(dx, 0)
    ((2, 6, 4, 4), (1, 6, 1, 1), True)
    """
    c = _check_cache(cache)
    x = c.x
    dout = check_dout(dout, x)
    if dx is None:
        dx, warm = empty_like_order_reused(x, (x, dout))
    else:
        check_out(dx, "dx", x.shape, x.dtype, x, dout, c.gamma)
        warm = True
    N, C = x.shape[:2]
    dgamma, dbeta = np.empty(C, x.dtype), np.empty(C, x.dtype)
    # from the buffer cache: for large N * C a fresh block would be new,
    # zero-filled pages on every call
    work = empty((2, N * C), F64)
    _gn.backward(x, dout, c.gamma, c.G, c.mean, c.invstd, dx, dgamma, dbeta, work,
                 threads_for(x.size), group_stream_stores(dx, warm))
    return dx, dgamma.reshape(c.param_shape), dbeta.reshape(c.param_shape)
