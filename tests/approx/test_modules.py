"""Torch modules agree with the numpy reference and torch's exact layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hecnn.approx.composite import CompositeSign, composite_sign
from hecnn.approx.functions import relu_approx
from hecnn.approx.modules import CompositeMaxPool2d, CompositeReLU, eval_composite


def test_eval_composite_matches_numpy() -> None:
    s = composite_sign(12)
    x = np.linspace(-1, 1, 4001)
    np.testing.assert_allclose(eval_composite(s, torch.tensor(x)).numpy(), s.eval(x), atol=1e-9)
    lin = CompositeSign(((0.0, 2.0),), eps=0.5)  # degree 1 and 3 edge cases
    assert float(eval_composite(lin, torch.tensor([0.25]))) == 0.5
    cub = CompositeSign(((0.0, 2.0, 0.0, 1.0),), eps=0.5)
    assert float(eval_composite(cub, torch.tensor([0.5]))) == 1.125


@settings(max_examples=8, deadline=None)
@given(alpha=st.sampled_from([6, 9, 12, 14]), B=st.floats(0.5, 50.0), seed=st.integers(0, 999))
def test_relu_module(alpha: int, B: float, seed: int) -> None:
    s = composite_sign(alpha)
    x = (torch.rand(500, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * B
    m = CompositeReLU(s, B)
    y = m(x)
    assert y.dtype == torch.float32
    np.testing.assert_allclose(
        m(x.double()).numpy(),
        relu_approx(x.double().numpy(), s, B),
        rtol=0,
        atol=1e-7 * B,  # Horner in y² vs in y: rounding ~1e-8
    )
    assert float((y - torch.relu(x)).abs().max()) <= m.error_bound + 1e-6 * B


@pytest.mark.parametrize(("k", "stride", "pad"), [(2, 2, 0), (3, 2, 1), (3, 1, 0), (2, 1, 1)])
def test_maxpool_module(k: int, stride: int, pad: int) -> None:
    s = composite_sign(10)
    B = 2.0
    x = (torch.rand(3, 4, 9, 9, generator=torch.Generator().manual_seed(k)) * 2 - 1) * B
    m = CompositeMaxPool2d(k, stride, s, B, padding=pad)
    ref = torch.nn.functional.max_pool2d(x.double(), k, stride, pad)
    got = m(x.double())
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= m.error_bound
    assert len(m.round_bounds) == int(np.ceil(np.log2(k * k)))


def test_bad_arguments() -> None:
    s = composite_sign(8)
    with pytest.raises(ValueError):
        CompositeReLU(s, 0.0)
    with pytest.raises(ValueError):
        CompositeMaxPool2d(2, 2, None, 1.0)
