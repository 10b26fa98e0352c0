"""How a call is timed: bursts of calls, interleaved rounds, page faults.

The reported time of an implementation is its best call (noise only ever
adds time) and its median call (an implementation with two speeds shows its
common one there).  Calls run in bursts (at least 8 calls and 20 ms) because
the first calls after another implementation ran find its data in the
caches, not their own: on a 51 MB batch a call took 1.5-2x its settled time
for the first 5-8 calls.
"""
import time


def minor_faults():
    """Minor page faults of this process so far, or None where unknown (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_burst(fn, burst=8, burst_s=0.02, once=False):
    """One burst of calls of ``fn``: at least ``burst`` calls and ``burst_s``
    seconds (one call if ``once``).  Returns (single-call seconds, minor page
    faults of the process during the burst, or None where unknown)."""
    clock = time.perf_counter
    f0 = minor_faults()
    times = []
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        times.append(t1 - t0)
        if once or (len(times) >= burst and t1 - start >= burst_s):
            break
    return times, None if f0 is None else minor_faults() - f0


def call_times(fn, repeat, before=None):
    """``repeat`` single-call times of ``fn`` in seconds, each call preceded
    by ``before()`` when given (e.g. an MPI barrier), outside the timing."""
    clock = time.perf_counter
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def time_rounds(burst_of, names, repeat, slow=(), slow_repeat=None, burst=8, burst_s=0.02,
                settle_s=0.03, faults=None):
    """Time implementations round-robin: ``repeat`` rounds, a burst of calls each.

    ``burst_of(name, burst, burst_s, once)`` runs one burst of ``name`` and
    returns what :func:`run_burst` returns (in this process or in a worker).
    Returns, per name, the list of single-call times in seconds.  If
    ``faults`` is a dict, it receives per name the minor page faults during
    that name's timed calls (None where unknown).  In each round an
    implementation runs at least ``burst`` calls and for at least ``burst_s``
    seconds, after a pause of ``settle_s``.  The pause matters when torch is
    loaded: it ships its own OpenMP runtime, and an OpenMP runtime's idle
    workers spin for a while after each parallel call (libgomp counts the spin
    in iterations, so a spinner that shares its core spins for longer); on a
    2-core machine the other library's team would find a core taken.  Names
    in ``slow`` (the NumPy reference) run once per round, in the first
    ``slow_repeat`` rounds.
    """
    slow_repeat = repeat if slow_repeat is None else min(repeat, slow_repeat)
    times = {name: [] for name in names}
    nflt = {name: 0 for name in names}
    for r in range(repeat):
        for name in names:
            if name in slow and r >= slow_repeat:
                continue
            if settle_s:
                time.sleep(settle_s)
            t, f = burst_of(name, burst, burst_s, name in slow)
            times[name].extend(t)
            nflt[name] = None if f is None or nflt[name] is None else nflt[name] + f
    if faults is not None:
        faults.update(nflt)
    return times
