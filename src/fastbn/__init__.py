"""fastbn: fast, trustworthy batch normalization for NumPy neural networks.

The top-level functions mirror the classic NumPy batch-norm API (CS231n)::

    out, cache = fastbn.batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = fastbn.batchnorm_backward(dout, cache)

and run on compiled Cython kernels.  ``fastbn.set_backend('numpy')`` (or the
``fastbn.backend('numpy')`` context manager) routes them to the plain NumPy
reference in :mod:`fastbn.reference` instead.  A backward call always runs
on the backend that produced its cache.
"""
import contextlib
import contextvars
import functools
from collections.abc import MutableMapping

import numpy as np

from . import compiled, reference
from ._validation import check_out, store_running
from ._alloc import buffer_cache_info, set_buffer_cache
from ._config import get_num_threads, openmp_enabled, set_num_threads
from ._showconfig import show_config
from ._version import __version__

BACKENDS = {"cython": compiled, "numpy": reference}

_default_backend = "cython"
_context_backend = contextvars.ContextVar("fastbn_backend", default=None)


def _check_backend_name(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}")
    return name


def set_backend(name):
    """Choose the implementation behind the top-level functions.

    Parameters
    ----------
    name : {'cython', 'numpy'}
        ``'cython'`` (the default) for the compiled kernels, ``'numpy'`` for
        :mod:`fastbn.reference`.

    Raises
    ------
    ValueError
        If ``name`` is not one of the backends.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.set_backend("numpy")
    >>> fastbn.get_backend()
    'numpy'
    >>> fastbn.set_backend("cython")
    """
    global _default_backend
    _default_backend = _check_backend_name(name)


def get_backend():
    """The name of the backend in force here: ``'cython'`` or ``'numpy'``.

    Returns
    -------
    str
        ``'cython'`` or ``'numpy'``: the innermost :func:`backend` block of
        this thread, else the :func:`set_backend` choice.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.get_backend()
    'cython'
    """
    return _context_backend.get() or _default_backend


@contextlib.contextmanager
def backend(name):
    """Context manager: use backend ``name`` inside the ``with`` block.

    The choice is local to the current thread (and asyncio task).

    Parameters
    ----------
    name : {'cython', 'numpy'}
        The backend to use inside the block.

    Raises
    ------
    ValueError
        If ``name`` is not one of the backends.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.random.default_rng(0).standard_normal((16, 3))
    >>> with fastbn.backend("numpy"):
    ...     ref, _ = fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> out, _ = fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> np.allclose(out, ref, rtol=1e-12, atol=1e-12)
    True
    """
    token = _context_backend.set(_check_backend_name(name))
    try:
        yield
    finally:
        _context_backend.reset(token)


use_backend = backend


def _module():
    return BACKENDS[_context_backend.get() or _default_backend]


# ``out=`` / ``dx=`` work on both backends, so switching backends never breaks
# a call.  The reference has no buffers: the dispatcher runs it, checks the
# buffer exactly as the compiled backend does, then copies the result in.
# The reference writes its running statistics into a copy of bn_param that
# is merged back only once the buffer has passed, and the buffer is written
# only once bn_param has taken both statistics: a refused buffer or a
# mapping that refuses a statistic changes nothing, as on the compiled backend.

def _reference_forward_into(fn, x, gamma, beta, params, out, keeps_running):
    staged = dict(params) if isinstance(params, MutableMapping) else params
    result, cache = fn(x, gamma, beta, staged)         # validates the arguments
    check_out(out, "out", result.shape, result.dtype, x, gamma, beta,
              *[v for v in params.values() if isinstance(v, np.ndarray)])
    if staged is not params and keeps_running:
        store_running(params, staged["running_mean"], staged["running_var"])
    np.copyto(out, result)
    return out, cache


def _forward_dispatch(name):
    compiled_fn = getattr(compiled, name)
    keeps_running = name in ("batchnorm_forward", "spatial_batchnorm_forward")

    @functools.wraps(compiled_fn)
    def forward(x, gamma, beta, bn_param, out=None):
        module = _module()
        if out is None:
            return getattr(module, name)(x, gamma, beta, bn_param)
        if module is reference:
            return _reference_forward_into(getattr(reference, name), x, gamma, beta,
                                           bn_param, out, keeps_running)
        return getattr(module, name)(x, gamma, beta, bn_param, out=out)
    return forward


def _backward_dispatch(name):
    compiled_fn = getattr(compiled, name)

    @functools.wraps(compiled_fn)
    def backward(dout, cache, dx=None):
        # The cache says which backend made it; use that one.
        if not isinstance(cache, dict):
            fn = getattr(compiled, name)
            return fn(dout, cache) if dx is None else fn(dout, cache, dx=dx)
        result, dgamma, dbeta = getattr(reference, name)(dout, cache)
        if dx is None:
            return result, dgamma, dbeta
        check_out(dx, "dx", result.shape, result.dtype, dout,
                  *[v for v in cache.values() if isinstance(v, np.ndarray)])
        np.copyto(dx, result)
        return dx, dgamma, dbeta
    return backward


batchnorm_forward = _forward_dispatch("batchnorm_forward")
spatial_batchnorm_forward = _forward_dispatch("spatial_batchnorm_forward")
batchnorm_backward = _backward_dispatch("batchnorm_backward")
batchnorm_backward_alt = _backward_dispatch("batchnorm_backward_alt")
spatial_batchnorm_backward = _backward_dispatch("spatial_batchnorm_backward")


layernorm_forward = _forward_dispatch("layernorm_forward")


layernorm_backward = _backward_dispatch("layernorm_backward")


@functools.wraps(compiled.spatial_groupnorm_forward)
def spatial_groupnorm_forward(x, gamma, beta, G, gn_param, out=None):
    if _module() is compiled:
        return compiled.spatial_groupnorm_forward(x, gamma, beta, G, gn_param, out=out)
    result, cache = reference.spatial_groupnorm_forward(x, gamma, beta, G, gn_param)
    if out is None:
        return result, cache
    check_out(out, "out", result.shape, result.dtype, x, gamma, beta)
    np.copyto(out, result)
    return out, cache


spatial_groupnorm_backward = _backward_dispatch("spatial_groupnorm_backward")

__all__ = [
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "layernorm_forward", "layernorm_backward",
    "spatial_groupnorm_forward", "spatial_groupnorm_backward",
    "set_backend", "get_backend", "backend", "use_backend", "BACKENDS",
    "set_num_threads", "get_num_threads", "openmp_enabled", "show_config",
    "set_buffer_cache", "buffer_cache_info",
    "compiled", "reference", "__version__",
]
