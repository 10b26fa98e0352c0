"""All-reduce overhead of synchronized batch norm against the kernel time.

Run under MPI (one kernel thread per process)::

    OMP_NUM_THREADS=1 mpirun -n 2 python bench/mpi_overhead.py

For each shape (the *local* batch of every process) it times, per process,
the best of ``--repeat`` calls (as the other benchmarks: the one least disturbed
by other load), each started after a barrier:

* ``fused``: single-process ``fastbn`` forward / backward on the local batch
  (what a process would spend without synchronization),
* ``sync``: ``sync_(spatial_)batchnorm_forward`` / ``_backward``,
* ``allreduce``: the all-reduce alone (forward: 2*D+1 doubles with the
  Chan-merge op; backward: 2*D doubles summed).

Prints a Markdown table on rank 0 (the slowest process's best per column).
"""
import argparse

import numpy as np
from mpi4py import MPI

from fastbn import compiled
from fastbn import distributed as dist
from fastbn.benchmark import call_times, make_case

SHAPES = [(256, 1024), (4096, 1024), (32, 64, 28, 28), (32, 256, 14, 14)]


def best_time(comm, fn, repeat):
    times = call_times(fn, repeat, before=comm.Barrier)
    return comm.allreduce(min(times), op=MPI.MAX)     # the slowest process's best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rows = []
    for shape in SHAPES:
        spatial = len(shape) == 4
        D = shape[1]
        case = make_case(shape, "float32", seed=comm.Get_rank())
        x, dout, g, b = (case[k] for k in ("x", "dout", "gamma", "beta"))
        ffwd = compiled.spatial_batchnorm_forward if spatial else compiled.batchnorm_forward
        fbwd = compiled.spatial_batchnorm_backward if spatial else compiled.batchnorm_backward
        sfwd = dist.sync_spatial_batchnorm_forward if spatial else dist.sync_batchnorm_forward
        sbwd = dist.sync_spatial_batchnorm_backward if spatial else dist.sync_batchnorm_backward
        _, fcache = ffwd(x, g, b, {"mode": "train"})
        _, scache = sfwd(x, g, b, {"mode": "train"})
        fwd_buf = np.zeros(2 * D + 1)
        fwd_buf[0] = 1.0
        bwd_buf = np.zeros(2 * D)

        def fwd_allreduce():
            buf = fwd_buf.copy()
            comm.Allreduce(MPI.IN_PLACE, [buf, 1, dist._packed_type(D)],
                           op=dist.MERGE_MOMENTS)

        def bwd_allreduce():
            comm.Allreduce(MPI.IN_PLACE, bwd_buf.copy(), op=MPI.SUM)

        t = {
            "fused fwd": best_time(comm, lambda: ffwd(x, g, b, {"mode": "train"}), args.repeat),
            "sync fwd": best_time(comm, lambda: sfwd(x, g, b, {"mode": "train"}), args.repeat),
            "allreduce fwd": best_time(comm, fwd_allreduce, args.repeat),
            "fused bwd": best_time(comm, lambda: fbwd(dout, fcache), args.repeat),
            "sync bwd": best_time(comm, lambda: sbwd(dout, scache), args.repeat),
            "allreduce bwd": best_time(comm, bwd_allreduce, args.repeat),
        }
        rows.append((shape, D, t))
    if comm.Get_rank() == 0:
        fb, bb = dist.bytes_per_call(1)
        print(f"{comm.Get_size()} processes, float32, local batch per process; "
              f"best of {args.repeat} calls in ms (slowest process)\n")
        print("| local shape | D | bytes fwd / bwd | fused fwd | sync fwd | all-reduce fwd "
              "| fused bwd | sync bwd | all-reduce bwd | all-reduce / fused (fwd+bwd) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for shape, D, t in rows:
            fwd_b, bwd_b = dist.bytes_per_call(D)
            ms = {k: 1e3 * v for k, v in t.items()}
            ratio = (t["allreduce fwd"] + t["allreduce bwd"]) / (t["fused fwd"] + t["fused bwd"])
            print(f"| {shape} | {D} | {fwd_b} / {bwd_b} | {ms['fused fwd']:.3f} | "
                  f"{ms['sync fwd']:.3f} | {ms['allreduce fwd']:.3f} | {ms['fused bwd']:.3f} | "
                  f"{ms['sync bwd']:.3f} | {ms['allreduce bwd']:.3f} | {100 * ratio:.1f}% |")


if __name__ == "__main__":
    main()
