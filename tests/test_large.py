"""More than 2**31 elements: every index is a Py_ssize_t, nothing wraps.

Opt-in (``python -m pytest -m slow tests/test_large.py``): each case holds
two float32 arrays of ~8.6 GB (x, and one buffer used as ``out`` and then as
``dx``) and is skipped when the machine has less memory available.  The
output buffer starts as NaN, so an element the kernel never reached shows;
sampled elements, including the last ones, are compared with float64
arithmetic, and per-group statistics with float64 sums taken in chunks.
"""
import gc

import numpy as np
import pytest

from fastbn import compiled

from test_errors import FORWARD

pytestmark = pytest.mark.slow

BIG = {   # forward name -> shape with more than 2**31 elements, and the axis to chunk along
    "batchnorm_forward": ((2**31 // 3 + 2**20, 3), 0),             # rows kernel
    "spatial_batchnorm_forward": ((2, 3, 20_000, 18_000), 2),       # channel kernel, split
    "layernorm_forward": ((2**31 // 1000 + 1000, 1000), 0),
}
BACKWARD_OF = {"batchnorm_forward": "batchnorm_backward",
               "spatial_batchnorm_forward": "spatial_batchnorm_backward",
               "layernorm_forward": "layernorm_backward"}
EPS = 1e-5


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def chunks(shape, axis, elements=2**25):
    step = max(1, elements * shape[axis] // int(np.prod(shape, dtype=np.int64)))
    for a in range(0, shape[axis], step):
        idx = [slice(None)] * len(shape)
        idx[axis] = slice(a, min(a + step, shape[axis]))
        yield tuple(idx)


def group_view(a, spec):
    """a as (samples, groups): float64, groups along the last axis."""
    a = np.asarray(a, np.float64)
    if spec.group_axis == 0:
        return a.reshape(a.shape[0], -1).T
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def sample_index(shape):
    """Positions to check: the first and last elements, those around flat
    index 2**31 (where a 32-bit index would wrap), and scattered ones."""
    size = int(np.prod(shape, dtype=np.int64))
    flat = [0, *range(max(0, size - 50), size)]
    flat += [f for f in range(2**31 - 20, 2**31 + 20) if f < size]
    flat += list(np.random.default_rng(7).integers(0, size, 300))
    return np.unravel_index(np.array(flat, dtype=np.int64), shape)


@pytest.mark.parametrize("name", sorted(BIG))
def test_more_than_2_31_elements(name):
    shape, axis = BIG[name]
    size = int(np.prod(shape, dtype=np.int64))
    assert size > 2**31
    need = 2 * 4 * size + 2 * 2**30
    if mem_available() < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB available, have {mem_available() / 2**30:.1f}")
    check_forward_backward(name, shape, axis)


def check_forward_backward(name, shape, axis):
    """Forward and backward of ``name`` on float32 of ``shape``, checked
    against float64 arithmetic done in chunks along ``axis``."""
    spec = FORWARD[name]
    size = int(np.prod(shape, dtype=np.int64))
    G = shape[1]
    rng = np.random.default_rng(0)
    gamma = (1 + rng.random(G)).astype(np.float32)
    beta = rng.standard_normal(G).astype(np.float32)
    offset = np.arange(G, dtype=np.float32).reshape((1, G) + (1,) * (len(shape) - 2))
    x = np.empty(shape, np.float32)
    for idx in chunks(shape, axis):
        x[idx] = offset + 2 * rng.standard_normal(x[idx].shape, dtype=np.float32)
    x.flags.writeable = False
    buf = np.full(shape, np.nan, np.float32)

    # float64 statistics per group, in chunks
    if spec.group_axis == 1:
        s1 = np.zeros(G)
        s2 = np.zeros(G)
        for idx in chunks(shape, axis):
            v = group_view(x[idx], spec)
            s1 += v.sum(0)
            s2 += (v * v).sum(0)
        n = size // G
        mean = s1 / n
        var = s2 / n - mean**2

        def stats(pos):
            return mean[pos[1]], var[pos[1]]
    else:
        def stats(pos):
            row = x[pos[0]].astype(np.float64)  # noqa: F821 (x is deleted only at the end)
            return row.mean(), row.var()

    param = {"mode": "train", "momentum": 0.5} if spec.running else {"eps": EPS}
    result, cache = getattr(compiled, name)(x, gamma, beta, param, out=buf)
    assert result is buf
    for idx in chunks(shape, axis):
        assert not np.isnan(buf[idx]).any(), f"elements never written near {idx}"
    pos = sample_index(shape)
    for k in range(len(pos[0])):
        p = tuple(int(a[k]) for a in pos)
        m, v = stats(p)
        j = p[1]
        want = gamma[j] * (x[p] - m) / np.sqrt(v + EPS) + beta[j]
        assert abs(buf[p] - want) < 1e-4 * (1 + abs(want)), (p, buf[p], want)
    if spec.running:
        np.testing.assert_allclose(param["running_mean"], 0.5 * mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(param["running_var"], 0.5 * var, rtol=1e-5, atol=1e-5)

    # backward with dout = x (read-only, no third array), dx into the same buffer
    buf[...] = np.nan
    dx, dgamma, dbeta = getattr(compiled, BACKWARD_OF[name])(x, cache, dx=buf)
    assert dx is buf
    sdy = np.zeros(G)
    sdyxh = np.zeros(G)
    for idx in chunks(shape, axis):
        assert not np.isnan(buf[idx]).any(), f"dx elements never written near {idx}"
        xc = x[idx].astype(np.float64)
        if spec.group_axis == 1:
            shp = (1, G) + (1,) * (len(shape) - 2)
            xhat = (xc - mean.reshape(shp)) / np.sqrt(var.reshape(shp) + EPS)
        else:
            xhat = (xc - xc.mean(1, keepdims=True)) / np.sqrt(xc.var(1, keepdims=True) + EPS)
        sdy += group_sum(xc, spec)
        sdyxh += group_sum(xc * xhat, spec)
        del xc, xhat
    np.testing.assert_allclose(dbeta, sdy, rtol=1e-5)
    np.testing.assert_allclose(dgamma, sdyxh, rtol=1e-5)
    if spec.group_axis == 1:   # batch norm: dx from the per-channel sums
        n = size // G
        for k in range(len(pos[0])):
            p = tuple(int(a[k]) for a in pos)
            j = p[1]
            inv = 1 / np.sqrt(var[j] + EPS)
            xhat = (x[p] - mean[j]) * inv
            want = gamma[j] * inv * (x[p] - sdy[j] / n - xhat * sdyxh[j] / n)
            assert abs(dx[p] - want) < 1e-4 * (1 + abs(want)), (p, dx[p], want)
    else:                      # layer norm: dx of a sampled row, in float64
        for i in sorted(set(int(a) for a in pos[0])):
            row = x[i].astype(np.float64)
            xhat = (row - row.mean()) / np.sqrt(row.var() + EPS)
            dxh = row * gamma
            want = (dxh - dxh.mean() - xhat * (dxh * xhat).mean()) / np.sqrt(row.var() + EPS)
            np.testing.assert_allclose(dx[i], want, rtol=1e-4, atol=1e-4)
    del x, buf, dx, cache, result
    gc.collect()


def group_sum(a, spec):
    """Sum over everything but the feature axis (axis 1)."""
    axes = tuple(i for i in range(a.ndim) if i != 1)
    return a.sum(axis=axes)
