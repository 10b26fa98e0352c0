"""Synchronized batch norm under MPI: run by every rank of ``mpirun -n K``.

Not collected by a plain ``pytest`` run (the name does not match
``test_*.py``); ``tests/test_distributed.py`` launches it as::

    mpirun -n K python -m pytest tests/mpi_cases.py

Every rank builds the same global batch from the same seed, takes its slice,
and runs the collective functions; then the slices are all-gathered so that
every rank checks the *whole* result against single-process batch norm on
the concatenated batch.  All ranks therefore pass or fail together, and a
failing check cannot leave the other ranks waiting in a collective.
"""
import faulthandler
import sys

import numpy as np
import pytest

mpi4py = pytest.importorskip("mpi4py")
from mpi4py import MPI  # noqa: E402

from fastbn import compiled, reference as ref  # noqa: E402
from fastbn import distributed as dist  # noqa: E402

from conftest import TOL, make_case, with_layout  # noqa: E402

F64 = np.float64
COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def _slices(n, split):
    """Each rank's [start, stop) of a batch of n samples."""
    if split == "even":
        cuts = np.linspace(0, n, SIZE + 1).round().astype(int)
    elif split == "uneven":       # rank r gets ~ (r+1) parts: 1, 2, 3, ... shares
        w = np.cumsum(np.arange(1, SIZE + 1))
        cuts = np.concatenate([[0], (n * w / w[-1]).round().astype(int)])
    elif split == "empty_first":  # rank 0 holds nothing (when there are others)
        if SIZE == 1:
            cuts = np.array([0, n])
        else:
            cuts = np.concatenate([[0], np.linspace(0, n, SIZE).round().astype(int)])
    elif split == "all_on_last":  # every rank but the last is empty
        cuts = np.array([0] * SIZE + [n])
    else:
        raise ValueError(split)
    return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def _gather_rows(local, slices):
    """The global array from every rank's slice (rows in rank order)."""
    parts = COMM.allgather(np.ascontiguousarray(local))
    for part, sl in zip(parts, slices):
        assert part.shape[0] == sl.stop - sl.start
    return np.concatenate(parts)


def _same_on_all_ranks(a):
    """True on every rank iff ``a`` is bitwise identical on every rank."""
    return all(np.array_equal(a, b) for b in COMM.allgather(np.asarray(a)))


def _fns(ndim):
    if ndim == 2:
        return (dist.sync_batchnorm_forward, dist.sync_batchnorm_backward,
                compiled.batchnorm_forward, compiled.batchnorm_backward,
                ref.batchnorm_forward, ref.batchnorm_backward_alt)
    return (dist.sync_spatial_batchnorm_forward, dist.sync_spatial_batchnorm_backward,
            compiled.spatial_batchnorm_forward, compiled.spatial_batchnorm_backward,
            ref.spatial_batchnorm_forward, ref.spatial_batchnorm_backward)


