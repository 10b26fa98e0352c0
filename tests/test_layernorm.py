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
        # Against the largest entry, not entry by entry: a central difference
        # carries the forward's float64 rounding divided by 2h (about 1e-10
        # here), which for an entry of 1e-3 is already 1e-7 of it.
        num = numeric_grad(f, x, dout)
        assert np.abs(dx - num).max() < 1e-8 * np.abs(num).max()
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
    (lambda x, g, b: (x, g.astype(complex), b, {}), TypeError, "gamma must be a real array"),
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


# -- the compiled kernel against the reference, over generated cases ------

# Column-major inputs run blocked kernels (BLK rows at a time): add a
# column-major view with non-unit strides, and a shape spanning several blocks.
LN_LAYOUTS = LAYOUTS + ["F_strided"]
LN_SHAPES = SHAPES_2D + [(1100, 5)]


def _with_ln_layout(a, layout):
    if layout == "F_strided":
        return with_layout(np.asfortranarray(a).T, "strided").T
    return with_layout(a, layout)


def _cases():
    return [(d, s, lay) for d in DTYPES for s in LN_SHAPES for lay in LN_LAYOUTS]


def _check_against_reference(rng, dtype, shape, layout, offset=2.0, scale=3.0):
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=offset, scale=scale)
    x_l, dout_l = _with_ln_layout(x, layout), _with_ln_layout(dout, layout)
    ln_param = {"eps": 1e-4}
    out, cache = compiled.layernorm_forward(x_l, gamma, beta, ln_param)
    out_ref, cache_ref = ref.layernorm_forward(x.astype(F64), gamma.astype(F64),
                                               beta.astype(F64), ln_param)
    assert type(cache) is compiled.LayerNormCache and cache.x is x_l
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, out_ref, **TOL[dtype])

    dx, dgamma, dbeta = compiled.layernorm_backward(dout_l, cache)
    dx_ref, dgamma_ref, dbeta_ref = ref.layernorm_backward(dout.astype(F64), cache_ref)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == dtype
    assert dx.shape == shape and dgamma.shape == dbeta.shape == (shape[1],)
    scale_dx = np.abs(dx_ref).max() + 1
    np.testing.assert_allclose(dx / scale_dx, dx_ref / scale_dx, **TOL[dtype])
    # column sums over N rows: rounding grows like sqrt(N)
    atol = TOL[dtype]["atol"] * np.sqrt(shape[0])
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=TOL[dtype]["rtol"], atol=atol)
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=TOL[dtype]["rtol"], atol=atol)


@pytest.mark.parametrize("dtype,shape,layout", _cases())
def test_compiled_matches_reference(rng, dtype, shape, layout):
    _check_against_reference(rng, dtype, shape, layout)


@pytest.mark.parametrize("shape", [(4097, 9), (3, 20000), (1, 40000), (700, 64)])
@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_partitions_match_reference(rng, shape, threads):
    """Shapes large enough to be split across threads: per-thread partials merge."""
    fastbn.set_num_threads(threads)
    try:
        for layout in ("C", "F"):
            _check_against_reference(rng, np.float64, shape, layout)
    finally:
        fastbn.set_num_threads(None)


def test_broadcast_rows_zero_stride(rng):
    """A read-only broadcast input (stride 0 along N) is read correctly."""
    row = rng.standard_normal(7)
    x = np.broadcast_to(row, (5, 7))
    gamma, beta, dout = np.ones(7), np.zeros(7), rng.standard_normal((5, 7))
    out, cache = compiled.layernorm_forward(x, gamma, beta, {})
    out_ref, cache_ref = ref.layernorm_forward(np.array(x), gamma, beta, {})
    np.testing.assert_allclose(out, out_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(compiled.layernorm_backward(dout, cache),
                    ref.layernorm_backward(dout, cache_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 20000), (20000, 3)])
def test_float32_large_offset_is_accurate(rng, shape):
    """1e4 + randn in float32 normalizes to float32 rounding of the float64 result."""
    x32 = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    D = shape[1]
    g, b = np.ones(D, np.float32), np.zeros(D, np.float32)
    out32, cache32 = compiled.layernorm_forward(x32, g, b, {})
    out64, cache64 = ref.layernorm_forward(x32.astype(F64), g.astype(F64), b.astype(F64), {})
    assert np.abs(out32 - out64).max() < 1e-3
    dout = rng.standard_normal(shape)
    dx32 = compiled.layernorm_backward(dout.astype(np.float32), cache32)[0]
    dx64 = ref.layernorm_backward(dout, cache64)[0]
    assert np.abs(dx32 - dx64).max() < 1e-3 * (np.abs(dx64).max() + 1)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "reversed"])
def test_out_buffers_are_used(rng, layout):
    x, gamma, beta, dout = make_case(rng, (13, 7), F64)
    out = with_layout(np.zeros_like(x), layout)
    result, cache = compiled.layernorm_forward(x, gamma, beta, {}, out=out)
    assert result is out
    expect, _ = compiled.layernorm_forward(x, gamma, beta, {})
    np.testing.assert_array_equal(out, expect)
    dx = with_layout(np.zeros_like(x), layout)
    got = compiled.layernorm_backward(dout, cache, dx=dx)
    assert got[0] is dx
    # strided loops sum in another order than the vectorized contiguous ones
    np.testing.assert_allclose(dx, compiled.layernorm_backward(dout, cache)[0],
                               rtol=1e-13, atol=1e-15)


