# cython: language_level=3
"""The batch-norm kernels of ``_bn.pyx``, compiled with AVX2 and FMA.

setup.py adds ``-mavx2 -mfma`` (``/arch:AVX2``) for this module only;
:mod:`fastbn._dispatch` imports it only when ``_bn.cpu_has_avx2_fma()`` says
the CPU can run it.  Same source, so the same tests cover both builds.
"""
include "_bn.pyx"
