"""Build the Cython kernels, with OpenMP when the compiler has it."""
import glob
import json
import os
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Flags that let GCC/Clang vectorize our float64 reductions: reassociating
# sums changes rounding order only (no finite-math or no-NaN assumption), and
# we accumulate in float64, so accuracy is unaffected.  No -march=native: a
# wheel must run on every x86-64 CPU NumPy supports.
UNIX_OPT = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
            "-fassociative-math"]


def _compiler_has_openmp(compiler, flags):
    """Try to compile and link a tiny OpenMP program."""
    src = textwrap.dedent("""
        #include <omp.h>
        int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
    """)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "omp_test.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "omp_test"),
                                     extra_postargs=flags)
        except Exception:
            return False
    return True


# Kernel modules compiled a second time for x86-64 CPUs with AVX2 and FMA
# (Haswell, 2013, and later): same source, wider vectors.  The baseline
# module stays plain x86-64 and fastbn.compiled loads the variant only when
# the running CPU has both features, so every wheel still runs everywhere.
ISA_VARIANTS = {"_bn_avx2": {"unix": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]},
                "_moments_avx2": {"unix": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]},
                "_ln_avx2": {"unix": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]},
                "_gn_avx2": {"unix": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]}}


def _compiler_accepts(compiler, flags):
    """Can the compiler build a trivial file with these flags (e.g. -mavx2 on x86)?"""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "isa_test.c")
        with open(path, "w") as f:
            f.write("int fastbn_isa_test(int x) { return x + 1; }\n")
        try:
            compiler.compile([path], output_dir=tmp, extra_postargs=flags)
        except Exception:
            return False
    return True


# Parallel Cython and C compilation (pip and `python -m build` give no -j).
# Not on Windows, where multiprocessing would re-run this file in each worker.
JOBS = 1 if sys.platform == "win32" else int(os.environ.get("FASTBN_BUILD_JOBS", 0)) or \
    os.cpu_count() or 1


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None and JOBS > 1:
            self.parallel = JOBS

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        if ctype == "msvc":
            opt, omp_c, omp_l = ["/O2", "/fp:fast"], ["/openmp"], []
        else:
            opt, omp_c, omp_l = list(UNIX_OPT), ["-fopenmp"], ["-fopenmp"]
            if sys.platform == "darwin":
                omp_c, omp_l = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
        use_omp = os.environ.get("FASTBN_DISABLE_OPENMP", "") in ("", "0") and \
            _compiler_has_openmp(self.compiler, omp_c + omp_l)
        if not use_omp:
            print("fastbn: building WITHOUT OpenMP (kernels run serially)")
        for ext in self.extensions:
            ext.extra_compile_args = opt + (omp_c if use_omp else []) + ext.extra_compile_args
            ext.extra_link_args = (omp_l if use_omp else []) + ext.extra_link_args
            variant = ISA_VARIANTS.get(ext.name.rsplit(".", 1)[-1])
            if variant:
                isa = variant["msvc" if ctype == "msvc" else "unix"]
                # not an x86 target (arm64...): a plain duplicate that is never loaded
                if _compiler_accepts(self.compiler, isa):
                    ext.extra_compile_args = ext.extra_compile_args + isa
        self._write_flags_header(opt + (omp_c if use_omp else []))
        super().build_extensions()

    def _write_flags_header(self, extra):
        """Record the compile flags in a header that _buildinfo.pyx includes.

        A header in the build directory (not a macro on the command line)
        keeps quoting out of the picture on every compiler, including MSVC.
        """
        base = getattr(self.compiler, "compiler_so", None) or \
            getattr(self.compiler, "compile_options", None) or []
        text = (f"#define FASTBN_BUILD_COMPILER_CMD {json.dumps(' '.join(base))}\n"
                f"#define FASTBN_BUILD_EXTRA_ARGS {json.dumps(' '.join(extra))}\n")
        os.makedirs(self.build_temp, exist_ok=True)
        path = os.path.join(self.build_temp, "fastbn_build_flags.h")
        old = open(path).read() if os.path.exists(path) else None
        if old != text:         # rewrite only on change, so rebuilds stay incremental
            with open(path, "w") as f:
                f.write(text)
        for ext in self.extensions:
            ext.include_dirs.append(self.build_temp)
            ext.depends.append(path)


def _ext(name):
    return Extension(
        f"fastbn.{name}",
        [f"src/fastbn/{name}.pyx"],
        depends=glob.glob("src/fastbn/*.pxd") + glob.glob("src/fastbn/include/fastbn/*.h"),
        include_dirs=[np.get_include(), "src/fastbn/include"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


setup(
    ext_modules=cythonize(
        # every .pyx under src/fastbn is one extension module
        [_ext(os.path.splitext(os.path.basename(p))[0])
         for p in sorted(glob.glob("src/fastbn/*.pyx"))],
        nthreads=JOBS if JOBS > 1 else 0,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
