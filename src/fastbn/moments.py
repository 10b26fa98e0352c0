"""Batch norm's reductions and apply-steps as separate, composable pieces.

A train-mode batch-norm forward is *reduce* (per-feature moments of the
batch) then *apply* (an affine map per feature); its backward is *reduce*
(``sum(dout)`` and ``sum(dout * (x - mean))`` per feature) then *apply*
(``dx = a*dout + b*x + c``).  The fused single-process kernels
(:mod:`fastbn.compiled`) run both halves in one call.  When a batch is split
over processes or arrives in chunks, the reductions of the parts must be
combined before applying; this module exposes the pieces for that:

>>> m = merge_moments(partial_moments(x_part1), partial_moments(x_part2))
>>> mean, var, invstd = finish_moments(m, eps=1e-5)
>>> out = apply_affine(x_part1, mean, invstd, gamma, beta)

All pieces run the same compiled inner loops as the fused kernels
(``_kernels.pxd``, in the same AVX2 or baseline build): reductions accumulate
in float64, apply-steps compute in x's precision with coefficients derived in
float64 (split-mean centring, as the fused output passes).  They accept any
strides, the ``(N, D)`` layout or, with ``spatial=True``, ``(N, C, H, W)``.
Unlike the classic API they accept an empty batch (``N == 0``), which
contributes nothing: a process may hold no samples of a distributed batch.
"""
from typing import NamedTuple

import numpy as np

from ._config import threads_for
from ._dispatch import matching_build
from ._layout import kernel_view, output, uses_rows
from ._validation import as_float_array, check_dout

_bn = matching_build("_bn")
_moments = matching_build("_moments")

F64 = np.float64


class Moments(NamedTuple):
    """Per-feature partial moments of (part of) a batch.

    Attributes
    ----------
    count : float
        Number of values behind each feature's statistics (``N`` or
        ``N*H*W``); a float so that counts of any size merge exactly up to
        2**53.
    mean : ndarray of float64, shape (D,)
    m2 : ndarray of float64, shape (D,)
        Sum of squared deviations from ``mean``; the biased variance is
        ``m2 / count``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.moments import Moments, finish_moments
    >>> m = Moments(count=4.0, mean=np.array([1.0]), m2=np.array([8.0]))
    >>> finish_moments(m, eps=0.0)[1]           # biased variance m2 / count
    array([2.])
    """
    count: float
    mean: np.ndarray
    m2: np.ndarray


def check_batch(x, spatial, name="x"):
    """A float array of shape (N, D) or (N, C, H, W); N may be 0, the rest not."""
    x = as_float_array(x, name)
    ndim = 4 if spatial else 2
    if x.ndim != ndim:
        layout = "(N, C, H, W)" if spatial else "(N, D)"
        raise ValueError(f"{name} must be a {ndim}-D array of shape {layout}, "
                         f"got a {x.ndim}-D array of shape {x.shape}")
    if 0 in x.shape[1:]:
        raise ValueError(f"{name} must have at least one feature and (for 4-D) a "
                         f"non-empty H and W, got shape {x.shape}")
    return x


def _count(x, spatial):
    return float(x.shape[0] * (x.shape[2] * x.shape[3] if spatial else 1))


def _f64_vector(v, name, size):
    v = np.ascontiguousarray(v, dtype=F64)
    if v.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {v.shape}")
    return v


def partial_moments(x, spatial=False):
    """Count, mean and M2 per feature of ``x``, in one pass.

    Parameters
    ----------
    x : array_like, shape (N, D), or (N, C, H, W) with ``spatial=True``
        float32 or float64; ``N`` may be 0.
    spatial : bool
        Statistics per channel over N, H and W.

    Returns
    -------
    Moments
        ``(count, mean, m2)`` with float64 ``mean`` and ``m2``; all zero for
        an empty batch.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Notes
    -----
    float64 sums of ``x - c`` and ``(x - c)**2`` with ``c`` the feature's
    first value, then ``mean = c + S1/n`` and ``M2 = S2 - S1**2/n``: the
    shift keeps the subtraction benign for data far from zero.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.moments import partial_moments
    >>> m = partial_moments(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> m.count, m.mean, m.m2
    (2.0, array([ 2., 20.]), array([  2., 200.]))
    """
    x = check_batch(x, spatial)
    D = x.shape[1]
    mean, m2 = np.zeros(D, F64), np.zeros(D, F64)
    if x.size:
        rows = uses_rows(x, spatial)
        kernel = _moments.rows_moments if rows else _moments.chans_moments
        kernel(kernel_view(x, rows, spatial), mean, m2, threads_for(x.size))
    return Moments(_count(x, spatial), mean, m2)


