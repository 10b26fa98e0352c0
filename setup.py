"""Build the Cython kernels, with OpenMP when the compiler has it."""
import glob
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


class BuildExt(build_ext):
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
        super().build_extensions()


def _ext(name):
    return Extension(
        f"fastbn.{name}",
        [f"src/fastbn/{name}.pyx"],
        depends=glob.glob("src/fastbn/*.pxd"),
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


setup(
    ext_modules=cythonize(
        # every .pyx under src/fastbn is one extension module
        [_ext(os.path.splitext(os.path.basename(p))[0])
         for p in sorted(glob.glob("src/fastbn/*.pyx"))],
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
