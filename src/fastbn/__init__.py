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

from . import compiled, reference
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
    """
    global _default_backend
    _default_backend = _check_backend_name(name)


def get_backend():
    """The name of the backend in force here: ``'cython'`` or ``'numpy'``."""
    return _context_backend.get() or _default_backend


@contextlib.contextmanager
def backend(name):
    """Context manager: use backend ``name`` inside the ``with`` block.

    The choice is local to the current thread (and asyncio task).
    """
    token = _context_backend.set(_check_backend_name(name))
    try:
        yield
    finally:
        _context_backend.reset(token)


use_backend = backend


def _module():
    return BACKENDS[_context_backend.get() or _default_backend]


def _forward_dispatch(name):
    compiled_fn = getattr(compiled, name)

    @functools.wraps(compiled_fn)
    def forward(x, gamma, beta, bn_param, **kwargs):
        return getattr(_module(), name)(x, gamma, beta, bn_param, **kwargs)
    return forward


def _backward_dispatch(name):
    compiled_fn = getattr(compiled, name)

    @functools.wraps(compiled_fn)
    def backward(dout, cache, **kwargs):
        # The cache says which backend made it; use that one.
        module = reference if isinstance(cache, dict) else compiled
        return getattr(module, name)(dout, cache, **kwargs)
    return backward


batchnorm_forward = _forward_dispatch("batchnorm_forward")
spatial_batchnorm_forward = _forward_dispatch("spatial_batchnorm_forward")
batchnorm_backward = _backward_dispatch("batchnorm_backward")
batchnorm_backward_alt = _backward_dispatch("batchnorm_backward_alt")
spatial_batchnorm_backward = _backward_dispatch("spatial_batchnorm_backward")


@functools.wraps(compiled.layernorm_forward)
def layernorm_forward(x, gamma, beta, ln_param, **kwargs):
    return _module().layernorm_forward(x, gamma, beta, ln_param, **kwargs)


layernorm_backward = _backward_dispatch("layernorm_backward")

__all__ = [
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "layernorm_forward", "layernorm_backward",
    "set_backend", "get_backend", "backend", "use_backend", "BACKENDS",
    "set_num_threads", "get_num_threads", "openmp_enabled", "show_config",
    "compiled", "reference", "__version__",
]
