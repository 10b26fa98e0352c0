"""Group normalization: the reference against an independent implementation
and numeric gradients, the compiled backend against the reference, and the
bad-input table."""
import math

import numpy as np
import pytest

import fastbn
from fastbn import reference as ref

from conftest import numeric_grad, rel_error, with_layout
from test_errors import _self_overlapping, assert_raises_and_nothing_changed

BACKENDS = ["cython", "numpy"]


def divisors(C):
    return [g for g in range(1, C + 1) if C % g == 0]


def fsum_groupnorm(x, gamma, beta, G, eps):
    """Independent group norm: exact sums with math.fsum, one group at a time."""
    x = np.asarray(x, np.float64)
    N, C = x.shape[:2]
    gamma = np.asarray(gamma, np.float64).reshape(C)
    beta = np.asarray(beta, np.float64).reshape(C)
    out = np.empty_like(x)
    per = C // G
    for n in range(N):
        for g in range(G):
            block = x[n, g * per:(g + 1) * per]
            vals = [float(v) for v in block.ravel()]
            mean = math.fsum(vals) / len(vals)
            var = math.fsum((v - mean) ** 2 for v in vals) / len(vals)
            for k in range(per):
                c = g * per + k
                out[n, c] = (x[n, c] - mean) / math.sqrt(var + eps) * gamma[c] + beta[c]
    return out


def make_gn_case(rng, shape, dtype, offset=0.0, scale=1.0, course_shape=True):
    C = shape[1]
    pshape = (1, C, 1, 1) if course_shape else (C,)
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    gamma = (1 + 0.5 * rng.standard_normal(pshape)).astype(dtype)
    beta = rng.standard_normal(pshape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


# -- the reference is the specification ---------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 6, 4, 5), (3, 4, 1, 7), (1, 12, 2, 2)])
def test_reference_matches_independent_implementation(rng, shape):
    for G in divisors(shape[1]):
        x, gamma, beta, _ = make_gn_case(rng, shape, np.float64, offset=3.0, scale=2.0)
        out, _ = ref.spatial_groupnorm_forward(x, gamma, beta, G, {"eps": 1e-5})
        np.testing.assert_allclose(out, fsum_groupnorm(x, gamma, beta, G, 1e-5),
                                   rtol=1e-12, atol=1e-12)


def test_reference_one_group_is_layer_norm_and_C_groups_instance_norm(rng):
    N, C, H, W = 3, 4, 2, 5
    x, _, _, _ = make_gn_case(rng, (N, C, H, W), np.float64)
    ones, zeros = np.ones(C), np.zeros(C)
    out1, _ = ref.spatial_groupnorm_forward(x, ones, zeros, 1, {})
    ln, _ = ref.layernorm_forward(x.reshape(N, -1), np.ones(C * H * W), np.zeros(C * H * W), {})
    np.testing.assert_allclose(out1.reshape(N, -1), ln, rtol=1e-12, atol=1e-12)
    outC, _ = ref.spatial_groupnorm_forward(x, ones, zeros, C, {})
    inst = ref.layernorm_forward(x.reshape(N * C, -1), np.ones(H * W), np.zeros(H * W), {})[0]
    np.testing.assert_allclose(outC.reshape(N * C, -1), inst, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,G", [((2, 6, 4, 5), 2), ((3, 4, 2, 3), 1), ((2, 4, 3, 2), 4),
                                     ((1, 6, 1, 3), 3)])
def test_reference_gradients_match_numeric(rng, shape, G):
    x, gamma, beta, dout = make_gn_case(rng, shape, np.float64, offset=2.0, scale=3.0)
    gn_param = {"eps": 1e-5}
    _, cache = ref.spatial_groupnorm_forward(x, gamma, beta, G, gn_param)
    dx, dgamma, dbeta = ref.spatial_groupnorm_backward(dout, cache)
    fwd = ref.spatial_groupnorm_forward
    assert rel_error(dx, numeric_grad(lambda v: fwd(v, gamma, beta, G, gn_param)[0], x, dout)) < 1e-7
    assert rel_error(dgamma, numeric_grad(lambda v: fwd(x, v, beta, G, gn_param)[0], gamma,
                                          dout)) < 1e-7
    assert rel_error(dbeta, numeric_grad(lambda v: fwd(x, gamma, v, G, gn_param)[0], beta,
                                         dout)) < 1e-7
    assert dgamma.shape == dbeta.shape == gamma.shape


