"""fastbn.reference is the specification: check it against an independent
implementation and against numeric gradients computed here."""
import math

import numpy as np
import pytest

from fastbn import reference as ref

from conftest import make_case, numeric_grad, rel_error


def fsum_batchnorm(x, gamma, beta, eps):
    """Independent batch norm: per-feature exact sums with math.fsum."""
    x = np.asarray(x, np.float64)
    N = x.shape[0]
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        col = [float(v) for v in x[:, j]]
        mean = math.fsum(col) / N
        var = math.fsum((v - mean) ** 2 for v in col) / N
        out[:, j] = [(v - mean) / math.sqrt(var + eps) * gamma[j] + beta[j] for v in col]
    return out


@pytest.mark.parametrize("shape", [(1, 3), (2, 1), (7, 5), (40, 9)])
def test_forward_matches_independent_implementation(rng, shape):
    x, gamma, beta, _ = make_case(rng, shape, np.float64, offset=3.0, scale=2.0)
    out, _ = ref.batchnorm_forward(x, gamma, beta, {"mode": "train", "eps": 1e-5})
    np.testing.assert_allclose(out, fsum_batchnorm(x, gamma, beta, 1e-5), rtol=1e-12, atol=1e-12)


def test_running_statistics_update_rule(rng):
    x, gamma, beta, _ = make_case(rng, (30, 4), np.float64)
    rm, rv = rng.standard_normal(4), rng.random(4)
    bn_param = {"mode": "train", "momentum": 0.7, "running_mean": rm, "running_var": rv}
    ref.batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(bn_param["running_mean"], 0.7 * rm + 0.3 * x.mean(0))
    np.testing.assert_allclose(bn_param["running_var"], 0.7 * rv + 0.3 * x.var(0))


def test_missing_running_stats_are_zeros_of_x_dtype(rng):
    x, gamma, beta, _ = make_case(rng, (5, 3), np.float32)
    bn_param = {"mode": "test"}
    out, _ = ref.batchnorm_forward(x, gamma, beta, bn_param)
    assert bn_param["running_mean"].dtype == np.float32
    assert not bn_param["running_mean"].any() and not bn_param["running_var"].any()
    np.testing.assert_allclose(out, x / np.sqrt(1e-5) * gamma + beta, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("backward", [ref.batchnorm_backward, ref.batchnorm_backward_alt])
@pytest.mark.parametrize("shape", [(1, 2), (4, 5), (9, 1)])
def test_reference_gradients_match_numeric(rng, mode, backward, shape):
    x, gamma, beta, dout = make_case(rng, shape, np.float64)
    bn_param = {"mode": mode, "running_mean": rng.standard_normal(shape[1]),
                "running_var": 0.5 + rng.random(shape[1])}

    def fwd(x_, g_=gamma, b_=beta):
        return ref.batchnorm_forward(x_, g_, b_, dict(bn_param))[0]

    _, cache = ref.batchnorm_forward(x, gamma, beta, dict(bn_param))
    dx, dgamma, dbeta = backward(dout, cache)
    if not (mode == "train" and shape[0] == 1):  # N=1 train: dx is 0, numerically tiny noise
        assert rel_error(dx, numeric_grad(fwd, x, dout)) < 1e-7
    assert rel_error(dgamma, numeric_grad(lambda g: fwd(x, g), gamma, dout)) < 1e-7
    assert rel_error(dbeta, numeric_grad(lambda b: fwd(x, gamma, b), beta, dout)) < 1e-7


def test_graph_and_closed_form_backward_agree(rng):
    x, gamma, beta, dout = make_case(rng, (50, 20), np.float64, offset=5.0)
    _, cache = ref.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    for a, b in zip(ref.batchnorm_backward(dout, cache), ref.batchnorm_backward_alt(dout, cache)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_spatial_reference_is_per_channel_batchnorm(rng):
    x, gamma, beta, dout = make_case(rng, (3, 4, 5, 2), np.float64)
    out, cache = ref.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 4)
    expect = fsum_batchnorm(rows, gamma, beta, 1e-5).reshape(3, 5, 2, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)

    def fwd(x_):
        return ref.spatial_batchnorm_forward(x_, gamma, beta, {"mode": "train"})[0]

    dx, _, _ = ref.spatial_batchnorm_backward(dout, cache)
    assert rel_error(dx, numeric_grad(fwd, x, dout)) < 1e-7
