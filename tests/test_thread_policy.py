"""One thread policy for every kernel: ``fastbn._config``.

Every module that calls a kernel (batch norm, layer norm, group norm, the
moments pieces) passes the kernel the thread count ``_config.threads_for`` gives;
``threadpoolctl.threadpool_limits(1)`` brings that to one thread, and
:func:`fastbn.set_num_threads` overrides both.  The kernels are spied on, so
the tests see the team size each call actually asked for.
"""
import numpy as np
import pytest
import threadpoolctl

import fastbn
from fastbn import _config, _cpus, compiled, compiled_gn, compiled_ln, moments

# large enough that threads_for allows two threads (SERIAL_BELOW, MIN_PER_THREAD)
SHAPE_2D = (512, 512)
SHAPE_4D = (8, 16, 32, 64)


def _kernel_modules():
    """(owner module, attribute holding a kernel module) for every kernel caller."""
    return [(compiled, "_bn"), (compiled_ln, "_ln"), (compiled_gn, "_gn"), (moments, "_moments"),
            (moments, "_bn")]


@pytest.fixture
def team_sizes(monkeypatch):
    """Every kernel call's thread-count argument (its last int), in call order."""
    seen = []

    def spy(fn):
        def call(*args):
            counts = [a for a in args if type(a) is int]     # (bools are not ints here)
            assert counts, f"{fn.__name__}: no thread-count argument"
            seen.append((fn.__name__, counts[-1]))
            return fn(*args)
        return call

    patched = set()
    for owner, attr in _kernel_modules():
        kernels = getattr(owner, attr)
        if id(kernels) in patched:
            continue
        patched.add(id(kernels))
        for fname in dir(kernels):
            fn = getattr(kernels, fname)
            if fname.startswith(("rows_", "chans_")) or fname in ("forward", "backward"):
                monkeypatch.setattr(kernels, fname, spy(fn))
    return seen


def _every_kernel_call():
    """Run every public compiled entry point once on inputs large enough for a team."""
    rng = np.random.default_rng(0)
    for shape in (SHAPE_2D, SHAPE_4D):
        spatial = len(shape) == 4
        x = rng.standard_normal(shape).astype(np.float32)
        D = shape[1]
        gamma, beta = np.ones(D, np.float32), np.zeros(D, np.float32)
        fwd = compiled.spatial_batchnorm_forward if spatial else compiled.batchnorm_forward
        bwd = compiled.spatial_batchnorm_backward if spatial else compiled.batchnorm_backward
        param = {"mode": "train"}
        # out=/dx= buffers: the general path's kernel calls (a plain 2-D call
        # runs in one step, whose team comes from the same threads_for)
        _, cache = fwd(x, gamma, beta, param, out=np.empty_like(x))
        bwd(x, cache, dx=np.empty_like(x))
        param["mode"] = "test"
        fwd(x, gamma, beta, param)
        m = moments.partial_moments(x, spatial)
        mean, _, invstd = moments.finish_moments(m, 1e-5)
        moments.apply_affine(x, mean, invstd, gamma, beta, spatial)
        sdy, sdyx = moments.grad_sums(x, x, mean, spatial)
        moments.apply_dx(x, x, gamma, mean, invstd, sdy, sdyx, m.count, spatial=spatial)
        if spatial:
            _, cache = compiled_gn.spatial_groupnorm_forward(x, gamma, beta, 4, {})
            compiled_gn.spatial_groupnorm_backward(x, cache)
        else:
            _, cache = compiled.layernorm_forward(x, gamma, beta, {}, out=np.empty_like(x))
            compiled.layernorm_backward(x, cache, dx=np.empty_like(x))


@pytest.fixture
def default_threads(monkeypatch):
    """No set_num_threads in force (restored afterwards), and CPUs to spare.

    The team is also capped by the CPUs other processes leave free
    (``_cpus.free_cpus``), which on a shared machine changes from call to
    call; the policy under test is what the settings ask for.
    """
    monkeypatch.setattr(_cpus, "free_cpus", lambda: 64)
    saved = _config._user_threads
    fastbn.set_num_threads(None)
    yield
    _config._user_threads = saved


def test_plain_calls_take_their_thread_count_from_config():
    for policy in (compiled._PLAIN, compiled_ln._PLAIN):
        assert policy.threads_for is _config.threads_for
        assert policy.serial_below == _config.SERIAL_BELOW


def test_every_kernel_module_takes_its_thread_count_from_config(team_sizes, default_threads):
    fastbn.set_num_threads(2)
    _every_kernel_call()
    names = {n for n, _ in team_sizes}
    assert {"rows_forward_train", "chans_forward_train", "rows_normalize", "chans_normalize",
            "rows_backward", "chans_backward", "rows_moments", "chans_moments",
            "rows_grad_sums", "chans_grad_sums", "rows_dx", "chans_dx",
            "forward", "backward"} <= names
    assert {n for _, n in team_sizes} == {2}, team_sizes


def test_threadpool_limits_one_makes_every_kernel_serial(team_sizes, default_threads):
    if _config._env_threads is not None:
        pytest.skip("FASTBN_NUM_THREADS is set: it takes precedence over the runtime")
    limited = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "openmp"]
    if not limited:
        pytest.skip("threadpoolctl sees no OpenMP runtime (a serial build)")
    with threadpoolctl.threadpool_limits(1):
        assert fastbn.get_num_threads() == 1
        _every_kernel_call()
    assert team_sizes and {n for _, n in team_sizes} == {1}, team_sizes


def test_set_num_threads_overrides_threadpool_limits(team_sizes, default_threads):
    with threadpoolctl.threadpool_limits(1):
        fastbn.set_num_threads(2)
        assert fastbn.get_num_threads() == 2
        _every_kernel_call()
        fastbn.set_num_threads(None)
        if _config._env_threads is None and fastbn.openmp_enabled():
            assert fastbn.get_num_threads() == 1
    assert team_sizes and {n for _, n in team_sizes} == {2}, team_sizes


def test_small_inputs_run_serially_whatever_the_setting(team_sizes, default_threads):
    fastbn.set_num_threads(2)
    x = np.ones((64, 8))
    _, cache = compiled.batchnorm_forward(x, np.ones(8), np.zeros(8), {"mode": "train"})
    compiled.batchnorm_backward(x, cache)
    compiled.layernorm_forward(x, np.ones(8), np.zeros(8), {})
    moments.partial_moments(x)
    assert team_sizes and {n for _, n in team_sizes} == {1}
