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

Processes that disagree, and bad arguments: before every reduction the
processes agree (one ``Allgather`` of 7 int64 numbers each) on the call, the
number of features D, the dtype, ``bn_param['mode']``, ``eps`` and
``momentum``, and on whether each passed its own argument checks.  So every
process returns, or every process raises the same exception with the same
message; none is left waiting in a collective and none computes with
another's mismatched data:

* arguments malformed on some processes: every process raises the
  single-process API's exception kind (``TypeError`` or ``ValueError``, of
  the lowest failing rank) with each failing rank's message, e.g.
  ``invalid arguments on rank 1 of 3 (raised on every rank): rank 1:
  TypeError: gamma has dtype float32 ...``; on the failing rank it is
  chained to the local error;
* valid arguments that differ between processes (D, dtype, mode, eps,
  momentum, or one process in the backward while another is in the
  forward): :class:`RankMismatchError` (a ``ValueError``) naming each value
  and the ranks that had it, e.g. ``D: 8 on rank 0; 9 on rank 1; 10 on
  rank 2``;
* an empty *global* batch: ``ValueError`` on every process (the local batch
  size is what may legitimately differ, so it is checked after the
  reduction, where every process sees the same global count).

A call that raises changes nothing.  Not checked (it would cost a reduction
of D numbers): that ``gamma``, ``beta`` and the running statistics hold the
same *values* on every process.  A ``cache`` that is no
:class:`SyncBatchNormCache` names no communicator, so that ``TypeError`` is
raised on its process alone, before any communication.

Faults inside a collective: once the processes have agreed, the only
remaining blocking call is the all-reduce; an exception raised inside it (or
inside the agreement itself) comes from the MPI library or the network, and
the other processes may be waiting in the same collective, which MPI cannot
cancel.  There fastbn prints the error and calls ``comm.Abort(1)``, which
ends every process of the job, rather than raise on one process and leave
the others hanging.  For exceptions raised by the rest of a program on some
processes only, run it as ``mpirun -n K python -m mpi4py script.py``: an
uncaught exception then aborts the whole job (MPI_Abort) instead of leaving
the other processes waiting in their next collective.

Communication per call, with D features (channels):

* every call: the agreement, one ``Allgather`` of 7 int64 numbers (56
  bytes) per process;
* train forward: one ``Allreduce`` of ``2*D + 1`` float64 numbers, the
  packed partial moments ``[count, mean(D), M2(D)]``, reduced with a
  user-defined MPI operation that is the Chan et al. merge
  (:func:`fastbn.moments.merge_moments`);
* backward: one ``Allreduce`` (sum) of ``2*D`` float64 numbers,
  ``sum(dout)`` and ``sum(dout * (x - mean))``;
* test-mode forward: the agreement only (the running statistics are already
  equal on every process).

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

import struct
import sys
import traceback

import numpy as np

from . import _moments
from ._validation import check_batchnorm_args, check_dout
from .moments import (apply_affine, apply_dx, check_batch, finish_moments, grad_sums,
                      pack_moments, partial_moments, unpack_moments)

F64 = np.float64

__all__ = [
    "sync_batchnorm_forward", "sync_batchnorm_backward",
    "sync_spatial_batchnorm_forward", "sync_spatial_batchnorm_backward",
    "SyncBatchNormCache", "RankMismatchError", "bytes_per_call",
]


def _merge_op(inmem, inoutmem, datatype):
    """MPI reduction: inout <- merge(in, inout) of packed moments."""
    a = np.frombuffer(inmem, F64)
    b = np.frombuffer(inoutmem, F64)
    # One element per call (count is 1), but honour the count if MPI batches.
    width = datatype.Get_size() // 8
    for k in range(0, len(b), width):
        _moments.merge_packed(a[k:k + width], b[k:k + width])


class RankMismatchError(ValueError):
    """The processes of a communicator called a synchronized function differently.

    Raised on every process together, with the same message, before any
    reduction.

    Attributes
    ----------
    differing : dict
        For each quantity the processes disagree on (``"call"``, ``"D"``,
        ``"dtype"``, ``"mode"``, ``"eps"``, ``"momentum"``), a dict from each
        value seen to the ranks that had it.
    """

    def __init__(self, message, differing):
        super().__init__(message)
        self.differing = differing


# What the processes agree on before every reduction: one int64 row per
# process, gathered in a single Allgather.  The row has the same length on
# every process whatever its arguments, so the agreement itself can never be
# truncated or left waiting.
_CALLS = ("sync_batchnorm_forward", "sync_batchnorm_backward",
          "sync_spatial_batchnorm_forward", "sync_spatial_batchnorm_backward")
