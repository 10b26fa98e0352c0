"""Type stub for the compiled layer-norm kernels (``_ln.pyx``).

Private API: :mod:`fastbn.compiled_ln` validates arguments and calls these.
All arrays of one call share a float dtype (float32 or float64), except the
per-row statistics ``mean`` and ``invstd``: float64, C-contiguous.
"""
from typing import Any, TypeVar

import numpy as np

_F = TypeVar("_F", np.float32, np.float64)
_Arr = np.ndarray[Any, np.dtype[_F]]
_F64 = np.ndarray[Any, np.dtype[np.float64]]

def forward(x: _Arr[_F], gamma: _Arr[_F], beta: _Arr[_F], eps: float, out: _Arr[_F],
            mean: _F64, invstd: _F64, nthreads: int) -> None: ...
def backward(x: _Arr[_F], dout: _Arr[_F], gamma: _Arr[_F], mean: _F64, invstd: _F64,
             dx: _Arr[_F], dgamma: _Arr[_F], dbeta: _Arr[_F], nthreads: int) -> None: ...
def kernel_isa() -> str: ...
def plain_layernorm_forward(x: object, gamma: object, beta: object, ln_param: object,
                            policy: tuple) -> tuple | None: ...
def plain_layernorm_backward(dout: object, cache: object, policy: tuple) -> tuple | None: ...
