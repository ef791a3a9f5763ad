"""Maths of the polynomial activations: fits, coefficient layout, gradients, range recording."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hecnn.nn.activations import (
    PolyActivation,
    Square,
    SwishPoly4,
    TrainablePoly,
    poly_sgd,
    relu_quadratic_fit,
    swish_poly4_coefficients,
)
from hecnn.nn.models import build_model


def poly_eval(coefs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ c_k x^k with ascending coefficients (reference for the Horner forward)."""
    return sum(c * x**k for k, c in enumerate(coefs))


@pytest.mark.parametrize(
    ("r", "published"),
    [(4, [0.03347, 0.5, 0.19566, 0.0, -0.005075]), (6, [0.1198, 0.5, 0.1473, 0.0, -0.002012])],
)
def test_swish_fit_matches_published(r, published):
    np.testing.assert_allclose(swish_poly4_coefficients(r), published, atol=1e-3)


@pytest.mark.parametrize("r", [3, 4, 5, 6, 7, 8])
def test_swish_fit_symmetry_and_quality(r):
    c = swish_poly4_coefficients(r)
    assert c[3] == 0.0 and c[1] == 0.5  # odd part of swish is exactly x/2
    x = np.linspace(-r, r, 2001)
    swish = x / (1 + np.exp(-x))
    # imposing c1 = 1/2, c3 = 0 changes nothing: a free degree-4 fit lands on the same values
    free = np.polynomial.polynomial.polyfit(x, swish, 4)
    np.testing.assert_allclose(c, free, atol=2e-3)
    assert (
        np.max(np.abs(np.polynomial.polynomial.polyval(x, c) - swish)) < 0.005 * r**2
    )  # max error 0.28 at r=8


def test_swish_module_forward_matches_coefficients():
    act = SwishPoly4(4).eval()
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(act(x), poly_eval(act.coefficients(), x))
    assert act.coefficients().shape == (5,)
    assert act.valid_range == (-4.0, 4.0)
    assert act.granularity == "layer" and act.degree == 4


def test_square():
    act = Square()
    x = torch.randn(3, 4)
    torch.testing.assert_close(act(x), x * x)
    torch.testing.assert_close(act.coefficients(), torch.tensor([0.0, 0.0, 1.0]))
    assert act.degree == 2 and act.valid_range is None


def test_trainable_init_is_relu_fit():
    a, b, c = relu_quadratic_fit(-3, 3)
    # closed form of the L2 fit of ReLU on [-r, r]: a = 15/(32 r), b = 1/2, c = 3r/32
    assert a == pytest.approx(15 / 96, abs=1e-4)
    assert b == pytest.approx(0.5, abs=1e-6)
    assert c == pytest.approx(9 / 32, abs=1e-4)
    act = TrainablePoly(2, "layer")
    torch.testing.assert_close(act.coefficients(), torch.tensor([c, b, a], dtype=torch.float32))


@pytest.mark.parametrize(
    ("granularity", "coef_shape"),
    [("layer", ()), ("channel", (4,)), ("element", (4, 3, 5))],
)
def test_trainable_shapes_forward_and_gradients(granularity, coef_shape):
    act = TrainablePoly(2, granularity, shape=(4, 3, 5))
    with torch.no_grad():  # distinct coefficients per position
        for p in (act.a, act.b, act.c):
            p.copy_(torch.randn_like(p))
    assert act.coefficients().shape == (3, *coef_shape)
    x = torch.randn(2, 4, 3, 5)
    y = act(x)
    coefs = act.coefficients()
    view = (1, 4, 1, 1) if granularity == "channel" else coef_shape
    ref = sum(coefs[k].reshape(view) * x**k for k in range(3))
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    for p in (act.a, act.b, act.c):
        assert p.grad is not None and p.grad.shape == p.shape
        assert torch.count_nonzero(p.grad) > 0
    # d/da Σ(a x² + b x + c) = Σ x² over the positions sharing the coefficient
    dims = {"layer": (0, 1, 2, 3), "channel": (0, 2, 3), "element": (0,)}[granularity]
    torch.testing.assert_close(act.a.grad.reshape(coef_shape), (x * x).sum(dims))


def test_trainable_rejects_bad_arguments():
    with pytest.raises(ValueError):
        TrainablePoly(3)
    with pytest.raises(ValueError):
        TrainablePoly(2, "pixel", (1, 2, 2))
    with pytest.raises(ValueError):
        TrainablePoly(2, "channel")


def test_range_recording():
    act = SwishPoly4(4)
    act.train()
    x1 = torch.linspace(-2, 1, 10_001)
    act(x1)
    assert act.range_min.item() == pytest.approx(-2)
    assert act.range_max.item() == pytest.approx(1)
    assert act.range_absq.item() == pytest.approx(torch.quantile(x1.abs(), 0.999).item())
    act(torch.linspace(-1, 3, 101))  # running min / max, max of percentiles
    assert act.range_min.item() == pytest.approx(-2) and act.range_max.item() == pytest.approx(3)
    assert act.range_absq.item() > 2.9
    before = act.range_max.clone()
    act.eval()
    act(torch.full((5,), 100.0))  # eval mode: no recording
    act.train()
    act.record_range = False
    act(torch.full((5,), 100.0))  # switched off
    assert torch.equal(act.range_max, before)
    assert {"range_min", "range_max", "range_absq"} <= set(act.state_dict())
    act.reset_range()
    assert act.range_max.item() == -float("inf")


def test_range_recording_needs_no_grad():
    act = TrainablePoly(2, "layer").train()
    x = torch.randn(8, requires_grad=True)
    act(x).sum().backward()
    assert not act.range_min.requires_grad


def test_poly_sgd_groups():
    model = build_model("ishiyama_mnist", "poly_channel")
    opt = poly_sgd(model, lr=0.1, poly_weight_decay=1e-2)
    assert all(g["nesterov"] for g in opt.param_groups)
    poly = next(g for g in opt.param_groups if g.get("name") == "poly")
    assert poly["weight_decay"] == 1e-2
    assert sum(p.numel() for p in poly["params"]) == 3 * (5 + 50)
    n_all = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_all == sum(p.numel() for p in model.parameters())


def test_all_are_poly_activations():
    for act in (Square(), SwishPoly4(5), TrainablePoly(2, "element", (2, 2, 2))):
        assert isinstance(act, PolyActivation)
        assert act.coefficients().shape[0] == act.degree + 1
