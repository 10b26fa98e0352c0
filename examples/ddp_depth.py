"""Data-parallel training of the deep batch-norm net with synchronized batch norm.

Run under MPI, one process per slice of every minibatch::

    mpirun -n 4 python examples/ddp_depth.py                 # one machine
    mpirun -H host1,host2 -n 4 python examples/ddp_depth.py  # two machines

The net is ``fastbn.models.FullyConnectedNet`` of the ``depth`` experiment
(five hidden layers of 100 with batch norm, Adam, lr 1e-3, batch 50) on
scikit-learn's digits.  Every step all processes draw the same global
minibatch (same seed), each takes its own rows (uneven slices when the batch
does not divide, empty ones when there are more processes than rows), and
:class:`fastbn.data_parallel.DataParallelNet` computes the global batch's loss
and gradients from them: synchronized batch norm (:mod:`fastbn.distributed`),
then one ``Allreduce`` of the W/b gradients.  Every process applies the same
Adam step, so the parameters stay equal.  (``fastbn experiment depth --ranks
K`` does the same through the Solver.)

With ``--check`` rank 0 then trains the same net single-process (the plain
``FullyConnectedNet.loss`` on whole minibatches) and compares the loss
curves; the script exits 1 if they differ by more than ``--tol``.  They
agree to rounding, not to the bit: sums run in another order, and Adam
divides by ``sqrt(v) + 1e-8``, so a gradient that is zero in exact arithmetic
(the biases feeding batch norm) turns float32 rounding noise (~1e-9) into
steps of a good fraction of lr.  Measured over the default 200 steps: 8e-15
in float64, 6e-4 in float32 (bitwise equal with one process).
"""
import argparse
import json
import sys
import time

import numpy as np
from mpi4py import MPI

from fastbn import optim
from fastbn.data_parallel import DataParallelNet
from fastbn.models import FullyConnectedNet


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=200, help="training steps (default 200)")
    p.add_argument("--batch-size", type=int, default=50, help="global minibatch (default 50)")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--hidden", default="100,100,100,100,100",
                   help="hidden layer sizes (default: five of 100)")
    p.add_argument("--weight-scale", type=float, default=2e-2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=231)
    p.add_argument("--data", choices=["digits", "synthetic"], default="digits",
                   help="digits (scikit-learn) or synthetic Gaussian blobs (no dependency)")
    p.add_argument("--check", action="store_true",
                   help="also train single-process on rank 0 and compare the loss curves")
    p.add_argument("--tol", type=float, default=None,
                   help="max |loss difference| allowed by --check "
                        "(default 1e-6 for float64, 5e-3 for float32)")
    p.add_argument("--json", metavar="PATH", help="write both loss curves here (rank 0)")
    return p.parse_args(argv)


def load(args):
    if args.data == "digits":
        from fastbn.data import load_digits_data
        d = load_digits_data(num_training=args.num_train, num_validation=100, num_test=0)
        X, y = d["X_train"], d["y_train"]
    else:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, args.num_train)
        X = rng.standard_normal((args.num_train, 64)) + 2.0 * np.eye(10, 64)[y]
    return X.reshape(len(X), -1).astype(args.dtype), y


# -- training ----------------------------------------------------------------

def make_model(args, input_dim):
    np.random.seed(args.seed)     # the classic seeding: same initial weights everywhere
    hidden = [int(h) for h in args.hidden.split(",")]
    return FullyConnectedNet(hidden, input_dim=input_dim, weight_scale=args.weight_scale,
                             normalization="batchnorm", dtype=args.dtype)


def batches(args, num_train):
    rng = np.random.default_rng(args.seed)   # identical draws on every process
    for _ in range(args.iters):
        yield rng.choice(num_train, args.batch_size)


def adam_step(model, grads, configs):
    for k, w in model.params.items():
        model.params[k], configs[k] = optim.adam(w, grads[k], configs[k])


def train_ddp(args, X, y, comm):
    """The same loop as :func:`train_single`, with the model wrapped."""
    model = DataParallelNet(make_model(args, X.shape[1]), comm)
    configs = {k: {"learning_rate": args.lr} for k in model.params}
    losses = []
    start = time.perf_counter()
    for idx in batches(args, len(X)):
        loss, grads = model.loss(X[idx], y[idx])    # this process computes its rows only
        losses.append(loss)
        adam_step(model, grads, configs)
    return model, losses, time.perf_counter() - start


def train_single(args, X, y):
    model = make_model(args, X.shape[1])
    configs = {k: {"learning_rate": args.lr} for k in model.params}
    losses = []
    for idx in batches(args, len(X)):
        loss, grads = model.loss(X[idx], y[idx])
        losses.append(float(loss))
        adam_step(model, grads, configs)
    return model, losses


def main(argv=None):
    args = parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = load(args)
    model, losses, seconds = train_ddp(args, X, y, comm)

    # the parameters must be the same on every process
    digest = np.array([sum(float(np.sum(v, dtype=np.float64)) for v in model.params.values())])
    digests = comm.allgather(digest[0])
    in_sync = all(d == digests[0] for d in digests)

    status = 0
    if rank == 0:
        print(f"{size} process(es), {args.iters} steps of a global batch of "
              f"{args.batch_size}: {seconds:.2f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}; parameters "
              f"{'identical' if in_sync else 'DIFFERENT'} on all processes")
        status |= not in_sync
        result = {"ranks": size, "ddp_loss": losses}
        if args.check:
            _, single = train_single(args, X, y)
            diff = float(np.max(np.abs(np.array(single) - np.array(losses))))
            tol = args.tol if args.tol is not None else \
                (1e-6 if args.dtype == "float64" else 5e-3)
            ok = diff <= tol
            print(f"single-process loss {single[0]:.4f} -> {single[-1]:.4f}; "
                  f"max |loss difference| over {len(losses)} steps: {diff:.3g} "
                  f"({'OK' if ok else 'MISMATCH'}, tolerance {tol:g})")
            status |= not ok
            result["single_loss"] = single
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f)
    return int(comm.bcast(status, root=0))


if __name__ == "__main__":
    sys.exit(main())
