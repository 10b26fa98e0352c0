"""The float32 numeric contract, at its bound.

For float32 ``x``, with *exact* meaning float64 two-pass arithmetic on the
float32 values, at any offset up to 1e4 sigma and any N up to 1e7:

* statistics: |mean - exact| <= 1e-6 sigma, |var - exact| <= 2e-6 var;
* each output: |out - exact| <= 1e-5 |gamma| (1 + |xhat|) + 2 ulp(out);
* backward: ||dx - exact||_inf <= 1e-5 ||exact||_inf, the same for dgamma
  and dbeta.

The checks are the contract itself, so they fail for a loop that sums a
whole column in plain float32: ``test_a_whole_column_in_float32_breaks_it``
runs them on such sums (NumPy's sequential ``cumsum``) and expects them to
fail.  Each test runs on every build of the kernels the CPU can execute.
"""
import importlib
import importlib.util

import numpy as np
import pytest

from fastbn import _dispatch, compiled, compiled_gn, compiled_ln, moments, reference

F64 = np.float64
MEAN_TOL, VAR_TOL, OUT_TOL, GRAD_TOL = 1e-6, 2e-6, 1e-5, 1e-5


def _exact_moments(x, axis):
    """float64 two-pass mean and biased variance of x's float32 values."""
    x64 = x.astype(F64)
    mean = x64.mean(axis=axis, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axis, keepdims=True)
    return mean, var


def check_stats(mean, var, x, axis):
    """Raise AssertionError unless (mean, var) meet the statistics contract."""
    want_mean, want_var = (a.ravel() for a in _exact_moments(x, axis))
    sigma = np.sqrt(want_var)
    mean_err = np.abs(np.ravel(mean) - want_mean) / sigma
    var_err = np.abs(np.ravel(var) - want_var) / want_var
    assert mean_err.max() <= MEAN_TOL, f"mean off by {mean_err.max():.3g} sigma"
    assert var_err.max() <= VAR_TOL, f"var off by {var_err.max():.3g} var"


def check_output(out, x, gamma, beta, axis, eps=1e-5):
    """Raise AssertionError unless every output element meets the contract."""
    mean, var = _exact_moments(x, axis)
    # one gamma per column of (N, D) (batch and layer norm), per channel of NCHW
    shape = (1, -1, 1, 1) if x.ndim == 4 else (-1,)
    g, b = gamma.astype(F64).reshape(shape), beta.astype(F64).reshape(shape)
    xhat = (x.astype(F64) - mean) / np.sqrt(var + eps)
    want = g * xhat + b
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(F64)
    bound = OUT_TOL * np.abs(g) * (1 + np.abs(xhat)) + 2 * ulp
    excess = np.abs(out.astype(F64) - want) / bound
    assert excess.max() <= 1, f"output off by {excess.max():.3g} x its bound"


def check_grads(got, want):
    """Raise AssertionError unless each gradient meets the backward contract."""
    for name, g, w in zip(("dx", "dgamma", "dbeta"), got, want):
        err = np.abs(g.astype(F64) - w).max() / np.abs(w).max()
        assert err <= GRAD_TOL, f"{name} off by {err:.3g} of its largest element"


def _case(rng, shape, offset, sigma=1.0):
    x = (offset * sigma + sigma * rng.standard_normal(shape)).astype(np.float32)
    C = shape[1]
    gamma = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    return x, gamma, beta, dout


def _layout(a, layout):
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "channels_last":
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return a


@pytest.fixture(autouse=True, params=["baseline", "avx2", "avx512"])
def build(request, monkeypatch):
    """Every kernel module of the process switched to one build."""
    isa = request.param
    if isa != "baseline":
        if not _dispatch.cpu_supports(isa):         # ask before importing: SIGILL
            pytest.skip(f"CPU lacks {isa}")
        if importlib.util.find_spec(f"fastbn._bn_{isa}") is None:
            pytest.skip("not built")
    suffix = "" if isa == "baseline" else f"_{isa}"
    for owner, attr, name in ((compiled, "_bn", "_bn"), (moments, "_bn", "_bn"),
                              (moments, "_moments", "_moments"), (compiled_ln, "_ln", "_ln"),
                              (compiled_gn, "_gn", "_gn")):
        monkeypatch.setattr(owner, attr, importlib.import_module(f"fastbn.{name}{suffix}"))
    return isa


