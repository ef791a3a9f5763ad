"""The Chebyshev evaluation schedule: depth-optimal, correct as an algebraic identity, stable."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hecnn.approx.composite import composite_sign
from hecnn.compile.chebyshev import (
    ChebNode,
    chebyshev_schedule,
    divide,
    t_depth,
    t_factors,
    to_chebyshev,
)

cheb = np.polynomial.chebyshev


def _t_values(x: np.ndarray, kmax: int) -> dict[int, np.ndarray]:
    """T_k by the schedule's own recurrence T_k = 2·T_a·T_b − T_c."""
    t = {0: np.ones_like(x), 1: x}
    for k in range(2, kmax + 1):
        a, b, c = t_factors(k)
        t[k] = 2 * t[a] * t[b] - t[c]
    return t


def _run_tree(node: ChebNode | None, c: np.ndarray, t: dict, level_budget: int) -> np.ndarray:
    """Plain mirror of the encrypted evaluator, checking every level constraint on the way."""
    if node is None:
        return np.full_like(t[1], c[0])
    assert node.budget == level_budget
    if not node.giant:
        for k in node.terms:
            assert t_depth(k) + 1 <= node.budget  # a scaled baby step lands within budget
        return c[0] + sum(c[k] * t[k] for k in node.terms)
    assert t_depth(node.giant) + 1 <= node.budget
    q, r = divide(c[: node.degree + 1], node.giant)
    if node.quotient is None:
        prod = q[0] * t[node.giant]
    else:
        prod = _run_tree(node.quotient, q, t, level_budget - 1) * t[node.giant]
    return prod + _run_tree(node.remainder, r, t, level_budget)


@settings(max_examples=60, deadline=None)
@given(
    degree=st.integers(1, 40),
    odd=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_schedule_is_depth_optimal_and_computes_the_polynomial(degree, odd, seed):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, degree + 1)
    if odd:
        c[0::2] = 0.0
        if degree % 2 == 0:
            degree -= 1
            c = c[: degree + 1]
    sch = chebyshev_schedule(c)
    assert sch.depth == math.ceil(math.log2(sch.degree + 1))
    x = np.linspace(-1, 1, 257)
    t = _t_values(x, 2 * (degree + 1))
    got = _run_tree(sch.tree, c, t, sch.depth)
    assert np.abs(got - cheb.chebval(x, c)).max() < 1e-9
    built = set(sch.powers)
    assert sch.tree.used() - {1} <= built  # every T_k read is built
    if odd:  # odd polynomials: only odd baby steps besides the power-of-two giants
        assert all(k % 2 or k & (k - 1) == 0 for k in built)


def test_product_counts_beat_one_product_per_degree():
    """BSGS-like: far fewer ciphertext products than the degree for the composite degrees."""
    for d in (7, 13, 15, 27, 29):
        c = np.zeros(d + 1)
        c[1::2] = 1.0
        sch = chebyshev_schedule(c)
        assert sch.products <= d // 2 + 3
    assert chebyshev_schedule(np.r_[0.0, 1.0, 0, 1, 0, 1, 0, 1]).products <= 5  # degree 7


def test_divide_is_an_identity():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(14, 3))
    q, r = divide(c, 8)
    x = np.linspace(-1, 1, 101)
    for j in range(3):
        lhs = cheb.chebval(x, c[:, j])
        rhs = cheb.chebval(x, q[:, j]) * cheb.chebval(x, np.eye(9)[8]) + cheb.chebval(x, r[:, j])
        assert np.allclose(lhs, rhs, atol=1e-12)


@pytest.mark.parametrize("alpha", [10, 12, 14])
def test_composite_components_are_small_in_the_chebyshev_basis(alpha):
    """The power-basis coefficients of α ≥ 12 components reach 10³–10⁵; Chebyshev ones stay O(1),
    and the conversion (with the stage's interval) reproduces the component exactly."""
    s = composite_sign(alpha)
    for i, comp in enumerate(s.components):
        radius = 1.0 if i == 0 else 1.0 + s.stage_errors[i - 1]
        c = to_chebyshev(np.asarray(comp), radius)
        assert np.abs(c).max() < 2.0
        assert not np.any(c[0::2])  # odd stays exactly odd
        u = np.linspace(-1, 1, 1001)
        ref = np.polynomial.polynomial.polyval(radius * u, comp)
        assert np.abs(cheb.chebval(u, c) - ref).max() < 1e-9 * max(1.0, np.abs(comp).max())
    assert max(np.abs(comp).max() for comp in composite_sign(14).components) > 1e4


def test_constant_and_zero_polynomials():
    assert chebyshev_schedule(np.array([2.5])).tree is None
    assert chebyshev_schedule(np.zeros(4)).depth == 0
