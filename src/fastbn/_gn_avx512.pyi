"""Type stub for ``_gn_avx2``: the same kernels as ``_gn`` (one source, AVX2 flags)."""
from ._gn import *
