"""Every bad argument to every public function: a clear exception naming it.

The public functions come from ``tests/registry.py``: adding a
normalization to fastbn is one entry there.  Each bad input is a table row
too: how to spoil a valid call, which exception, and a pattern its message
must match (the argument's name).  Every failing call is run on both
backends, and everything the caller owns (the param dict, its running
arrays' identity, dtype and values, the inputs, the cache and any ``out``
buffer) is snapshotted before and compared after: a failed call changes
nothing.
"""
import inspect

import numpy as np
import pytest

import fastbn
from fastbn import compiled, reference

from registry import BACKENDS, BACKWARD, FORWARD, call_forward, public_names, valid_args


# -- snapshots of everything the caller owns ---------------------------------

def snapshot(obj):
    """A comparable picture of obj: identity, type, and exact contents."""
    if isinstance(obj, np.ndarray):
        # bytes compare NaNs exactly; but longdouble and string dtypes have
        # padding bytes nobody writes, so those compare by value
        padded = obj.dtype.kind in "OUSMmV" or obj.dtype in (np.longdouble, np.clongdouble)
        data = repr(obj.tolist()) if padded else obj.tobytes()
        return ("ndarray", id(obj), obj.dtype.str, obj.shape, obj.strides,
                obj.flags.writeable, data)
    if isinstance(obj, dict):
        return ("dict", id(obj), [(k, snapshot(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, id(obj), [snapshot(v) for v in obj])
    if hasattr(type(obj), "__slots__"):
        return (type(obj).__name__, id(obj),
                [(s, snapshot(getattr(obj, s))) for s in type(obj).__slots__])
    return (type(obj).__name__, repr(obj))


def assert_raises_and_nothing_changed(exc, match, fn, *owned):
    before = [snapshot(o) for o in owned]
    with pytest.raises(exc, match=match) as info:
        fn()
    assert str(info.value).strip(), "the exception needs a message"
    after = [snapshot(o) for o in owned]
    assert after == before, "a failed call modified something the caller owns"


# -- bad forward arguments ----------------------------------------------------
# Each row: (id, which functions (None = all forward), spoil(args, spec), exception, match).

def _set(key, value):
    def spoil(a, spec):
        a[key] = value(a, spec) if callable(value) else value
    return spoil


def _param(key, value):
    def spoil(a, spec):
        a["param"][key] = value(a, spec) if callable(value) else value
    return spoil


def _drop_param(key):
    def spoil(a, spec):
        del a["param"][key]
    return spoil


def _astype(key, dtype):
    return _set(key, lambda a, spec: a[key].astype(dtype))


def _masked(a, spec):
    a["x"] = np.ma.masked_array(a["x"], mask=np.zeros(a["x"].shape, bool))


RUN = {"batchnorm_forward", "spatial_batchnorm_forward"}   # functions with running stats
ND = r"x must be a [24]-D array"
BAD_FORWARD = [
    # wrong ndim
    ("x_1d", None, _set("x", lambda a, s: a["x"].ravel()), ValueError, ND),
    ("x_3d", None, _set("x", lambda a, s: a["x"][..., None] if s.ndim == 2 else a["x"][0]), ValueError, ND),
    ("x_5d", None, _set("x", lambda a, s: a["x"][None] if s.ndim == 4 else a["x"][None, None]),
     ValueError, ND),
    ("x_0d", None, _set("x", np.float64(1.0)), ValueError, ND),
    # empty batches and empty spatial extent
    ("x_N0", None, _set("x", lambda a, s: a["x"][:0]), ValueError, "x must not be empty"),
    ("x_HW0", {"spatial_batchnorm_forward"}, _set("x", lambda a, s: a["x"][:, :, :0]),
     ValueError, "x must not be empty"),
    ("x_W0", {"spatial_batchnorm_forward"}, _set("x", lambda a, s: a["x"][..., :0]),
     ValueError, "x must not be empty"),
    ("x_D0_all_params_D0", None,
     lambda a, s: [a.update(x=a["x"][:, :0], gamma=a["gamma"][:0], beta=a["beta"][:0]),
                   a["param"].pop("running_mean", None), a["param"].pop("running_var", None)],
     ValueError, "x must not be empty"),
    # not arrays at all
    ("x_None", None, _set("x", None), TypeError, "x must be a float32 or float64 array"),
    ("x_str", None, _set("x", "abc"), TypeError, "x must be a float32 or float64 array"),
    ("x_bytes", None, _set("x", b"abc"), TypeError, "x must be a float32 or float64 array"),
    ("x_list_of_str", None, _set("x", lambda a, s: np.full(a["x"].shape, "a").tolist()),
     TypeError, "x must have dtype float32 or float64"),
    ("x_ragged", None, _set("x", [[1.0, 2.0], [3.0]]), TypeError, "x must be a float32 or float64"),
    ("x_dict", None, _set("x", {"a": 1.0}), TypeError, "x must have dtype"),
    ("x_object", None, _set("x", object()), TypeError, "x must have dtype"),
    ("x_masked", None, _masked, TypeError, "x is a masked array"),
    # dtypes that are not float32/float64: an error, never a silent cast
    *[(f"x_{np.dtype(dt).name}", None, _astype("x", dt), TypeError,
       r"x must have dtype float32 or float64.*astype")
      for dt in (np.int8, np.int32, np.int64, np.uint8, np.bool_, np.float16, np.longdouble,
                 np.complex64, np.complex128, object, "U8", "datetime64[s]")],
    ("x_big_endian", None, _astype("x", ">f8"), TypeError, "x has non-native byte order"),
    # gamma / beta: shape, type, and dtypes that do not cast to x's under
    # casting='same_kind' (real dtypes do: tests/test_param_casting.py)
    *[(f"{k}_{case}", None, _set(k, fn), err, f"{k} ")
      for k in ("gamma", "beta")
      for case, fn, err in [
          ("too_long", lambda a, s, k=k: np.concatenate([a[k], a[k][:1]]), ValueError),
          ("too_short", lambda a, s, k=k: a[k][:-1], ValueError),
          ("row", lambda a, s, k=k: a[k][None, :], ValueError),
          ("column", lambda a, s, k=k: a[k][:, None], ValueError),
          ("scalar", lambda a, s, k=k: a[k][0], ValueError),
          ("int_too_long", lambda a, s, k=k: np.arange(len(a[k]) + 1), ValueError),
          ("complex", lambda a, s, k=k: a[k].astype(complex), TypeError),
          ("complex_list", lambda a, s, k=k: (a[k] + 1j).tolist(), TypeError),
          ("object", lambda a, s, k=k: a[k].astype(object), TypeError),
          ("str_array", lambda a, s, k=k: a[k].astype("U8"), TypeError),
          ("datetime", lambda a, s, k=k: np.zeros(len(a[k]), "datetime64[s]"), TypeError),
          ("masked", lambda a, s, k=k: np.ma.masked_array(a[k]), TypeError),
          ("None", lambda a, s: None, TypeError),
          ("str", lambda a, s: "ones", TypeError),
      ]],
    # the param dict itself
    ("param_None", None, _set("param", None), TypeError, r"[bl]n_param must be a dict"),
    ("param_list", None, _set("param", [("mode", "train")]), TypeError, r"[bl]n_param must be a dict"),
    ("param_str", None, _set("param", "train"), TypeError, r"[bl]n_param must be a dict"),
    # eps
    *[(f"eps_{v!r}", None, _param("eps", v), ValueError, r"eps.*(>= 0|finite)")
      for v in (-1e-5, -np.inf, np.inf, np.nan, np.float32("nan"))],
    *[(f"eps_{type(v).__name__}", None, _param("eps", v), TypeError, r"eps.*real number")
      for v in ("1e-5", None, 1e-5 + 0j, True, np.array([1e-5]), [1e-5])],
    # mode
    ("mode_missing", RUN, _drop_param("mode"), ValueError, r"bn_param\['mode'\] is required"),
    *[(f"mode_{v!r}", RUN, _param("mode", v), ValueError, r"bn_param\['mode'\] must be")
      for v in ("Train", "eval", "", " train", None, 1, True, ["train"], ("train",))],
    ("mode_array", RUN, _param("mode", np.array(["train", "test"])), ValueError,
     r"bn_param\['mode'\] must be"),
    # momentum
    *[(f"momentum_{v!r}", RUN, _param("momentum", v), ValueError, r"momentum.*(\[0, 1\]|finite)")
      for v in (-0.1, 1.0 + 1e-9, 2, np.inf, np.nan)],
    *[(f"momentum_{type(v).__name__}", RUN, _param("momentum", v), TypeError, r"momentum.*real number")
      for v in ("0.9", None, 0.9j)],
    # running statistics
    *[(f"{k}_{case}", RUN, _param(k, v), err, rf"bn_param\['{k}'\]")
      for k in ("running_mean", "running_var")
      for case, v, err in [
          ("too_long", np.zeros(7), ValueError),
          ("row", lambda a, s: np.zeros((1, len(a["gamma"]))), ValueError),
          ("scalar", np.float64(0.0), ValueError),
          ("float32", lambda a, s: np.zeros(len(a["gamma"]), np.float32), TypeError),
          ("int", lambda a, s: np.zeros(len(a["gamma"]), int), TypeError),
          ("str", "zeros", TypeError),
          ("list_of_str", ["a", "b", "c"], TypeError),
      ]],
    *[(f"running_var_negative_{case}", RUN, _param("running_var", v), ValueError,
       r"bn_param\['running_var'\] must be >= 0.*feature")
      for case, v in [
          ("one", lambda a, s: np.where(np.arange(len(a["gamma"])) == 1, -1e-3, 1.0)
           .astype(a["x"].dtype)),
          ("all", lambda a, s: -np.ones(len(a["gamma"]), a["x"].dtype)),
          ("minus_tiny", lambda a, s: np.full(len(a["gamma"]), -np.finfo(a["x"].dtype).tiny,
                                              a["x"].dtype)),
      ]],
]


def _forward_cases():
    for name in FORWARD:
        for case_id, names, spoil, exc, match in BAD_FORWARD:
            if names is None or name in names:
                yield pytest.param(name, spoil, exc, match, id=f"{name}-{case_id}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,spoil,exc,match", list(_forward_cases()))
def test_bad_forward_argument(backend, name, spoil, exc, match):
    spec = FORWARD[name]
    args = valid_args(spec)
    spoil(args, spec)
    owned = [args["x"], args["gamma"], args["beta"], args["param"]]
    with fastbn.backend(backend):
        assert_raises_and_nothing_changed(exc, match, lambda: call_forward(name, args), *owned)


def test_registry_covers_every_public_function():
    # group norm (its extra G argument) has its own table in test_groupnorm.py
    # until it has a registry entry (Forward.extra)
    groupnorm = {"spatial_groupnorm_forward", "spatial_groupnorm_backward"}
    assert public_names() == set(FORWARD) | set(BACKWARD) | groupnorm


# -- bad backward arguments ---------------------------------------------------

def _forward_for(backward_name, backend, dtype=np.float64):
    spec = FORWARD[BACKWARD[backward_name]]
    args = valid_args(spec, dtype)
    with fastbn.backend(backend):
        _, cache = call_forward(spec.name, args)
    return args, cache


BAD_DOUT = [
    ("transposed", lambda x: np.ascontiguousarray(x.T), ValueError, "dout has shape"),
    ("one_row_more", lambda x: np.concatenate([x, x[:1]]), ValueError, "dout has shape"),
    ("one_row_less", lambda x: x[1:], ValueError, "dout has shape"),
    ("extra_axis", lambda x: x[None], ValueError, "dout has shape"),
    ("flattened", lambda x: x.ravel(), ValueError, "dout has shape"),
    ("float32", lambda x: x.astype(np.float32), TypeError, "dout has dtype float32"),
    ("int", lambda x: x.astype(np.int64), TypeError, "dout must have dtype"),
    ("bool", lambda x: x > 0, TypeError, "dout must have dtype"),
    ("complex", lambda x: x.astype(complex), TypeError, "dout must have dtype"),
    ("object", lambda x: x.astype(object), TypeError, "dout must have dtype"),
    ("None", lambda x: None, TypeError, "dout must be a float32 or float64 array"),
    ("str", lambda x: "dout", TypeError, "dout must be a float32 or float64 array"),
    ("list_of_str", lambda x: np.full(x.shape, "a").tolist(), TypeError, "dout must have dtype"),
    ("masked", lambda x: np.ma.masked_array(x), TypeError, "dout is a masked array"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,make,exc,match", BAD_DOUT, ids=[c[0] for c in BAD_DOUT])
@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_bad_dout(backend, name, case_id, make, exc, match):
    args, cache = _forward_for(name, backend)
    dout = make(args["x"])
    good = getattr(fastbn, name)(np.ones_like(args["x"]), cache)
    assert_raises_and_nothing_changed(exc, match, lambda: getattr(fastbn, name)(dout, cache),
                                      args["x"], args["param"], cache, dout)
    # the cache still works, with the same results
    for a, b in zip(getattr(fastbn, name)(np.ones_like(args["x"]), cache), good):
        np.testing.assert_array_equal(a, b)


def _junk_caches(name, backend):
    """Caches that are not one this backward (on this backend) made."""
    other = "numpy" if backend == "cython" else "cython"
    yield "None", None
    yield "tuple_of_junk", (1, "a", None)
    yield "str", "cache"
    yield "empty_dict", {}
    yield "look_alike_dict", {"kind": BACKWARD[name].replace("_forward", "")}
    yield "other_backend", _forward_for(name, other)[1]
    for other_name in BACKWARD:
        if BACKWARD[other_name] != BACKWARD[name]:
            yield f"from_{BACKWARD[other_name]}", _forward_for(other_name, backend)[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_cache_not_ours(backend, name):
    """Each backend's own backward refuses every cache it did not make."""
    module = compiled if backend == "cython" else reference
    x = valid_args(FORWARD[BACKWARD[name]])["x"]
    own_type = type(_forward_for(name, backend)[1])
    tried = []
    for case_id, cache in _junk_caches(name, backend):
        if case_id == "other_backend" and type(cache) is own_type:
            continue    # the compiled function still delegates to the reference
        tried.append(case_id)
        assert_raises_and_nothing_changed(TypeError, "cache must be the cache returned by",
                                          lambda: getattr(module, name)(x, cache), x, cache)
    assert len(tried) >= 6


@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_top_level_backward_refuses_junk_caches(name):
    x = valid_args(FORWARD[BACKWARD[name]])["x"]
    for cache in (None, (1, 2), "cache", {}, {"kind": "nonsense"}):
        assert_raises_and_nothing_changed(TypeError, "cache must be", lambda: getattr(fastbn, name)(x, cache),
                                          x, cache)


def _tampered(value):
    """Wrong versions of one cached array: length, dtype, layout, type."""
    yield value[:1]
    yield np.concatenate([value, value])
    yield value.astype(np.float32 if value.dtype == np.float64 else np.float64)
    yield np.repeat(value, 2)[::2]            # same values, not contiguous
    yield value.tolist()
    yield None


@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_compiled_cache_tampered_with_is_refused(name):
    """The kernels trust the cache's array sizes: a tampered cache must not reach them."""
    args, cache = _forward_for(name, "cython")
    dout = np.ones_like(args["x"])
    good = getattr(compiled, name)(dout, cache)
    arrays = [s for s in type(cache).__slots__
              if isinstance(getattr(cache, s), np.ndarray) and s != "x"]
    assert {"gamma", "mean", "invstd"} <= set(arrays)
    tried = 0
    for attr in arrays + ["x"]:
        saved = getattr(cache, attr)
        values = _tampered(saved) if attr != "x" else [saved.ravel(), saved[..., None], None]
        for value in values:
            setattr(cache, attr, value)
            try:
                with pytest.raises(ValueError, match="cache is inconsistent"):
                    getattr(compiled, name)(dout, cache)
            finally:
                setattr(cache, attr, saved)
            tried += 1
    # intact again: works, same results
    for a, b in zip(getattr(compiled, name)(dout, cache), good):
        np.testing.assert_array_equal(a, b)
    assert tried >= 18


@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_forward_input_reshaped_in_place_after_forward(name):
    """``cache.x`` is the caller's array; changing its shape in place must not
    make the backward kernel index past gamma/mean/invstd."""
    spec = FORWARD[BACKWARD[name]]
    x = np.random.default_rng(0).standard_normal((4, 3) if spec.ndim == 2 else (2, 3, 2, 2))
    args = valid_args(spec)
    args.update(x=x, gamma=np.ones(3), beta=np.zeros(3))
    args["param"].pop("running_mean", None)
    args["param"].pop("running_var", None)
    _, cache = call_forward(spec.name, args)
    x.shape = x.shape[::-1]
    with pytest.raises(ValueError, match="cache is inconsistent"):
        getattr(fastbn, name)(np.ones(x.shape), cache)


# -- bad out= / dx= buffers ---------------------------------------------------

def _has_out(name, kw):
    return kw in inspect.signature(getattr(compiled, name)).parameters


BAD_OUT = [
    ("list", lambda a: a["x"].tolist(), TypeError, "must be a numpy.ndarray"),
    ("str", lambda a: "out", TypeError, "must be a numpy.ndarray"),
    # buffers hold a known value: the snapshots compare their bytes
    ("wrong_shape", lambda a: np.full(a["x"].shape[::-1], 7.0), ValueError, "must have shape"),
    ("too_big", lambda a: np.full((a["x"].shape[0] + 1,) + a["x"].shape[1:], 7.0), ValueError,
     "must have shape"),
    ("float32", lambda a: np.full(a["x"].shape, 7, np.float32), TypeError, "must have dtype"),
    ("int", lambda a: np.full(a["x"].shape, 7, np.int64), TypeError, "must have dtype"),
    ("read_only", lambda a: _readonly(np.full_like(a["x"], 7.0)), ValueError, "read-only"),
    # writeable buffers whose elements share memory: the kernel's writes would collide
    ("zero_stride", lambda a: _self_overlapping(a["x"], 0), ValueError, "share memory"),
    ("short_stride", lambda a: _self_overlapping(a["x"], 1), ValueError, "share memory"),
    ("is_x", lambda a: a["x"], ValueError, "must not overlap"),
    ("view_of_x", lambda a: a["x"][...], ValueError, "must not overlap"),
]


def _self_overlapping(x, lead_stride_items):
    """A writeable array of x's shape whose leading axis steps lead_stride_items items."""
    from numpy.lib.stride_tricks import as_strided
    base = np.full(x.size * 2, 7.0, x.dtype)
    strides = (lead_stride_items * x.itemsize,) + tuple(
        x.itemsize * int(np.prod(x.shape[k + 1:])) for k in range(1, x.ndim))
    return as_strided(base, x.shape, strides, writeable=True)


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,make,exc,match", BAD_OUT, ids=[c[0] for c in BAD_OUT])
@pytest.mark.parametrize("name", sorted(FORWARD))
def test_bad_out(backend, name, case_id, make, exc, match):
    if not _has_out(name, "out"):
        pytest.skip(f"compiled {name} has no out= yet")
    args = valid_args(FORWARD[name])
    out = make(args)
    owned = [args["x"], args["gamma"], args["beta"], args["param"], out]
    with fastbn.backend(backend):
        assert_raises_and_nothing_changed(exc, f"out .*{match}",
                                          lambda: call_forward(name, args, out=out), *owned)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_overlapping_running_statistics_is_refused(backend):
    args = valid_args(FORWARD["batchnorm_forward"])      # x is (5, 3)
    out = np.zeros((6, 3))
    args["param"]["running_mean"] = out[5]    # the row just past out[:5]: no overlap with it...
    args["param"]["running_var"] = out[4]     # ...but this one is out's last row
    with fastbn.backend(backend):
        assert_raises_and_nothing_changed(ValueError, "must not overlap",
                                          lambda: call_forward("batchnorm_forward", args, out=out[:5]),
                                          args["x"], args["param"], out)


BAD_DX = BAD_OUT[:-2] + [
    ("is_x", lambda a: a["x"], ValueError, "must not overlap"),
    ("is_dout", lambda a: a["dout"], ValueError, "must not overlap"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,make,exc,match", BAD_DX, ids=[c[0] for c in BAD_DX])
@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_bad_dx(backend, name, case_id, make, exc, match):
    if not _has_out(name, "dx"):
        pytest.skip(f"compiled {name} has no dx= yet")
    args, cache = _forward_for(name, backend)
    args["dout"] = np.ones_like(args["x"])
    dx = make(args)
    assert_raises_and_nothing_changed(exc, f"dx .*{match}",
                                      lambda: getattr(fastbn, name)(args["dout"], cache, dx=dx),
                                      args["x"], args["dout"], cache, dx)


# -- running statistics and dout are never cast, and the message says why -------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(RUN))
@pytest.mark.parametrize("x_dtype,s_dtype", [(np.float32, np.float64), (np.float64, np.float32),
                                             (np.float64, np.int64)])
@pytest.mark.parametrize("key", ["running_mean", "running_var"])
def test_running_statistics_of_another_dtype_are_refused_with_the_reason(
        backend, name, x_dtype, s_dtype, key):
    args = valid_args(FORWARD[name], x_dtype)
    args["param"][key] = args["param"][key].astype(s_dtype)
    with fastbn.backend(backend):
        assert_raises_and_nothing_changed(
            TypeError, rf"bn_param\['{key}'\] .*never cast: they are state the caller owns",
            lambda: call_forward(name, args), args["x"], args["gamma"], args["beta"], args["param"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(BACKWARD))
@pytest.mark.parametrize("dout_dtype", [np.float32, np.int64])
def test_dout_of_another_dtype_is_refused_with_the_reason(backend, name, dout_dtype):
    args, cache = _forward_for(name, backend)
    dout = np.ones(args["x"].shape, dout_dtype)
    assert_raises_and_nothing_changed(TypeError, "dout .*never cast",
                                      lambda: getattr(fastbn, name)(dout, cache),
                                      args["x"], cache, dout)
