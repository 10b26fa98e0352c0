"""Build the Cython kernels, with OpenMP when the compiler has it."""
import glob
import json
import os
import sys
import tempfile
import textwrap

import numpy as np
from Cython import Tempita
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Flags that let GCC/Clang vectorize our float64 reductions: reassociating
# sums changes rounding order only (no finite-math or no-NaN assumption), and
# we accumulate in float64, so accuracy is unaffected.  No -march=native: a
# wheel must run on every x86-64 CPU NumPy supports.
UNIX_OPT = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
            "-fassociative-math"]


def _compiler_has_openmp(compiler, compile_flags, link_flags):
    """Compile and link a tiny OpenMP shared object the way the extensions are.

    The object is linked by the same command that links the extensions (which
    carries ``CFLAGS`` and ``LDFLAGS``, e.g. ``-fsanitize=address``), so flags
    that need their own runtime do not make the probe fail where the real
    build would work.  Returns ``(ok, reason)``.
    """
    src = textwrap.dedent("""
        #include <omp.h>
        int fastbn_omp_probe(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return n + omp_get_max_threads();
        }
    """)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "omp_probe.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=compile_flags)
            compiler.link_shared_object(objs, os.path.join(tmp, "omp_probe.so"),
                                        extra_postargs=link_flags)
        except Exception as exc:  # noqa: BLE001 - CompileError, LinkError, CalledProcessError
            return False, str(exc) or type(exc).__name__
    return True, ""


def _openmp_link_flags(default):
    """Link flags for the OpenMP runtime.

    ``FASTBN_LIBOMP_DIR`` names a directory holding LLVM's ``libomp.so``: the
    kernels are still compiled by the same compiler with ``-fopenmp`` (GCC's
    code calls the ``GOMP_*`` entry points, which libomp exports) but linked
    against libomp instead of libgomp.  The release wheels do this, because
    libomp re-creates its threads in a forked child and can be built for old
    glibc.
    """
    libomp_dir = os.environ.get("FASTBN_LIBOMP_DIR", "")
    if not libomp_dir:
        return default
    if not os.path.exists(os.path.join(libomp_dir, "libomp.so")):
        sys.exit(f"fastbn: FASTBN_LIBOMP_DIR={libomp_dir!r} holds no libomp.so")
    return [f"-L{libomp_dir}", "-lomp"]


# FASTBN_PY_LIMITED_API=cp311 builds every module for the stable ABI of
# CPython 3.11+ (one cp311-abi3 wheel for all later versions).  Cython needs
# 3.11's limited API for buffers (Py_buffer), so cp311 is the oldest tag.
LIMITED_API = os.environ.get("FASTBN_PY_LIMITED_API", "")
if LIMITED_API and LIMITED_API != "cp311":
    sys.exit(f"fastbn: FASTBN_PY_LIMITED_API must be 'cp311' (or empty), got {LIMITED_API!r}")


# Kernel modules compiled again for wider x86-64 instruction sets: AVX2 and
# FMA (Haswell, 2013, and later) and AVX-512 F/BW/VL/DQ (Skylake-SP, Zen 4).
# Same source, wider vectors.  The baseline module stays plain x86-64 and
# fastbn._dispatch loads a variant only when the running CPU has its
# features, so every wheel still runs everywhere.  A kernel module "_name"
# may have the variants "_name_avx2" and "_name_avx512": thin .pyx files
# that include "_name.pyx" (a variant without its .pyx is not built).
ISA_FLAGS = {
    "avx2": {"unix": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]},
    "avx512": {"unix": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2",
                        "-mprefer-vector-width=512"],
               "msvc": ["/arch:AVX512"]},
}
KERNEL_MODULES = ("_bn", "_moments", "_ln", "_gn")
ISA_VARIANTS = {f"{mod}_{isa}": flags for mod in KERNEL_MODULES for isa, flags in ISA_FLAGS.items()}


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
        omp_l = _openmp_link_flags(omp_l)
        use_omp = os.environ.get("FASTBN_DISABLE_OPENMP", "") in ("", "0")
        if use_omp:
            use_omp, why = _compiler_has_openmp(self.compiler, omp_c, omp_l)
            if not use_omp:
                msg = ("fastbn: WARNING: the OpenMP probe failed to compile and link with "
                       f"{' '.join(omp_c + omp_l)} (plus CFLAGS/LDFLAGS): {why}")
                if os.environ.get("FASTBN_REQUIRE_OPENMP", "") not in ("", "0"):
                    sys.exit(msg + "\nfastbn: FASTBN_REQUIRE_OPENMP is set: stopping")
                print(msg, file=sys.stderr)
        if not use_omp:
            print("fastbn: WARNING: building WITHOUT OpenMP (kernels run serially)",
                  file=sys.stderr)
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


# The kernels' C headers (src/fastbn/include/fastbn) and their Cython
# declarations are written once for float and double as Tempita templates
# (*.tp) and rendered next to them here, before Cython runs.  Rendered
# headers carry #line directives, so compiler errors and debuggers point at
# the template.
INCLUDE = "src/fastbn/include"


def _render(template):
    target = template[:-3]
    lines = open(template).read().split("\n")
    if target.endswith(".h"):
        # each function's first line says where it comes from; the template
        # loops repeat whole functions, so the lines below it follow on
        lines = [f'#line {i + 1} "{template}"\n{line}' if line.startswith("static ") else line
                 for i, line in enumerate(lines)]
    text = Tempita.Template("\n".join(lines), name=template).substitute()
    note = "/* Rendered from {} by setup.py: edit the template. */\n" if target.endswith(".h") \
        else "# Rendered from {} by setup.py: edit the template.\n"
    text = note.format(os.path.basename(template)) + text
    old = open(target).read() if os.path.exists(target) else None
    if old != text:         # rewrite only on change, so rebuilds stay incremental
        with open(target, "w") as f:
            f.write(text)
    return target


TEMPLATES = sorted(glob.glob("src/fastbn/*.pxd.tp") + glob.glob(f"{INCLUDE}/fastbn/*.h.tp"))
for _tp in TEMPLATES:
    _render(_tp)
HEADERS = sorted(glob.glob(f"{INCLUDE}/fastbn/*.h"))


def _ext(name):
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if LIMITED_API:
        macros.append(("Py_LIMITED_API", "0x030B0000"))
    return Extension(
        f"fastbn.{name}",
        [f"src/fastbn/{name}.pyx"],
        depends=glob.glob("src/fastbn/*.pxd") + HEADERS + TEMPLATES,
        include_dirs=[INCLUDE, np.get_include()],
        define_macros=macros,
        py_limited_api=bool(LIMITED_API),
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
    options={"bdist_wheel": {"py_limited_api": LIMITED_API}} if LIMITED_API else {},
)