def test_reference_gamma_of_shape_C_is_the_same_as_the_course_shape(rng):
    x, gamma, beta, dout = make_gn_case(rng, (2, 6, 3, 4), np.float64)
    out4, c4 = ref.spatial_groupnorm_forward(x, gamma, beta, 3, {})
    out1, c1 = ref.spatial_groupnorm_forward(x, gamma.ravel(), beta.ravel(), 3, {})
    np.testing.assert_array_equal(out4, out1)
    g4, g1 = ref.spatial_groupnorm_backward(dout, c4), ref.spatial_groupnorm_backward(dout, c1)
    np.testing.assert_array_equal(g4[0], g1[0])
    for a, b in zip(g4[1:], g1[1:]):
        assert a.shape == (1, 6, 1, 1) and b.shape == (6,)
        np.testing.assert_array_equal(a.ravel(), b)


# -- a constant feature far from zero normalizes to exactly 0 ----------------

# 21 and 45 values per statistic: counts whose pairwise float64 mean of a
# repeated -3e25, 7e37 or 1e300 is not the value itself
CONSTANT_CASES = [
    ("batchnorm_forward", "batchnorm_backward", (21, 3)),
    ("spatial_batchnorm_forward", "spatial_batchnorm_backward", (3, 2, 7, 1)),
    ("layernorm_forward", "layernorm_backward", (3, 21)),
    ("spatial_groupnorm_forward", "spatial_groupnorm_backward", (3, 4, 5, 9)),
]


def _call_forward(name, x, gamma, beta):
    fn = getattr(fastbn, name)
    if name == "spatial_groupnorm_forward":
        return fn(x, gamma, beta, 4, {"eps": 1e-5})
    return fn(x, gamma, beta, {"mode": "train", "eps": 1e-5})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fwd,bwd,shape", CONSTANT_CASES, ids=[c[0] for c in CONSTANT_CASES])
