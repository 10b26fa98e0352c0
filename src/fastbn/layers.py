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
    """
    x2 = x.reshape(x.shape[0], -1)
    if x2.shape[1] != w.shape[0]:
        raise ValueError(f"x has {x2.shape[1]} features per sample but w has shape "
                         f"{w.shape}; w must be (D, M) with D = {x2.shape[1]}")
    out = x2 @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    """Gradients of :func:`affine_forward`.

    Returns
    -------
    dx : ndarray, shape of x
    dw : ndarray, shape (D, M)
    db : ndarray, shape (M,)
    """
    x, w, _ = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


def relu_forward(x):
    """Rectified linear unit ``max(0, x)``; the cache is ``x``."""
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    """Gradient of :func:`relu_forward`: ``dout`` where ``x > 0``, else 0."""
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
    """Gradient of :func:`dropout_forward`."""
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
    """Affine layer followed by a ReLU.  Returns ``(out, cache)``."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
    """Gradients of :func:`affine_relu_forward`: ``(dx, dw, db)``."""
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

    Returns
    -------
    dx, dw, db : ndarray
    dgamma, dbeta : ndarray or None
        None when the layer has no normalization.
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
    """Affine -> batch norm -> ReLU.  Returns ``(out, cache)``."""
    return affine_norm_relu_forward(x, w, b, gamma, beta, bn_param, "batchnorm")


def affine_bn_relu_backward(dout, cache):
    """Gradients of :func:`affine_bn_relu_forward`: ``(dx, dw, db, dgamma, dbeta)``."""
    return affine_norm_relu_backward(dout, cache)


def affine_ln_relu_forward(x, w, b, gamma, beta, ln_param):
    """Affine -> layer norm -> ReLU.  Returns ``(out, cache)``."""
    return affine_norm_relu_forward(x, w, b, gamma, beta, ln_param, "layernorm")


def affine_ln_relu_backward(dout, cache):
    """Gradients of :func:`affine_ln_relu_forward`: ``(dx, dw, db, dgamma, dbeta)``."""
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
