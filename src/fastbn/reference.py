"""Batch normalization in plain NumPy: the specification fastbn is tested against.

This module is written to be read.  Each function is the textbook algorithm
(Ioffe & Szegedy, 2015) as taught in Stanford's CS231n, with the same
signatures and cache conventions, so it doubles as the oracle for the
compiled kernels and as the ``'numpy'`` backend of :func:`fastbn.set_backend`.

Conventions
-----------
* ``x`` has shape ``(N, D)``: N samples, D features.  Statistics are per
  feature, over the batch.  The spatial variants take ``(N, C, H, W)`` and
  compute statistics per channel over N, H and W.
* ``bn_param`` is a dict: ``mode`` ('train' or 'test', required), ``eps``
  (default 1e-5), ``momentum`` (default 0.9), ``running_mean`` and
  ``running_var`` (zeros in x's dtype when absent, stored back into the dict).
* Train mode normalizes with the batch mean and the *biased* batch variance
  and updates ``running = momentum * running + (1 - momentum) * batch_stat``.
  Test mode normalizes with the running statistics.
* Layer normalization (Ba, Kiros & Hinton, 2016) turns the axes around:
  each *sample* is normalized over its D features, the same way in training
  and at test time, so it keeps no running statistics.
* Group normalization (Wu & He, 2018) sits between the two for ``(N, C, H,
  W)`` activations: the C channels of each sample are split into G groups of
  C/G consecutive channels, and each (sample, group) is normalized over its
  C/G * H * W values.  G = 1 is layer norm over (C, H, W), G = C is instance
  norm.  ``gamma`` and ``beta`` still act per channel.
* Every mean and variance is computed in float64 around one of its own
  samples (:func:`_moments`), so a constant feature normalizes to exactly 0
  at any magnitude.

Non-finite parameters
---------------------
An infinite or NaN ``gamma``, ``beta`` or running statistic, or ``eps = 0``
with a zero variance, gives the expressions above evaluated elementwise in
IEEE arithmetic, and both backends return exactly that pattern:
``x_hat = (x - mean) / sqrt(var + eps)`` (so ``running_mean = inf`` gives
``x_hat = -inf`` and ``eps = 0``, ``var = 0`` gives ``+-inf``, or NaN where
``x - mean = 0``), ``out = gamma * x_hat + beta`` (``gamma = inf`` gives
``+-inf``); in test mode ``dx = dout * gamma / sqrt(var + eps)``, which does
not involve the mean (finite for ``running_mean = inf``), ``dgamma =
sum(dout * x_hat)`` and ``dbeta = sum(dout)``.
"""
import numpy as np

from ._validation import (check_batchnorm_args, check_dout, check_groupnorm_args,
                          check_layernorm_args, store_running, warn_batch_of_one)


def _moments(x, axis):
    """Mean and biased variance of ``x`` over ``axis``, in float64, keepdims.

    The textbook ``x.mean()`` / ``x.var()`` lose a constant feature far from
    zero: for 1e20 repeated, the float64 sum rounds, the mean comes out one
    ulp (16384) away from the data, and ``x - mean`` is then +-16384 instead of
    0, so the "normalized" feature is -1 and its gamma gradient huge.
    Subtracting one sample of the feature first (``shift``) takes the
    magnitude out before anything is summed: a constant feature becomes exact
    zeros, and other data lose nothing (two floats within a factor of two
    subtract exactly).  The variance is then the two-pass one, around the
    shifted mean.
    """
    first = tuple(slice(0, 1) if k in axis else slice(None) for k in range(x.ndim))
    shift = x[first].astype(np.float64)
    d = x - shift                                   # float64
    d_mean = d.mean(axis=axis, keepdims=True)
    var = ((d - d_mean) ** 2).mean(axis=axis, keepdims=True)    # biased: divides by count
    return shift + d_mean, var


