"""Type stub for ``_moments_avx512``: the same kernels as ``_moments`` (one source, AVX-512 flags)."""
from ._moments import *