BATCH_CASES = [
    # (shape, layout): row kernels (C, channels-last), channel kernels (F, NCHW)
    ((1000, 7), "C"), ((123457, 5), "C"), ((10**6, 3), "C"), ((3001, 1031), "C"),
    ((123457, 5), "F"), ((10**6, 3), "F"),
    ((16, 3, 250, 251), "C"), ((16, 3, 250, 251), "channels_last"),
]


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
@pytest.mark.parametrize("shape,layout", BATCH_CASES)
def test_batchnorm_float32_meets_the_contract(rng, shape, layout, offset):
    x, gamma, beta, dout = _case(rng, shape, offset, sigma=0.25)
    x, dout = _layout(x, layout), _layout(dout, layout)
    spatial = x.ndim == 4
    axis = (0, 2, 3) if spatial else 0
    fwd = compiled.spatial_batchnorm_forward if spatial else compiled.batchnorm_forward
    bwd = compiled.spatial_batchnorm_backward if spatial else compiled.batchnorm_backward
    part = moments.partial_moments(x, spatial)
    check_stats(part.mean, part.m2 / part.count, x, axis)
    out, cache = fwd(x, gamma, beta, {"mode": "train"})
    check_stats(cache.mean, 1 / cache.invstd**2 - 1e-5, x, axis)
    check_output(out, x, gamma, beta, axis)
    rfwd = reference.spatial_batchnorm_forward if spatial else reference.batchnorm_forward
    rbwd = reference.spatial_batchnorm_backward if spatial else reference.batchnorm_backward
    _, rcache = rfwd(x.astype(F64), gamma.astype(F64), beta.astype(F64), {"mode": "train"})
    check_grads(bwd(dout, cache), rbwd(dout.astype(F64), rcache))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["C", "F"])
def test_batchnorm_float32_meets_the_contract_at_ten_million(rng, layout):
    x, gamma, beta, dout = _case(rng, (10**7, 2), 1e4, sigma=0.25)
    x, dout = _layout(x, layout), _layout(dout, layout)
    part = moments.partial_moments(x)
    check_stats(part.mean, part.m2 / part.count, x, 0)
    out, cache = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    check_output(out, x, gamma, beta, 0)
    _, rcache = reference.batchnorm_forward(x.astype(F64), gamma.astype(F64),
                                            beta.astype(F64), {"mode": "train"})
    check_grads(compiled.batchnorm_backward(dout, cache),
                reference.batchnorm_backward(dout.astype(F64), rcache))


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("shape,layout", [((8, 300007), "C"), ((8, 300007), "F"),
                                          ((4099, 257), "C"), ((4099, 257), "F")])
def test_layernorm_float32_meets_the_contract(rng, shape, layout, offset):
    x = (offset * 0.25 + 0.25 * rng.standard_normal(shape)).astype(np.float32)
    D = shape[1]
    gamma = (1 + 0.5 * rng.standard_normal(D)).astype(np.float32)
    beta = rng.standard_normal(D).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    x, dout = _layout(x, layout), _layout(dout, layout)
    out, cache = compiled.layernorm_forward(x, gamma, beta, {})
    check_stats(cache.mean, 1 / cache.invstd**2 - 1e-5, x, 1)
    check_output(out, x, gamma, beta, 1)
    _, rcache = reference.layernorm_forward(x.astype(F64), gamma.astype(F64),
                                            beta.astype(F64), {})
    check_grads(compiled.layernorm_backward(dout, cache),
                reference.layernorm_backward(dout.astype(F64), rcache))


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("shape,G,layout", [((5, 12, 61, 67), 4, "C"),
                                            ((5, 12, 61, 67), 4, "channels_last"),
                                            ((3, 6, 250, 251), 1, "C"),
                                            ((3, 6, 250, 251), 6, "channels_last")])
