"""fastbn's calls on a quiet machine and next to a CPU hog (``fastbn bench --under-load``).

A hog is a busy Python loop in a child process pinned to one CPU this
process may use; it is started and stopped here.  Each case is timed for a
fixed wall time quiet, then with the hog running, and the report gives the
median and the slowest call of each, and the loaded/quiet median ratio.
On a machine already shared with other jobs "quiet" only means "without
this hog".  The last column gives the threads the kernels chose for a
call of the case's size at the end of each phase (:func:`fastbn._config.threads_for`).
"""
import json
import math
import os
import statistics
import subprocess
import sys
import time

from .._config import threads_for
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


def time_for(fn, seconds):
    """Single-call times of ``fn`` over ``seconds`` of wall time (after one call)."""
    fn()
    clock = time.perf_counter
    times = []
    end = clock() + seconds
    while clock() < end:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def measure_under_load(cases=LOAD_CASES, direction="backward", seconds=2.0, threads=None):
    """Per case: quiet and loaded single-call times (seconds), and the
    threads a call of its size was given at the end of each phase."""
    import fastbn
    saved = fastbn.get_num_threads() if threads is not None else None
    if threads is not None:
        fastbn.set_num_threads(threads)
    try:
        fns = {c: implementations(c, direction, which=("fastbn",))["fastbn"] for c in cases}
        out = {c: {} for c in cases}
        for phase in ("quiet", "loaded"):
            hog = start_hog() if phase == "loaded" else None
            try:
                if hog is not None:
                    time.sleep(0.2)            # let the hog take its core
                for c, fn in fns.items():
                    out[c][phase] = time_for(fn, seconds)
                    # the team the kernels chose at the end of the phase
                    out[c][phase + "_threads"] = threads_for(math.prod(c.shape))
            finally:
                if hog is not None:
                    stop_hog(hog)
        return out
    finally:
        if threads is not None:
            fastbn.set_num_threads(saved)


def run_under_load(threads=None, json_path=None, seconds=2.0, direction="backward"):
    """``fastbn bench --under-load``: print (and optionally save) the report."""
    import fastbn
    got = measure_under_load(seconds=seconds, threads=threads, direction=direction)
    rows = []
    for c, t in got.items():
        q, lo = t["quiet"], t["loaded"]
        rows.append({**c.as_dict(), "label": c.label, "direction": direction,
                     "quiet_ms": {"median": 1e3 * statistics.median(q), "max": 1e3 * max(q),
                                  "n": len(q)},
                     "loaded_ms": {"median": 1e3 * statistics.median(lo), "max": 1e3 * max(lo),
                                   "n": len(lo)},
                     "threads": {"quiet": t["quiet_threads"], "loaded": t["loaded_threads"]},
                     "loaded_over_quiet": statistics.median(lo) / statistics.median(q)})
    result = {"fastbn_version": fastbn.__version__, "kernels": kernel_build(),
              "threads": threads or fastbn.get_num_threads(), "torch_version": None,
              "machine": machine(), "seconds_per_phase": seconds, "results": rows}
    print(header(result))
    print(f"fastbn {direction}, {seconds:g} s of calls per case quiet, then with a busy "
          "loop pinned to one CPU (started and stopped here)")
    print("| case | quiet median ms | quiet max ms | loaded median ms | loaded max ms "
          "| loaded / quiet median | threads quiet / loaded |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['quiet_ms']['median']:.3f} | {r['quiet_ms']['max']:.2f} "
              f"| {r['loaded_ms']['median']:.3f} | {r['loaded_ms']['max']:.2f} "
              f"| {r['loaded_over_quiet']:.2f}x "
              f"| {r['threads']['quiet']} / {r['threads']['loaded']} |")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {json_path}")
    return 0