SHAPES = {2: (13, 7), 4: (7, 3, 4, 5)}


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("split", ["even", "uneven", "empty_first", "all_on_last"])
@pytest.mark.parametrize("layout", ["C", "channels_last"])   # 2-D: Fortran order
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ndim", [2, 4])
def test_sync_equals_single_process_on_global_batch(ndim, dtype, layout, split, mode):
    sfwd, sbwd, cfwd, cbwd, rfwd, rbwd = _fns(ndim)
    rng = np.random.default_rng(7)
    shape = SHAPES[ndim]
    x, gamma, beta, dout = make_case(rng, shape, dtype, offset=3.0, scale=2.0)
    D = shape[1]
    rm, rv = rng.standard_normal(D).astype(dtype), (0.5 + rng.random(D)).astype(dtype)
    params = {"mode": mode, "eps": 1e-4, "momentum": 0.7, "running_mean": rm,
              "running_var": rv}
    slices = _slices(shape[0], split)
    sl = slices[RANK]

    bn = dict(params)
    out, cache = sfwd(with_layout(x[sl], layout), gamma, beta, bn)
    dx, dgamma, dbeta = sbwd(with_layout(dout[sl], layout), cache)
    assert out.dtype == dx.dtype == dgamma.dtype == dbeta.dtype == dtype
    assert out.shape == dx.shape == x[sl].shape

    # the fused single-process kernels on the concatenated batch
    bn1 = dict(params)
    out1, cache1 = cfwd(x, gamma, beta, bn1)
    dx1, dgamma1, dbeta1 = cbwd(dout, cache1)
    # and the float64 NumPy reference
    bn_ref = {k: (v.astype(F64) if isinstance(v, np.ndarray) else v) for k, v in params.items()}
    out_r, cache_r = rfwd(x.astype(F64), gamma.astype(F64), beta.astype(F64), bn_ref)
    dx_r, dgamma_r, dbeta_r = rbwd(dout.astype(F64), cache_r)

    out_all, dx_all = _gather_rows(out, slices), _gather_rows(dx, slices)
    tol = TOL[dtype]
    np.testing.assert_allclose(out_all, out1, **tol)
    np.testing.assert_allclose(out_all, out_r, **tol)
    scale = np.abs(dx_r).max() + 1
    np.testing.assert_allclose(dx_all / scale, dx1 / scale, **tol)
    np.testing.assert_allclose(dx_all / scale, dx_r / scale, **tol)
    for got, single, oracle in ((dgamma, dgamma1, dgamma_r), (dbeta, dbeta1, dbeta_r)):
        assert _same_on_all_ranks(got)
        np.testing.assert_allclose(got, single, rtol=tol["rtol"], atol=tol["atol"] * 10)
        np.testing.assert_allclose(got, oracle, rtol=tol["rtol"], atol=tol["atol"] * 10)
    for key in ("running_mean", "running_var"):
        assert bn[key].dtype == dtype
        assert _same_on_all_ranks(bn[key])
        np.testing.assert_allclose(bn[key], bn1[key], **tol)
        np.testing.assert_allclose(bn[key], bn_ref[key], **tol)


@pytest.mark.parametrize("ndim", [2, 4])
def test_running_statistics_over_several_steps(ndim):
    """Five train steps on changing batches, then test mode: as one process."""
    sfwd, sbwd, cfwd, cbwd, _, _ = _fns(ndim)
    rng = np.random.default_rng(11)
    shape = (10,) + SHAPES[ndim][1:]
    D = shape[1]
    gamma, beta = np.ones(D), np.zeros(D)
    bn, bn1 = {"mode": "train", "momentum": 0.5}, {"mode": "train", "momentum": 0.5}
    slices = _slices(shape[0], "uneven")
    for step in range(5):
        x = 5.0 * step + rng.standard_normal(shape) * (1 + step)
        sfwd(x[slices[RANK]], gamma, beta, bn)
        cfwd(x, gamma, beta, bn1)
        for key in ("running_mean", "running_var"):
            assert _same_on_all_ranks(bn[key])
            np.testing.assert_allclose(bn[key], bn1[key], rtol=1e-12, atol=1e-12)
    bn["mode"] = bn1["mode"] = "test"
    x = rng.standard_normal(shape)
    out, _ = sfwd(x[slices[RANK]], gamma, beta, bn)
    out1, _ = cfwd(x, gamma, beta, bn1)
    np.testing.assert_allclose(_gather_rows(out, slices), out1, rtol=1e-12, atol=1e-12)


def test_statistics_stable_far_from_zero():
    """1e8 + randn on every rank, each rank's slice at its own offset."""
    rng = np.random.default_rng(3)
    n = 64
    x = 1e8 + rng.standard_normal((n, 3))
    slices = _slices(n, "uneven")
    bn = {"mode": "train", "momentum": 0.0}
    dist.sync_batchnorm_forward(x[slices[RANK]], np.ones(3), np.zeros(3), bn)
    exact_var = (x - 1e8).var(0)           # x - 1e8 is exact in float64
    np.testing.assert_allclose(bn["running_var"], exact_var, rtol=1e-7)
    np.testing.assert_allclose(bn["running_mean"] - 1e8, (x - 1e8).mean(0), atol=1e-7)


