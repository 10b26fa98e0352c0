"""Layers of a fully connected network, with the classic CS231n signatures.

Every ``*_forward`` returns ``(out, cache)`` and every ``*_backward`` takes
``(dout, cache)`` and returns the gradients of its inputs and parameters.
The normalization layers (batch, spatial batch, layer and group norm, under
the names the course imports from ``cs231n.layers``) are the top-level
:mod:`fastbn` functions, so
``fastbn.set_backend('numpy')`` moves a whole network onto the NumPy
reference.  The rest is plain NumPy: those layers are one BLAS call or one
elementwise pass, and a compiled version would not be faster.

Shapes: ``x`` is ``(N, d_1, ..., d_k)``; affine layers flatten each sample
to ``D = d_1 * ... * d_k`` features.  Results keep the input's dtype.
"""
import numpy as np

from . import (batchnorm_backward, batchnorm_backward_alt, batchnorm_forward,
               layernorm_backward, layernorm_forward, spatial_batchnorm_backward,
               spatial_batchnorm_forward, spatial_groupnorm_backward,
               spatial_groupnorm_forward)

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "dropout_forward", "dropout_backward", "softmax_loss",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "layernorm_forward", "layernorm_backward",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "spatial_groupnorm_forward", "spatial_groupnorm_backward",
    "affine_relu_forward", "affine_relu_backward",
    "affine_bn_relu_forward", "affine_bn_relu_backward",
    "affine_ln_relu_forward", "affine_ln_relu_backward",
    "affine_norm_relu_forward", "affine_norm_relu_backward",
    "spatial_bn_relu_forward", "spatial_bn_relu_backward",
    "spatial_gn_relu_forward", "spatial_gn_relu_backward",
]

NORMALIZATIONS = (None, "batchnorm", "layernorm")


def affine_forward(x, w, b):
    """Fully connected layer: ``out = x.reshape(N, D) @ w + b``.

    Parameters
    ----------
    x : ndarray, shape (N, d_1, ..., d_k)
    w : ndarray, shape (D, M)
    b : ndarray, shape (M,)

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        ``(x, w, b)``.

    Raises
    ------
    ValueError
        When ``w``'s first dimension is not the number of features per sample.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_forward
    >>> out, cache = affine_forward(np.ones((2, 3, 4)), np.ones((12, 5)), np.zeros(5))
    >>> out
    array([[12., 12., 12., 12., 12.],
           [12., 12., 12., 12., 12.]])
    """
    x2 = x.reshape(x.shape[0], -1)
    if x2.shape[1] != w.shape[0]:
        raise ValueError(f"x has {x2.shape[1]} features per sample but w has shape "
                         f"{w.shape}; w must be (D, M) with D = {x2.shape[1]}")
    out = x2 @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    """Gradients of :func:`affine_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, M)
        Upstream gradient.
    cache : tuple
        From :func:`affine_forward`.

    Returns
    -------
    dx : ndarray, shape of x
    dw : ndarray, shape (D, M)
    db : ndarray, shape (M,)

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_backward, affine_forward
    >>> out, cache = affine_forward(np.ones((2, 3)), np.ones((3, 4)), np.zeros(4))
    >>> dx, dw, db = affine_backward(np.ones_like(out), cache)
    >>> dx.shape, dw.shape, db
    ((2, 3), (3, 4), array([2., 2., 2., 2.]))
    """
    x, w, _ = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


def relu_forward(x):
    """Rectified linear unit ``max(0, x)``; the cache is ``x``.

    Parameters
    ----------
    x : ndarray

    Returns
    -------
    out : ndarray, shape and dtype of x
    cache : ndarray
        ``x``, for :func:`relu_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import relu_forward
    >>> relu_forward(np.array([-1.0, 0.5]))[0]
    array([0. , 0.5])
    """
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    """Gradient of :func:`relu_forward`: ``dout`` where ``x > 0``, else 0.

    Parameters
    ----------
    dout : ndarray
        Upstream gradient, shape of the forward input.
    cache : ndarray
        From :func:`relu_forward`.

    Returns
    -------
    dx : ndarray, dtype of dout

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import relu_backward, relu_forward
    >>> out, cache = relu_forward(np.array([-1.0, 0.5]))
    >>> relu_backward(np.array([3.0, 3.0]), cache)
    array([0., 3.])
    """
    x = cache
    return np.where(x > 0, dout, 0).astype(dout.dtype, copy=False)


