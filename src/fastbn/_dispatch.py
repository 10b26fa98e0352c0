"""Which build of the kernel modules this process runs.

Each kernel module (``_bn``, ``_moments``, ``_ln``) is compiled once per
instruction set: ``fastbn._bn`` for any CPU the wheel supports,
``fastbn._bn_avx2`` with AVX2 and FMA, ``fastbn._bn_avx512`` with AVX-512
F/BW/VL/DQ as well.  The choice is made once, here, from
the running CPU's features and ``FASTBN_KERNELS``; every module then loads
its build of that instruction set through :func:`matching_build`, so the
fused kernels and the split-up pieces always compute with the same
instructions (and give the same bits).
"""
import importlib
import os

from . import _bn as _bn_baseline

KERNEL_BUILDS = ("auto", "baseline", "avx2", "avx512")

# What ``auto`` takes, widest first, when the CPU runs it and it is
# installed.  The AVX-512 build where it measured faster: on Zen 5 (AMD
# family 26, full-width 512-bit units) it ran 39 of 56 benchmark cells more
# than 5 % faster than the AVX2 build, the geometric mean of the best calls
# 1.10x, of the medians 1.07x (fastbn bench --kernels avx512, 2 threads).
# Elsewhere AVX2: on Zen 4, which splits a 512-bit operation in two, its
# layer-norm and group-norm backwards ran 5-25 % slower, and on a Xeon
# (Sapphire Rapids class) its layer-norm backward of short rows was slower.
# Every module runs the one build chosen here.
_AVX512_FIRST_AMD_FAMILY = 26


def _isa_order():
    if _bn_baseline.cpu_amd_family() >= _AVX512_FIRST_AMD_FAMILY:
        return ("avx512", "avx2")
    return ("avx2",)


def cpu_supports(isa):
    """Can the running CPU (and OS) execute the kernels built for ``isa``?

    Asked before importing a build: loading a module compiled for a wider
    instruction set than the CPU has dies of SIGILL.
    """
    if isa == "baseline":
        return True
    if isa == "avx2":
        return bool(_bn_baseline.cpu_has_avx2_fma())
    if isa == "avx512":
        return bool(_bn_baseline.cpu_has_avx512())
    return False


def _load(name, isa):
    """``fastbn.<name>`` built for ``isa``, or None when it is not installed
    or was compiled without that instruction set (a non-x86 compiler)."""
    if isa == "baseline":
        return importlib.import_module(f"fastbn.{name}")
    try:
        mod = importlib.import_module(f"fastbn.{name}_{isa}")
    except ImportError:
        return None
    return mod if mod.kernel_isa() == isa else None


def _select_kernels():
    """The instruction set of the fastest kernel build this CPU can execute.

    ``FASTBN_KERNELS=baseline`` (or ``avx2``, ``avx512``) forces one, e.g. to compare
    them, and is an error when the CPU or the installation lacks it;
    ``auto`` (the default) takes the AVX-512 build on CPUs where it measured
    faster (AMD Zen 5 and later), else the AVX2 build, if the CPU runs it and
    the installation has it, else the baseline.
    """
    want = os.environ.get("FASTBN_KERNELS", "").strip().lower() or "auto"
    if want not in KERNEL_BUILDS:
        raise ValueError(f"FASTBN_KERNELS must be one of {', '.join(KERNEL_BUILDS)}, "
                         f"got {want!r}")
    if want != "auto":
        if want != "baseline" and not (cpu_supports(want) and _load("_bn", want)):
            raise RuntimeError(f"FASTBN_KERNELS={want}, but this CPU or installation "
                               f"has no {want} kernels")
        return want
    for isa in _isa_order():
        if cpu_supports(isa) and _load("_bn", isa) is not None:
            return isa
    return "baseline"


# the instruction set every kernel module of this process is loaded for
KERNEL_ISA = _select_kernels()


def matching_build(name):
    """The build of kernel module ``name`` (``"_bn"``, ``"_moments"``, ``"_ln"``,
    ``"_gn"``) for :data:`KERNEL_ISA`, or the widest narrower one installed."""
    order = ("avx512", "avx2", "baseline")
    for isa in order[order.index(KERNEL_ISA):]:
        mod = _load(name, isa)
        if mod is not None:
            return mod
    raise ImportError(f"fastbn.{name} is not installed")
