"""Layer-norm speed: the compiled kernel vs the NumPy reference vs PyTorch.

``pytest bench/test_bench_layernorm.py --benchmark-only``: one group per
shape, memory order and direction, so each comparison prints as its own
table.  Fortran order exercises the blocked column-major kernels.
"""
import functools

import numpy as np
import pytest

from fastbn import compiled, reference

SHAPES = [((4096, 1024), np.float32), ((256, 4096), np.float32), ((256, 4096), np.float64)]
IMPLS = {"fastbn": compiled, "reference": reference, "torch": None}


@functools.lru_cache(maxsize=1)
def _case(shape, dtype, order):
    rng = np.random.default_rng(0)
    x = np.asarray(rng.standard_normal(shape), dtype, order=order)
    dout = np.asarray(rng.standard_normal(shape), dtype, order=order)
    D = shape[1]
    return x, np.ones(D, dtype), np.zeros(D, dtype), dout


def _torch_fn(torch, x, gamma, beta, dout, direction):
    """torch.native_layer_norm and its backward, on the same memory (C order only)."""
    x, w, b, g = (torch.from_numpy(a) for a in (x, gamma, beta, dout))
    D = [x.shape[1]]
    if direction == "forward":
        return lambda: torch.native_layer_norm(x, D, w, b, 1e-5)
    _, mean, rstd = torch.native_layer_norm(x, D, w, b, 1e-5)
    bwd = torch.ops.aten.native_layer_norm_backward
    return lambda: bwd(g, x, D, mean, rstd, w, b, [True, True, True])


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape,dtype", SHAPES,
                         ids=[f"{s[0]}x{s[1]}-{np.dtype(d).name}" for s, d in SHAPES])
def test_layernorm(benchmark, threads, torch, shape, dtype, order, direction, impl):
    x, gamma, beta, dout = _case(shape, dtype, order)
    mod = IMPLS[impl]
    if impl == "torch":
        if torch is None:
            pytest.skip("torch is not installed")
        if order != "C":
            pytest.skip("torch's layer norm takes contiguous rows (it would copy)")
        fn = _torch_fn(torch, x, gamma, beta, dout, direction)
    elif direction == "forward":
        def fn():
            return mod.layernorm_forward(x, gamma, beta, {})
    else:
        cache = mod.layernorm_forward(x, gamma, beta, {})[1]

        def fn():
            return mod.layernorm_backward(dout, cache)
    benchmark.group = f"layernorm {shape[0]}x{shape[1]} {np.dtype(dtype).name} {order} {direction}"
    benchmark.extra_info.update(shape=list(shape), dtype=np.dtype(dtype).name, order=order,
                                direction=direction, threads=threads)
    if impl == "reference":
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    else:
        benchmark(fn)
