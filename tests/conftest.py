"""Shared test helpers: generated cases and an in-test numeric gradient.

Following bottleneck's style, cases are generated (dtype x shape x layout)
rather than written one by one; every compiled result is compared with
fastbn.reference evaluated in float64.
"""
import itertools

import numpy as np
import pytest

DTYPES = [np.float32, np.float64]
SHAPES_2D = [(1, 1), (1, 7), (2, 1), (3, 5), (17, 1), (64, 33), (301, 7), (5, 1000)]
SHAPES_4D = [(1, 1, 1, 1), (2, 3, 1, 1), (1, 4, 3, 5), (3, 1, 7, 2), (5, 3, 4, 6),
             (8, 16, 9, 9)]
LAYOUTS = ["C", "F", "strided", "reversed", "channels_last", "readonly"]

# float32 kernels accumulate in float64, so they match the float64 oracle to
# float32 rounding; float64 to a few ulps of the data.
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


def with_layout(a, layout):
    """The same values as ``a`` in another memory layout (a view where possible)."""
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "reversed":
        rev = tuple(slice(None, None, -1) for _ in a.shape)
        return np.ascontiguousarray(a[rev])[rev]
    if layout == "channels_last":
        if a.ndim != 4:
            return np.asfortranarray(a)
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout == "readonly":
        r = np.array(a)
        r.flags.writeable = False
        return r
    raise ValueError(layout)


def make_case(rng, shape, dtype, offset=0.0, scale=1.0):
    """x, gamma, beta, dout for a batch-norm call on ``shape``."""
    C = shape[1]
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    gamma = (1 + 0.5 * rng.standard_normal(C)).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


def numeric_grad(f, x, dout, h=1e-5):
    """Central-difference gradient of sum(f(x) * dout) with respect to x."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.sum(f(x) * dout)
        x[i] = old - h
        minus = np.sum(f(x) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def rel_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


def cases(ndim):
    shapes = SHAPES_2D if ndim == 2 else SHAPES_4D
    return list(itertools.product(DTYPES, shapes, LAYOUTS))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _steady_team(request, monkeypatch):
    """Kernel teams of one size for the whole test.

    ``fastbn._cpus`` shrinks a team while other processes load the machine,
    and how rows are split between threads moves results in their last bits,
    so two calls compared bit for bit need the same split.  ``test_cpus``
    exercises the real measurement.
    """
    if request.module.__name__ != "test_cpus":
        from fastbn import _cpus
        monkeypatch.setattr(_cpus, "free_cpus", _cpus.available_cpus)
