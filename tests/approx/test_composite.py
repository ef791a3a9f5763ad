"""Composite sign approximation: shipped cache meets the precision targets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hecnn.approx.composite import (
    CACHE_PATH,
    DEPTH_OPTIMAL_DEGREES,
    CompositeSign,
    build_composite,
    composite_sign,
    load_cache,
    relu_error,
    relu_error_parts,
)
from hecnn.approx.remez import eval_power

ALPHAS = sorted(DEPTH_OPTIMAL_DEGREES)
EXPECTED_DEPTH = {4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8, 10: 10, 11: 11, 12: 12, 13: 13, 14: 14}


def test_cache_is_complete() -> None:
    cache = load_cache()
    assert sorted(cache) == ALPHAS
    data = json.loads(CACHE_PATH.read_text())
    assert data["generated_by"] == "python -m hecnn.approx --write-cache"


@pytest.mark.parametrize("alpha", ALPHAS)
def test_relu_error_below_two_to_minus_alpha(alpha: int) -> None:
    s = composite_sign(alpha)
    assert s.degrees == DEPTH_OPTIMAL_DEGREES[alpha]
    assert s.depth == EXPECTED_DEPTH[alpha]
    assert s.sign_error <= 2.0 ** (1 - alpha)
    transition, outer = relu_error_parts(s)
    assert transition <= 2.0**-alpha
    assert outer <= 2.0**-alpha
    assert relu_error(s) <= 2.0**-alpha
    # … and it is a tight construction: within 1 % of the target
    assert relu_error(s) >= 0.99 * 2.0**-alpha


@pytest.mark.parametrize("alpha", ALPHAS)
def test_sign_error_and_oddness(alpha: int) -> None:
    s = composite_sign(alpha)
    x = np.linspace(s.eps, 1.0, 20_001)
    # stage errors are exact per stage; composing in floating point adds ~1e-4 relative,
    # which the 1e-3 slack of build_composite absorbs
    sup = np.max(np.abs(s.eval(x) - 1))
    assert sup <= s.sign_error * (1 + 1e-3)
    assert sup <= 2.0 ** (1 - alpha)
    np.testing.assert_allclose(s.eval(-x), -s.eval(x), rtol=0, atol=1e-12)
    # each stage maps the previous image interval into [1 − δ_i, 1 + δ_i]
    for (lo, hi), comp, d in zip(s.intervals, s.components, s.stage_errors, strict=True):
        y = eval_power(comp, np.linspace(lo, hi, 5001))
        assert np.all(np.abs(y - 1) <= d * (1 + 1e-5))


def test_roundtrip_dict() -> None:
    s = composite_sign(9)
    t = CompositeSign.from_dict(json.loads(json.dumps(s.to_dict())))
    assert t == s
    x = np.linspace(-1, 1, 101)
    np.testing.assert_array_equal(t.eval(x), s.eval(x))


def test_build_small_matches_cache() -> None:
    """Recomputing α = 4 on demand reproduces the shipped entry."""
    s = build_composite(DEPTH_OPTIMAL_DEGREES[4], 4)
    c = composite_sign(4)
    assert s.eps == pytest.approx(c.eps, rel=1e-6)
    np.testing.assert_allclose(s.components[0], c.components[0], rtol=1e-6, atol=1e-9)


def test_custom_degrees() -> None:
    """Any degree sequence: fewer bisection steps give a larger ε but still meet the target."""
    s = build_composite((3, 3), 5, iters=12)
    assert s.degrees == (3, 3)
    assert s.sign_error <= 2.0**-4 * (1 - 1e-3)
    assert relu_error(s) <= 2.0**-5


@pytest.mark.slow
@pytest.mark.parametrize("alpha", ALPHAS)
def test_regenerate_matches_cache(alpha: int) -> None:
    s = build_composite(DEPTH_OPTIMAL_DEGREES[alpha], alpha)
    c = composite_sign(alpha)
    assert s.eps == pytest.approx(c.eps, rel=1e-6)
    for a, b in zip(s.components, c.components, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
