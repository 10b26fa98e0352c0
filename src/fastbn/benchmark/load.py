"""fastbn's calls on a quiet machine and next to a CPU hog (``fastbn bench --under-load``).

A hog is a busy Python loop in a child process pinned to one CPU this
process may use; it is started and stopped here.  Each case is timed for a
fixed wall time quiet, then with the hog running, and the report gives the
median and the slowest call of each, and the loaded/quiet median ratio.
Each case and phase starts with untimed calls for :data:`SETTLE_S`: fastbn
notices new load within one window of calls (:data:`fastbn._cpus.WINDOW_S`),
and the report is of the steady state after it.
On a machine already shared with other jobs "quiet" only means "without
this hog".  The last column gives the threads the kernels chose for a
call of the case's size at the end of each phase (:func:`fastbn._config.threads_for`).

The last row is a control that involves no fastbn code and no thread team:
one thread running NumPy passes for about as long as the (256, 4096) call.
Its slowest call is the delay the machine itself (the scheduler, a
hypervisor) puts on a call of that length, the floor under fastbn's.
"""
import json
import math
import numpy as np
import os
import statistics
import subprocess
import sys
import time

from .._config import threads_for
from .._cpus import WINDOW_S
from .cases import Case, implementations
from .machine import header, kernel_build, machine

LOAD_CASES = [Case("bn", (256, 4096)), Case("bn", (4096, 1024)),
              Case("bn", (100, 500), "float64")]

_HOG = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def start_hog(cpu=None):
    """A child process spinning on ``cpu`` (default: the last CPU available)."""
    cpu = _cpus()[-1] if cpu is None else cpu
    code = _HOG if hasattr(os, "sched_setaffinity") else "while True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code, str(cpu)])


def stop_hog(proc):
    proc.terminate()
    proc.wait(timeout=10)


def time_for(fn, seconds, settle=0.0):
    """Single-call times of ``fn`` over ``seconds`` of wall time, after
    ``settle`` seconds of untimed calls (at least one)."""
    clock = time.perf_counter
    end = clock() + settle
    fn()
    while clock() < end:
        fn()
    times = []
    end = clock() + seconds
    while clock() < end:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


CONTROL_LABEL = "control: NumPy, 1 thread"
# untimed calls before each case and phase: fastbn sizes its teams from the
# load it measured over its last window of calls (fastbn._cpus.WINDOW_S),
# so the first window after the hog starts still runs full teams
SETTLE_S = 3 * WINDOW_S
SLOW_MS = 5.0          # the slowest call counted as a stall


def control_call(target_s=4e-4):
    """A call of about ``target_s`` seconds that runs no fastbn code and no
    thread team: repeated one-thread NumPy passes over a 1 MiB array."""
    a = np.ones(1 << 18, np.float32)
    b = np.empty_like(a)
    t0 = time.perf_counter()
    for _ in range(20):
        np.multiply(a, 2, out=b)
    reps = max(1, round(target_s / ((time.perf_counter() - t0) / 20)))

    def call():
        for _ in range(reps):
            np.multiply(a, 2, out=b)
    return call


def measure_under_load(cases=LOAD_CASES, direction="backward", seconds=2.0, threads=None):
    """Per case (and the control, keyed :data:`CONTROL_LABEL`): quiet and
    loaded single-call times (seconds), and the threads a call of its size
    was given at the end of each phase."""
    import fastbn
    saved = fastbn.get_num_threads() if threads is not None else None
    if threads is not None:
        fastbn.set_num_threads(threads)
    try:
        fns = {c: implementations(c, direction, which=("fastbn",))["fastbn"] for c in cases}
        fns[CONTROL_LABEL] = control_call()
        out = {c: {} for c in fns}
        for phase in ("quiet", "loaded"):
            hog = start_hog() if phase == "loaded" else None
            try:
                if hog is not None:
                    time.sleep(0.2)            # let the hog take its core
                for c, fn in fns.items():
                    out[c][phase] = time_for(fn, seconds, settle=SETTLE_S)
                    # the team the kernels chose at the end of the phase
                    out[c][phase + "_threads"] = (1 if c == CONTROL_LABEL
                                                  else threads_for(math.prod(c.shape)))
            finally:
                if hog is not None:
                    stop_hog(hog)
        return out
    finally:
        if threads is not None:
            fastbn.set_num_threads(saved)


def _summary(times):
    ms = sorted(1e3 * t for t in times)
    return {"median": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "max": ms[-1], "n": len(ms), "over_slow": sum(t > SLOW_MS for t in ms)}


def run_under_load(threads=None, json_path=None, seconds=2.0, direction="backward"):
    """``fastbn bench --under-load``: print (and optionally save) the report."""
    import fastbn
    got = measure_under_load(seconds=seconds, threads=threads, direction=direction)
    rows = []
    for c, t in got.items():
        q, lo = t["quiet"], t["loaded"]
        case = {"label": c} if c == CONTROL_LABEL else {**c.as_dict(), "label": c.label}
        rows.append({**case, "direction": direction,
                     "quiet_ms": _summary(q), "loaded_ms": _summary(lo),
                     "threads": {"quiet": t["quiet_threads"], "loaded": t["loaded_threads"]},
                     "loaded_over_quiet": statistics.median(lo) / statistics.median(q)})
    result = {"fastbn_version": fastbn.__version__, "kernels": kernel_build(),
              "threads": threads or fastbn.get_num_threads(), "torch_version": None,
              "machine": machine(), "seconds_per_phase": seconds, "results": rows}
    print(header(result))
    print(f"fastbn {direction}, {seconds:g} s of calls per case quiet, then with a busy "
          "loop pinned to one CPU (started and stopped here)")
    print(f"| case | quiet median ms | quiet max ms | loaded median ms | loaded p99 ms "
          f"| loaded max ms | loaded calls > {SLOW_MS:g} ms | loaded / quiet median "
          f"| threads quiet / loaded |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q, lo = r["quiet_ms"], r["loaded_ms"]
        print(f"| {r['label']} | {q['median']:.3f} | {q['max']:.2f} | {lo['median']:.3f} "
              f"| {lo['p99']:.2f} | {lo['max']:.2f} | {lo['over_slow']} of {lo['n']} "
              f"| {r['loaded_over_quiet']:.2f}x "
              f"| {r['threads']['quiet']} / {r['threads']['loaded']} |")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {json_path}")
    return 0
