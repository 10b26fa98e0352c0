"""Benchmarks of fastbn against the NumPy reference, PyTorch and a streaming pass.

One subpackage, one job per module:

* :mod:`~fastbn.benchmark.cases`: the cases (batch norm on rows, NCHW and
  channels-last, layer norm, group norm; the named suites and the ``(N, D)``
  sweep), their arrays and one callable per implementation;
* :mod:`~fastbn.benchmark.timing`: bursts of calls, interleaved rounds,
  page faults per call;
* :mod:`~fastbn.benchmark.workers`: :func:`run_benchmark`, every
  implementation in a worker process of its own (or all in this one);
* :mod:`~fastbn.benchmark.machine`: the CPU, the kernel build, versions;
* :mod:`~fastbn.benchmark.report`: Markdown table, dated Markdown page, bar
  chart, the sweep's heat map;
* :mod:`~fastbn.benchmark.load`: fastbn's calls on a quiet machine and next
  to a CPU hog it starts itself;
* :mod:`~fastbn.benchmark.pytest_plugin`: the ``bench/`` pytest-benchmark
  suite's hooks (the speedup summary and the ratios in its JSON);
* :mod:`~fastbn.benchmark.inner_loops`: the kernels' inner loops read from
  the built modules (``objdump``): instructions per element and, with
  ``llvm-mca``, cycles per element on a CPU model;
* :mod:`~fastbn.benchmark.cli`: ``fastbn bench`` and
  ``python -m fastbn.benchmark``.

Every front end goes through these: ``fastbn bench``, ``pytest bench/``,
``scripts/bench_isa.py`` (which runs ``fastbn bench --impls fastbn`` in each
build) and ``bench/mpi_overhead.py`` (the cases and :func:`call_times`).

What ``fastbn bench`` times, per case and pass: forward in train mode with
the running-statistics update and an output allocated by the call (fastbn's
large outputs come from its buffer cache, as in any loop:
``FASTBN_BUFFER_CACHE=0`` times fresh pages); backward
(``batchnorm_backward_alt`` and its spatial, layer-norm and group-norm
counterparts) with ``dx`` allocated likewise; PyTorch's own operators on the
same memory; the stream, one threaded pass over the same bytes.  Every
implementation runs in a worker process of its own on identical arrays,
interleaved burst by burst, so load from other processes hits all of them
alike; the best call and the median call are reported, and the page faults
per call (a fresh output pays one per 4 KiB page, and PyTorch's glibc heap
decides which of its two speeds was timed: see :mod:`.workers`).

Tracking speed with pytest-benchmark
------------------------------------
``pytest bench/ --benchmark-only`` prints pytest-benchmark's tables and
then the fastbn speedup summary; the ratios are also in the JSON, in the
``extra_info`` of each case's fastbn benchmark::

    pytest bench/ --benchmark-only --benchmark-save=base     # .benchmarks/…/0001_base.json
    pytest bench/ --benchmark-only --benchmark-compare=0001  # times side by side, and the
                                                             # saved run's speedup table
    pytest bench/ --benchmark-only --benchmark-compare=0001 --benchmark-compare-fail=median:10%
                                                             # fail on a 10 % slower median
    pytest bench/ --benchmark-only --benchmark-json=run.json
    python -m fastbn.benchmark plot run.json -o run.png      # the chart of that run

``--bench-threads N`` sets the threads of fastbn and PyTorch alike.
"""
from .cases import DEFAULT_SHAPES, DIRECTIONS, IMPLS, SUITES, Case, implementations, \
    import_torch, make_case, parse_shape, shape_label, sweep_cases
from .machine import machine
from .report import format_legend, format_table, markdown, plot
from .timing import call_times, minor_faults, run_burst, time_rounds
from .workers import WARM_HEAP_ENV, _Workers, has_glibc, run_benchmark

__all__ = ["DEFAULT_SHAPES", "DIRECTIONS", "IMPLS", "SUITES", "Case", "WARM_HEAP_ENV",
           "call_times", "format_legend", "format_table", "has_glibc", "implementations",
           "import_torch", "machine", "make_case", "markdown", "minor_faults", "parse_shape",
           "plot", "run_benchmark", "run_burst", "shape_label", "sweep_cases", "time_rounds",
           "_Workers"]
