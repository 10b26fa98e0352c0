"""``fastbn check``: the numerical checks of the classic batch-norm notebook.

Runs on the backend in force (``--backend`` to choose) and prints a short
report: forward statistics in train and test mode, numeric gradient checks
of every backward pass, agreement and speed of the graph and closed-form
backward passes against the compiled kernel, and a gradient check of whole
networks.  Each line ends in ``ok`` or ``FAIL``; the exit status is 1 if
any check fails.
"""
import sys
import timeit

import numpy as np

import fastbn
from fastbn import compiled, reference
from fastbn.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, \
    rel_error
from fastbn.models import FullyConnectedNet

# Bounds a correct implementation meets with wide margin (float64, h=1e-5);
# a wrong formula misses them by orders of magnitude.
GRAD_TOL = 1e-6
NET_TOL = 1e-4


def add_arguments(parser):
    parser.add_argument("--backend", choices=sorted(fastbn.BACKENDS), default=None,
                        help="backend to check (default: the current one, normally cython)")
    from .experiments import _positive_int
    parser.add_argument("--repeat", type=_positive_int, default=20,
                        help="timing repetitions for the speed comparison (default: 20)")


class Report:
    """Collects lines of the report and whether every check passed."""

    def __init__(self, out=None):
        self.out = sys.stdout if out is None else out
        self.failures = 0

    def section(self, title):
        print(f"\n{title}", file=self.out)

    def line(self, label, value, ok=None):
        status = "" if ok is None else ("ok" if ok else "FAIL")
        if ok is False:
            self.failures += 1
        print(f"  {label:<58} {value:>20}  {status}".rstrip(), file=self.out)


def forward_statistics(report):
    """Train-mode outputs have mean beta and std gamma; test mode after warm-up ~(0, 1)."""
    report.section("Forward statistics (N=200, D=3, classic notebook setup)")
    rng = np.random.RandomState(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    X = rng.randn(N, D1)
    W1, W2 = rng.randn(D1, D2), rng.randn(D2, D3)
    a = np.maximum(0, X @ W1) @ W2
    report.line("before batch norm: |mean| max, std min",
                f"{np.abs(a.mean(0)).max():.3g}, {a.std(0).min():.3g}")
    for gamma, beta in [(np.ones(D3), np.zeros(D3)),
                        (np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0]))]:
        out, _ = fastbn.batchnorm_forward(a, gamma, beta, {"mode": "train"})
        dev = max(np.abs(out.mean(0) - beta).max(), np.abs(out.std(0) - gamma).max())
        report.line(f"train: gamma={gamma.tolist()}, beta={beta.tolist()}",
                    f"max dev {dev:.1e}", dev < 1e-6)

    bn_param = {"mode": "train"}
    gamma, beta = np.ones(D3), np.zeros(D3)
    for _ in range(50):
        Xb = rng.randn(N, D1)
        fastbn.batchnorm_forward(np.maximum(0, Xb @ W1) @ W2, gamma, beta, bn_param)
    bn_param["mode"] = "test"
    a = np.maximum(0, rng.randn(N, D1) @ W1) @ W2
    out, _ = fastbn.batchnorm_forward(a, gamma, beta, bn_param)
    mean_dev, std_dev = np.abs(out.mean(0)).max(), np.abs(out.std(0) - 1).max()
    # Running statistics of 50 noisy batches: ~0.1 off is expected, 0.3 is not.
    report.line("test mode after 50 training batches: mean, std-1",
                f"{mean_dev:.3f}, {std_dev:.3f}", mean_dev < 0.3 and std_dev < 0.3)


def _grad_rel_errors(forward, backward, x, gamma, beta, param, dout):
    def f_x(v):
        return forward(v, gamma, beta, dict(param))[0]

    def f_g(v):
        return forward(x, v, beta, dict(param))[0]

    def f_b(v):
        return forward(x, gamma, v, dict(param))[0]

    _, cache = forward(x, gamma, beta, dict(param))
    dx, dgamma, dbeta = backward(dout, cache)
    return (rel_error(dx, eval_numerical_gradient_array(f_x, x.copy(), dout)),
            rel_error(dgamma, eval_numerical_gradient_array(f_g, gamma.copy(), dout)),
            rel_error(dbeta, eval_numerical_gradient_array(f_b, beta.copy(), dout)))


