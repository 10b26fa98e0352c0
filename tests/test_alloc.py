"""The cache of freed output buffers (fastbn._alloc).

Large outputs fastbn allocates itself come from a NumPy memory handler that
keeps freed blocks for reuse.  What must hold: a block is reused only after
every reference to it is gone, stale contents never leak into a result, the
byte limit is respected, and nothing else in the process is affected.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastbn
from fastbn import _alloc, compiled, reference

from conftest import make_case

BIG = (8, 16, 48, 48)        # float32: 1.18 MB, above _alloc.MIN_BYTES


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts from an empty cache at the default limit."""
    fastbn.set_buffer_cache(0)
    fastbn.set_buffer_cache(_alloc.DEFAULT_LIMIT)
    yield
    fastbn.set_buffer_cache(0)
    fastbn.set_buffer_cache(_alloc.DEFAULT_LIMIT)


def _handler(*a):
    """NumPy's get_handler_name (numpy._core in 2.x, numpy.core in 1.x)."""
    try:
        from numpy._core.multiarray import get_handler_name
    except ImportError:                      # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import get_handler_name
    return get_handler_name(*a)


def _addr(a):
    return a.__array_interface__["data"][0]


def _case(rng, shape=BIG, dtype=np.float32):
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=3.0)
    return x, gamma, beta, dout


def test_large_outputs_come_from_the_cache_handler(rng):
    x, gamma, beta, dout = _case(rng)
    out, cache = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, _ = compiled.spatial_batchnorm_backward(dout, cache)
    assert _handler(out) == "fastbn_buffer_cache"
    assert _handler(dx) == "fastbn_buffer_cache"
    # small results and everything else keep NumPy's own allocator
    assert _handler(dgamma) == _handler()
    assert _handler() != "fastbn_buffer_cache"


def test_small_outputs_bypass_the_cache(rng):
    x, gamma, beta, _ = _case(rng, (4, 3, 5, 5))
    before = fastbn.buffer_cache_info()
    out, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert _handler(out) != "fastbn_buffer_cache"
    after = fastbn.buffer_cache_info()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_freed_output_is_reused_and_fully_overwritten(rng):
    x, gamma, beta, _ = _case(rng)
    first, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    addr = _addr(first)
    first[...] = np.nan                      # stale contents must not survive
    del first
    info = fastbn.buffer_cache_info()
    assert info["blocks"] == 1 and info["bytes"] == x.nbytes
    second, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert _addr(second) == addr
    assert fastbn.buffer_cache_info()["hits"] == info["hits"] + 1
    want, _ = reference.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(second, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [((301, 1031), "C"), ((1031, 301), "F"),
                                          (BIG, "C"), (BIG, "channels_last")])
def test_results_with_cache_equal_results_without(rng, dtype, shape, layout):
    x, gamma, beta, dout = _case(rng, shape, dtype)
    if layout == "F":
        x, dout = np.asfortranarray(x), np.asfortranarray(dout)
    elif layout == "channels_last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        dout = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    fwd, bwd = ((compiled.spatial_batchnorm_forward, compiled.spatial_batchnorm_backward)
                if x.ndim == 4 else
                (compiled.batchnorm_forward, compiled.batchnorm_backward_alt))

    def run():
        out, cache = fwd(x, gamma, beta, {"mode": "train"})
        dx = bwd(dout, cache)[0]
        return out.copy(), dx.copy(), out.strides

    fastbn.set_buffer_cache(0)
    want_out, want_dx, want_strides = run()
    fastbn.set_buffer_cache(_alloc.DEFAULT_LIMIT)
    for _ in range(3):                       # the 2nd and 3rd runs reuse blocks
        out, dx, strides = run()
        assert strides == want_strides       # same memory layout as before
        np.testing.assert_array_equal(out, want_out)
        np.testing.assert_array_equal(dx, want_dx)
    assert fastbn.buffer_cache_info()["hits"] >= 4


def test_block_kept_alive_by_a_view_is_not_reused(rng):
    x, gamma, beta, _ = _case(rng)
    out, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    view = out[:, 2]
    saved = view.copy()
    del out                                  # the view still owns the block
    assert fastbn.buffer_cache_info()["blocks"] == 0
    again, _ = compiled.spatial_batchnorm_forward(2 * x, gamma, beta, {"mode": "train"})
    assert not np.shares_memory(again, view)
    np.testing.assert_array_equal(view, saved)