@pytest.mark.parametrize("ndim", [2, 4])
def test_float32_far_from_zero_matches_single_process(ndim):
    """float32 at 1e4 + randn: statistics accumulate in float64 on every rank."""
    sfwd, sbwd, cfwd, cbwd, rfwd, _ = _fns(ndim)
    rng = np.random.default_rng(9)
    shape = SHAPES[ndim]
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    gamma, beta = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
    slices = _slices(shape[0], "uneven")
    out, _ = sfwd(x[slices[RANK]], gamma, beta, {"mode": "train"})
    out_r, _ = rfwd(x.astype(F64), gamma.astype(F64), beta.astype(F64), {"mode": "train"})
    np.testing.assert_allclose(_gather_rows(out, slices), out_r, rtol=0, atol=1e-5)


def test_numeric_gradient_of_the_distributed_loss():
    """dx of a rank's slice is the gradient of the *global* objective."""
    rng = np.random.default_rng(5)
    shape = (6, 3)
    x, gamma, beta, dout = make_case(rng, shape, F64)
    slices = _slices(shape[0], "uneven")
    sl = slices[RANK]
    out, cache = dist.sync_batchnorm_forward(x[sl], gamma, beta, {"mode": "train"})
    dx = _gather_rows(dist.sync_batchnorm_backward(dout[sl], cache)[0], slices)

    def objective(xx):
        out, _ = ref.batchnorm_forward(xx, gamma, beta, {"mode": "train"})
        return np.sum(out * dout)

    h, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(*shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num[i] = (objective(xp) - objective(xm)) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reg", [0.0, 0.1])
@pytest.mark.parametrize("normalization", ["batchnorm", None])
def test_data_parallel_net_gradients_equal_single_process(normalization, reg):
    """Every gradient of DataParallelNet.loss is the single-process one (float64)."""
    from fastbn.data_parallel import DataParallelNet
    from fastbn.models import FullyConnectedNet
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((11, 2, 3)), rng.integers(0, 4, 11)

    def net():
        np.random.seed(0)
        return FullyConnectedNet([7, 5], input_dim=6, num_classes=4, reg=reg,
                                 normalization=normalization, dtype=np.float64,
                                 weight_scale=0.5)

    single, ddp = net(), DataParallelNet(net())
    for _step in range(2):         # the second step uses the updated running stats too
        loss1, g1 = single.loss(X, y)
        loss, g = ddp.loss(X, y)
        assert sorted(g) == sorted(g1)
        np.testing.assert_allclose(loss, loss1, rtol=1e-13)
        for k in g1:
            assert _same_on_all_ranks(g[k]), k
            np.testing.assert_allclose(g[k], g1[k], rtol=1e-10, atol=1e-13, err_msg=k)
        for p in (single.params, ddp.params):
            for k in p:
                p[k] = p[k] - 0.1 * (g1[k] if p is single.params else g[k])
    for bn1, bn in zip(single.bn_params, ddp.model.bn_params):
        np.testing.assert_allclose(bn["running_mean"], bn1["running_mean"], rtol=1e-12)
    scores1, scores = single.loss(X), ddp.loss(X)
    np.testing.assert_allclose(scores, scores1, rtol=1e-10, atol=1e-12)


class _CountingComm:
    """A communicator proxy that records every Allgather and Allreduce (bytes sent)."""

    def __init__(self, comm):
        self.comm, self.calls = comm, []

    def Allgather(self, sendbuf, recvbuf):
        self.calls.append(("Allgather", sendbuf.nbytes))
        return self.comm.Allgather(sendbuf, recvbuf)

    def Allreduce(self, sendbuf, recvbuf, op):
        buf = recvbuf[0] if isinstance(recvbuf, list) else recvbuf
        dtype = recvbuf[2] if isinstance(recvbuf, list) else MPI.DOUBLE
        count = recvbuf[1] if isinstance(recvbuf, list) else buf.size
        self.calls.append(("Allreduce", count * dtype.Get_size()))
        return self.comm.Allreduce(sendbuf, recvbuf, op=op)

    def __getattr__(self, name):
        return getattr(self.comm, name)


@pytest.mark.parametrize("ndim", [2, 4])
def test_one_agreement_and_one_allreduce_per_call(ndim):
    """Forward: a 56-byte agreement, then 2*D + 1 doubles; backward: 56, then 2*D."""
    sfwd, sbwd = _fns(ndim)[:2]
    shape = SHAPES[ndim]
    D = shape[1]
    x, gamma, beta, dout = make_case(np.random.default_rng(0), shape, np.float32)
    comm = _CountingComm(COMM)
    agree = ("Allgather", len(dist._FIELDS) * 8)
    out, cache = sfwd(x, gamma, beta, {"mode": "train"}, comm=comm)
    assert comm.calls == [agree, ("Allreduce", (2 * D + 1) * 8)]
    sbwd(dout, cache)
    assert comm.calls[2:] == [agree, ("Allreduce", 2 * D * 8)]
    assert dist.bytes_per_call(D) == ((2 * D + 1) * 8, 2 * D * 8)
    sfwd(x, gamma, beta, {"mode": "test"}, comm=comm)      # test mode: the agreement only
    assert comm.calls[4:] == [agree]


def test_empty_global_batch_raises_on_every_rank_and_changes_nothing():
    rm = np.arange(3.0)
    bn = {"mode": "train", "running_mean": rm}
    with pytest.raises(ValueError, match="global batch is empty"):
        dist.sync_batchnorm_forward(np.empty((0, 3)), np.ones(3), np.zeros(3), bn)
    assert bn["running_mean"] is rm and "running_var" not in bn
    with pytest.raises(ValueError, match="global batch is empty"):
        dist.sync_spatial_batchnorm_forward(np.empty((0, 3, 2, 2), np.float32),
                                            np.ones(3, np.float32), np.zeros(3, np.float32),
                                            {"mode": "train"})
    # the communicator is still usable afterwards: nobody was left waiting
    assert COMM.allreduce(1) == SIZE


def test_argument_errors_match_the_single_process_api():
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match="x must have dtype"):
        dist.sync_batchnorm_forward(x.astype(int), np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match="gamma must have shape"):
        dist.sync_batchnorm_forward(x, np.ones(2), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match="mode"):
        dist.sync_batchnorm_forward(x, np.ones(3), np.zeros(3), {})
    with pytest.raises(ValueError, match="4-D"):
        dist.sync_spatial_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(TypeError, match="cache must be"):
        dist.sync_batchnorm_backward(x, {"kind": "batchnorm"})
    _, cache = dist.sync_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match="dout has shape"):
        dist.sync_batchnorm_backward(np.ones((5, 3)), cache)
    with pytest.raises(TypeError, match="sync_spatial_batchnorm_forward"):
        dist.sync_spatial_batchnorm_backward(x, cache)
    assert COMM.allreduce(1) == SIZE


