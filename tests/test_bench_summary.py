"""The pytest-benchmark speedup summary, its JSON ratios and the chart of a run.

A tiny benchmark suite is run in a pytest subprocess (as ``pytest bench/``
runs, with the hooks of :mod:`fastbn.benchmark.pytest_plugin`); asserted are
the summary's rows and columns, that the JSON's ratios are the quotients of
pytest-benchmark's own statistics, that a compared run prints the saved
run's ratios, and that the plot command draws a PNG from the JSON.  No
timing value is asserted.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("pytest_benchmark")

CONFTEST = """
from fastbn.benchmark.pytest_plugin import pytest_benchmark_update_json, \\
    pytest_sessionstart, pytest_terminal_summary  # noqa: F401
"""
SUITE = """
import pytest
from fastbn.benchmark import Case
from fastbn.benchmark.pytest_plugin import bench_case

@pytest.mark.parametrize("impl", ["fastbn", "torch", "reference", "stream"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("case", [Case("bn", (6, 4)), Case("ln", (5, 3), "float64")],
                         ids=["bn", "ln"])
def test_tiny(benchmark, case, direction, impl):
    bench_case(benchmark, case, direction, impl, torch=None)
"""


def _env():
    import fastbn
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    env = dict(os.environ, FASTBN_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    return env


def _pytest(tmp_path, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
         "--benchmark-min-rounds=3", "--benchmark-max-time=0.001", "--benchmark-warmup=off",
         f"--benchmark-storage=file://{tmp_path / 'store'}", "test_tiny.py", *args],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_tiny.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return tmp_path


def test_summary_table_and_json_ratios(suite):
    out = _pytest(suite, "--benchmark-json=run.json", "--benchmark-save=base")
    summary = out.split("fastbn speedup summary", 1)[1]
    assert "fastbn best ms" in summary and "fastbn median ms" in summary
    assert "reference / fastbn, best (median)" in summary and "fastbn / stream" in summary
    assert "torch" not in summary.lower()           # not timed: not shown, not explained
    for row in ("| (6, 4) | float32 | forward |", "| (6, 4) | float32 | backward |",
                "| LN (5, 3) | float64 | forward |", "| LN (5, 3) | float64 | backward |"):
        assert row in summary
    import fastbn
    from fastbn.benchmark.machine import cpu_model
    assert cpu_model() in summary and f"fastbn {fastbn.__version__}" in summary

    from fastbn.benchmark import has_glibc
    assert ("its heap kept warm" in summary) == has_glibc()
    data = json.loads((suite / "run.json").read_text())
    assert data["fastbn"]["kernels"] and data["fastbn"]["threads"] == 1
    assert data["fastbn"]["warm_heap"] == has_glibc()
    stats = {(b["extra_info"]["case"]["kind"], b["extra_info"]["direction"],
              b["extra_info"]["impl"]): b for b in data["benchmarks"]}
    for kind in ("bn", "ln"):
        for direction in ("forward", "backward"):
            f = stats[(kind, direction, "fastbn")]
            ref = stats[(kind, direction, "reference")]["stats"]
            stream = stats[(kind, direction, "stream")]["stats"]
            q = f["extra_info"]["ratios"]
            assert q["reference_over_fastbn"] == pytest.approx(ref["min"] / f["stats"]["min"])
            assert q["fastbn_over_stream"] == pytest.approx(f["stats"]["min"] / stream["min"])
            assert f["extra_info"]["ratios_median"]["reference_over_fastbn"] == \
                pytest.approx(ref["median"] / f["stats"]["median"])
            assert "torch_over_fastbn" not in q

    # a compared run shows the saved run's ratios as well
    out = _pytest(suite, "--benchmark-compare=0001")
    assert "fastbn speedup summary of the saved run" in out


def test_plot_from_pytest_benchmark_json(suite):
    pytest.importorskip("matplotlib")
    _pytest(suite, "--benchmark-json=run.json")
    proc = subprocess.run([sys.executable, "-m", "fastbn.benchmark", "plot", "run.json",
                           "-o", "run.png"], cwd=suite, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(suite / "run.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the same JSON reported as a table through the CLI
    from fastbn.benchmark.cli import load_result
    from fastbn.benchmark.report import format_table
    table = format_table(load_result(str(suite / "run.json")))
    assert "| (6, 4) | float32 | forward |" in table


TORCH_SUITE = """
import pytest
from fastbn.benchmark import Case, import_torch
from fastbn.benchmark.pytest_plugin import bench_case

@pytest.mark.parametrize("impl", ["fastbn", "torch"])
def test_tiny(benchmark, impl):
    bench_case(benchmark, Case("bn", (6, 4)), "forward", impl, torch=import_torch())
"""


def test_torch_rows_are_its_warm_heap_case(tmp_path):
    """With the heap kept warm, PyTorch's rows are "torch warm", the column
    of fastbn bench they compare with."""
    pytest.importorskip("torch")
    from fastbn.benchmark import has_glibc
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_tiny.py").write_text(TORCH_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = _pytest(tmp_path, "--benchmark-json=run.json")
    summary = out.split("fastbn speedup summary", 1)[1]
    data = json.loads((tmp_path / "run.json").read_text())
    impls = {b["extra_info"]["impl"] for b in data["benchmarks"]}
    name = "torch_warm" if has_glibc() else "torch"
    assert impls == {"fastbn", name}
    ratios = next(b["extra_info"]["ratios"] for b in data["benchmarks"]
                  if b["extra_info"]["impl"] == "fastbn")
    assert set(ratios) == {f"{name}_over_fastbn"}
    assert ("torch warm / fastbn" in summary) == has_glibc()


HEAP_PROBE = """
import resource, sys
import numpy as np
from fastbn.benchmark.pytest_plugin import warm_heap

def faults_per_round():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        blocks = [np.empty(1 << 18, np.float32) for _ in range(40)]   # 40 MiB of heap
        for a in blocks:
            a[::1024] = 1.0                     # touch every page
        del blocks, a                           # a cold heap trims its top here
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10

cold = faults_per_round()
ok = warm_heap()
print(ok, cold, faults_per_round())
"""


def test_warm_heap_keeps_freed_memory():
    """After warm_heap() freed heap memory comes back without faulting its
    pages in again (in a subprocess: this process's heap stays as it is)."""
    from fastbn.benchmark import has_glibc
    if not has_glibc():
        pytest.skip("mallopt is glibc's")
    proc = subprocess.run([sys.executable, "-c", HEAP_PROBE], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ok, cold, warm = proc.stdout.split()
    assert ok == "True"
    assert float(warm) < float(cold) / 4, (cold, warm)


SLOW_FIRST_SUITE = """
import time
from fastbn.benchmark.pytest_plugin import benchmark_warm

calls = []

def fn():
    calls.append(None)
    if len(calls) == 1:
        time.sleep(0.2)            # a first call that pays for later ones

def test_slow_first_call(benchmark):
    benchmark_warm(benchmark, fn)
"""


def test_rounds_are_sized_from_a_warm_call(tmp_path):
    """A slow first call does not decide the number of rounds: with a 0.5 s
    budget, a call sized from the 0.2 s first call would get the minimum
    of 3 rounds."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_tiny.py").write_text(SLOW_FIRST_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
         "--benchmark-min-rounds=3", "--benchmark-max-time=0.5", "--benchmark-warmup=off",
         "--benchmark-json=run.json", "test_tiny.py"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=True)
    stats = json.loads((tmp_path / "run.json").read_text())["benchmarks"][0]["stats"]
    assert stats["rounds"] > 100
    assert stats["max"] < 0.1
