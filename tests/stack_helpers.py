"""Helpers shared by the training-stack tests (layers, models, solver, CLI)."""
import numpy as np
import pytest

import fastbn


@pytest.fixture(params=["cython", "numpy"])
def on_backend(request):
    """Run the test once on each backend, restoring the default afterwards."""
    before = fastbn.get_backend()
    fastbn.set_backend(request.param)
    try:
        yield request.param
    finally:
        fastbn.set_backend(before)


def rel_error(a, b):
    """Largest elementwise relative error (written here, not imported, so the
    tests of fastbn.gradient_check do not lean on the code they check)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


def tiny_classification(rng, N=40, D=12, C=4, dtype=np.float64):
    """A small data dict in the layout fastbn.data returns (N, D) features."""
    def split(n):
        y = rng.integers(0, C, size=n)
        centers = np.linspace(-2, 2, C * D).reshape(C, D)
        X = centers[y] + 0.5 * rng.standard_normal((n, D))
        return X.astype(dtype), y
    X_train, y_train = split(N)
    X_val, y_val = split(N // 2)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val}
