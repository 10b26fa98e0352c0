"""Type stub for ``_ln_avx512``: the same kernels as ``_ln`` (one source, AVX-512 flags)."""
from ._ln import *
