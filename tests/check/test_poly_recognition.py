"""Plain-PyTorch polynomials (``x * x``, ``x ** 2``, ``torch.square``, ``torch.pow``,
``a * x + b`` and sums) compile to one PolyNode each, with BN before them folded."""

import numpy as np
import pytest
import torch
from torch import nn

from hecnn.compile import compile_model
from hecnn.compile.ir import AffineNode, PolyNode
from hecnn.errors import UnsupportedLayerError
from hecnn.runtime.simulate import simulate

RING = 1 << 12


class Act(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _net(fn) -> nn.Module:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.3, -0.1]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0]))
        bn.weight.copy_(torch.tensor([1.5, 0.8]))
    return nn.Sequential(nn.Conv2d(1, 2, 3), bn, Act(fn), nn.Flatten(), nn.Linear(72, 3)).eval()


def _plan(model):
    return compile_model(model, (1, 8, 8), batch=8, insecure_ring_for_tests=RING)


CASES = {
    "x*x": (lambda x: x * x, 2),
    "x**2": (lambda x: x**2, 2),
    "square": (torch.square, 2),
    "pow3": (lambda x: torch.pow(x, 3), 3),
    "method pow": (lambda x: x.pow(2), 2),
    "sum of terms": (lambda x: 0.125 * x * x + 0.5 * x + 0.25, 2),
    "cubic with sub/div/neg": (lambda x: (x**3) / 4 - x * x + (-x) - 1, 3),
    "affine of square": (lambda x: 2 * (x * x) + 1, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_written_polynomial_is_one_poly_node_and_bn_folds(name):
    fn, degree = CASES[name]
    model = _net(fn)
    plan = _plan(model)
    polys = [n for n in plan.nodes if isinstance(n, PolyNode)]
    affines = [n for n in plan.nodes if isinstance(n, AffineNode)]
    assert [p.degree for p in polys] == [degree]
    # conv and BN (and any scalar a·x+b) merged into one affine node before the polynomial
    assert len(affines) == 2 and "BatchNorm2d" in affines[0].source
    x = np.random.default_rng(1).normal(size=(8, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).double().numpy()
    np.testing.assert_allclose(simulate(plan, x), ref, rtol=1e-4, atol=1e-4)


def test_scalar_affine_alone_is_affine_not_a_polynomial():
    plan = _plan(_net(lambda x: 0.5 * x - 2.0))
    assert not any(isinstance(n, PolyNode) for n in plan.nodes)
    assert plan.levels == 1  # conv, BN, a·x+b and the linear layer: one product


def test_lead_coefficient_folded_into_next_layer():
    plan = _plan(_net(lambda x: 3.0 * x * x + x))
    (poly,) = [n for n in plan.nodes if isinstance(n, PolyNode)]
    assert poly.fold_leading and np.allclose(poly.coeffs[-1], 1.0)


def test_product_of_two_different_tensors_is_a_clear_error():
    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(64, 4)
            self.b = nn.Linear(64, 4)

        def forward(self, x):
            x = x.flatten(1)
            return self.a(x) * self.b(x)

    with pytest.raises(UnsupportedLayerError, match="two different tensors"):
        _plan(TwoBranches())


def test_fractional_power_is_a_clear_error():
    with pytest.raises(UnsupportedLayerError, match="integer powers"):
        _plan(_net(lambda x: x**0.5))


def test_residual_add_still_works_next_to_polynomials():
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 64)
            self.out = nn.Linear(64, 3)

        def forward(self, x):
            x = x.flatten(1)
            h = self.fc(x)
            return self.out(h * h + x)

    torch.manual_seed(0)
    model = Res().eval()
    plan = _plan(model)
    x = np.random.default_rng(2).normal(size=(4, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).double().numpy()
    np.testing.assert_allclose(simulate(plan, x), ref, rtol=1e-4, atol=1e-4)
