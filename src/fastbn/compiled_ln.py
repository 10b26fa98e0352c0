"""The compiled backend's layer normalization, on the ``_ln`` kernels.

Same signatures and results as :func:`fastbn.reference.layernorm_forward` /
:func:`fastbn.reference.layernorm_backward`, plus ``out=`` / ``dx=`` buffers.
The kernels take any strides, so inputs and buffers are passed as they are:
no copies, no transposes; fresh outputs get the input's memory order.  The
cache is lean: the input itself, gamma, and the per-row mean and inverse
standard deviation in float64.
"""
import numpy as np

from ._alloc import MIN_BYTES
from ._config import SERIAL_BELOW, threads_for
from ._dispatch import matching_build
from ._layout import PlainPolicy, empty_like_order, rows_output
from ._validation import check_cache_arrays, check_dout, check_layernorm_args, check_out

_ln = matching_build("_ln")

F64 = np.float64


class LayerNormCache:
    """State kept from a layer-norm forward pass for the backward pass.

    Attributes
    ----------
    x : ndarray, shape (N, D)
        The forward input, not a copy: modifying it in place before the
        backward pass changes the gradients, as in PyTorch.
    gamma : ndarray, shape (D,)
    mean, invstd : ndarray of float64, shape (N,)
        Per-row statistics.
    """
    __slots__ = ("x", "gamma", "mean", "invstd")

    def __init__(self, x, gamma, mean, invstd):
        self.x, self.gamma, self.mean, self.invstd = x, gamma, mean, invstd

    def __repr__(self):
        return f"<fastbn layernorm cache, x{self.x.shape} {self.x.dtype}>"


# what the one-step path of plain calls asks of this side (_plain.pxd)
_PLAIN = PlainPolicy(LayerNormCache, threads_for, rows_output, SERIAL_BELOW, MIN_BYTES)


def layernorm_forward(x, gamma, beta, ln_param, out=None):
    """Layer-normalize each row of ``x`` (N, D) over its D features.

    Parameters
    ----------
    x : array_like, shape (N, D)
        float32 or float64, any memory layout; the result has the same dtype.
    gamma, beta : ndarray, shape (D,)
        Per-feature scale and shift, same dtype as ``x``.
    ln_param : dict
        ``eps`` (default 1e-5); other keys are ignored.
    out : ndarray, optional
        Buffer for the result, same shape and dtype as ``x``, any strides;
        must not overlap ``x``, ``gamma`` or ``beta``.

    Returns
    -------
    out : ndarray, shape (N, D)
        In ``x``'s memory order (C or Fortran) unless ``out`` was given.
    cache : LayerNormCache
        For :func:`layernorm_backward`.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument; nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, (4, 100))
    >>> out, cache = fastbn.layernorm_forward(x, np.ones(100), np.zeros(100), {})
    >>> np.allclose(out.mean(axis=1), 0), np.allclose(out.std(axis=1), 1, atol=1e-4)
    (True, True)
    """
    if out is None:
        got = _ln.plain_layernorm_forward(x, gamma, beta, ln_param, _PLAIN)
        if got is not None:
            return got
    p = check_layernorm_args(x, gamma, beta, ln_param)
    x = p.x
    if out is None:
        out = empty_like_order(x, (x,))
    else:
        check_out(out, "out", x.shape, x.dtype, x, p.gamma, p.beta)
    gamma = np.ascontiguousarray(p.gamma)
    beta = np.ascontiguousarray(p.beta)
    N = x.shape[0]
    mean, invstd = np.empty(N, F64), np.empty(N, F64)
    _ln.forward(x, gamma, beta, p.eps, out, mean, invstd, threads_for(x.size))
    return out, LayerNormCache(x, gamma, mean, invstd)


def _check_cache(cache):
    if type(cache) is not LayerNormCache:
        hint = ""
        if isinstance(cache, dict) and "kind" in cache:
            hint = " (this looks like a cache from the NumPy reference backend)"
        raise TypeError(f"cache must be the cache returned by fastbn's compiled "
                        f"layernorm_forward, got {type(cache).__name__}{hint}")
    _check_cache_contents(cache)
    return cache


def _check_cache_contents(c):
    """The kernel indexes gamma by feature and mean/invstd by row, unchecked."""
    check_cache_arrays(c.x, 2, c.gamma, (c.mean, c.invstd), stats_axis=0)


def layernorm_backward(dout, cache, dx=None):
    """Gradients of :func:`layernorm_forward`, fused in two passes per row.

    Parameters
    ----------
    dout : ndarray, shape (N, D)
        Upstream gradient, same dtype as the forward input, any layout.
    cache : LayerNormCache
        From :func:`layernorm_forward`.
    dx : ndarray, optional
        Buffer for the input gradient, any strides; must not overlap ``x``,
        ``dout`` or gamma.

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
    >>> x = np.random.default_rng(0).standard_normal((4, 100))
    >>> out, cache = fastbn.layernorm_forward(x, np.ones(100), np.zeros(100), {"eps": 1e-5})
    >>> dx, dgamma, dbeta = fastbn.layernorm_backward(np.ones_like(out), cache)
    >>> dx.shape, dgamma.shape, np.allclose(dx, 0)
    ((4, 100), (100,), True)
    """
    if dx is None:
        got = _ln.plain_layernorm_backward(dout, cache, _PLAIN)
        if got is not None:
            return got
    c = _check_cache(cache)
    x = c.x
    dout = check_dout(dout, x)
    if dx is None:
        dx = empty_like_order(x, (x, dout))
    else:
        check_out(dx, "dx", x.shape, x.dtype, x, dout, c.gamma)
    D = x.shape[1]
    dgamma, dbeta = np.empty(D, x.dtype), np.empty(D, x.dtype)
    _ln.backward(x, dout, c.gamma, c.mean, c.invstd, dx, dgamma, dbeta,
                 threads_for(x.size))
    return dx, dgamma, dbeta
