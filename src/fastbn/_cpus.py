"""How many CPUs this process can get right now, for sizing a kernel's team.

An OpenMP team leaves a parallel region only when its last member arrives.
A member whose CPU is taken by another process waits for the scheduler --
on a loaded machine a whole scheduling round, tens of milliseconds -- and
every threaded call pays that wait, while the same call on one thread takes
a fraction of a millisecond.  So the kernels' team is no larger than:

* the CPUs the process may run on (``os.sched_getaffinity``), capped by a
  cgroup CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` in v1), rounded up: :func:`available_cpus`;
* of those, the ones other processes leave free: the machine's runnable
  tasks now (``/proc/loadavg``) minus this process's own runnable threads
  (``/proc/self/task``, so fastbn's own workers spinning between calls are
  not mistaken for someone else's): :func:`free_cpus`, remeasured at most
  every 50 ms.

Where ``/proc`` is missing (not Linux) the team is sized by the available
CPUs alone.
"""
import math
import os
import time

SAMPLE_S = 0.05         # how long a measurement of the other processes' load holds
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


def running_tasks(loadavg="/proc/loadavg"):
    """Tasks running or ready to run on the whole machine now (the kernel's
    ``nr_running``, the fourth field of ``/proc/loadavg``), or None."""
    text = _read(loadavg)
    if text is None:
        return None
    try:
        return int(text.split()[3].split("/")[0])
    except (IndexError, ValueError):
        return None


def own_running(task_dir="/proc/self/task"):
    """Threads of this process running or ready to run now (state R),
    including the caller and OpenMP workers spinning between calls."""
    n = 0
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return 1
    for tid in tids:
        text = _read(os.path.join(task_dir, tid, "stat"))
        # "tid (comm) S ...": the state follows the last ')'
        if text and text[text.rfind(")") + 2:text.rfind(")") + 3] == "R":
            n += 1
    return max(1, n)


def free_from(available, running, own, online):
    """CPUs of ``available`` not taken by other processes when ``running``
    tasks are runnable on ``online`` CPUs, ``own`` of them this process's
    threads: at least 1.  Other processes' tasks are assumed spread evenly
    over the online CPUs when the process may use only some of them."""
    others = max(0, running - own) * min(1.0, available / online)
    return max(1, min(available, available - math.ceil(others - 0.5)))


# one tuple each, replaced whole, so threads calling at once read consistent pairs
_last = (None, None)        # (monotonic time, free_cpus()) as last measured
_available = (None, None)   # (monotonic time, available_cpus()) as last read


def free_cpus():
    """CPUs of :func:`available_cpus` that other processes leave free now
    (remeasured at most every :data:`SAMPLE_S` seconds)."""
    global _last, _available
    now = time.monotonic()
    checked, free = _last
    if checked is not None and now - checked < SAMPLE_S:
        return free
    if _available[0] is None or now - _available[0] >= AVAILABLE_S:
        _available = (now, available_cpus())
    available = _available[1]
    running = running_tasks()
    free = available if running is None else free_from(
        available, running, own_running(), os.cpu_count() or available)
    _last = (now, free)
    return free
