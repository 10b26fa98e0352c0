"""Nothing the caller owns is lost: inputs are never written, ``out=`` is
honoured (and refused when it aliases an input) on both backends, NaN and inf
stay inside their normalization group, and float32 far from zero keeps its
accuracy."""
from collections.abc import MutableMapping

import numpy as np
import pytest

import fastbn
from fastbn import compiled, reference

from registry import BACKENDS, BACKWARD, FORWARD, call_forward, valid_args
from test_errors import _has_out, snapshot


def _readonly_copy(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(BACKWARD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_inputs_work_and_are_never_written(backend, name, dtype):
    spec = FORWARD[BACKWARD[name]]
    args = valid_args(spec, dtype)
    for key in ("x", "gamma", "beta"):
        args[key] = _readonly_copy(args[key])
    for key in ("running_mean", "running_var"):
        if key in args["param"]:
            args["param"][key] = _readonly_copy(args["param"][key])
    dout = _readonly_copy(np.random.default_rng(5).standard_normal(args["x"].shape).astype(dtype))
    inputs = [args["x"], args["gamma"], args["beta"], dout,
              *[v for v in args["param"].values() if isinstance(v, np.ndarray)]]
    before = [snapshot(a) for a in inputs]
    with fastbn.backend(backend):
        out, cache = call_forward(spec.name, args)
        grads = getattr(fastbn, name)(dout, cache)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert [snapshot(a) for a in inputs] == before
    if spec.running:    # new running arrays were stored; the caller's old ones untouched
        assert args["param"]["running_mean"].dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(BACKWARD))
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_out_and_dx_buffers_on_both_backends(backend, name, layout):
    fname = BACKWARD[name]
    if not (_has_out(fname, "out") and _has_out(name, "dx")):
        pytest.skip(f"compiled {fname} has no out=/dx= yet")
    spec = FORWARD[fname]
    args = valid_args(spec)
    dout = np.random.default_rng(3).standard_normal(args["x"].shape)

    def buffer():   # filled with junk, so a result that is not written shows
        shape = args["x"].shape
        if layout == "strided":
            return np.full(tuple(2 * n for n in shape), -7.0)[tuple(slice(None, None, 2) for _ in shape)]
        return np.full(shape, -7.0, order=layout)

    with fastbn.backend(backend):
        expect, cache = call_forward(fname, dict(args, param=dict(args["param"])))
        expect_grads = getattr(fastbn, name)(dout, cache)
        out = buffer()
        result, cache2 = call_forward(fname, args, out=out)
        assert result is out
        np.testing.assert_array_equal(out, expect)
        dx = buffer()
        grads = getattr(fastbn, name)(dout, cache2, dx=dx)
        assert grads[0] is dx
        for a, b in zip(grads, expect_grads):
            # a kernel may pick its loop order from dx's strides: last-ulp differences
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_running_statistics_match_no_out(backend):
    args = valid_args(FORWARD["batchnorm_forward"])
    p1, p2 = dict(args["param"]), dict(args["param"])
    with fastbn.backend(backend):
        fastbn.batchnorm_forward(args["x"], args["gamma"], args["beta"], p1)
        fastbn.batchnorm_forward(args["x"], args["gamma"], args["beta"], p2,
                                 out=np.empty_like(args["x"]))
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(p1[key], p2[key])
        assert p2[key] is not args["param"][key]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FORWARD))
def test_out_aliasing_x_is_refused_clearly(backend, name):
    """In-place normalization would destroy the x the cache keeps for the
    backward pass, so out=x (or any view of x) is a ValueError on both backends."""
    if not _has_out(name, "out"):
        pytest.skip(f"compiled {name} has no out= yet")
    args = valid_args(FORWARD[name])
    x_before = args["x"].copy()
    with fastbn.backend(backend):
        for alias in (args["x"], args["x"][...], args["x"][::-1][::-1]):
            with pytest.raises(ValueError, match="out must not overlap the inputs"):
                call_forward(name, args, out=alias)
    np.testing.assert_array_equal(args["x"], x_before)


def test_reference_module_itself_has_no_out():
    """fastbn.reference stays the plain textbook code; buffers are the dispatcher's job."""
    args = valid_args(FORWARD["batchnorm_forward"])
    with pytest.raises(TypeError, match="out"):
        reference.batchnorm_forward(args["x"], args["gamma"], args["beta"], args["param"],
                                    out=np.empty_like(args["x"]))


# -- NaN and inf stay in their group -------------------------------------------

ISO_SHAPE = {2: (7, 5), 4: (3, 4, 3, 2)}


def _in_group(shape, axis, j):
    """Boolean mask of the elements of group j along axis."""
    mask = np.zeros(shape, bool)
    idx = [slice(None)] * len(shape)
    idx[axis] = j
    mask[tuple(idx)] = True
    return mask