_FIELDS = ("call", "status", "D", "dtype", "mode", "eps", "momentum")
_DTYPE_NAMES = {4: "float32", 8: "float64"}       # by itemsize (x is float32 or float64)
_MODES = ("test", "train")
# status: 0 ok; otherwise the kind of the local error, re-raised on every process
_ERROR_TYPES = (None, TypeError, ValueError, RuntimeError)


def _error_status(exc):
    for code, kind in enumerate(_ERROR_TYPES[1:-1], 1):
        if isinstance(exc, kind):
            return code
    return len(_ERROR_TYPES) - 1


def _decode(field, value):
    if field == "call":
        return _CALLS[value]
    if field == "dtype":
        return _DTYPE_NAMES[value]
    if field == "mode":
        return _MODES[value]
    if field in ("eps", "momentum"):
        return float(np.int64(value).view(F64))
    return int(value)


def _show(field, value):
    return repr(value) if field == "mode" else str(value)


def _ranks(ranks, limit=8):
    shown = ", ".join(map(str, ranks[:limit]))
    more = f", ... ({len(ranks)} ranks)" if len(ranks) > limit else ""
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}{more}"


def _agree(comm, call, fields=None, error=None):
    """Check that every process of ``comm`` is in the same call, with the same
    D, dtype, mode, eps and momentum, and that none failed its argument checks.

    Collective: one Allgather of ``len(_FIELDS)`` int64 numbers per process;
    a second (the error messages) only when some process failed.  Raises the
    same exception, with the same message, on every process, or returns on
    every process.

    ``fields`` is ``(D, dtype, mode, eps, momentum)`` of this process, or
    ``error`` the exception its argument checks raised.
    """
    if error is not None:
        row = np.array([call, _error_status(error), 0, 0, 0, 0, 0], np.int64)
    else:
        D, dtype, mode, eps, momentum = fields
        # eps and momentum travel as their float64 bits: equal means identical
        row = np.array((call, 0, D, dtype.itemsize, _MODES.index(mode))
                       + struct.unpack("=2q", struct.pack("=2d", eps, momentum)), np.int64)
    size = comm.Get_size()
    rows = np.empty((size, len(_FIELDS)), np.int64)
    _collective(comm, "Allgather", row, rows)
    if error is None and rows.tobytes() == row.tobytes() * size:
        return      # the usual case: every process in this call, with these fields

    name = _CALLS[call]
    if (rows[:, 0] == rows[0, 0]).all() and rows[:, 1].any():
        # Some processes failed their checks: every process raises the error
        # of the lowest failing rank's kind, with every failing rank's message.
        messages = _collective(comm, "allgather", None if error is None else
                               f"{type(error).__name__}: {error}")
        failed = [r for r in range(size) if rows[r, 1]]
        kind = _ERROR_TYPES[rows[failed[0], 1]]
        by_message = {}
        for r in failed:
            by_message.setdefault(messages[r], []).append(r)
        detail = "; ".join(f"{_ranks(rs)}: {m}" for m, rs in by_message.items())
        exc = kind(f"{name}: invalid arguments on {_ranks(failed)} of {size} "
                   f"(raised on every rank): {detail}")
        if error is not None:
            raise exc from error
        raise exc

    # Every process passed its checks (or they are not even in the same call):
    # name each quantity they disagree on and which rank has which value.
    differing, parts = {}, []
    fields_to_compare = ("call",) if (rows[:, 0] != rows[0, 0]).any() else \
        ("D", "dtype", "mode", "eps", "momentum")
    for field in fields_to_compare:
        column = rows[:, _FIELDS.index(field)]
        if (column == column[0]).all():
            continue
        groups = {}
        for r, v in enumerate(column.tolist()):
            groups.setdefault(_decode(field, v), []).append(r)
        differing[field] = groups
        parts.append(f"{field}: " + "; ".join(f"{_show(field, v)} on {_ranks(rs)}"
                                             for v, rs in groups.items()))
    # (the calls differ: the message may not name this process's call)
    where, what = ("fastbn.distributed", "calls") if "call" in differing else (name, "arguments")
    raise RankMismatchError(
        f"{where}: the {size} ranks of the communicator disagree on their {what}: "
        + " | ".join(parts) + " (every rank must make the same collective calls, with "
        "the same D, dtype and bn_param)", differing)


