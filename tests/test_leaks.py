"""No leak: resident memory stays flat over 100 000 calls, error paths included.

The arrays are small in N so the calls are fast, and wide in D so a leak of
anything per call (the kernels' per-thread partial-sum buffers are ~5*D
doubles, a cache or an output is N*D) shows up as megabytes.
"""
import gc
import os
import resource

import numpy as np

from fastbn import compiled

from test_errors import BACKWARD, FORWARD

CALLS = 100_000          # forward + backward calls, over all functions
ERROR_CALLS = 30_000     # failing calls, over all error kinds


def rss_bytes():
    """Current resident set size, from /proc (ru_maxrss is only the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:      # not Linux: the peak is an upper bound that still only grows on leaks
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _workload():
    """One callable per public function pair, doing forward + backward, and
    one per error kind."""
    rng = np.random.default_rng(0)
    calls, errors = [], []
    for name in sorted(BACKWARD):
        spec = FORWARD[BACKWARD[name]]
        for layout in ("C", "F"):
            shape = (4, 256) if spec.ndim == 2 else (2, 256, 2, 1)
            x = rng.standard_normal(shape)
            x = np.asfortranarray(x) if layout == "F" else x
            G = shape[1]
            gamma, beta = np.ones(G), np.zeros(G)
            param = {"mode": "train", "momentum": 0.9} if spec.running else {}
            fwd, bwd = getattr(compiled, spec.name), getattr(compiled, name)
            dout = np.ones_like(x)

            def step(fwd=fwd, bwd=bwd, x=x, gamma=gamma, beta=beta, param=param, dout=dout):
                out, cache = fwd(x, gamma, beta, param)
                bwd(dout, cache)
            calls.append(step)
            errors += [
                lambda fwd=fwd, x=x, b=beta: fwd(x, np.ones(3), b, {"mode": "train"}),
                lambda fwd=fwd, x=x, g=gamma, b=beta: fwd(x.astype(np.int32), g, b, {"mode": "train"}),
                lambda fwd=fwd, x=x, g=gamma, b=beta: fwd(x, g, b, {"mode": "train", "eps": -1.0}),
                lambda fwd=fwd, x=x, g=gamma, b=beta: fwd(x, g, b, {"mode": "eval", "eps": "1"}),
                lambda fwd=fwd, x=x, g=gamma, b=beta: fwd(x, g, b, {"mode": "train"}, out=x),
                lambda bwd=bwd, x=x: bwd(x, None),
                lambda bwd=bwd, x=x, c=fwd(x, gamma, beta, dict(param))[1]: bwd(x[:1], c),
                lambda bwd=bwd, x=x, c=fwd(x, gamma, beta, dict(param))[1]: bwd(x, c, dx=x),
            ]
    return calls, errors


def _run(calls, errors, n_calls, n_errors):
    for i in range(n_calls // 2):              # each step is a forward and a backward call
        calls[i % len(calls)]()
    for i in range(n_errors):
        try:
            errors[i % len(errors)]()
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError("an error case did not raise")


def test_rss_flat_over_many_calls_including_error_paths():
    calls, errors = _workload()
    _run(calls, errors, 4_000, 2_000)          # warm up: allocator pools, caches
    gc.collect()
    before = rss_bytes()
    _run(calls, errors, CALLS, ERROR_CALLS)
    gc.collect()
    grown = rss_bytes() - before
    # Leaking the smallest per-call object here (a 256-double buffer, 2 KiB)
    # 50 000 times would be ~100 MiB; allocator noise is well under 8 MiB.
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over {CALLS} calls"
