"""First-order update rules with the classic CS231n interface.

Each rule is ``next_w, config = rule(w, dw, config=None)``:

w : ndarray
    Current weights.
dw : ndarray
    Gradient of the loss with respect to ``w``.
config : dict, optional
    Hyperparameters (missing ones are filled with the defaults below) and
    the rule's state (velocity, moving averages, step count), which the
    solver passes back in on the next step.

The new weights keep ``w``'s dtype; ``w`` itself is not modified.
"""
import numpy as np

__all__ = ["sgd", "sgd_momentum", "rmsprop", "adam"]


def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent: ``w - learning_rate * dw``.

    config: ``learning_rate`` (1e-2).

    Parameters
    ----------
    w : ndarray
        Current weights (not modified).
    dw : ndarray, shape of w
        Gradient of the loss with respect to ``w``.
    config : dict, optional
        Hyperparameters and the rule's state; missing entries get the
        defaults above.

    Returns
    -------
    next_w : ndarray, shape and dtype of w
    config : dict
        The same dict, with the rule's updated state, for the next step.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.optim import sgd
    >>> w, config = np.array([1.0, -1.0]), {"learning_rate": 0.1}
    >>> for _ in range(3):
    ...     w, config = sgd(w, 2 * w, config)       # minimize sum(w**2)
    >>> bool(np.all(np.abs(w) < 1.0))
    True
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    next_w = w - config["learning_rate"] * dw
    return next_w.astype(w.dtype, copy=False), config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum.

    ``v = momentum * v - learning_rate * dw``; ``next_w = w + v``.

    config: ``learning_rate`` (1e-2), ``momentum`` (0.9), ``velocity``
    (zeros like ``w``).

    Parameters
    ----------
    w : ndarray
        Current weights (not modified).
    dw : ndarray, shape of w
        Gradient of the loss with respect to ``w``.
    config : dict, optional
        Hyperparameters and the rule's state; missing entries get the
        defaults above.

    Returns
    -------
    next_w : ndarray, shape and dtype of w
    config : dict
        The same dict, with the rule's updated state, for the next step.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.optim import sgd_momentum
    >>> w, config = np.array([1.0, -1.0]), {"learning_rate": 0.1}
    >>> for _ in range(3):
    ...     w, config = sgd_momentum(w, 2 * w, config)       # minimize sum(w**2)
    >>> bool(np.all(np.abs(w) < 1.0))
    True
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = config.get("velocity", np.zeros_like(w))
    v = config["momentum"] * v - config["learning_rate"] * dw
    config["velocity"] = v
    return (w + v).astype(w.dtype, copy=False), config


def rmsprop(w, dw, config=None):
    """RMSProp: per-parameter step sizes from a moving average of ``dw**2``.

    ``cache = decay_rate * cache + (1 - decay_rate) * dw**2``;
    ``next_w = w - learning_rate * dw / (sqrt(cache) + epsilon)``.

    config: ``learning_rate`` (1e-2), ``decay_rate`` (0.99), ``epsilon``
    (1e-8), ``cache`` (zeros like ``w``).

    Parameters
    ----------
    w : ndarray
        Current weights (not modified).
    dw : ndarray, shape of w
        Gradient of the loss with respect to ``w``.
    config : dict, optional
        Hyperparameters and the rule's state; missing entries get the
        defaults above.

    Returns
    -------
    next_w : ndarray, shape and dtype of w
    config : dict
        The same dict, with the rule's updated state, for the next step.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.optim import rmsprop
    >>> w, config = np.array([1.0, -1.0]), {"learning_rate": 0.1}
    >>> for _ in range(3):
    ...     w, config = rmsprop(w, 2 * w, config)       # minimize sum(w**2)
    >>> bool(np.all(np.abs(w) < 1.0))
    True
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("cache", np.zeros_like(w))
    decay = config["decay_rate"]
    cache = decay * config["cache"] + (1 - decay) * dw ** 2
    config["cache"] = cache
    next_w = w - config["learning_rate"] * dw / (np.sqrt(cache) + config["epsilon"])
    return next_w.astype(w.dtype, copy=False), config


def adam(w, dw, config=None):
    """Adam (Kingma & Ba, 2015) with bias-corrected moments.

    With ``t`` incremented first::

        m = beta1 * m + (1 - beta1) * dw
        v = beta2 * v + (1 - beta2) * dw**2
        next_w = w - learning_rate * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + epsilon)

    config: ``learning_rate`` (1e-3), ``beta1`` (0.9), ``beta2`` (0.999),
    ``epsilon`` (1e-8), ``m`` and ``v`` (zeros like ``w``), ``t`` (0).

    Parameters
    ----------
    w : ndarray
        Current weights (not modified).
    dw : ndarray, shape of w
        Gradient of the loss with respect to ``w``.
    config : dict, optional
        Hyperparameters and the rule's state; missing entries get the
        defaults above.

    Returns
    -------
    next_w : ndarray, shape and dtype of w
    config : dict
        The same dict, with the rule's updated state, for the next step.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.optim import adam
    >>> w, config = np.array([1.0, -1.0]), {"learning_rate": 0.1}
    >>> for _ in range(3):
    ...     w, config = adam(w, 2 * w, config)       # minimize sum(w**2)
    >>> bool(np.all(np.abs(w) < 1.0))
    True
    """
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("m", np.zeros_like(w))
    config.setdefault("v", np.zeros_like(w))
    config.setdefault("t", 0)
    b1, b2 = config["beta1"], config["beta2"]
    t = config["t"] + 1
    m = b1 * config["m"] + (1 - b1) * dw
    v = b2 * config["v"] + (1 - b2) * dw ** 2
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    next_w = w - config["learning_rate"] * m_hat / (np.sqrt(v_hat) + config["epsilon"])
    config["t"], config["m"], config["v"] = t, m, v
    return next_w.astype(w.dtype, copy=False), config
