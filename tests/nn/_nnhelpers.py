"""Helpers for hecnn.nn tests: small generated dataset files, real-data skips."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` (uint8) as a gzipped IDX file."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_mnist_idx(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """Generated MNIST-format IDX files under ``folder/mnist``; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    names = {
        "train_x": "train-images-idx3-ubyte.gz",
        "train_y": "train-labels-idx1-ubyte.gz",
        "test_x": "t10k-images-idx3-ubyte.gz",
        "test_y": "t10k-labels-idx1-ubyte.gz",
    }
    (folder / "mnist").mkdir(parents=True, exist_ok=True)
    for k, name in names.items():
        write_idx(folder / "mnist" / name, arrays[k])
    return arrays


def real_data_file(rel: str) -> Path:
    """A file of the real shared datasets, or skip the test with the reason."""
    from hecnn.nn.data import search_dirs

    for d in search_dirs():
        if (d / rel).is_file():
            return d / rel
    pytest.skip(f"real dataset file {rel} not found (../shared/data, $HECNN_DATA, ~/.cache/hecnn)")
