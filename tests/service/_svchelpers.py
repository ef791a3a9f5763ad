"""Helpers of the service tests (a uniquely named module: ``conftest`` is ambiguous across
test folders)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hecnn.nn.activations import Square

TINY_RING = 1 << 10


def tiny_model() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(1, 3, 3), Square(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()


def tiny_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 6, 6)).astype(np.float32)


def plaintext(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x, dtype=np.float32))).double().numpy()


def check_against_plaintext(got: np.ndarray, ref: np.ndarray, tol: float) -> None:
    """Encrypted logits vs the plaintext model: max error within ``tol``, and every label equal
    unless the plaintext top-2 margin is itself within the error (a genuine near-tie)."""
    err = np.abs(got - ref).max()
    assert err < tol, f"max logit error {err:.3g} ≥ {tol}"
    top2 = np.sort(ref, axis=1)[:, -2:]
    tie = (top2[:, 1] - top2[:, 0]) < 2 * tol
    assert np.all((got.argmax(1) == ref.argmax(1)) | tie)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.9
