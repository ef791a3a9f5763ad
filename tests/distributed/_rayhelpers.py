"""Helpers of the scale-out tests (a uniquely named module: ``conftest`` is ambiguous across
test folders)."""

from __future__ import annotations

import contextlib
import subprocess

import numpy as np
import psutil
import torch
from torch import nn

from hecnn.nn.activations import Square, TrainablePoly

RING = 1 << 12


class Branchy(nn.Module):
    """Every node kind a split must handle: convolutions, polynomials, a concatenation of
    two branches, a concatenation of one value with itself, a residual add, a dense layer."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.a1 = Square()
        self.ca = nn.Conv2d(2, 2, 1)
        self.cb = nn.Conv2d(2, 2, 3, padding=1)
        self.a2 = TrainablePoly(2, "channel", shape=(4, 6, 6))
        self.fc = nn.Linear(144, 3)

    def forward(self, x):
        y = self.a1(self.c1(x))
        y = self.a2(torch.cat([self.ca(y), self.cb(y)], 1) + torch.cat([y, y], 1))
        return self.fc(torch.flatten(y, 1))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 6, 6)).astype(np.float32)


def plaintext(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).double().numpy()


def running_tasks(nodes: list[subprocess.Popen], name: str) -> list[psutil.Process]:
    """Worker processes of ``nodes`` executing task ``name`` now (Ray titles them
    ``ray::<task>`` while they run it)."""
    found = []
    for p in nodes:
        with contextlib.suppress(psutil.Error):
            for q in psutil.Process(p.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if " ".join(q.cmdline()).startswith(f"ray::{name}"):
                        found.append(q)
    return found
