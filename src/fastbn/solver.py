"""Minibatch training of a classification model, with the classic CS231n interface."""
import pickle

import numpy as np

from . import optim

__all__ = ["Solver"]


class Solver:
    """Train a model by minibatch gradient descent and track its accuracy.

    The model must have ``params`` (a dict of arrays) and
    ``loss(X, y=None)`` returning scores when ``y`` is None and
    ``(loss, grads)`` otherwise, like :class:`fastbn.models.FullyConnectedNet`.

    Parameters
    ----------
    model : object
    data : dict
        ``X_train``, ``y_train``, ``X_val``, ``y_val`` (as returned by
        :mod:`fastbn.data`).
    update_rule : str or callable
        A name in :mod:`fastbn.optim` (``'sgd'``, ``'sgd_momentum'``,
        ``'rmsprop'``, ``'adam'``) or a function with their signature.
    optim_config : dict
        Hyperparameters for the update rule; each parameter gets its own
        copy, which also holds that parameter's optimizer state.
    lr_decay : float
        The learning rate is multiplied by this after every epoch.
    batch_size : int
    num_epochs : int
    num_train_samples : int or None
        Training samples on which the training accuracy is checked each
        epoch (None: all of them).
    num_val_samples : int or None
        Validation samples checked each epoch (None: all of them).
    checkpoint_name : str, optional
        When given, pickle a checkpoint to ``{checkpoint_name}_epoch_{epoch}.pkl``
        after every epoch.
    print_every : int
        With ``verbose``, print the loss every this many iterations.
    verbose : bool
        Show a progress bar (tqdm, when installed; otherwise the classic
        printed lines) and the accuracies after each epoch.

    Attributes
    ----------
    loss_history : list of float
        Training loss of every iteration.
    train_acc_history, val_acc_history : list of float
        Accuracies before training and after each epoch.
    best_val_acc : float
    best_params : dict
        Copies of the parameters with the best validation accuracy; after
        :meth:`train` the model holds these.

    Raises
    ------
    ValueError
        When ``data`` lacks one of the four arrays or their lengths do not
        match, ``update_rule`` names no rule, or a count is not a positive
        integer.

    Notes
    -----
    Minibatches are drawn with ``np.random.choice`` (with replacement) and
    accuracy subsamples likewise, from the global NumPy RNG, as in the
    classic code: seed it for reproducible runs.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.data import get_default_data
    >>> from fastbn.models import FullyConnectedNet
    >>> from fastbn.solver import Solver
    >>> np.random.seed(231)
    >>> model = FullyConnectedNet([50], input_dim=64, normalization="batchnorm")
    >>> solver = Solver(model, get_default_data(), update_rule="adam",
    ...                 optim_config={"learning_rate": 1e-3}, num_epochs=2, verbose=False)
    >>> solver.train()
    >>> len(solver.val_acc_history), solver.best_val_acc > 0.5
    (3, True)
    """

    def __init__(self, model, data, update_rule="sgd", optim_config={}, lr_decay=1.0,  # noqa: B006 (copied)
                 batch_size=100, num_epochs=10, num_train_samples=1000,
                 num_val_samples=None, checkpoint_name=None, print_every=10,
                 verbose=True, **unrecognized):
        if unrecognized:
            # the course's Solver takes **kwargs and says this
            extra = ", ".join(f'"{k}"' for k in unrecognized)
            raise ValueError(f"Unrecognized arguments {extra}")
        missing = [k for k in ("X_train", "y_train", "X_val", "y_val") if k not in data]
        if missing:
            raise ValueError(f"data is missing {missing}; it needs X_train, y_train, "
                             f"X_val and y_val")
        self.model = model
        self.X_train, self.y_train = data["X_train"], data["y_train"]
        self.X_val, self.y_val = data["X_val"], data["y_val"]
        if len(self.X_train) != len(self.y_train) or len(self.X_val) != len(self.y_val):
            raise ValueError("data: X_train/y_train and X_val/y_val must have matching lengths")
        if len(self.X_train) == 0:
            raise ValueError("data['X_train'] is empty")

        if callable(update_rule):
            self.update_rule = update_rule
        elif isinstance(update_rule, str) and update_rule in optim.__all__:
            self.update_rule = getattr(optim, update_rule)
        else:
            raise ValueError(f"update_rule must be one of {optim.__all__} or a function, "
                             f"got {update_rule!r}")
        for name, value in [("batch_size", batch_size), ("num_epochs", num_epochs),
                            ("print_every", print_every)]:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        self.optim_config = dict(optim_config)
        self.lr_decay = lr_decay
        self.batch_size = batch_size
        self.num_epochs = num_epochs
        self.num_train_samples = num_train_samples
        self.num_val_samples = num_val_samples
        self.checkpoint_name = checkpoint_name
        self.print_every = print_every
        self.verbose = verbose
        self._reset()

    def _reset(self):
        """Fresh bookkeeping and a fresh optimizer state for every parameter."""
        self.epoch = 0
        self.best_val_acc = 0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}

    def _step(self):
        """One minibatch: loss, gradients and a parameter update."""
        num_train = self.X_train.shape[0]
        batch_mask = np.random.choice(num_train, self.batch_size)
        loss, grads = self.model.loss(self.X_train[batch_mask], self.y_train[batch_mask])
        self.loss_history.append(float(loss))
        for p, w in self.model.params.items():
            next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p])
            self.model.params[p] = next_w
            self.optim_configs[p] = next_config

    def _save_checkpoint(self):
        if self.checkpoint_name is None:
            return
        checkpoint = {
            "model": self.model, "update_rule": self.update_rule, "lr_decay": self.lr_decay,
            "optim_config": self.optim_config, "batch_size": self.batch_size,
            "num_train_samples": self.num_train_samples,
            "num_val_samples": self.num_val_samples, "epoch": self.epoch,
            "loss_history": self.loss_history, "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
        }
        filename = f"{self.checkpoint_name}_epoch_{self.epoch}.pkl"
        with open(filename, "wb") as f:
            pickle.dump(checkpoint, f)

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Fraction of samples the model classifies correctly.

        Parameters
        ----------
        X : ndarray, shape (N, ...)
        y : ndarray of int, shape (N,)
        num_samples : int, optional
            Check a random subsample of this many (drawn from the global RNG).
        batch_size : int
            Score this many samples per forward pass, to bound memory.

        Returns
        -------
        acc : float
        """
        N = X.shape[0]
        if num_samples is not None and N > num_samples:
            mask = np.random.choice(N, num_samples)
            X, y = X[mask], y[mask]
            N = num_samples
        if N == 0:
            return 0.0
        y_pred = []
        for start in range(0, N, batch_size):
            scores = self.model.loss(X[start:start + batch_size])
            y_pred.append(np.argmax(scores, axis=1))
        return float(np.mean(np.concatenate(y_pred) == y))

    def _progress(self, total):
        """A tqdm bar when verbose and tqdm is installed, else None."""
        if not self.verbose:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, unit="it", leave=False, dynamic_ncols=True)

    def _log(self, bar, message):
        if not self.verbose:
            return
        if bar is not None:
            bar.write(message)
        else:
            print(message)

    def train(self):
        """Run the optimization; afterwards the model holds :attr:`best_params`."""
        num_train = self.X_train.shape[0]
        iterations_per_epoch = max(num_train // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch
        bar = self._progress(num_iterations)
        try:
            for t in range(num_iterations):
                self._step()
                loss = self.loss_history[-1]
                if bar is not None:
                    bar.update(1)
                    if t % self.print_every == 0:
                        bar.set_postfix(epoch=f"{self.epoch + 1}/{self.num_epochs}", loss=f"{loss:.4f}")
                elif self.verbose and t % self.print_every == 0:
                    print(f"(Iteration {t + 1} / {num_iterations}) loss: {loss:f}")

                epoch_end = (t + 1) % iterations_per_epoch == 0
                if epoch_end:
                    self.epoch += 1
                    for k in self.optim_configs:
                        if "learning_rate" in self.optim_configs[k]:
                            self.optim_configs[k]["learning_rate"] *= self.lr_decay

                first_it, last_it = t == 0, t == num_iterations - 1
                if first_it or last_it or epoch_end:
                    train_acc = self.check_accuracy(self.X_train, self.y_train,
                                                    num_samples=self.num_train_samples)
                    val_acc = self.check_accuracy(self.X_val, self.y_val,
                                                  num_samples=self.num_val_samples)
                    self.train_acc_history.append(train_acc)
                    self.val_acc_history.append(val_acc)
                    self._save_checkpoint()
                    self._log(bar, f"(Epoch {self.epoch} / {self.num_epochs}) "
                                   f"train acc: {train_acc:f}; val_acc: {val_acc:f}")
                    if val_acc > self.best_val_acc or not self.best_params:
                        self.best_val_acc = val_acc
                        self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        finally:
            if bar is not None:
                bar.close()
        self.model.params = self.best_params
