"""Property-based tests (hypothesis).

1. The compiled kernels agree with ``fastbn.reference`` (in float64) over
   drawn functions, dtypes, shapes, memory layouts (axis order, steps,
   reversed axes), offsets and scales.
2. A valid call with one argument spoiled by a drawn malformed value raises
   TypeError/ValueError whose message names that argument, on both backends,
   and leaves everything the caller owns unchanged.

Examples are bounded and derandomized so CI is fast and repeatable; set
HYPOTHESIS_PROFILE=explore for a longer random search.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import fastbn
from fastbn import compiled, reference

from registry import BACKENDS, BACKWARD, FORWARD, call_forward, valid_args
from test_errors import snapshot

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

F64 = np.float64
TOL = {np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-10}


# -- 1. kernels against the reference ----------------------------------------------

@st.composite
def laid_out(draw, values):
    """``values`` in a drawn memory layout: axis order, steps, reversed axes."""
    ndim = values.ndim
    perm = draw(st.permutations(range(ndim)))
    steps = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
    flips = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    # a parent array big enough for the steps, stored in the drawn axis order
    parent_shape = tuple(n * s for n, s in zip(values.shape, steps))
    parent = np.zeros(tuple(parent_shape[p] for p in perm), values.dtype)
    parent = parent.transpose(np.argsort(perm))
    view = parent[tuple(slice(None, None, -s if f else s) for s, f in zip(steps, flips))]
    view[...] = values
    if draw(st.booleans()):
        view.flags.writeable = False
    return view


@st.composite
def kernel_case(draw):
    name = draw(st.sampled_from(sorted(BACKWARD)))
    spec = FORWARD[BACKWARD[name]]
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    if spec.ndim == 2:
        shape = (draw(st.integers(1, 40)), draw(st.integers(1, 12)))
    else:
        shape = tuple(draw(st.integers(1, n)) for n in (4, 5, 5, 5))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0, 1e3]))
    offset = scale * draw(st.floats(-100, 100))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    G = shape[1]
    x = draw(laid_out((offset + scale * rng.standard_normal(shape)).astype(dtype)))
    dout = draw(laid_out(rng.standard_normal(shape).astype(dtype)))
    gamma = (rng.standard_normal(G) * draw(st.sampled_from([0.1, 1.0, 10.0]))).astype(dtype)
    beta = (rng.standard_normal(G) * 3).astype(dtype)
    param = {"eps": draw(st.sampled_from([1e-5, 1e-3, 0.5]))}
    if spec.running:
        param.update(mode=draw(st.sampled_from(["train", "test"])),
                     momentum=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
                     running_mean=(offset + scale * rng.standard_normal(G)).astype(dtype),
                     running_var=(scale**2 * (0.5 + rng.random(G))).astype(dtype))
    return name, x, gamma, beta, param, dout


def _close(got, want, tol, what):
    err = np.max(np.abs(np.asarray(got, F64) - want)) if np.size(want) else 0.0
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"


def _condition(x, param, cache_r):
    """max|x| / min std: how much rounding at x's magnitude is amplified.

    Both implementations subtract a mean from values of size |x| and divide
    by std, so float64 arithmetic alone leaves errors ~ eps64 * K; the
    kernels' folded ``x * alpha + shift`` has the same bound.
    """
    c = cache_r.get("rows", cache_r)
    big = max(np.abs(x).max(), np.abs(param.get("running_mean", 0.0)).max())
    return big / np.min(c["std"])


@given(kernel_case())
def test_compiled_matches_reference(case):
    name, x, gamma, beta, param, dout = case
    spec = FORWARD[BACKWARD[name]]
    dtype = x.dtype
    tol, eps64 = TOL[np.dtype(dtype)], np.finfo(F64).eps
    as64 = {k: (v.astype(F64) if isinstance(v, np.ndarray) else v) for k, v in param.items()}
    p_c = dict(param)
    out, cache = getattr(compiled, spec.name)(x, gamma, beta, p_c)
    out_r, cache_r = getattr(reference, spec.name)(x.astype(F64), gamma.astype(F64),
                                                   beta.astype(F64), as64)
    K = _condition(x.astype(F64), as64, cache_r)
    g = np.abs(gamma.astype(F64)).max()
    assert out.dtype == dtype and out.shape == x.shape
    _close(out, out_r, tol * (1 + np.abs(out_r).max()) + 64 * eps64 * K * g, "out")
    for key in ("running_mean", "running_var"):
        if key in p_c:
            assert p_c[key].dtype == dtype and p_c[key].shape == gamma.shape
            _close(p_c[key], as64[key], tol * (1 + np.abs(as64[key]).max()), key)

    grads = getattr(compiled, name)(dout, cache)
    grads_r = getattr(reference, name)(dout.astype(F64), cache_r)
    assert all(gr.dtype == dtype for gr in grads)
    dy = np.abs(dout.astype(F64)).max()
    std = np.min(cache_r.get("rows", cache_r)["std"])
    _close(grads[0], grads_r[0],
           tol * (1 + np.abs(grads_r[0]).max()) + 64 * eps64 * K * g * dy / std, "dx")
    # parameter gradients are sums over many terms
    n = x.size / x.shape[1]
    for gr, r, what in zip(grads[1:], grads_r[1:], ("dgamma", "dbeta")):
        _close(gr, r, np.sqrt(n) * (tol * (1 + np.abs(r).max()) + 64 * eps64 * K * dy), what)


# -- 2. malformed arguments --------------------------------------------------------

NOT_FLOAT = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64,
                             np.bool_, np.float16, np.longdouble, np.complex64,
                             np.complex128, object, "U3", "S3", "m8[s]", "M8[s]"])
# gamma and beta take any real dtype (NumPy's same_kind casting): these do not cast
NOT_REAL = st.sampled_from([np.complex64, np.complex128, object, "U3", "S3", "m8[s]", "M8[s]"])
NOT_AN_ARRAY = st.one_of(st.none(), st.text(max_size=5), st.binary(max_size=5),
                         st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                         st.lists(st.text(max_size=3), min_size=1, max_size=4))
NOT_A_REAL = st.one_of(st.none(), st.text(max_size=5), st.booleans(),
                       st.complex_numbers(allow_nan=False, allow_infinity=False)
                       .filter(lambda z: z.imag != 0),
                       st.lists(st.floats(0, 1), max_size=2))


def _wrong_shape(draw, good):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
                 .filter(lambda s: s != good))
    return shape


@st.composite
def spoiled_call(draw):
    """(forward name, args, the argument spoiled, expected message pattern)."""
    name = draw(st.sampled_from(sorted(FORWARD)))
    spec = FORWARD[name]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    args = valid_args(spec, dtype, seed=draw(st.integers(0, 100)))
    D = args["gamma"].shape[0]
    targets = ["x_ndim", "x_dtype", "x_junk", "x_empty", "vec_shape", "vec_dtype",
               "vec_junk", "param_junk", "eps_value", "eps_type"]
    if spec.running:
        targets += ["mode", "momentum_value", "momentum_type", "running_shape", "running_dtype"]
    target = draw(st.sampled_from(targets))
    vec = draw(st.sampled_from(["gamma", "beta"]))
    run = draw(st.sampled_from(["running_mean", "running_var"]))
    p = spec.param
    if target == "x_ndim":
        ndim = draw(st.integers(0, 6).filter(lambda n: n != spec.ndim))
        args["x"] = np.ones(draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=3))
                            if ndim else (), dtype)
        return name, args, "x"
    if target == "x_dtype":
        args["x"] = args["x"].astype(draw(NOT_FLOAT))
        return name, args, "x"
    if target == "x_junk":
        args["x"] = draw(NOT_AN_ARRAY)
        return name, args, "x"
    if target == "x_empty":
        shape = list(args["x"].shape)
        shape[draw(st.sampled_from([0] + list(range(2, spec.ndim))))] = 0
        args["x"] = np.ones(shape, dtype)
        return name, args, "x"
    if target == "vec_shape":
        args[vec] = np.ones(_wrong_shape(draw, (D,)), dtype)
        return name, args, vec
    if target == "vec_dtype":
        args[vec] = args[vec].astype(draw(NOT_REAL))
        return name, args, vec
    if target == "vec_junk":
        args[vec] = draw(NOT_AN_ARRAY)
        return name, args, vec
    if target == "param_junk":
        args["param"] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                       st.lists(st.integers(), max_size=3), st.just(("mode", "train"))))
        return name, args, p
    if target == "eps_value":
        args["param"]["eps"] = draw(st.one_of(st.floats(max_value=-1e-300), st.just(np.inf),
                                              st.just(np.nan), st.just(-np.inf)))
        return name, args, "eps"
    if target == "eps_type":
        args["param"]["eps"] = draw(NOT_A_REAL)
        return name, args, "eps"
    if target == "mode":
        if draw(st.booleans()):
            del args["param"]["mode"]
        else:
            args["param"]["mode"] = draw(st.one_of(
                st.text(max_size=6).filter(lambda s: s not in ("train", "test")),
                st.none(), st.integers(), st.lists(st.just("train"), max_size=2)))
        return name, args, "mode"
    if target == "momentum_value":
        args["param"]["momentum"] = draw(st.one_of(
            st.floats(min_value=1.0, exclude_min=True), st.floats(max_value=0.0, exclude_max=True),
            st.just(np.nan)))
        return name, args, "momentum"
    if target == "momentum_type":
        args["param"]["momentum"] = draw(NOT_A_REAL)
        return name, args, "momentum"
    if target == "running_shape":
        args["param"][run] = np.ones(_wrong_shape(draw, (D,)), dtype)
        return name, args, run
    if target == "running_dtype":
        args["param"][run] = args["param"][run].astype(draw(NOT_FLOAT))
        return name, args, run
    raise AssertionError(target)


@pytest.mark.parametrize("backend", BACKENDS)
@given(call=spoiled_call())
@settings(max_examples=max(150, settings.default.max_examples))
def test_malformed_argument_is_named_and_changes_nothing(backend, call):
    name, args, culprit = call
    owned = [args["x"], args["gamma"], args["beta"], args["param"]]
    before = [snapshot(o) for o in owned]
    with fastbn.backend(backend):
        with pytest.raises((TypeError, ValueError)) as info:
            call_forward(name, args)
    message = str(info.value)
    assert culprit in message, f"message does not name {culprit!r}: {message}"
    assert [snapshot(o) for o in owned] == before


@st.composite
def spoiled_backward(draw):
    name = draw(st.sampled_from(sorted(BACKWARD)))
    spec = FORWARD[BACKWARD[name]]
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    args = valid_args(spec, dtype)
    kind = draw(st.sampled_from(["shape", "dtype", "junk", "cache"]))
    dout = np.ones_like(args["x"])
    cache = None
    if kind == "shape":
        dout = np.ones(_wrong_shape(draw, args["x"].shape), dtype)
    elif kind == "dtype":
        other = np.float64 if dtype == np.float32 else np.float32
        dout = dout.astype(draw(st.one_of(NOT_FLOAT, st.just(other))))
    elif kind == "junk":
        dout = draw(NOT_AN_ARRAY)
    else:
        cache = draw(st.one_of(st.none(), st.integers(), st.text(max_size=4),
                               st.tuples(st.integers(), st.text(max_size=2)),
                               st.dictionaries(st.sampled_from(["kind", "x", "mode"]),
                                               st.sampled_from(["batchnorm", "layernorm", "train"]),
                                               max_size=3)))
    return name, args, dout, cache, "cache" if kind == "cache" else "dout"


@pytest.mark.parametrize("backend", BACKENDS)
@given(call=spoiled_backward())
@settings(max_examples=max(80, settings.default.max_examples))
def test_malformed_backward_argument_is_named(backend, call):
    name, args, dout, cache, culprit = call
    if cache is None and culprit == "dout":
        with fastbn.backend(backend):
            _, cache = call_forward(BACKWARD[name], args)
    before = snapshot(cache)
    with pytest.raises((TypeError, ValueError)) as info:
        getattr(fastbn, name)(dout, cache)
    assert culprit in str(info.value), str(info.value)
    assert snapshot(cache) == before
