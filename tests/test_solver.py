"""fastbn.solver.Solver: overfitting a small batch, histories, batching of
check_accuracy, progress output, and argument errors."""
import numpy as np
import pytest

from fastbn.models import FullyConnectedNet
from fastbn.solver import Solver

from stack_helpers import on_backend, tiny_classification  # noqa: F401  (fixture)


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
def test_overfits_a_small_batch(on_backend, normalization):
    rng = np.random.default_rng(0)
    # 50 random points with random labels: only memorization reaches 100%,
    # so this tests that the loop really descends the loss of every sample.
    X = rng.standard_normal((50, 20)).astype(np.float32)
    y = rng.integers(0, 5, size=50)
    data = {"X_train": X, "y_train": y, "X_val": X[:10], "y_val": y[:10]}
    np.random.seed(0)
    model = FullyConnectedNet([100, 100], input_dim=20, num_classes=5, weight_scale=5e-2,
                              normalization=normalization)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                    batch_size=25, num_epochs=30, num_train_samples=None, verbose=False)
    solver.train()
    assert solver.train_acc_history[0] < 0.5
    assert solver.train_acc_history[-1] == 1.0
    assert np.mean(solver.loss_history[-5:]) < 0.05 < solver.loss_history[0]
    # one accuracy before training, one per epoch; one loss per iteration
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 31
    assert len(solver.loss_history) == 30 * 2


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
def test_every_update_rule_lowers_the_loss(rule):
    rng = np.random.default_rng(1)
    data = tiny_classification(rng, N=100, D=10, C=3)
    np.random.seed(1)
    model = FullyConnectedNet([30], input_dim=10, num_classes=3, weight_scale=1e-1)
    lr = {"sgd": 1e-1, "sgd_momentum": 5e-2, "rmsprop": 1e-2, "adam": 1e-2}[rule]
    solver = Solver(model, data, update_rule=rule, optim_config={"learning_rate": lr},
                    batch_size=20, num_epochs=5, verbose=False)
    solver.train()
    assert np.mean(solver.loss_history[-5:]) < 0.7 * np.mean(solver.loss_history[:5])
    assert solver.val_acc_history[-1] > 0.8        # separable clusters


def test_best_params_and_lr_decay():
    rng = np.random.default_rng(2)
    data = tiny_classification(rng, N=60, D=8, C=3)
    np.random.seed(2)
    model = FullyConnectedNet([16], input_dim=8, num_classes=3)
    solver = Solver(model, data, update_rule="sgd_momentum", lr_decay=0.5,
                    optim_config={"learning_rate": 1e-2}, batch_size=20, num_epochs=3,
                    verbose=False)
    solver.train()
    assert solver.best_val_acc == max(solver.val_acc_history)
    assert model.params is solver.best_params
    for config in solver.optim_configs.values():
        assert config["learning_rate"] == pytest.approx(1e-2 * 0.5 ** 3)
    # each parameter has its own optimizer state
    assert solver.optim_configs["W1"]["velocity"].shape == model.params["W1"].shape


class CountingModel:
    """Scores = one-hot of a fixed prediction; records the batch sizes it sees."""

    def __init__(self, predictions):
        self.predictions = predictions
        self.params = {}
        self.batches = []

    def loss(self, X, y=None):
        self.batches.append(len(X))
        idx = X[:, 0].astype(int)
        scores = np.zeros((len(X), 3))
        scores[np.arange(len(X)), self.predictions[idx]] = 1
        return scores


def test_check_accuracy_in_batches():
    N = 250
    X = np.arange(N, dtype=float)[:, None]
    y = np.zeros(N, int)
    predictions = np.zeros(N, int)
    predictions[:100] = 1                      # 100 wrong, 150 right
    model = CountingModel(predictions)
    data = {"X_train": X, "y_train": y, "X_val": X, "y_val": y}
    solver = Solver(model, data, verbose=False)
    assert solver.check_accuracy(X, y, batch_size=64) == pytest.approx(150 / 250)
    assert model.batches == [64, 64, 64, 58]
    model.batches.clear()
    solver.check_accuracy(X, y, num_samples=30, batch_size=100)
    assert model.batches == [30]


def test_verbose_progress_output(capsys):
    rng = np.random.default_rng(3)
    data = tiny_classification(rng, N=40, D=6, C=2)
    np.random.seed(3)
    model = FullyConnectedNet([8], input_dim=6, num_classes=2)
    Solver(model, data, batch_size=20, num_epochs=2, verbose=True).train()
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "(Epoch 2 / 2) train acc:" in text
    Solver(model, data, batch_size=20, num_epochs=2, verbose=False).train()
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_verbose_without_tqdm_prints_classic_lines(capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)        # as if not installed
    rng = np.random.default_rng(3)
    data = tiny_classification(rng, N=40, D=6, C=2)
    model = FullyConnectedNet([8], input_dim=6, num_classes=2)
    Solver(model, data, batch_size=20, num_epochs=2, print_every=1, verbose=True).train()
    out = capsys.readouterr().out
    assert "(Iteration 1 / 4) loss:" in out and "(Iteration 4 / 4) loss:" in out
    assert "(Epoch 2 / 2) train acc:" in out


def test_checkpoint(tmp_path):
    import pickle
    rng = np.random.default_rng(4)
    data = tiny_classification(rng, N=20, D=4, C=2)
    model = FullyConnectedNet([5], input_dim=4, num_classes=2)
    name = str(tmp_path / "ck")
    Solver(model, data, batch_size=10, num_epochs=2, checkpoint_name=name,
           verbose=False).train()
    with open(f"{name}_epoch_2.pkl", "rb") as f:
        ck = pickle.load(f)
    assert ck["epoch"] == 2 and len(ck["loss_history"]) == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(update_rule="nesterov"), "update_rule"),
    (dict(batch_size=0), "batch_size"),
    (dict(num_epochs=-1), "num_epochs"),
])
def test_bad_arguments(kwargs, match):
    data = tiny_classification(np.random.default_rng(5), N=10, D=4, C=2)
    with pytest.raises(ValueError, match=match):
        Solver(FullyConnectedNet([5], input_dim=4, num_classes=2), data, **kwargs)


def test_missing_data_keys():
    with pytest.raises(ValueError, match="X_val"):
        Solver(FullyConnectedNet([5], input_dim=4, num_classes=2),
               {"X_train": np.zeros((2, 4)), "y_train": np.zeros(2, int)})
