"""Data-parallel training over MPI, with synchronized batch norm.

:class:`DataParallelNet` wraps a :class:`fastbn.models.FullyConnectedNet`
so that the unchanged :class:`fastbn.solver.Solver` trains it on several
processes.  Every process runs the same program on the same data with the
same seed, so all draw the same global minibatch; each computes its own
rows, and

* batch norm runs :mod:`fastbn.distributed` (global statistics),
* the loss is the mean over the global minibatch, so each process scales its
  gradient by ``1 / N`` of the *global* batch,
* the W/b gradients and the loss are summed across processes in one
  ``Allreduce``; gamma/beta gradients come out of the synchronized backward
  already global,

so every process gets the single-process loss and gradients (to rounding)
and takes the same optimizer step.  :func:`launch` re-runs a ``fastbn``
command under ``mpirun``; ``fastbn experiment depth --ranks K`` uses it.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np

from .layers import softmax_loss
from .models import FullyConnectedNet

__all__ = ["DataParallelNet", "launch", "rank_and_size", "WORKER_ENV"]

WORKER_ENV = "FASTBN_DATA_PARALLEL_WORKER"


def rank_and_size(comm=None):
    """(rank, size) of ``comm`` (MPI.COMM_WORLD by default).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional

    Returns
    -------
    rank, size : int

    Examples
    --------
    >>> from fastbn.data_parallel import rank_and_size
    >>> rank_and_size()  # doctest: +SKIP
    (0, 1)
    """
    from mpi4py import MPI
    comm = MPI.COMM_WORLD if comm is None else comm
    return comm.Get_rank(), comm.Get_size()


def my_rows(n, rank, size):
    """This process's rows of an n-row batch: contiguous, sizes differ by at most 1."""
    cuts = np.linspace(0, n, size + 1).round().astype(int)
    return slice(int(cuts[rank]), int(cuts[rank + 1]))


class DataParallelNet:
    """A FullyConnectedNet trained on a global batch split over MPI processes.

    Parameters
    ----------
    model : FullyConnectedNet
        ``normalization`` None or ``'batchnorm'``, no dropout.  Must start
        with the same parameters on every process (seed the global RNG the
        same way before building it).
    comm : mpi4py.MPI.Comm, optional
        ``MPI.COMM_WORLD`` by default.

    Raises
    ------
    ImportError
        Without mpi4py.
    TypeError, ValueError
        For a model that is not a :class:`~fastbn.models.FullyConnectedNet`,
        or one with layer norm or dropout.

    Notes
    -----
    ``params`` is the wrapped model's dict, so a Solver's updates reach the
    model.  ``loss(X)`` without labels (test mode) scores ``X`` locally: the
    running statistics are the same on every process, so the scores are.

    Examples
    --------
    Under ``mpirun -n K``, with the same seed on every process:

    >>> import numpy as np
    >>> from fastbn.data import get_default_data
    >>> from fastbn.data_parallel import DataParallelNet
    >>> from fastbn.models import FullyConnectedNet
    >>> from fastbn.solver import Solver
    >>> np.random.seed(231)
    >>> net = FullyConnectedNet([100] * 5, input_dim=64, normalization="batchnorm")
    >>> solver = Solver(DataParallelNet(net), get_default_data(), update_rule="adam",
    ...                 verbose=False)  # doctest: +SKIP
    >>> solver.train()  # doctest: +SKIP
    """

    def __init__(self, model, comm=None):
        from . import distributed  # noqa: F401  (a clear ImportError without mpi4py)
        from mpi4py import MPI
        if not isinstance(model, FullyConnectedNet):
            raise TypeError(f"model must be a fastbn.models.FullyConnectedNet, "
                            f"got {type(model).__name__}")
        if model.normalization not in (None, "batchnorm") or model.use_dropout:
            raise ValueError("DataParallelNet supports batch norm or no normalization, "
                             "without dropout")
        self.model = model
        self.comm = MPI.COMM_WORLD if comm is None else comm

    @property
    def params(self):
        return self.model.params

    @params.setter
    def params(self, value):
        self.model.params = value

    def loss(self, X, y=None):
        """Scores (``y`` None), or the global minibatch's loss and gradients."""
        if y is None:
            return self.model.loss(X)
        from mpi4py import MPI
        from .distributed import sync_batchnorm_backward, sync_batchnorm_forward
        m = self.model
        X = np.asarray(X).astype(m.dtype, copy=False)
        n = X.shape[0]
        rows = my_rows(n, self.comm.Get_rank(), self.comm.Get_size())
        h, y = X.reshape(n, -1)[rows], np.asarray(y)[rows]
        p, L, bn = m.params, m.num_layers, m.normalization == "batchnorm"

        caches = []
        for k in range(1, L):
            a = h @ p[f"W{k}"] + p[f"b{k}"]
            bn_cache = None
            if bn:
                bn_param = m.bn_params[k - 1]
                bn_param["mode"] = "train"
                a, bn_cache = sync_batchnorm_forward(a, p[f"gamma{k}"], p[f"beta{k}"],
                                                     bn_param, comm=self.comm)
            caches.append((h, bn_cache, a))
            h = np.maximum(a, 0)
        scores = h @ p[f"W{L}"] + p[f"b{L}"]

        # softmax_loss averages over the local rows; rescale to the global batch
        local = len(y)
        if local:
            loss, dscores = softmax_loss(scores, y)
            loss, dscores = loss * local / n, dscores * (local / n)
        else:
            loss, dscores = 0.0, np.zeros_like(scores)

        grads = {f"W{L}": h.T @ dscores, f"b{L}": dscores.sum(axis=0)}
        dh = dscores @ p[f"W{L}"].T
        for k in range(L - 1, 0, -1):
            h_in, bn_cache, a = caches[k - 1]
            da = np.where(a > 0, dh, 0).astype(dh.dtype, copy=False)
            if bn:
                da, grads[f"gamma{k}"], grads[f"beta{k}"] = sync_batchnorm_backward(
                    da, bn_cache)
            grads[f"W{k}"], grads[f"b{k}"] = h_in.T @ da, da.sum(axis=0)
            dh = da @ p[f"W{k}"].T

        # one Allreduce: every W/b gradient and the loss (not gamma/beta: the
        # synchronized backward already returned their global sums)
        keys = [f"{w}{k}" for k in range(1, L + 1) for w in ("W", "b")]
        flat = np.concatenate([grads[k].ravel().astype(np.float64) for k in keys]
                              + [np.array([loss], np.float64)])
        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        start = 0
        for k in keys:
            size = grads[k].size
            grads[k] = flat[start:start + size].reshape(grads[k].shape).astype(m.dtype)
            start += size
        loss = float(flat[-1])
        for k in range(1, L + 1):
            W = p[f"W{k}"]
            loss += 0.5 * m.reg * float(np.sum(W.astype(np.float64) ** 2))
            grads[f"W{k}"] = grads[f"W{k}"] + m.reg * W
        return loss, grads


