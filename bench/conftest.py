"""pytest-benchmark suite setup: thread counts, the optional torch import and
the fastbn speedup summary (see :mod:`fastbn.benchmark.pytest_plugin`).

Run with ``pytest bench/ --benchmark-only`` (not part of ``python -m pytest``,
whose testpaths is ``tests/``).  ``--bench-threads N`` sets the threads of
fastbn and torch alike (default: ``fastbn.get_num_threads()``).  The compare
workflow (``--benchmark-save``, ``--benchmark-compare``,
``--benchmark-compare-fail``) is described in bench/README.md.
"""
import pytest

import fastbn
from fastbn.benchmark import import_torch
from fastbn.benchmark.pytest_plugin import pytest_benchmark_update_json, \
    pytest_sessionstart, pytest_terminal_summary  # noqa: F401  (hooks: found by name here)


def pytest_addoption(parser):
    parser.addoption("--bench-threads", type=int, default=None,
                     help="threads for fastbn and torch (default: fastbn's default)")


@pytest.fixture(scope="session")
def threads(request):
    n = request.config.getoption("--bench-threads")
    if n is not None:
        fastbn.set_num_threads(n)
    return fastbn.get_num_threads()


@pytest.fixture(scope="session")
def torch(threads):
    """torch limited to the same threads as fastbn, or None when not installed."""
    t = import_torch()
    if t is not None:
        t.set_num_threads(threads)
    return t
