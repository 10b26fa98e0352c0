"""The compiled kernels against fastbn.reference, over generated cases.

Every case draws a dtype, a shape (odd and tiny ones included) and a memory
layout; the oracle is the reference evaluated in float64 on the same values.
"""
import numpy as np
import pytest

import fastbn
from fastbn import compiled, reference as ref

from conftest import TOL, cases, make_case, numeric_grad, rel_error, with_layout

F64 = np.float64


def _fns(ndim):
    if ndim == 2:
        return (compiled.batchnorm_forward, compiled.batchnorm_backward,
                ref.batchnorm_forward, ref.batchnorm_backward_alt)
    return (compiled.spatial_batchnorm_forward, compiled.spatial_batchnorm_backward,
            ref.spatial_batchnorm_forward, ref.spatial_batchnorm_backward)


def _check_against_reference(rng, dtype, shape, layout, mode):
    fwd, bwd, ref_fwd, ref_bwd = _fns(len(shape))
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=2.0, scale=3.0)
    D = shape[1]
    rm = rng.standard_normal(D).astype(dtype)
    rv = (0.5 + rng.random(D)).astype(dtype)
    bn = {"mode": mode, "eps": 1e-4, "momentum": 0.8, "running_mean": rm, "running_var": rv}
    bn_ref = {k: (v.astype(F64) if isinstance(v, np.ndarray) else v) for k, v in bn.items()}

    x_l, dout_l = with_layout(x, layout), with_layout(dout, layout)
    out, cache = fwd(x_l, gamma, beta, bn)
    out_ref, cache_ref = ref_fwd(x.astype(F64), gamma.astype(F64), beta.astype(F64), bn_ref)

    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, out_ref, **TOL[dtype])
    for key in ("running_mean", "running_var"):
        assert bn[key].dtype == dtype
        np.testing.assert_allclose(bn[key], bn_ref[key], **TOL[dtype])

    dx, dgamma, dbeta = bwd(dout_l, cache)
    dx_ref, dgamma_ref, dbeta_ref = ref_bwd(dout.astype(F64), cache_ref)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == dtype
    scale = np.abs(dx_ref).max() + 1
    np.testing.assert_allclose(dx / scale, dx_ref / scale, **TOL[dtype])
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * np.sqrt(x.size))
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * np.sqrt(x.size))


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("dtype,shape,layout", cases(2))
def test_batchnorm_matches_reference(rng, dtype, shape, layout, mode):
    _check_against_reference(rng, dtype, shape, layout, mode)


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("dtype,shape,layout", cases(4))
def test_spatial_batchnorm_matches_reference(rng, dtype, shape, layout, mode):
    _check_against_reference(rng, dtype, shape, layout, mode)


@pytest.mark.parametrize("shape", [(4097, 3), (3, 5000), (64, 700), (1, 40000)])
def test_threaded_partitions_match_reference(rng, shape):
    """Shapes large enough to be split across threads, rows and columns."""
    for layout in ("C", "F"):
        _check_against_reference(rng, np.float64, shape, layout, "train")


@pytest.mark.parametrize("shape", [(2, 3, 100, 200), (50, 1, 30, 30), (3, 5, 64, 64)])
def test_threaded_spatial_partitions_match_reference(rng, shape):
    for layout in ("C", "channels_last"):
        _check_against_reference(rng, np.float32, shape, layout, "train")


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("shape", [(1, 3), (5, 4), (8, 1)])
def test_compiled_gradients_match_numeric(rng, shape, mode):
    x, gamma, beta, dout = make_case(rng, shape, F64)
    bn = {"mode": mode, "running_mean": rng.standard_normal(shape[1]),
          "running_var": 0.5 + rng.random(shape[1])}

    def f(x_, g_=gamma, b_=beta):
        return compiled.batchnorm_forward(x_, g_, b_, dict(bn))[0]

    _, cache = compiled.batchnorm_forward(x, gamma, beta, dict(bn))
    for backward in (compiled.batchnorm_backward, compiled.batchnorm_backward_alt):
        dx, dgamma, dbeta = backward(dout, cache)
        if not (mode == "train" and shape[0] == 1):
            assert rel_error(dx, numeric_grad(f, x, dout)) < 1e-7
        assert rel_error(dgamma, numeric_grad(lambda g: f(x, g), gamma, dout)) < 1e-7
        assert rel_error(dbeta, numeric_grad(lambda b: f(x, gamma, b), beta, dout)) < 1e-7


