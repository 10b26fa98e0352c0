"""The pytest-benchmark side: the cases as benchmarks, and a speedup summary.

``bench/conftest.py`` imports these hooks; ``pytest bench/ --benchmark-only``
then ends with one table of speedups (one row per case and pass: fastbn's
best and median time, reference / fastbn, torch / fastbn when PyTorch is
installed, fastbn / stream) under a header naming the CPU, the kernel build,
the threads and the library versions.  The times are pytest-benchmark's own
(its ``min`` and ``median`` of each benchmark); nothing here times anything.

* :func:`pytest_sessionstart` keeps the process's heap warm (glibc told
  never to return freed memory to the OS, as ``fastbn bench``'s "torch warm"
  worker runs): PyTorch takes each output from malloc, and a heap that gives
  pages back makes it fault on every page of every call, a cost that depends
  on whatever else the process allocated.  PyTorch's rows are then its best
  case, labelled "torch warm" like the ``fastbn bench`` column they match;
* :func:`bench_case` runs one implementation of one case through the
  ``benchmark`` fixture (after a few untimed calls, :func:`benchmark_warm`)
  and records the case in ``extra_info``;
* :func:`pytest_benchmark_update_json` writes each case's ratios into the
  ``extra_info`` of its fastbn benchmark in ``--benchmark-json`` and
  ``--benchmark-save`` files, and the machine and build into the file;
* :func:`pytest_terminal_summary` prints the table, and with
  ``--benchmark-compare`` the table of the saved run too, so a ratio that
  moved shows next to the times pytest-benchmark compares;
* :func:`result_from_pytest_json` turns a pytest-benchmark JSON file into a
  :func:`fastbn.benchmark.run_benchmark`-style result, which
  ``python -m fastbn.benchmark plot run.json`` draws.
"""
import ctypes

import pytest

from .cases import Case, implementations
from .machine import kernel_build, machine
from .timing import minor_faults
from .workers import has_glibc, ratios

RUN_KEY = "fastbn"      # the run's facts in the pytest-benchmark JSON
# mallopt parameters (malloc.h) and the values of workers.WARM_HEAP_ENV
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _KEEP = -1, -3, 1 << 30
_OLD_GLIBC_MAX = 32 << 20
_heap = {"warm": False}


def warm_heap():
    """Have glibc keep freed memory in this process (``mallopt``: no trimming,
    no separate mappings below 1 GiB): the in-process twin of
    :data:`fastbn.benchmark.WARM_HEAP_ENV`.  True when it took effect; False
    off glibc, where the heap is left as it is."""
    if not _heap["warm"] and has_glibc():
        mallopt = ctypes.CDLL(None).mallopt
        # glibc before 2.35 refuses mapping thresholds above 32 MiB: blocks
        # larger than that are then still mapped and unmapped per call
        mapped = any(mallopt(_M_MMAP_THRESHOLD, v) for v in (_KEEP, _OLD_GLIBC_MAX))
        _heap["warm"] = bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
    return _heap["warm"]


def pytest_sessionstart(session):
    """Keep the heap warm before the first benchmark (see :func:`warm_heap`)."""
    warm_heap()


def _faults_per_call(fn, calls=10):
    """Page faults per call right after the timing, in the state it left:
    a fresh output costs one per 4 KiB page, and tells which allocator state
    was timed."""
    before = minor_faults()
    if before is None:
        return None
    for _ in range(calls):
        fn()
    return (minor_faults() - before) / calls


def bench_case(benchmark, case, direction, impl, torch=None, arrays=None):
    """Time one implementation of ``case`` with the ``benchmark`` fixture.

    Skips when the implementation is not available here (PyTorch not
    installed, a function this fastbn lacks).  The case, pass and
    implementation go to ``extra_info``, from which the summary pairs the
    implementations of one case.
    """
    fns = implementations(case, direction, torch, which=(impl,), arrays=arrays)
    if impl not in fns:
        pytest.skip(f"{impl} is not available for {case.label}")
    fn = fns[impl]
    benchmark.group = f"{case.label} {direction}"
    name = "torch_warm" if impl == "torch" and _heap["warm"] else impl
    benchmark.extra_info.update(case=case.as_dict(), direction=direction, impl=name)
    if impl == "reference":
        # 10-100x slower: a fixed few rounds keep the suite short
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    else:
        benchmark_warm(benchmark, fn)
    benchmark.extra_info["faults_per_call"] = _faults_per_call(
        fn, calls=2 if impl == "reference" else 10)


