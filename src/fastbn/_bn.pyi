"""Type stub for the compiled batch-norm kernels (``_bn.pyx``).

Private API: :mod:`fastbn.compiled` validates arguments and calls these.
Every array argument of one call has the same float dtype, float32 or
float64; statistics (``mean``, ``var``, ``invstd``, ``alpha``, ``beta`` of the normalize kernels)
are float64 and C-contiguous.
"""
from typing import Any, TypeVar

import numpy as np

_F = TypeVar("_F", np.float32, np.float64)
_Arr = np.ndarray[Any, np.dtype[_F]]
_F64 = np.ndarray[Any, np.dtype[np.float64]]

def rows_forward_train(x: _Arr[_F], gamma: _Arr[_F], beta: _Arr[_F], eps: float,
                       out: _Arr[_F], stats: _F64, running_mean: _Arr[_F],
                       running_var: _Arr[_F], momentum: float, new_running: _Arr[_F],
                       nthreads: int,
    stream: bool = ...) -> None: ...
def chans_forward_train(x: _Arr[_F], gamma: _Arr[_F], beta: _Arr[_F], eps: float,
                        out: _Arr[_F], stats: _F64, running_mean: _Arr[_F],
                        running_var: _Arr[_F], momentum: float, new_running: _Arr[_F],
                        nthreads: int,
    stream: bool = ...) -> None: ...
def rows_normalize(x: _Arr[_F], mean: _F64, alpha: _F64, beta: _F64, out: _Arr[_F],
                   nthreads: int,
    stream: bool = ...) -> None: ...
def chans_normalize(x: _Arr[_F], mean: _F64, alpha: _F64, beta: _F64, out: _Arr[_F],
                    nthreads: int,
    stream: bool = ...) -> None: ...
def rows_backward(x: _Arr[_F], dout: _Arr[_F], gamma: _Arr[_F], mean: _F64,
                  invstd: _F64, train: bool, dx: _Arr[_F], dgamma: _Arr[_F],
                  dbeta: _Arr[_F], nthreads: int,
    stream: bool = ...) -> None: ...
def chans_backward(x: _Arr[_F], dout: _Arr[_F], gamma: _Arr[_F], mean: _F64,
                   invstd: _F64, train: bool, dx: _Arr[_F], dgamma: _Arr[_F],
                   dbeta: _Arr[_F], nthreads: int,
    stream: bool = ...) -> None: ...
def cpu_has_avx2_fma() -> bool: ...
def cpu_has_avx512() -> bool: ...
def cpu_amd_family() -> int: ...
def kernel_isa() -> str: ...
def plain_batchnorm_forward(x: object, gamma: object, beta: object, bn_param: object,
                            policy: tuple) -> tuple | None: ...
def plain_batchnorm_backward(dout: object, cache: object,
                             policy: tuple) -> tuple | None: ...
