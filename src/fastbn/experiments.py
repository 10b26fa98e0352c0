"""``fastbn experiment``: the classic batch-norm experiments, as a command.

``depth``
    A six-layer net (five hidden layers of 100) trained on 1000 samples with
    and without batch norm (Adam, lr 1e-3, 10 epochs, batch 50, weight scale
    2e-2).  Writes ``depth.png`` (training loss, training and validation
    accuracy of both nets) and ``depth.json``.
``init-scale``
    Eight-layer nets (seven hidden layers of 50) with and without batch norm
    over weight scales ``logspace(-4, 0, K)`` (K = 20).  Writes
    ``init_scale.png`` (best validation accuracy, best training accuracy and
    final training loss against the scale) and ``init_scale.json``.

Both default to scikit-learn's embedded digits (no download); ``--data
cifar10 --data-dir PATH`` runs on CIFAR-10 as in the original notebook.
Everything goes through the fastbn top-level functions, so ``--backend
numpy`` runs the same experiment on the NumPy reference.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

import fastbn

from . import data as datasets
from .models import FullyConnectedNet
from .solver import Solver

EXTRA = 'pip install "fastbn[experiments]"'


def add_arguments(parser):
    """Add the ``depth`` and ``init-scale`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    sub.required = True
    depth = sub.add_parser("depth", help="deep net with vs without batch norm: loss and "
                                         "accuracy curves (depth.png, depth.json)")
    depth.add_argument("--ranks", type=_positive_int, default=1, metavar="K",
                       help="train data-parallel on K MPI processes with synchronized "
                            "batch norm (needs mpirun and mpi4py; default: 1, no MPI)")
    depth.add_argument("--weight-scale", type=_positive_float, default=2e-2,
                       help="std of the initial weights (default: %(default)s)")
    scale = sub.add_parser("init-scale", help="best accuracy and final loss vs weight "
                                              "init scale (init_scale.png, init_scale.json)")
    scale.add_argument("--scales", type=_positive_int, default=20, metavar="K",
                       help="number of weight scales in logspace(-4, 0) (default: 20)")
    for p, out_default in ((depth, "."), (scale, ".")):
        p.add_argument("--data", choices=["digits", "cifar10"], default="digits",
                       help="digits: scikit-learn's embedded 8x8 digits (default); "
                            "cifar10: needs --data-dir")
        p.add_argument("--data-dir", metavar="PATH",
                       help="the extracted cifar-10-batches-py directory")
        p.add_argument("--out", metavar="DIR", default=out_default,
                       help="directory for the png and json (default: current directory)")
        p.add_argument("--epochs", type=_positive_int, default=10,
                       help="training epochs per net (default: %(default)s)")
        p.add_argument("--num-train", type=_positive_int, default=1000,
                       help="training samples (default: %(default)s)")
        p.add_argument("--batch-size", type=_positive_int, default=50,
                       help="minibatch size (default: %(default)s)")
        p.add_argument("--lr", type=_positive_float, default=1e-3,
                       help="Adam learning rate (default: %(default)s)")
        p.add_argument("--seed", type=int, default=231,
                       help="seed of NumPy's global RNG, as in the notebook (default: 231)")
        p.add_argument("--backend", choices=sorted(fastbn.BACKENDS), default=None,
                       help="fastbn backend (default: the current one, normally cython)")
        p.add_argument("--quiet", action="store_true", help="no progress output")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class UsageError(Exception):
    """A problem with the arguments or the environment, reported without a traceback."""


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a UsageError naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"the experiments plot with matplotlib, which is not installed; "
                         f"install the extra: {EXTRA}") from None
    matplotlib.use("Agg")          # write files; never need a display
    import matplotlib.pyplot as plt
    return plt


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def load_data(args):
    """The experiment's data: ``args.num_train`` training samples and a validation set."""
    if args.data == "digits":
        if args.data_dir is not None:
            raise UsageError("--data-dir is only for --data cifar10")
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise UsageError("the digits data ships with scikit-learn, which is not "
                             f"installed; install the extra: {EXTRA}") from None
        available = 1797
        if args.num_train > available - 100:
            raise UsageError(f"--num-train {args.num_train}: the digits data has "
                             f"{available} images and 100 or more are kept for validation")
        num_val = min(400, available - args.num_train)
        return datasets.load_digits_data(num_training=args.num_train, num_validation=num_val,
                                         num_test=available - args.num_train - num_val)
    if args.data_dir is None:
        raise UsageError("--data cifar10 needs --data-dir PATH (the extracted "
                         "cifar-10-batches-py directory)")
    try:
        X_train, y_train, X_test, y_test = datasets.load_CIFAR10(args.data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.num_train >= len(X_train):
        raise UsageError(f"--num-train {args.num_train}: {args.data_dir} has only "
                         f"{len(X_train)} training images, some are needed for validation")
    # As the notebook: the validation set follows the training images.
    num_val = min(1000, len(X_train) - args.num_train)
    val = slice(args.num_train, args.num_train + num_val)
    return datasets._finish(X_train[:args.num_train], y_train[:args.num_train],
                            X_train[val], y_train[val], X_test, y_test, subtract_mean=True)


def _finite(values):
    """JSON has no NaN/inf: diverged values become null."""
    return [float(v) if math.isfinite(v) else None for v in values]


def _config(args, data, **extra):
    return {
        "experiment": args.experiment, "data": args.data,
        "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir),
        "num_train": int(len(data["X_train"])), "num_val": int(len(data["X_val"])),
        "input_dim": int(data["X_train"][0].size), "num_classes": 10,
        "update_rule": "adam", "learning_rate": args.lr, "epochs": args.epochs,
        "batch_size": args.batch_size, "seed": args.seed, "backend": fastbn.get_backend(),
        "fastbn_version": fastbn.__version__, **extra,
    }


def _solver(model, data, args, verbose):
    return Solver(model, data, update_rule="adam",
                  optim_config={"learning_rate": args.lr}, batch_size=args.batch_size,
                  num_epochs=args.epochs, num_train_samples=None, print_every=20,
                  verbose=verbose)


# -- depth -------------------------------------------------------------------

def run_depth(args, data, plt):
    """Train the six-layer net with and without batch norm; write png and json."""
    hidden_dims = [100] * 5
    input_dim = data["X_train"][0].size
    np.random.seed(args.seed)
    models = {
        "batchnorm": FullyConnectedNet(hidden_dims, input_dim=input_dim,
                                       weight_scale=args.weight_scale,
                                       normalization="batchnorm"),
        "baseline": FullyConnectedNet(hidden_dims, input_dim=input_dim,
                                      weight_scale=args.weight_scale, normalization=None),
    }
    root = True
    if getattr(args, "ranks", 1) > 1:
        # data-parallel worker under mpirun: same seed and data on every process
        from .data_parallel import DataParallelNet, rank_and_size
        models = {name: DataParallelNet(m) for name, m in models.items()}
        root = rank_and_size()[0] == 0
        args.quiet = args.quiet or not root       # only rank 0 reports
    results, seconds = {}, {}
    for name, model in models.items():
        if not args.quiet:
            print(f"training the {name} net ({'with' if name == 'batchnorm' else 'without'} "
                  f"batch norm)", flush=True)
        solver = _solver(model, data, args, verbose=not args.quiet)
        start = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):
            solver.train()
        seconds[name] = time.perf_counter() - start
        results[name] = {"loss_history": _finite(solver.loss_history),
                         "train_acc_history": solver.train_acc_history,
                         "val_acc_history": solver.val_acc_history}

    if not root:
        return 0
    results["config"] = _config(args, data, hidden_dims=hidden_dims,
                                weight_scale=args.weight_scale, ranks=args.ranks,
                                train_seconds={k: round(v, 3) for k, v in seconds.items()})
    png = os.path.join(args.out, "depth.png")
    _plot_depth(plt, results, png)
    path = os.path.join(args.out, "depth.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)

    print(f"\n{'net':<10} {'final loss':>10} {'train acc':>9} {'val acc':>8} "
          f"{'best val':>8} {'seconds':>8}")
    for name in ("batchnorm", "baseline"):
        r = results[name]
        final = np.mean([v for v in r["loss_history"][-10:] if v is not None] or [np.nan])
        print(f"{name:<10} {final:>10.4f} {r['train_acc_history'][-1]:>9.3f} "
              f"{r['val_acc_history'][-1]:>8.3f} {max(r['val_acc_history']):>8.3f} "
              f"{seconds[name]:>8.1f}")
    print(f"wrote {png}\nwrote {path}")
    return 0


def _smooth(values, window):
    """Centered running mean (ignoring diverged values): the trend under minibatch noise."""
    v = np.array([np.nan if x is None else x for x in values], float)
    out = np.full_like(v, np.nan)
    half = window // 2
    for i in range(len(v)):
        chunk = v[max(0, i - half):i + half + 1]
        chunk = chunk[np.isfinite(chunk)]
        if chunk.size:
            out[i] = chunk.mean()
    return out


def _plot_depth(plt, results, path):
    cfg = results["config"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 10.5), constrained_layout=True)
    styles = {"batchnorm": ("tab:blue", "with batch norm"),
              "baseline": ("tab:orange", "without batch norm (baseline)")}
    per_epoch = max(cfg["num_train"] // cfg["batch_size"], 1)
    for name, (color, label) in styles.items():
        r = results[name]
        loss = [np.nan if v is None else v for v in r["loss_history"]]
        it = np.arange(1, len(loss) + 1)
        axes[0].plot(it, loss, "o", ms=2.5, alpha=0.35, color=color)
        axes[0].plot(it, _smooth(r["loss_history"], per_epoch), "-", lw=2, color=color,
                     label=label)
        epochs = np.arange(len(r["train_acc_history"]))
        axes[1].plot(epochs, r["train_acc_history"], "-o", color=color, label=label)
        axes[2].plot(epochs, r["val_acc_history"], "-o", color=color, label=label)
    axes[0].set(title="Training loss (dots: minibatches; line: running mean over one epoch)",
                xlabel="Iteration", ylabel="Softmax loss")
    axes[1].set(title="Training accuracy", xlabel="Epoch", ylabel="Accuracy", ylim=(0, 1.02))
    axes[2].set(title="Validation accuracy", xlabel="Epoch", ylabel="Accuracy", ylim=(0, 1.02))
    for ax in axes:
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(cfg['hidden_dims']) + 1}-layer net, {cfg['data']} "
                 f"({cfg['num_train']} training samples), Adam lr {cfg['learning_rate']:g}, "
                 f"weight scale {cfg['weight_scale']:g}")
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- init-scale --------------------------------------------------------------

def run_init_scale(args, data, plt):
    """Train eight-layer nets over a range of weight scales; write png and json."""
    hidden_dims = [50] * 7
    input_dim = data["X_train"][0].size
    weight_scales = np.logspace(-4, 0, num=args.scales)
    metrics = ("best_val_acc", "best_train_acc", "final_train_loss")
    results = {name: {m: [] for m in metrics} for name in ("batchnorm", "baseline")}
    tqdm = None if args.quiet else _tqdm()
    bar = tqdm(total=2 * len(weight_scales), unit="net", leave=False) if tqdm else None
    np.random.seed(args.seed)
    start = time.perf_counter()
    try:
        for i, ws in enumerate(weight_scales):
            if not args.quiet and bar is None:
                print(f"weight scale {i + 1} / {len(weight_scales)}: {ws:.3g}", flush=True)
            for name, norm in (("batchnorm", "batchnorm"), ("baseline", None)):
                model = FullyConnectedNet(hidden_dims, input_dim=input_dim, weight_scale=ws,
                                          normalization=norm)
                solver = _solver(model, data, args, verbose=False)
                # Large scales make the baseline overflow: that is the result.
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    solver.train()
                r = results[name]
                r["best_val_acc"].append(max(solver.val_acc_history))
                r["best_train_acc"].append(max(solver.train_acc_history))
                r["final_train_loss"].append(float(np.mean(solver.loss_history[-10:])))
                if bar is not None:
                    bar.set_postfix(scale=f"{ws:.2g}")
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start

    for r in results.values():
        r["final_train_loss"] = _finite(r["final_train_loss"])
    results["weight_scales"] = weight_scales.tolist()
    results["config"] = _config(args, data, hidden_dims=hidden_dims, scales=args.scales,
                                seconds=round(elapsed, 3))
    png = os.path.join(args.out, "init_scale.png")
    _plot_init_scale(plt, results, png)
    path = os.path.join(args.out, "init_scale.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)

    print(f"\n{'scale':>9} {'best val (bn / base)':>21} {'final loss (bn / base)':>23}")
    for i, ws in enumerate(weight_scales):
        b, n = results["batchnorm"], results["baseline"]
        fl = [f"{v:.3f}" if v is not None else "nan" for v in
              (b["final_train_loss"][i], n["final_train_loss"][i])]
        print(f"{ws:>9.2e} {b['best_val_acc'][i]:>10.3f} / {n['best_val_acc'][i]:<8.3f} "
              f"{fl[0]:>11} / {fl[1]:<9}")
    print(f"{2 * len(weight_scales)} nets in {elapsed:.1f} s\nwrote {png}\nwrote {path}")
    return 0


def _plot_init_scale(plt, results, path):
    cfg = results["config"]
    scales = results["weight_scales"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 10.5), constrained_layout=True)
    panels = [("best_val_acc", "Best validation accuracy", "Accuracy"),
              ("best_train_acc", "Best training accuracy", "Accuracy"),
              ("final_train_loss", "Final training loss (mean of the last 10 iterations)",
               "Loss (log scale)")]
    for ax, (key, title, ylabel) in zip(axes, panels):
        for name, color, label in (("batchnorm", "tab:blue", "with batch norm"),
                                   ("baseline", "tab:orange", "without batch norm (baseline)")):
            y = [np.nan if v is None else v for v in results[name][key]]
            ax.plot(scales, y, "-o", color=color, label=label)
        ax.set_xscale("log")
        if key == "final_train_loss":
            ax.set_yscale("log")      # spans converged (~0.01) to diverged nets
        else:
            ax.set_ylim(0, 1.02)
        ax.set(title=title, xlabel="Weight initialization scale", ylabel=ylabel)
        ax.legend(loc="best")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{len(cfg['hidden_dims']) + 1}-layer nets, {cfg['data']} "
                 f"({cfg['num_train']} training samples), {cfg['epochs']} epochs of Adam")
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- entry point ---------------------------------------------------------------

def _launch_ranks(args):
    """Re-run this command under ``mpirun -n args.ranks`` (see fastbn.data_parallel)."""
    from .data_parallel import launch
    argv = ["experiment", args.experiment]
    for key, value in vars(args).items():
        if key in ("command", "experiment") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    try:
        return launch(args.ranks, argv)
    except RuntimeError as exc:
        print(f"fastbn experiment {args.experiment}: error: {exc}", file=sys.stderr)
        return 2


def run(args):
    """Run the experiment named by ``args.experiment``; returns the exit status."""
    if getattr(args, "ranks", 1) > 1 and not os.environ.get("FASTBN_DATA_PARALLEL_WORKER"):
        return _launch_ranks(args)
    try:
        plt = _pyplot()
        data = load_data(args)
        os.makedirs(args.out, exist_ok=True)
    except (UsageError, OSError) as exc:
        print(f"fastbn experiment {args.experiment}: error: {exc}", file=sys.stderr)
        return 2
    runner = run_depth if args.experiment == "depth" else run_init_scale
    if args.backend is None:
        return runner(args, data, plt)
    with fastbn.backend(args.backend):
        return runner(args, data, plt)