def test_limit_is_respected_and_oldest_blocks_go_first(rng):
    x, gamma, beta, _ = _case(rng)
    fastbn.set_buffer_cache(2 * x.nbytes + 100)
    outs = [compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
            for _ in range(4)]
    addrs = [_addr(o) for o in outs]
    while outs:                              # freed in order 0, 1, 2, 3
        del outs[0]
    info = fastbn.buffer_cache_info()
    assert info["blocks"] == 2 and info["bytes"] == 2 * x.nbytes
    # the newest freed block (3) is handed out first, then 2
    a = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
    b = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
    assert (_addr(a), _addr(b)) == (addrs[3], addrs[2])
    assert fastbn.buffer_cache_info()["blocks"] == 0


def test_block_larger_than_the_limit_is_not_kept(rng):
    x, gamma, beta, _ = _case(rng)
    fastbn.set_buffer_cache(x.nbytes - 1)
    out, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    del out
    assert fastbn.buffer_cache_info()["blocks"] == 0


def test_at_most_sixteen_blocks(rng):
    x = rng.standard_normal((300, 1024)).astype(np.float32)   # 1.2 MB each
    gamma, beta = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    outs = [compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
            for _ in range(20)]
    del outs
    info = fastbn.buffer_cache_info()
    assert info["blocks"] == 16 and info["bytes"] == 16 * x.nbytes


def test_zero_disables_and_releases(rng):
    x, gamma, beta, _ = _case(rng)
    out, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    del out
    assert fastbn.buffer_cache_info()["blocks"] == 1
    fastbn.set_buffer_cache(0)
    assert fastbn.buffer_cache_info()["blocks"] == 0
    assert fastbn.buffer_cache_info()["bytes"] == 0
    out, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert _handler(out) != "fastbn_buffer_cache"
    del out
    assert fastbn.buffer_cache_info()["blocks"] == 0


def test_blocks_from_before_disabling_are_released_when_freed(rng):
    x, gamma, beta, _ = _case(rng)
    out, _ = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    fastbn.set_buffer_cache(0)
    del out                                  # freed through the handler, not kept
    assert fastbn.buffer_cache_info()["blocks"] == 0


def test_numpy_operations_on_cached_arrays(rng):
    """resize (realloc through the handler), pickling, copies: ordinary arrays."""
    import pickle
    x = rng.standard_normal((300, 1024)).astype(np.float32)
    gamma, beta = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    out = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
    want = out.copy()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(out)), want)
    out.resize((600, 1024), refcheck=False)
    np.testing.assert_array_equal(out[:300], want)
    assert np.all(out[300:] == 0)
    del out                                  # a 2.4 MB block: fine to keep or not
    assert fastbn.buffer_cache_info()["bytes"] <= fastbn.buffer_cache_info()["limit"]


def test_threads_allocating_and_freeing_concurrently(rng):
    x, gamma, beta, dout = _case(rng)
    want, cache = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dwant = compiled.spatial_batchnorm_backward(dout, cache)[0]
    errors = []

    def work():
        try:
            for _ in range(15):
                out, c = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
                dx = compiled.spatial_batchnorm_backward(dout, c)[0]
                np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(dx, dwant, rtol=1e-5, atol=1e-4)
        except Exception as e:               # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    info = fastbn.buffer_cache_info()
    assert info["bytes"] <= info["limit"] and info["blocks"] <= 16


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), (True, TypeError),
                                     ("1G", TypeError), (None, TypeError)])
def test_bad_limit_names_the_argument(bad, exc):
    before = fastbn.buffer_cache_info()["limit"]
    with pytest.raises(exc, match="nbytes"):
        fastbn.set_buffer_cache(bad)
    assert fastbn.buffer_cache_info()["limit"] == before