def merge_moments(a, b):
    """Combine the moments of two disjoint parts of a batch (Chan et al., 1979).

    Parameters
    ----------
    a, b : Moments
        Same number of features.

    Returns
    -------
    Moments
        The moments of the union.  ``M2 = M2a + M2b + delta**2 * na*nb/n``
        adds non-negative terms only, so the merge is stable however far the
        parts' means are from zero or from each other.  Symmetric to the
        bit: ``merge_moments(a, b) == merge_moments(b, a)``.

    Raises
    ------
    TypeError, ValueError
        When the parts' ``mean`` or ``m2`` are not float vectors of the same
        length.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.moments import merge_moments, partial_moments
    >>> x = np.random.default_rng(0).normal(1e4, 1.0, (100, 3))
    >>> whole = partial_moments(x)
    >>> merged = merge_moments(partial_moments(x[:30]), partial_moments(x[30:]))
    >>> merged.count, np.allclose(merged.mean, whole.mean), np.allclose(merged.m2, whole.m2)
    (100.0, True, True)
    """
    D = np.size(a.mean)
    packed_a = pack_moments(Moments(a.count, _f64_vector(a.mean, "a.mean", D),
                                    _f64_vector(a.m2, "a.m2", D)))
    packed_b = pack_moments(Moments(b.count, _f64_vector(b.mean, "b.mean", D),
                                    _f64_vector(b.m2, "b.m2", D)))
    _moments.merge_packed(packed_a, packed_b)
    return unpack_moments(packed_b)


def pack_moments(m, out=None):
    """``[count, mean(D), m2(D)]`` as one float64 buffer of ``2*D + 1`` numbers.

    Parameters
    ----------
    m : Moments
        The moments of D features.
    out : ndarray of float64, shape (2*D + 1,), optional
        Buffer to fill.

    Returns
    -------
    ndarray of float64, shape (2*D + 1,)
        ``out`` if given.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.moments import Moments, pack_moments, unpack_moments
    >>> buf = pack_moments(Moments(2.0, np.array([2.0, 20.0]), np.array([2.0, 200.0])))
    >>> buf
    array([  2.,   2.,  20.,   2., 200.])
    >>> unpack_moments(buf).mean
    array([ 2., 20.])
    """
    D = len(m.mean)
    buf = np.empty(2 * D + 1, F64) if out is None else out
    buf[0] = m.count
    buf[1:D + 1] = m.mean
    buf[D + 1:] = m.m2
    return buf


def unpack_moments(buf):
    """Inverse of :func:`pack_moments` (copies).

    Parameters
    ----------
    buf : ndarray of float64, shape (2*D + 1,)
        As written by :func:`pack_moments`.

    Returns
    -------
    Moments
        ``count`` as a float, ``mean`` and ``m2`` as new arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.moments import unpack_moments
    >>> unpack_moments(np.array([2.0, 2.0, 20.0, 2.0, 200.0]))
    Moments(count=2.0, mean=array([ 2., 20.]), m2=array([  2., 200.]))
    """
    D = (len(buf) - 1) // 2
    return Moments(float(buf[0]), np.array(buf[1:D + 1]), np.array(buf[D + 1:]))


def finish_moments(m, eps):
    """Mean, biased variance and ``1/sqrt(var + eps)`` from merged moments.

    Parameters
    ----------
    m : Moments
        Moments of the whole batch (merged over its parts).
    eps : float
        Added to the variance before the square root.

    Returns
    -------
    mean, var, invstd : ndarray of float64, shape (D,)
        ``var`` is the biased variance ``m2 / count``.

    Raises
    ------
    ValueError
        When ``m.count`` is 0: an empty batch has no statistics.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.moments import finish_moments, partial_moments
    >>> mean, var, invstd = finish_moments(partial_moments(np.array([[1.0], [3.0]])), 0.0)
    >>> mean, var, invstd
    (array([2.]), array([1.]), array([1.]))
    """
    if not m.count > 0:
        raise ValueError("the batch is empty (count 0): batch norm needs at least "
                         "one sample to compute statistics")
    mean = np.asarray(m.mean, F64)
    var = np.asarray(m.m2, F64) / m.count
    return mean, var, 1.0 / np.sqrt(var + eps)


def apply_affine(x, mean, invstd, gamma, beta, spatial=False, out=None):
    """``out = (x - mean) * (gamma * invstd) + beta`` with given statistics.

    Centred like the fused forward, so data far from zero lose nothing to
    cancellation.

    Parameters
    ----------
    x : array_like, shape (N, D) or (N, C, H, W)
    mean, invstd : array_like, shape (D,)
        Statistics (computed in float64, e.g. from :func:`finish_moments`).
    gamma, beta : array_like, shape (D,)
    spatial : bool
    out : ndarray, optional
        Buffer of x's shape and dtype, not overlapping x.

    Returns
    -------
    out : ndarray, x's shape and dtype

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> from fastbn.moments import apply_affine, finish_moments, partial_moments
    >>> x = np.random.default_rng(0).standard_normal((64, 3))
    >>> g, b = np.ones(3), np.zeros(3)
    >>> mean, var, invstd = finish_moments(partial_moments(x), 1e-5)
    >>> fused, _ = fastbn.batchnorm_forward(x, g, b, {"mode": "train"})
    >>> np.allclose(apply_affine(x, mean, invstd, g, b), fused)
    True
    """
    x = check_batch(x, spatial)
    D = x.shape[1]
    mean, invstd = _f64_vector(mean, "mean", D), _f64_vector(invstd, "invstd", D)
    alpha = _f64_vector(gamma, "gamma", D) * invstd
    beta = _f64_vector(beta, "beta", D)
    rows = uses_rows(x, spatial)
    result, out_view, staged, stream = output(x, out, "out", rows, spatial, x)
    if x.size:
        # the fused module's test-mode kernels are exactly this step
        kernel = _bn.rows_normalize if rows else _bn.chans_normalize
        kernel(kernel_view(x, rows, spatial), mean, alpha, beta, out_view,
               threads_for(x.size), stream)
    if staged is not None:
        np.copyto(result, staged)
    return result