@pytest.mark.parametrize("mode", ["train", "test"])
def test_spatial_compiled_gradients_match_numeric(rng, mode):
    shape = (2, 3, 3, 2)
    x, gamma, beta, dout = make_case(rng, shape, F64)
    bn = {"mode": mode, "running_mean": rng.standard_normal(3), "running_var": 1 + rng.random(3)}

    def f(x_, g_=gamma, b_=beta):
        return compiled.spatial_batchnorm_forward(x_, g_, b_, dict(bn))[0]

    _, cache = compiled.spatial_batchnorm_forward(x, gamma, beta, dict(bn))
    dx, dgamma, dbeta = compiled.spatial_batchnorm_backward(dout, cache)
    assert rel_error(dx, numeric_grad(f, x, dout)) < 1e-7
    assert rel_error(dgamma, numeric_grad(lambda g: f(x, g), gamma, dout)) < 1e-7
    assert rel_error(dbeta, numeric_grad(lambda b: f(x, gamma, b), beta, dout)) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_statistics_after_many_steps(rng, dtype):
    D = 6
    bn = {"mode": "train", "momentum": 0.9}
    bn_ref = {"mode": "train", "momentum": 0.9}
    gamma, beta = np.ones(D, dtype), np.zeros(D, dtype)
    for step in range(60):
        x = (rng.standard_normal((32, D)) * (1 + step % 3) + 4).astype(dtype)
        compiled.batchnorm_forward(x, gamma, beta, bn)
        ref.batchnorm_forward(x.astype(F64), gamma.astype(F64), beta.astype(F64), bn_ref)
    for key in ("running_mean", "running_var"):
        assert bn[key].dtype == dtype
        np.testing.assert_allclose(bn[key], bn_ref[key], rtol=1e-5 if dtype == np.float32 else 1e-12)


def _classic_activations(seed=231):
    np.random.seed(seed)
    N, D1, D2, D3 = 200, 50, 60, 3
    X = np.random.randn(N, D1)
    W1 = np.random.randn(D1, D2)
    W2 = np.random.randn(D2, D3)
    return X, W1, W2, np.maximum(0, X.dot(W1)).dot(W2)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_classic_notebook_train_mode_statistics(backend):
    _, _, _, a = _classic_activations()
    assert np.abs(a.mean(0)).max() > 1 and np.abs(a.std(0) - 1).max() > 1  # not trivially normal
    with fastbn.backend(backend):
        out, _ = fastbn.batchnorm_forward(a, np.ones(3), np.zeros(3), {"mode": "train"})
        np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(out.std(0), 1, atol=1e-6)
        gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0])
        out, _ = fastbn.batchnorm_forward(a, gamma, beta, {"mode": "train"})
        np.testing.assert_allclose(out.mean(0), beta, atol=1e-11)
        np.testing.assert_allclose(out.std(0), gamma, atol=1e-5)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_classic_notebook_test_mode_after_warmup(backend):
    X, W1, W2, _ = _classic_activations()
    N, D1 = X.shape
    bn = {"mode": "train"}
    gamma, beta = np.ones(3), np.zeros(3)
    with fastbn.backend(backend):
        for _ in range(50):
            a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
            fastbn.batchnorm_forward(a, gamma, beta, bn)
        bn["mode"] = "test"
        a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
        out, _ = fastbn.batchnorm_forward(a, gamma, beta, bn)
    # running statistics estimate the population: roughly zero mean, unit std
    assert np.abs(out.mean(0)).max() < 0.15
    assert np.abs(out.std(0) - 1).max() < 0.15


def test_backends_agree_on_classic_warmup():
    results = []
    for backend in ("cython", "numpy"):
        X, W1, W2, _ = _classic_activations()
        bn = {"mode": "train"}
        with fastbn.backend(backend):
            for _ in range(50):
                a = np.maximum(0, np.random.randn(*X.shape).dot(W1)).dot(W2)
                fastbn.batchnorm_forward(a, np.ones(3), np.zeros(3), bn)
        results.append((bn["running_mean"], bn["running_var"]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)


def test_float32_large_offset_is_accurate(rng):
    x64 = 1e4 + rng.standard_normal((20000, 3))
    x32 = x64.astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    out32, _ = compiled.batchnorm_forward(x32, g, b, {"mode": "train"})
    out64, _ = ref.batchnorm_forward(x32.astype(F64), g.astype(F64), b.astype(F64), {"mode": "train"})
    assert np.abs(out32 - out64).max() < 1e-3


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_out_buffers_are_used(rng, layout):
    x, gamma, beta, dout = make_case(rng, (13, 7), np.float64)
    out = with_layout(np.zeros_like(x), layout)
    result, cache = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=out)
    assert result is out
    expect, _ = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_array_equal(out, expect)
    dx = with_layout(np.zeros_like(x), layout)
    got = compiled.batchnorm_backward(dout, cache, dx=dx)
    assert got[0] is dx
    # dx's strides pick the kernel's loop (vector or strided): last-ulp differences
    np.testing.assert_allclose(dx, compiled.batchnorm_backward(dout, cache)[0],
                               rtol=1e-13, atol=1e-13)


