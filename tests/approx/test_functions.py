"""ReLU, max and max-pool from the composite sign, on random inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hecnn.approx.composite import composite_sign
from hecnn.approx.functions import (
    max_approx,
    max_tournament,
    maxpool2d_approx,
    maxpool_error_bound,
    relu_approx,
    tournament_bounds,
)

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(
    alpha=st.sampled_from([6, 8, 10, 12, 14]),
    B=st.floats(min_value=0.1, max_value=100.0),
    u=arrays(np.float64, 64, elements=finite),
)
def test_relu_within_bound(alpha: int, B: float, u: np.ndarray) -> None:
    s = composite_sign(alpha)
    x = u * B
    assert np.max(np.abs(relu_approx(x, s, B) - np.maximum(x, 0))) <= B * 2.0**-alpha


@settings(max_examples=30, deadline=None)
@given(
    alpha=st.sampled_from([6, 9, 11, 13]),
    a=arrays(np.float64, 64, elements=finite),
    b=arrays(np.float64, 64, elements=finite),
)
def test_max_within_bound(alpha: int, a: np.ndarray, b: np.ndarray) -> None:
    """Values in [−1, 1] → differences in [−2, 2] → B = 2, error <= 2·2^−α."""
    s = composite_sign(alpha)
    err = np.abs(max_approx(a, b, s, 2.0) - np.maximum(a, b))
    assert np.max(err) <= 2.0 * 2.0**-alpha
    # symmetric in its arguments up to rounding (max(a,b) = b + relu(a−b) = a + relu(b−a))
    np.testing.assert_allclose(max_approx(a, b, s, 2.0), max_approx(b, a, s, 2.0), atol=1e-12)


def test_tournament_bounds_grow_geometrically() -> None:
    assert tournament_bounds(1, 1.0, 0.01) == []
    assert len(tournament_bounds(4, 1.0, 0.01)) == 2
    assert len(tournament_bounds(9, 1.0, 0.01)) == 4
    np.testing.assert_allclose(tournament_bounds(4, 2.0, 0.01), [2.0, 2.04])


@settings(max_examples=20, deadline=None)
@given(
    alpha=st.sampled_from([7, 10, 14]),
    n=st.integers(min_value=2, max_value=9),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_tournament_max(alpha: int, n: int, seed: int) -> None:
    s = composite_sign(alpha)
    B = 3.0
    vals = list(np.random.default_rng(seed).uniform(-B, B, size=(n, 100)))
    got = max_tournament(vals, s, B, 2.0**-alpha)
    bound = maxpool_error_bound(n, B, 2.0**-alpha)
    assert np.max(np.abs(got - np.max(vals, axis=0))) <= bound


def test_maxpool2d_matches_torch_semantics() -> None:
    s = composite_sign(10)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 3, 8, 8))
    for k, stride in [(2, 2), (3, 2), (3, 3)]:
        got = maxpool2d_approx(x, k, stride, s, 1.0, 2.0**-10)
        ho = (8 - k) // stride + 1
        ref = np.empty((2, 3, ho, ho))
        for i in range(ho):
            for j in range(ho):
                ref[..., i, j] = x[
                    ..., i * stride : i * stride + k, j * stride : j * stride + k
                ].max(axis=(-1, -2))
        assert got.shape == ref.shape
        assert np.max(np.abs(got - ref)) <= maxpool_error_bound(k * k, 1.0, 2.0**-10)