@pytest.mark.parametrize("value", [1e20, -3e25, 7e37, 1e300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_data_far_from_zero_normalize_to_beta(backend, fwd, bwd, shape, value, dtype):
    """Textbook mean/var round 1e20 repeated to a mean one ulp away, giving
    out = -1 and a huge dgamma; both backends must give out = beta, dgamma = 0."""
    if abs(value) > float(np.finfo(dtype).max):
        pytest.skip("not representable")
    if getattr(fastbn, fwd, None) is None:
        pytest.skip(f"{fwd} is not public")
    x = np.full(shape, value, dtype)
    gamma = np.linspace(0.5, 2.0, shape[1]).astype(dtype)
    beta = np.linspace(-1.0, 1.0, shape[1]).astype(dtype)
    dout = np.ones(shape, dtype)
    with fastbn.backend(backend):
        out, cache = _call_forward(fwd, x, gamma, beta)
        dx, dgamma, dbeta = getattr(fastbn, bwd)(dout, cache)
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    np.testing.assert_array_equal(out, np.broadcast_to(beta.reshape(bshape), shape))
    np.testing.assert_array_equal(dgamma, np.zeros_like(dgamma))
    np.testing.assert_array_equal(dbeta, dout.sum(axis=tuple(k for k in range(len(shape))
                                                             if k != 1)))
    assert np.all(np.isfinite(dx))


# -- the compiled backend against the reference --------------------------------

LAYOUTS = ["C", "F", "strided", "reversed", "channels_last", "readonly"]
GN_SHAPES = [(1, 1, 1, 1), (2, 4, 1, 1), (1, 6, 3, 5), (3, 4, 7, 2), (2, 12, 4, 6),
             (4, 8, 9, 9), (2, 16, 1, 37), (1, 32, 5, 1)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


def _gn_cases():
    for shape in GN_SHAPES:
        C = shape[1]
        gs = sorted({1, C, *divisors(C)[1:3]})
        for dtype in (np.float32, np.float64):
            for layout in LAYOUTS:
                for G in gs:
                    yield pytest.param(shape, dtype, layout, G,
                                       id=f"{'x'.join(map(str, shape))}-{np.dtype(dtype).name}"
                                          f"-{layout}-G{G}")


@pytest.mark.parametrize("shape,dtype,layout,G", list(_gn_cases()))
def test_compiled_matches_reference(rng, shape, dtype, layout, G):
    x, gamma, beta, dout = make_gn_case(rng, shape, dtype, offset=1.5, scale=2.0,
                                        course_shape=bool(G % 2))
    xl, doutl = with_layout(x, layout), with_layout(dout, layout)
    x64 = x.astype(np.float64)
    want, rcache = ref.spatial_groupnorm_forward(x64, gamma.astype(np.float64),
                                                 beta.astype(np.float64), G, {})
    wdx, wdg, wdb = ref.spatial_groupnorm_backward(dout.astype(np.float64), rcache)
    out, cache = fastbn.compiled.spatial_groupnorm_forward(xl, gamma, beta, G, {})
    dx, dg, db = fastbn.compiled.spatial_groupnorm_backward(doutl, cache)
    # dx = invstd * gamma * dout - (group terms): computed in x's dtype, its
    # rounding is relative to the first term, which is large when the
    # group's variance is ~0 (a group of one value) even though dx is ~0
    first = np.max(np.abs(gamma)) * np.max(np.abs(dout)) * np.max(cache.invstd)
    dx_tol = dict(TOL[dtype], atol=TOL[dtype]["atol"] * max(1.0, first))
    for got, exp, tol in [(out, want, TOL[dtype]), (dx, wdx, dx_tol), (dg, wdg, TOL[dtype]),
                          (db, wdb, TOL[dtype])]:
        assert got.dtype == dtype and got.shape == exp.shape
        np.testing.assert_allclose(got, exp, **tol)
    # the input's memory order is kept for fresh outputs (NCHW / channels-last)
    if layout == "channels_last" and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous
        assert dx.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.parametrize("layout", ["C", "channels_last", "strided", "F"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_and_dx_buffers_in_any_layout(rng, layout, dtype):
    x, gamma, beta, dout = make_gn_case(rng, (3, 6, 5, 4), dtype)
    want, c0 = fastbn.compiled.spatial_groupnorm_forward(x, gamma, beta, 3, {})
    wgrads = fastbn.compiled.spatial_groupnorm_backward(dout, c0)
    for backend in BACKENDS:
        out = with_layout(np.full(x.shape, 7, dtype), layout)
        dx = with_layout(np.full(x.shape, 7, dtype), layout)
        with fastbn.backend(backend):
            r, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, 3, {}, out=out)
            grads = fastbn.spatial_groupnorm_backward(dout, cache, dx=dx)
        assert r is out and grads[0] is dx
        np.testing.assert_allclose(out, want, **TOL[dtype])
        for a, b in zip(grads, wgrads):
            np.testing.assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("shape,G", [((2, 6, 4, 5), 2), ((3, 4, 2, 3), 1), ((2, 4, 3, 2), 4)])
@pytest.mark.parametrize("layout", ["C", "channels_last"])
def test_compiled_gradients_match_numeric(rng, shape, G, layout):
    x, gamma, beta, dout = make_gn_case(rng, shape, np.float64, offset=2.0, scale=3.0)
    x = with_layout(x, layout)
    fwd = fastbn.compiled.spatial_groupnorm_forward
    _, cache = fwd(x, gamma, beta, G, {})
    dx, dgamma, dbeta = fastbn.compiled.spatial_groupnorm_backward(dout, cache)
    assert rel_error(dx, numeric_grad(lambda v: fwd(v, gamma, beta, G, {})[0], x, dout)) < 1e-7
    assert rel_error(dgamma, numeric_grad(lambda v: fwd(x, v, beta, G, {})[0], gamma,
                                          dout)) < 1e-7
    assert rel_error(dbeta, numeric_grad(lambda v: fwd(x, gamma, v, G, {})[0], beta,
                                         dout)) < 1e-7


def test_both_backends_agree_and_backward_follows_its_cache(rng):
    x, gamma, beta, dout = make_gn_case(rng, (2, 8, 3, 3), np.float64)
    results = {}
    for backend in BACKENDS:
        with fastbn.backend(backend):
            out, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, 4, {"eps": 1e-3})
        # backward on the other backend's default: the cache decides
        with fastbn.backend("numpy" if backend == "cython" else "cython"):
            results[backend] = (out, *fastbn.spatial_groupnorm_backward(dout, cache))
    for a, b in zip(results["cython"], results["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# -- the float32 contract ---------------------------------------------------------

def _exact_groupnorm(x, gamma, beta, G, eps, dout):
    """float64 two-pass arithmetic on the float32 values."""
    x64 = x.astype(np.float64)
    N, C = x.shape[:2]
    xg = x64.reshape(N, G, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    xhat = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    g64 = gamma.astype(np.float64).reshape(1, C, 1, 1)
    out = g64 * xhat + beta.astype(np.float64).reshape(1, C, 1, 1)
    d64 = dout.astype(np.float64)
    dbeta = d64.sum(axis=(0, 2, 3))
    dgamma = (d64 * xhat).sum(axis=(0, 2, 3))
    dxh = (d64 * g64).reshape(N, G, -1)
    xh = xhat.reshape(N, G, -1)
    dx = (dxh - dxh.mean(axis=2, keepdims=True)
          - xh * (dxh * xh).mean(axis=2, keepdims=True)) / np.sqrt(var + eps)
    return mean.ravel(), var.ravel(), xhat, out, dx.reshape(x.shape), dgamma, dbeta


def _check_contract(x, gamma, G, eps, dout, mean, var, out, dx, dgamma, dbeta, beta):
    em, ev, xhat, eout, edx, edg, edb = _exact_groupnorm(x, gamma, beta, G, eps, dout)
    sigma = np.sqrt(ev)
    assert np.all(np.abs(mean - em) <= 1e-6 * sigma), "mean"
    assert np.all(np.abs(var - ev) <= 2e-6 * ev), "var"
    C = x.shape[1]
    g = np.abs(gamma.astype(np.float64)).reshape(1, C, 1, 1)
    bound = 1e-5 * g * (1 + np.abs(xhat)) + 2 * np.spacing(np.abs(out)).astype(np.float64)
    assert np.all(np.abs(out.astype(np.float64) - eout) <= bound), "out"
    for got, exp, what in [(dx, edx, "dx"), (dgamma, edg, "dgamma"), (dbeta, edb, "dbeta")]:
        err = np.max(np.abs(got.astype(np.float64).reshape(exp.shape) - exp))
        assert err <= 1e-5 * np.max(np.abs(exp)), what


def _naive_float32_groupnorm(x, gamma, beta, G, eps):
    """Statistics summed element by element in float32: what the contract forbids."""
    N, C = x.shape[:2]
    xg = x.reshape(N, G, -1)
    M = np.float32(xg.shape[2])
    mean = np.cumsum(xg, axis=2, dtype=np.float32)[..., -1:] / M
    var = np.cumsum(xg * xg, axis=2, dtype=np.float32)[..., -1:] / M - mean * mean
    var = np.maximum(var, 0)
    xhat = ((xg - mean) / np.sqrt(var + np.float32(eps))).reshape(x.shape)
    out = gamma.reshape(1, C, 1, 1) * xhat + beta.reshape(1, C, 1, 1)
    return mean.ravel().astype(np.float64), var.ravel().astype(np.float64), out


@pytest.mark.parametrize("layout", ["C", "channels_last"])
@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("shape,G", [((4, 32, 17, 19), 8), ((2, 6, 64, 70), 3),
                                     ((3, 4, 1, 1000), 1)])
def test_float32_contract(rng, layout, offset, shape, G):
    sigma = 3.0
    x = (offset * sigma + sigma * rng.standard_normal(shape)).astype(np.float32)
    C = shape[1]
    gamma = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    eps = 1e-5
    out, cache = fastbn.compiled.spatial_groupnorm_forward(with_layout(x, layout), gamma, beta,
                                                           G, {"eps": eps})
    dx, dgamma, dbeta = fastbn.compiled.spatial_groupnorm_backward(with_layout(dout, layout),
                                                                   cache)
    var = 1.0 / cache.invstd ** 2 - eps
    _check_contract(x, gamma, G, eps, dout, cache.mean, var, out, dx, dgamma, dbeta, beta)


def test_float32_contract_check_fails_plain_float32_sums(rng):
    """The contract check above is not vacuous: float32 running sums fail it."""
    shape, G = (2, 8, 64, 64), 2
    x = (3e4 + 3 * rng.standard_normal(shape)).astype(np.float32)
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    mean, var, _ = _naive_float32_groupnorm(x, gamma, beta, G, 1e-5)
    em, ev, *_ = _exact_groupnorm(x, gamma, beta, G, 1e-5, np.zeros(shape))
    assert not np.all(np.abs(mean - em) <= 1e-6 * np.sqrt(ev))
    assert not np.all(np.abs(var - ev) <= 2e-6 * ev)


# -- bad input: a clear exception naming the argument, nothing changed -------------

def _valid(dtype=np.float64):
    rng = np.random.default_rng(7)
    x, gamma, beta, dout = make_gn_case(rng, (3, 6, 4, 5), dtype)
    return {"x": x, "gamma": gamma, "beta": beta, "G": 3, "param": {"eps": 1e-5}}, dout


def _gn(args, **kw):
    return fastbn.spatial_groupnorm_forward(args["x"], args["gamma"], args["beta"], args["G"],
                                            args["param"], **kw)


def _put(key, value):
    def spoil(a):
        a[key] = value(a) if callable(value) else value
    return spoil


def _eps(value):
    def spoil(a):
        a["param"]["eps"] = value
    return spoil


BAD_GN = [
    # the number of groups
    ("G_not_dividing_C", _put("G", 4), ValueError, r"G = 4 groups must divide .* C = 6"),
    ("G_more_than_C", _put("G", 12), ValueError, r"G = 12 groups must divide"),
    ("G_zero", _put("G", 0), ValueError, "G must be a positive"),
    ("G_negative", _put("G", -3), ValueError, "G must be a positive"),
    ("G_float", _put("G", 3.0), TypeError, "G must be an int"),
    ("G_bool", _put("G", True), TypeError, "G must be an int"),
    ("G_numpy_bool", _put("G", np.bool_(True)), TypeError, "G must be an int"),
    ("G_str", _put("G", "3"), TypeError, "G must be an int"),
    ("G_None", _put("G", None), TypeError, "G must be an int"),
    ("G_array", _put("G", np.array([3])), TypeError, "G must be an int"),
    # gamma / beta: (C,) and (1, C, 1, 1) only
    *[(f"{k}_{case}", _put(k, fn), err, f"{k} ")
      for k in ("gamma", "beta")
      for case, fn, err in [
          ("C_plus_1", lambda a: np.ones(7), ValueError),
          ("course_C_plus_1", lambda a: np.ones((1, 7, 1, 1)), ValueError),
          ("column", lambda a: np.ones((6, 1)), ValueError),
          ("row", lambda a: np.ones((1, 6)), ValueError),
          ("spatial", lambda a: np.ones((1, 6, 4, 5)), ValueError),
          ("scalar", lambda a: np.float64(1.0), ValueError),
          # real dtypes cast to x's (NumPy's same_kind rule); these do not
          ("object", lambda a, k=k: a[k].astype(object), TypeError),
          ("complex", lambda a, k=k: a[k].astype(complex), TypeError),
          ("None", None, TypeError),
          ("str", "ones", TypeError),
      ]],
    # x
    ("x_2d", _put("x", lambda a: a["x"][0, 0]), ValueError, r"x must be a 4-D array"),
    ("x_5d", _put("x", lambda a: a["x"][None]), ValueError, r"x must be a 4-D array"),
    ("x_N0", _put("x", lambda a: a["x"][:0]), ValueError, "x must not be empty"),
    ("x_W0", _put("x", lambda a: a["x"][..., :0]), ValueError, "x must not be empty"),
    ("x_int", _put("x", lambda a: a["x"].astype(np.int64)), TypeError, "x must have dtype"),
    ("x_float16", _put("x", lambda a: a["x"].astype(np.float16)), TypeError, "x must have dtype"),
    ("x_None", _put("x", None), TypeError, "x must be a float32 or float64 array"),
    ("x_masked", _put("x", lambda a: np.ma.masked_array(a["x"])), TypeError, "x is a masked"),
    # gn_param
    ("param_None", _put("param", None), TypeError, "gn_param must be a dict"),
    ("param_list", _put("param", [("eps", 1e-5)]), TypeError, "gn_param must be a dict"),
    ("eps_negative", _eps(-1e-5), ValueError, r"gn_param\['eps'\] must be >= 0"),
    ("eps_nan", _eps(np.nan), ValueError, r"gn_param\['eps'\] must be finite"),
    ("eps_str", _eps("1e-5"), TypeError, r"gn_param\['eps'\] must be a real number"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,spoil,exc,match", BAD_GN, ids=[c[0] for c in BAD_GN])
def test_bad_forward_argument(backend, case_id, spoil, exc, match):
    args, _ = _valid()
    spoil(args)
    owned = [args["x"], args["gamma"], args["beta"], args["param"]]
    with fastbn.backend(backend):
        assert_raises_and_nothing_changed(exc, match, lambda: _gn(args), *owned)


def test_gamma_of_shape_C_and_numpy_integer_G_are_accepted():
    args, _ = _valid()
    want, _ = _gn(args)
    for backend in BACKENDS:
        with fastbn.backend(backend):
            args2 = dict(args, gamma=args["gamma"].ravel(), beta=args["beta"].ravel(),
                         G=np.int64(3))
            np.testing.assert_allclose(_gn(args2)[0], want, rtol=1e-12, atol=1e-12)


BAD_BUFFER = [
    ("list", lambda a: a["x"].tolist(), TypeError, "must be a numpy.ndarray"),
    ("wrong_shape", lambda a: np.full(a["x"].shape[::-1], 7.0), ValueError, "must have shape"),
    ("float32", lambda a: np.full(a["x"].shape, 7, np.float32), TypeError, "must have dtype"),
    ("read_only", lambda a: _readonly(np.full_like(a["x"], 7.0)), ValueError, "read-only"),
    ("zero_stride", lambda a: _self_overlapping(a["x"], 0), ValueError, "share memory"),
    ("is_x", lambda a: a["x"], ValueError, "must not overlap"),
]


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,make,exc,match", BAD_BUFFER, ids=[c[0] for c in BAD_BUFFER])
def test_bad_out(backend, case_id, make, exc, match):
    args, _ = _valid()
    out = make(args)
    owned = [args["x"], args["gamma"], args["beta"], args["param"], out]
    with fastbn.backend(backend):
        assert_raises_and_nothing_changed(exc, f"out .*{match}", lambda: _gn(args, out=out),
                                          *owned)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,make,exc,match",
                         BAD_BUFFER + [("is_dout", lambda a: a["dout"], ValueError, "overlap")],
                         ids=[c[0] for c in BAD_BUFFER] + ["is_dout"])
def test_bad_dx(backend, case_id, make, exc, match):
    args, dout = _valid()
    with fastbn.backend(backend):
        _, cache = _gn(args)
    args["dout"] = dout
    dx = make(args)
    assert_raises_and_nothing_changed(
        exc, f"dx .*{match}", lambda: fastbn.spatial_groupnorm_backward(dout, cache, dx=dx),
        args["x"], dout, cache, dx)


BAD_DOUT = [
    ("transposed", lambda d: np.ascontiguousarray(d.transpose(1, 0, 2, 3)), ValueError,
     "dout has shape"),
    ("flattened", lambda d: d.ravel(), ValueError, "dout has shape"),
    ("float32", lambda d: d.astype(np.float32), TypeError, "dout has dtype float32"),
    ("int", lambda d: d.astype(np.int64), TypeError, "dout must have dtype"),
    ("None", lambda d: None, TypeError, "dout must be a float32 or float64 array"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,make,exc,match", BAD_DOUT, ids=[c[0] for c in BAD_DOUT])
def test_bad_dout(backend, case_id, make, exc, match):
    args, dout = _valid()
    with fastbn.backend(backend):
        _, cache = _gn(args)
    good = fastbn.spatial_groupnorm_backward(dout, cache)
    bad = make(dout)
    assert_raises_and_nothing_changed(
        exc, match, lambda: fastbn.spatial_groupnorm_backward(bad, cache), args["x"], cache, bad)
    for a, b in zip(fastbn.spatial_groupnorm_backward(dout, cache), good):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_not_ours(backend):
    args, dout = _valid()
    module = fastbn.compiled if backend == "cython" else ref
    other = "numpy" if backend == "cython" else "cython"
    with fastbn.backend(other):
        other_cache = _gn(args)[1]
    bn_cache = fastbn.spatial_batchnorm_forward(
        args["x"], args["gamma"].ravel(), args["beta"].ravel(), {"mode": "train"})[1]
    junk = [None, (1, 2), "cache", {}, {"kind": "groupnorm"}, bn_cache]
    if backend == "cython":
        junk.append(other_cache)
    for cache in junk:
        assert_raises_and_nothing_changed(
            TypeError, "cache must be the cache returned by",
            lambda: module.spatial_groupnorm_backward(dout, cache), dout, cache)


def test_compiled_cache_tampered_with_is_refused():
    args, dout = _valid()
    _, cache = fastbn.compiled.spatial_groupnorm_forward(args["x"], args["gamma"],
                                                         args["beta"], 3, {})
    good = fastbn.compiled.spatial_groupnorm_backward(dout, cache)
    tried = 0
    for attr, values in [
        ("gamma", lambda v: [v[:1], np.concatenate([v, v]), v.astype(np.float32),
                             np.repeat(v, 2)[::2], v.tolist(), None]),
        ("mean", lambda v: [v[:1], np.concatenate([v, v]), v.astype(np.float32), None]),
        ("invstd", lambda v: [v[:-1], np.repeat(v, 2)[::2], None]),
        ("G", lambda v: [2, 6, 0, 4, 3.0, None]),
        ("param_shape", lambda v: [(7,), (1, 6), None]),
        ("x", lambda v: [v.ravel(), v[..., None], v[:, :5], None]),
    ]:
        saved = getattr(cache, attr)
        for value in values(saved):
            setattr(cache, attr, value)
            try:
                with pytest.raises(ValueError, match="cache is inconsistent"):
                    fastbn.compiled.spatial_groupnorm_backward(dout, cache)
            finally:
                setattr(cache, attr, saved)
            tried += 1
    for a, b in zip(fastbn.compiled.spatial_groupnorm_backward(dout, cache), good):
        np.testing.assert_array_equal(a, b)
    assert tried >= 20


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_inputs_work_and_are_never_written(backend, dtype):
    args, dout = _valid(dtype)
    for a in (args["x"], args["gamma"], args["beta"], dout):
        a.flags.writeable = False
    before = [a.copy() for a in (args["x"], args["gamma"], args["beta"], dout)]
    with fastbn.backend(backend):
        out, cache = _gn(args)
        fastbn.spatial_groupnorm_backward(dout, cache)
    for a, b in zip((args["x"], args["gamma"], args["beta"], dout), before):
        np.testing.assert_array_equal(a, b)
    assert out.dtype == dtype


# -- misaligned arrays: inputs read through aligned copies, outputs refused --------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["packed_field", "odd_offset"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arg", ["x", "gamma", "beta", "dout"])
def test_unaligned_input_is_read_correctly(backend, kind, dtype, arg):
    from test_unaligned import unaligned
    rng = np.random.default_rng(5)
    x, gamma, beta, dout = make_gn_case(rng, (3, 8, 5, 7), dtype, offset=3.0)
    args = {"x": x, "gamma": gamma, "beta": beta, "dout": dout}
    with fastbn.backend(backend):
        out, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, 4, {})
        want = (out, *fastbn.spatial_groupnorm_backward(dout, cache))
        args[arg] = unaligned(args[arg], kind)
        out, cache = fastbn.spatial_groupnorm_forward(args["x"], args["gamma"], args["beta"],
                                                      4, {})
        got = (out, *fastbn.spatial_groupnorm_backward(args["dout"], cache))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["packed_field", "odd_offset"])
@pytest.mark.parametrize("which", ["out", "dx"])
def test_unaligned_buffer_is_refused(backend, kind, which):
    from test_unaligned import unaligned
    args, dout = _valid()
    buf = unaligned(np.full(args["x"].shape, 7.0), kind)
    with fastbn.backend(backend):
        if which == "out":
            call = lambda: _gn(args, out=buf)      # noqa: E731
            owned = [args["x"], args["param"], buf]
        else:
            cache = _gn(args)[1]
            call = lambda: fastbn.spatial_groupnorm_backward(dout, cache, dx=buf)   # noqa: E731
            owned = [args["x"], dout, cache, buf]
        assert_raises_and_nothing_changed(ValueError, which, call, *owned)
