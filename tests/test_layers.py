"""fastbn.layers: numeric gradient checks of every layer (float64), dtype
preservation (float32), and the normalization layers riding the backend switch."""
import numpy as np
import pytest

import fastbn
from fastbn import compiled, layers, reference
from fastbn.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array

from stack_helpers import on_backend, rel_error  # noqa: F401  (fixture)

F64 = np.float64


@pytest.fixture
def rng():
    return np.random.default_rng(231)


def test_affine_forward_values():
    x = np.arange(2 * 2 * 3, dtype=F64).reshape(2, 2, 3)         # 4-D-ish input, flattened
    w = np.linspace(-1, 1, 6 * 4).reshape(6, 4)
    b = np.array([0.5, -0.5, 1.0, 0.0])
    out, _ = layers.affine_forward(x, w, b)
    expected = np.array([[sum(x[n].ravel()[d] * w[d, m] for d in range(6)) + b[m]
                          for m in range(4)] for n in range(2)])
    np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_affine_backward_numeric(rng):
    x = rng.standard_normal((5, 2, 3, 3))
    w = rng.standard_normal((18, 7))
    b = rng.standard_normal(7)
    dout = rng.standard_normal((5, 7))
    _, cache = layers.affine_forward(x, w, b)
    dx, dw, db = layers.affine_backward(dout, cache)
    assert dx.shape == x.shape
    f = {"x": lambda v: layers.affine_forward(v, w, b)[0],
         "w": lambda v: layers.affine_forward(x, v, b)[0],
         "b": lambda v: layers.affine_forward(x, w, v)[0]}
    assert rel_error(dx, eval_numerical_gradient_array(f["x"], x.copy(), dout)) < 1e-8
    assert rel_error(dw, eval_numerical_gradient_array(f["w"], w.copy(), dout)) < 1e-8
    assert rel_error(db, eval_numerical_gradient_array(f["b"], b.copy(), dout)) < 1e-8


def test_affine_shape_mismatch_names_w():
    with pytest.raises(ValueError, match="w must be"):
        layers.affine_forward(np.ones((2, 3)), np.ones((4, 5)), np.zeros(5))


def test_relu(rng):
    x = rng.standard_normal((6, 7))
    x[np.abs(x) < 1e-3] = 0.5                 # keep away from the kink
    out, cache = layers.relu_forward(x)
    np.testing.assert_array_equal(out, np.where(x > 0, x, 0))
    dout = rng.standard_normal(x.shape)
    dx = layers.relu_backward(dout, cache)
    num = eval_numerical_gradient_array(lambda v: layers.relu_forward(v)[0], x.copy(), dout)
    assert rel_error(dx, num) < 1e-9


def test_softmax_loss(rng):
    N, C = 9, 10
    x = 1e-3 * rng.standard_normal((N, C))
    y = rng.integers(0, C, N)
    loss, dx = layers.softmax_loss(x, y)
    assert abs(loss - np.log(C)) < 1e-2                       # near-uniform scores
    num = eval_numerical_gradient(lambda v: layers.softmax_loss(v, y)[0], x.copy(), verbose=False)
    assert rel_error(dx, num) < 1e-7


def test_softmax_loss_large_scores_stay_finite_float32():
    x = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], np.float32)
    loss, dx = layers.softmax_loss(x, np.array([0, 2]))
    assert np.isfinite(loss) and abs(loss - np.log(3) / 2) < 1e-6
    assert dx.dtype == np.float32 and np.all(np.isfinite(dx))


def test_softmax_loss_bad_labels():
    with pytest.raises(ValueError, match="y"):
        layers.softmax_loss(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="y"):
        layers.softmax_loss(np.zeros((2, 3)), np.array([0]))


def test_dropout_keep_probability_and_scaling(rng):
    x = rng.standard_normal((500, 500)) + 10
    for p in (0.25, 0.6, 0.75):
        out, _ = layers.dropout_forward(x, {"mode": "train", "p": p})
        assert abs(np.mean(out == 0) - (1 - p)) < 0.01          # p is the KEEP probability
        assert abs(out.mean() - x.mean()) < 0.1                 # inverted: expectation kept
        out_test, _ = layers.dropout_forward(x, {"mode": "test", "p": p})
        assert out_test is x


def test_dropout_seed_reproduces_classic_mask_without_touching_global_rng(rng):
    x = rng.standard_normal((10, 10))
    state = np.random.get_state()
    out, _ = layers.dropout_forward(x, {"mode": "train", "p": 0.3, "seed": 123})
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    np.random.seed(123)
    mask = (np.random.rand(10, 10) < 0.3) / 0.3
    np.testing.assert_array_equal(out, x * mask)
    np.random.set_state(state)


def test_dropout_backward_numeric(rng):
    x = rng.standard_normal((10, 10)) + 10
    param = {"mode": "train", "p": 0.2, "seed": 123}
    dout = rng.standard_normal(x.shape)
    _, cache = layers.dropout_forward(x, param)
    dx = layers.dropout_backward(dout, cache)
    num = eval_numerical_gradient_array(lambda v: layers.dropout_forward(v, param)[0], x.copy(), dout)
    assert rel_error(dx, num) < 1e-9


