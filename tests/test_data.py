"""fastbn.data: the CIFAR-10 reader on a small directory written here in the
real pickle format, its errors, and the embedded digits data."""
import os
import pickle
import sys

import numpy as np
import pytest

from fastbn import data

ROWS = 7                       # images per batch file (the real files hold 10000)


def write_batch(path, X, y, bytes_keys=False):
    """One batch as the official files hold it: a protocol-2 pickle of a dict
    with uint8 'data' rows of 3072 (R, G, B planes of 32x32) and 'labels'."""
    batch = {"batch_label": "testing batch", "labels": [int(v) for v in y], "data": X,
             "filenames": [f"img_{i}.png" for i in range(len(y))]}
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path):
    """A cifar-10-batches-py lookalike: data_batch_1..5 and test_batch."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    raw = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        X = rng.integers(0, 256, size=(ROWS, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=ROWS)
        write_batch(root / name, X, y, bytes_keys=(i % 2 == 1))   # both key styles
        raw[name] = (X, y)
    return root, raw


def test_batch_layout_planes_rows_columns(cifar_dir):
    root, raw = cifar_dir
    X, y = data.load_CIFAR_batch(root / "data_batch_2")
    Xr, yr = raw["data_batch_2"]
    assert X.shape == (ROWS, 3, 32, 32) and X.dtype == np.uint8
    np.testing.assert_array_equal(y, yr)
    for i, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 7), (6, 2, 31, 30)]:
        assert X[i, c, h, w] == Xr[i, c * 1024 + h * 32 + w]


def test_get_CIFAR10_data_split_and_mean(cifar_dir):
    root, raw = cifar_dir
    d = data.get_CIFAR10_data(str(root), num_training=20, num_validation=10, num_test=5)
    assert sorted(d) == ["X_test", "X_train", "X_val", "y_test", "y_train", "y_val"]
    all_X = np.concatenate([raw[f"data_batch_{k}"][0] for k in range(1, 6)]).astype(np.float64)
    all_y = np.concatenate([raw[f"data_batch_{k}"][1] for k in range(1, 6)])
    mean = all_X[:20].mean(axis=0)
    for key, n in [("X_train", 20), ("X_val", 10), ("X_test", 5)]:
        assert d[key].shape == (n, 3, 32, 32) and d[key].dtype == np.float32
    np.testing.assert_allclose(d["X_train"].reshape(20, -1), all_X[:20] - mean, atol=1e-4)
    np.testing.assert_allclose(d["X_val"].reshape(10, -1), all_X[20:30] - mean, atol=1e-4)
    np.testing.assert_allclose(d["X_test"].reshape(5, -1),
                               raw["test_batch"][0][:5] - mean, atol=1e-4)
    np.testing.assert_array_equal(d["y_train"], all_y[:20])
    np.testing.assert_array_equal(d["y_val"], all_y[20:30])
    np.testing.assert_array_equal(d["y_test"], raw["test_batch"][1][:5])

    plain = data.get_CIFAR10_data(root, num_training=20, num_validation=10, num_test=5,
                                  subtract_mean=False)
    np.testing.assert_array_equal(plain["X_train"].reshape(20, -1), all_X[:20])


def test_missing_directory_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "cifar-10-batches-py"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        data.get_CIFAR10_data(missing)


def test_missing_batch_file_names_it(cifar_dir):
    root, _ = cifar_dir
    os.remove(root / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="data_batch_4") as info:
        data.get_CIFAR10_data(root, num_training=10, num_validation=5, num_test=5)
    assert str(root) in str(info.value)


@pytest.mark.parametrize("content, match", [
    (b"this is not a pickle", "not a readable CIFAR-10 batch"),
    (pickle.dumps([1, 2, 3], protocol=2), "expected a dict"),
    (pickle.dumps({"data": np.zeros((ROWS, 3072), np.uint8)}, protocol=2), "labels"),
    (pickle.dumps({"data": np.zeros((ROWS, 3071), np.uint8), "labels": [0] * ROWS},
                  protocol=2), "3072"),
    (pickle.dumps({"data": np.zeros((ROWS, 3072), np.float32), "labels": [0] * ROWS},
                  protocol=2), "uint8"),
    (pickle.dumps({"data": np.zeros((ROWS, 3072), np.uint8), "labels": [10] * ROWS},
                  protocol=2), "labels"),
])
def test_malformed_batch_names_file(cifar_dir, content, match):
    root, _ = cifar_dir
    (root / "data_batch_3").write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        data.get_CIFAR10_data(root, num_training=10, num_validation=5, num_test=5)
    assert str(root / "data_batch_3") in str(info.value)


def test_counts_larger_than_data(cifar_dir):
    root, _ = cifar_dir
    with pytest.raises(ValueError, match="num_training \\+ num_validation") as info:
        data.get_CIFAR10_data(root)                    # defaults want 49000 + 1000
    assert str(root) in str(info.value)
    with pytest.raises(ValueError, match="num_test"):
        data.get_CIFAR10_data(root, num_training=5, num_validation=5, num_test=ROWS + 1)
    with pytest.raises(ValueError, match="num_validation"):
        data.get_CIFAR10_data(root, num_training=5, num_validation=-1)


# -- digits ---------------------------------------------------------------------

def test_digits_layout_and_split():
    state = np.random.get_state()[1].copy()
    d = data.load_digits_data()
    np.testing.assert_array_equal(np.random.get_state()[1], state)   # global RNG untouched
    sizes = {"train": 1000, "val": 400, "test": 397}
    for split, n in sizes.items():
        X, y = d[f"X_{split}"], d[f"y_{split}"]
        assert X.shape == (n, 1, 8, 8) and X.dtype == np.float32
        assert y.shape == (n,) and y.min() >= 0 and y.max() <= 9
    # the mean training image was subtracted from every split
    np.testing.assert_allclose(d["X_train"].mean(axis=0), 0, atol=1e-6)
    # ...and adding it back gives intensities in [0, 1]: together the splits
    # are exactly scikit-learn's 1797 images, shuffled
    from sklearn.datasets import load_digits
    ref = load_digits()
    raw = data.load_digits_data(subtract_mean=False)
    allX = np.concatenate([raw["X_train"], raw["X_val"], raw["X_test"]]).reshape(1797, 64)
    ally = np.concatenate([raw["y_train"], raw["y_val"], raw["y_test"]])
    assert allX.min() == 0 and allX.max() == 1
    key = lambda X, y: sorted(map(tuple, np.column_stack([X, y])))   # noqa: E731
    assert key(allX * 16, ally) == key(ref.data, ref.target)
    assert np.all(np.bincount(raw["y_train"], minlength=10) > 60)  # shuffled: every class


def test_digits_seed_and_default():
    a, b = data.load_digits_data(seed=1), data.load_digits_data(seed=2)
    assert not np.array_equal(a["y_train"], b["y_train"])
    default = data.get_default_data()
    np.testing.assert_array_equal(default["X_train"], data.load_digits_data()["X_train"])
    small = data.load_digits_data(num_training=100, num_validation=50, num_test=0)
    assert len(small["X_train"]) == 100 and len(small["X_test"]) == 0
    with pytest.raises(ValueError, match="1797"):
        data.load_digits_data(num_training=1500, num_validation=400)


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "fastbn\[experiments\]"'):
        data.load_digits_data()
