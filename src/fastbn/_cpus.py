"""How many CPUs this process can get right now, for sizing a kernel's team.

An OpenMP team leaves a parallel region only when its last member arrives.
A member whose CPU is taken by another process waits for the scheduler --
on a loaded machine a whole scheduling round, tens of milliseconds -- and
every threaded call pays that wait, while the same call on one thread takes
a fraction of a millisecond.  So the kernels' team is no larger than:

* the CPUs the process may run on (``os.sched_getaffinity``), capped by a
  cgroup CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` in v1), rounded up: :func:`available_cpus`;
* of those, the ones other processes leave free: :func:`free_cpus`.

Other processes' load is the CPU time the CPUs this process may run on
spent busy (their lines of ``/proc/stat``, steal time included: a vCPU the
hypervisor took is as taken as one another process holds) minus this
process's own CPU time (all its threads, fastbn's spinning OpenMP workers
included), over a window of :data:`WINDOW_S` seconds in which this process
keeps calling fastbn or computing.  A window is an average, not a
snapshot: the runnable-task count of one instant (``/proc/loadavg``) also
counts tasks that are about to stop -- the OpenMP workers of a process that
just finished a parallel region spin for milliseconds before they sleep --
and a one-instant reading taken then would halve the team for no reason.
A pause (longer than :data:`IDLE_S` between two calls, with this process's
threads mostly idle in between) ends the window unmeasured, since while
this process waits (for a pipe, a lock, another process's result) the
others' CPU time says nothing about the CPUs it will get when it resumes;
the last decision holds until a window completes.  Time spent computing
between calls (NumPy layers of a training step) is no pause, but a window
that sparse calls stretch past :data:`WINDOW_MAX_S` is dropped as too old
to say much about now, and a measured size holds for :data:`HOLD_S`, after
which the team goes back to every available CPU until a new window
completes.  The first window of a process starts with every available
CPU, so new load costs at most one window of full-size teams.

Where ``/proc/stat`` is missing (not Linux) the team is sized by the
available CPUs alone.
"""
import math
import os
import time

WINDOW_S = 0.1          # the span over which other processes' CPU time is averaged
WINDOW_MAX_S = 0.5      # a window stretched longer than this by sparse calls is dropped
HOLD_S = 1.0            # how long a measured team size holds without a newer one
IDLE_S = 0.02           # a pause in the calls this long ends a window unmeasured
OTHERS_TAKE = 0.35      # the fraction of a CPU of others' load that counts as a taken CPU
AVAILABLE_S = 1.0       # how long the affinity and cgroup quota are taken as read


def _affinity():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_quota(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The CPU quota of this process's cgroup in CPUs (a float), or None."""
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":                                   # cgroup v2
            got = _read(os.path.join(root, path, "cpu.max"))
            if got and not got.startswith("max"):
                quota, period = got.split()[:2]
                return int(quota) / int(period)
        elif "cpu" in controllers.split(","):                   # cgroup v1
            for d in (os.path.join(root, controllers, path), os.path.join(root, "cpu", path)):
                quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
                period = _read(os.path.join(d, "cpu.cfs_period_us"))
                if quota and period and int(quota) > 0:
                    return int(quota) / int(period)
    return None


def available_cpus():
    """CPUs this process may run on, capped by its cgroup's CPU quota."""
    n = len(_affinity())
    quota = cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _busy_ticks(fields):
    """Busy clock ticks of one ``/proc/stat`` cpu line's numbers (user, nice,
    system, irq, softirq, steal; not idle, iowait, or guest, which user
    already holds)."""
    ticks = [int(v) for v in fields[:8]]
    ticks += [0] * (8 - len(ticks))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return user + nice + system + irq + softirq + steal


def busy_seconds(cpus=None, stat="/proc/stat"):
    """CPU-seconds spent busy since boot by the CPUs numbered in ``cpus``
    (default: all of them), from ``/proc/stat``; None when it cannot be read.

    Busy is user, nice, system, irq, softirq and steal time.
    """
    try:
        with open(stat) as f:
            text = f.read()
    except OSError:
        return None
    total, seen = 0, False
    try:
        for line in text.splitlines():
            fields = line.split()
            if not fields or not fields[0].startswith("cpu"):
                continue
            name = fields[0]
            if cpus is None:
                if name == "cpu" and len(fields) >= 5:
                    return _busy_ticks(fields[1:]) / _CLOCK_TICKS
                continue
            if name != "cpu" and int(name[3:]) in cpus and len(fields) >= 5:
                total += _busy_ticks(fields[1:])
                seen = True
    except ValueError:
        return None
    return total / _CLOCK_TICKS if seen else None


try:
    _CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    _CLOCK_TICKS = 100


def free_from(available, others, measured):
    """CPUs of ``available`` not taken by other processes that kept
    ``others`` of the ``measured`` CPUs busy on average over a window: at
    least 1.

    When fewer CPUs are available than were measured (a cgroup quota below
    the CPUs the process may run on) the others' load is taken as spread
    evenly over the measured ones.  A third of a CPU already
    counts as a taken CPU: a hog competing with one of this process's
    threads gets only part of its CPU (half, under a fair scheduler), and
    that thread waits all the same.  Less than that is below what a window
    can resolve (``/proc/stat`` counts in clock ticks of 10 ms).
    """
    share = max(0.0, others) * min(1.0, available / measured)
    return max(1, min(available, available - math.ceil(share - OTHERS_TAKE)))


class _Window:
    """One window's start: when, the busy CPU-seconds of the CPUs measured
    (:func:`busy_seconds`), and this process's CPU-seconds then."""
    __slots__ = ("start", "busy", "own")

    def __init__(self, start, busy, own):
        self.start, self.busy, self.own = start, busy, own


# replaced whole, so threads calling at once read consistent values
_window = None              # the current window's _Window, or None
_last_call = (None, None)   # (monotonic time, process CPU time) of the previous call
_free = (None, None)        # (monotonic time, team cap) of the last completed window
_available = (None, None, None)   # (monotonic time, available_cpus(), affinity) as last read


def free_cpus():
    """CPUs of :func:`available_cpus` that other processes leave free, as
    measured over the last completed window of calls (see the module's
    docstring); every available CPU before the first one completes."""
    global _window, _last_call, _free, _available
    now = time.monotonic()
    if _available[0] is None or now - _available[0] >= AVAILABLE_S:
        _available = (now, available_cpus(), frozenset(_affinity()))
    _, available, cpus = _available
    own = time.process_time()
    then, own_then = _last_call
    gap = None if then is None else now - then
    # a pause: no call for IDLE_S while this process mostly waited
    paused = gap is None or (gap > IDLE_S and own - own_then < 0.5 * gap)
    _last_call = (now, own)
    window = _window
    if paused or window is None:
        busy = busy_seconds(cpus)
        _window = None if busy is None else _Window(now, busy, own)
    elif now - window.start >= WINDOW_S:
        busy = busy_seconds(cpus)
        span = now - window.start
        if busy is not None and span <= WINDOW_MAX_S:
            others = ((busy - window.busy) - (own - window.own)) / span
            _free = (now, free_from(available, others, len(cpus)))
        _window = None if busy is None else _Window(now, busy, own)
    decided, free = _free
    if decided is None or now - decided > HOLD_S:
        return available
    return min(free, available)
