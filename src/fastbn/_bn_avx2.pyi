"""Type stub for ``_bn_avx2``: the same kernels as ``_bn`` (one source, AVX2 flags)."""
from ._bn import *
