"""``fastbn bench``: a side-by-side speed table, fastbn vs NumPy vs PyTorch.

Every implementation runs in a worker process of its own, on identical
arrays (same seed), interleaved round by round (fastbn, torch, torch warm,
reference, stream, fastbn, ...), so load from other processes hits all of
them alike and the ratios stay meaningful on a busy machine; ``--in-process``
runs them all in this process instead (see "each implementation in a process
of its own" below for why that changes PyTorch's numbers).  Each round runs
every implementation for a burst of calls (at least 8 and 20 ms, after a
30 ms pause: see :func:`time_rounds`); the rounds of a shape are spread over
three sweeps through all shapes; the reported time is the best call (noise
only ever adds time), and the ratios of the median calls are kept too: an
implementation with two speeds shows its common one there.

What is timed, per shape and direction:

* forward: train mode with the running-statistics update and an output
  allocated by the call (``batchnorm_forward`` / ``spatial_batchnorm_forward``,
  ``torch.native_batch_norm``; fastbn's large outputs come from its buffer
  cache, as in any loop: ``FASTBN_BUFFER_CACHE=0`` times fresh pages);
* backward: ``batchnorm_backward_alt`` / ``spatial_batchnorm_backward``,
  ``torch.ops.aten.native_batch_norm_backward``, ``dx`` allocated likewise;
* stream: the physical floor, one pass over the same bytes with fastbn's
  thread count into a reused output (an OpenMP loop, :mod:`fastbn._stream`): ``x * 2`` for the forward (read
  x, write out), ``x + dout`` for the backward (read x and dout, write dx).

Each implementation's page faults per call are counted too (``getrusage``;
the table's last column, ``faults_per_call`` in the JSON): an output that
gets fresh pages from the OS pays one fault per 4 KiB page, about as long as
the kernel on a large batch.  PyTorch takes its outputs from ``malloc``, and
whether glibc reuses the pages or returns them to the OS depends on the
heap's history, so the column says which of PyTorch's two speeds was timed.

PyTorch and matplotlib are optional; without them their columns or the plot
are skipped with a message.  The shared case builders (:func:`make_case`,
:func:`implementations`) also drive the pytest-benchmark suite in ``bench/``.
"""
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

# (shape, dtype): the shapes of the performance targets (issue 4).
DEFAULT_SHAPES = (
    ((100, 500), "float64"),
    ((256, 4096), "float32"),
    ((4096, 1024), "float32"),
    ((64, 64, 56, 56), "float32"),
    ((32, 256, 14, 14), "float32"),
)
DIRECTIONS = ("forward", "backward")
IMPLS = ("fastbn", "torch", "reference", "stream")
EPS = 1e-5
MOMENTUM = 0.9      # classic API: running = m * running + (1 - m) * batch


def parse_shape(text):
    """``'64x64x56x56'`` or ``'100x500:f64'`` -> ((64, 64, 56, 56), 'float32')."""
    spec, _, dt = text.partition(":")
    dtype = {"": "float32", "f32": "float32", "float32": "float32",
             "f64": "float64", "float64": "float64"}.get(dt.lower())
    if dtype is None:
        raise ValueError(f"shape {text!r}: dtype must be f32 or f64, got {dt!r}")
    try:
        shape = tuple(int(s) for s in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r}: expected e.g. 256x4096 or 64x64x56x56:f32") from None
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise ValueError(f"shape {text!r}: need 2 (N, D) or 4 (N, C, H, W) positive sizes")
    return shape, dtype


def shape_label(shape, dtype):
    return "x".join(map(str, shape)) + (":f64" if dtype == "float64" else ":f32")