def batchnorm_forward(x, gamma, beta, bn_param):
    """Forward pass of batch normalization.

    Parameters
    ----------
    x : ndarray, shape (N, D)
        Input data, float32 or float64.
    gamma, beta : ndarray, shape (D,)
        Scale and shift, same dtype as ``x``.
    bn_param : dict
        ``mode``, ``eps``, ``momentum``, ``running_mean``, ``running_var``.

    Returns
    -------
    out : ndarray, shape (N, D)
        ``gamma * (x - mean) / sqrt(var + eps) + beta``.
    cache : dict
        The intermediate values :func:`batchnorm_backward` needs.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).standard_normal((64, 3))
    >>> out, cache = reference.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> np.allclose(out.mean(axis=0), 0), out.shape
    (True, (64, 3))
    """
    p = check_batchnorm_args(x, gamma, beta, bn_param, ndim=2)
    warn_batch_of_one(p)
    return _batchnorm_forward(p, bn_param)


def _batchnorm_forward(p, bn_param):
    """:func:`batchnorm_forward` on checked arguments ``p`` (a NormParams)."""
    x, gamma, beta = p.x, p.gamma, p.beta
    D = x.shape[1]
    running_mean = p.running_mean if p.running_mean is not None else np.zeros(D, x.dtype)
    running_var = p.running_var if p.running_var is not None else np.zeros(D, x.dtype)

    if p.mode == "train":
        # Statistics in float64 even for float32 x (see _moments): summed in
        # float32, 1e5 values near 1e4 would lose the digits that tell them
        # apart (the result is off by ~5).  Biased variance: divides by N.
        mean, var = (m[0] for m in _moments(x, axis=(0,)))
        running_mean = p.momentum * running_mean + (1 - p.momentum) * mean
        running_var = p.momentum * running_var + (1 - p.momentum) * var
    else:
        mean, var = running_mean, running_var

    # Centre in float64 too, then go on in x's dtype.
    std = np.sqrt(var + p.eps).astype(x.dtype, copy=False)
    x_centered = (x - mean).astype(x.dtype, copy=False)
    x_hat = x_centered / std
    out = gamma * x_hat + beta

    # Only now, with nothing left that can fail, touch what the caller owns.
    store_running(bn_param, running_mean.astype(x.dtype, copy=False),
                  running_var.astype(x.dtype, copy=False))
    cache = {"kind": "batchnorm", "mode": p.mode, "x": x, "x_centered": x_centered,
             "x_hat": x_hat, "std": std, "gamma": gamma}
    return out.astype(x.dtype, copy=False), cache


# What each backward pass reads from its cache, so a look-alike dict fails
# with a TypeError here rather than a KeyError halfway through.
_CACHE_KEYS = {
    "batchnorm": {"mode", "x", "x_centered", "x_hat", "std", "gamma"},
    "spatial_batchnorm": {"x", "rows"},
    "layernorm": {"x", "x_hat", "std", "gamma"},
    "groupnorm": {"x", "G", "x_centered", "x_hat", "std", "gamma", "param_shape"},
}


def _check_cache(cache, kind):
    if not (isinstance(cache, dict) and cache.get("kind") == kind
            and _CACHE_KEYS[kind] <= cache.keys()):
        raise TypeError(f"cache must be the cache returned by fastbn.reference's "
                        f"{kind}_forward, got {type(cache).__name__}")
    return cache


