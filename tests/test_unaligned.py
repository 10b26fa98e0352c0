"""Arrays whose strides or address are not multiples of the itemsize.

A field of a packed structured array (``rec['b']`` of
``dtype=[('a', 'f4'), ('b', 'f8')]`` has strides that are multiples of 12,
not of 8) and a buffer read at an odd offset (``np.frombuffer(buf,
offset=1)``) are ordinary NumPy arrays with ``flags.aligned == False``.  The
kernels address elements as ``base + i * (stride / itemsize)``, so such
inputs are read through aligned copies and such outputs are refused with a
ValueError before anything is written.  Every public kernel-backed function,
every array argument, both backends.
"""
import numpy as np
import pytest

import fastbn
from fastbn import moments as M
from conftest import DTYPES, make_case

UNALIGNED = ["packed_field", "odd_offset"]


def unaligned(a, kind):
    """The values of ``a`` in an array with ``flags.aligned == False``."""
    a = np.asarray(a)
    if kind == "packed_field":
        rec = np.zeros(a.shape, dtype=[("pad", "u1"), ("v", a.dtype)])   # packed: no padding
        rec["pad"] = 7
        rec["v"] = a
        view = rec["v"]
    else:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        view = np.frombuffer(buf, dtype=a.dtype, offset=1).reshape(a.shape)
        view.flags.writeable = True
        view[...] = a
    assert not view.flags.aligned and np.array_equal(view, a)
    return view


def _batchnorm_calls(spatial):
    fwd = fastbn.spatial_batchnorm_forward if spatial else fastbn.batchnorm_forward
    bwd = fastbn.spatial_batchnorm_backward if spatial else fastbn.batchnorm_backward
    return fwd, bwd


def _shape(spatial):
    # above the serial cut-off for one case: the threaded kernels see it too
    return (3, 5, 7, 9) if spatial else (301, 7)


