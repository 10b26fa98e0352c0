"""Calls in plain form run in one step (``_bn.plain_batchnorm_forward`` and
``plain_batchnorm_backward``, ``_ln.plain_layernorm_forward`` and
``plain_layernorm_backward``); they must give the general path's bits and
state, with its thread count and its placement of large outputs, and every
call outside the plain form must still take the general path (which
converts, warns or raises)."""
import warnings

import numpy as np
import pytest

import fastbn

from fastbn import _alloc, _config, _cpus, _layout, compiled, compiled_ln

# one thread and small outputs; then threaded (SERIAL_BELOW elements or more),
# and outputs of the buffer cache's size (MIN_BYTES or more) in both dtypes
SHAPES = [(2, 2), (4, 3), (7, 5), (50, 100), (33, 17), (100, 500), (255, 513),
          (257, 1023), (64, 4096), (1031, 257)]


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    # both paths must see the same team size: no load reading between them
    monkeypatch.setattr(_cpus, "free_cpus", lambda: 2)
    saved = fastbn.get_num_threads()
    fastbn.set_num_threads(2)
    yield
    fastbn.set_num_threads(saved)


def _case(rng, shape, dtype, offset=0.0):
    N, D = shape
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    gamma = (1 + 0.3 * rng.standard_normal(D)).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


def _assert_same_forward(out, cache, want, wcache, dtype):
    """The one-step output and per-feature (per-row) statistics are the general path's."""
    np.testing.assert_array_equal(out, want)
    assert out.dtype == dtype and out.flags.c_contiguous
    for name in ("mean", "invstd"):
        np.testing.assert_array_equal(getattr(cache, name), getattr(wcache, name))


def _assert_same_grads(fast, public, slow, dtype):
    """The one-step gradients, and the public function's, are the general path's."""
    for a, b in zip(fast, slow):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    for a, b in zip(public, slow):
        np.testing.assert_array_equal(a, b)


def _plain_fast(x, gamma, beta, bn_param):
    return compiled._bn.plain_batchnorm_forward(x, gamma, beta, bn_param, compiled._PLAIN)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("running", [False, True])
def test_plain_calls_give_the_general_paths_bits(rng, shape, dtype, running):
    x, gamma, beta, dout = _case(rng, shape, dtype, offset=1e3)
    extra = {}
    if running:
        extra = {"running_mean": rng.standard_normal(shape[1]).astype(dtype),
                 "running_var": rng.random(shape[1]).astype(dtype), "momentum": 0.7,
                 "eps": 1e-3}
    fast_param = {"mode": "train", **{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                       for k, v in extra.items()}}
    slow_param = {"mode": "train", **{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                       for k, v in extra.items()}}
    got = _plain_fast(x, gamma, beta, fast_param)
    assert got is not None, "a plain call took the general path"
    out, cache = got
    want, wcache = compiled.batchnorm_forward(x, gamma, beta, slow_param, out=np.empty_like(x))
    _assert_same_forward(out, cache, want, wcache, dtype)
    for key in ("running_mean", "running_var"):
        assert fast_param[key].dtype == dtype
        np.testing.assert_array_equal(fast_param[key], slow_param[key])
    assert cache.x is x and cache.gamma is gamma and cache.train is True
    # the public function takes the same step
    out2, _ = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train", **extra})
    np.testing.assert_array_equal(out2, want)

    fast = compiled._bn.plain_batchnorm_backward(dout, cache, compiled._PLAIN)
    assert fast is not None
    slow = compiled.batchnorm_backward(dout, wcache, dx=np.empty_like(x))
    _assert_same_grads(fast, compiled.batchnorm_backward_alt(dout, cache), slow, dtype)


def _forms(rng):
    """(label, x, gamma, beta, bn_param) calls outside the plain form."""
    x, g, b, _ = _case(rng, (6, 4), np.float64)
    yield "float32 gamma for float64 x", x, g.astype(np.float32), b, {"mode": "train"}
    yield "integer gamma", x, np.arange(1, 5), b, {"mode": "train"}
    yield "list beta", x, g, list(b), {"mode": "train"}
    yield "Fortran x", np.asfortranarray(x), g, b, {"mode": "train"}
    yield "strided x", np.repeat(x, 2, axis=1)[:, ::2], g, b, {"mode": "train"}
    yield "test mode", x, g, b, {"mode": "test", "running_mean": np.zeros(4),
                                 "running_var": np.ones(4)}
    yield "eps = 0", x, g, b, {"mode": "train", "eps": 0.0}
    yield "integer eps", x, g, b, {"mode": "train", "eps": 1}
    yield "numpy eps", x, g, b, {"mode": "train", "eps": np.float64(1e-5)}
    yield "eps None", x, g, b, {"mode": "train", "eps": None}
    yield "inf gamma", x, np.array([1, np.inf, 1, 1.0]), b, {"mode": "train"}
    yield "nan beta", x, g, np.array([0, 0, np.nan, 0.0]), {"mode": "train"}
    yield "negative running_var", x, g, b, {"mode": "train", "running_mean": np.zeros(4),
                                            "running_var": -np.ones(4)}
    yield "float32 running_mean", x, g, b, {"mode": "train",
                                            "running_mean": np.zeros(4, np.float32)}
    yield "batch of one", x[:1], g, b, {"mode": "train"}
    yield "one feature", x[:, :1].copy(), g[:1], b[:1], {"mode": "train"}
    yield "momentum above 1", x, g, b, {"mode": "train", "momentum": 1.5}
    yield "integer momentum", x, g, b, {"mode": "train", "momentum": 1}
    yield "no mode", x, g, b, {}
    yield "bytes mode", x, g, b, {"mode": b"train"}
    yield "big-endian x", x.astype(">f8"), g, b, {"mode": "train"}
    D = _alloc.MIN_BYTES // 8
    yield "gamma of the buffer cache's size", np.ones((2, D)), np.ones(D), np.zeros(D), \
        {"mode": "train"}


