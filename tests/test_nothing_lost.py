"""Nothing the caller owns is lost: inputs are never written, ``out=`` is
honoured (and refused when it aliases an input) on both backends, NaN and inf
stay inside their normalization group, and float32 far from zero keeps its
accuracy."""
import numpy as np
import pytest

import fastbn
from fastbn import compiled, reference

from test_errors import BACKENDS, BACKWARD, FORWARD, _has_out, call_forward, snapshot, valid_args


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
