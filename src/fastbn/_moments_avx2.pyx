# cython: language_level=3
"""The split-up kernels of ``_moments.pyx``, compiled with AVX2 and FMA.

setup.py adds the AVX2 flags for this module only (``ISA_VARIANTS``), as
for ``_bn_avx2``; :mod:`fastbn.moments` loads it exactly when
:mod:`fastbn.compiled` runs the AVX2 build, so the pieces and the fused
kernels always come from builds of the same instruction set.
"""
include "_moments.pyx"
