"""Type stub for ``_moments_avx2``: the same kernels as ``_moments`` (one source, AVX2 flags)."""
from ._moments import *
