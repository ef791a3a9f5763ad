"""Encrypted vs clear on a small batch, within the error the check reports.

Each test-only model runs through :func:`hecnn.check.check` as a PyTorch module and as its ONNX
export: ``simulate`` (approximations + simulated CKKS precision) predicts the encrypted error,
so the encrypted logits must lie within a small multiple of the simulated error of the clear
model, with the same labels. Small insecure rings keep this fast (tests only)."""

import _models
import numpy as np
import pytest

import hecnn
from conftest import RING
from hecnn.check import check, simulate_ckks
from hecnn.runtime.simulate import simulate

#: CKKS noise is random; over repeated runs the encrypted max error was 0.2–3.6× the simulated
#: one (a Gaussian estimate without key-switching noise), so 5× leaves room for unlucky keys
NOISE_FACTOR = 5.0


def _assert_within_reported(res) -> None:
    sim, enc = res.modes["simulate"], res.modes["encrypted"]
    assert np.isfinite(enc.logits).all()
    assert enc.max_err <= NOISE_FACTOR * sim.max_err, (enc.max_err, sim.max_err)
    assert enc.agreement == 100.0 and sim.agreement == 100.0
    assert res.last_line() == f"agreement={enc.agreement:.2f} max_err={enc.max_err:.3e}"
    # the error is small against the logits, not only against a loose bound
    scale = np.abs(res.modes["clear"].logits).max()
    assert enc.max_err < 0.1 * scale


@pytest.mark.parametrize(
    "name", ["square_bn_cnn", "sigmoid_mlp", pytest.param("relu_lenet", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("source", ["module", "onnx"])
def test_encrypted_matches_clear_within_reported_error(name, source, images, onnx_dir):
    onnx_file = onnx_dir / f"{name}.onnx"
    model = hecnn.load(onnx_file) if source == "onnx" else getattr(_models, name)()
    res = check(model, images, n=8, alpha=6, insecure_ring_for_tests=RING)
    _assert_within_reported(res)


def test_relu_lenet_module_encrypted(images):
    """ReLU + max-pool under encryption (composite chains; the longest default test here)."""
    res = check(_models.relu_lenet(), images, n=4, alpha=6, insecure_ring_for_tests=RING)
    _assert_within_reported(res)
    approx_err = max(a.max_error for a in res.approximations)
    assert 0 < approx_err < 0.2
    assert "composite minimax" in res.approximation_table()


def test_labels_give_accuracy(images):
    y = np.zeros(len(images), dtype=np.int64)
    res = check(_models.square_bn_cnn(), images, y, n=8, insecure_ring_for_tests=RING)
    clear = res.modes["clear"]
    assert clear.accuracy == pytest.approx(100.0 * np.mean(clear.logits.argmax(1) == 0))
    assert "accuracy" in res.table() and "ms/image" in res.table()


def test_simulate_ckks_is_the_plan_plus_small_noise(images):
    from hecnn.compile import compile_model

    plan = compile_model(_models.square_bn_cnn(), (1, 8, 8), batch=8, insecure_ring_for_tests=RING)
    exact = simulate(plan, images[:8])
    noisy = simulate_ckks(plan, images[:8])
    err = np.abs(noisy - exact).max()
    assert 0 < err < 1e-2 * np.abs(exact).max()