def batchnorm_backward(dout, cache):
    """Backward pass, one node of the computation graph at a time.

    The forward pass is the chain

        mean = sum(x) / N
        x_centered = x - mean
        var = sum(x_centered**2) / N
        std = sqrt(var + eps)
        x_hat = x_centered / std
        out = gamma * x_hat + beta

    and this function walks it backwards, applying the chain rule at each
    step.  Compare :func:`batchnorm_backward_alt`, which does the algebra on
    paper first.

    Parameters
    ----------
    dout : ndarray, shape (N, D)
        Upstream gradient.
    cache : dict
        From :func:`batchnorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).standard_normal((64, 3))
    >>> out, cache = reference.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> dx, dgamma, dbeta = reference.batchnorm_backward(np.ones_like(out), cache)
    >>> dbeta
    array([64., 64., 64.])
    """
    c = _check_cache(cache, "batchnorm")
    dout = check_dout(dout, c["x"])
    x_centered, x_hat, std, gamma = c["x_centered"], c["x_hat"], c["std"], c["gamma"]
    N = dout.shape[0]

    # out = gamma * x_hat + beta
    dbeta = dout.sum(axis=0)
    dgamma = (dout * x_hat).sum(axis=0)
    dx_hat = dout * gamma

    if c["mode"] == "test":
        # mean and std came from the running statistics: constants here.
        dx = dx_hat / std
        return dx, dgamma, dbeta

    # x_hat = x_centered / std: two paths, through x_centered and through std
    dx_centered = dx_hat / std
    dstd = -(dx_hat * x_centered).sum(axis=0) / std**2
    # std = sqrt(var + eps)
    dvar = dstd / (2 * std)
    # var = sum(x_centered**2) / N
    dx_centered += 2 * x_centered * dvar / N
    # x_centered = x - mean: two paths, directly and through mean
    dmean = -dx_centered.sum(axis=0)
    # mean = sum(x) / N
    dx = dx_centered + dmean / N
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    """Backward pass from the closed form derived on paper.

    With ``x_hat`` the normalized input, the three gradients are

        dbeta  = sum(dout)
        dgamma = sum(dout * x_hat)
        dx     = gamma / (N * std) * (N * dout - dbeta - x_hat * dgamma)

    Same arguments and results as :func:`batchnorm_backward`.

    Parameters
    ----------
    dout : ndarray, shape (N, D)
        Upstream gradient, same dtype as the forward input.
    cache : dict
        From :func:`batchnorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> rng = np.random.default_rng(0)
    >>> x, dout = rng.standard_normal((64, 3)), rng.standard_normal((64, 3))
    >>> out, cache = reference.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> a = reference.batchnorm_backward(dout, cache)
    >>> b = reference.batchnorm_backward_alt(dout, cache)
    >>> all(np.allclose(u, v) for u, v in zip(a, b))
    True
    """
    c = _check_cache(cache, "batchnorm")
    dout = check_dout(dout, c["x"])
    x_hat, std, gamma = c["x_hat"], c["std"], c["gamma"]
    N = dout.shape[0]

    dbeta = dout.sum(axis=0)
    dgamma = (dout * x_hat).sum(axis=0)
    if c["mode"] == "test":
        return dout * gamma / std, dgamma, dbeta
    dx = gamma / (N * std) * (N * dout - dbeta - x_hat * dgamma)
    return dx, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of convolutional activations.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    gamma, beta : ndarray, shape (C,)
    bn_param : dict
        As for :func:`batchnorm_forward`.

    Returns
    -------
    out : ndarray, shape (N, C, H, W)
    cache : dict

    Each channel is one feature observed at N*H*W places, so moving the
    channel axis last and flattening gives ordinary (N*H*W, C) batch norm.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).standard_normal((8, 4, 5, 5))
    >>> bn_param = {"mode": "train"}
    >>> out, _ = reference.spatial_batchnorm_forward(x, np.ones(4), np.zeros(4), bn_param)
    >>> np.allclose(out.mean(axis=(0, 2, 3)), 0)
    True
    """
    p = check_batchnorm_args(x, gamma, beta, bn_param, ndim=4)
    warn_batch_of_one(p)
    N, C, H, W = p.x.shape
    x_rows = p.x.transpose(0, 2, 3, 1).reshape(-1, C)
    out_rows, rows_cache = _batchnorm_forward(p._replace(x=x_rows), bn_param)
    out = out_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return out, {"kind": "spatial_batchnorm", "x": p.x, "rows": rows_cache}


def spatial_batchnorm_backward(dout, cache):
    """Backward pass of :func:`spatial_batchnorm_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, C, H, W)
        Upstream gradient, same dtype as the forward input.
    cache : dict
        From :func:`spatial_batchnorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dgamma, dbeta : ndarray, shape (C,)

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).standard_normal((8, 4, 5, 5))
    >>> out, cache = reference.spatial_batchnorm_forward(x, np.ones(4), np.zeros(4),
    ...                                                  {"mode": "train"})
    >>> dx, dgamma, dbeta = reference.spatial_batchnorm_backward(np.ones_like(out), cache)
    >>> dx.shape, dbeta
    ((8, 4, 5, 5), array([200., 200., 200., 200.]))
    """
    c = _check_cache(cache, "spatial_batchnorm")
    dout = check_dout(dout, c["x"])
    N, C, H, W = dout.shape
    dout_rows = dout.transpose(0, 2, 3, 1).reshape(-1, C)
    dx_rows, dgamma, dbeta = batchnorm_backward_alt(dout_rows, c["rows"])
    dx = dx_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    """Forward pass of layer normalization.

    Each row of ``x`` (one sample) is normalized over its D features with
    that row's own mean and biased variance, then scaled and shifted per
    feature by ``gamma`` and ``beta``.  It is batch normalization of ``x.T``
    in train mode, except that ``gamma``/``beta`` still act on the features.

    Parameters
    ----------
    x : ndarray, shape (N, D)
        Input data, float32 or float64.
    gamma, beta : ndarray, shape (D,)
        Scale and shift, same dtype as ``x``.
    ln_param : dict
        ``eps`` (default 1e-5); other keys are ignored.

    Returns
    -------
    out : ndarray, shape (N, D)
        ``gamma * (x - mean) / sqrt(var + eps) + beta`` with per-row mean
        and variance.
    cache : dict
        The intermediate values :func:`layernorm_backward` needs.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, (4, 100))
    >>> out, cache = reference.layernorm_forward(x, np.ones(100), np.zeros(100), {})
    >>> np.allclose(out.mean(axis=1), 0)
    True
    """
    p = check_layernorm_args(x, gamma, beta, ln_param)
    x, gamma, beta = p.x, p.gamma, p.beta

    # (N, 1): one mean per sample; float64 statistics as in batchnorm_forward
    mean, var = _moments(x, axis=(1,))                        # biased: divides by D
    std = np.sqrt(var + p.eps).astype(x.dtype, copy=False)
    x_hat = (x - mean).astype(x.dtype, copy=False) / std
    out = gamma * x_hat + beta                  # gamma, beta broadcast over rows

    cache = {"kind": "layernorm", "x": x, "x_hat": x_hat, "std": std, "gamma": gamma}
    return out.astype(x.dtype, copy=False), cache


def layernorm_backward(dout, cache):
    """Backward pass of layer normalization.

    ``gamma`` and ``beta`` act per feature, so their gradients sum over the
    batch exactly as in batch norm.  The normalization acts per row, so the
    closed form of :func:`batchnorm_backward_alt` applies with the roles of
    the axes swapped: with ``dx_hat = dout * gamma``,

        dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / std

    where both means run over the D features of each row.

    Parameters
    ----------
    dout : ndarray, shape (N, D)
        Upstream gradient.
    cache : dict
        From :func:`layernorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it; nothing the caller owns is
        modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).standard_normal((4, 100))
    >>> out, cache = reference.layernorm_forward(x, np.ones(100), np.zeros(100), {})
    >>> dx, dgamma, dbeta = reference.layernorm_backward(np.ones_like(out), cache)
    >>> np.allclose(dx, 0), dbeta.shape
    (True, (100,))
    """
    c = _check_cache(cache, "layernorm")
    dout = check_dout(dout, c["x"])
    x_hat, std, gamma = c["x_hat"], c["std"], c["gamma"]

    # out = gamma * x_hat + beta: per-feature parameters, sums over samples
    dbeta = dout.sum(axis=0)
    dgamma = (dout * x_hat).sum(axis=0)
    # x_hat = (x - mean) / std with per-row mean and std
    dx_hat = dout * gamma
    dx = (dx_hat
          - dx_hat.mean(axis=1, keepdims=True)
          - x_hat * (dx_hat * x_hat).mean(axis=1, keepdims=True)) / std
    return dx.astype(dout.dtype, copy=False), dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Forward pass of group normalization.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input data, float32 or float64.
    gamma, beta : ndarray, shape (1, C, 1, 1) or (C,)
        Per-channel scale and shift, same dtype as ``x``.
    G : int
        Number of groups; must divide C.  Group g holds channels
        ``g * C // G`` to ``(g + 1) * C // G - 1``.
    gn_param : dict
        ``eps`` (default 1e-5); other keys are ignored.

    Returns
    -------
    out : ndarray, shape (N, C, H, W)
        ``gamma * (x - mean) / sqrt(var + eps) + beta`` with the mean and
        biased variance of each (sample, group) over its C/G * H * W values.
    cache : dict
        The intermediate values :func:`spatial_groupnorm_backward` needs.

    Raises
    ------
    TypeError, ValueError
        For any malformed argument, naming it (``G`` not a positive integer
        dividing C among them); nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 4, 4))
    >>> out, cache = reference.spatial_groupnorm_forward(x, np.ones(6), np.zeros(6), 2, {})
    >>> np.allclose(out.reshape(2, 2, -1).mean(axis=2), 0)
    True
    """
    p = check_groupnorm_args(x, gamma, beta, G, gn_param)
    x, G = p.x, p.G
    N, C, H, W = x.shape
    channel = (1, C, 1, 1)                  # broadcasts a per-channel value over (N, C, H, W)
    gamma, beta = p.gamma.reshape(channel), p.beta.reshape(channel)

    # Give each group its own axis: (N, G, C/G, H, W); a group is one [n, g].
    x_groups = x.reshape(N, G, C // G, H, W)
    mean, var = _moments(x_groups, axis=(2, 3, 4))    # (N, G, 1, 1, 1), float64
    std = np.sqrt(var + p.eps).astype(x.dtype, copy=False)
    x_centered = (x_groups - mean).astype(x.dtype, copy=False)
    x_hat = x_centered / std
    out = gamma * x_hat.reshape(N, C, H, W) + beta

    cache = {"kind": "groupnorm", "x": x, "G": G, "x_centered": x_centered,
             "x_hat": x_hat, "std": std, "gamma": gamma, "param_shape": p.param_shape}
    return out.astype(x.dtype, copy=False), cache


def spatial_groupnorm_backward(dout, cache):
    """Backward pass of group normalization, node by node.

    Per group, the forward pass is the chain of :func:`batchnorm_backward`,
    with the M = C/G * H * W values of one (sample, group) in the role of the
    batch; only the last step acts per channel::

        mean = sum(x) / M                       # per group
        x_centered = x - mean
        var = sum(x_centered**2) / M
        std = sqrt(var + eps)
        x_hat = x_centered / std
        out = gamma * x_hat + beta              # per channel

    Parameters
    ----------
    dout : ndarray, shape (N, C, H, W)
        Upstream gradient.
    cache : dict
        From :func:`spatial_groupnorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dgamma, dbeta : ndarray, the shape of the forward's gamma
        ``(1, C, 1, 1)`` as in the course, or ``(C,)``.

    Raises
    ------
    TypeError, ValueError
        For a ``dout`` that does not match the forward input or a cache that is
        not this backend's group-norm cache; nothing the caller owns is modified.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn import reference
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 4, 4))
    >>> out, cache = reference.spatial_groupnorm_forward(x, np.ones(6), np.zeros(6), 2, {})
    >>> dx, dgamma, dbeta = reference.spatial_groupnorm_backward(np.ones_like(out), cache)
    >>> dgamma.shape, np.allclose(dx, 0)
    ((6,), True)
    """
    c = _check_cache(cache, "groupnorm")
    dout = check_dout(dout, c["x"])
    x_centered, x_hat, std, gamma, G = c["x_centered"], c["x_hat"], c["std"], c["gamma"], c["G"]
    N, C, H, W = dout.shape
    group_axes = (2, 3, 4)
    M = (C // G) * H * W

    # out = gamma * x_hat + beta: per-channel parameters sum over N, H and W
    dbeta = dout.sum(axis=(0, 2, 3)).reshape(c["param_shape"])
    dgamma = (dout * x_hat.reshape(N, C, H, W)).sum(axis=(0, 2, 3)).reshape(c["param_shape"])
    dx_hat = (dout * gamma).reshape(N, G, C // G, H, W)

    # x_hat = x_centered / std: two paths, through x_centered and through std
    dx_centered = dx_hat / std
    dstd = -(dx_hat * x_centered).sum(axis=group_axes, keepdims=True) / std**2
    # std = sqrt(var + eps)
    dvar = dstd / (2 * std)
    # var = sum(x_centered**2) / M
    dx_centered += 2 * x_centered * dvar / M
    # x_centered = x - mean: two paths, directly and through mean
    dmean = -dx_centered.sum(axis=group_axes, keepdims=True)
    # mean = sum(x) / M
    dx = dx_centered + dmean / M
    return dx.reshape(N, C, H, W).astype(dout.dtype, copy=False), dgamma, dbeta