def test_calls_outside_the_plain_form_take_the_general_path(rng):
    seen = 0
    for label, x, g, b, p in _forms(rng):
        assert _plain_fast(x, g, b, dict(p)) is None, label
        seen += 1
    assert seen == 22
    class Params(dict):
        pass
    x, g, b, _ = _case(rng, (6, 4), np.float64)
    assert _plain_fast(x, g, b, Params(mode="train")) is None
    assert _plain_fast(x.view(np.matrix), g, b, {"mode": "train"}) is None


def test_general_path_behaviour_is_kept_for_plain_form_calls(rng):
    x, g, b, dout = _case(rng, (6, 4), np.float64)
    with pytest.raises(TypeError, match="bn_param\\['eps'\\]"):
        compiled.batchnorm_forward(x, g, b, {"mode": "train", "eps": None})
    with pytest.raises(ValueError, match="running_var"):
        compiled.batchnorm_forward(x, g, b, {"mode": "train", "running_mean": np.zeros(4),
                                             "running_var": -np.ones(4)})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        compiled.batchnorm_forward(x[:1], g, b, {"mode": "train"})
    assert any(issubclass(v.category, RuntimeWarning) for v in w)
    out, cache = compiled.batchnorm_forward(x, np.arange(1, 5), b, {"mode": "train"})
    assert out.dtype == np.float64
    # a cache whose x was replaced, or a dout of another shape, is refused as before
    _, cache = compiled.batchnorm_forward(x, g, b, {"mode": "train"})
    with pytest.raises(ValueError, match="shape"):
        compiled.batchnorm_backward(dout[:3], cache)
    cache.x = x[:, :3].copy()
    with pytest.raises(ValueError, match="cache is inconsistent"):
        compiled.batchnorm_backward(dout[:, :3].copy(), cache)


def _spied_policy(calls):
    def threads_for(size):
        calls.append(("threads_for", size))
        return _config.threads_for(size)

    def rows_output(shape, dtype, addresses):
        calls.append(("rows_output", shape, np.dtype(dtype), addresses))
        return _layout.rows_output(shape, dtype, addresses)

    return compiled._PLAIN._replace(threads_for=threads_for, rows_output=rows_output)


def _address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("shape, threaded, cached", [
    ((50, 100), False, False), ((300, 500), True, False), ((257, 1023), True, True)])
def test_plain_calls_size_their_team_and_place_large_outputs(rng, shape, threaded, cached):
    x, gamma, beta, dout = _case(rng, shape, np.float32)
    calls = []
    policy = _spied_policy(calls)
    out, cache = compiled._bn.plain_batchnorm_forward(x, gamma, beta, {"mode": "train"}, policy)
    want = ([("threads_for", x.size)] if threaded else []) + (
        [("rows_output", shape, x.dtype, (_address(x),))] if cached else [])
    assert calls == want
    calls.clear()
    dx, _, _ = compiled._bn.plain_batchnorm_backward(dout, cache, policy)
    want = ([("threads_for", x.size)] if threaded else []) + (
        [("rows_output", shape, x.dtype, (_address(x), _address(dout)))] if cached else [])
    assert calls == want
    if cached:
        # where the general path puts them: the page offset farthest from the inputs'
        assert _address(out) % 4096 == _layout.placement([_address(x)])
        assert _address(dx) % 4096 == _layout.placement([_address(x), _address(dout)])


def test_large_plain_calls_skip_the_python_checks(rng, monkeypatch):
    """The public functions take the one-step path at any size: with the
    general path's first steps made to fail, a plain call still runs."""
    x, gamma, beta, dout = _case(rng, (257, 1023), np.float64)
    want, wcache = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    wgrads = compiled.batchnorm_backward(dout, wcache)

    def refuse(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(compiled, "check_batchnorm_args", refuse)
    monkeypatch.setattr(compiled, "_check_cache", refuse)
    out, cache = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_array_equal(out, want)
    for a, b in zip(compiled.batchnorm_backward(dout, cache), wgrads):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AssertionError, match="general path"):
        compiled.batchnorm_forward(np.asfortranarray(x), gamma, beta, {"mode": "train"})


