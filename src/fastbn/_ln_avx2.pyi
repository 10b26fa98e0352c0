"""Type stub for ``_ln_avx2``: the same kernels as ``_ln`` (one source, AVX2 flags)."""
from ._ln import *
