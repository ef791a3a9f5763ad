"""Shared fixtures of the ``hecnn check`` tests: the test-only models exported to ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

import _models  # pytest puts this folder on sys.path (rootdir-less "prepend" import mode)
import numpy as np
import pytest
import torch

RING = 1 << 12  # insecure small ring: tests only


def export_onnx(model: torch.nn.Module, path: Path, shape=(1, 1, 8, 8)) -> Path:
    """Legacy (TorchScript) exporter: needs only the onnx package, not onnxscript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(shape), str(path), dynamo=False, input_names=["x"])
    return path


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((32, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("onnx")
    for name in ("relu_lenet", "square_bn_cnn", "sigmoid_mlp"):
        export_onnx(getattr(_models, name)(), d / f"{name}.onnx")
    return d
