"""Numerical gradients by centered differences, to check analytic backward passes.

The classic CS231n helpers: ``eval_numerical_gradient`` for a scalar
function, ``eval_numerical_gradient_array`` for an array-valued one with an
upstream gradient, and ``rel_error`` to compare the results.  Use float64
inputs: with ``h = 1e-5`` float32 round-off swamps the difference quotient.
"""
import numpy as np

__all__ = ["eval_numerical_gradient", "eval_numerical_gradient_array", "rel_error",
           "grad_check_sparse"]


def _values_either_side(f, x, ix, h):
    """``f`` at ``x`` with ``x[ix]`` moved by ``+h`` and by ``-h``; ``x`` restored.

    An array value is copied at once, since ``f`` may return a buffer it
    reuses or a view of ``x`` itself; a scalar comes back as ``f`` returned it.
    """
    def value():
        v = f(x)
        return v.copy() if isinstance(v, np.ndarray) else v

    old = x[ix]
    try:
        x[ix] = old + h
        pos = value()
        x[ix] = old - h
        neg = value()
    finally:
        x[ix] = old
    return pos, neg


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Gradient of a scalar function ``f`` at ``x``, one coordinate at a time.

    Parameters
    ----------
    f : callable
        Takes ``x`` (which this function perturbs in place, then restores)
        and returns a scalar.
    x : ndarray
        Point at which to differentiate.
    verbose : bool
        Print each coordinate's index and derivative.
    h : float
        Step of the centered difference ``(f(x + h) - f(x - h)) / 2h``.

    Returns
    -------
    grad : ndarray, shape of x

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.gradient_check import eval_numerical_gradient
    >>> grad = eval_numerical_gradient(lambda x: np.sum(x ** 2), np.array([1.0, 2.0]),
    ...                                verbose=False)
    >>> np.allclose(grad, [2.0, 4.0])
    True
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        fxph, fxmh = _values_either_side(f, x, ix, h)
        grad[ix] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(ix, grad[ix])
        it.iternext()
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Gradient of ``sum(f(x) * df)`` at ``x``: backprop of ``df`` through ``f``.

    Parameters
    ----------
    f : callable
        Takes ``x`` (perturbed in place, then restored) and returns an array.
    x : ndarray
    df : ndarray, shape of f(x)
        Upstream gradient.
    h : float

    Returns
    -------
    grad : ndarray, shape of x

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> from fastbn.gradient_check import eval_numerical_gradient_array, rel_error
    >>> rng = np.random.default_rng(0)
    >>> x, dout = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
    >>> g, b, p = np.ones(4), np.zeros(4), {"mode": "train"}
    >>> fx = lambda x: fastbn.batchnorm_forward(x, g, b, dict(p))[0]
    >>> dx_num = eval_numerical_gradient_array(fx, x, dout)
    >>> _, cache = fastbn.batchnorm_forward(x, g, b, dict(p))
    >>> rel_error(dx_num, fastbn.batchnorm_backward(dout, cache)[0]) < 1e-7
    True
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        pos, neg = map(np.asarray, _values_either_side(f, x, ix, h))
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5, seed=None):
    """Compare ``analytic_grad`` with centered differences at random coordinates.

    Parameters
    ----------
    f : callable
        Takes ``x`` (perturbed in place, then restored) and returns a scalar.
    x : ndarray
    analytic_grad : ndarray, shape of x
        The gradient to check.
    num_checks : int
        Coordinates to sample.
    h : float
        Step of the centered difference.
    seed : int, optional
        Seed of the coordinate choice.

    Returns
    -------
    errors : list of float
        Relative error at each sampled coordinate (also printed).

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.gradient_check import grad_check_sparse
    >>> x = np.array([1.0, 2.0, 3.0])
    >>> errors = grad_check_sparse(lambda x: np.sum(x ** 2), x, 2 * x, num_checks=2,
    ...                            seed=0)  # doctest: +ELLIPSIS
    numerical: 6.000000 analytic: 6.000000, relative error: ...
    numerical: 4.000000 analytic: 4.000000, relative error: ...
    >>> max(errors) < 1e-8
    True
    """
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(num_checks):
        ix = tuple(int(rng.integers(m)) for m in x.shape)
        fxph, fxmh = _values_either_side(f, x, ix, h)
        num = (fxph - fxmh) / (2 * h)
        ana = analytic_grad[ix]
        err = abs(num - ana) / max(1e-12, abs(num) + abs(ana))
        print(f"numerical: {num:f} analytic: {ana:f}, relative error: {err:e}")
        errors.append(float(err))
    return errors


def rel_error(x, y):
    """Largest elementwise relative error ``|x - y| / max(1e-8, |x| + |y|)``.

    Parameters
    ----------
    x, y : array_like
        Arrays of the same shape (or broadcastable).

    Returns
    -------
    float

    Examples
    --------
    >>> from fastbn.gradient_check import rel_error
    >>> round(rel_error([1.0, 2.0], [1.0, 2.0 + 4e-6]), 9)
    1e-06
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))
