"""Running a benchmark: each implementation in a process of its own.

In one process the implementations share a heap, and that changes what is
measured: PyTorch takes each output from malloc and frees it after the
call, and whether glibc hands the same pages back next time or returns them
to the OS (a page fault per 4 KiB when they are touched again) depends on
everything else the process allocated.  Alone, PyTorch's (4096, 1024)
backward faults on every call (6 ms); next to fastbn and NumPy it mostly
does not (1.9 ms).  So by default every implementation runs in a worker
process of its own (multiprocessing, spawn), still interleaved burst by
burst, and PyTorch runs twice: as it comes, and ("torch_warm") with glibc
told never to give memory back (MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_), its best case.  Separate processes also keep
PyTorch's OpenMP runtime and fastbn's apart: two runtimes in one process each
keep their idle workers spinning after a parallel call.

:func:`run_benchmark` is the one place a benchmark is run; the CLI, the
ISA-comparison script and the tests call it.
"""
import datetime
import os
import platform
import statistics

from .cases import IMPLS, Case, as_case, case_arrays, import_torch, implementations
from .machine import kernel_build, machine
from .timing import run_burst, time_rounds

WARM_HEAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def has_glibc():
    return platform.libc_ver()[0] == "glibc"


def _set_threads(fastbn, torch, n):
    fastbn.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def kernel_impl(isa):
    """The implementation name of fastbn forced to kernel build ``isa``."""
    return f"fastbn_{isa}"


def _worker_env(impl):
    """Environment a worker of ``impl`` starts with: the warm heap of
    ``torch_warm``, the forced kernel build of ``fastbn_<isa>``."""
    if impl == "torch_warm":
        return WARM_HEAP_ENV
    if impl.startswith("fastbn_"):
        return {"FASTBN_KERNELS": impl[len("fastbn_"):]}
    return {}


def _worker(conn, impl, threads):
    """Worker process: serves setup and burst requests for one implementation."""
    try:
        import fastbn
        # torch_warm: its heap differs; fastbn_<isa>: its kernel build
        name = "torch" if impl.startswith("torch") else impl.split("_")[0]
        torch = import_torch() if name == "torch" else None
        _set_threads(fastbn, torch, threads)
        arrays, fn = {}, None
        conn.send(("ok", kernel_build() if name == "fastbn" else None))
    except BaseException as exc:                 # pragma: no cover - import failure
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "setup":
                case, direction = Case.from_dict(msg[1]), msg[2]
                _set_threads(fastbn, torch, case.threads or threads)
                key = (case.kind, case.shape, case.dtype)
                if key not in arrays:
                    arrays.clear()                   # one case's arrays at a time
                    arrays[key] = case_arrays(case)
                fn = implementations(case, direction, torch, which=(name,),
                                     arrays=arrays[key]).get(name)
                if fn is not None:
                    fn()                             # first touch, lazy imports
                conn.send(("ok", fn is not None))
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
        self.available = list(impls)
        self.conns, self.procs = {}, []
        try:
            for impl in impls:
                parent, child = ctx.Pipe()
                env = _worker_env(impl)
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)               # the child reads them at start
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
            # the kernel build each fastbn worker runs, as it reports it
            self.builds = {impl: self._reply(impl) for impl in impls}
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

    def setup(self, case, direction):
        case = as_case(case)
        for conn in self.conns.values():             # the workers build their cases in parallel
            conn.send(("setup", case.as_dict(), direction))
        self.available = [impl for impl in self.names if self._reply(impl)]

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


class _InProcess:
    """The implementations as callables of this process (``--in-process``)."""

    def __init__(self, torch_mod, impls, threads):
        import fastbn
        self.fastbn, self.torch, self.threads = fastbn, torch_mod, threads
        self.fns = {}
        self.names = list(impls)
        self.available = list(impls)

    def setup(self, case, direction):
        case = as_case(case)
        _set_threads(self.fastbn, self.torch, case.threads or self.threads)
        self.fns = implementations(case, direction, self.torch, which=self.names)
        self.available = [n for n in self.names if n in self.fns]
        for fn in self.fns.values():       # first touch, lazy imports
            fn()

    def burst(self, name, burst, burst_s, once):
        return run_burst(self.fns[name], burst, burst_s, once)

    def close(self):
        self.fns = {}


def _ratio(a, b):
    return a / b if a and b else None


def ratios(t):
    """Ratios of the times ``t`` (name -> seconds or ms) to fastbn's."""
    f = t.get("fastbn")
    out = {"torch_over_fastbn": _ratio(t.get("torch"), f),
           "torch_warm_over_fastbn": _ratio(t.get("torch_warm"), f),
           "reference_over_fastbn": _ratio(t.get("reference"), f),
           "fastbn_over_stream": _ratio(f, t.get("stream"))}
    for name in t:                        # other kernel builds of fastbn
        if name.startswith("fastbn_"):
            out[f"{name}_over_fastbn"] = _ratio(t[name], f)
    return out