def make_case(shape, dtype, seed=0):
    """Inputs for one shape: x, dout, gamma, beta (features on axis 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    x = x * 2 + 1            # stats away from (0, 1), as real activations are
    dout = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    D = shape[1]
    gamma = (1 + 0.1 * rng.standard_normal(D)).astype(dtype)
    beta = (0.1 * rng.standard_normal(D)).astype(dtype)
    return {"x": x, "dout": dout, "gamma": gamma, "beta": beta}


def _numpy_impl(module, case, direction):
    x, dout, gamma, beta = case["x"], case["dout"], case["gamma"], case["beta"]
    spatial = x.ndim == 4
    fwd = module.spatial_batchnorm_forward if spatial else module.batchnorm_forward
    bwd = module.spatial_batchnorm_backward if spatial else module.batchnorm_backward_alt
    D = x.shape[1]
    bn_param = {"mode": "train", "eps": EPS, "momentum": MOMENTUM,
                "running_mean": np.zeros(D, x.dtype), "running_var": np.ones(D, x.dtype)}
    if direction == "forward":
        return lambda: fwd(x, gamma, beta, bn_param)
    _, cache = fwd(x, gamma, beta, dict(bn_param))
    return lambda: bwd(dout, cache)


def _torch_impl(torch, case, direction):
    x = torch.from_numpy(case["x"])              # no copies: same memory as fastbn's
    dout = torch.from_numpy(case["dout"])
    w, b = torch.from_numpy(case["gamma"]), torch.from_numpy(case["beta"])
    D = x.shape[1]
    rm, rv = torch.zeros(D, dtype=x.dtype), torch.ones(D, dtype=x.dtype)
    tmom = 1 - MOMENTUM                          # torch's momentum is the new-data weight
    if direction == "forward":
        return lambda: torch.native_batch_norm(x, w, b, rm, rv, True, tmom, EPS)
    _, save_mean, save_invstd = torch.native_batch_norm(x, w, b, rm.clone(), rv.clone(),
                                                        True, tmom, EPS)
    bwd = torch.ops.aten.native_batch_norm_backward
    mask = [True, True, True]
    return lambda: bwd(dout, x, w, rm, rv, save_mean, save_invstd, True, EPS, mask)


def _stream_impl(case, direction):
    """One pass over the bytes of the call: the floor any kernel must pay.

    ``x * 2`` for the forward (read x, write out), ``x + dout`` for the
    backward (read both, write dx), into an output allocated once (no page
    faults: fastbn's own large outputs come from its buffer cache), as an
    OpenMP loop with the thread count fastbn's kernels would use.
    """
    from . import _stream
    from ._config import threads_for
    x, dout = case["x"].reshape(-1), case["dout"].reshape(-1)
    out = np.empty_like(x)
    nthreads = threads_for(x.size)
    if direction == "forward":
        return lambda: _stream.scale2(x, out, nthreads)
    return lambda: _stream.add(x, dout, out, nthreads)


def import_torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def implementations(case, direction, torch=None, which=IMPLS):
    """name -> zero-argument callable running one call of that implementation."""
    from . import compiled, reference
    out = {}
    for name in which:
        if name == "fastbn":
            out[name] = _numpy_impl(compiled, case, direction)
        elif name == "reference":
            out[name] = _numpy_impl(reference, case, direction)
        elif name == "torch" and torch is not None:
            out[name] = _torch_impl(torch, case, direction)
        elif name == "stream":
            out[name] = _stream_impl(case, direction)
    return out


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
    2-core machine the other library's team would find a core taken.  The
    burst is long because the first calls after another implementation ran
    find its data in the caches, not their own: on a 51 MB batch a call took
    1.5-2x its settled time for the first 5-8 calls.  Names in ``slow`` (the
    NumPy reference) run once per round, in the first ``slow_repeat`` rounds.
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


# -- each implementation in a process of its own --------------------------
#
# In one process the implementations share a heap, and that changes what is
# measured: PyTorch takes each output from malloc and frees it after the
# call, and whether glibc hands the same pages back next time or returns them
# to the OS (a page fault per 4 KiB when they are touched again) depends on
# everything else the process allocated.  Alone, PyTorch's (4096, 1024)
# backward faults on every call (6 ms); next to fastbn and NumPy it mostly
# does not (1.9 ms).  So by default every implementation runs in a worker
# process of its own, still interleaved burst by burst, and PyTorch runs
# twice: as it comes, and ("torch_warm") with glibc told never to give memory
# back (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_), its best case.

WARM_HEAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _worker(conn, impl, threads):
    """Worker process: serves setup and burst requests for one implementation."""
    try:
        import fastbn
        fastbn.set_num_threads(threads)
        name = "torch" if impl.startswith("torch") else impl    # torch_warm: its heap differs
        torch = None
        if name == "torch":
            torch = import_torch()
            torch.set_num_threads(threads)
        cases, fn = {}, None
        conn.send(("ok", None))
    except BaseException as exc:                 # pragma: no cover - import failure
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "setup":
                shape, dtype, direction = msg[1:]
                key = (tuple(shape), dtype)
                if key not in cases:
                    cases[key] = make_case(shape, dtype)
                fn = implementations(cases[key], direction, torch, which=(name,))[name]
                fn()                                 # first touch, lazy imports
                conn.send(("ok", None))
            elif msg[0] == "burst":
                conn.send(("ok", run_burst(fn, *msg[1:])))
            else:
                return
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Workers:
    """One worker process per implementation (multiprocessing, spawn)."""

    def __init__(self, impls, threads):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.names = list(impls)
        self.conns, self.procs = {}, []
        try:
            for impl in impls:
                parent, child = ctx.Pipe()
                env = WARM_HEAP_ENV if impl == "torch_warm" else {}
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)               # the child's glibc reads them at start
                try:
                    proc = ctx.Process(target=_worker, args=(child, impl, threads), daemon=True)
                    proc.start()
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                child.close()
                self.conns[impl] = parent
                self.procs.append(proc)
            for impl in impls:
                self._reply(impl)
        except BaseException:
            self.close()
            raise

    def _reply(self, impl):
        try:
            status, value = self.conns[impl].recv()
        except EOFError:
            raise RuntimeError(f"fastbn bench: the {impl} worker process died") from None
        if status != "ok":
            raise RuntimeError(f"fastbn bench: the {impl} worker failed: {value}")
        return value

    def setup(self, shape, dtype, direction):
        for conn in self.conns.values():             # the workers build their cases in parallel
            conn.send(("setup", list(shape), dtype, direction))
        for impl in self.conns:
            self._reply(impl)

    def burst(self, impl, burst, burst_s, once):
        self.conns[impl].send(("burst", burst, burst_s, once))
        return self._reply(impl)

    def close(self):
        for conn in self.conns.values():
            try:
                conn.send(("exit",))
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def has_glibc():
    return platform.libc_ver()[0] == "glibc"


def machine():
    """A short description of where the numbers came from."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform()}


def _ratio(a, b):
    return a / b if a and b else None


def run_benchmark(shapes=DEFAULT_SHAPES, threads=None, repeat=20, torch="auto",
                  progress=None, isolate=True):
    """Measure every shape and direction; returns the JSON-ready result dict.

    ``isolate``: each implementation in a worker process of its own (and
    PyTorch twice, as it comes and with a heap that never shrinks, on
    glibc); otherwise all in this process.  The workers are started with
    multiprocessing's "spawn", which imports the calling script again in each
    of them: from a script, call this under ``if __name__ == "__main__":``.
    """
    import fastbn
    from . import _config
    torch_mod = import_torch() if torch == "auto" else torch
    saved = _config._user_threads, torch_mod and torch_mod.get_num_threads()
    try:
        if threads is not None:
            fastbn.set_num_threads(threads)
        nthreads = fastbn.get_num_threads()
        if torch_mod is not None:
            torch_mod.set_num_threads(nthreads)
        if isolate:
            names = ["fastbn"]
            if torch_mod is not None:
                names += ["torch", "torch_warm"] if has_glibc() else ["torch"]
            names += ["reference", "stream"]
            runner = _Workers(names, nthreads)
        else:
            runner = _InProcess(torch_mod)
        try:
            rows = _measure(shapes, repeat, runner, progress)
        finally:
            runner.close()
    finally:     # the caller's thread settings, as they were
        fastbn.set_num_threads(saved[0])
        if torch_mod is not None:
            torch_mod.set_num_threads(saved[1])
    return {
        "fastbn_version": fastbn.__version__,
        "torch_version": getattr(torch_mod, "__version__", None),
        "threads": nthreads, "openmp": fastbn.openmp_enabled(), "repeat": repeat,
        "isolated": bool(isolate), "machine": machine(), "results": rows,
    }


class _InProcess:
    """The implementations as callables of this process (``--in-process``)."""

    def __init__(self, torch_mod):
        self.torch = torch_mod
        self.cases, self.fns = {}, {}
        self.names = [n for n in IMPLS if n != "torch" or torch_mod is not None]

    def setup(self, shape, dtype, direction):
        key = (tuple(shape), dtype)
        if key not in self.cases:
            self.cases[key] = make_case(shape, dtype)
        self.fns = implementations(self.cases[key], direction, self.torch)
        for fn in self.fns.values():       # first touch, lazy imports
            fn()

    def burst(self, name, burst, burst_s, once):
        return run_burst(self.fns[name], burst, burst_s, once)

    def close(self):
        self.cases, self.fns = {}, {}


def _measure(shapes, repeat, runner, progress, sweeps=3):
    """Time every shape and direction; the rounds are spread over ``sweeps``
    passes through the whole list, so a few seconds of heavy load from other
    processes cost one sweep of a shape, not all of its rounds."""
    sweeps = max(1, min(sweeps, repeat))
    names = runner.names
    times = {}
    faults = {}
    for sweep in range(sweeps):
        rounds = repeat // sweeps + (sweep < repeat % sweeps)
        for shape, dtype in shapes:
            key = (tuple(shape), dtype)
            for direction in DIRECTIONS:
                if progress:
                    progress(f"{shape_label(shape, dtype)} {direction} "
                             f"(sweep {sweep + 1}/{sweeps})")
                runner.setup(shape, dtype, direction)
                # the NumPy reference is 10-100x slower: a few rounds pin it down
                nflt = {}
                got = time_rounds(runner.burst, names, rounds, slow=("reference",),
                                  slow_repeat=max(1, rounds // 4), faults=nflt)
                acc = times.setdefault((key, direction), {})
                facc = faults.setdefault((key, direction), {})
                for name, t in got.items():
                    acc.setdefault(name, []).extend(t)
                    before = facc.get(name, 0)
                    facc[name] = None if before is None or nflt[name] is None \
                        else before + nflt[name]
    rows = []
    for shape, dtype in shapes:
        key = (tuple(shape), dtype)
        for direction in DIRECTIONS:
            # page faults per call tell which allocator state an implementation
            # ran in: a fresh output costs one fault per 4 KiB page
            nflt = faults[(key, direction)]
            ms = {name: {"min": 1e3 * min(t), "median": 1e3 * statistics.median(t),
                         "n": len(t),
                         "faults_per_call": None if nflt[name] is None else nflt[name] / len(t)}
                  for name, t in times[(key, direction)].items()}
            rows.append({
                "shape": list(shape), "dtype": dtype, "direction": direction, "ms": ms,
                "ratios": _ratios({name: v["min"] for name, v in ms.items()}),
                # an implementation with two speeds (PyTorch's allocator) shows
                # its common one in the medians, its rarer fast one in the minima
                "ratios_median": _ratios({name: v["median"] for name, v in ms.items()}),
            })
    return rows


def _ratios(t):
    f = t["fastbn"]
    return {"torch_over_fastbn": _ratio(t.get("torch"), f),
            "torch_warm_over_fastbn": _ratio(t.get("torch_warm"), f),
            "reference_over_fastbn": _ratio(t.get("reference"), f),
            "fastbn_over_stream": _ratio(f, t.get("stream"))}


def _faults_cell(ms, names):
    """Page faults per call of each named implementation: ``0 / 4097``."""
    got = [ms[n].get("faults_per_call") if n in ms else None for n in names]
    return " / ".join("-" if f is None else f"{f:.0f}" for f in got)


def format_table(result):
    """The result as a Markdown table: ms and ratios of the best calls (the
    torch ratios also of the median calls, in brackets: PyTorch has two
    speeds, see the faults); the last column is the mean page faults per call
    of fastbn and torch: a fresh 16 MB output costs 4096 of them, about as
    long as the kernel itself."""
    rows = result["results"]
    has_torch = result["torch_version"] is not None
    has_warm = has_torch and any("torch_warm" in r["ms"] for r in rows)
    torches = ["torch"] + (["torch_warm"] if has_warm else []) if has_torch else []
    head = ["shape", "dtype", "pass", "fastbn ms"]
    head += [f"{n.replace('_', ' ')} ms" for n in torches]
    head += ["reference ms", "stream ms"]
    head += [f"{n.replace('_', ' ')} / fastbn" for n in torches]
    head += ["reference / fastbn", "fastbn / stream",
             "faults / call (" + ", ".join(["fastbn"] + [n.replace("_", " ")
                                                         for n in torches]) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms, q = r["ms"], r["ratios"]
        cells = ["(" + ", ".join(map(str, r["shape"])) + ")", r["dtype"], r["direction"],
                 f"{ms['fastbn']['min']:.3f}"]
        cells += [f"{ms[n]['min']:.3f}" for n in torches]
        cells += [f"{ms['reference']['min']:.3f}", f"{ms['stream']['min']:.3f}"]
        qm = r.get("ratios_median", {})
        cells += [f"{q[n + '_over_fastbn']:.2f}x" + (
                      f" ({qm[n + '_over_fastbn']:.2f}x)" if qm.get(n + "_over_fastbn") else "")
                  for n in torches]
        cells += [f"{q['reference_over_fastbn']:.1f}x", f"{q['fastbn_over_stream']:.2f}x",
                  _faults_cell(ms, ["fastbn"] + torches)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result, path):
    """Bar chart of the speedups of fastbn over torch and over the reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["results"]
    labels = [f"{shape_label(r['shape'], r['dtype'])}\n{r['direction']}" for r in rows]
    series = [("vs reference", "reference_over_fastbn")]
    if result["torch_version"] is not None:
        if any(r["ratios"].get("torch_warm_over_fastbn") for r in rows):
            series.insert(0, ("vs torch warm (heap kept)", "torch_warm_over_fastbn"))
        series.insert(0, ("vs torch", "torch_over_fastbn"))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    xs = np.arange(len(rows))
    for k, (name, key) in enumerate(series):
        ax.bar(xs + k * width, [r["ratios"][key] for r in rows], width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(xs + width * (len(series) - 1) / 2)
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("speedup of fastbn (x, log scale)")
    ax.set_title(f"fastbn {result['fastbn_version']}, {result['threads']} threads, "
                 f"{result['machine']['cpu']}", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the subcommand ---------------------------------------------------------

def add_arguments(parser):
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastbn and torch (default: fastbn.get_num_threads())")
    parser.add_argument("--repeat", type=int, default=20,
                        help="timed rounds per shape and pass, each a burst of >= 8 calls "
                             "and >= 20 ms per implementation (default 20; the NumPy "
                             "reference runs once in a quarter of them, at least 3)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                        metavar="SHAPE",
                        help="e.g. 256x4096 64x64x56x56 100x500:f64 (default: the five "
                             "target shapes)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="FILE", help="also draw a bar chart (matplotlib)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--in-process", action="store_true",
                        help="run every implementation in this process instead of one "
                             "worker process each (they then share one heap: see the "
                             "faults column)")


def run(args):
    if args.threads is not None and args.threads < 1:
        print("fastbn bench: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("fastbn bench: --repeat must be >= 1", file=sys.stderr)
        return 2
    torch = None if args.no_torch else import_torch()
    if torch is None and not args.no_torch:
        print("PyTorch is not installed: no torch column (pip install torch to add it)",
              file=sys.stderr)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib, or "
                  "pip install 'fastbn[experiments]')", file=sys.stderr)
            args.plot = None
    result = run_benchmark(args.shapes or DEFAULT_SHAPES, threads=args.threads,
                           repeat=args.repeat, torch=torch, isolate=not args.in_process,
                           progress=lambda s: print(f"  timing {s}", file=sys.stderr))
    m = result["machine"]
    print(f"fastbn {result['fastbn_version']}, {result['threads']} threads, "
          f"torch {result['torch_version'] or '-'}, {m['cpu']}; best call of {args.repeat} "
          f"interleaved rounds of call bursts (reference: fewer; torch ratios of the "
          f"median calls in brackets), "
          + ("one worker process per implementation" if result["isolated"]
             else "all in one process"))
    if "torch_warm" in result["results"][0]["ms"]:
        print("torch warm: PyTorch in a process whose glibc never returns freed memory to "
              "the OS (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_), its best case")
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
