# cython: language_level=3
"""How this binary was compiled, as the compiler itself saw it.

The instruction sets come from the compiler's predefined macros (``__AVX2__``
and friends), so they describe the machine code actually shipped, whatever
setup.py intended.  setup.py compiles every ``.pyx`` with the same flags, so
this module speaks for all the kernel modules.  The flags themselves come
from ``fastbn_build_flags.h``, which setup.py writes into its build
directory just before compiling.
"""

cdef extern from "fastbn_build_flags.h":
    const char* FASTBN_BUILD_COMPILER_CMD
    const char* FASTBN_BUILD_EXTRA_ARGS

cdef extern from *:
    """
    #define FASTBN_STR2(x) #x
    #define FASTBN_STR(x) FASTBN_STR2(x)
    #if defined(__clang__)
    static const char fastbn_compiler_id[] = "clang " __clang_version__;
    #elif defined(__GNUC__)
    static const char fastbn_compiler_id[] = "gcc " __VERSION__;
    #elif defined(_MSC_VER)
    static const char fastbn_compiler_id[] = "msvc " FASTBN_STR(_MSC_FULL_VER);
    #else
    static const char fastbn_compiler_id[] = "unknown";
    #endif

    /* MSVC on x64 implies SSE2 without defining __SSE2__. */
    static const char fastbn_isa_macros[] = ""
    #if defined(__SSE2__) || defined(_M_X64)
        " SSE2"
    #endif
    #if defined(__SSE3__)
        " SSE3"
    #endif
    #if defined(__SSSE3__)
        " SSSE3"
    #endif
    #if defined(__SSE4_1__)
        " SSE4.1"
    #endif
    #if defined(__SSE4_2__)
        " SSE4.2"
    #endif
    #if defined(__POPCNT__)
        " POPCNT"
    #endif
    #if defined(__AVX__)
        " AVX"
    #endif
    #if defined(__FMA__)
        " FMA"
    #endif
    #if defined(__AVX2__)
        " AVX2"
    #endif
    #if defined(__AVX512F__)
        " AVX512F"
    #endif
    #if defined(__ARM_NEON) || defined(__ARM_NEON__)
        " NEON"
    #endif
    #if defined(__ARM_FEATURE_SVE)
        " SVE"
    #endif
        ;

    #ifdef _OPENMP
    static const int fastbn_openmp_version = _OPENMP;
    #else
    static const int fastbn_openmp_version = 0;
    #endif
    """
    const char* fastbn_compiler_id
    const char* fastbn_isa_macros
    const int fastbn_openmp_version


def compiler():
    """The compiler and its version, e.g. ``'gcc 12.2.0'``."""
    return fastbn_compiler_id.decode("ascii", "replace")


def isa():
    """Instruction-set extensions the compiler was allowed to emit, e.g. ``['SSE2']``."""
    return fastbn_isa_macros.decode("ascii").split()


def openmp_version():
    """The ``_OPENMP`` date (e.g. 201511 for OpenMP 4.5), or 0 in a serial build."""
    return fastbn_openmp_version


def compile_command():
    """The compiler command line setuptools used, before fastbn's own arguments."""
    return FASTBN_BUILD_COMPILER_CMD.decode("utf-8", "replace")


def extra_compile_args():
    """The arguments fastbn's setup.py added (optimization, OpenMP)."""
    return FASTBN_BUILD_EXTRA_ARGS.decode("utf-8", "replace")
