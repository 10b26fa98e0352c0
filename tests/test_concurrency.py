"""Under load: many Python threads calling the kernels at once get exactly the
serial results, and every kernel releases the GIL while it runs."""
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastbn
from fastbn import compiled

from conftest import with_layout
from test_errors import BACKWARD, FORWARD


def _jobs():
    """(backward name, mode, dtype, shape, layout): small ones, and ones large
    enough for the kernels to start their own OpenMP teams."""
    jobs = []
    for name in sorted(BACKWARD):
        spec = FORWARD[BACKWARD[name]]
        shapes = [(37, 5), (3000, 40)] if spec.ndim == 2 else [(3, 5, 7, 2), (8, 6, 40, 40)]
        layouts = ["C", "F"] if spec.ndim == 2 else ["C", "channels_last"]
        for shape in shapes:
            for layout in layouts:
                for dtype in (np.float32, np.float64):
                    for mode in (["train", "test"] if spec.running else ["train"]):
                        jobs.append((name, mode, dtype, shape, layout))
    return jobs


def _run(job, seed):
    name, mode, dtype, shape, layout = job
    spec = FORWARD[BACKWARD[name]]
    rng = np.random.default_rng(seed)
    x = with_layout((2 + rng.standard_normal(shape)).astype(dtype), layout)
    dout = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    G = shape[1]
    gamma, beta = (1 + rng.random(G)).astype(dtype), rng.standard_normal(G).astype(dtype)
    param = {}
    if spec.running:
        param = {"mode": mode, "running_mean": rng.standard_normal(G).astype(dtype),
                 "running_var": (1 + rng.random(G)).astype(dtype)}
    out, cache = getattr(compiled, spec.name)(x, gamma, beta, param)
    grads = getattr(compiled, name)(dout, cache)
    return [out, *grads, *[param[k] for k in sorted(param) if k.startswith("running")]]


def test_many_threads_give_the_serial_results():
    jobs = _jobs()
    serial = [_run(job, i) for i, job in enumerate(jobs)]
    work = [(i, job) for i, job in enumerate(jobs)] * 3
    random.Random(0).shuffle(work)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda w: (w[0], _run(w[1], w[0])), work))
    assert len(results) == 3 * len(jobs)
    for i, got in results:
        for a, b in zip(got, serial[i]):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b, err_msg=str(jobs[i]))


def test_backend_choice_is_per_thread():
    """``with fastbn.backend(...)`` in one thread does not leak into others."""
    x = np.random.default_rng(0).standard_normal((9, 4))
    barrier = threading.Barrier(8)
    kinds = {}

    def worker(k):
        backend = "numpy" if k % 2 else "cython"
        with fastbn.backend(backend):
            barrier.wait()       # all threads inside their own with-block at once
            for _ in range(50):
                _, cache = fastbn.batchnorm_forward(x, np.ones(4), np.zeros(4), {"mode": "train"})
                kinds.setdefault(k, set()).add(type(cache).__name__)
                assert fastbn.get_backend() == backend

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kinds == {k: {"dict" if k % 2 else "BatchNormCache"} for k in range(8)}


# -- the GIL ------------------------------------------------------------------

def _progress_during(call, repeats=3, stop_early=False):
    """Run ``call`` ``repeats`` times in a thread while this thread counts.

    Returns, per call, how many of this thread's ticks fell in the middle half
    of the call, and the longest stretch without a tick as a fraction of the
    call.  A call that holds the GIL throughout gets no ticks and one long
    stretch: no Python code runs anywhere while it does.
    """
    windows = []

    def target():
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            windows.append((t0, time.perf_counter()))
            if stop_early and ticks and ticks[-1] > (t0 + windows[-1][1]) / 2:
                break   # progress seen late in this call; enough

    ticks = []
    worker = threading.Thread(target=target)
    # Between its Python statements the worker can lose the GIL to us for one
    # switch interval (right after taking t0, say); keep those spells short,
    # well inside the window's outer quarters.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-3)
    try:
        worker.start()
        while worker.is_alive():
            ticks.append(time.perf_counter())
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    ticks = np.array(ticks)
    counts, gaps = [], []
    for t0, t1 in windows:
        q = (t1 - t0) / 4
        counts.append(int(((ticks > t0 + q) & (ticks < t1 - q)).sum()))
        inside = np.concatenate([[t0], ticks[(ticks > t0) & (ticks < t1)], [t1]])
        gaps.append(float(np.diff(inside).max() / (t1 - t0)))
    return counts, gaps


def test_gil_detector_detects_a_gil_holding_call():
    """Control: sum() over a range is one C call that never lets go of the GIL:
    in each window the other thread stalls for most of it."""
    _, gaps = _progress_during(lambda: sum(range(5_000_000)))
    assert min(gaps) > 0.5, gaps


def _kernel_cases():
    """Every kernel, through the public functions: both loop orders, forward in
    train and test mode, backward."""
    for name in sorted(BACKWARD):
        if name.endswith("_alt"):
            continue          # the same kernel as batchnorm_backward
        spec = FORWARD[BACKWARD[name]]
        for layout in (["C", "F"] if spec.ndim == 2 else ["C", "channels_last"]):
            for mode in (["train", "test"] if spec.running else ["train"]):
                yield name, layout, mode, "forward"
                if mode == "train":
                    yield name, layout, mode, "backward"


def _long_input(spec, layout, call_for, target=0.04, max_elements=2**26):
    """An input big enough that one kernel call lasts ``target`` seconds.

    The windows must be long next to the OS scheduler's time slices, or on a
    loaded machine the counting thread may simply not be scheduled inside
    them; how big that is depends on how fast the kernels are.
    """
    block = np.random.default_rng(0).standard_normal((4096, 4)).astype(np.float32)
    reps = 16
    while True:
        flat = np.tile(block, (reps, 1))
        if spec.ndim == 2:
            x = flat
        else:    # (N, 4, H, W), channel values from the block's columns
            x = flat.T.reshape(4, reps * 16, 16, 16).transpose(1, 0, 2, 3)
        x = with_layout(x, layout)
        call = call_for(x)
        call()                                       # warm up
        t0 = time.perf_counter()
        call()
        took = time.perf_counter() - t0
        if took >= target or x.size * 2 > max_elements:
            return call
        reps = int(reps * min(16, max(2.0, 1.3 * target / max(took, 1e-4))))
        reps = min(reps, max_elements // block.size)


@pytest.mark.parametrize("name,layout,mode,direction", list(_kernel_cases()))
def test_kernels_release_the_gil(name, layout, mode, direction):
    """Another Python thread keeps running while a kernel works."""
    spec = FORWARD[BACKWARD[name]]
    G = 4
    param = {"mode": mode} if spec.running else {}
    fwd = getattr(compiled, spec.name)
    g, b = np.ones(G, np.float32), np.zeros(G, np.float32)

    def call_for(x):
        if direction == "forward":
            return lambda: fwd(x, g, b, dict(param))
        _, cache = fwd(x, g, b, dict(param))
        return lambda: getattr(compiled, name)(x, cache)

    # One kernel thread leaves a core for the counting thread: this is about
    # the GIL, not about OpenMP.
    fastbn.set_num_threads(1)
    try:
        call = _long_input(spec, layout, call_for)
        counts, _ = _progress_during(call, repeats=10, stop_early=True)
    finally:
        fastbn.set_num_threads(None)
    # On a loaded machine the OS may not schedule the counting thread within
    # a given call; it will within one of ten.  A GIL-holding kernel never.
    assert max(counts) > 0, f"no progress in the other thread: counts {counts}"
