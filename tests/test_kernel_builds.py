"""Every build of the kernel modules (baseline x86-64, AVX2+FMA, AVX-512) agrees with the reference.

The top-level tests run whichever build ``fastbn._dispatch`` selected; these
run each build the CPU can execute on the same generated cases, so the ones
not selected here are tested too.
"""
import importlib
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbn import _dispatch, _layout, compiled, reference
from conftest import TOL, make_case, with_layout


def _builds(name="_bn", id_prefix=""):
    """Every build of kernel module ``name`` (baseline, AVX2, AVX-512), as test params."""
    params = [pytest.param(name, id=f"{id_prefix}baseline")]
    for isa in ("avx2", "avx512"):
        variant = f"{name}_{isa}"
        marks = []
        # Ask the CPU before importing: even loading a wider build (its init
        # code is compiled with the wider flags) dies of SIGILL on a CPU
        # without them.
        if not _dispatch.cpu_supports(isa):
            marks = [pytest.mark.skip(f"CPU lacks {isa}")]
        elif importlib.util.find_spec(f"fastbn.{variant}") is None:
            marks = [pytest.mark.skip("not built")]
        params.append(pytest.param(variant, id=f"{id_prefix}{isa}", marks=marks))
    return params


def _isa_of(module_name):
    """The instruction set a build's module name says: ``_bn_avx2`` -> ``avx2``."""
    suffix = module_name.rsplit("_", 1)[-1]
    return suffix if suffix in ("avx2", "avx512") else "baseline"


def _use_build(request, monkeypatch, owner, attr):
    """Import the build named by the fixture param and make ``owner.attr`` it."""
    mod = importlib.import_module(f"fastbn.{request.param}")
    monkeypatch.setattr(owner, attr, mod)
    return mod


def _assert_matches(got, dgot, want, dwant, dtype):
    """The output, then each gradient, against the float64 reference; float32
    results are judged on the scale of the normalized output, not of x."""
    np.testing.assert_allclose(got, want, **TOL[dtype])
    for g, w in zip(dgot, dwant):
        np.testing.assert_allclose(g, w, rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["atol"] * max(1.0, np.abs(w).max()))


@pytest.fixture(params=_builds())
def build(request, monkeypatch):
    return _use_build(request, monkeypatch, compiled, "_bn")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [
    ((37, 19), "C"), ((37, 19), "F"), ((300, 5), "strided"),
    ((5, 3, 7, 9), "C"), ((4, 6, 5, 3), "channels_last"), ((3, 2, 33, 35), "C"),
])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_build_matches_reference(build, rng, dtype, shape, layout, offset):
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=offset)
    x, dout = with_layout(x, layout), with_layout(dout, layout)
    spatial = x.ndim == 4
    fwd = "spatial_batchnorm_forward" if spatial else "batchnorm_forward"
    bwd = "spatial_batchnorm_backward" if spatial else "batchnorm_backward"
    x64, g64, b64, d64 = (a.astype(np.float64) for a in (x, gamma, beta, dout))
    want, rcache = getattr(reference, fwd)(x64, g64, b64, {"mode": "train"})
    dwant = getattr(reference, bwd)(d64, rcache)
    bp = {"mode": "train"}
    got, cache = getattr(compiled, fwd)(x, gamma, beta, bp)
    dgot = getattr(compiled, bwd)(dout, cache)
    assert got.dtype == dtype
    _assert_matches(got, dgot, want, dwant, dtype)


# The channel loops sum each contiguous run (H*W of NCHW, N of a Fortran
# (N, D) array) in blocks of 16 (AVX2) or 8 (SSE2) with a scalar tail: run
# lengths on both sides of those block sizes, with the channel's runs far
# apart (C > 1) and large data offsets.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("run", [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 63, 65, 200])
def test_build_channel_runs_match_reference(build, rng, dtype, run):
    # (run, 4) F-ordered is N = run: N = 1 (zero variance, dx = 0 only up to
    # the rounding of terms of size gamma / sqrt(eps)) is tested elsewhere
    for shape, layout in (((3, 5, 1, run), "C"), ((run + 1, 4), "F")):
        x, gamma, beta, dout = make_case(rng, shape, dtype, offset=1e4)
        x, dout = with_layout(x, layout), with_layout(dout, layout)
        fwd, bwd = (("spatial_batchnorm_forward", "spatial_batchnorm_backward")
                    if x.ndim == 4 else ("batchnorm_forward", "batchnorm_backward_alt"))
        x64, g64, b64, d64 = (a.astype(np.float64) for a in (x, gamma, beta, dout))
        want, rcache = getattr(reference, fwd)(x64, g64, b64, {"mode": "train"})
        dwant = getattr(reference, bwd)(d64, rcache)
        got, cache = getattr(compiled, fwd)(x, gamma, beta, {"mode": "train"})
        dgot = getattr(compiled, bwd)(dout, cache)
        _assert_matches(got, dgot, want, dwant, dtype)


