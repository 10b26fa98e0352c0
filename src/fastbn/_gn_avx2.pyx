# cython: language_level=3
"""The group-norm kernels of ``_gn.pyx``, compiled with AVX2 and FMA.

setup.py adds the AVX2 flags for this module only (``ISA_VARIANTS``), as
for ``_bn_avx2``; :mod:`fastbn.compiled_gn` loads it exactly when
:mod:`fastbn.compiled` runs the AVX2 build.
"""
include "_gn.pyx"