def run_benchmark(shapes, threads=None, repeat=20, torch="auto", progress=None,
                  isolate=True, impls=IMPLS, kernels=()):
    """Measure every case and direction; returns the JSON-ready result dict.

    Parameters
    ----------
    shapes : iterable of Case or (shape, dtype)
        The cases (a ``(shape, dtype)`` pair is a batch-norm case).
    threads : int, optional
        Threads of fastbn and torch (default: ``fastbn.get_num_threads()``);
        a case with its own thread count uses that.
    repeat : int
        Timed rounds per case and pass.
    torch : 'auto', module or None
        PyTorch, imported if 'auto' and installed; None leaves it out.
    progress : callable, optional
        Receives a line of text as each case starts.
    isolate : bool
        Each implementation in a worker process of its own (and PyTorch
        twice, as it comes and with a heap that never shrinks, on glibc);
        otherwise all in this process.  The workers are started with
        multiprocessing's "spawn", which imports the calling script again
        in each of them: from a script, call this under
        ``if __name__ == "__main__":``.
    impls : iterable of str
        The implementations to time, of ``fastbn``, ``torch``,
        ``reference`` and ``stream``.
    kernels : iterable of str
        Kernel builds (``"avx2"``, ``"avx512"``, ...) to time as well, each
        as implementation ``fastbn_<build>`` in a worker started with
        ``FASTBN_KERNELS=<build>``, interleaved with the build ``fastbn``
        runs by default: the comparison that decides what ``auto`` picks.
        Needs ``isolate``.
    """
    import fastbn
    from .. import _config, _dispatch
    cases = [as_case(s) for s in shapes]
    torch_mod = import_torch() if torch == "auto" else torch
    if "torch" not in impls:
        torch_mod = None
    saved = _config._user_threads, torch_mod and torch_mod.get_num_threads()
    try:
        if threads is not None:
            fastbn.set_num_threads(threads)
        nthreads = fastbn.get_num_threads()
        names = [n for n in IMPLS if n in impls and (n != "torch" or torch_mod is not None)]
        kernels = list(dict.fromkeys(kernels))
        if kernels and not isolate:
            raise ValueError("kernels: other kernel builds run in worker processes of their "
                             "own; they cannot be timed in this process (isolate=False)")
        for isa in kernels:
            if isa not in _dispatch.KERNEL_BUILDS[1:]:
                raise ValueError(f"kernels: unknown kernel build {isa!r}, expected some of "
                                 f"{', '.join(_dispatch.KERNEL_BUILDS[1:])}")
            if not _dispatch.cpu_supports(isa):
                raise ValueError(f"kernels: this CPU cannot run the {isa} build")
        names[1:1] = [kernel_impl(isa) for isa in kernels if "fastbn" in names]
        if isolate:
            if "torch" in names and has_glibc():
                names.insert(names.index("torch") + 1, "torch_warm")
            runner = _Workers(names, nthreads)
        else:
            runner = _InProcess(torch_mod, names, nthreads)
        try:
            rows = _measure(cases, repeat, runner, progress)
            builds = {n: b for n, b in getattr(runner, "builds", {}).items() if b}
        finally:
            runner.close()
    finally:     # the caller's thread settings, as they were
        fastbn.set_num_threads(saved[0])
        if torch_mod is not None:
            torch_mod.set_num_threads(saved[1])
    return {
        "fastbn_version": fastbn.__version__,
        "torch_version": getattr(torch_mod, "__version__", None),
        "threads": nthreads, "openmp": fastbn.openmp_enabled(),
        "kernels": kernel_build(), "repeat": repeat,
        **({"kernel_builds": builds} if kernels else {}),
        "isolated": bool(isolate), "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "results": rows,
    }


def _measure(cases, repeat, runner, progress, sweeps=3):
    """Time every case and direction; the rounds are spread over ``sweeps``
    passes through the whole list, so a few seconds of heavy load from other
    processes cost one sweep of a case, not all of its rounds."""
    sweeps = max(1, min(sweeps, repeat))
    times, faults = {}, {}
    for sweep in range(sweeps):
        rounds = repeat // sweeps + (sweep < repeat % sweeps)
        for case in cases:
            for direction in ("forward", "backward"):
                if progress:
                    progress(f"{case.label} {direction} (sweep {sweep + 1}/{sweeps})")
                runner.setup(case, direction)
                # the NumPy reference is 10-100x slower: a few rounds pin it down
                nflt = {}
                got = time_rounds(runner.burst, runner.available, rounds, slow=("reference",),
                                  slow_repeat=max(1, rounds // 4), faults=nflt)
                acc = times.setdefault((case, direction), {})
                facc = faults.setdefault((case, direction), {})
                for name, t in got.items():
                    acc.setdefault(name, []).extend(t)
                    before = facc.get(name, 0)
                    facc[name] = None if before is None or nflt[name] is None \
                        else before + nflt[name]
    rows = []
    for case in cases:
        for direction in ("forward", "backward"):
            # page faults per call tell which allocator state an implementation
            # ran in: a fresh output costs one fault per 4 KiB page
            nflt = faults[(case, direction)]
            ms = {name: {"min": 1e3 * min(t), "median": 1e3 * statistics.median(t),
                         "n": len(t),
                         "faults_per_call": None if nflt[name] is None else nflt[name] / len(t)}
                  for name, t in times[(case, direction)].items() if t}
            rows.append({
                **case.as_dict(), "label": case.label, "direction": direction, "ms": ms,
                "ratios": ratios({name: v["min"] for name, v in ms.items()}),
                # an implementation with two speeds (PyTorch's allocator) shows
                # its common one in the medians, its rarer fast one in the minima
                "ratios_median": ratios({name: v["median"] for name, v in ms.items()}),
            })
    return rows
