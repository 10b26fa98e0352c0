"""The compiled backend's layer normalization.

TEMPORARY: until the ``_ln`` kernel lands, these functions delegate to
:mod:`fastbn.reference` so the training stack can be built on the final API.
"""
from . import reference


def layernorm_forward(x, gamma, beta, ln_param):
    """Layer-normalize each row of ``x`` (N, D) over its D features.

    Parameters
    ----------
    x : array_like, shape (N, D)
        float32 or float64; the result has the same dtype.
    gamma, beta : ndarray, shape (D,)
        Per-feature scale and shift, same dtype as ``x``.
    ln_param : dict
        ``eps`` (default 1e-5); other keys are ignored.

    Returns
    -------
    out : ndarray, shape (N, D)
    cache
        For :func:`layernorm_backward`.
    """
    return reference.layernorm_forward(x, gamma, beta, ln_param)


def layernorm_backward(dout, cache):
    """Gradients of :func:`layernorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dgamma, dbeta : ndarray, shape (D,)
    """
    return reference.layernorm_backward(dout, cache)
