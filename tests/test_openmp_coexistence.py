"""fastbn's OpenMP runtime next to the other thread pools of a NumPy process.

PyTorch and scikit-learn bring GNU libgomp, NumPy brings OpenBLAS's threads;
the release wheels bring LLVM's libomp.  In one process, in either import
order, every library computes right and none aborts.  A second live copy of
the LLVM runtime would abort the process (``OMP: Error #15``): fastbn raises
an ImportError that names it instead.  Each scenario runs in a subprocess
under a timeout (an abort or a hang must fail the test, not the suite).
"""
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fastbn
from fastbn import _openmp_runtime

TIMEOUT = 300

WORK = textwrap.dedent("""
    import numpy as np
    from fastbn import reference
    from threadpoolctl import threadpool_info

    def use_fastbn():
        fastbn.set_num_threads(2)
        x = np.random.default_rng(1).standard_normal((512, 1024))
        g, b = np.ones(1024), np.zeros(1024)
        out, _ = fastbn.batchnorm_forward(x, g, b, {"mode": "train"})
        want, _ = reference.batchnorm_forward(x, g, b, {"mode": "train"})
        assert np.allclose(out, want, atol=1e-12), "fastbn differs from the reference"

    def use_numpy():                      # OpenBLAS (or whatever BLAS NumPy has)
        a = np.random.default_rng(2).standard_normal((400, 400))
        assert np.allclose(a @ np.linalg.inv(a), np.eye(400), atol=1e-8)

    def use_sklearn():                    # KMeans' Lloyd iterations: OpenMP prange
        from sklearn.cluster import KMeans
        x = np.concatenate([np.random.default_rng(3).standard_normal((2000, 4)) + c
                            for c in (0, 20)])
        km = KMeans(2, n_init=1, random_state=0).fit(x)
        assert sorted(np.bincount(km.labels_)) == [2000, 2000]

    def use_torch():
        import torch
        torch.set_num_threads(2)
        a = torch.randn(300, 300, dtype=torch.float64)
        got = torch.nn.functional.batch_norm(a, None, None, training=True, eps=1e-5)
        want, _ = reference.batchnorm_forward(a.numpy(), np.ones(300), np.zeros(300),
                                              {"mode": "train", "eps": 1e-5})
        assert np.allclose(got.numpy(), want, atol=1e-10)

    def run_all(libs):
        for lib in libs:
            globals()["use_" + lib]()
        for lib in libs:                  # and again, every pool already started
            globals()["use_" + lib]()
        pools = sorted({(p["internal_api"], os.path.basename(p["filepath"]))
                        for p in threadpool_info()})
        print("pools:", pools)
""")


def _run(code, timeout=TIMEOUT, env=None):
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, **(env or {}))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"no answer within {timeout} s")
    return proc.returncode, stdout, stderr


LIBS = ["numpy"] + [n for n in ("sklearn", "torch") if importlib.util.find_spec(n)]


@pytest.mark.skipif(importlib.util.find_spec("threadpoolctl") is None,
                    reason="threadpoolctl (a scikit-learn dependency) not installed")
@pytest.mark.parametrize("fastbn_first", [True, False], ids=["fastbn_first", "fastbn_last"])
def test_fastbn_beside_torch_sklearn_openblas(fastbn_first):
    others = [n for n in LIBS if n != "numpy"]
    imports = ["import fastbn"] + [f"import {n}" for n in others]
    if not fastbn_first:
        imports = imports[1:] + imports[:1]
    order = (["fastbn"] + LIBS) if fastbn_first else (LIBS + ["fastbn"])
    code = "import os\n" + "\n".join(imports) + "\n" + WORK + f"\nrun_all({order!r})\nprint('done')\n"
    rc, out, err = _run(code)
    assert rc == 0, f"exit {rc}: {err[-3000:]}"
    assert out.strip().endswith("done"), out
    if fastbn.openmp_enabled() and _openmp_runtime.RUNTIME_PATH:
        # threadpoolctl sees fastbn's runtime among the process's pools
        assert os.path.basename(_openmp_runtime.RUNTIME_PATH) in out, out


def test_runtime_is_known():
    """On Linux the kernels' OpenMP runtime is found and classified."""
    if not sys.platform.startswith("linux") or not fastbn.openmp_enabled():
        pytest.skip("runtime lookup is Linux-only; serial builds have none")
    assert os.path.isfile(_openmp_runtime.RUNTIME_PATH), _openmp_runtime.RUNTIME_PATH
    assert _openmp_runtime.RUNTIME_FAMILY in ("llvm", "gnu")
    # the family follows the library's own entry points, not its file name
    name = os.path.basename(_openmp_runtime.RUNTIME_PATH)
    if name.startswith("libgomp"):
        assert _openmp_runtime.RUNTIME_FAMILY == "gnu"
    if name.startswith(("libomp", "libiomp")):
        assert _openmp_runtime.RUNTIME_FAMILY == "llvm"
    assert _openmp_runtime.other_llvm_runtime() == ""


@pytest.mark.skipif(_openmp_runtime.RUNTIME_FAMILY != "llvm",
                    reason="fastbn runs on GNU libgomp here: no second libomp can clash")
def test_second_libomp_gives_importerror_not_abort(tmp_path):
    # a second, distinct copy of the runtime, started before fastbn is imported; its
    # SONAME changed (same length), or the loader would hand fastbn that same copy
    other = tmp_path / "libomp-other.so"
    name = os.path.basename(_openmp_runtime.RUNTIME_PATH).encode()
    with open(_openmp_runtime.RUNTIME_PATH, "rb") as f:
        data = f.read()
    assert data.count(name) == 1, "the SONAME string is not unique in the library"
    other.write_bytes(data.replace(name, b"X" + name[1:]))
    # control: the two copies, both started, abort the process (what fastbn prevents)
    control = textwrap.dedent(f"""
        import ctypes
        ctypes.CDLL({str(other)!r}).omp_get_max_threads()
        ctypes.CDLL({_openmp_runtime.RUNTIME_PATH!r}).omp_get_max_threads()
    """)
    rc, out, err = _run(control, env={"KMP_DUPLICATE_LIB_OK": ""})
    assert rc != 0 and "Error #15" in err, (rc, err[-2000:])
    code = textwrap.dedent(f"""
        import ctypes
        import numpy as np
        lib = ctypes.CDLL({str(other)!r})
        assert lib.omp_get_max_threads() > 0          # registers that runtime
        try:
            import fastbn
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            x = np.random.default_rng(0).standard_normal((8, 3))
            fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), {{"mode": "train"}})
            print("imported")
    """)
    rc, out, err = _run(code, env={"KMP_DUPLICATE_LIB_OK": ""})
    assert rc == 0, f"exit {rc} (an abort?): {err[-2000:]}"
    assert "ImportError:" in out, out
    assert "libomp-other.so" in out and "KMP_DUPLICATE_LIB_OK" in out, out
    # the user's explicit choice is honoured: no error, and the kernels work
    rc, out, err = _run(code, env={"KMP_DUPLICATE_LIB_OK": "TRUE"})
    assert rc == 0 and out.strip().endswith("imported"), (out, err[-2000:])