@pytest.mark.parametrize("backend", fastbn.BACKENDS)
@pytest.mark.parametrize("kind", UNALIGNED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("arg", ["x", "gamma", "beta", "running_mean", "running_var", "dout"])
def test_batchnorm_unaligned_input_is_read_correctly(backend, kind, dtype, spatial, mode, arg):
    rng = np.random.default_rng(1)
    x, gamma, beta, dout = make_case(rng, _shape(spatial), dtype, offset=3.0)
    C = x.shape[1]
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    fwd, bwd = _batchnorm_calls(spatial)

    def call(args):
        bn = {"mode": mode, "running_mean": args["running_mean"],
              "running_var": args["running_var"]}
        out, cache = fwd(args["x"], args["gamma"], args["beta"], bn)
        return (out, *bwd(args["dout"], cache), bn["running_mean"], bn["running_var"])

    args = dict(x=x, gamma=gamma, beta=beta, running_mean=rm, running_var=rv, dout=dout)
    with fastbn.backend(backend):
        want = call(args)
        args[arg] = unaligned(args[arg], kind)
        got = call(args)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("backend", fastbn.BACKENDS)
@pytest.mark.parametrize("kind", UNALIGNED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arg", ["x", "gamma", "beta", "dout"])
def test_layernorm_unaligned_input_is_read_correctly(backend, kind, dtype, arg):
    rng = np.random.default_rng(2)
    x, _, _, dout = make_case(rng, (301, 9), dtype, offset=3.0)
    gamma, beta = rng.standard_normal(9).astype(dtype), rng.standard_normal(9).astype(dtype)

    def call(args):
        out, cache = fastbn.layernorm_forward(args["x"], args["gamma"], args["beta"], {})
        return (out, *fastbn.layernorm_backward(args["dout"], cache))

    args = dict(x=x, gamma=gamma, beta=beta, dout=dout)
    with fastbn.backend(backend):
        want = call(args)
        args[arg] = unaligned(args[arg], kind)
        got = call(args)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("kind", UNALIGNED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial", [False, True])
def test_moments_unaligned_inputs(kind, dtype, spatial):
    rng = np.random.default_rng(3)
    x, gamma, beta, dout = make_case(rng, _shape(spatial), dtype, offset=3.0)
    C = x.shape[1]
    m = M.partial_moments(x, spatial=spatial)
    mu = unaligned(m.mean, kind)
    got = M.partial_moments(unaligned(x, kind), spatial=spatial)
    np.testing.assert_array_equal(got.mean, m.mean)
    np.testing.assert_array_equal(got.m2, m.m2)
    invstd = np.full(C, 0.5)
    want = M.apply_affine(x, m.mean, invstd, gamma, beta, spatial=spatial)
    got = M.apply_affine(unaligned(x, kind), mu, unaligned(invstd, kind),
                         unaligned(gamma, kind), unaligned(beta, kind), spatial=spatial)
    np.testing.assert_array_equal(got, want)
    want = M.grad_sums(dout, x, m.mean, spatial=spatial)
    got = M.grad_sums(unaligned(dout, kind), unaligned(x, kind), mu, spatial=spatial)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


def _bn_out_call(spatial, which):
    """A call writing into the buffer ``buf`` as out= (forward) or dx= (backward)."""
    rng = np.random.default_rng(4)
    x, gamma, beta, dout = make_case(rng, _shape(spatial), np.float64, offset=1.0)
    fwd, bwd = _batchnorm_calls(spatial)
    bn = {"mode": "train"}
    _, cache = fwd(x, gamma, beta, {"mode": "train"})
    if which == "out":
        return x.shape, bn, lambda buf: fwd(x, gamma, beta, bn, out=buf)
    return x.shape, bn, lambda buf: bwd(dout, cache, dx=buf)


def _ln_out_call(spatial, which):
    rng = np.random.default_rng(5)
    x, gamma, beta, dout = make_case(rng, (301, 7), np.float64)
    _, cache = fastbn.layernorm_forward(x, gamma, beta, {})
    if which == "out":
        return x.shape, {}, lambda buf: fastbn.layernorm_forward(x, gamma, beta, {}, out=buf)
    return x.shape, {}, lambda buf: fastbn.layernorm_backward(dout, cache, dx=buf)


def _moments_out_call(spatial, which):
    rng = np.random.default_rng(6)
    x, gamma, beta, dout = make_case(rng, _shape(spatial), np.float64)
    m = M.partial_moments(x, spatial=spatial)
    invstd = np.ones(x.shape[1])
    if which == "out":
        return x.shape, {}, lambda buf: M.apply_affine(x, m.mean, invstd, gamma, beta,
                                                       spatial=spatial, out=buf)
    s1, s2 = M.grad_sums(dout, x, m.mean, spatial=spatial)
    count = x.size // x.shape[1]
    return x.shape, {}, lambda buf: M.apply_dx(dout, x, gamma, m.mean, invstd, s1, s2,
                                               count, spatial=spatial, dx=buf)


@pytest.mark.parametrize("backend", fastbn.BACKENDS)
@pytest.mark.parametrize("kind", UNALIGNED)
@pytest.mark.parametrize("maker", [_bn_out_call, _ln_out_call, _moments_out_call],
                         ids=["batchnorm", "layernorm", "moments"])
@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("which", ["out", "dx"])
def test_unaligned_output_is_refused_and_untouched(backend, kind, maker, spatial, which):
    if maker is _ln_out_call and spatial:
        pytest.skip("layer norm is 2-D")
    shape, params, call = maker(spatial, which)
    rec = np.zeros(shape, dtype=[("pad", "u1"), ("v", np.float64)])
    rec["pad"] = 7
    buf = rec["v"] if kind == "packed_field" else unaligned(np.full(shape, 3.0), kind)
    before, params_before = buf.copy(), dict(params)
    with fastbn.backend(backend), pytest.raises(ValueError, match="not aligned"):
        call(buf)
    np.testing.assert_array_equal(buf, before)
    assert (rec["pad"] == 7).all(), "a neighbouring field was written"
    assert params == params_before
