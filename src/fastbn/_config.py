"""Thread control for the compiled kernels.

Precedence: :func:`set_num_threads` > ``FASTBN_NUM_THREADS`` > the OpenMP
runtime's ``omp_get_max_threads()`` (which follows ``OMP_NUM_THREADS`` and
threadpoolctl's ``threadpool_limits``).  Small inputs always run on one
thread: starting a team costs more than it saves below ~128k elements.
"""
import os

from . import _threads

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


def set_num_threads(n):
    """Set the number of threads the kernels may use.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to go back to the default
        (``FASTBN_NUM_THREADS``, else the OpenMP runtime's maximum).
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
    """The number of threads a large kernel call will use."""
    if _user_threads is not None:
        return _user_threads
    if _env_threads is not None:
        return _env_threads
    return _threads.omp_max_threads()


def threads_for(size):
    """Threads for a kernel touching ``size`` elements."""
    if size < SERIAL_BELOW:
        return 1
    return max(1, min(get_num_threads(), size // MIN_PER_THREAD))


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return _threads.openmp_enabled()