def _iso_cases():
    for name in sorted(BACKWARD):
        spec = FORWARD[BACKWARD[name]]
        for mode in (["train", "test"] if spec.running else ["train"]):
            yield name, mode


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,mode", list(_iso_cases()))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x_first", "x_last", "dout"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_values_stay_in_their_group(backend, name, mode, bad, where, dtype):
    """One non-finite value in group j (a feature for batch norm, a channel for
    the spatial variant, a sample for layer norm) leaves every other group's
    outputs, gradients and running statistics bit-for-bit as without it."""
    spec = FORWARD[BACKWARD[name]]
    rng = np.random.default_rng(11)
    shape = ISO_SHAPE[spec.ndim]
    j = 2
    args = valid_args(spec, dtype)
    G = shape[1]
    args.update(x=(3 + rng.standard_normal(shape)).astype(dtype),
                gamma=(1 + rng.random(G)).astype(dtype), beta=rng.standard_normal(G).astype(dtype))
    if spec.running:
        args["param"].update(mode=mode, running_mean=rng.standard_normal(G).astype(dtype),
                             running_var=(1 + rng.random(G)).astype(dtype))
    dout = rng.standard_normal(shape).astype(dtype)
    group = _in_group(shape, spec.group_axis, j)
    first = tuple(np.argwhere(group)[0 if where != "x_last" else -1])

    def run(x, dout):
        param = dict(args["param"])
        with fastbn.backend(backend), np.errstate(all="ignore"):
            out, cache = call_forward(spec.name, dict(args, x=x, param=param))
            return out, getattr(fastbn, name)(dout, cache), param

    clean_out, clean_grads, clean_param = run(args["x"], dout)
    x_bad, dout_bad = args["x"].copy(), dout.copy()
    (dout_bad if where == "dout" else x_bad)[first] = bad
    out, grads, param = run(x_bad, dout_bad)

    # other groups: exactly as in the clean run
    np.testing.assert_array_equal(out[~group], clean_out[~group])
    np.testing.assert_array_equal(grads[0][~group], clean_grads[0][~group])
    if spec.group_axis == 1:     # per-feature parameters belong to the group too
        others = np.arange(G) != j
        for a, b in zip(grads[1:], clean_grads[1:]):
            np.testing.assert_array_equal(a[others], b[others])
        for key in ("running_mean", "running_var"):
            np.testing.assert_array_equal(param[key][others], clean_param[key][others])
    # and the bad value did reach its own group's results
    if where == "dout":
        assert not np.isfinite(grads[2][j] if spec.group_axis == 1 else grads[0][group]).all()
    else:
        assert not np.isfinite(out[first])
        if mode == "train":      # statistics of the group are spoiled: all of it
            assert not np.isfinite(out[group]).any()


# -- float32 far from zero --------------------------------------------------------

OFFSET_SHAPES = {"batchnorm_forward": [(100_000, 3), "F"],
                 "spatial_batchnorm_forward": [(10, 3, 100, 100), "channels_last"],
                 "layernorm_forward": [(3, 100_000), "F"]}


@pytest.mark.parametrize("name", sorted(FORWARD))
@pytest.mark.parametrize("layout", ["C", "other"])
def test_float32_at_large_offset_matches_float64(name, layout):
    """1e4 + randn with 100 000 values per group normalizes to within 1e-3.

    Both backends compute the statistics in float64; summed in float32 the
    same case is off by up to ~5 (C-ordered batch norm, sequential sums).
    """
    from conftest import with_layout
    spec = FORWARD[name]
    shape, other = OFFSET_SHAPES[name]
    rng = np.random.default_rng(2024)
    x32 = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    G = shape[1]
    g32, b32 = (1 + rng.random(G)).astype(np.float32), rng.standard_normal(G).astype(np.float32)
    param = {"mode": "train"} if spec.running else {}
    ref64, _ = getattr(reference, name)(x32.astype(np.float64), g32.astype(np.float64),
                                        b32.astype(np.float64), dict(param))
    for backend in (compiled, reference):
        out32, _ = getattr(backend, name)(with_layout(x32, "C" if layout == "C" else other),
                                          g32, b32, dict(param))
        assert out32.dtype == np.float32
        assert np.abs(out32 - ref64).max() < 1e-3, backend.__name__


# -- a mapping that refuses one running statistic: all or nothing ---------------

class RefusingParams(MutableMapping):
    """A bn_param mapping whose ``__setitem__`` refuses one key."""

    def __init__(self, data, refuse):
        self.data, self.refuse = dict(data), refuse

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        if key == self.refuse:
            raise RuntimeError(f"this mapping refuses {key}")
        self.data[key] = value

    def __delitem__(self, key):
        del self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(n for n, s in FORWARD.items() if s.running))
@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("given", ["both", "none"])
@pytest.mark.parametrize("with_out", [False, True])
def test_refused_running_var_leaves_running_mean_and_out_untouched(backend, name, mode, given,
                                                                    with_out):
    args = valid_args(FORWARD[name])
    data = dict(args["param"], mode=mode)
    if given == "none":
        del data["running_mean"], data["running_var"]
    param = RefusingParams(data, refuse="running_var")
    out = np.full(args["x"].shape, -7.0) if with_out else None
    before = [snapshot(param.data), snapshot(args["x"])] + ([snapshot(out)] if with_out else [])
    kw = {"out": out} if with_out else {}
    with fastbn.backend(backend), pytest.raises(RuntimeError, match="refuses running_var"):
        call_forward(name, dict(args, param=param), **kw)
    after = [snapshot(param.data), snapshot(args["x"])] + ([snapshot(out)] if with_out else [])
    assert after == before
    # and a mapping that takes both gets what a dict gets
    param.refuse = None
    want = dict(data)
    with fastbn.backend(backend):
        expect, _ = call_forward(name, dict(args, param=want))
        got, _ = call_forward(name, dict(args, param=param), **kw)
    np.testing.assert_array_equal(got, expect)
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(param[key], want[key])
