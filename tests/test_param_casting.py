"""gamma and beta follow NumPy's casting rule for values written into x's dtype.

Any real dtype (bool, integers, floats of either width) or a plain sequence
that casts to x's dtype under ``casting='same_kind'`` is accepted and gives
exactly the result of the same values passed in x's dtype, on both
backends; the caller's array is never modified.  (What stays refused, and
why, is in tests/test_errors.py.)
"""
import numpy as np
import pytest

import fastbn
from registry import BACKENDS, BACKWARD, FORWARD, call_forward, valid_args
from test_errors import snapshot


def _integer_params(args):
    """gamma and beta rounded to small integers, in x's dtype (the exact values)."""
    rng = np.random.default_rng(7)
    D = len(args["gamma"])
    return (rng.integers(1, 6, D).astype(args["x"].dtype),
            rng.integers(-3, 4, D).astype(args["x"].dtype))


CONVERSIONS = {
    "int64": lambda v: v.astype(np.int64),
    "int8": lambda v: v.astype(np.int8),
    "uint16": lambda v: np.abs(v).astype(np.uint16) * np.sign(v).astype(np.uint16),
    "list_of_int": lambda v: [int(e) for e in v],
    "tuple_of_float": lambda v: tuple(float(e) for e in v),
    "float16": lambda v: v.astype(np.float16),
    "other_float": lambda v: v.astype(np.float32 if v.dtype == np.float64 else np.float64),
    "big_endian": lambda v: v.astype(v.dtype.newbyteorder(">")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(BACKWARD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("conversion", sorted(CONVERSIONS))
def test_real_params_give_the_result_of_x_dtype_params(backend, name, dtype, conversion):
    spec = FORWARD[BACKWARD[name]]
    args = valid_args(spec, dtype)
    gamma, beta = _integer_params(args)
    if conversion == "uint16":      # unsigned: keep beta non-negative
        beta = np.abs(beta)
    given = [CONVERSIONS[conversion](v) for v in (gamma, beta)]
    before = [snapshot(v) for v in given]
    dout = np.random.default_rng(3).standard_normal(args["x"].shape).astype(dtype)
    with fastbn.backend(backend):
        want, want_cache = call_forward(spec.name, dict(args, gamma=gamma, beta=beta,
                                                        param=dict(args["param"])))
        want_grads = getattr(fastbn, name)(dout, want_cache)
        param = dict(args["param"])
        got, cache = call_forward(spec.name, dict(args, gamma=given[0], beta=given[1],
                                                  param=param))
        grads = getattr(fastbn, name)(dout, cache)
    assert got.dtype == dtype and all(g.dtype == dtype for g in grads)
    np.testing.assert_array_equal(got, want)
    for g, w in zip(grads, want_grads):
        np.testing.assert_array_equal(g, w)
    if spec.running:
        assert param["running_mean"].dtype == param["running_var"].dtype == dtype
    assert [snapshot(v) for v in given] == before, "the caller's parameters were modified"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_course_cell_with_integer_gamma_runs(backend):
    """``gamma = np.asarray([3, 4, 5])`` as in the course's spatial batch-norm cell."""
    rng = np.random.default_rng(0)
    x = 4 * rng.standard_normal((2, 3, 4, 5)) + 10
    gamma, beta = np.asarray([3, 4, 5]), np.asarray([0, -1, 2])
    gamma_before = gamma.copy()
    with fastbn.backend(backend):
        out, _ = fastbn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), gamma, rtol=1e-5)
    np.testing.assert_array_equal(gamma, gamma_before)
    assert gamma.dtype == np.asarray([1]).dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FORWARD))
def test_bool_params_are_zero_and_one(backend, name):
    args = valid_args(FORWARD[name])
    D = len(args["gamma"])
    mask = np.arange(D) % 2 == 0
    with fastbn.backend(backend):
        got, _ = call_forward(name, dict(args, gamma=mask, beta=~mask, param=dict(args["param"])))
        want, _ = call_forward(name, dict(args, gamma=mask.astype(float),
                                          beta=(~mask).astype(float), param=dict(args["param"])))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(6,), (1, 6, 1, 1)])
def test_group_norm_takes_integer_params_in_either_shape(backend, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 3, 4))
    gamma = np.arange(1, 7).reshape(shape)
    beta = (np.arange(6) - 3).reshape(shape)
    before = gamma.copy()
    with fastbn.backend(backend):
        got, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, 3, {})
        want, want_cache = fastbn.spatial_groupnorm_forward(x, gamma.astype(float),
                                                            beta.astype(float), 3, {})
        grads = fastbn.spatial_groupnorm_backward(x, cache)
        want_grads = fastbn.spatial_groupnorm_backward(x, want_cache)
    np.testing.assert_array_equal(got, want)
    for g, w in zip(grads, want_grads):
        np.testing.assert_array_equal(g, w)
    assert grads[1].shape == shape
    np.testing.assert_array_equal(gamma, before)
