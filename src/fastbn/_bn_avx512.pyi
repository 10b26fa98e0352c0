"""Type stub for ``_bn_avx512``: the same kernels as ``_bn`` (one source, AVX-512 flags)."""
from ._bn import *
