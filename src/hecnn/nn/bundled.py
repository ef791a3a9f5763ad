"""Small trained models and real MNIST test images shipped inside the package (for the demo).

``hecnn/data/`` holds ``NAME.pt`` (state_dict) + ``NAME.json`` (sidecar with the exact training
command and its test accuracy) per model, and ``mnist_test_sample.npz`` (uint8 images ``x`` of
shape N×1×28×28 and labels ``y``). Preprocess images with :func:`to_float` — the same function
training used — before feeding a model.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import torch
from torch import nn

from hecnn.nn.data import to_float
from hecnn.nn.models import build_model

__all__ = ["load_model", "metadata", "names", "sample_images", "to_float"]

SAMPLE = "mnist_test_sample.npz"


def _file(name: str):
    return resources.files("hecnn").joinpath("data", name)


def names() -> list[str]:
    """Names of the bundled models."""
    try:
        entries = [e.name for e in resources.files("hecnn").joinpath("data").iterdir()]
    except FileNotFoundError:
        return []
    return sorted(n[:-3] for n in entries if n.endswith(".pt"))


def metadata(name: str) -> dict:
    """The JSON sidecar of bundled model ``name``."""
    if name not in names():
        raise KeyError(f"no bundled model {name!r}; have {names()}")
    return json.loads(_file(name + ".json").read_text())


def load_model(name: str) -> nn.Module:
    """Bundled model ``name`` with its trained weights, in eval mode."""
    meta = metadata(name)
    model = build_model(meta["model"], meta["activation"], num_classes=meta.get("num_classes", 10))
    with _file(name + ".pt").open("rb") as f:
        model.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
    return model.eval()


def sample_images() -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST test images (uint8, N×1×28×28) and their labels (int64)."""
    with _file(SAMPLE).open("rb") as f, np.load(f) as d:
        return d["x"].copy(), d["y"].astype(np.int64)
