"""Layer normalization: reference against an independent implementation and
numeric gradients; the compiled backend against the reference over generated
cases (dtype x shape x layout)."""
import math

import numpy as np
import pytest

import fastbn
from fastbn import compiled, reference as ref

from conftest import DTYPES, LAYOUTS, SHAPES_2D, TOL, make_case, numeric_grad, rel_error, with_layout

F64 = np.float64
BACKENDS = {"numpy": (ref.layernorm_forward, ref.layernorm_backward),
            "cython": (compiled.layernorm_forward, compiled.layernorm_backward)}


def fsum_layernorm(x, gamma, beta, eps):
    """Independent layer norm: per-row exact sums with math.fsum."""
    x = np.asarray(x, F64)
    D = x.shape[1]
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        row = [float(v) for v in x[i]]
        mean = math.fsum(row) / D
        var = math.fsum((v - mean) ** 2 for v in row) / D
        out[i] = [(v - mean) / math.sqrt(var + eps) * gamma[j] + beta[j]
                  for j, v in enumerate(row)]
    return out


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("shape", [(1, 3), (2, 1), (7, 5), (40, 9)])
def test_forward_matches_independent_implementation(rng, backend, shape):
    fwd, _ = BACKENDS[backend]
    x, gamma, beta, _ = make_case(rng, shape, F64, offset=3.0, scale=2.0)
    out, _ = fwd(x, gamma, beta, {"eps": 1e-5})
    np.testing.assert_allclose(out, fsum_layernorm(x, gamma, beta, 1e-5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_rows_are_normalized_and_eps_is_used(rng, backend):
    fwd, _ = BACKENDS[backend]
    x = 5.0 + 3.0 * rng.standard_normal((6, 50))
    out, _ = fwd(x, np.ones(50), np.zeros(50), {})
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=1), 1, atol=1e-6)
    # a large eps visibly shrinks the output: it is really read from ln_param
    big, _ = fwd(x, np.ones(50), np.zeros(50), {"eps": 100.0})
    np.testing.assert_allclose(big, (x - x.mean(1, keepdims=True))
                               / np.sqrt(x.var(1, keepdims=True) + 100.0), rtol=1e-12)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("shape", [(1, 4), (4, 5), (3, 1), (2, 9)])
def test_gradients_match_numeric(rng, backend, shape):
    fwd, bwd = BACKENDS[backend]
    x, gamma, beta, dout = make_case(rng, shape, F64, offset=1.0, scale=2.0)
    ln_param = {"eps": 1e-5}

    def f(x_, g_=gamma, b_=beta):
        return fwd(x_, g_, b_, ln_param)[0]

    _, cache = fwd(x, gamma, beta, ln_param)
    dx, dgamma, dbeta = bwd(dout, cache)
    if shape[1] == 1:
        # one feature per row: out == beta whatever x is, so dx is exactly 0
        assert not dx.any()
    else:
        assert rel_error(dx, numeric_grad(f, x, dout)) < 1e-7
    assert rel_error(dgamma, numeric_grad(lambda g: f(x, g), gamma, dout)) < 1e-7
    assert rel_error(dbeta, numeric_grad(lambda b: f(x, gamma, b), beta, dout)) < 1e-7


