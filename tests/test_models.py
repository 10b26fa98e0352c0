"""fastbn.models.FullyConnectedNet: classic seeded initialization, numeric
gradient checks of the whole net, test-mode behaviour and argument errors."""
import numpy as np
import pytest

from fastbn.gradient_check import eval_numerical_gradient
from fastbn.models import FullyConnectedNet

from stack_helpers import on_backend, rel_error  # noqa: F401  (fixture)

N, D, H1, H2, C = 5, 15, 20, 30, 10


def _case(seed=231):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)), rng.integers(0, C, size=N)


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
def test_classic_seeded_init_order(normalization):
    ws = 3e-2
    np.random.seed(231)
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, weight_scale=ws,
                              normalization=normalization)
    after_model = np.random.rand()

    np.random.seed(231)
    expected = {}
    for k, (i, o) in enumerate([(D, H1), (H1, H2), (H2, C)], start=1):
        expected[f"W{k}"] = (ws * np.random.randn(i, o)).astype(np.float32)
        expected[f"b{k}"] = np.zeros(o, np.float32)
        if normalization and k < 3:
            expected[f"gamma{k}"] = np.ones(o, np.float32)
            expected[f"beta{k}"] = np.zeros(o, np.float32)
    after_expected = np.random.rand()

    assert sorted(model.params) == sorted(expected)
    for key, value in expected.items():
        assert model.params[key].dtype == np.float32, key
        np.testing.assert_array_equal(model.params[key], value, err_msg=key)
    assert after_model == after_expected              # no other draws at construction


def test_use_batchnorm_is_the_old_spelling():
    np.random.seed(0)
    a = FullyConnectedNet([4], input_dim=3, num_classes=2, use_batchnorm=True)
    np.random.seed(0)
    b = FullyConnectedNet([4], input_dim=3, num_classes=2, normalization="batchnorm")
    assert a.normalization == b.normalization == "batchnorm"
    assert sorted(a.params) == sorted(b.params) == ["W1", "W2", "b1", "b2", "beta1", "gamma1"]
    with pytest.raises(ValueError, match="use_batchnorm"):
        FullyConnectedNet([4], use_batchnorm=True, normalization="layernorm")


def _check_net_gradients(model, X, y, tol):
    loss, grads = model.loss(X, y)
    assert sorted(grads) == sorted(model.params)
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name],
                                      verbose=False, h=1e-5)
        # Central differences of a loss ~2 carry ~1e-11 absolute rounding
        # noise, so entries near zero (b before a batch norm is exactly zero)
        # need an absolute floor; a wrong formula is off by far more.
        np.testing.assert_allclose(grads[name], num, rtol=tol, atol=1e-9, err_msg=name)
    return loss


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
@pytest.mark.parametrize("reg", [0.0, 3.14])
def test_full_net_gradient_check(on_backend, normalization, reg):
    X, y = _case()
    np.random.seed(231)
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, reg=reg,
                              weight_scale=5e-2, dtype=np.float64, normalization=normalization)
    loss = _check_net_gradients(model, X, y, tol=1e-5)
    if reg == 0:
        assert abs(loss - np.log(C)) < 0.5           # small weights: near-uniform scores
    else:
        assert loss > 0.5 * reg * sum(np.sum(model.params[f"W{k}"] ** 2) for k in (1, 2, 3))


def test_dropout_net_gradient_check_with_seed():
    X, y = _case(1)
    np.random.seed(231)
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, weight_scale=5e-2,
                              dtype=np.float64, dropout=0.5, seed=123,
                              normalization="batchnorm")
    assert model.dropout_param == {"mode": "train", "p": 0.5, "seed": 123}
    _check_net_gradients(model, X, y, tol=1e-5)


def test_dropout_one_means_none():
    model = FullyConnectedNet([H1], input_dim=D, num_classes=C, dropout=1)
    assert not model.use_dropout and model.dropout_param == {}


def test_test_mode_uses_running_statistics(on_backend):
    rng = np.random.default_rng(0)
    np.random.seed(0)
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C,
                              normalization="batchnorm", dropout=0.7)
    X = rng.standard_normal((50, D)).astype(np.float32)
    y = rng.integers(0, C, 50)
    for _ in range(5):
        model.loss(X, y)                               # train mode: updates running stats
    assert model.bn_params[0]["running_mean"].shape == (H1,)
    scores = model.loss(X)
    assert scores.shape == (50, C) and scores.dtype == np.float32
    assert model.bn_params[0]["mode"] == "test" and model.dropout_param["mode"] == "test"
    # test mode: a sample's scores do not depend on the rest of the batch
    np.testing.assert_allclose(model.loss(X[:1]), scores[:1], rtol=1e-5, atol=1e-5)


def test_float32_net_grads_keep_dtype(on_backend):
    X, y = _case()
    np.random.seed(1)
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C,
                              normalization="layernorm", reg=0.1)
    loss, grads = model.loss(X, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert all(g.dtype == np.float32 for g in grads.values())


def test_backends_give_the_same_net_gradients():
    X, y = _case(2)
    results = []
    for backend in ("cython", "numpy"):
        np.random.seed(5)
        model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, reg=0.5,
                                  dtype=np.float64, normalization="batchnorm")
        import fastbn
        with fastbn.backend(backend):
            results.append(model.loss(X, y))
    assert abs(results[0][0] - results[1][0]) < 1e-12
    for key in results[0][1]:
        np.testing.assert_allclose(results[0][1][key], results[1][1][key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(normalization="groupnorm"), "normalization"),
    (dict(dropout=0), "dropout"),
    (dict(dropout=1.2), "dropout"),
    (dict(hidden_dims=[10, 0]), r"hidden_dims\[1\]"),
    (dict(input_dim=2.5), "input_dim"),
])
def test_bad_arguments(kwargs, match):
    kwargs = {"hidden_dims": [10], **kwargs}
    with pytest.raises(ValueError, match=match):
        FullyConnectedNet(**kwargs)


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype"):
        FullyConnectedNet([3], dtype=np.int32)


@pytest.mark.parametrize("X_shape, y, match", [
    ((4, 14), [0, 1, 2, 3], "input_dim"),
    ((4,), [0, 1, 2, 3], "X must have shape"),
    ((4, 15), [0, 1, 2], "y must be 4"),
    ((4, 15), [0.0, 1.0, 2.0, 3.0], "integer labels"),
    ((4, 15), [0, 1, 2, 10], "num_classes"),
    ((4, 15), [-1, 1, 2, 3], "num_classes"),
])
def test_bad_loss_inputs_change_nothing(X_shape, y, match):
    np.random.seed(0)
    model = FullyConnectedNet([H1], input_dim=D, num_classes=C, normalization="batchnorm")
    X = np.ones(X_shape, np.float32)
    model.loss(np.random.randn(6, D), np.arange(6))           # running stats exist
    before = {k: v.copy() for k, v in model.bn_params[0].items() if k.startswith("running")}
    params = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError, match=match):
        model.loss(X, np.array(y))
    for k, v in before.items():
        np.testing.assert_array_equal(model.bn_params[0][k], v)
    for k, v in params.items():
        np.testing.assert_array_equal(model.params[k], v)
