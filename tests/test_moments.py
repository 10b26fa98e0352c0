"""The split-up pieces of batch norm (fastbn.moments) against the oracle.

Partial moments of any part of a batch, merged in any order, must give the
whole batch's statistics; the reduce and apply pieces composed must give
what the fused compiled functions give on the whole batch.
"""
import numpy as np
import pytest

from fastbn import _dispatch, compiled
from fastbn import moments as M

from conftest import TOL, cases, make_case, with_layout

F64 = np.float64


def _rows64(x):
    """(values, D) float64 view of x with one feature per column."""
    x = np.asarray(x, F64)
    if x.ndim == 4:
        return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    return x


def _split(rng, n, parts):
    """Random cut points in [0, n], empty parts allowed."""
    cuts = np.sort(rng.integers(0, n + 1, size=parts - 1))
    return np.split(np.arange(n), cuts)


def _assert_moments(mean, var, rows, dtype):
    """float64: float64 accuracy; float32: the float32 contract (mean within
    1e-6 sigma, variance within 2e-6 of itself, of float64 two-pass values)."""
    want_mean, want_var = rows.mean(0), rows.var(0)
    if dtype == F64:
        np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, want_var, rtol=1e-10, atol=1e-10)
        return
    sigma = np.sqrt(want_var)
    assert np.all(np.abs(mean - want_mean) <= 1e-6 * sigma + 1e-300)
    assert np.all(np.abs(var - want_var) <= 2e-6 * want_var + 1e-300)


@pytest.mark.parametrize("dtype,shape,layout", cases(2) + cases(4))
def test_partial_moments_match_numpy(rng, dtype, shape, layout):
    x = make_case(rng, shape, dtype, offset=3.0, scale=2.0)[0]
    m = M.partial_moments(with_layout(x, layout), spatial=len(shape) == 4)
    rows = _rows64(x)
    assert m.count == rows.shape[0]
    assert m.mean.dtype == m.m2.dtype == F64
    _assert_moments(m.mean, m.m2 / m.count, rows, dtype)


@pytest.mark.parametrize("shape", [(4097, 3), (3, 5000), (2, 3, 100, 200), (50, 1, 30, 30)])
def test_partial_moments_threaded(rng, shape):
    for layout in ("C", "F", "channels_last"):
        x = with_layout(rng.standard_normal(shape) * 5 + 7, layout)
        m = M.partial_moments(x, spatial=len(shape) == 4)
        rows = _rows64(x)
        np.testing.assert_allclose(m.mean, rows.mean(0), rtol=1e-12)
        np.testing.assert_allclose(m.m2 / m.count, rows.var(0), rtol=1e-10)


