"""Synchronized batch norm over MPI: one global batch split across processes.

In data-parallel training every process holds a slice of the global batch.
Plain batch norm would normalize each slice with its own statistics, so the
model would change with the number of processes.  These functions normalize
every slice with the statistics of the *global* batch, as PyTorch's
``SyncBatchNorm`` does, and give the same results as single-process batch
norm on the concatenated batch::

    from fastbn.distributed import sync_batchnorm_forward, sync_batchnorm_backward
    out, cache = sync_batchnorm_forward(x_local, gamma, beta, bn_param)   # collective
    dx_local, dgamma, dbeta = sync_batchnorm_backward(dout_local, cache)  # collective

Every process of ``comm`` must make the same calls in the same order (they
are collective operations), with the same ``gamma``, ``beta`` and
``bn_param``.  Local batches may differ in size, and may be empty.

Errors: a malformed argument raises the single-process API's TypeError or
ValueError *before* any communication.  In the usual SPMD program every
process passes arguments of the same kind and fails alike; an argument that
is malformed on some processes only would leave the others waiting in the
all-reduce (MPI has no way to cancel it).  What legitimately differs between
processes, the local batch size, is checked after the all-reduce: an empty
*global* batch raises ValueError on every process together.

Communication per call, with D features (channels):

* train forward: one ``Allreduce`` of ``2*D + 1`` float64 numbers, the
  packed partial moments ``[count, mean(D), M2(D)]``, reduced with a
  user-defined MPI operation that is the Chan et al. merge
  (:func:`fastbn.moments.merge_moments`);
* backward: one ``Allreduce`` (sum) of ``2*D`` float64 numbers,
  ``sum(dout)`` and ``sum(dout * (x - mean))``;
* test-mode forward: nothing (the running statistics are already equal on
  every process).

No activations are gathered.  ``dgamma`` and ``dbeta`` are the gradients of
the *global* batch and come out identical on every process: do not add them
up across processes again.

Why a merge operation rather than plain sums: summing ``n``, ``sum(x)`` and
``sum(x**2)`` across processes also takes one all-reduce, but
``var = E[x**2] - E[x]**2`` cancels catastrophically when the data sit far
from zero (``1e4 + randn`` in float32 loses every digit).  Shifting all
processes' sums by a common constant (say the running mean) only helps once
the running mean has converged, not at the first steps.  Reducing the
*moments* with Chan's merge, ``M2 = M2a + M2b + delta**2 * na*nb/n``, adds
non-negative terms only and is stable from the first step, still in one
all-reduce of ``2*D + 1`` numbers.  The packed moments travel as a single
MPI element (a contiguous derived datatype), so the MPI library never cuts
them apart, and the merge is symmetric to the bit, so every process gets the
same statistics and keeps the same running statistics.

Requires mpi4py (and an MPI library such as Open MPI or MPICH).
"""
try:
    from mpi4py import MPI
except ImportError as exc:  # pragma: no cover - exercised with mpi4py hidden
    raise ImportError(
        "fastbn.distributed needs mpi4py and an MPI library (Open MPI or MPICH): "
        "install them with e.g. `apt-get install openmpi-bin libopenmpi-dev` and "
        "`pip install mpi4py`") from exc

import numpy as np

from . import _moments
from ._validation import check_batchnorm_args, check_dout
from .moments import (apply_affine, apply_dx, check_batch, finish_moments, grad_sums,
                      pack_moments, partial_moments, unpack_moments)

F64 = np.float64

__all__ = [
    "sync_batchnorm_forward", "sync_batchnorm_backward",
    "sync_spatial_batchnorm_forward", "sync_spatial_batchnorm_backward",
    "SyncBatchNormCache", "bytes_per_call",
]


def _merge_op(inmem, inoutmem, datatype):
    """MPI reduction: inout <- merge(in, inout) of packed moments."""
    a = np.frombuffer(inmem, F64)
    b = np.frombuffer(inoutmem, F64)
    # One element per call (count is 1), but honour the count if MPI batches.
    width = datatype.Get_size() // 8
    for k in range(0, len(b), width):
        _moments.merge_packed(a[k:k + width], b[k:k + width])


MERGE_MOMENTS = MPI.Op.Create(_merge_op, commute=True)
_packed_types = {}


def _packed_type(D):
    """The derived datatype of one packed-moments element (2*D + 1 doubles)."""
    t = _packed_types.get(D)
    if t is None:
        t = MPI.DOUBLE.Create_contiguous(2 * D + 1).Commit()
        _packed_types[D] = t
    return t


def bytes_per_call(D):
    """Bytes each process contributes to the all-reduce: (forward, backward)."""
    return (2 * D + 1) * 8, 2 * D * 8


class SyncBatchNormCache:
    """State kept from a synchronized forward pass for its backward pass.

    Attributes
    ----------
    x : ndarray
        The local input (not a copy).
    gamma : ndarray, shape (D,)
    mean, invstd : ndarray of float64, shape (D,)
        Global batch statistics (train) or running statistics (test).
    count : float
        Values per feature in the global batch (train mode; 0 in test mode).
    train, spatial : bool
    comm : mpi4py.MPI.Comm
    """
    __slots__ = ("x", "gamma", "mean", "invstd", "count", "train", "spatial", "comm")

    def __init__(self, x, gamma, mean, invstd, count, train, spatial, comm):
        self.x, self.gamma, self.mean, self.invstd = x, gamma, mean, invstd
        self.count, self.train, self.spatial, self.comm = count, train, spatial, comm

    def __repr__(self):
        kind = "sync_spatial_batchnorm" if self.spatial else "sync_batchnorm"
        mode = "train" if self.train else "test"
        return (f"<fastbn {kind} cache, mode={mode!r}, local x{self.x.shape} "
                f"{self.x.dtype}, global count {self.count:g}>")