def test_plain_policy_errors_propagate(rng):
    # an exception in the Python side (here: the output allocation) reaches
    # the caller, and bn_param is left as it was
    def rows_output(shape, dtype, addresses):
        raise MemoryError("no buffer")

    policy = compiled._PLAIN._replace(rows_output=rows_output)
    x, gamma, beta, _ = _case(rng, (257, 1023), np.float32)
    bn_param = {"mode": "train"}
    with pytest.raises(MemoryError, match="no buffer"):
        compiled._bn.plain_batchnorm_forward(x, gamma, beta, bn_param, policy)
    assert bn_param == {"mode": "train"}


# -- layer norm ---------------------------------------------------------------

LN_SHAPES = [(1, 1), (1, 7), (4, 3), (50, 100), (257, 1023), (64, 4096), (1031, 257)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", LN_SHAPES)
def test_plain_layernorm_calls_give_the_general_paths_bits(rng, shape, dtype):
    x, gamma, beta, dout = _case(rng, shape, dtype, offset=1e3)
    _ln, policy = compiled_ln._ln, compiled_ln._PLAIN
    for ln_param in ({}, {"eps": 1e-3, "mode": "train"}):
        got = _ln.plain_layernorm_forward(x, gamma, beta, ln_param, policy)
        assert got is not None, "a plain call took the general path"
        out, cache = got
        want, wcache = compiled_ln.layernorm_forward(x, gamma, beta, ln_param,
                                                     out=np.empty_like(x))
        _assert_same_forward(out, cache, want, wcache, dtype)
        assert cache.x is x and cache.gamma is gamma
        fast = _ln.plain_layernorm_backward(dout, cache, policy)
        assert fast is not None
        slow = compiled_ln.layernorm_backward(dout, wcache, dx=np.empty_like(x))
        _assert_same_grads(fast, compiled_ln.layernorm_backward(dout, cache), slow, dtype)


def test_layernorm_calls_outside_the_plain_form_take_the_general_path(rng):
    x, g, b, dout = _case(rng, (6, 4), np.float64)
    _ln, policy = compiled_ln._ln, compiled_ln._PLAIN
    forms = [("float32 gamma", x, g.astype(np.float32), b, {}),
             ("integer gamma", x, np.arange(1, 5), b, {}),
             ("list beta", x, g, list(b), {}),
             ("Fortran x", np.asfortranarray(x), g, b, {}),
             ("strided x", np.repeat(x, 2, axis=1)[:, ::2], g, b, {}),
             ("empty x", x[:0], g, b, {}),
             ("integer eps", x, g, b, {"eps": 1}),
             ("numpy eps", x, g, b, {"eps": np.float32(1e-5)}),
             ("negative eps", x, g, b, {"eps": -1.0}),
             ("nan eps", x, g, b, {"eps": float("nan")}),
             ("mapping", x, g, b, type("P", (dict,), {})()),
             ("gamma of the buffer cache's size", np.ones((2, _alloc.MIN_BYTES // 8)),
              np.ones(_alloc.MIN_BYTES // 8), np.zeros(_alloc.MIN_BYTES // 8), {})]
    for label, xx, gg, bb, p in forms:
        assert _ln.plain_layernorm_forward(xx, gg, bb, p, policy) is None, label
    _, cache = compiled_ln.layernorm_forward(x, g, b, {})
    assert _ln.plain_layernorm_backward(dout.astype(np.float32), cache, policy) is None
    assert _ln.plain_layernorm_backward(np.asfortranarray(dout), cache, policy) is None
    assert _ln.plain_layernorm_backward(dout[:3], cache, policy) is None
    cache.mean = cache.mean[:3]
    assert _ln.plain_layernorm_backward(dout, cache, policy) is None
    with pytest.raises(ValueError, match="cache is inconsistent"):
        compiled_ln.layernorm_backward(dout, cache)
    with pytest.raises(ValueError, match="eps"):
        compiled_ln.layernorm_forward(x, g, b, {"eps": -1.0})


def test_plain_layernorm_calls_size_their_team_and_place_large_outputs(rng):
    x, gamma, beta, dout = _case(rng, (257, 1023), np.float32)
    calls = []
    policy = _spied_policy(calls)._replace(cache_type=compiled_ln.LayerNormCache)
    out, cache = compiled_ln._ln.plain_layernorm_forward(x, gamma, beta, {}, policy)
    assert calls == [("threads_for", x.size), ("rows_output", x.shape, x.dtype, (_address(x),))]
    assert _address(out) % 4096 == _layout.placement([_address(x)])
    calls.clear()
    compiled_ln._ln.plain_layernorm_backward(dout, cache, policy)
    assert calls == [("threads_for", x.size),
                     ("rows_output", x.shape, x.dtype, (_address(x), _address(dout)))]
