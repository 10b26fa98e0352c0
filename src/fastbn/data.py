"""Datasets for the experiments, as dicts of arrays in the classic layout.

Both loaders return ``{"X_train", "y_train", "X_val", "y_val", "X_test",
"y_test"}`` with ``X_*`` float32 of shape ``(N, C, H, W)`` and ``y_*`` int64
labels:

* :func:`get_CIFAR10_data` reads the standard ``cifar-10-batches-py``
  directory (download it yourself from https://www.cs.toronto.edu/~kriz/cifar.html).
* :func:`load_digits_data` (alias :func:`get_default_data`) uses the 1797
  8x8 handwritten digits that scikit-learn ships inside its package: no
  download, which is why the experiments default to it.
"""
import os
import pickle

import numpy as np

__all__ = ["load_CIFAR_batch", "load_CIFAR10", "get_CIFAR10_data",
           "load_digits_data", "get_default_data"]

EXTRA_HINT = 'install it with: pip install "fastbn[experiments]"'

CIFAR_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST_FILE = "test_batch"


def load_CIFAR_batch(filename):
    """Read one CIFAR-10 batch file.

    Parameters
    ----------
    filename : str or path
        A pickle holding ``data`` (uint8, shape (n, 3072), each row the
        1024 red, then green, then blue values of a 32x32 image) and
        ``labels`` (n ints in 0..9).

    Returns
    -------
    X : ndarray of uint8, shape (n, 3, 32, 32)
    y : ndarray of int64, shape (n,)

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a CIFAR-10 batch; the message names the file.

    Notes
    -----
    The official files are Python pickles, and unpickling runs code chosen
    by whoever wrote the file: only read files from a source you trust.

    Examples
    --------
    >>> from fastbn.data import load_CIFAR_batch
    >>> X, y = load_CIFAR_batch("cifar-10-batches-py/data_batch_1")  # doctest: +SKIP
    >>> X.shape, X.dtype, y.shape  # doctest: +SKIP
    ((10000, 3, 32, 32), dtype('uint8'), (10000,))
    """
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {filename}")
    try:
        with open(filename, "rb") as f:
            # latin1: the official files were pickled by Python 2.
            batch = pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise ValueError(f"{filename} is not a readable CIFAR-10 batch pickle: {exc}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{filename}: expected a dict with 'data' and 'labels', "
                         f"got {type(batch).__name__}")
    # Python-2 pickles decode to str keys, Python-3 ones may hold bytes keys.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{filename}: expected keys 'data' and 'labels', "
                         f"got {sorted(map(str, batch))}")
    X = np.asarray(batch["data"])
    y = np.asarray(batch["labels"])
    if X.ndim != 2 or X.shape[1] != 3072 or X.dtype != np.uint8:
        raise ValueError(f"{filename}: 'data' must be uint8 rows of 3072 values, "
                         f"got {X.dtype} of shape {X.shape}")
    if y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer) or \
            (y.size and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"{filename}: 'labels' must be {X.shape[0]} integers in 0..9")
    return X.reshape(-1, 3, 32, 32), y.astype(np.int64)


