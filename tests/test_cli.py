"""The ``fastbn`` command end to end on reduced configurations: the json it
writes (keys and lengths), the png, ``fastbn check``, and the errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbn.cli import main

from test_data import write_batch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > 10_000          # a real figure, not an empty canvas


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_depth_reduced(tmp_path, capsys, backend):
    out = tmp_path / "out"                     # created by the command
    rc = main(["experiment", "depth", "--epochs", "2", "--num-train", "200",
               "--out", str(out), "--backend", backend, "--quiet"])
    assert rc == 0
    with open(out / "depth.json") as f:
        result = json.load(f)
    assert sorted(result) == ["baseline", "batchnorm", "config"]
    for net in ("batchnorm", "baseline"):
        r = result[net]
        assert sorted(r) == ["loss_history", "train_acc_history", "val_acc_history"]
        assert len(r["loss_history"]) == 2 * (200 // 50)          # iterations
        assert len(r["train_acc_history"]) == len(r["val_acc_history"]) == 3   # 0, 1, 2
        assert all(0 <= a <= 1 for a in r["train_acc_history"] + r["val_acc_history"])
        assert all(0 < v < 10 for v in r["loss_history"])
    cfg = result["config"]
    assert cfg["hidden_dims"] == [100] * 5 and cfg["backend"] == backend
    assert cfg["data"] == "digits" and cfg["num_train"] == 200 and cfg["input_dim"] == 64
    assert cfg["update_rule"] == "adam" and cfg["learning_rate"] == 1e-3
    assert cfg["batch_size"] == 50 and cfg["epochs"] == 2 and cfg["weight_scale"] == 2e-2
    assert_png(out / "depth.png")
    assert "wrote" in capsys.readouterr().out


def test_depth_is_reproducible_with_seed(tmp_path):
    args = ["experiment", "depth", "--epochs", "1", "--num-train", "100", "--quiet",
            "--seed", "7"]
    for name in ("a", "b"):
        assert main(args + ["--out", str(tmp_path / name)]) == 0
    a, b = (json.load(open(tmp_path / n / "depth.json")) for n in ("a", "b"))
    assert a["batchnorm"] == b["batchnorm"] and a["baseline"] == b["baseline"]


def test_init_scale_reduced(tmp_path):
    rc = main(["experiment", "init-scale", "--scales", "2", "--epochs", "1",
               "--num-train", "100", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    with open(tmp_path / "init_scale.json") as f:
        result = json.load(f)
    assert sorted(result) == ["baseline", "batchnorm", "config", "weight_scales"]
    np.testing.assert_allclose(result["weight_scales"], [1e-4, 1.0])
    for net in ("batchnorm", "baseline"):
        r = result[net]
        assert sorted(r) == ["best_train_acc", "best_val_acc", "final_train_loss"]
        assert all(len(v) == 2 for v in r.values())
    assert result["config"]["hidden_dims"] == [50] * 7
    assert_png(tmp_path / "init_scale.png")


def test_depth_on_cifar10_directory(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        write_batch(root / name, rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                    rng.integers(0, 10, 8))
    rc = main(["experiment", "depth", "--data", "cifar10", "--data-dir", str(root),
               "--num-train", "30", "--batch-size", "10", "--epochs", "1",
               "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    result = json.load(open(tmp_path / "out" / "depth.json"))
    cfg = result["config"]
    assert cfg["data"] == "cifar10" and cfg["input_dim"] == 3072
    assert cfg["num_train"] == 30 and cfg["num_val"] == 10
    assert len(result["batchnorm"]["loss_history"]) == 3


@pytest.mark.parametrize("args, message", [
    (["--data", "cifar10"], "--data-dir"),
    (["--data", "cifar10", "--data-dir", "/no/such/cifar"], "/no/such/cifar"),
    (["--data-dir", "/tmp"], "only for --data cifar10"),
    (["--num-train", "1790"], "--num-train"),
])
def test_experiment_errors(tmp_path, capsys, args, message):
    rc = main(["experiment", "depth", "--out", str(tmp_path), "--quiet"] + args)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "depth.json").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = main(["experiment", "depth", "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    assert 'pip install "fastbn[experiments]"' in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["experiment", "init-scale", "--scales", "0"], "positive integer"),
    (["experiment", "depth", "--epochs", "two"], "positive integer"),
    (["experiment", "depth", "--lr=-1e-3"], "positive number"),
    (["experiment", "depth", "--weight-scale", "nan"], "positive number"),
    (["check", "--repeat", "0"], "positive integer"),
])
def test_bad_numbers_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_check_report(capsys, backend):
    assert main(["check", "--backend", backend, "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    for title in ("Forward statistics", "Gradient checks", "graph vs closed form",
                  "FullyConnectedNet gradient check"):
        assert title in out
    assert f"backend {backend!r}" in out
    assert "FAIL" not in out and out.rstrip().endswith("all checks passed")
    assert out.count(" ok") >= 17


def test_python_dash_m_fastbn(tmp_path):
    """The real process entry point, as a user runs it."""
    # The child must import the same fastbn as this process: the installed
    # package in CI, the built source tree in development.
    import fastbn
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "fastbn", "experiment", "depth",
                           "--epochs", "1", "--num-train", "100", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "batchnorm" in proc.stdout and (tmp_path / "depth.json").exists()
    assert_png(tmp_path / "depth.png")


def test_version(capsys):
    import fastbn
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastbn {fastbn.__version__}"


@pytest.mark.parametrize("argv, words", [
    (["bench", "--shapes", "100x500:f16"], ["'100x500:f16'", "f32 or f64"]),
    (["bench", "--shapes", "axb"], ["'axb'", "joined by 'x'"]),
    (["bench", "--shapes", "2x3x4"], ["'2x3x4'", "2 (N, D) or 4 (N, C, H, W)"]),
    (["bench", "--repeat", "0"], ["--repeat", "positive integer"]),
])
def test_bench_errors_in_the_users_words(capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert "invalid" not in err and "parse_shape" not in err and "_shape_arg" not in err