def _check_args(x, gamma, beta, bn_param, spatial):
    """Like the single-process checks, but the local batch may be empty."""
    x = check_batch(x, spatial)
    # check_batchnorm_args rejects N == 0; validate the rest on a one-sample probe.
    probe = x if x.shape[0] else np.zeros((1,) + x.shape[1:], x.dtype)
    p = check_batchnorm_args(probe, gamma, beta, bn_param, ndim=x.ndim)
    return p._replace(x=x)


def _comm(comm):
    return MPI.COMM_WORLD if comm is None else comm


def _forward(x, gamma, beta, bn_param, comm, spatial):
    comm = _comm(comm)
    p = _check_args(x, gamma, beta, bn_param, spatial)
    x, dtype = p.x, p.x.dtype
    D = x.shape[1]
    running_mean = p.running_mean if p.running_mean is not None else np.zeros(D, dtype)
    running_var = p.running_var if p.running_var is not None else np.zeros(D, dtype)

    if p.mode == "train":
        buf = pack_moments(partial_moments(x, spatial))
        comm.Allreduce(MPI.IN_PLACE, [buf, 1, _packed_type(D)], op=MERGE_MOMENTS)
        total = unpack_moments(buf)
        if not total.count > 0:
            # Every process sees the same global count, so all raise together.
            raise ValueError(f"the global batch is empty: x has no samples on any of the "
                             f"{comm.Get_size()} processes (local shape {x.shape})")
        mean, var, invstd = finish_moments(total, p.eps)
        count = total.count
        m = p.momentum
        # Same update as the single-process functions, from identical inputs
        # on every process, so the running statistics stay identical.
        running_mean = (m * running_mean.astype(F64) + (1 - m) * mean).astype(dtype)
        running_var = (m * running_var.astype(F64) + (1 - m) * var).astype(dtype)
    else:
        mean = running_mean.astype(F64)
        invstd = 1.0 / np.sqrt(running_var.astype(F64) + p.eps)
        count = 0.0       # unused: test-mode gradients need no batch statistics

    out = apply_affine(x, mean, invstd, p.gamma, p.beta, spatial)
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    cache = SyncBatchNormCache(x, p.gamma, mean, invstd, count, p.mode == "train",
                               spatial, comm)
    return out, cache


def sync_batchnorm_forward(x, gamma, beta, bn_param, comm=None):
    """Batch norm of ``x`` (N_local, D) with the statistics of the global batch.

    Collective: every process of ``comm`` must call it.

    Parameters
    ----------
    x : array_like, shape (N_local, D)
        This process's slice of the batch, float32 or float64.  ``N_local``
        may differ between processes and may be 0.
    gamma, beta : ndarray, shape (D,)
        Same on every process, x's dtype.
    bn_param : dict
        As for :func:`fastbn.batchnorm_forward`; same on every process.
        The running statistics are updated from the global batch statistics
        and stay identical on every process.
    comm : mpi4py.MPI.Comm, optional
        The processes sharing the batch; ``MPI.COMM_WORLD`` by default.

    Returns
    -------
    out : ndarray, shape (N_local, D)
        Equal to rows of single-process batch norm on the concatenated batch.
    cache : SyncBatchNormCache

    Raises
    ------
    TypeError, ValueError
        For malformed arguments, as the single-process function (raised
        before any communication); ValueError on every process when the
        global batch is empty.  A call that raises changes nothing.
    """
    return _forward(x, gamma, beta, bn_param, comm, spatial=False)


def sync_spatial_batchnorm_forward(x, gamma, beta, bn_param, comm=None):
    """Spatial batch norm of ``x`` (N_local, C, H, W) with global statistics.

    As :func:`sync_batchnorm_forward`, statistics per channel over the
    global N, H and W.  Any memory layout (NCHW, channels-last, strided).
    """
    return _forward(x, gamma, beta, bn_param, comm, spatial=True)


def _backward(dout, cache, spatial):
    if type(cache) is not SyncBatchNormCache or cache.spatial != spatial:
        want = "sync_spatial_batchnorm_forward" if spatial else "sync_batchnorm_forward"
        raise TypeError(f"cache must be the cache returned by {want}, "
                        f"got {type(cache).__name__}")
    c = cache
    x = c.x
    dout = check_dout(dout, x)
    D = x.shape[1]
    sdy, sdyx = grad_sums(dout, x, c.mean, spatial)
    buf = np.concatenate([sdy, sdyx])
    c.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    sdy, sdyx = buf[:D], buf[D:]
    dx = apply_dx(dout, x, c.gamma, c.mean, c.invstd, sdy, sdyx, c.count, train=c.train,
                  spatial=spatial)
    return dx, (sdyx * c.invstd).astype(x.dtype), sdy.astype(x.dtype)


def sync_batchnorm_backward(dout, cache):
    """Gradients of :func:`sync_batchnorm_forward`.  Collective.

    Parameters
    ----------
    dout : ndarray, shape (N_local, D)
        Upstream gradient of this process's slice.
    cache : SyncBatchNormCache

    Returns
    -------
    dx : ndarray, shape (N_local, D)
        This process's rows of the single-process ``dx`` of the global batch.
    dgamma, dbeta : ndarray, shape (D,)
        Gradients over the global batch, identical on every process.
    """
    return _backward(dout, cache, spatial=False)


def sync_spatial_batchnorm_backward(dout, cache):
    """Gradients of :func:`sync_spatial_batchnorm_forward`.  Collective.

    Returns
    -------
    dx : ndarray, shape (N_local, C, H, W)
    dgamma, dbeta : ndarray, shape (C,)
        Over the global batch, identical on every process.
    """
    return _backward(dout, cache, spatial=True)