def test_build_reports_its_isa(build):
    assert build.kernel_isa() == _isa_of(build.__name__)


def _selected(env_value):
    env = dict(os.environ, FASTBN_KERNELS=env_value)
    return subprocess.run([sys.executable, "-c", "from fastbn import compiled; "
                           "print(compiled.KERNEL_ISA)"],
                          env=env, capture_output=True, text=True)


def _proc_cpuinfo():
    """vendor_id, cpu family and flags of the first CPU in /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                          if ":" in line)
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "vendor_id" not in fields or "cpu family" not in fields:
        return None
    return fields["vendor_id"], int(fields["cpu family"]), set(fields.get("flags", "").split())


def test_cpu_amd_family_reads_cpuid():
    # the family CPUID gives, as the kernel reports it in /proc/cpuinfo
    info = _proc_cpuinfo()
    if info is None:
        pytest.skip("no /proc/cpuinfo with vendor_id and cpu family (not x86 Linux)")
    vendor, family, flags = info
    if ("avx2" in flags) != _dispatch.cpu_supports("avx2"):
        pytest.skip("this process runs on an emulated CPU (qemu-user), not the one "
                    "/proc/cpuinfo describes")
    assert _dispatch._bn_baseline.cpu_amd_family() == (family if vendor == "AuthenticAMD" else 0)


def test_auto_takes_avx512_only_where_it_measured_faster():
    # auto: AVX-512 on AMD family >= 26 (Zen 5), else AVX2, as the CPU and the
    # installation allow; the choice is the child's, made at its import, so the
    # CPU's answers are asked in a child too (under qemu-user only this
    # process is emulated)
    r = _selected("auto")
    assert r.returncode == 0, r.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "from fastbn import _dispatch as d; "
         "print(d._bn_baseline.cpu_amd_family(), d.cpu_supports('avx512'), "
         "d.cpu_supports('avx2'))"],
        env=dict(os.environ, FASTBN_KERNELS="baseline"), capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    family, has512, has2 = probe.stdout.split()
    runs = [isa for isa, has in (("avx512", has512), ("avx2", has2)) if has == "True"
            and importlib.util.find_spec(f"fastbn._bn_{isa}") is not None]
    order = ("avx512", "avx2") if int(family) >= 26 else ("avx2",)
    assert r.stdout.strip() == next((isa for isa in order if isa in runs), "baseline")


def test_fastbn_kernels_env_forces_baseline():
    r = _selected("baseline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "baseline"


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_fastbn_kernels_env_forces_a_wider_build(isa):
    r = _selected(isa)
    # the child's CPU decides, asked in a child: under qemu-user only this
    # process is emulated, the interpreters it starts run on the host CPU
    probe = subprocess.run([sys.executable, "-c", "from fastbn import _dispatch; "
                            f"print(_dispatch.cpu_supports({isa!r}))"],
                           env=dict(os.environ, FASTBN_KERNELS="baseline"),
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    if probe.stdout.strip() != "True" or importlib.util.find_spec(f"fastbn._bn_{isa}") is None:
        assert r.returncode != 0 and "FASTBN_KERNELS" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == isa


def test_fastbn_kernels_env_rejects_unknown_value():
    r = _selected("sse9")
    assert r.returncode != 0
    assert "FASTBN_KERNELS" in r.stderr


def test_concurrent_calls_from_python_threads(build, rng):
    """Kernels called from several Python threads at once (the GIL is released
    inside) give the single-call results, and every call is deregistered."""
    from concurrent.futures import ThreadPoolExecutor
    x, gamma, beta, dout = make_case(rng, (8, 16, 40, 40), np.float32, offset=3.0)
    want, cache = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dwant = compiled.spatial_batchnorm_backward(dout, cache)

    def one(_):
        out, c = compiled.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
        return out, compiled.spatial_batchnorm_backward(dout, c)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(12)))
    for out, grads in results:
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
        for g, w in zip(grads, dwant):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
    assert build._active_calls() == 0


# Large outputs with long contiguous runs are written with non-temporal
# stores (AVX build) when the memory is already mapped (out=, a reused
# block).  Forcing that path on small odd cases (thresholds 0, out= buffers)
# must give the same bits as the normal stores: the arithmetic is shared,
# only where the bytes go differs.  Covers unaligned run starts, tails and
# the layouts that fall back to strided loops.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [
    ((37, 19), "C"), ((37, 19), "F"), ((5, 1003), "C"), ((300, 5), "strided"), ((37, 3), "C"),
    ((5, 3, 7, 9), "C"), ((3, 4, 33, 35), "C"), ((4, 6, 5, 3), "channels_last"),
    ((2, 3, 1, 1), "C"),
])
def test_streaming_stores_give_the_same_bits(build, monkeypatch, rng, dtype, shape, layout):
    from fastbn import moments
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=5.0)
    x, dout = with_layout(x, layout), with_layout(dout, layout)
    spatial = x.ndim == 4
    fwd = compiled.spatial_batchnorm_forward if spatial else compiled.batchnorm_forward
    bwd = compiled.spatial_batchnorm_backward if spatial else compiled.batchnorm_backward_alt
    D = shape[1]
    test_param = {"mode": "test", "running_mean": np.full(D, 0.5, dtype),
                  "running_var": np.full(D, 2.0, dtype)}

    def run():
        bufs = [np.empty_like(x) for _ in range(5)]
        out, cache = fwd(x, gamma, beta, {"mode": "train"}, out=bufs[0])
        fwd(x, gamma, beta, dict(test_param), out=bufs[1])
        grads = bwd(dout, cache, dx=bufs[2])
        part = moments.partial_moments(x, spatial)
        mean, _, invstd = moments.finish_moments(part, 1e-5)
        moments.apply_affine(x, mean, invstd, gamma, beta, spatial=spatial, out=bufs[3])
        sdy, sdyx = moments.grad_sums(dout, x, mean, spatial)
        moments.apply_dx(dout, x, gamma, mean, invstd, sdy, sdyx, part.count,
                         spatial=spatial, dx=bufs[4])
        return bufs + list(grads[1:])

    want = run()
    calls = []
    real = _layout.stream_stores
    monkeypatch.setattr(_layout, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(_layout, "STREAM_MIN_RUN_BYTES", 0)
    monkeypatch.setattr(_layout, "stream_stores", lambda v, w: calls.append(real(v, w))
                        or calls[-1])
    got = run()
    assert len(calls) == 5 and all(calls)       # every output pass was told to stream
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # and the streamed results are right, not just equal
    x64 = x.astype(np.float64)
    ref_fwd = reference.spatial_batchnorm_forward if spatial else reference.batchnorm_forward
    out_ref, _ = ref_fwd(x64, gamma.astype(np.float64), beta.astype(np.float64),
                         {"mode": "train"})
    np.testing.assert_allclose(got[0], out_ref, **TOL[dtype])


def _buffer_at(like, offset):
    """An empty C-ordered array like ``like`` starting ``offset`` elements
    after a 64-byte boundary."""
    item = like.dtype.itemsize
    raw = np.empty(like.size * item + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset * item
    return raw[start:start + like.size * item].view(like.dtype).reshape(like.shape)


# The output loops start their vectors where the output is aligned, the
# first elements done one by one with the same fused operations: out= and
# dx= buffers at any offset within a cache line give the bits of a fresh
# output, in every build.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# (the AVX-512 build does a run's first and last elements in masked vectors:
# runs shorter than a vector, and 14x14 runs, take those paths alone)
@pytest.mark.parametrize("shape", [(64, 4096), (300, 37), (9, 1000), (4, 6, 33, 35),
                                   (5, 3, 3, 3), (3, 4, 14, 14), (40, 7)])
def test_output_buffers_at_any_offset_give_the_same_bits(build, rng, dtype, shape):
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=5.0)
    spatial = x.ndim == 4
    fwd = compiled.spatial_batchnorm_forward if spatial else compiled.batchnorm_forward
    bwd = compiled.spatial_batchnorm_backward if spatial else compiled.batchnorm_backward_alt
    want, cache = fwd(x, gamma, beta, {"mode": "train"})
    want_dx = bwd(dout, cache)[0]
    for offset in range(64 // x.dtype.itemsize):
        out, dx = _buffer_at(x, offset), _buffer_at(x, offset)
        got, cache = fwd(x, gamma, beta, {"mode": "train"}, out=out)
        assert got is out
        np.testing.assert_array_equal(out, want)
        assert bwd(dout, cache, dx=dx)[0] is dx
        np.testing.assert_array_equal(dx, want_dx)


def test_fresh_pages_are_not_streamed(monkeypatch, rng):
    """A cache miss (memory the OS has yet to map) gets normal stores."""
    monkeypatch.setattr(_layout, "STREAM_MIN_BYTES", 0)
    x = rng.standard_normal((300, 1100)).astype(np.float32)      # 1.3 MB: cached size
    view = _layout.kernel_view(x, True, False)
    assert _layout.stream_stores(view, True)
    assert not _layout.stream_stores(view, False)



def test_short_rows_stream_only_back_to_back(monkeypatch, rng):
    """Rows below a page stream when they lie back to back (the row kernels
    write them as one run), not when each is a run of its own."""
    monkeypatch.setattr(_layout, "STREAM_MIN_BYTES", 0)
    short = rng.standard_normal((3000, 100)).astype(np.float32)  # 400-byte rows
    assert _layout.stream_stores(_layout.kernel_view(short, True, False), True)
    assert not _layout.stream_stores(_layout.kernel_view(short[:, :50], True, False), True)
    assert not _layout.stream_stores(_layout.kernel_view(short[::2], True, False), True)
    long_rows = rng.standard_normal((30, 1100)).astype(np.float32)[:, :1050]  # 4200 bytes
    assert _layout.stream_stores(_layout.kernel_view(long_rows, True, False), True)


@pytest.fixture(params=_builds("_ln", id_prefix="ln-"))
def ln_build(request, monkeypatch):
    from fastbn import compiled_ln
    return _use_build(request, monkeypatch, compiled_ln, "_ln")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [
    ((37, 19), "C"), ((37, 19), "F"), ((5, 1003), "C"), ((300, 5), "strided"),
    ((3, 16), "C"), ((4, 17), "reversed"), ((1, 1), "C"),
])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_ln_build_matches_reference(ln_build, rng, dtype, shape, layout, offset):
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=offset)
    x, dout = with_layout(x, layout), with_layout(dout, layout)
    x64, g64, b64, d64 = (a.astype(np.float64) for a in (x, gamma, beta, dout))
    want, rcache = reference.layernorm_forward(x64, g64, b64, {})
    dwant = reference.layernorm_backward(d64, rcache)
    got, cache = compiled.layernorm_forward(x, gamma, beta, {})
    dgot = compiled.layernorm_backward(dout, cache)
    assert got.dtype == dtype
    _assert_matches(got, dgot, want, dwant, dtype)


def test_ln_build_reports_its_isa(ln_build):
    assert ln_build.kernel_isa() == _isa_of(ln_build.__name__)


def test_ln_follows_the_batchnorm_build():
    from fastbn import compiled_ln
    assert compiled_ln._ln.kernel_isa() == compiled.KERNEL_ISA


@pytest.fixture(params=_builds("_gn", id_prefix="gn-"))
def gn_build(request, monkeypatch):
    from fastbn import compiled_gn
    return _use_build(request, monkeypatch, compiled_gn, "_gn")


# Group norm writes large outputs whose channels are contiguous runs with
# non-temporal stores too; forced on small odd cases, the same bits.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout,streams", [
    ((2, 4, 7, 9), "C", True), ((3, 6, 33, 35), "C", True), ((2, 4, 1, 1), "C", True),
    ((2, 6, 5, 3), "channels_last", False), ((2, 4, 6, 5), "strided", True),
])
def test_group_norm_streaming_stores_give_the_same_bits(gn_build, monkeypatch, rng, dtype, shape,
                                                        layout, streams):
    from fastbn import compiled_gn
    G = 2
    x = with_layout(rng.normal(3.0, 2.0, shape).astype(dtype), layout)
    dout = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    gamma = rng.normal(1.0, 0.5, (1, shape[1], 1, 1)).astype(dtype)
    beta = rng.standard_normal((1, shape[1], 1, 1)).astype(dtype)

    def run():
        out, dx = np.empty_like(x), np.empty_like(x)
        _, cache = compiled_gn.spatial_groupnorm_forward(x, gamma, beta, G, {}, out=out)
        _, dgamma, dbeta = compiled_gn.spatial_groupnorm_backward(dout, cache, dx=dx)
        return out, dx, dgamma, dbeta

    want = run()
    calls = []
    real = compiled_gn.group_stream_stores
    monkeypatch.setattr(_layout, "GROUP_STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(_layout, "STREAM_MIN_RUN_BYTES", 0)
    monkeypatch.setattr(compiled_gn, "group_stream_stores",
                        lambda v, w: calls.append(real(v, w)) or calls[-1])
    got = run()
    assert calls == [streams, streams]          # forward and backward were told to stream
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    out_ref, _ = reference.spatial_groupnorm_forward(x.astype(np.float64), gamma.astype(np.float64),
                                                     beta.astype(np.float64), G, {})
    np.testing.assert_allclose(got[0], out_ref, **TOL[dtype])


def test_group_norm_streams_only_large_contiguous_warm_outputs():
    big = np.empty((32, 64, 56, 56), np.float32)                  # 25.7 MB, 12.5 KiB runs
    assert _layout.group_stream_stores(big, True)
    assert not _layout.group_stream_stores(big, False)           # fresh pages
    short = np.empty((64, 256, 14, 14), np.float32)              # 12.8 MB, 784-byte runs
    assert not _layout.group_stream_stores(short, True)
    small = np.empty((4, 64, 56, 56), np.float32)                # 3.2 MB
    assert not _layout.group_stream_stores(small, True)
    last = np.empty((32, 56, 56, 64), np.float32).transpose(0, 3, 1, 2)
    assert not _layout.group_stream_stores(last, True)           # channels-last