def dropout_forward(x, dropout_param):
    """Inverted dropout, as in the classic assignment.

    Parameters
    ----------
    x : ndarray
    dropout_param : dict
        ``p``: probability of *keeping* each unit (required);
        ``mode``: ``'train'`` or ``'test'`` (required);
        ``seed``: optional; when given, every call draws the same mask, which
        is what makes a dropout network gradient-checkable.  The mask is drawn
        as ``np.random.seed(seed); np.random.rand(*x.shape) < p`` would draw
        it, from a private generator, so the global NumPy RNG is untouched.

    Returns
    -------
    out : ndarray
        ``x * mask / p`` in train mode (so test mode needs no rescaling),
        ``x`` in test mode.
    cache : tuple
        ``(dropout_param, mask)``.

    Raises
    ------
    ValueError
        For ``p`` outside (0, 1] or a ``mode`` other than ``'train'``/``'test'``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import dropout_forward
    >>> out, cache = dropout_forward(np.ones((1000, 10)), {"p": 0.5, "mode": "train", "seed": 0})
    >>> sorted(np.unique(out).tolist())           # dropped, or kept and scaled by 1/p
    [0.0, 2.0]
    """
    p, mode = dropout_param["p"], dropout_param["mode"]
    if not 0 < p <= 1:
        raise ValueError(f"dropout_param['p'] is the keep probability, in (0, 1]; got {p}")
    if mode not in ("train", "test"):
        raise ValueError(f"dropout_param['mode'] must be 'train' or 'test', got {mode!r}")
    if mode == "test":
        return x, (dropout_param, None)
    if dropout_param.get("seed") is not None:
        rand = np.random.RandomState(dropout_param["seed"]).rand
    else:
        rand = np.random.rand
    mask = ((rand(*x.shape) < p) / p).astype(x.dtype)
    return x * mask, (dropout_param, mask)


def dropout_backward(dout, cache):
    """Gradient of :func:`dropout_forward`.

    Parameters
    ----------
    dout : ndarray
        Upstream gradient, shape of the forward input.
    cache : tuple
        From :func:`dropout_forward`.

    Returns
    -------
    dx : ndarray
        ``dout`` through the same mask (unchanged in test mode).

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import dropout_backward, dropout_forward
    >>> out, cache = dropout_forward(np.ones(8), {"p": 0.5, "mode": "train", "seed": 0})
    >>> bool(np.array_equal(dropout_backward(np.ones(8), cache), out))
    True
    """
    dropout_param, mask = cache
    if dropout_param["mode"] == "test":
        return dout
    return dout * mask


def softmax_loss(x, y):
    """Softmax cross-entropy loss averaged over the batch, and its gradient.

    Parameters
    ----------
    x : ndarray, shape (N, C)
        Class scores.
    y : ndarray of int, shape (N,)
        Labels, ``0 <= y[i] < C``.

    Returns
    -------
    loss : float
    dx : ndarray, shape (N, C), dtype of x

    Raises
    ------
    ValueError
        When ``y`` does not have shape (N,) or holds labels outside [0, C).

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import softmax_loss
    >>> loss, dx = softmax_loss(np.zeros((4, 10)), np.array([0, 1, 2, 3]))
    >>> round(loss, 4)                    # ln 10: uniform scores
    2.3026
    """
    y = np.asarray(y)
    N, C = x.shape
    if y.shape != (N,):
        raise ValueError(f"y must have shape ({N},) to match x, got {y.shape}")
    if N and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"labels y must lie in [0, {C}), got values in "
                         f"[{y.min()}, {y.max()}]")
    # Shifting by the row max changes nothing mathematically and keeps exp()
    # from overflowing; the loss is accumulated in float64.
    shifted = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(N), y].mean()
    dx = np.exp(log_probs)
    dx[np.arange(N), y] -= 1
    dx /= N
    return float(loss), dx.astype(x.dtype, copy=False)


