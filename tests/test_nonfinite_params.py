"""Non-finite parameters give the textbook IEEE result on both backends.

``fastbn.reference`` defines it ("Non-finite parameters" in its docstring):
the textbook expressions evaluated elementwise.  The compiled kernels fold
parameters into coefficients, which would turn some of these into NaN; here
every case is run on both backends and compared position by position (the
same infinities with the same signs, NaN where the reference has NaN, the
finite values to the usual tolerance).
"""
import numpy as np
import pytest

from fastbn import compiled, reference
from conftest import TOL, with_layout

INF, NAN = np.inf, np.nan


def _with(values, j, bad):
    v = values.copy()
    v[j] = bad
    return v


# (id, mode, spoil(gamma, beta, param) -> None): each puts one non-finite
# parameter into feature 1 (feature 0 and 2 stay as they were)
CASES = [
    ("running_mean_inf", "test", lambda g, b, p: p.update(running_mean=_with(p["running_mean"], 1, INF))),
    ("running_mean_-inf", "test", lambda g, b, p: p.update(running_mean=_with(p["running_mean"], 1, -INF))),
    ("running_mean_nan", "test", lambda g, b, p: p.update(running_mean=_with(p["running_mean"], 1, NAN))),
    ("running_var_inf", "test", lambda g, b, p: p.update(running_var=_with(p["running_var"], 1, INF))),
    ("eps0_running_var0", "test",
     lambda g, b, p: p.update(eps=0.0, running_var=_with(p["running_var"], 1, 0.0))),
    ("eps0_running_var0_gamma_inf", "test",
     lambda g, b, p: [p.update(eps=0.0, running_var=_with(p["running_var"], 1, 0.0)),
                      g.__setitem__(1, INF)]),
    *[(f"gamma_{v}_{mode}", mode, lambda g, b, p, v=v: g.__setitem__(1, v))
      for v in (INF, -INF, NAN) for mode in ("train", "test")],
    *[(f"beta_{v}_{mode}", mode, lambda g, b, p, v=v: b.__setitem__(1, v))
      for v in (INF, -INF, NAN) for mode in ("train", "test")],
]


def _case(rng, shape, dtype, layout, constant_feature=False):
    x = rng.standard_normal(shape) * 2 + 1
    if constant_feature:
        x[:, 1] = 3.0
    C = shape[1]
    x = with_layout(x.astype(dtype), layout)
    gamma = (1 + rng.random(C)).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    param = {"momentum": 0.9, "running_mean": rng.standard_normal(C).astype(dtype),
             "running_var": (0.5 + rng.random(C)).astype(dtype)}
    return x, gamma, beta, param


def _compare(got, want, dtype):
    np.testing.assert_allclose(got, want, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [((6, 3), "C"), ((6, 3), "F"), ((2, 3, 2, 3), "C"),
                                          ((2, 3, 2, 3), "channels_last")])
@pytest.mark.parametrize("case_id,mode,spoil", CASES, ids=[c[0] for c in CASES])
def test_both_backends_give_the_textbook_result(rng, dtype, shape, layout, case_id, mode, spoil):
    x, gamma, beta, param = _case(rng, shape, dtype, layout)
    spoil(gamma, beta, param)
    param["mode"] = mode
    dout = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    spatial = len(shape) == 4
    fwd = "spatial_batchnorm_forward" if spatial else "batchnorm_forward"
    bwds = (["spatial_batchnorm_backward"] if spatial
            else ["batchnorm_backward", "batchnorm_backward_alt"])
    results = {}
    for backend in (compiled, reference):
        p = dict(param)
        with np.errstate(all="ignore"):
            out, cache = getattr(backend, fwd)(x, gamma, beta, p)
            grads = ([getattr(backend, b)(dout, cache) for b in bwds] if mode == "test" else [])
        results[backend] = out, p, grads
    (out, p, grads), (want, wp, wgrads) = results[compiled], results[reference]
    assert not np.isfinite(want).all() or case_id.startswith("running_var_inf")
    _compare(out, want, dtype)
    for key in ("running_mean", "running_var"):
        _compare(p[key], wp[key], dtype)
    for g3, w3 in zip(grads, wgrads):
        for g, w in zip(g3, w3):
            _compare(g, w, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 2, 3)])
def test_train_mode_eps0_constant_feature(rng, dtype, shape):
    """A constant feature with eps = 0 has 0/0 = NaN normalized values on both backends."""
    x, gamma, beta, param = _case(rng, shape, dtype, "C", constant_feature=True)
    param.update(mode="train", eps=0.0)
    fwd = "spatial_batchnorm_forward" if len(shape) == 4 else "batchnorm_forward"
    with np.errstate(all="ignore"):
        got, _ = getattr(compiled, fwd)(x, gamma, beta, dict(param))
        want, _ = getattr(reference, fwd)(x, gamma, beta, dict(param))
    assert np.isnan(want[:, 1]).all()
    _compare(got, want, dtype)