WARM_CALLS = 3


def benchmark_warm(benchmark, fn, warm_calls=WARM_CALLS):
    """``benchmark(fn)`` after ``warm_calls`` untimed calls.

    pytest-benchmark sizes its rounds from one calibration call
    (``--benchmark-max-time`` over that call's time).  A first call pays for
    what later calls reuse -- each page of a fresh 51 MB output faults in,
    an allocator grows its heap -- so a 5 ms case whose first call takes
    100 ms gets 10 rounds of a 1 s budget, too few for a reliable best
    time.  Warm calls first make the calibration see the call that is then
    timed.
    """
    for _ in range(warm_calls):
        fn()
    return benchmark(fn)


def _run_facts():
    import fastbn
    torch = _loaded_torch()
    return {"fastbn_version": fastbn.__version__, "kernels": kernel_build(),
            "threads": fastbn.get_num_threads(),
            "torch_version": getattr(torch, "__version__", None), "machine": machine(),
            "warm_heap": _heap["warm"]}


def _loaded_torch():
    import sys
    return sys.modules.get("torch")


def result_from_pytest_json(data, facts=None):
    """A result dict (as :func:`fastbn.benchmark.run_benchmark` returns) from
    pytest-benchmark's JSON (``--benchmark-json``, ``--benchmark-save``).

    Benchmarks without a fastbn case in ``extra_info`` are left out.
    """
    facts = facts or data.get(RUN_KEY) or {}
    groups = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        if "case" not in info or not b.get("stats"):
            continue
        case = Case.from_dict(info["case"])
        key = (case, info["direction"])
        s = b["stats"]
        groups.setdefault(key, {})[info["impl"]] = {
            "min": 1e3 * s["min"], "median": 1e3 * s["median"], "n": s["rounds"],
            "faults_per_call": info.get("faults_per_call")}
    rows = []
    for (case, direction), ms in groups.items():
        rows.append({**case.as_dict(), "label": case.label, "direction": direction, "ms": ms,
                     "ratios": ratios({n: v["min"] for n, v in ms.items()}),
                     "ratios_median": ratios({n: v["median"] for n, v in ms.items()})})
    m = facts.get("machine") or {
        "cpu": (data.get("machine_info") or {}).get("cpu", {}).get("brand_raw", "?"),
        "logical_cpus": None, "numpy": "?"}
    return {"source": "pytest-benchmark",
            "fastbn_version": facts.get("fastbn_version", "?"),
            "kernels": facts.get("kernels", "?"), "threads": facts.get("threads", "?"),
            "torch_version": facts.get("torch_version"), "machine": m,
            "warm_heap": facts.get("warm_heap", False),
            "date": data.get("datetime", ""), "results": rows}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Each case's ratios in the extra_info of its fastbn benchmark, and
    the machine and build under ``output_json['fastbn']``."""
    facts = _run_facts()
    output_json[RUN_KEY] = facts
    result = result_from_pytest_json(output_json, facts)
    by_case = {(r["label"], r["direction"]): r for r in result["results"]}
    for b in output_json["benchmarks"]:
        info = b.get("extra_info") or {}
        if info.get("impl") != "fastbn":
            continue
        r = by_case.get((Case.from_dict(info["case"]).label, info["direction"]))
        if r is not None:
            info["ratios"] = {k: v for k, v in r["ratios"].items() if v is not None}
            info["ratios_median"] = {k: v for k, v in r["ratios_median"].items()
                                     if v is not None}


def _run_result(config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return None, bs
    data = {"benchmarks": [b.as_dict(include_data=False) for b in bs.benchmarks if b]}
    result = result_from_pytest_json(data, _run_facts())
    return (result if result["results"] else None), bs


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The speedup table after pytest-benchmark's own tables."""
    from .report import format_report
    result, bs = _run_result(config)
    if result is None:
        return
    tr = terminalreporter
    tr.write_sep("-", "fastbn speedup summary")
    tr.write_line(format_report(result))
    for path, mapping in (bs.compared_mapping or {}).items():
        saved = result_from_pytest_json({"benchmarks": list(mapping.values())},
                                        _run_facts())
        if saved["results"]:
            tr.write_sep("-", f"fastbn speedup summary of the saved run {path}")
            tr.write_line(format_report(saved).split("\n", 1)[1])
