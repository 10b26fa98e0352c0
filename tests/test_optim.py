"""Update rules against values worked out by hand from the classic formulas."""
import numpy as np
import pytest

from fastbn import optim

W = np.array([1.0, -2.0])
DW = np.array([0.5, 4.0])


def test_sgd():
    w = W.copy()
    next_w, config = optim.sgd(w, DW, {"learning_rate": 0.1})
    np.testing.assert_allclose(next_w, [0.95, -2.4], rtol=1e-15)
    np.testing.assert_array_equal(w, W)                 # input untouched


def test_sgd_momentum():
    # v = 0.9 * [1, -1] - 0.1 * [0.5, 4] = [0.85, -1.3]
    config = {"learning_rate": 0.1, "momentum": 0.9, "velocity": np.array([1.0, -1.0])}
    next_w, config = optim.sgd_momentum(W, DW, config)
    np.testing.assert_allclose(config["velocity"], [0.85, -1.3], rtol=1e-15)
    np.testing.assert_allclose(next_w, [1.85, -3.3], rtol=1e-15)
    # second step from the stored velocity: v = 0.9*[0.85,-1.3] - 0.1*[0.5,4]
    next_w, config = optim.sgd_momentum(next_w, DW, config)
    np.testing.assert_allclose(config["velocity"], [0.715, -1.57], rtol=1e-14)
    np.testing.assert_allclose(next_w, [2.565, -4.87], rtol=1e-14)


def test_rmsprop():
    # cache = 0.1 * dw**2 = [0.025, 1.6]; the first step is lr / sqrt(0.1) * sign(dw)
    config = {"learning_rate": 0.1, "decay_rate": 0.9, "epsilon": 0.0}
    next_w, config = optim.rmsprop(W, DW, config)
    np.testing.assert_allclose(config["cache"], [0.025, 1.6], rtol=1e-15)
    step = 0.1 / np.sqrt(0.1)
    np.testing.assert_allclose(next_w, [1 - step, -2 - step], rtol=1e-14)


def test_adam_two_steps():
    # dw = +1 then -1, lr 1, eps 0: step 1 moves by exactly -1 (m_hat = 1,
    # v_hat = 1); step 2: m = 0.9*0.1 - 0.1 = -0.01, m_hat = -0.01/0.19,
    # v = 0.999*0.001 + 0.001 = 0.001999, v_hat = 0.001999/0.001999 = 1.
    config = {"learning_rate": 1.0, "epsilon": 0.0}
    w, config = optim.adam(np.array([3.0]), np.array([1.0]), config)
    np.testing.assert_allclose(w, [2.0], rtol=1e-15)
    assert config["t"] == 1
    np.testing.assert_allclose(config["m"], [0.1], rtol=1e-15)
    np.testing.assert_allclose(config["v"], [0.001], rtol=1e-13)
    w, config = optim.adam(w, np.array([-1.0]), config)
    assert config["t"] == 2
    np.testing.assert_allclose(config["m"], [-0.01], rtol=1e-13)
    np.testing.assert_allclose(config["v"], [0.001999], rtol=1e-13)
    np.testing.assert_allclose(w, [2.0 + 0.01 / 0.19], rtol=1e-13)


def test_adam_constant_gradient_steps_by_lr():
    config = {"learning_rate": 0.1}
    w = W.copy()
    for t in range(1, 4):
        w, config = optim.adam(w, DW, config)
        np.testing.assert_allclose(w, W - 0.1 * t * np.sign(DW), rtol=1e-7)


@pytest.mark.parametrize("rule, defaults", [
    (optim.sgd, {"learning_rate": 1e-2}),
    (optim.sgd_momentum, {"learning_rate": 1e-2, "momentum": 0.9}),
    (optim.rmsprop, {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8}),
    (optim.adam, {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_defaults_and_dtype(rule, defaults, dtype):
    w = np.arange(6, dtype=dtype).reshape(2, 3)
    dw = np.ones_like(w)
    next_w, config = rule(w, dw)                        # config=None: all defaults
    for key, value in defaults.items():
        assert config[key] == value
    assert next_w.dtype == dtype and next_w.shape == w.shape
    assert np.all(next_w < w)                           # every rule steps downhill
    np.testing.assert_array_equal(w, np.arange(6).reshape(2, 3))