def test_output_follows_input_memory_order(rng):
    x, gamma, beta, dout = make_case(rng, (9, 4), F64)
    out, cache = compiled.layernorm_forward(np.asfortranarray(x), gamma, beta, {})
    assert out.flags.f_contiguous
    assert compiled.layernorm_backward(np.asfortranarray(dout), cache)[0].flags.f_contiguous
    out, cache = compiled.layernorm_forward(x, gamma, beta, {})
    assert out.flags.c_contiguous
    assert compiled.layernorm_backward(dout, cache)[0].flags.c_contiguous


def test_top_level_accepts_buffers(rng):
    x, gamma, beta, dout = make_case(rng, (5, 6), F64)
    out = np.empty_like(x)
    result, cache = fastbn.layernorm_forward(x, gamma, beta, {}, out=out)
    dx = np.empty_like(x)
    assert result is out and fastbn.layernorm_backward(dout, cache, dx=dx)[0] is dx


BAD_BUFFERS = [
    (lambda x: np.empty((4, 3)), ValueError, "must have shape"),
    (lambda x: np.empty(x.shape, np.float32), TypeError, "must have dtype"),
    (lambda x: list(x), TypeError, "must be a numpy.ndarray"),
    (lambda x: x, ValueError, "must not overlap"),
    (lambda x: np.broadcast_to(np.zeros(x.shape[1]), x.shape), ValueError, "is read-only"),
]


@pytest.mark.parametrize("make_buf,exc,msg", BAD_BUFFERS)
def test_bad_buffers_raise_and_change_nothing(rng, make_buf, exc, msg):
    x, gamma, beta, dout = make_case(rng, (3, 4), F64)
    x0 = x.copy()
    buf = make_buf(x)
    with pytest.raises(exc, match="out " + msg):
        compiled.layernorm_forward(x, gamma, beta, {}, out=buf)
    np.testing.assert_array_equal(x, x0)
    _, cache = compiled.layernorm_forward(x, gamma, beta, {})
    buf = make_buf(x)
    if buf is x:
        buf = dout          # dx may not overlap dout either
    with pytest.raises(exc, match="dx " + msg):
        compiled.layernorm_backward(dout, cache, dx=buf)
    np.testing.assert_array_equal(x, x0)


def test_cache_is_lean(rng):
    x, gamma, beta, _ = make_case(rng, (11, 5), np.float32)
    _, cache = compiled.layernorm_forward(x, gamma, beta, {})
    assert isinstance(cache, compiled.LayerNormCache)
    assert cache.x is x                       # the input itself, not a copy
    assert cache.mean.shape == cache.invstd.shape == (11,)
    assert cache.mean.dtype == cache.invstd.dtype == F64
    arrays = [v for v in (getattr(cache, s) for s in cache.__slots__) if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in arrays if a is not x) < x.nbytes + 100


def test_top_level_functions_run_the_extension(monkeypatch, rng):
    """With the default backend the top-level API calls the compiled _ln kernels."""
    from fastbn import compiled_ln
    from fastbn import _dispatch
    _ln = compiled_ln._ln            # the build of _dispatch.KERNEL_ISA
    assert fastbn.get_backend() == "cython"
    assert _ln.__file__.endswith((".so", ".pyd"))
    assert _ln.__name__ == _dispatch.matching_build("_ln").__name__
    assert _ln.kernel_isa() == _dispatch.KERNEL_ISA
    calls = []
    for name in ("forward", "backward", "plain_layernorm_forward", "plain_layernorm_backward"):
        real = getattr(_ln, name)
        monkeypatch.setattr(_ln, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    x, gamma, beta, dout = make_case(rng, (6, 4), F64)
    _, cache = fastbn.layernorm_forward(x, gamma, beta, {})
    fastbn.layernorm_backward(dout, cache)
    assert calls == ["plain_layernorm_forward", "plain_layernorm_backward"]
    assert type(cache) is compiled.LayerNormCache
    calls.clear()
    _, cache = fastbn.layernorm_forward(x, gamma, beta, {}, out=np.empty_like(x))
    fastbn.layernorm_backward(dout, cache, dx=np.empty_like(x))
    assert calls == ["forward", "backward"] and type(cache) is compiled.LayerNormCache


def test_tampered_cache_is_refused_before_the_kernel(rng):
    """A cache whose arrays no longer fit x would make the kernel read out of bounds."""
    x, gamma, beta, dout = make_case(rng, (6, 4), F64)
    for attr, value in [("mean", np.zeros(3)), ("invstd", np.zeros(6, np.float32)),
                        ("gamma", np.ones(5)), ("x", x[:, :2])]:
        _, cache = compiled.layernorm_forward(x, gamma, beta, {})
        setattr(cache, attr, value)
        with pytest.raises(ValueError, match="cache is inconsistent"):
            compiled.layernorm_backward(dout if attr != "x" else dout[:, :2], cache)
    # dx over the cached gamma would be overwritten while the kernel reads it (24
    # elements on gamma's 4 also share memory among themselves: either refusal)
    _, cache = compiled.layernorm_forward(x, gamma, beta, {})
    on_gamma = np.lib.stride_tricks.as_strided(cache.gamma, x.shape,
                                               (0, cache.gamma.strides[0]), writeable=True)
    with pytest.raises(ValueError, match="dx (must not overlap|has elements that share)"):
        compiled.layernorm_backward(dout, cache, dx=on_gamma)
    np.testing.assert_array_equal(gamma, cache.gamma)
