"""Training loop, knowledge distillation loss, checkpoints/resume, sidecars and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _nnhelpers import write_mnist_idx
from typer.testing import CliRunner

from hecnn.nn.data import Splits
from hecnn.nn.train import TrainConfig, evaluate, kd_loss, load_trained, train


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    alpha, T = 0.3, 2.0

    def softmax(v):
        e = np.exp(v - v.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ps, pt = softmax(s.numpy() / T), softmax(t.numpy() / T)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))  # KL(p_t ‖ p_s), batch mean
    ce = np.mean(-np.log(softmax(s.numpy())[[0, 1], y.numpy()]))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert kd_loss(s, t, y, alpha, T).item() == pytest.approx(expected, rel=1e-5)
    # α = 0 is plain cross-entropy; identical logits give zero soft loss
    assert kd_loss(s, t, y, 0.0, T).item() == pytest.approx(ce, rel=1e-5)
    assert kd_loss(s, s, y, 1.0, T).item() == pytest.approx(0.0, abs=1e-6)


def tiny_splits(n=96, seed=0) -> Splits:
    """A learnable toy problem: the label is which quadrant holds a bright square."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 4, n)
    for i, q in enumerate(y):
        r, c = divmod(int(q), 2)
        x[i, 0, r * 14 + 2 : r * 14 + 12, c * 14 + 2 : c * 14 + 12] = 255
    return Splits("mnist", x[: n - 32], y[: n - 32], x[n - 32 :], y[n - 32 :], "generated")


def cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        model="ishiyama_mnist",
        activation="swish4",
        dataset="mnist",
        epochs=2,
        batch_size=32,
        lr=0.05,
        out=str(tmp_path / "m"),
        command="test",
    )
    return TrainConfig(**{**base, **kw})


def test_train_writes_model_and_sidecar(tmp_path):
    splits = tiny_splits()
    meta = train(cfg(tmp_path, epochs=3), splits, log=lambda s: None)
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "m.ckpt.pt").is_file()
    side = json.loads((tmp_path / "m.json").read_text())
    for key in ("model", "activation", "dataset", "command", "epochs", "wall_time_s"):
        assert side[key] == meta[key]
    assert side["test_accuracy"] > 60  # 4 easy classes, chance is 25 %
    assert len(side["history"]) == 3
    rng = side["activation_ranges"]["act1"]
    assert rng["min"] < 0 < rng["max"] and rng["absq999"] > 0
    model = load_trained(tmp_path / "m.pt")
    assert not model.training
    assert evaluate(model, splits.x_test, splits.y_test, "mnist") == pytest.approx(
        side["test_accuracy"]
    )


def test_training_is_seeded_and_resumable(tmp_path):
    splits = tiny_splits()
    full = train(cfg(tmp_path / "a", epochs=2), splits, log=lambda s: None)
    # an interrupted run: stop after epoch 1, then the rerun picks it up
    logs: list[str] = []
    c = cfg(tmp_path / "b", epochs=2)
    assert train(c, splits, log=logs.append, stop_after=1) is None
    assert not (tmp_path / "b" / "m.pt").exists()
    logs.clear()
    resumed = train(c, splits, log=logs.append)
    assert any("resumed" in s for s in logs)
    assert resumed["history"] == [
        {**h, "epoch_time_s": r["epoch_time_s"]}
        for h, r in zip(full["history"], resumed["history"], strict=True)
    ]
    again = train(cfg(tmp_path / "a", epochs=2), splits, log=logs.append)  # fully done: resumes
    assert again["history"] == full["history"]
    a = torch.load(tmp_path / "a" / "m.pt", weights_only=True)
    fresh = train(cfg(tmp_path / "c", epochs=2), splits, log=lambda s: None)
    c_sd = torch.load(tmp_path / "c" / "m.pt", weights_only=True)
    assert fresh["history"][-1]["loss"] == full["history"][-1]["loss"]
    for k in a:
        torch.testing.assert_close(a[k], c_sd[k])


def test_distillation_run(tmp_path):
    splits = tiny_splits()
    train(cfg(tmp_path / "t", activation="relu"), splits, log=lambda s: None)
    meta = train(
        cfg(tmp_path / "s", activation="poly_element", teacher=str(tmp_path / "t" / "m.pt")),
        splits,
        log=lambda s: None,
    )
    assert meta["config"]["teacher"].endswith("m.pt")
    assert np.isfinite(meta["history"][-1]["loss"])


def test_cli_train_and_eval(isolated_data):
    from hecnn.cli.main import _register, app

    _register()
    write_mnist_idx(isolated_data, n_train=64, n_test=16)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "--model",
            "cryptonets_mnist",
            "--activation",
            "square",
            "--epochs",
            "1",
            "--lr",
            "0.01",
            "--no-verify",
            "--out",
            str(isolated_data / "run" / "cn"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1].startswith("accuracy=")
    side = json.loads((isolated_data / "run" / "cn.json").read_text())
    assert side["model"] == "cryptonets_mnist"
    assert side["command"].startswith("hecnn train --model cryptonets_mnist --activation square")
    assert "--no-verify" in side["command"]
    res = runner.invoke(
        app, ["eval", "--model", str(isolated_data / "run" / "cn.pt"), "--no-verify"]
    )
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("accuracy=") and 0 <= float(last.split("=")[1]) <= 100


def test_augmented_training_is_seeded_and_learns(tmp_path):
    """``augment=True`` on digits uses rotation/scale/shift (no flips) and stays reproducible."""
    splits = tiny_splits()
    a = train(cfg(tmp_path / "a", epochs=3, augment=True), splits, log=lambda s: None)
    b = train(cfg(tmp_path / "b", epochs=3, augment=True), splits, log=lambda s: None)
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"]
    assert a["test_accuracy"] > 50  # 4 classes: chance is 25 %


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_training_on_cuda_matches_cpu_accuracy_band(tmp_path):
    splits = tiny_splits()
    meta = train(cfg(tmp_path, epochs=3, device="cuda"), splits, log=lambda s: None)
    assert meta["test_accuracy"] > 60
    model = load_trained(tmp_path / "m.pt")  # saved from the GPU, loads on the CPU
    assert next(model.parameters()).device.type == "cpu"
