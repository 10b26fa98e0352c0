"""Group normalization: the reference against an independent implementation
and numeric gradients, the compiled backend against the reference, and the
bad-input table."""
import math

import numpy as np
import pytest

import fastbn
from fastbn import reference as ref

from conftest import numeric_grad, rel_error

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
