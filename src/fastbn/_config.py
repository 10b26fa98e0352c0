"""Thread control for the compiled kernels.

Precedence: :func:`set_num_threads` > ``FASTBN_NUM_THREADS`` > the OpenMP
runtime's ``omp_get_max_threads()`` (which follows ``OMP_NUM_THREADS`` and
threadpoolctl's ``threadpool_limits``).  Small inputs always run on one
thread: starting a team costs more than it saves below ~128k elements.

A process made by ``fork()`` (``os.fork``, ``multiprocessing``'s ``fork``
start method) runs the kernels on one thread.  GNU
libgomp keeps its thread pool in process memory but ``fork()`` copies only
the calling thread, so the child's first parallel region would wait forever
for workers that do not exist; with LLVM's libomp (the release wheels' runtime)
a child of a fork pool can hang too, so it also runs serially
(:mod:`fastbn._openmp_runtime`).  ``forkserver`` and ``spawn`` children start
a fresh runtime and get their full thread count.
"""
import os

from . import _cpus, _openmp_runtime, _threads

_openmp_runtime.check_no_duplicate()

# Waking an OpenMP team costs ~10 us on a quiet machine and far more on a busy
# one (a thread that is descheduled stalls the barrier), while a 100x500 batch
# takes ~20 us on one core: below ~128k elements a kernel runs serially.
SERIAL_BELOW = 1 << 17      # elements; below this a kernel runs on one thread
MIN_PER_THREAD = 1 << 16    # elements each extra thread must have to be worth it

_user_threads = None


def _parse_env():
    raw = os.environ.get("FASTBN_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"FASTBN_NUM_THREADS must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"FASTBN_NUM_THREADS must be a positive integer, got {raw!r}")
    return n


_env_threads = _parse_env()

# True in a process made by fork(): see the module docstring.
_forked = False


def _after_fork_in_child():
    global _forked
    _forked = not _openmp_runtime.fork_keeps_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n):
    """Set the number of threads the kernels may use.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to go back to the default
        (``FASTBN_NUM_THREADS``, else the OpenMP runtime's maximum).

    Raises
    ------
    TypeError
        If ``n`` is not an int or None.
    ValueError
        If ``n`` is less than 1.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.set_num_threads(1)
    >>> fastbn.get_num_threads()
    1
    >>> fastbn.set_num_threads(None)         # back to the default
    """
    global _user_threads
    if n is None:
        _user_threads = None
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be a positive int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be a positive int or None, got {n}")
    _user_threads = n


def get_num_threads():
    """The number of threads a large kernel call will use.

    Always 1 in a process made by ``fork()``, whose OpenMP runtime's thread
    pool did not survive the fork (use the ``forkserver`` or ``spawn``
    start method for parallel children).

    Returns
    -------
    int
        :func:`set_num_threads`'s value, else ``FASTBN_NUM_THREADS``, else the
        OpenMP runtime's maximum (which ``OMP_NUM_THREADS`` and
        ``threadpoolctl.threadpool_limits`` set).  A call uses fewer threads
        for inputs below 128k elements and when other processes keep the
        CPUs busy.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.get_num_threads() >= 1
    True
    """
    if _forked:
        return 1
    if _user_threads is not None:
        return _user_threads
    if _env_threads is not None:
        return _env_threads
    return _threads.omp_max_threads()


def threads_for(size):
    """Threads for a kernel touching ``size`` elements: never more than the
    CPUs other processes leave free (:func:`fastbn._cpus.free_cpus`), since a
    team waits for a member whose CPU is busy on every call."""
    if size < SERIAL_BELOW or _forked:
        return 1
    n = min(get_num_threads(), size // MIN_PER_THREAD)
    return min(n, _cpus.free_cpus()) if n > 1 else 1


def openmp_enabled():
    """True when the kernels were compiled with OpenMP.

    Returns
    -------
    bool
        False for a serial build (no OpenMP compiler support, or
        ``FASTBN_DISABLE_OPENMP=1`` at build time).

    Examples
    --------
    >>> import fastbn
    >>> isinstance(fastbn.openmp_enabled(), bool)
    True
    """
    return _threads.openmp_enabled()
