# cython: language_level=3
"""The group-norm kernels of ``_gn.pyx``, compiled with AVX-512 (F, BW, VL, DQ), AVX2 and FMA.

setup.py adds the flags for this module only (``ISA_VARIANTS``), as for
``_bn_avx512``; :mod:`fastbn.compiled_gn` loads it exactly when
:mod:`fastbn.compiled` runs the AVX-512 build.
"""
include "_gn.pyx"