def grad_sums(dout, x, mean, spatial=False):
    """Backward's per-feature partial sums: ``sum(dout)``, ``sum(dout * (x - mean))``.

    Parameters
    ----------
    dout, x : array_like, same shape and dtype
    mean : array_like, shape (D,)
        The mean used in the forward pass (the global one, if distributed).
    spatial : bool

    Returns
    -------
    sum_dout, sum_dout_xmu : ndarray of float64, shape (D,)
        Zero for an empty batch.  Sums over parts add.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.moments import grad_sums
    >>> x = np.array([[1.0], [3.0]])
    >>> grad_sums(np.array([[1.0], [2.0]]), x, mean=np.array([2.0]))
    (array([3.]), array([1.]))
    """
    x = check_batch(x, spatial)
    dout = check_dout(dout, x)
    D = x.shape[1]
    mean = _f64_vector(mean, "mean", D)
    sdy, sdyx = np.zeros(D, F64), np.zeros(D, F64)
    if x.size:
        rows = uses_rows(x, spatial)
        kernel = _moments.rows_grad_sums if rows else _moments.chans_grad_sums
        kernel(kernel_view(x, rows, spatial), kernel_view(dout, rows, spatial), mean, sdy,
               sdyx, threads_for(x.size))
    return sdy, sdyx


def apply_dx(dout, x, gamma, mean, invstd, sum_dout, sum_dout_xmu, count,
             train=True, spatial=False, dx=None):
    """The input gradient from (global) backward sums.

    ``dx = gamma*invstd * (dout - sum_dout/count - (x-mean)*invstd**2 *
    sum_dout_xmu/count)`` in train mode, ``gamma*invstd*dout`` in test mode.

    Parameters
    ----------
    dout, x : array_like, same shape and dtype
    gamma, mean, invstd : array_like, shape (D,)
    sum_dout, sum_dout_xmu : array_like, shape (D,)
        From :func:`grad_sums`, added over all parts of the batch.
    count : float
        Values per feature in the whole batch (the sum of the parts' counts).
    train : bool
    spatial : bool
    dx : ndarray, optional
        Buffer of x's shape and dtype, overlapping neither x nor dout.

    Returns
    -------
    dx : ndarray, x's shape and dtype

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> from fastbn.moments import apply_dx, finish_moments, grad_sums, partial_moments
    >>> rng = np.random.default_rng(0)
    >>> x, dout, g = rng.standard_normal((64, 3)), rng.standard_normal((64, 3)), np.ones(3)
    >>> m = partial_moments(x)
    >>> mean, var, invstd = finish_moments(m, 1e-5)
    >>> sdy, sdyx = grad_sums(dout, x, mean)
    >>> dx = apply_dx(dout, x, g, mean, invstd, sdy, sdyx, m.count)
    >>> _, cache = fastbn.batchnorm_forward(x, g, np.zeros(3), {"mode": "train"})
    >>> np.allclose(dx, fastbn.batchnorm_backward(dout, cache)[0])
    True
    """
    x = check_batch(x, spatial)
    dout = check_dout(dout, x)
    D = x.shape[1]
    vecs = [_f64_vector(v, name, D) for v, name in
            ((sum_dout, "sum_dout"), (sum_dout_xmu, "sum_dout_xmu"), (gamma, "gamma"),
             (mean, "mean"), (invstd, "invstd"))]
    if train and not count > 0:
        raise ValueError(f"count must be positive in train mode, got {count}")
    sdy, sdyx, gamma, mean, invstd = vecs
    rows = uses_rows(x, spatial)
    result, dx_view, staged, stream = output(x, dx, "dx", rows, spatial, x, dout)
    if x.size:
        kernel = _moments.rows_dx if rows else _moments.chans_dx
        kernel(kernel_view(x, rows, spatial), kernel_view(dout, rows, spatial), gamma, mean,
               invstd, sdy, sdyx, float(count), bool(train), dx_view, threads_for(x.size),
               stream)
    if staged is not None:
        np.copyto(result, staged)
    return result
