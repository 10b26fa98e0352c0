"""Speed of fastbn vs the NumPy reference vs PyTorch vs a streaming pass.

One benchmark group per case and pass, so ``pytest bench/ --benchmark-only``
prints each comparison as its own table, then the fastbn speedup summary.
The cases and the callables are the ones ``fastbn bench`` times
(:mod:`fastbn.benchmark.cases`): the batch-norm target shapes, and layer norm
in C and Fortran order (the blocked column-major kernels; PyTorch is left out
there, it would copy).
"""
import functools

import pytest

from fastbn.benchmark import DIRECTIONS, IMPLS, SUITES, Case
from fastbn.benchmark.cases import case_arrays
from fastbn.benchmark.pytest_plugin import bench_case

CASES = SUITES["targets"] + [
    Case("ln", shape, dtype, order=order)
    for shape, dtype in [((4096, 1024), "float32"), ((256, 4096), "float32"),
                         ((256, 4096), "float64")]
    for order in ("C", "F")]


@functools.lru_cache(maxsize=1)
def _arrays(case):
    # one case's arrays at a time: the large batch is 100 MB per pair
    return case_arrays(case)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_speed(benchmark, threads, torch, case, direction, impl):
    bench_case(benchmark, case, direction, impl, torch, arrays=_arrays(case))
