"""SiLU / GELU / Sigmoid fits, and :func:`hecnn.check.prepare`'s per-layer report."""

import _models
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from hecnn.approx.smooth import SMOOTH_FUNCTIONS, FittedPoly, fit_smooth
from hecnn.check import prepare


@pytest.mark.parametrize("name", sorted(SMOOTH_FUNCTIONS))
def test_fit_error_shrinks_with_degree(name):
    errs = [FittedPoly(name, 4.0, d).max_error_on_range() for d in (4, 6, 8)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 2e-2


def test_fit_is_in_power_basis():
    c = fit_smooth("sigmoid", 3.0, 5)
    x = np.linspace(-3, 3, 7)
    approx = np.polynomial.polynomial.polyval(x, c)
    assert np.abs(approx - SMOOTH_FUNCTIONS["sigmoid"](x)).max() < 1e-2


def test_prepare_reports_each_layer_and_its_measured_error(images):
    model = _models.sigmoid_mlp()
    work, approx = prepare(model, images, degree=7)
    assert [a.original for a in approx] == ["sigmoid", "silu"]
    x = torch.as_tensor(images)
    with torch.no_grad():
        diff = float((work(x) - model(x)).abs().max())
    for a in approx:
        assert "Chebyshev" in a.method and 0 < a.max_error < 1e-3 and a.bound > 0
    assert diff < 1e-3


def test_prepare_relu_maxpool_functional_and_module(images):
    model = _models.relu_lenet()
    _work, approx = prepare(model, images, alpha=6)
    kinds = sorted(a.original for a in approx)
    assert kinds == ["MaxPool (2, 2)", "ReLU", "ReLU"]  # nn.ReLU, nn.MaxPool2d and F.relu
    for a in approx:
        assert "α=6" in a.method and a.max_error > 0


def test_functional_smooth_activations_are_replaced(images):
    class Fn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            return F.silu(h) + torch.sigmoid(h) + F.gelu(h)

    torch.manual_seed(0)
    _work, approx = prepare(Fn().eval(), images)
    assert sorted(a.original for a in approx) == ["gelu", "sigmoid", "silu"]
