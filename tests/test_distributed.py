"""Synchronized batch norm: launch tests/mpi_cases.py under ``mpirun -n K``.

The equivalence checks themselves live in ``mpi_cases.py`` and run inside
every rank.  Here a plain pytest run starts them for 1 to 4 processes and
asserts they all passed.  Skipped, with the reason shown, only when no
``mpirun`` or no mpi4py is installed (``.ci/run`` installs both).
"""
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None

needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not HAVE_MPI4PY,
    reason="MPI tests need `mpirun` (apt-get install openmpi-bin libopenmpi-dev) and "
           f"mpi4py (pip install mpi4py); found mpirun={MPIRUN}, mpi4py={HAVE_MPI4PY}")


def mpirun_command(n):
    """``mpirun -n n`` with the flags this machine needs (Open MPI on 2 cores)."""
    cmd = [MPIRUN, "-n", str(n)]
    version = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        cmd.append("--oversubscribe")        # more ranks than cores is fine for tests
    return cmd


def mpi_env():
    env = dict(os.environ)
    # Open MPI refuses to start as root without these (CI runs as root).
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # One kernel thread per rank: the ranks already share the cores.
    env["OMP_NUM_THREADS"] = "1"
    env["FASTBN_NUM_THREADS"] = "1"
    # Run the same fastbn as this process, installed or from the source tree.
    import fastbn
    pkg_root = str(Path(fastbn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_cases(nprocs, select, timeout):
    """``mpirun -n nprocs python -m pytest mpi_cases.py -k select``; asserts all passed."""
    cmd = mpirun_command(nprocs) + [
        sys.executable, "-m", "pytest", "-q", "--color=no", "-p", "no:cacheprovider",
        "-o", "addopts=", "-k", select, str(HERE / "mpi_cases.py")]
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, env=mpi_env(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpirun -n {nprocs} timed out after {timeout} s (a rank waiting in a "
                    f"collective?)\n{exc.stdout or ''}\n{exc.stderr or ''}")
    report = f"$ {' '.join(cmd)}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    # Every rank ran the cases and none was skipped (a skip would hide a broken
    # mpi4py).  Ranks share stdout, so their summary lines may interleave.
    summaries = re.findall(r"(\d+) passed", proc.stdout)
    assert len(summaries) == nprocs and len(set(summaries)) == 1, report
    assert not re.search(r"\d+ (failed|skipped|errors?|xfailed)", proc.stdout), report


@needs_mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_sync_batchnorm_under_mpirun(nprocs):
    run_cases(nprocs, "not fault", timeout=300)


# Ranks that disagree (features, dtype, mode, call) or fail validation alone:
# every case on its own mpirun, so a regression that hangs fails that case
# (rank watchdog after mpi_cases.FAULT_WATCHDOG s, then the subprocess timeout).
FAULT_CASES = [
    ("test_fault_forward_features_differ", 3),
    ("test_fault_forward_features_differ", 4),
    ("test_fault_backward_cache_features_differ", 2),
    ("test_fault_backward_cache_features_differ", 3),
    ("test_fault_invalid_argument_on_one_rank", 2),
    ("test_fault_invalid_argument_on_one_rank", 4),
    ("test_fault_invalid_arguments_on_two_ranks_report_both", 3),
    ("test_fault_dtype_differs_across_ranks", 3),
    ("test_fault_bn_param_differs", 3),
    ("test_fault_forward_on_some_ranks_backward_on_others", 2),
]


@needs_mpi
@pytest.mark.parametrize("case,nprocs", FAULT_CASES)
def test_disagreeing_ranks_raise_together(case, nprocs):
    run_cases(nprocs, case, timeout=150)


@needs_mpi
@pytest.mark.parametrize("case,launcher,expect", [
    # fastbn's own error is raised on every rank: the job ends without help
    ("features-differ", [], "RankMismatchError"),
    ("features-differ", ["-m", "mpi4py"], "RankMismatchError"),
    # an error inside the all-reduce itself: fastbn aborts the job (its own
    # line; Open MPI's MPI_ABORT banner is sometimes lost in the teardown)
    ("allreduce-fails", [], "aborting the MPI job"),
])
def test_uncaught_error_ends_the_job(case, launcher, expect):
    cmd = mpirun_command(3) + [sys.executable, *launcher, str(HERE / "mpi_cases.py"), case]
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, env=mpi_env(), capture_output=True,
                              text=True, timeout=150)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the job hung: {exc.stdout or ''}\n{exc.stderr or ''}")
    report = f"$ {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.returncode != 0, report
    assert "returned" not in proc.stdout, report
    assert expect in proc.stdout + proc.stderr, report


@needs_mpi
@pytest.mark.parametrize("nprocs,extra", [
    (3, ["--dtype", "float64", "--data", "synthetic", "--batch-size", "20",
         "--num-train", "200", "--hidden", "30,30,30", "--iters", "30"]),
    # more processes than minibatch rows: two of the four ranks get empty slices
    (4, ["--dtype", "float64", "--data", "synthetic", "--batch-size", "2",
         "--num-train", "50", "--hidden", "8,8", "--iters", "10"]),
    (2, ["--dtype", "float32", "--iters", "40"]),     # the depth net on digits
])
def test_ddp_example_loss_curve_matches_single_process(nprocs, extra):
    script = HERE.parent / "examples" / "ddp_depth.py"
    cmd = mpirun_command(nprocs) + [sys.executable, str(script), "--check"] + extra
    proc = subprocess.run(cmd, cwd=HERE.parent, env=mpi_env(), capture_output=True,
                          text=True, timeout=300)
    report = f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    assert "parameters identical on all processes" in proc.stdout, report
    assert "(OK," in proc.stdout, report


@needs_mpi
def test_experiment_depth_ranks_matches_single_process(tmp_path):
    """`fastbn experiment depth --ranks 3` relaunches itself under mpirun."""
    base = [sys.executable, "-m", "fastbn", "experiment", "depth", "--epochs", "1",
            "--num-train", "150", "--quiet"]
    runs = {}
    for ranks in (1, 3):
        out = tmp_path / f"ranks{ranks}"
        proc = subprocess.run(base + ["--out", str(out), "--ranks", str(ranks)],
                              cwd=tmp_path, env=mpi_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        runs[ranks] = json.loads((out / "depth.json").read_text())
    assert runs[3]["config"]["ranks"] == 3
    for net in ("batchnorm", "baseline"):
        single = np.array(runs[1][net]["loss_history"], float)
        ddp = np.array(runs[3][net]["loss_history"], float)
        assert single.shape == ddp.shape == (3,)
        np.testing.assert_allclose(ddp, single, rtol=0, atol=1e-4)


def test_import_without_mpi4py_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)      # makes `import mpi4py` fail
    monkeypatch.delitem(sys.modules, "fastbn.distributed", raising=False)
    with pytest.raises(ImportError, match="pip install mpi4py"):
        importlib.import_module("fastbn.distributed")


def test_fastbn_imports_without_touching_mpi():
    """Plain `import fastbn` must not load mpi4py (it initializes MPI)."""
    code = "import sys, fastbn; print('mpi4py.MPI' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=mpi_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_ranks_without_mpi4py_is_a_usage_error(monkeypatch, capsys, tmp_path):
    """--ranks K without mpi4py: exit status 2 and the fix, no traceback."""
    from fastbn import cli
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mpi4py" else _find_spec(name, *a))
    monkeypatch.delenv("FASTBN_DATA_PARALLEL_WORKER", raising=False)
    status = cli.main(["experiment", "depth", "--ranks", "2", "--out", str(tmp_path)])
    assert status == 2
    assert "pip install mpi4py" in capsys.readouterr().err


_find_spec = importlib.util.find_spec
