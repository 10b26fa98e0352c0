"""``fastbn.show_config()``: what this installed build of fastbn is and does.

The build facts (compiler, instruction sets, OpenMP) are read from the
compiled ``_buildinfo`` module, i.e. from the binary itself, not from what
setup.py meant to do; which build of the batch-norm kernels runs (baseline
or AVX2+FMA) from :mod:`fastbn.compiled`, which picked it at import.  The
CPU facts come from NumPy's own feature detection, so they are the same on
Linux, macOS and Windows.
"""
import importlib.util
import platform
import sys

import numpy as np

from . import _buildinfo, compiled
from ._alloc import buffer_cache_info
from ._config import get_num_threads, openmp_enabled
from ._threads import omp_max_threads
from ._version import __version__

# _OPENMP dates -> specification versions
_OPENMP_VERSIONS = {
    200203: "2.0", 200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0",
    201511: "4.5", 201811: "5.0", 202011: "5.1", 202111: "5.2", 202411: "6.0",
}

# CPU features worth reporting, in NumPy's spelling
_CPU_FEATURES = ["SSE2", "SSE3", "SSE41", "SSE42", "POPCNT", "AVX", "F16C", "FMA3",
                 "AVX2", "AVX512F", "AVX512_SKX", "NEON", "ASIMD", "SVE"]


def _isa_level(machine, isa):
    """A name for the instruction-set level a module was compiled for."""
    have = set(isa)
    if machine.lower() in ("x86_64", "amd64"):
        if "AVX512F" in have:
            return "x86-64-v4 (AVX-512)"
        if {"AVX2", "FMA"} <= have:
            return "x86-64-v3 (AVX2, FMA)"
        if {"SSE4.2", "POPCNT"} <= have:
            return "x86-64-v2 (SSE4.2, POPCNT)"
        return "x86-64 baseline (SSE2)"
    if machine.lower() in ("aarch64", "arm64"):
        return "armv8-a baseline (NEON)"
    return f"{machine} compiler default"


def _cpu_features():
    """Features of the running CPU as NumPy detected them (empty if unknown)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            return []
    return [f for f in _CPU_FEATURES if feats.get(f)]


def _config():
    machine = platform.machine()
    isa = _buildinfo.isa()
    omp = _buildinfo.openmp_version()
    return {
        "fastbn": {"version": __version__, "path": __file__.rsplit("_showconfig", 1)[0]},
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "platform": sys.platform, "machine": machine},
        "numpy": {"version": np.__version__},
        "build": {
            "compiler": _buildinfo.compiler(),
            "isa_level": _isa_level(machine, isa),
            "isa_macros": isa,
            # batch-norm kernels: the builds installed, and the one in use
            "kernel_builds": ["baseline"] + [isa for isa in ("avx2", "avx512")
                                             if importlib.util.find_spec(f"fastbn._bn_{isa}")],
            "kernels": compiled.KERNEL_ISA,
            "compile_command": _buildinfo.compile_command(),
            "extra_compile_args": _buildinfo.extra_compile_args(),
        },
        "openmp": {
            "enabled": openmp_enabled(),
            "version": _OPENMP_VERSIONS.get(omp, str(omp)) if omp else None,
            "omp_max_threads": omp_max_threads(),
        },
        "threads": get_num_threads(),
        "buffer_cache": buffer_cache_info(),
        "cpu_features": _cpu_features(),
    }


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


def show_config(mode: str = "stdout") -> "dict | None":
    """Show how this installed fastbn was built and how it will run.

    Reports the version, the compiler and the instruction-set level the
    baseline was compiled for (read from the binary), which build of the
    batch-norm kernels runs (``'baseline'``, ``'avx2'`` or ``'avx512'``), whether OpenMP is
    compiled in, the thread count a large kernel call will use, what the
    buffer cache of freed outputs holds, the NumPy version and the running
    CPU's features.  ``fastbn info`` prints the same.

    Parameters
    ----------
    mode : {'stdout', 'dicts'}, optional
        ``'stdout'`` (default) prints a report; ``'dicts'`` returns it as a
        nested dict instead.

    Returns
    -------
    dict or None
        The report when ``mode='dicts'``, else None.

    Raises
    ------
    ValueError
        If ``mode`` is not ``'stdout'`` or ``'dicts'``.

    Examples
    --------
    >>> import fastbn
    >>> cfg = fastbn.show_config("dicts")
    >>> cfg["build"]["kernels"] in ("baseline", "avx2", "avx512")
    True
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    cfg = _config()
    if mode == "dicts":
        return cfg
    b, o, bc = cfg["build"], cfg["openmp"], cfg["buffer_cache"]
    omp = f"yes (OpenMP {o['version']})" if o["enabled"] else "no (serial build)"
    lines = [
        f"fastbn {cfg['fastbn']['version']}  ({cfg['fastbn']['path']})",
        f"python:        {cfg['python']['version']} on {cfg['python']['platform']} "
        f"{cfg['python']['machine']}",
        f"numpy:         {cfg['numpy']['version']}",
        f"compiler:      {b['compiler']}",
        f"baseline ISA:  {b['isa_level']}; macros: {' '.join(b['isa_macros']) or '-'}",
        f"kernels:       {b['kernels']} build in use (installed: {', '.join(b['kernel_builds'])}; "
        f"FASTBN_KERNELS picks)",
        f"compile:       {b['compile_command']}",
        f"fastbn flags:  {b['extra_compile_args']}",
        f"OpenMP:        {omp}",
        f"threads:       {cfg['threads']}",
        f"buffer cache:  {_mib(bc['bytes'])} in {bc['blocks']} freed outputs kept, limit "
        f"{_mib(bc['limit'])} (fastbn.set_buffer_cache, FASTBN_BUFFER_CACHE)",
        f"CPU features:  {' '.join(cfg['cpu_features']) or 'unknown'}",
    ]
    print("\n".join(lines))
    return None
