"""``fastbn bench`` (also ``python -m fastbn.benchmark``): options and output.

``python -m fastbn.benchmark plot RUN.json [-o FILE]`` draws the chart of a
saved run, ``fastbn bench --json`` output or a pytest-benchmark
``--benchmark-json`` file alike.
"""
import argparse
import json
import shlex
import sys

from .. import _dispatch

from .cases import DEFAULT_SHAPES, IMPLS, SUITES, as_case, import_torch, \
    parse_shape


def _shape_arg(text):
    # argparse names the type function in its message for a ValueError
    # ("invalid _shape_arg value"); an ArgumentTypeError says what is wrong
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def add_arguments(parser):
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads for fastbn and torch (default: fastbn.get_num_threads())")
    parser.add_argument("--repeat", type=_positive_int, default=20,
                        help="timed rounds per case and pass, each a burst of >= 8 calls "
                             "and >= 20 ms per implementation (default 20; the NumPy "
                             "reference runs once in a quarter of them, at least 1)")
    parser.add_argument("--shapes", nargs="+", type=_shape_arg, default=None,
                        metavar="SHAPE",
                        help="batch-norm shapes, e.g. 256x4096 64x64x56x56 100x500:f64 "
                             "(default: the five target shapes)")
    parser.add_argument("--suite", nargs="+", choices=sorted(SUITES), default=None,
                        help="named case lists: " + "; ".join(
                            f"{k}: {len(v)} cases" for k, v in SUITES.items()))
    parser.add_argument("--sweep", action="store_true",
                        help="the (N, D) float32 grid, N in 8..16384, D in 256..4096, "
                             "N*D <= 2^24 (same as --suite sweep)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                        help="implementations to time (default: all available)")
    parser.add_argument("--kernels", nargs="+", default=(), metavar="BUILD",
                        choices=_dispatch.KERNEL_BUILDS[1:],
                        help="also time fastbn forced to these kernel builds "
                             "(FASTBN_KERNELS), each in a worker of its own, interleaved "
                             "with the build in use")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw a chart (matplotlib): a heat map of the ratios for "
                             "--sweep, else a bar chart of the speedups")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write a dated Markdown table with the command that "
                             "reproduces it")
    parser.add_argument("--from-json", metavar="FILE",
                        help="report a saved run (fastbn bench --json or pytest-benchmark "
                             "--benchmark-json) instead of timing")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--in-process", action="store_true",
                        help="run every implementation in this process instead of one "
                             "worker process each (they then share one heap: see the "
                             "faults column)")
    parser.add_argument("--under-load", action="store_true",
                        help="time fastbn alone on a quiet machine and next to a CPU hog "
                             "it starts on one core, and report both")


def _cases(args):
    cases = [as_case(s) for s in args.shapes or ()]
    suites = list(args.suite or ()) + (["sweep"] if args.sweep else [])
    for name in suites:
        cases += SUITES[name]
    if not cases:
        cases = [as_case(s) for s in DEFAULT_SHAPES]
    if any(c.kind == "gn" for c in cases):
        from .cases import _compiled_groupnorm
        if _compiled_groupnorm() is None:
            print("this fastbn has no spatial_groupnorm_forward: group-norm cases skipped",
                  file=sys.stderr)
            cases = [c for c in cases if c.kind != "gn"]
    return cases


def load_result(path):
    """A result dict from ``fastbn bench --json`` or pytest-benchmark JSON."""
    with open(path) as f:
        data = json.load(f)
    if "benchmarks" in data and "results" not in data:
        from .pytest_plugin import result_from_pytest_json
        return result_from_pytest_json(data)
    return data


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib, or "
              "pip install 'fastbn[experiments]')", file=sys.stderr)
        return False
    return True


def run(args):
    from . import report
    if args.under_load:
        from .load import run_under_load
        return run_under_load(threads=args.threads, json_path=args.json)
    if args.plot and not _have_matplotlib():
        args.plot = None
    if args.from_json:
        result = load_result(args.from_json)
    else:
        from .workers import run_benchmark
        torch = None if args.no_torch or "torch" not in args.impls else import_torch()
        if torch is None and not args.no_torch and "torch" in args.impls:
            print("PyTorch is not installed: no torch columns (pip install torch to add them)",
                  file=sys.stderr)
        result = run_benchmark(_cases(args), threads=args.threads, repeat=args.repeat,
                               torch=torch, isolate=not args.in_process, impls=args.impls,
                               kernels=args.kernels,
                               progress=lambda s: print(f"  timing {s}", file=sys.stderr))
        result["command"] = "fastbn " + " ".join(
            shlex.quote(a) for a in getattr(args, "argv", ["bench"]))
    print(report.format_report(result))
    if args.json and not args.from_json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown(result, result.get("command")))
        print(f"wrote {args.markdown}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None):
    """``python -m fastbn.benchmark [plot RUN.json [-o FILE] | bench options]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plot"]:
        p = argparse.ArgumentParser(prog="python -m fastbn.benchmark plot",
                                    description="draw the chart of a saved benchmark run")
        p.add_argument("run", help="fastbn bench --json or pytest-benchmark JSON file")
        p.add_argument("-o", "--out", default=None, help="image file (default: RUN.png)")
        a = p.parse_args(argv[1:])
        if not _have_matplotlib():
            return 2
        from . import report
        out = a.out or a.run.rsplit(".", 1)[0] + ".png"
        report.plot(load_result(a.run), out)
        print(f"wrote {out}")
        return 0
    p = argparse.ArgumentParser(prog="python -m fastbn.benchmark",
                                description="speedup table: fastbn vs NumPy reference vs PyTorch")
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = ["bench", *argv]
    return run(args)