def _collective(comm, method, *args, **kwargs):
    """``comm.<method>(*args)``, the job aborted if it raises.

    The agreement and the all-reduce are the only blocking calls.  An error
    inside one is no argument error (those are agreed on first): it comes
    from the MPI library or the network, and the other processes may already
    be inside the same collective, which MPI cannot cancel.  Raising would
    leave them waiting forever, so the error is printed and ``comm.Abort(1)``
    ends every process of the job.
    """
    try:
        return getattr(comm, method)(*args, **kwargs)
    except Exception:
        print(f"fastbn.distributed: {method} failed on rank {comm.Get_rank()}; aborting "
              f"the MPI job (the other ranks cannot leave the collective):", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        raise


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
    """Bytes each process contributes to the all-reduce: (forward, backward).

    Each call also sends 56 bytes in the agreement that precedes it.

    Parameters
    ----------
    D : int
        Features (channels) of the batch-norm layer.

    Returns
    -------
    forward, backward : int
        ``(2*D + 1) * 8`` and ``2*D * 8`` bytes of float64 numbers.

    Examples
    --------
    >>> from fastbn.distributed import bytes_per_call
    >>> bytes_per_call(100)
    (1608, 1600)
    """
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
    call = 2 if spatial else 0
    # Everything that can fail locally happens before the agreement, so that
    # after it every process goes on to the same all-reduce.
    fields = error = None
    try:
        p = _check_args(x, gamma, beta, bn_param, spatial)
        x, train = p.x, p.mode == "train"
        local = pack_moments(partial_moments(x, spatial)) if train else None
        fields = (x.shape[1], x.dtype, p.mode, p.eps, p.momentum)
    except Exception as exc:  # noqa: BLE001  (any local failure is reported to every rank)
        error = exc
    _agree(comm, call, fields, error)
    dtype, D = x.dtype, x.shape[1]
    running_mean = p.running_mean if p.running_mean is not None else np.zeros(D, dtype)
    running_var = p.running_var if p.running_var is not None else np.zeros(D, dtype)

    if train:
        _collective(comm, "Allreduce", MPI.IN_PLACE, [local, 1, _packed_type(D)],
                    op=MERGE_MOMENTS)
        total = unpack_moments(local)
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
    cache = SyncBatchNormCache(x, p.gamma, mean, invstd, count, train, spatial, comm)
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
        On every process, when the arguments of any process are malformed
        (the single-process function's checks) or the global batch is empty.
    RankMismatchError
        On every process, when the processes' D, dtype, mode, eps or
        momentum differ.  A call that raises changes nothing.

    Examples
    --------
    Under ``mpirun -n 2 python script.py``, every process runs::

        import numpy as np
        from mpi4py import MPI
        from fastbn.distributed import sync_batchnorm_forward, sync_batchnorm_backward

        comm = MPI.COMM_WORLD
        x = np.random.default_rng(0).standard_normal((64, 3))  # the global batch
        x_local = np.array_split(x, comm.Get_size())[comm.Get_rank()]
        gamma, beta, bn_param = np.ones(3), np.zeros(3), {"mode": "train"}
        out, cache = sync_batchnorm_forward(x_local, gamma, beta, bn_param)
        dx_local, dgamma, dbeta = sync_batchnorm_backward(np.ones_like(out), cache)
    """
    return _forward(x, gamma, beta, bn_param, comm, spatial=False)


def sync_spatial_batchnorm_forward(x, gamma, beta, bn_param, comm=None):
    """Spatial batch norm of ``x`` (N_local, C, H, W) with global statistics.

    As :func:`sync_batchnorm_forward`, statistics per channel over the
    global N, H and W.  Any memory layout (NCHW, channels-last, strided).

    Parameters
    ----------
    x : array_like, shape (N_local, C, H, W)
        This process's slice of the batch; ``N_local`` may differ between
        processes and may be 0.
    gamma, beta : ndarray, shape (C,)
        Same on every process, x's dtype.
    bn_param : dict
        As for :func:`fastbn.spatial_batchnorm_forward`; same on every process.
    comm : mpi4py.MPI.Comm, optional
        ``MPI.COMM_WORLD`` by default.

    Returns
    -------
    out : ndarray, shape (N_local, C, H, W)
    cache : SyncBatchNormCache

    Raises
    ------
    TypeError, ValueError
        As :func:`sync_batchnorm_forward`.

    Examples
    --------
    Under ``mpirun -n 2 python script.py``, every process runs::

        import numpy as np
        from mpi4py import MPI
        from fastbn.distributed import (sync_spatial_batchnorm_backward,
                                        sync_spatial_batchnorm_forward)

        comm = MPI.COMM_WORLD
        x = np.random.default_rng(0).standard_normal((8, 4, 5, 5))  # the global batch
        x_local = np.array_split(x, comm.Get_size())[comm.Get_rank()]
        gamma, beta, bn_param = np.ones(4), np.zeros(4), {"mode": "train"}
        out, cache = sync_spatial_batchnorm_forward(x_local, gamma, beta, bn_param)
        dx_local, dgamma, dbeta = sync_spatial_batchnorm_backward(np.ones_like(out), cache)
    """
    return _forward(x, gamma, beta, bn_param, comm, spatial=True)


def _backward(dout, cache, spatial):
    if type(cache) is not SyncBatchNormCache:
        # No cache, no communicator to agree on: raised here alone (see the
        # module docstring, "Errors").
        want = "sync_spatial_batchnorm_forward" if spatial else "sync_batchnorm_forward"
        raise TypeError(f"cache must be the cache returned by {want}, "
                        f"got {type(cache).__name__}")
    c = cache
    call = 3 if spatial else 1
    fields = error = None
    try:
        if c.spatial != spatial:
            want = "sync_spatial_batchnorm_forward" if spatial else "sync_batchnorm_forward"
            raise TypeError(f"cache must be the cache returned by {want}, got the cache "
                            f"of {_CALLS[0 if spatial else 2]}")
        x = c.x
        dout = check_dout(dout, x)
        sdy, sdyx = grad_sums(dout, x, c.mean, spatial)
        buf = np.concatenate([sdy, sdyx])
        fields = (x.shape[1], x.dtype, _MODES[c.train], 0.0, 0.0)
    except Exception as exc:  # noqa: BLE001  (any local failure is reported to every rank)
        error = exc
    _agree(c.comm, call, fields, error)
    D = x.shape[1]
    _collective(c.comm, "Allreduce", MPI.IN_PLACE, buf, op=MPI.SUM)
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

    Raises
    ------
    TypeError, ValueError, RankMismatchError
        On every process, as for :func:`sync_batchnorm_forward` (a bad
        ``dout`` on any process; caches of another D, dtype or mode).

    Examples
    --------
    Under ``mpirun -n 2 python script.py``, every process runs::

        import numpy as np
        from mpi4py import MPI
        from fastbn.distributed import sync_batchnorm_forward, sync_batchnorm_backward

        comm = MPI.COMM_WORLD
        x = np.random.default_rng(0).standard_normal((64, 3))  # the global batch
        x_local = np.array_split(x, comm.Get_size())[comm.Get_rank()]
        gamma, beta, bn_param = np.ones(3), np.zeros(3), {"mode": "train"}
        out, cache = sync_batchnorm_forward(x_local, gamma, beta, bn_param)
        dx_local, dgamma, dbeta = sync_batchnorm_backward(np.ones_like(out), cache)
    """
    return _backward(dout, cache, spatial=False)


def sync_spatial_batchnorm_backward(dout, cache):
    """Gradients of :func:`sync_spatial_batchnorm_forward`.  Collective.

    Parameters
    ----------
    dout : ndarray, shape (N_local, C, H, W)
        Upstream gradient of this process's slice.
    cache : SyncBatchNormCache
        From :func:`sync_spatial_batchnorm_forward`.

    Returns
    -------
    dx : ndarray, shape (N_local, C, H, W)
    dgamma, dbeta : ndarray, shape (C,)
        Over the global batch, identical on every process.

    Raises
    ------
    TypeError, ValueError
        As :func:`sync_batchnorm_backward`.

    Examples
    --------
    Under ``mpirun -n 2 python script.py``, every process runs::

        import numpy as np
        from mpi4py import MPI
        from fastbn.distributed import (sync_spatial_batchnorm_backward,
                                        sync_spatial_batchnorm_forward)

        comm = MPI.COMM_WORLD
        x = np.random.default_rng(0).standard_normal((8, 4, 5, 5))  # the global batch
        x_local = np.array_split(x, comm.Get_size())[comm.Get_rank()]
        gamma, beta, bn_param = np.ones(4), np.zeros(4), {"mode": "train"}
        out, cache = sync_spatial_batchnorm_forward(x_local, gamma, beta, bn_param)
        dx_local, dgamma, dbeta = sync_spatial_batchnorm_backward(np.ones_like(out), cache)
    """
    return _backward(dout, cache, spatial=True)