# -- sandwich layers: affine -> [norm] -> relu ---------------------------------

def affine_relu_forward(x, w, b):
    """Affine layer followed by a ReLU.  Returns ``(out, cache)``.

    Parameters
    ----------
    x, w, b
        As for :func:`affine_forward`.

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        For :func:`affine_relu_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_relu_forward, affine_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> out, cache = affine_relu_forward(x, w, b)
    >>> grads = affine_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,)])
    """
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
    """Gradients of :func:`affine_relu_forward`: ``(dx, dw, db)``.

    Parameters
    ----------
    dout : ndarray, shape (N, M)
    cache : tuple
        From :func:`affine_relu_forward`.

    Returns
    -------
    dx, dw, db : ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_relu_forward, affine_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> out, cache = affine_relu_forward(x, w, b)
    >>> grads = affine_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,)])
    """
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


def affine_norm_relu_forward(x, w, b, gamma, beta, bn_param, normalization):
    """Affine -> normalization -> ReLU.

    Parameters
    ----------
    x, w, b
        As for :func:`affine_forward`.
    gamma, beta : ndarray, shape (M,)
        Scale and shift of the normalization (ignored when it is None).
    bn_param : dict
        ``bn_param`` of :func:`fastbn.batchnorm_forward` or ``ln_param`` of
        :func:`fastbn.layernorm_forward`.
    normalization : {None, 'batchnorm', 'layernorm'}

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        For :func:`affine_norm_relu_backward`.

    Raises
    ------
    ValueError
        For an unknown ``normalization``, and as the normalization function
        for malformed ``gamma``, ``beta`` or ``bn_param``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_norm_relu_forward, affine_norm_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> gamma, beta, bn_param = np.ones(5), np.zeros(5), {"mode": "train"}
    >>> out, cache = affine_norm_relu_forward(x, w, b, gamma, beta, bn_param, "batchnorm")
    >>> grads = affine_norm_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,), (5,), (5,)])
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                         f"got {normalization!r}")
    a, fc_cache = affine_forward(x, w, b)
    norm_cache = None
    if normalization == "batchnorm":
        a, norm_cache = batchnorm_forward(a, gamma, beta, bn_param)
    elif normalization == "layernorm":
        a, norm_cache = layernorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(a)
    return out, (normalization, fc_cache, norm_cache, relu_cache)


def affine_norm_relu_backward(dout, cache):
    """Gradients of :func:`affine_norm_relu_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, M)
    cache : tuple
        From :func:`affine_norm_relu_forward`.

    Returns
    -------
    dx, dw, db : ndarray
    dgamma, dbeta : ndarray or None
        None when the layer has no normalization.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_norm_relu_forward, affine_norm_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> gamma, beta, bn_param = np.ones(5), np.zeros(5), {"mode": "train"}
    >>> out, cache = affine_norm_relu_forward(x, w, b, gamma, beta, bn_param, "batchnorm")
    >>> grads = affine_norm_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,), (5,), (5,)])
    """
    normalization, fc_cache, norm_cache, relu_cache = cache
    da = relu_backward(dout, relu_cache)
    dgamma = dbeta = None
    if normalization == "batchnorm":
        da, dgamma, dbeta = batchnorm_backward_alt(da, norm_cache)
    elif normalization == "layernorm":
        da, dgamma, dbeta = layernorm_backward(da, norm_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    """Affine -> batch norm -> ReLU.  Returns ``(out, cache)``.

    Parameters
    ----------
    x, w, b
        As for :func:`affine_forward`.
    gamma, beta : ndarray, shape (M,)
    bn_param : dict
        As for :func:`fastbn.batchnorm_forward`.

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        For :func:`affine_bn_relu_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_bn_relu_forward, affine_bn_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> out, cache = affine_bn_relu_forward(x, w, b, np.ones(5), np.zeros(5), {"mode": "train"})
    >>> grads = affine_bn_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,), (5,), (5,)])
    """
    return affine_norm_relu_forward(x, w, b, gamma, beta, bn_param, "batchnorm")


def affine_bn_relu_backward(dout, cache):
    """Gradients of :func:`affine_bn_relu_forward`: ``(dx, dw, db, dgamma, dbeta)``.

    Parameters
    ----------
    dout : ndarray, shape (N, M)
    cache : tuple
        From :func:`affine_bn_relu_forward`.

    Returns
    -------
    dx, dw, db, dgamma, dbeta : ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_bn_relu_forward, affine_bn_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> out, cache = affine_bn_relu_forward(x, w, b, np.ones(5), np.zeros(5), {"mode": "train"})
    >>> grads = affine_bn_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,), (5,), (5,)])
    """
    return affine_norm_relu_backward(dout, cache)


def affine_ln_relu_forward(x, w, b, gamma, beta, ln_param):
    """Affine -> layer norm -> ReLU.  Returns ``(out, cache)``.

    Parameters
    ----------
    x, w, b
        As for :func:`affine_forward`.
    gamma, beta : ndarray, shape (M,)
    ln_param : dict
        As for :func:`fastbn.layernorm_forward`.

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        For :func:`affine_ln_relu_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_ln_relu_forward, affine_ln_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> out, cache = affine_ln_relu_forward(x, w, b, np.ones(5), np.zeros(5), {})
    >>> grads = affine_ln_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,), (5,), (5,)])
    """
    return affine_norm_relu_forward(x, w, b, gamma, beta, ln_param, "layernorm")


def affine_ln_relu_backward(dout, cache):
    """Gradients of :func:`affine_ln_relu_forward`: ``(dx, dw, db, dgamma, dbeta)``.

    Parameters
    ----------
    dout : ndarray, shape (N, M)
    cache : tuple
        From :func:`affine_ln_relu_forward`.

    Returns
    -------
    dx, dw, db, dgamma, dbeta : ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import affine_ln_relu_forward, affine_ln_relu_backward
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((8, 6)), rng.standard_normal((6, 5)), np.zeros(5)
    >>> out, cache = affine_ln_relu_forward(x, w, b, np.ones(5), np.zeros(5), {})
    >>> grads = affine_ln_relu_backward(np.ones_like(out), cache)
    >>> out.shape, [g.shape for g in grads]
    ((8, 5), [(8, 6), (6, 5), (5,), (5,), (5,)])
    """
    return affine_norm_relu_backward(dout, cache)


# -- sandwich layers for convolutional activations: [spatial norm] -> relu ----

def spatial_bn_relu_forward(x, gamma, beta, bn_param):
    """Spatial batch norm -> ReLU on ``x`` of shape (N, C, H, W).  Returns ``(out, cache)``."""
    a, norm_cache = spatial_batchnorm_forward(x, gamma, beta, bn_param)
    out, relu_cache = relu_forward(a)
    return out, (norm_cache, relu_cache)


def spatial_bn_relu_backward(dout, cache):
    """Gradients of :func:`spatial_bn_relu_forward`: ``(dx, dgamma, dbeta)``."""
    norm_cache, relu_cache = cache
    return spatial_batchnorm_backward(relu_backward(dout, relu_cache), norm_cache)


def spatial_gn_relu_forward(x, gamma, beta, G, gn_param):
    """Group norm (G groups) -> ReLU on ``x`` of shape (N, C, H, W).  Returns ``(out, cache)``."""
    a, norm_cache = spatial_groupnorm_forward(x, gamma, beta, G, gn_param)
    out, relu_cache = relu_forward(a)
    return out, (norm_cache, relu_cache)


def spatial_gn_relu_backward(dout, cache):
    """Gradients of :func:`spatial_gn_relu_forward`: ``(dx, dgamma, dbeta)``."""
    norm_cache, relu_cache = cache
    return spatial_groupnorm_backward(relu_backward(dout, relu_cache), norm_cache)