def test_output_layout_follows_input():
    x = np.asfortranarray(np.random.default_rng(0).standard_normal((9, 4)))
    out, _ = compiled.batchnorm_forward(x, np.ones(4), np.zeros(4), {"mode": "train"})
    assert out.flags.f_contiguous
    x4 = np.ascontiguousarray(np.random.default_rng(0).standard_normal((2, 4, 4, 3)))
    x4 = x4.transpose(0, 3, 1, 2)   # channels-last memory
    out4, _ = compiled.spatial_batchnorm_forward(x4, np.ones(3), np.zeros(3), {"mode": "train"})
    assert out4.transpose(0, 2, 3, 1).flags.c_contiguous


def test_cache_is_lean(rng):
    x, gamma, beta, _ = make_case(rng, (11, 5), np.float32)
    _, cache = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert isinstance(cache, compiled.BatchNormCache)
    assert cache.x is x                       # the input itself, not a copy
    assert cache.mean.shape == cache.invstd.shape == (5,)
    assert cache.mean.dtype == cache.invstd.dtype == F64
    arrays = [v for v in (getattr(cache, s) for s in cache.__slots__) if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in arrays if a is not x) < x.nbytes + 100


def test_top_level_functions_run_the_extension(monkeypatch, rng):
    """With the default backend the top-level API calls the compiled kernels."""
    assert fastbn.get_backend() == "cython"
    assert compiled._bn.__file__.endswith((".so", ".pyd"))
    for name in ("batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
                 "spatial_batchnorm_forward", "spatial_batchnorm_backward"):
        assert getattr(fastbn, name).__wrapped__ is getattr(compiled, name)
    calls = []
    for entry in ("rows_forward_train", "plain_batchnorm_forward"):
        real = getattr(compiled._bn, entry)
        monkeypatch.setattr(compiled._bn, entry,
                            lambda *a, _real=real, _name=entry: calls.append(_name) or _real(*a))
    x, gamma, beta, _ = make_case(rng, (6, 4), np.float64)
    _, cache = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert calls == ["plain_batchnorm_forward"] and type(cache) is compiled.BatchNormCache
    calls.clear()
    _, cache = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=np.empty_like(x))
    assert calls == ["rows_forward_train"] and type(cache) is compiled.BatchNormCache


def test_backend_switch_and_context_manager(rng):
    x, gamma, beta, dout = make_case(rng, (6, 4), np.float64)
    with fastbn.backend("numpy"):
        assert fastbn.get_backend() == "numpy"
        out_np, cache_np = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert fastbn.get_backend() == "cython"
    assert isinstance(cache_np, dict)
    out_c, cache_c = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out_c, out_np, rtol=1e-12, atol=1e-12)
    # a backward call runs on the backend that made the cache
    for a, b in zip(fastbn.batchnorm_backward(dout, cache_np), fastbn.batchnorm_backward(dout, cache_c)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    fastbn.set_backend("numpy")
    try:
        assert isinstance(fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})[1], dict)
    finally:
        fastbn.set_backend("cython")
    with pytest.raises(ValueError, match="backend"):
        fastbn.set_backend("torch")
    with pytest.raises(ValueError, match="backend"):
        with fastbn.backend("fortran"):
            pass


@pytest.mark.parametrize("shape", [(1, 3), (7, 5), (333, 4)])
def test_compiled_matches_independent_implementation(rng, shape):
    from test_reference import fsum_batchnorm
    x, gamma, beta, _ = make_case(rng, shape, F64, offset=-7.0, scale=0.5)
    out, _ = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train", "eps": 1e-5})
    np.testing.assert_allclose(out, fsum_batchnorm(x, gamma, beta, 1e-5), rtol=1e-12, atol=1e-12)
