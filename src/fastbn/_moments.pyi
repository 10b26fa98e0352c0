"""Type stub for the split-up batch-norm kernels (``_moments.pyx``).

Private API: :mod:`fastbn.moments` validates arguments, picks the row
``(R, D)`` or channel ``(A, C, B)`` view and calls these.  Data arrays of one
call share a float dtype (float32 or float64); per-feature statistics,
sums and coefficients are float64, C-contiguous.
"""
from typing import Any, TypeVar

import numpy as np

_F = TypeVar("_F", np.float32, np.float64)
_Arr = np.ndarray[Any, np.dtype[_F]]
_F64 = np.ndarray[Any, np.dtype[np.float64]]

def kernel_isa() -> str: ...
def rows_moments(x: _Arr[_F], mean: _F64, m2: _F64, nthreads: int,
    stream: bool = ...) -> None: ...
def chans_moments(x: _Arr[_F], mean: _F64, m2: _F64, nthreads: int,
    stream: bool = ...) -> None: ...
def merge_packed(a: _F64, b: _F64) -> None: ...
def rows_grad_sums(x: _Arr[_F], dout: _Arr[_F], mean: _F64, sdy: _F64, sdyx: _F64,
                   nthreads: int,
    stream: bool = ...) -> None: ...
def chans_grad_sums(x: _Arr[_F], dout: _Arr[_F], mean: _F64, sdy: _F64, sdyx: _F64,
                    nthreads: int,
    stream: bool = ...) -> None: ...
def rows_dx(x: _Arr[_F], dout: _Arr[_F], gamma: _F64, mean: _F64, invstd: _F64,
            sdy: _F64, sdyx: _F64, count: float, train: bool, dx: _Arr[_F],
            nthreads: int,
    stream: bool = ...) -> None: ...
def chans_dx(x: _Arr[_F], dout: _Arr[_F], gamma: _F64, mean: _F64, invstd: _F64,
             sdy: _F64, sdyx: _F64, count: float, train: bool, dx: _Arr[_F],
             nthreads: int,
    stream: bool = ...) -> None: ...