def test_reference_is_batchnorm_of_the_transpose(rng):
    """Normalizing rows of x is batch-normalizing columns of x.T (the same dx)."""
    x, _, _, dout = make_case(rng, (5, 8), F64)
    ones, zeros = np.ones(5), np.zeros(5)
    out_t, cache_t = ref.batchnorm_forward(x.T, ones, zeros, {"mode": "train", "eps": 1e-5})
    out, cache = ref.layernorm_forward(x, np.ones(8), np.zeros(8), {"eps": 1e-5})
    np.testing.assert_allclose(out, out_t.T, rtol=1e-12, atol=1e-12)
    dx_t = ref.batchnorm_backward(dout.T, cache_t)[0]
    np.testing.assert_allclose(ref.layernorm_backward(dout, cache)[0], dx_t.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_in_is_dtype_out(rng, dtype):
    for fwd, bwd in BACKENDS.values():
        x, gamma, beta, dout = make_case(rng, (4, 6), dtype)
        out, cache = fwd(x, gamma, beta, {})
        dx, dgamma, dbeta = bwd(dout, cache)
        assert out.dtype == dx.dtype == dgamma.dtype == dbeta.dtype == dtype


def test_top_level_dispatch_follows_backend(rng):
    x, gamma, beta, dout = make_case(rng, (6, 4), F64)
    assert fastbn.layernorm_forward.__wrapped__ is compiled.layernorm_forward
    assert fastbn.layernorm_backward.__wrapped__ is compiled.layernorm_backward
    with fastbn.backend("numpy"):
        out_np, cache_np = fastbn.layernorm_forward(x, gamma, beta, {})
    assert isinstance(cache_np, dict) and cache_np["kind"] == "layernorm"
    out_c, cache_c = fastbn.layernorm_forward(x, gamma, beta, {})
    np.testing.assert_allclose(out_c, out_np, rtol=1e-12, atol=1e-12)
    # a backward call runs on the backend that made the cache
    for a, b in zip(fastbn.layernorm_backward(dout, cache_np),
                    fastbn.layernorm_backward(dout, cache_c)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# -- bad input: same errors on both backends, nothing changed -------------

BAD_FORWARD = [
    (lambda x, g, b: (x[0], g, b, {}), ValueError, "x must be a 2-D"),
    (lambda x, g, b: (x.reshape(2, 3, 2), g, b, {}), ValueError, "x must be a 2-D"),
    (lambda x, g, b: (x[:0], g, b, {}), ValueError, "x must not be empty"),
    (lambda x, g, b: (x.astype(np.int64), g, b, {}), TypeError, "x must have dtype"),
    (lambda x, g, b: (x.astype(np.float16), g, b, {}), TypeError, "x must have dtype"),
    (lambda x, g, b: (None, g, b, {}), TypeError, "x must be"),
    (lambda x, g, b: (x, g[:-1], b, {}), ValueError, "gamma must have shape"),
    (lambda x, g, b: (x, g, b.reshape(1, -1), {}), ValueError, "beta must have shape"),
    (lambda x, g, b: (x, g.astype(np.float32), b, {}), TypeError, "gamma has dtype"),
    (lambda x, g, b: (x, g, b, None), TypeError, "ln_param must be a dict"),
    (lambda x, g, b: (x, g, b, {"eps": -1.0}), ValueError, r"ln_param\['eps'\]"),
    (lambda x, g, b: (x, g, b, {"eps": float("nan")}), ValueError, r"ln_param\['eps'\]"),
    (lambda x, g, b: (x, g, b, {"eps": "1e-5"}), TypeError, r"ln_param\['eps'\]"),
]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("make_args,exc,msg", BAD_FORWARD)
def test_bad_forward_arguments_raise_and_change_nothing(rng, backend, make_args, exc, msg):
    fwd, _ = BACKENDS[backend]
    x, gamma, beta, _ = make_case(rng, (3, 4), F64)
    args = make_args(x, gamma, beta)
    before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else
              (dict(a) if isinstance(a, dict) else a) for a in args]
    with pytest.raises(exc, match=msg):
        fwd(*args)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b or (a is None and b is None)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_bad_backward_arguments_raise(rng, backend):
    fwd, bwd = BACKENDS[backend]
    x, gamma, beta, dout = make_case(rng, (3, 4), F64)
    _, cache = fwd(x, gamma, beta, {})
    with pytest.raises(ValueError, match="dout has shape"):
        bwd(dout[:, :3], cache)
    with pytest.raises(TypeError, match="dout has dtype"):
        bwd(dout.astype(np.float32), cache)
    _, bn_cache = ref.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    with pytest.raises(TypeError, match="cache"):
        bwd(dout, bn_cache)
