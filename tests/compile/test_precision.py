"""The compiler's precision guard: simulated CKKS noise → predicted label agreement → a larger
scale where the plan's own would lose labels (compile_model(min_agreement=…))."""

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from hecnn.compile import compile_model
from hecnn.compile.noise import margin_agreement
from hecnn.nn.activations import SwishPoly4


def test_margin_agreement_is_the_gaussian_flip_model():
    """Margins of 1 with an RMS top-1 − top-2 error of 1: each image flips with Φ(−1);
    halving the error (one more bit of scale) gives Φ(−2); no error, no flips."""
    ref = np.zeros((1000, 3))
    ref[:, 0] = 1.0  # class 0 leads class 1 by exactly 1
    err = np.zeros_like(ref)
    err[::2, 0], err[1::2, 0] = 1.0, -1.0  # RMS 1 on the difference
    assert margin_agreement(ref, err) == pytest.approx(100 * (1 - norm.sf(1.0)))
    assert margin_agreement(ref, err, 0.5) == pytest.approx(100 * (1 - norm.sf(2.0)))
    assert margin_agreement(ref, np.zeros_like(ref)) == 100.0
    assert margin_agreement(ref[:, :1], err[:, :1]) == 100.0  # one output: no label to flip


def _deep_swish(last_gain: float) -> nn.Module:
    """Four Linear → degree-4 Swish layers (depth 13: at 2^14 the ring holds a 2^28 scale)
    and a classifier scaled by ``last_gain`` (smaller: narrower logit margins)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(16, 16), SwishPoly4()]
    net = nn.Sequential(*layers, nn.Linear(16, 10)).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.5)
        net[-1].weight.mul_(last_gain)
        net[-1].bias.zero_()
    return net


def test_scale_raised_where_noise_would_flip_labels():
    """Narrow margins: at the 2^28 that keeps N = 2^14 the simulation predicts ~95 % of the
    labels kept; the compiler moves to 2^30 (N = 2^15), says why, and warns that even that
    falls short of the 99.9 % asked."""
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    net = _deep_swish(1.0)
    fast = compile_model(net, (16,), batch=4096, calib=x, min_agreement=None)
    assert fast.params.scale == 2.0**28 and fast.params.n == 16384
    assert fast.predicted_agreement is None
    safe = compile_model(net, (16,), batch=4096, calib=x)
    assert safe.params.scale == 2.0**30 and safe.params.n == 32768
    assert safe.levels == fast.levels
    decision = [d for d in safe.decisions if d.startswith("scale 2^28 → 2^30")]
    assert decision and "calibration images" in decision[0]
    assert 90.0 < safe.predicted_agreement < 99.9
    assert any("predicts" in w for w in safe.warnings)
    assert "label agreement predicted" in safe.summary()


def test_scale_kept_where_the_margins_are_wide():
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    net = _deep_swish(16.0)
    plan = compile_model(net, (16,), batch=4096, calib=x)
    unchecked = compile_model(net, (16,), batch=4096, calib=x, min_agreement=None)
    assert plan.params == unchecked.params and plan.predicted_agreement >= 99.9
    assert not plan.warnings and not any(d.startswith("scale") for d in plan.decisions)