def test_groupnorm_float32_meets_the_contract(rng, shape, G, layout, offset):
    x, gamma, beta, dout = _case(rng, shape, offset, sigma=0.25)
    x, dout = _layout(x, layout), _layout(dout, layout)
    N, C = shape[:2]
    out, cache = compiled_gn.spatial_groupnorm_forward(x, gamma, beta, G, {})
    grouped = x.reshape(N * G, -1)                  # one row per (sample, group)
    check_stats(cache.mean, 1 / cache.invstd**2 - 1e-5, grouped, 1)
    want_mean, want_var = _exact_moments(grouped, 1)
    xhat = ((grouped.astype(F64) - want_mean) / np.sqrt(want_var + 1e-5)).reshape(shape)
    g, b = gamma.astype(F64).reshape(1, C, 1, 1), beta.astype(F64).reshape(1, C, 1, 1)
    want = g * xhat + b
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(F64)
    excess = np.abs(out.astype(F64) - want) / (OUT_TOL * np.abs(g) * (1 + np.abs(xhat)) + 2 * ulp)
    assert excess.max() <= 1, f"output off by {excess.max():.3g} x its bound"
    _, rcache = reference.spatial_groupnorm_forward(
        x.astype(F64), gamma.astype(F64).reshape(1, C, 1, 1),
        beta.astype(F64).reshape(1, C, 1, 1), G, {})
    got = compiled_gn.spatial_groupnorm_backward(dout, cache)
    want_grads = reference.spatial_groupnorm_backward(dout.astype(F64), rcache)
    check_grads([a.ravel() if i else a for i, a in enumerate(got)],
                [a.ravel() if i else a for i, a in enumerate(want_grads)])


@pytest.mark.parametrize("R", [1003, 4096 + 13])
def test_float32_statistics_do_not_depend_on_the_team_size(rng, build, R):
    """The row kernels cut their rows into one chunk per thread at multiples
    of the float32 row block, so the blocks and their float32 sums are the
    same for any team: the statistics differ only by float64 rounding."""
    kernels = importlib.import_module("fastbn._bn" + ("" if build == "baseline" else f"_{build}"))
    D = 9
    # full float32 mantissas in x - c (near an offset of 1e4 they would have
    # few bits, and every block sum would be exact)
    x = (3 + rng.standard_normal((R, D))).astype(np.float32)
    ones, zeros = np.ones(D, np.float32), np.zeros(D, np.float32)
    means = []
    for nthreads in (1, 2, 3, 5):
        stats, running = np.empty((3, D)), np.empty((2, D), np.float32)
        kernels.rows_forward_train(x, ones, zeros, 1e-5, np.empty_like(x), stats, zeros, ones,
                                   0.9, running, nthreads)
        means.append(stats[0])
    for m in means[1:]:
        np.testing.assert_allclose(m, means[0], rtol=0, atol=1e-14)


def _column_float32(x):
    """Mean and variance of each column summed start to end in float32 (the
    loop the contract rules out), shifted by the column's first value."""
    c = x[:1]
    v = x - c
    mean = np.cumsum(v, axis=0, dtype=np.float32)[-1] / np.float32(len(x))
    var = np.cumsum((v - mean) ** 2, axis=0, dtype=np.float32)[-1] / np.float32(len(x))
    return mean.astype(F64) + c.astype(F64).ravel(), var.astype(F64)


def _column_float32_unshifted(x):
    mean = np.cumsum(x, axis=0, dtype=np.float32)[-1] / np.float32(len(x))
    var = np.cumsum((x - mean) ** 2, axis=0, dtype=np.float32)[-1] / np.float32(len(x))
    return mean.astype(F64), var.astype(F64)


@pytest.mark.parametrize("naive", [_column_float32, _column_float32_unshifted])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_a_whole_column_in_float32_breaks_it(rng, naive, offset):
    """The checks above reject the loop they exist to rule out, while the
    kernels on the same data pass them."""
    x = (offset * 0.25 + 0.25 * rng.standard_normal((10**6, 3))).astype(np.float32)
    with pytest.raises(AssertionError, match="off by"):
        check_stats(*naive(x), x, 0)
    part = moments.partial_moments(x)
    check_stats(part.mean, part.m2 / part.count, x, 0)
