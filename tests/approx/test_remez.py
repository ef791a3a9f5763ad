"""Remez exchange: equioscillation theorem and known error values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hecnn.approx.remez import (
    RemezError,
    check_equioscillation,
    eval_power,
    minimax_odd,
    minimax_sign,
)


@pytest.mark.parametrize(
    ("degree", "eps"),
    [(3, 0.1), (5, 0.05), (7, 0.01), (13, 0.02), (15, 0.003), (27, 0.001), (31, 1e-4)],
)
def test_sign_equioscillates(degree: int, eps: float) -> None:
    res = minimax_sign(degree, eps)
    ok, e = check_equioscillation(res)
    m = (degree - 1) // 2
    assert ok, e
    assert len(res.reference) == m + 2  # n + 2 alternation points for n = m + 1 unknowns
    np.testing.assert_allclose(np.abs(e), res.error, rtol=1e-6)
    assert res.degree == degree
    assert np.all(res.coeffs[0::2] == 0.0)
    # the achieved error is the sup over [eps, 1] (dense check, power form)
    x = np.concatenate([np.linspace(eps, 1, 50_001), np.geomspace(eps, 1, 50_001)])
    sup = np.max(np.abs(eval_power(res.coeffs, x) - 1))
    assert sup <= res.error * (1 + 1e-5) + 1e-9
    assert sup >= res.error * (1 - 1e-5)


def test_degree_one_closed_form() -> None:
    """p(x) = c x on [a, 1]: best c = 2/(1 + a), error (1 − a)/(1 + a)."""
    a = 0.2
    res = minimax_sign(1, a)
    assert res.coeffs[1] == pytest.approx(2 / (1 + a), rel=1e-10)
    assert res.error == pytest.approx((1 - a) / (1 + a), rel=1e-10)


def test_other_odd_target() -> None:
    """A general odd target (sin on [0, π/2]) also equioscillates, with tiny error."""
    res = minimax_odd(np.sin, 0.0, np.pi / 2, 7)
    ok, e = check_equioscillation(res, np.sin, rtol=1e-4)
    assert ok, e
    assert 1e-9 < res.error < 1e-5


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        minimax_sign(4, 0.1)
    with pytest.raises(ValueError):
        minimax_sign(5, 1.2)
    assert issubclass(RemezError, Exception)


@settings(max_examples=6, deadline=None)
@given(
    m=st.integers(min_value=1, max_value=7),
    eps=st.floats(min_value=0.005, max_value=0.6),
)
def test_error_decreases_with_degree_and_eps(m: int, eps: float) -> None:
    d = 2 * m + 1
    r = minimax_sign(d, eps)
    assert check_equioscillation(r)[0]
    assert minimax_sign(d + 2, eps).error < r.error  # more freedom, strictly better
    assert minimax_sign(d, min(0.9, eps * 1.5)).error < r.error  # smaller gap, easier