# --- ranks that disagree ------------------------------------------------------
# Each case below is launched on its own by tests/test_distributed.py (``-k``),
# under a subprocess timeout; the watchdog ends a rank that waits longer than
# FAULT_WATCHDOG seconds, with its traceback, so mpirun ends the job and the
# case fails instead of hanging.
FAULT_WATCHDOG = 60


@pytest.fixture
def watchdog():
    if SIZE < 2:
        pytest.skip("needs at least two ranks that can disagree")
    faulthandler.dump_traceback_later(FAULT_WATCHDOG, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _raised_alike(info, kind):
    """Every rank raised ``kind`` with the same message; the communicator still works."""
    assert info.type is kind, f"rank {RANK} raised {info.type.__name__}: {info.value}"
    messages = COMM.allgather(str(info.value))
    assert all(m == messages[0] for m in messages), messages
    assert COMM.allreduce(1) == SIZE
    return messages[0]


def _last_differs(value, other):
    return other if RANK == SIZE - 1 else value


@pytest.mark.parametrize("ndim", [2, 4])
def test_fault_forward_features_differ(watchdog, ndim):
    """D = 8, 9, 10, ... on ranks 0, 1, 2, ...: nobody reduces, all say who has which D."""
    sfwd = _fns(ndim)[0]
    D = 8 + RANK
    shape = (5, D) if ndim == 2 else (2, D, 3, 2)
    x = 5.0 + np.random.default_rng(RANK).standard_normal(shape)
    rm = np.zeros(D)
    bn = {"mode": "train", "running_mean": rm}
    with pytest.raises(Exception) as info:
        sfwd(x, np.ones(D), np.zeros(D), bn)
    msg = _raised_alike(info, dist.RankMismatchError)
    for r in range(SIZE):
        assert f"{8 + r} on rank {r}" in msg, msg
    assert info.value.differing["D"] == {8 + r: [r] for r in range(SIZE)}
    assert bn["running_mean"] is rm and "running_var" not in bn


@pytest.mark.parametrize("ndim", [2, 4])
def test_fault_backward_cache_features_differ(watchdog, ndim):
    """The last rank hands backward the cache of another (agreed) forward with D = 9."""
    sfwd, sbwd = _fns(ndim)[:2]
    rng = np.random.default_rng(RANK)
    caches = {}
    for D in (8, 9):
        shape = (4, D) if ndim == 2 else (2, D, 2, 3)
        x = rng.standard_normal(shape)
        caches[D] = sfwd(x, np.ones(D), np.zeros(D), {"mode": "train"})[1], shape
    cache, shape = caches[_last_differs(8, 9)]
    with pytest.raises(Exception) as info:
        sbwd(rng.standard_normal(shape), cache)
    msg = _raised_alike(info, dist.RankMismatchError)
    last = "rank 1" if SIZE == 2 else f"rank {SIZE - 1}"
    assert f"9 on {last}" in msg and "8 on rank" in msg and "sync_" in msg, msg


@pytest.mark.parametrize("where", ["gamma", "dout"])
def test_fault_invalid_argument_on_one_rank(watchdog, where):
    """Rank 1 alone passes complex gamma (forward) or a short dout (backward)."""
    rng = np.random.default_rng(RANK)
    x = rng.standard_normal((6, 4))
    gamma = np.ones(4, complex if (RANK == 1 and where == "gamma") else np.float64)
    rm = np.zeros(4)
    bn = {"mode": "train", "running_mean": rm}
    if where == "gamma":
        with pytest.raises(Exception) as info:
            dist.sync_batchnorm_forward(x, gamma, np.zeros(4), bn)
        msg = _raised_alike(info, TypeError)
        assert "rank 1" in msg and "gamma must be a real array" in msg, msg
        assert bn["running_mean"] is rm and "running_var" not in bn
    else:
        _, cache = dist.sync_batchnorm_forward(x, gamma, np.zeros(4), bn)
        dout = rng.standard_normal((5 if RANK == 1 else 6, 4))
        with pytest.raises(Exception) as info:
            dist.sync_batchnorm_backward(dout, cache)
        msg = _raised_alike(info, ValueError)
        assert "rank 1" in msg and "dout has shape (5, 4)" in msg, msg
    if RANK == 1:
        assert info.value.__cause__ is not None      # the local error, chained
    for r in range(SIZE):
        if r != 1:
            assert f"rank {r}:" not in msg, msg      # only the failing rank is named


def test_fault_invalid_arguments_on_two_ranks_report_both(watchdog):
    if SIZE < 3:
        pytest.skip("needs three ranks")
    x = np.ones((4, 3))
    gamma = np.ones(3, complex) if RANK == 1 else np.ones(3)
    beta = np.zeros(2) if RANK == 2 else np.zeros(3)
    with pytest.raises(Exception) as info:
        dist.sync_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    msg = _raised_alike(info, TypeError)      # the type of the lowest failing rank
    assert "rank 1: TypeError: gamma must be a real array" in msg, msg
    assert "rank 2: ValueError: beta must have shape" in msg, msg


def test_fault_dtype_differs_across_ranks(watchdog):
    """Each rank's arguments are valid alone; the last rank runs in float32."""
    dtype = _last_differs(np.float64, np.float32)
    x = np.random.default_rng(RANK).standard_normal((5, 3)).astype(dtype)
    with pytest.raises(Exception) as info:
        dist.sync_batchnorm_forward(x, np.ones(3, dtype), np.zeros(3, dtype),
                                    {"mode": "train"})
    msg = _raised_alike(info, dist.RankMismatchError)
    assert f"float32 on rank {SIZE - 1}" in msg and "float64 on rank" in msg, msg


@pytest.mark.parametrize("key,value,other", [("mode", "train", "test"),
                                             ("mode", "test", "train"),
                                             ("eps", 1e-5, 1e-3),
                                             ("momentum", 0.9, 0.5)])
def test_fault_bn_param_differs(watchdog, key, value, other):
    """One rank in another mode (or eps, momentum): the train ranks would wait forever."""
    bn = {"mode": "train", "running_mean": np.zeros(3), "running_var": np.ones(3)}
    bn[key] = _last_differs(value, other)
    rm = bn["running_mean"]
    x = np.random.default_rng(RANK).standard_normal((4, 3))
    with pytest.raises(Exception) as info:
        dist.sync_batchnorm_forward(x, np.ones(3), np.zeros(3), bn)
    msg = _raised_alike(info, dist.RankMismatchError)
    assert f"{key}: " in msg and f"{other!r} on rank {SIZE - 1}" in msg, msg
    assert bn["running_mean"] is rm


def test_fault_forward_on_some_ranks_backward_on_others(watchdog):
    x = np.random.default_rng(RANK).standard_normal((4, 3))
    _, cache = dist.sync_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(Exception) as info:
        if RANK == 0:
            dist.sync_batchnorm_backward(np.ones_like(x), cache)
        else:
            dist.sync_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    msg = _raised_alike(info, dist.RankMismatchError)
    assert "sync_batchnorm_backward on rank 0" in msg, msg
    assert "sync_batchnorm_forward on rank" in msg, msg


# --- uncaught errors: run as a script, ``mpirun -n K python mpi_cases.py CASE`` ---

class _FailingAllreduce:
    """A communicator whose Allreduce fails on rank 1 (as a broken link would)."""

    def __init__(self, comm):
        self.comm = comm

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def Allreduce(self, *args, **kwargs):
        if self.comm.Get_rank() == 1:
            raise MPI.Exception(MPI.ERR_OTHER)
        return self.comm.Allreduce(*args, **kwargs)


def _script(case):
    x = np.random.default_rng(RANK).standard_normal((4, 8 + RANK))
    if case == "features-differ":          # every rank raises; nobody catches
        D = x.shape[1]
        dist.sync_batchnorm_forward(x, np.ones(D), np.zeros(D), {"mode": "train"})
    elif case == "allreduce-fails":        # an error inside the reduction itself
        x = x[:, :8]
        dist.sync_batchnorm_forward(x, np.ones(8), np.zeros(8), {"mode": "train"},
                                    comm=_FailingAllreduce(COMM))
    else:
        raise SystemExit(f"unknown case {case!r}")
    print(f"rank {RANK}: returned", flush=True)


if __name__ == "__main__":
    _script(sys.argv[1])