def load_CIFAR10(root):
    """Read all of ``cifar-10-batches-py``.

    Parameters
    ----------
    root : str or path
        The extracted ``cifar-10-batches-py`` directory (``data_batch_1`` to
        ``data_batch_5`` and ``test_batch``).

    Returns
    -------
    X_train : uint8 (50000, 3, 32, 32), y_train, X_test : uint8 (10000, 3, 32, 32), y_test

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing directory or file, or a file that is not a CIFAR-10
        batch; the message names the path.

    Examples
    --------
    >>> from fastbn.data import load_CIFAR10
    >>> X_train, y_train, X_test, y_test = load_CIFAR10("cifar-10-batches-py")  # doctest: +SKIP
    >>> X_train.shape, X_test.shape  # doctest: +SKIP
    ((50000, 3, 32, 32), (10000, 3, 32, 32))
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CIFAR-10 directory not found: {root} (expected the "
                                f"extracted cifar-10-batches-py folder)")
    missing = [f for f in CIFAR_TRAIN_FILES + [CIFAR_TEST_FILE]
               if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(f"{root} is not a cifar-10-batches-py directory: "
                                f"missing {', '.join(missing)}")
    parts = [load_CIFAR_batch(os.path.join(root, f)) for f in CIFAR_TRAIN_FILES]
    X_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    X_test, y_test = load_CIFAR_batch(os.path.join(root, CIFAR_TEST_FILE))
    return X_train, y_train, X_test, y_test


def _check_counts(**counts):
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if counts["num_training"] < 1:
        raise ValueError("num_training must be at least 1")


def _finish(X_train, y_train, X_val, y_val, X_test, y_test, subtract_mean):
    """Float32, mean image of the training split subtracted from every split."""
    X_train, X_val, X_test = (a.astype(np.float32) for a in (X_train, X_val, X_test))
    if subtract_mean:
        mean_image = X_train.mean(axis=0, dtype=np.float64).astype(np.float32)
        X_train -= mean_image
        X_val -= mean_image
        X_test -= mean_image
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val,
            "X_test": X_test, "y_test": y_test}


def get_CIFAR10_data(cifar10_dir, num_training=49000, num_validation=1000, num_test=1000,
                     subtract_mean=True):
    """CIFAR-10 split into train/validation/test, ready for a classifier.

    Parameters
    ----------
    cifar10_dir : str or path
        The extracted ``cifar-10-batches-py`` directory.
    num_training, num_validation : int
        The first ``num_training`` training images train; the next
        ``num_validation`` validate.
    num_test : int
        The first ``num_test`` images of ``test_batch``.
    subtract_mean : bool
        Subtract the mean training image from every split.

    Returns
    -------
    data : dict
        ``X_train``, ``X_val``, ``X_test`` float32 of shape (N, 3, 32, 32)
        (pixel values 0..255, minus the mean image); ``y_*`` int64.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing or malformed directory (the message names the path)
        or sample counts larger than the data.

    Examples
    --------
    >>> from fastbn.data import get_CIFAR10_data
    >>> data = get_CIFAR10_data("cifar-10-batches-py", num_training=5000)  # doctest: +SKIP
    >>> data["X_train"].shape, data["X_val"].shape  # doctest: +SKIP
    ((5000, 3, 32, 32), (1000, 3, 32, 32))
    """
    X_train, y_train, X_test, y_test = load_CIFAR10(cifar10_dir)
    _check_counts(num_training=num_training, num_validation=num_validation,
                  num_test=num_test)
    root = os.fspath(cifar10_dir)
    if num_training + num_validation > len(X_train):
        raise ValueError(f"num_training + num_validation = {num_training + num_validation} "
                         f"but {root} holds only {len(X_train)} training images")
    if num_test > len(X_test):
        raise ValueError(f"num_test = {num_test} but {root} holds only "
                         f"{len(X_test)} test images")
    val = slice(num_training, num_training + num_validation)
    return _finish(X_train[:num_training], y_train[:num_training], X_train[val], y_train[val],
                   X_test[:num_test], y_test[:num_test], subtract_mean)


def load_digits_data(num_training=1000, num_validation=400, num_test=397, subtract_mean=True,
                     seed=0):
    """scikit-learn's handwritten digits in the CIFAR-10 dict layout.

    The 1797 8x8 images (intensities 0..16, divided by 16 here so features
    lie in [0, 1]) are shuffled once with ``seed`` (the file is ordered by
    writer) and split into train, validation and test.

    Parameters
    ----------
    num_training, num_validation, num_test : int
        Split sizes; together at most 1797.
    subtract_mean : bool
        Subtract the mean training image from every split.
    seed : int
        Seed of the shuffle (a private generator; the global RNG is untouched).

    Returns
    -------
    data : dict
        ``X_train``, ``X_val``, ``X_test`` float32 of shape (N, 1, 8, 8);
        ``y_*`` int64 in 0..9.

    Raises
    ------
    ImportError
        When scikit-learn is not installed (the message says how to install it).
    ValueError
        For split sizes that are negative or add up to more than 1797.

    Examples
    --------
    >>> from fastbn.data import load_digits_data
    >>> data = load_digits_data()
    >>> data["X_train"].shape, data["X_train"].dtype, data["y_val"].shape
    ((1000, 1, 8, 8), dtype('float32'), (400,))
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data comes with scikit-learn, which is not "
                          f"installed; {EXTRA_HINT}") from None
    digits = load_digits()
    X = (digits.images / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    _check_counts(num_training=num_training, num_validation=num_validation,
                  num_test=num_test)
    if num_training + num_validation + num_test > len(X):
        raise ValueError(f"num_training + num_validation + num_test = "
                         f"{num_training + num_validation + num_test} but the digits "
                         f"data has only {len(X)} images")
    order = np.random.RandomState(seed).permutation(len(X))
    X, y = X[order], y[order]
    a, b, c = num_training, num_training + num_validation, \
        num_training + num_validation + num_test
    return _finish(X[:a], y[:a], X[a:b], y[a:b], X[b:c], y[b:c], subtract_mean)


def get_default_data(**kwargs):
    """The data the experiments use by default: :func:`load_digits_data`.

    Parameters
    ----------
    **kwargs
        Passed on to :func:`load_digits_data`.

    Returns
    -------
    data : dict
        ``X_train``, ``y_train``, ``X_val``, ``y_val``, ``X_test``, ``y_test``.

    Raises
    ------
    ImportError, ValueError
        As :func:`load_digits_data`.

    Examples
    --------
    >>> from fastbn.data import get_default_data
    >>> sorted(get_default_data())
    ['X_test', 'X_train', 'X_val', 'y_test', 'y_train', 'y_val']
    """
    return load_digits_data(**kwargs)