def _run_with_env(value):
    code = "import fastbn; print(fastbn.buffer_cache_info()['limit'])"
    env = dict(os.environ, FASTBN_BUFFER_CACHE=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_env_sets_the_limit():
    r = _run_with_env("12345678")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "12345678"


@pytest.mark.parametrize("value", ["lots", "-5"])
def test_env_bad_value_is_a_clear_error(value):
    r = _run_with_env(value)
    assert r.returncode != 0
    assert "FASTBN_BUFFER_CACHE" in r.stderr


@pytest.mark.parametrize("order", ["C", "F"])
def test_layernorm_outputs_use_the_cache_and_keep_x_order(rng, order):
    x = np.asarray(rng.standard_normal((300, 1024)), order=order)      # float64, 2.4 MB
    gamma, beta = rng.standard_normal(1024), rng.standard_normal(1024)
    out, cache = compiled.layernorm_forward(x, gamma, beta, {})
    dx = compiled.layernorm_backward(rng.standard_normal(x.shape), cache)[0]
    for a in (out, dx):
        owner = a if a.base is None else a.base     # an F-order result is a .T view
        assert _handler(owner) == "fastbn_buffer_cache"
        assert a.flags.c_contiguous == (order == "C") and a.flags.f_contiguous == (order == "F")
    want = reference.layernorm_forward(x, gamma, beta, {})[0]
    addr = _addr(out)
    out[...] = np.nan
    del out
    again = compiled.layernorm_forward(x, gamma, beta, {})[0]
    assert _addr(again) == addr
    np.testing.assert_allclose(again, want, rtol=1e-10, atol=1e-10)


def test_a_callers_own_handler_is_respected(rng):
    """With a non-default handler in force, fastbn allocates through it, untouched."""
    x, gamma, beta, dout = _case(rng)
    before = fastbn.buffer_cache_info()

    def call():
        out, cache = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
        dx = compiled.spatial_batchnorm_backward(dout, cache)[0]
        return out, dx, _alloc.empty_reused(x.shape, x.dtype)

    out, dx, (arr, reused) = _alloc._in_foreign_context(call)
    for a in (out, dx, arr):
        assert _handler(a) == "fastbn_test_passthrough"
    assert reused is False
    after = fastbn.buffer_cache_info()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    want = reference.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
    # outside that context the cache is used again
    out2 = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
    assert _handler(out2) == "fastbn_buffer_cache"


def _page_offset(a):
    return _addr(a) % 4096


def _page_distance(a, b):
    d = (a - b) % 4096
    return min(d, 4096 - d)


@pytest.mark.parametrize("offsets,want", [
    ([16], 2048), ([2048], 0), ([0, 2048], 3072), ([16, 3792], 1856), ([100, 100], 2112),
    ([0, 1024, 2048, 3072], 3584),
])
def test_placement_is_the_middle_of_the_widest_gap(offsets, want):
    from fastbn import _layout
    assert _layout.placement([o + 4096 * k for k, o in enumerate(offsets)]) == want
    assert _layout.placement([]) is None


@pytest.mark.parametrize("place,want", [(None, 2048), (0, 0), (16, 0), (100, 64), (4095, 4032),
                                        (5000, 896)])
def test_cached_blocks_start_where_asked(place, want):
    a, _ = _alloc.empty_reused((300, 1024), np.float32, place)
    assert _handler(a) == "fastbn_buffer_cache"
    assert _page_offset(a) == want
    a[...] = 1.0                             # the whole array is the caller's to write
    assert a.sum() == a.size


def _at_offset(shape, dtype, offset, rng):
    """A C-ordered array of random values whose memory starts at ``offset`` in a page."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(n + 4096, np.uint8)
    skip = (offset - _addr(raw)) % 4096
    a = raw[skip:skip + n].view(dtype).reshape(shape)
    a[...] = rng.standard_normal(shape)
    return a


@pytest.mark.parametrize("x_off,d_off", [(16, 16), (0, 0), (2048, 16), (16, 3792), (1000, 3000)])
def test_fresh_outputs_keep_away_from_their_inputs_page_offsets(rng, x_off, d_off):
    """Large outputs start at least 1 KiB, around the page, from the page
    offsets of the arrays they are computed from (4 KiB aliasing)."""
    shape, C = (300, 1024), 1024
    x = _at_offset(shape, np.float32, x_off, rng)
    dout = _at_offset(shape, np.float32, d_off, rng)
    x4 = _at_offset((4, 8, 96, 100), np.float32, x_off, rng)
    d4 = _at_offset((4, 8, 96, 100), np.float32, d_off, rng)
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    g4, b4 = np.ones((1, 8, 1, 1), np.float32), np.zeros((1, 8, 1, 1), np.float32)
    out, cache = compiled.batchnorm_forward(x, g, b, {"mode": "train"})
    dx = compiled.batchnorm_backward_alt(dout, cache)[0]
    lout, lcache = compiled.layernorm_forward(x, g, b, {})
    ldx = compiled.layernorm_backward(dout, lcache)[0]
    gout, gcache = fastbn.spatial_groupnorm_forward(x4, g4, b4, 2, {})
    gdx = fastbn.spatial_groupnorm_backward(d4, gcache)[0]
    sout, scache = compiled.spatial_batchnorm_forward(x4, g4.ravel(), b4.ravel(),
                                                      {"mode": "train"})
    sdx = compiled.spatial_batchnorm_backward(d4, scache)[0]
    for a, inputs in ((out, [x]), (lout, [x]), (dx, [x, dout]), (ldx, [x, dout]),
                      (gout, [x4]), (gdx, [x4, d4]), (sout, [x4]), (sdx, [x4, d4])):
        assert min(_page_distance(_page_offset(a), _page_offset(i)) for i in inputs) >= 1024