@pytest.mark.parametrize("p", [0, 1.5])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match="keep probability"):
        layers.dropout_forward(np.ones(3), {"mode": "train", "p": p})


# -- normalization layers through the backend switch ---------------------------

def test_norm_layers_are_the_top_level_functions():
    assert layers.batchnorm_forward is fastbn.batchnorm_forward
    assert layers.batchnorm_backward is fastbn.batchnorm_backward
    assert layers.layernorm_forward is fastbn.layernorm_forward
    assert layers.layernorm_backward is fastbn.layernorm_backward


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_layers_match_reference(on_backend, rng, norm, dtype):
    x = (5 + 3 * rng.standard_normal((13, 7))).astype(dtype)
    gamma = rng.standard_normal(7).astype(dtype)
    beta = rng.standard_normal(7).astype(dtype)
    dout = rng.standard_normal((13, 7)).astype(dtype)
    param = {"mode": "train"}
    fwd, bwd = getattr(layers, f"{norm}_forward"), getattr(layers, f"{norm}_backward")
    out, cache = fwd(x, gamma, beta, param)
    grads = bwd(dout, cache)
    ref_out, ref_cache = getattr(reference, f"{norm}_forward")(
        x.astype(F64), gamma.astype(F64), beta.astype(F64), {"mode": "train"})
    ref_grads = getattr(reference, f"{norm}_backward")(dout.astype(F64), ref_cache)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert out.dtype == dtype
    np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol)


def _sandwich_case(rng, N=6, D=(2, 5), M=7):
    x = rng.standard_normal((N,) + D)
    w = rng.standard_normal((int(np.prod(D)), M))
    b = rng.standard_normal(M)
    gamma = 1 + 0.3 * rng.standard_normal(M)
    beta = 0.5 + 0.3 * rng.standard_normal(M)      # mostly positive: few units near the kink
    dout = rng.standard_normal((N, M))
    return x, w, b, gamma, beta, dout


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
def test_affine_norm_relu_numeric(on_backend, rng, normalization):
    x, w, b, gamma, beta, dout = _sandwich_case(rng)
    param = {"mode": "train"} if normalization == "batchnorm" else {}

    def f(x=x, w=w, b=b, gamma=gamma, beta=beta):
        return layers.affine_norm_relu_forward(x, w, b, gamma, beta, param, normalization)[0]

    _, cache = layers.affine_norm_relu_forward(x, w, b, gamma, beta, param, normalization)
    dx, dw, db, dgamma, dbeta = layers.affine_norm_relu_backward(dout, cache)
    checks = [(dx, "x", x), (dw, "w", w), (db, "b", b)]
    if normalization is None:
        assert dgamma is None and dbeta is None
    else:
        checks += [(dgamma, "gamma", gamma), (dbeta, "beta", beta)]
    for analytic, name, value in checks:
        num = eval_numerical_gradient_array(lambda v: f(**{name: v}), value.copy(), dout)
        if name == "b" and normalization == "batchnorm":
            # batch norm subtracts the batch mean, so b cannot change the
            # output: both gradients are zero up to rounding.
            assert np.abs(analytic).max() < 1e-9 and np.abs(num).max() < 1e-9
        else:
            assert rel_error(analytic, num) < 1e-6, name


def test_named_sandwiches_match_generic(rng):
    x, w, b, gamma, beta, dout = _sandwich_case(rng)
    for name, norm in [("bn", "batchnorm"), ("ln", "layernorm")]:
        out, cache = getattr(layers, f"affine_{name}_relu_forward")(
            x, w, b, gamma, beta, {"mode": "train"})
        ref_out, ref_cache = layers.affine_norm_relu_forward(
            x, w, b, gamma, beta, {"mode": "train"}, norm)
        np.testing.assert_array_equal(out, ref_out)
        for g, r in zip(getattr(layers, f"affine_{name}_relu_backward")(dout, cache),
                        layers.affine_norm_relu_backward(dout, ref_cache)):
            np.testing.assert_array_equal(g, r)
    out, cache = layers.affine_relu_forward(x, w, b)
    np.testing.assert_array_equal(out, np.maximum(layers.affine_forward(x, w, b)[0], 0))
    dx, dw, db = layers.affine_relu_backward(dout, cache)
    np.testing.assert_array_equal(dw, layers.affine_norm_relu_backward(
        dout, layers.affine_norm_relu_forward(x, w, b, None, None, None, None)[1])[1])


def test_backend_switch_reaches_the_sandwich(rng):
    x, w, b, gamma, beta, _ = _sandwich_case(rng)
    with fastbn.backend("numpy"):
        _, cache = layers.affine_bn_relu_forward(x, w, b, gamma, beta, {"mode": "train"})
    assert isinstance(cache[2], dict)                         # the reference's cache
    with fastbn.backend("cython"):
        _, cache = layers.affine_bn_relu_forward(x, w, b, gamma, beta, {"mode": "train"})
    assert isinstance(cache[2], compiled.BatchNormCache)


def test_affine_norm_relu_rejects_unknown_normalization(rng):
    x, w, b, gamma, beta, _ = _sandwich_case(rng)
    with pytest.raises(ValueError, match="normalization"):
        layers.affine_norm_relu_forward(x, w, b, gamma, beta, {}, "groupnorm")