def gradient_checks(report):
    """Every backward pass against centered differences (float64)."""
    report.section(f"Gradient checks vs numeric gradients (float64, ok below {GRAD_TOL:g})")
    rng = np.random.RandomState(231)
    cases = [
        ("batchnorm_backward", fastbn.batchnorm_forward, fastbn.batchnorm_backward, (4, 5)),
        ("batchnorm_backward_alt", fastbn.batchnorm_forward, fastbn.batchnorm_backward_alt,
         (4, 5)),
        ("spatial_batchnorm_backward", fastbn.spatial_batchnorm_forward,
         fastbn.spatial_batchnorm_backward, (2, 3, 4, 5)),
        ("layernorm_backward", fastbn.layernorm_forward, fastbn.layernorm_backward, (4, 5)),
    ]
    for name, fwd, bwd, shape in cases:
        C = shape[1]
        x = 5 * rng.randn(*shape) + 12
        gamma, beta = rng.randn(C), rng.randn(C)
        dout = rng.randn(*shape)
        errs = _grad_rel_errors(fwd, bwd, x, gamma, beta, {"mode": "train"}, dout)
        report.line(f"{name} {shape}: dx, dgamma, dbeta",
                    ", ".join(f"{e:.0e}" for e in errs), max(errs) < GRAD_TOL)


def backward_agreement(report, repeat):
    """Graph vs closed-form backward vs the compiled kernel: same numbers, timings."""
    report.section("Backward passes: graph vs closed form vs compiled (N=100, D=500)")
    rng = np.random.RandomState(231)
    N, D = 100, 500
    x = 5 * rng.randn(N, D) + 12
    gamma, beta, dout = rng.randn(D), rng.randn(D), rng.randn(N, D)
    _, ref_cache = reference.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    _, c_cache = compiled.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    graph = reference.batchnorm_backward(dout, ref_cache)
    alt = reference.batchnorm_backward_alt(dout, ref_cache)
    fast = compiled.batchnorm_backward(dout, c_cache)
    err_alt = max(rel_error(a, b) for a, b in zip(graph, alt))
    err_fast = max(rel_error(a, b) for a, b in zip(graph, fast))
    report.line("reference alt vs graph: max rel error (dx,dgamma,dbeta)",
                f"{err_alt:.1e}", err_alt < 1e-8)
    report.line("compiled vs reference graph: max rel error", f"{err_fast:.1e}",
                err_fast < 1e-8)

    def best(fn):
        return min(timeit.repeat(fn, number=1, repeat=repeat))
    t_graph = best(lambda: reference.batchnorm_backward(dout, ref_cache))
    t_alt = best(lambda: reference.batchnorm_backward_alt(dout, ref_cache))
    t_fast = best(lambda: compiled.batchnorm_backward(dout, c_cache))
    report.line("time: graph / closed form / compiled (us, best)",
                f"{t_graph * 1e6:.0f} / {t_alt * 1e6:.0f} / {t_fast * 1e6:.0f}")
    report.line("speedup of closed form, compiled over graph",
                f"{t_graph / t_alt:.1f}x, {t_graph / t_fast:.1f}x")


def net_gradient_checks(report):
    """Whole networks (classic: N=2, D=15, hidden 20 and 30, 10 classes), float64."""
    report.section(f"FullyConnectedNet gradient check (float64, ok below {NET_TOL:g})")
    N, D, H1, H2, C = 2, 15, 20, 30, 10
    rng = np.random.RandomState(231)
    X, y = rng.randn(N, D), rng.randint(C, size=N)
    for normalization in ("batchnorm", "layernorm", None):
        for reg in (0.0, 3.14):
            np.random.seed(231)
            model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, reg=reg,
                                      weight_scale=5e-2, dtype=np.float64,
                                      normalization=normalization)
            loss, grads = model.loss(X, y)
            worst, worst_name = 0.0, "-"
            for name in sorted(grads):
                num = eval_numerical_gradient(lambda _: model.loss(X, y)[0],
                                              model.params[name], verbose=False, h=1e-5)
                if max(np.abs(num).max(), np.abs(grads[name]).max()) < 1e-8:
                    continue     # b before a batch norm: exactly zero, rel error is noise
                err = rel_error(num, grads[name])
                if err > worst:
                    worst, worst_name = err, name
            report.line(f"{normalization or 'no norm'}, reg={reg}: loss {loss:.3f}, worst",
                        f"{worst:.1e} ({worst_name})", worst < NET_TOL)


def run_checks(out=None, repeat=20):
    """Run every check, printing the report to ``out`` (default: stdout).

    Returns
    -------
    failures : int
    """
    report = Report(out)
    out = report.out
    print(f"fastbn {fastbn.__version__} checks, backend {fastbn.get_backend()!r}", file=out)
    with np.errstate(divide="raise", invalid="raise", over="raise"):
        forward_statistics(report)
        gradient_checks(report)
        backward_agreement(report, repeat)
        net_gradient_checks(report)
    verdict = "all checks passed" if not report.failures else f"{report.failures} FAILED"
    print(f"\n{verdict}", file=out)
    return report.failures


def run(args):
    """Entry point of ``fastbn check``."""
    if args.backend is None:
        failures = run_checks(repeat=args.repeat)
    else:
        with fastbn.backend(args.backend):
            failures = run_checks(repeat=args.repeat)
    return 1 if failures else 0