@pytest.mark.parametrize("parts", [2, 3, 7])
@pytest.mark.parametrize("ndim", [2, 4])
def test_merge_of_any_split_equals_whole(rng, parts, ndim):
    shape = (23, 6) if ndim == 2 else (9, 4, 3, 5)
    x = make_case(rng, shape, F64, offset=-4.0)[0]
    chunks = [M.partial_moments(x[idx], spatial=ndim == 4)
              for idx in _split(rng, 23 if ndim == 2 else 9, parts)]
    whole = M.partial_moments(x, spatial=ndim == 4)
    # left fold and a balanced tree: two reduction orders an all-reduce may use
    left = chunks[0]
    for c in chunks[1:]:
        left = M.merge_moments(left, c)
    tree = list(chunks)
    while len(tree) > 1:
        tree = [M.merge_moments(*tree[i:i + 2]) if i + 1 < len(tree) else tree[i]
                for i in range(0, len(tree), 2)]
    for got in (left, tree[0]):
        assert got.count == whole.count
        np.testing.assert_allclose(got.mean, whole.mean, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(got.m2, whole.m2, rtol=1e-12, atol=1e-12)


def _builds():
    import importlib
    mods = [importlib.import_module("fastbn._moments")]
    # ask the CPU first: loading the AVX2 module on a CPU without AVX2 is SIGILL
    for isa in ("avx2", "avx512"):
        if _dispatch.cpu_supports(isa):
            try:
                mods.append(importlib.import_module(f"fastbn._moments_{isa}"))
            except ImportError:
                pass
    return mods


@pytest.mark.parametrize("counts", [(5, 11), (7, 7)])
def test_merge_is_symmetric_to_the_bit(rng, counts):
    """In every build, also where the compiler fuses multiply-adds (FMA)."""
    a = M.pack_moments(M.partial_moments(rng.standard_normal((counts[0], 64)) + 100))
    b = M.pack_moments(M.partial_moments(rng.standard_normal((counts[1], 64)) * 3))
    b[5] = a[5]                          # one feature with equal means
    for mod in _builds():
        ab, ba = b.copy(), a.copy()
        mod.merge_packed(a, ab)
        mod.merge_packed(b, ba)
        assert ab[0] == sum(counts)
        assert np.array_equal(ab, ba), mod.__name__


def test_merge_with_empty_part_is_identity(rng):
    a = M.partial_moments(rng.standard_normal((5, 3)))
    e = M.partial_moments(np.empty((0, 3)))
    assert e.count == 0 and not e.mean.any() and not e.m2.any()
    for got in (M.merge_moments(a, e), M.merge_moments(e, a)):
        assert got.count == a.count
        assert np.array_equal(got.mean, a.mean) and np.array_equal(got.m2, a.m2)
    both = M.merge_moments(e, e)
    assert both.count == 0 and not both.mean.any()


def test_merge_is_stable_far_from_zero(rng):
    """Parts centred at 1e9 with unit spread: naive sum/sum-of-squares loses it all."""
    x = 1e9 + rng.standard_normal((3000, 4))
    parts = [M.partial_moments(x[i:i + 1000]) for i in range(0, 3000, 1000)]
    m = M.merge_moments(M.merge_moments(parts[0], parts[1]), parts[2])
    exact = x - 1e9                    # exact: 1e9 is representable, spacing 1.2e-7
    np.testing.assert_allclose(m.m2 / m.count, exact.var(0), rtol=1e-6)
    naive = (x ** 2).sum(0) / 3000 - x.mean(0) ** 2
    assert np.abs(naive - exact.var(0)).max() > 1e-2    # the test can fail


def _pieces_forward(x, gamma, beta, bn, spatial, split_at):
    """Train forward from two partial moments, merged, then applied."""
    a = M.partial_moments(x[:split_at], spatial)
    b = M.partial_moments(x[split_at:], spatial)
    mean, var, invstd = M.finish_moments(M.merge_moments(a, b), bn["eps"])
    return M.apply_affine(x, mean, invstd, gamma, beta, spatial), mean, invstd


@pytest.mark.parametrize("dtype,shape,layout", [
    c for c in cases(2) + cases(4)
    if c[1][0] > 1 and c[2] in ("C", "F", "channels_last", "strided")])
def test_pieces_compose_to_the_fused_functions(rng, dtype, shape, layout):
    spatial = len(shape) == 4
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=1.5, scale=2.0)
    x, dout = with_layout(x, layout), with_layout(dout, layout)
    fwd = compiled.spatial_batchnorm_forward if spatial else compiled.batchnorm_forward
    bwd = compiled.spatial_batchnorm_backward if spatial else compiled.batchnorm_backward
    bn = {"mode": "train", "eps": 1e-5}
    out, cache = fwd(x, gamma, beta, bn)
    out_p, mean, invstd = _pieces_forward(x, gamma, beta, bn, spatial, shape[0] // 2)
    np.testing.assert_allclose(out_p, out, **TOL[dtype])
    # float64: the same statistics to rounding; float32: each within the
    # float32 contract, so within twice its bounds of each other
    if dtype == F64:
        np.testing.assert_allclose(mean, cache.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(invstd, cache.invstd, rtol=1e-9)
    else:
        sigma = 1 / cache.invstd
        assert np.all(np.abs(mean - cache.mean) <= 2e-6 * sigma)
        np.testing.assert_allclose(invstd, cache.invstd, rtol=2e-6)

    dx, dgamma, dbeta = bwd(dout, cache)
    h = shape[0] // 2
    s1a, s2a = M.grad_sums(dout[:h], x[:h], mean, spatial)
    s1b, s2b = M.grad_sums(dout[h:], x[h:], mean, spatial)
    s1, s2 = s1a + s1b, s2a + s2b
    count = M.partial_moments(x, spatial).count
    dx_p = np.concatenate([M.apply_dx(dout[sl], x[sl], gamma, mean, invstd, s1, s2, count,
                                      spatial=spatial)
                           for sl in (slice(None, h), slice(h, None))])
    scale = np.abs(dx).max() + 1
    np.testing.assert_allclose(dx_p / scale, dx / scale, **TOL[dtype])
    np.testing.assert_allclose(s1.astype(dtype), dbeta, **TOL[dtype])
    np.testing.assert_allclose((s2 * invstd).astype(dtype), dgamma, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_grad_sums_match_numpy(rng, dtype):
    x, _, _, dout = make_case(rng, (4, 3, 5, 67), dtype)
    mean = rng.standard_normal(3)
    s1, s2 = M.grad_sums(dout, x, mean, spatial=True)
    xr, gr = _rows64(x), _rows64(dout)
    terms = gr * (xr - mean)
    if dtype == F64:
        np.testing.assert_allclose(s1, gr.sum(0), rtol=1e-12)
        np.testing.assert_allclose(s2, terms.sum(0), rtol=1e-12)
    else:
        # float32 lanes: a few float32 roundings of the sums of |terms|
        # (the float32 contract), never float64 accuracy
        assert np.all(np.abs(s1 - gr.sum(0)) <= 1e-6 * np.abs(gr).sum(0))
        assert np.all(np.abs(s2 - terms.sum(0)) <= 1e-6 * np.abs(terms).sum(0))


def test_test_mode_dx_ignores_sums(rng):
    x, gamma, _, dout = make_case(rng, (6, 4), F64)
    mean, invstd = rng.standard_normal(4), 1 + rng.random(4)
    dx = M.apply_dx(dout, x, gamma, mean, invstd, np.ones(4), np.ones(4), 0, train=False)
    np.testing.assert_allclose(dx, dout * gamma * invstd, rtol=1e-14)


def test_empty_batch_pieces():
    x = np.empty((0, 3, 2, 2), np.float32)
    m = M.partial_moments(x, spatial=True)
    assert m.count == 0
    out = M.apply_affine(x, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3), spatial=True)
    assert out.shape == x.shape and out.dtype == np.float32
    s1, s2 = M.grad_sums(x, x, np.zeros(3), spatial=True)
    assert not s1.any() and not s2.any()
    with pytest.raises(ValueError, match="empty"):
        M.finish_moments(m, 1e-5)


def test_bad_arguments():
    with pytest.raises(TypeError, match="x must have dtype"):
        M.partial_moments(np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="4-D"):
        M.partial_moments(np.zeros((3, 2)), spatial=True)
    with pytest.raises(ValueError, match="at least one feature"):
        M.partial_moments(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="mean must have shape"):
        M.apply_affine(np.zeros((3, 2)), np.zeros(3), np.ones(2), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="count must be positive"):
        M.apply_dx(np.zeros((3, 2)), np.zeros((3, 2)), *[np.ones(2)] * 5, 0)


def test_pieces_use_the_build_of_the_fused_kernels():
    assert M._moments.kernel_isa() == compiled.KERNEL_ISA


def test_kernel_builds_agree(rng):
    """The AVX2 build (when this CPU and compiler have it) computes what the baseline does."""
    import importlib
    from fastbn import _moments as base
    if not _dispatch.cpu_supports("avx2"):     # before importing: SIGILL
        pytest.skip("this CPU has no AVX2+FMA")
    try:
        avx2 = importlib.import_module("fastbn._moments_avx2")
    except ImportError:
        pytest.skip("no AVX2 build of _moments")
    if avx2.kernel_isa() != "avx2":
        pytest.skip("this compiler has no AVX2+FMA")
    x = rng.standard_normal((37, 9)) * 3 + 5
    dout = rng.standard_normal((37, 9))
    res = []
    for mod in (base, avx2):
        mean, m2 = np.empty(9), np.empty(9)
        mod.rows_moments(x, mean, m2, 1)
        sdy, sdyx = np.empty(9), np.empty(9)
        mod.rows_grad_sums(x, dout, mean, sdy, sdyx, 1)
        res.append(np.concatenate([mean, m2, sdy, sdyx]))
    np.testing.assert_allclose(res[1], res[0], rtol=1e-13, atol=1e-13)


def _bn_builds():
    import importlib
    mods = [importlib.import_module("fastbn._bn")]
    for isa in ("avx2", "avx512"):
        if _dispatch.cpu_supports(isa):     # ask first: a wider build is SIGILL without it
            try:
                mods.append(importlib.import_module(f"fastbn._bn_{isa}"))
            except ImportError:
                pass
    return mods


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("strided", [False, True])
def test_row_blocks_take_every_row_once(dtype, nthreads, strided):
    """The row kernels sum rows in strided blocks (rows b, b + B, ...), cut
    among threads; with small integers every sum is exact, so any row left
    out or counted twice shows in the mean and in dbeta = sum(dout)."""
    for kernels in _bn_builds():
        _check_row_blocks(kernels, dtype, nthreads, strided)


def _check_row_blocks(kernels, dtype, nthreads, strided):
    D = 13
    ones, zeros = np.ones(D, dtype), np.zeros(D, dtype)
    for R in list(range(1, 42)) + [63, 64, 65, 1000, 1003]:
        base = np.arange(R * 2 * D).reshape(R, 2 * D) % 97
        x = base.astype(dtype)[:, ::2] if strided else base[:, :D].astype(dtype)
        dout = ((base[:, :D] * 7) % 31 - 15).astype(dtype)
        stats, running = np.empty((3, D)), np.empty((2, D), dtype)
        kernels.rows_forward_train(x, ones, zeros, 1e-5, np.empty_like(x), stats, zeros, ones,
                                   0.9, running, nthreads)
        np.testing.assert_allclose(stats[0], x.astype(np.float64).mean(0), rtol=1e-13,
                                   err_msg=f"mean, R={R}")
        dx, dgamma, dbeta = np.empty_like(x), np.empty(D, dtype), np.empty(D, dtype)
        kernels.rows_backward(x, dout, ones, stats[0], stats[2], True, dx, dgamma, dbeta, nthreads)
        np.testing.assert_array_equal(dbeta, dout.sum(0), err_msg=f"dbeta, R={R}")
