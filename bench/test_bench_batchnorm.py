"""Batch-norm speed: fastbn vs the NumPy reference vs PyTorch vs a streaming pass.

One benchmark group per shape and direction, so ``pytest bench/
--benchmark-only`` prints each comparison as its own table, and
``--benchmark-save NAME`` / ``--benchmark-compare`` track regressions.
The cases and the callables are the ones ``fastbn bench`` times.
"""
import functools

import pytest

from fastbn.benchmark import DEFAULT_SHAPES, DIRECTIONS, IMPLS, implementations, \
    make_case, minor_faults, shape_label


@functools.lru_cache(maxsize=1)
def _case(shape, dtype):
    # one shape's arrays at a time: the large batch is 100 MB per pair
    return make_case(shape, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("shape,dtype", DEFAULT_SHAPES, ids=[shape_label(*s) for s in DEFAULT_SHAPES])
def test_batchnorm(benchmark, torch, shape, dtype, direction, impl):
    if impl == "torch" and torch is None:
        pytest.skip("torch is not installed")
    fn = implementations(_case(shape, dtype), direction, torch, which=(impl,))[impl]
    benchmark.group = f"{shape_label(shape, dtype)} {direction}"
    benchmark.extra_info.update(shape=list(shape), dtype=dtype, direction=direction)
    if impl == "reference":
        # 10-100x slower: a fixed few rounds keep the suite short
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    else:
        benchmark(fn)
    benchmark.extra_info["faults_per_call"] = _faults_per_call(
        fn, calls=2 if impl == "reference" else 10)


def _faults_per_call(fn, calls=10):
    """Page faults per call right after the timing, in the state it left
    (saved with ``--benchmark-save``/``--benchmark-json``): a fresh output
    costs one per 4 KiB page, and tells which allocator state was timed."""
    before = minor_faults()
    if before is None:
        return None
    for _ in range(calls):
        fn()
    return (minor_faults() - before) / calls