def mpirun_command(nprocs):
    """``mpirun -n nprocs`` with the flags Open MPI needs here, or a RuntimeError."""
    if importlib.util.find_spec("mpi4py") is None:
        raise RuntimeError("--ranks needs mpi4py: pip install mpi4py (and an MPI library, "
                           "e.g. apt-get install openmpi-bin libopenmpi-dev)")
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        raise RuntimeError("mpirun not found: install an MPI library, e.g. "
                           "`apt-get install openmpi-bin libopenmpi-dev`, and "
                           "`pip install mpi4py`")
    cmd = [mpirun, "-n", str(nprocs)]
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        if nprocs > (os.cpu_count() or 1):
            cmd.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        for var in ("OMP_NUM_THREADS", "FASTBN_NUM_THREADS", WORKER_ENV):
            cmd += ["-x", var]
    return cmd


def launch(nprocs, fastbn_argv):
    """Run ``python -m fastbn *fastbn_argv`` on ``nprocs`` MPI processes; exit status.

    Each process gets ``cpu_count // nprocs`` kernel threads (at least 1) and
    ``FASTBN_DATA_PARALLEL_WORKER=1`` so the command knows it is a worker.

    Parameters
    ----------
    nprocs : int
        Number of MPI processes.
    fastbn_argv : list of str
        The ``fastbn`` command line each process runs.

    Returns
    -------
    int
        ``mpirun``'s exit status.

    Raises
    ------
    RuntimeError
        When mpi4py or ``mpirun`` is missing (the message says what to install).

    Examples
    --------
    >>> from fastbn.data_parallel import launch
    >>> launch(2, ["experiment", "depth", "--out", "out", "--ranks", "2"])  # doctest: +SKIP
    0
    """
    threads = str(max(1, (os.cpu_count() or 1) // nprocs))
    env = dict(os.environ, OMP_NUM_THREADS=threads, FASTBN_NUM_THREADS=threads)
    env[WORKER_ENV] = "1"
    cmd = mpirun_command(nprocs) + [sys.executable, "-m", "fastbn", *fastbn_argv]
    return subprocess.call(cmd, env=env)
