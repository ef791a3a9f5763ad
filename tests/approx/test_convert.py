"""approximate(): swapping ReLU / MaxPool2d in pre-trained models."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import fx, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

import hecnn
from hecnn.approx import (
    CompositeMaxPool2d,
    CompositeReLU,
    approx_layers,
    approximate,
    trace_composite_leaves,
)
from hecnn.approx.composite import composite_sign


def _lip_inf(layer: nn.Module) -> float:
    """∞-norm Lipschitz constant of a linear layer: max over outputs of Σ|w|."""
    w = layer.weight.detach()
    return float(w.abs().flatten(1).sum(1).max())


def _error_bound(seq: nn.Sequential) -> float:
    """Propagate sup-norm error bounds: e ← Lip·e (+ local bound of composite layers)."""
    e = 0.0
    for layer in seq:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            e *= _lip_inf(layer)
        elif isinstance(layer, (CompositeReLU, CompositeMaxPool2d)):
            e += layer.error_bound  # exact relu / max are 1-Lipschitz in sup norm
    return e


@pytest.fixture
def seq_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
    ).eval()


@pytest.mark.parametrize("alpha", [7, 10, 13])
def test_sequential_within_propagated_bound(seq_model: nn.Sequential, alpha: int) -> None:
    x = torch.randn(32, 1, 14, 14)
    am = approximate(seq_model, alpha=alpha, calib=x, margin=1.05)
    assert type(am) is nn.Sequential  # module swap keeps the class
    assert sum(isinstance(m, nn.ReLU | nn.MaxPool2d) for m in am.modules()) == 0
    assert len(approx_layers(am)) == 4
    assert all(isinstance(m, nn.ReLU | nn.MaxPool2d) for m in (seq_model[1], seq_model[2]))
    with torch.no_grad():  # float64 so that only the approximation error is measured
        err = float((am.double()(x.double()) - seq_model.double()(x.double())).abs().max())
    bound = _error_bound(am)
    print(f"alpha={alpha} err={err:.3g} bound={bound:.3g}")
    assert err <= bound
    assert bound < 2.0 ** (9 - alpha)  # sanity: the bound is not vacuous


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(3, 3, 3)
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.c2(x))
        x = torch.relu(x).relu()  # two more functional forms
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        return self.act(self.fc(x.flatten(1)))  # same module used twice


def test_functional_calls_are_replaced() -> None:
    torch.manual_seed(1)
    m = FunctionalNet().eval()
    x = torch.randn(64, 1, 14, 14)
    am = approximate(m, alpha=12, calib=x, margin=1.2)
    assert isinstance(am, fx.GraphModule)
    layers = approx_layers(am)
    # act (x2), relu, torch.relu, .relu(), 2 pools: one module per call
    assert sum(isinstance(v, CompositeReLU) for v in layers.values()) == 5
    assert sum(isinstance(v, CompositeMaxPool2d) for v in layers.values()) == 2
    assert not any(isinstance(mod, nn.ReLU) for mod in am.modules())
    code = am.code
    assert "relu" not in code.replace("hecnn_approx", "") and "max_pool" not in code
    with torch.no_grad():
        err = float((am(x) - m(x)).abs().max())
    assert err < 1e-2
    # the original is untouched
    assert isinstance(m.act, nn.ReLU)


def test_result_is_fx_traceable_and_exposes_parameters(seq_model: nn.Sequential) -> None:
    x = torch.randn(8, 1, 14, 14)
    am = approximate(seq_model, alpha=8, calib=x)
    gm = fx.symbolic_trace(am)
    torch.testing.assert_close(gm(x), am(x))
    leaves = trace_composite_leaves(am)  # what an encrypted compiler would walk
    mods = [leaves.get_submodule(n.target) for n in leaves.graph.nodes if n.op == "call_module"]
    assert sum(isinstance(m, CompositeReLU | CompositeMaxPool2d) for m in mods) == 4
    assert len(leaves.graph.nodes) < len(gm.graph.nodes)
    torch.testing.assert_close(leaves(x), am(x))
    relu = am[1]
    assert isinstance(relu, CompositeReLU)
    assert relu.sign.degrees == composite_sign(8).degrees
    with torch.no_grad():
        expected = 1.5 * float(seq_model[0](x).abs().max())
    assert relu.bound == pytest.approx(expected, rel=1e-5)
    pool = am[5]
    assert isinstance(pool, CompositeMaxPool2d)
    assert pool.kernel_size == (3, 3) and pool.stride == (2, 2) and pool.padding == (1, 1)
    assert len(pool.round_bounds) == 4


def test_check_pass_raises_bound() -> None:
    """A layer whose approximated input exceeds B gets a larger B in the check pass."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()).eval()
    x = torch.randn(256, 4)
    exact = approximate(m, alpha=6, calib=x, margin=1.0, check=False)
    checked = approximate(m, alpha=6, calib=x, margin=1.0, check=True)
    # with margin 1 the second layer's inputs move by the first layer's error: some exceed B
    assert checked[3].bound >= exact[3].bound
    with torch.no_grad():
        y = checked[2](checked[1](checked[0](x)))
    assert float(y.abs().max()) <= checked[3].bound


def test_calibration_from_loader_and_default_bound(seq_model: nn.Sequential) -> None:
    x = torch.randn(40, 1, 14, 14)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(40)), 16)
    a1 = approximate(seq_model, alpha=9, calib=loader)
    a2 = approximate(seq_model, alpha=9, calib=x)
    assert [m.bound for m in approx_layers(a1).values()] == pytest.approx(
        [m.bound for m in approx_layers(a2).values()]
    )
    a3 = approximate(seq_model, alpha=9, calib=None, default_bound=7.0)
    assert all(m.bound == 7.0 for m in approx_layers(a3).values())


def test_untraceable_model_falls_back_to_module_swap() -> None:
    class Dyn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.r = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.r(x) if x.sum() > 0 else -x

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        am = approximate(Dyn(), alpha=8, calib=torch.rand(4, 3))
    assert isinstance(am.r, CompositeReLU)
    assert any("fx" in str(i.message) for i in w)


def test_hecnn_approximate_is_lazy_alias() -> None:
    assert hecnn.approximate is approximate
