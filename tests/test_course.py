"""The course's own checks, stated the way its notebooks state them.

The BatchNormalization and ConvolutionalNetworks notebooks print statistics
before and after normalization ("means should be close to zero and stds
close to one", or to beta and gamma) and relative errors of numeric
gradients ("you should expect errors of magnitude 1e-7 or smaller" in
float64; group norm: "between 1e-12 and 1e-07").  Here those expectations
are what the tests assert, on both backends, through ``fastbn.layers`` as a
student's ``from cs231n.layers import *`` would reach them.
"""
import warnings

import numpy as np
import pytest

import fastbn
from fastbn.gradient_check import eval_numerical_gradient_array, rel_error
from fastbn.models import FullyConnectedNet
from fastbn.solver import Solver

BACKENDS = ["cython", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with fastbn.backend(request.param):
        yield request.param


# -- forward statistics after normalization ---------------------------------------

def test_batchnorm_train_forward_statistics(backend):
    from fastbn.layers import batchnorm_forward
    np.random.seed(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    X = np.random.randn(N, D1)
    W1, W2 = np.random.randn(D1, D2), np.random.randn(D2, D3)
    a = np.maximum(0, X.dot(W1)).dot(W2)
    # means close to zero and stds close to one
    a_norm, _ = batchnorm_forward(a, np.ones(D3), np.zeros(D3), {"mode": "train"})
    np.testing.assert_allclose(a_norm.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(a_norm.std(axis=0), 1, atol=1e-4)
    # means close to beta and stds close to gamma
    gamma, beta = np.asarray([1.0, 2.0, 3.0]), np.asarray([11.0, 12.0, 13.0])
    a_norm, _ = batchnorm_forward(a, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(a_norm.mean(axis=0), beta, atol=1e-10)
    np.testing.assert_allclose(a_norm.std(axis=0), gamma, rtol=1e-4)


def test_batchnorm_test_forward_after_training_the_running_averages(backend):
    from fastbn.layers import batchnorm_forward
    np.random.seed(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    W1, W2 = np.random.randn(D1, D2), np.random.randn(D2, D3)
    bn_param = {"mode": "train"}
    gamma, beta = np.ones(D3), np.zeros(D3)
    for _ in range(50):
        a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
        batchnorm_forward(a, gamma, beta, bn_param)
    bn_param["mode"] = "test"
    a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
    a_norm, _ = batchnorm_forward(a, gamma, beta, bn_param)
    # means close to zero and stds close to one, but noisier than train time
    assert np.all(np.abs(a_norm.mean(axis=0)) < 0.3)
    assert np.all(np.abs(a_norm.std(axis=0) - 1) < 0.3)


def test_spatial_batchnorm_forward_statistics(backend):
    from fastbn.layers import spatial_batchnorm_forward
    np.random.seed(231)
    N, C, H, W = 2, 3, 4, 5
    x = 4 * np.random.randn(N, C, H, W) + 10
    out, _ = spatial_batchnorm_forward(x, np.ones(C), np.zeros(C), {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)
    gamma, beta = np.asarray([3, 4, 5]), np.asarray([6, 7, 8])     # integers, as in the cell
    out, _ = spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"}) \
        if _ints_accepted() else spatial_batchnorm_forward(
            x, gamma.astype(float), beta.astype(float), {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), gamma, rtol=1e-4)


def _ints_accepted():
    """gamma/beta of integer dtype follow NumPy's same_kind casting rule."""
    try:
        fastbn.batchnorm_forward(np.ones((2, 1)), np.asarray([1]), np.asarray([0]),
                                 {"mode": "train"})
    except TypeError:
        return False
    return True


def test_groupnorm_forward_statistics_per_group(backend):
    from fastbn.layers import spatial_groupnorm_forward
    np.random.seed(231)
    N, C, H, W = 2, 6, 4, 5
    G = 2
    x = 4 * np.random.randn(N, C, H, W) + 10
    x_g = x.reshape((N * G, -1))
    assert np.all(np.abs(x_g.mean(axis=1) - 10) < 2)      # before: far from 0
    gamma, beta = np.ones((1, C, 1, 1)), np.zeros((1, C, 1, 1))
    bn_param = {"mode": "train"}
    out, _ = spatial_groupnorm_forward(x, gamma, beta, G, bn_param)
    out_g = out.reshape((N * G, -1))
    # means should be close to zero and stds close to one, per group
    np.testing.assert_allclose(out_g.mean(axis=1), 0, atol=1e-10)
    np.testing.assert_allclose(out_g.std(axis=1), 1, atol=1e-4)


# -- numeric gradients, below the printed orders of magnitude ---------------------

def _grads(fwd, bwd, x, gamma, beta, dout, param, *extra):
    fx = lambda x: fwd(x, gamma, beta, *extra, param)[0]      # noqa: E731
    fg = lambda a: fwd(x, a, beta, *extra, param)[0]          # noqa: E731
    fb = lambda b: fwd(x, gamma, b, *extra, param)[0]         # noqa: E731
    num = [eval_numerical_gradient_array(f, v.copy(), dout)
           for f, v in ((fx, x), (fg, gamma), (fb, beta))]
    _, cache = fwd(x, gamma, beta, *extra, param)
    return num, bwd(dout, cache)


@pytest.mark.parametrize("which", ["batchnorm_backward", "batchnorm_backward_alt"])
def test_batchnorm_backward_errors(backend, which):
    from fastbn import layers
    np.random.seed(231)
    N, D = 4, 5
    x = 5 * np.random.randn(N, D) + 12
    gamma, beta = np.random.randn(D), np.random.randn(D)
    dout = np.random.randn(N, D)
    num, ana = _grads(layers.batchnorm_forward, getattr(layers, which), x, gamma, beta, dout,
                      {"mode": "train"})
    # "You should expect to see relative errors between 1e-13 and 1e-8"
    for n, a in zip(num, ana):
        assert rel_error(n, a) < 1e-8


def test_layernorm_backward_errors(backend):
    from fastbn.layers import layernorm_backward, layernorm_forward
    np.random.seed(231)
    N, D = 4, 5
    x = 5 * np.random.randn(N, D) + 12
    gamma, beta = np.random.randn(D), np.random.randn(D)
    dout = np.random.randn(N, D)
    num, ana = _grads(layernorm_forward, layernorm_backward, x, gamma, beta, dout,
                      {"mode": "train"})
    for n, a in zip(num, ana):
        assert rel_error(n, a) < 1e-8


def test_spatial_batchnorm_backward_errors(backend):
    from fastbn.layers import spatial_batchnorm_backward, spatial_batchnorm_forward
    np.random.seed(231)
    N, C, H, W = 2, 3, 4, 5
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma, beta = np.random.randn(C), np.random.randn(C)
    dout = np.random.randn(N, C, H, W)
    num, ana = _grads(spatial_batchnorm_forward, spatial_batchnorm_backward, x, gamma, beta,
                      dout, {"mode": "train"})
    # "You should expect errors of magnitudes between 1e-12~1e-06"
    for n, a in zip(num, ana):
        assert rel_error(n, a) < 1e-6


def test_groupnorm_backward_errors(backend):
    from fastbn.layers import spatial_groupnorm_backward, spatial_groupnorm_forward
    np.random.seed(231)
    N, C, H, W = 2, 6, 4, 5
    G = 2
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma, beta = np.random.randn(1, C, 1, 1), np.random.randn(1, C, 1, 1)
    dout = np.random.randn(N, C, H, W)
    num, ana = _grads(spatial_groupnorm_forward, spatial_groupnorm_backward, x, gamma, beta,
                      dout, {}, G)
    # "You should expect errors of magnitudes between 1e-12~1e-06"
    for n, a in zip(num, ana):
        assert rel_error(n, a) < 1e-6
        assert a.shape == n.shape


# -- a batch of one in train mode: the classic result, with a warning --------------

ONE_VALUE = [
    ("batchnorm_forward", (1, 4), None),
    ("spatial_batchnorm_forward", (1, 3, 1, 1), None),
    ("spatial_groupnorm_forward", (2, 4, 1, 1), 4),
]


@pytest.mark.parametrize("name,shape,G", ONE_VALUE, ids=[c[0] for c in ONE_VALUE])
def test_a_single_value_per_statistic_warns_and_gives_beta(backend, name, shape, G):
    C = shape[1]
    x = np.random.default_rng(0).standard_normal(shape)
    gamma, beta = np.linspace(1, 2, C), np.linspace(-1, 1, C)
    args = (x, gamma, beta) + ((G, {}) if G else ({"mode": "train"},))
    with pytest.warns(RuntimeWarning, match="every output equals beta"):
        out, cache = getattr(fastbn, name)(*args)
    np.testing.assert_allclose(out, np.broadcast_to(beta.reshape((1, C) + (1,) * (x.ndim - 2)),
                                                    shape), atol=1e-12)
    dx = getattr(fastbn, name.replace("forward", "backward"))(np.ones(shape), cache)[0]
    np.testing.assert_allclose(dx, 0, atol=1e-12)


@pytest.mark.parametrize("name,shape,G", [("batchnorm_forward", (2, 4), None),
                                          ("spatial_batchnorm_forward", (1, 3, 1, 2), None),
                                          ("spatial_groupnorm_forward", (1, 4, 1, 1), 2)])
def test_two_values_per_statistic_do_not_warn(backend, name, shape, G):
    C = shape[1]
    x = np.random.default_rng(0).standard_normal(shape)
    args = (x, np.ones(C), np.zeros(C)) + ((G, {}) if G else ({"mode": "train"},))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        getattr(fastbn, name)(*args)


def test_test_mode_batch_of_one_does_not_warn(backend):
    bn_param = {"mode": "test", "running_mean": np.zeros(3), "running_var": np.ones(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fastbn.batchnorm_forward(np.ones((1, 3)), np.ones(3), np.zeros(3), bn_param)


# -- the course's names ---------------------------------------------------------------

def test_dropout_keep_ratio_is_dropout():
    kw = dict(input_dim=6, num_classes=3, dtype=np.float64, seed=1)
    X, y = np.random.default_rng(0).standard_normal((5, 6)), np.array([0, 1, 2, 1, 0])
    np.random.seed(0)
    a = FullyConnectedNet([4], dropout_keep_ratio=0.5, **kw)
    np.random.seed(0)
    b = FullyConnectedNet([4], dropout=0.5, **kw)
    assert a.use_dropout and a.dropout_param["p"] == 0.5
    la, ga = a.loss(X, y)
    lb, gb = b.loss(X, y)
    assert la == lb and all(np.array_equal(ga[k], gb[k]) for k in ga)
    assert not FullyConnectedNet([4], **kw).use_dropout


def test_dropout_keep_ratio_and_dropout_both_given_is_an_error():
    with pytest.raises(TypeError, match="dropout_keep_ratio or its older name dropout"):
        FullyConnectedNet([4], input_dim=6, num_classes=3, dropout_keep_ratio=0.5, dropout=0.5)
    with pytest.raises(ValueError, match="dropout_keep_ratio"):
        FullyConnectedNet([4], input_dim=6, num_classes=3, dropout_keep_ratio=0)


def test_unknown_solver_keyword_is_the_course_error():
    model = FullyConnectedNet([4], input_dim=6, num_classes=3)
    data = {"X_train": np.zeros((4, 6)), "y_train": np.zeros(4, int),
            "X_val": np.zeros((2, 6)), "y_val": np.zeros(2, int)}
    with pytest.raises(ValueError, match='Unrecognized arguments "learning_rate", "epochs"'):
        Solver(model, data, learning_rate=1e-3, epochs=2)


def test_layers_has_the_course_normalization_names():
    import fastbn.layers as layers
    for name in ["batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
                 "layernorm_forward", "layernorm_backward",
                 "spatial_batchnorm_forward", "spatial_batchnorm_backward",
                 "spatial_groupnorm_forward", "spatial_groupnorm_backward",
                 "affine_forward", "affine_backward", "relu_forward", "relu_backward",
                 "dropout_forward", "dropout_backward", "softmax_loss"]:
        assert name in layers.__all__ and callable(getattr(layers, name)), name


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_spatial_norm_relu_sandwiches(backend, norm):
    from fastbn import layers
    rng = np.random.default_rng(3)
    N, C, H, W = 2, 4, 3, 3
    x = rng.standard_normal((N, C, H, W)) + 0.3
    gamma, beta = 1 + rng.random(C), rng.standard_normal(C)
    dout = rng.standard_normal(x.shape)
    extra = ({"mode": "train"},) if norm == "bn" else (2, {})
    fwd = getattr(layers, f"spatial_{norm}_relu_forward")
    bwd = getattr(layers, f"spatial_{norm}_relu_backward")
    out, cache = fwd(x, gamma, beta, *extra)
    plain = (layers.spatial_batchnorm_forward if norm == "bn"
             else layers.spatial_groupnorm_forward)(x, gamma, beta, *extra)[0]
    np.testing.assert_array_equal(out, np.maximum(plain, 0))
    dx, dgamma, dbeta = bwd(dout, cache)
    num = eval_numerical_gradient_array(lambda v: fwd(v, gamma, beta, *extra)[0], x.copy(),
                                        dout)
    assert rel_error(num, dx) < 1e-6
    assert dgamma.shape == dbeta.shape == (C,)


# -- a notebook's cells, unchanged, on `from fastbn.layers import *` ----------------

NOTEBOOK = r'''
from fastbn.layers import *
from fastbn.models import FullyConnectedNet
from fastbn.gradient_check import eval_numerical_gradient_array, rel_error
import numpy as np

np.random.seed(231)
N, C, H, W = 2, 3, 4, 5
x = 4 * np.random.randn(N, C, H, W) + 10
gamma = np.asarray([3, 4, 5])
beta = np.asarray([6, 7, 8])
out, _ = spatial_batchnorm_forward(x, gamma, beta, {'mode': 'train'})
sb_means, sb_stds = out.mean(axis=(0, 2, 3)), out.std(axis=(0, 2, 3))

N, C, H, W = 2, 6, 4, 5
G = 2
x = 4 * np.random.randn(N, C, H, W) + 10
gamma, beta = np.ones((1, C, 1, 1)), np.zeros((1, C, 1, 1))
bn_param = {'mode': 'train'}
out, _ = spatial_groupnorm_forward(x, gamma, beta, G, bn_param)
out_g = out.reshape((N * G, -1))
gn_means, gn_stds = out_g.mean(axis=1), out_g.std(axis=1)

x = 5 * np.random.randn(N, C, H, W) + 12
gamma = np.random.randn(1, C, 1, 1)
beta = np.random.randn(1, C, 1, 1)
dout = np.random.randn(N, C, H, W)
gn_param = {}
fx = lambda x: spatial_groupnorm_forward(x, gamma, beta, G, gn_param)[0]
dx_num = eval_numerical_gradient_array(fx, x, dout)
_, cache = spatial_groupnorm_forward(x, gamma, beta, G, gn_param)
dx, dgamma, dbeta = spatial_groupnorm_backward(dout, cache)
gn_dx_error = rel_error(dx_num, dx)

np.random.seed(231)
N, D, H1, H2, C = 2, 15, 20, 30, 10
X = np.random.randn(N, D)
y = np.random.randint(C, size=(N,))
for dropout_keep_ratio in [1, 0.75, 0.5]:
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C,
                              weight_scale=5e-2, dtype=np.float64,
                              dropout_keep_ratio=dropout_keep_ratio, seed=123)
    loss, grads = model.loss(X, y)
'''


def test_notebook_cells_run_unchanged(backend):
    if not _ints_accepted():
        pytest.skip("integer gamma is not converted yet")
    ns = {}
    exec(compile(NOTEBOOK, "<notebook>", "exec"), ns)
    np.testing.assert_allclose(ns["sb_means"], [6, 7, 8], atol=1e-10)
    np.testing.assert_allclose(ns["sb_stds"], [3, 4, 5], rtol=1e-4)
    np.testing.assert_allclose(ns["gn_means"], 0, atol=1e-10)
    np.testing.assert_allclose(ns["gn_stds"], 1, atol=1e-4)
    assert ns["gn_dx_error"] < 1e-6     # the notebook: "errors of magnitudes between 1e-12~1e-06"
    assert np.isfinite(ns["loss"])
