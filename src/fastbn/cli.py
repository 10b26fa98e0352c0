"""The ``fastbn`` command (also ``python -m fastbn``).

Each subcommand lives in its own module, imported only when it runs, so
``fastbn --help`` stays fast and optional dependencies (matplotlib, tqdm,
scikit-learn, torch) are needed only by the subcommands that use them.
Each such module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""
import argparse
import importlib
import sys

from ._version import __version__

# subcommand name -> (module, one-line help)
SUBCOMMANDS = {
    "experiment": ("fastbn.experiments", "run a classic batch-norm experiment and plot it"),
    "check": ("fastbn.checks", "numerical checks of the classic notebook, as a report"),
    "bench": ("fastbn.benchmark.cli", "speedup table: fastbn vs NumPy reference vs PyTorch"),
    "info": ("fastbn.info", "show the build configuration (OpenMP, threads, kernels)"),
}


def _build_parser(argv):
    parser = argparse.ArgumentParser(
        prog="fastbn",
        description="fastbn: fast batch normalization for NumPy; experiments, checks and benchmarks.")
    parser.add_argument("--version", action="version", version=f"fastbn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Only import the module of the subcommand being run.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _build_parser(argv).parse_args(argv)
    if args.command == "bench":
        args.argv = argv    # the command line as given: its reports quote it
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
