# cython: language_level=3
"""The kernels of ``_moments.pyx``, compiled with AVX-512 (F, BW, VL, DQ), AVX2 and FMA.

setup.py adds the flags for this module only (``ISA_VARIANTS``);
:mod:`fastbn._dispatch` imports it only when the CPU has those features.
"""
include "_moments.pyx"
