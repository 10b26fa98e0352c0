"""Fully connected networks built from :mod:`fastbn.layers`."""
import numbers

import numpy as np

from .layers import (NORMALIZATIONS, affine_backward, affine_forward,
                     affine_norm_relu_backward, affine_norm_relu_forward,
                     dropout_backward, dropout_forward, softmax_loss)

__all__ = ["FullyConnectedNet"]


class FullyConnectedNet:
    """A fully connected network with ReLUs, optional normalization and dropout.

    The architecture is::

        {affine - [batch/layer norm] - relu - [dropout]} x (L - 1) - affine - softmax

    with ``L = len(hidden_dims) + 1`` affine layers; the output layer is not
    normalized.  Learnable parameters live in ``self.params``: ``W1..WL``,
    ``b1..bL`` and, with normalization, ``gamma1..gamma{L-1}`` and
    ``beta1..beta{L-1}``.

    Parameters
    ----------
    hidden_dims : list of int
        Size of each hidden layer.
    input_dim : int
        Features per sample (inputs are flattened), 3*32*32 for CIFAR-10.
    num_classes : int
    dropout_keep_ratio : float
        Probability of *keeping* a hidden unit, in (0, 1]; 1 (the default)
        means no dropout.  The course's name for it.
    normalization : {None, 'batchnorm', 'layernorm'}
    reg : float
        L2 strength: the loss includes ``0.5 * reg * sum(W**2)`` for every W.
    weight_scale : float
        Standard deviation of the random initial weights.
    dtype : numpy dtype
        float32 (fast) or float64 (for numeric gradient checks).
    seed : int, optional
        Seed for the dropout masks: with it, every forward pass uses the
        same masks, which makes a dropout net gradient-checkable.  (As in the
        classic code it does not seed the weights: call ``np.random.seed``
        before constructing the net for that.)
    use_batchnorm : bool
        Older spelling of ``normalization='batchnorm'``.
    dropout : float, optional
        Older spelling of ``dropout_keep_ratio`` (same meaning: the keep
        probability); giving both is an error.

    Raises
    ------
    ValueError
        For an unknown ``normalization``, a keep probability outside (0, 1],
        or layer sizes that are not positive integers.
    TypeError
        For a dtype other than float32 and float64, or both
        ``dropout_keep_ratio`` and ``dropout`` given.

    Notes
    -----
    Initialization follows the classic order so seeded notebooks reproduce:
    for each layer in turn ``W = weight_scale * np.random.randn(in, out)``,
    then zeros for ``b``, ones for ``gamma``, zeros for ``beta``.  These are
    the only draws from the global NumPy RNG at construction.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.models import FullyConnectedNet
    >>> np.random.seed(231)
    >>> model = FullyConnectedNet([20, 30], input_dim=15, num_classes=10,
    ...                           normalization="batchnorm", dtype=np.float64)
    >>> X, y = np.random.randn(2, 15), np.array([3, 7])
    >>> loss, grads = model.loss(X, y)
    >>> sorted(grads)[:4]
    ['W1', 'W2', 'W3', 'b1']
    >>> model.loss(X).shape                     # scores, test mode
    (2, 10)
    """

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10,
                 dropout_keep_ratio=None, normalization=None, reg=0.0, weight_scale=1e-2,
                 dtype=np.float32, seed=None, use_batchnorm=False, dropout=None):
        if dropout is not None and dropout_keep_ratio is not None:
            raise TypeError("pass dropout_keep_ratio or its older name dropout, not both")
        dropout = next((v for v in (dropout_keep_ratio, dropout) if v is not None), 1)
        if use_batchnorm:
            if normalization not in (None, "batchnorm"):
                raise ValueError(f"use_batchnorm=True contradicts "
                                 f"normalization={normalization!r}")
            normalization = "batchnorm"
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {normalization!r}")
        hidden_dims = list(hidden_dims)
        for name, value in [("input_dim", input_dim), ("num_classes", num_classes)] + \
                [(f"hidden_dims[{i}]", h) for i, h in enumerate(hidden_dims)]:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < dropout <= 1:
            raise ValueError(f"dropout_keep_ratio is the keep probability, in (0, 1]; "
                             f"got {dropout!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")

        self.normalization = normalization
        self.use_dropout = dropout != 1
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.params = {}

        dims = [input_dim] + hidden_dims + [num_classes]
        for i in range(self.num_layers):
            k = i + 1
            self.params[f"W{k}"] = (weight_scale * np.random.randn(dims[i], dims[k])
                                    ).astype(self.dtype)
            self.params[f"b{k}"] = np.zeros(dims[k], self.dtype)
            if normalization is not None and k < self.num_layers:
                self.params[f"gamma{k}"] = np.ones(dims[k], self.dtype)
                self.params[f"beta{k}"] = np.zeros(dims[k], self.dtype)

        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": dropout}
            if seed is not None:
                self.dropout_param["seed"] = seed

        # One dict per normalized layer: bn_param for batch norm (it keeps the
        # running statistics), ln_param for layer norm.
        self.bn_params = []
        if normalization == "batchnorm":
            self.bn_params = [{"mode": "train"} for _ in range(self.num_layers - 1)]
        elif normalization == "layernorm":
            self.bn_params = [{} for _ in range(self.num_layers - 1)]

    def _check_inputs(self, X, y):
        """X cast to the net's dtype, after checking X and y against the net.

        Checking first means a bad call raises before the forward pass has
        touched the running statistics in ``bn_params``.
        """
        X = np.asarray(X)
        D, C = self.params["W1"].shape[0], self.params[f"W{self.num_layers}"].shape[1]
        if X.ndim < 2 or X.shape[0] == 0 or X[0].size != D:
            raise ValueError(f"X must have shape (N, ...) with N >= 1 and {D} features per "
                             f"sample (input_dim), got shape {X.shape}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
        if y is not None:
            y = np.asarray(y)
            if y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"y must be {X.shape[0]} integer labels (one per row of X), "
                                 f"got {y.dtype} of shape {y.shape}")
            if y.min() < 0 or y.max() >= C:
                raise ValueError(f"labels y must lie in [0, {C}) (num_classes), got values "
                                 f"in [{y.min()}, {y.max()}]")
        return X.astype(self.dtype, copy=False)

    def loss(self, X, y=None):
        """Class scores, or the loss and its gradients.

        Parameters
        ----------
        X : ndarray, shape (N, d_1, ..., d_k)
            Cast to the net's dtype.
        y : ndarray of int, shape (N,), optional
            Labels.  Without them the net runs in test mode (running batch
            statistics, no dropout) and returns scores.

        Returns
        -------
        scores : ndarray, shape (N, num_classes)
            When ``y`` is None.
        loss : float, grads : dict
            Otherwise; ``grads[k]`` is the gradient for ``self.params[k]``.
        """
        X = self._check_inputs(X, y)
        mode = "test" if y is None else "train"
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        if self.normalization == "batchnorm":
            for bn_param in self.bn_params:
                bn_param["mode"] = mode

        p = self.params
        L = self.num_layers
        caches = []
        h = X
        for k in range(1, L):
            gamma, beta = p.get(f"gamma{k}"), p.get(f"beta{k}")
            bn_param = self.bn_params[k - 1] if self.normalization else None
            h, cache = affine_norm_relu_forward(h, p[f"W{k}"], p[f"b{k}"], gamma, beta,
                                                bn_param, self.normalization)
            drop_cache = None
            if self.use_dropout:
                h, drop_cache = dropout_forward(h, self.dropout_param)
            caches.append((cache, drop_cache))
        scores, out_cache = affine_forward(h, p[f"W{L}"], p[f"b{L}"])

        if mode == "test":
            return scores

        loss, dscores = softmax_loss(scores, y)
        grads = {}
        dh, grads[f"W{L}"], grads[f"b{L}"] = affine_backward(dscores, out_cache)
        for k in range(L - 1, 0, -1):
            cache, drop_cache = caches[k - 1]
            if self.use_dropout:
                dh = dropout_backward(dh, drop_cache)
            dh, dw, db, dgamma, dbeta = affine_norm_relu_backward(dh, cache)
            grads[f"W{k}"], grads[f"b{k}"] = dw, db
            if self.normalization is not None:
                grads[f"gamma{k}"], grads[f"beta{k}"] = dgamma, dbeta

        for k in range(1, L + 1):
            W = p[f"W{k}"]
            loss += 0.5 * self.reg * float(np.sum(W.astype(np.float64) ** 2))
            grads[f"W{k}"] = grads[f"W{k}"] + self.reg * W
        return loss, grads
