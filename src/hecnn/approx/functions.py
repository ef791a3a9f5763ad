"""ReLU, max and max-pooling from a composite sign approximation (numpy reference).

With ``P ≈ sign`` on ``[−1, 1]`` and ``e_α = sup_{u∈[−1,1]} |u|·|P(u) − sign(u)|/2``
(``<= 2^(−α)``, see :mod:`hecnn.approx.composite`):

* ``ReLU(x) = x(1 + sign x)/2 ≈ x(1 + P(x/B))/2`` for ``|x| <= B``;
  error ``= B·|u|·|P(u) − sign u|/2 <= B·e_α`` with ``u = x/B``.
* ``max(a, b) = (a + b + (a − b) sign(a − b))/2 ≈ (a + b + (a − b) P((a − b)/B))/2`` for
  ``|a − b| <= B``; it equals ``b + relu_approx(a − b)``, so the error is ``<= B·e_α``.
* ``k×k`` max-pool = a tournament of pairwise maxima (depth ``ceil(log2 k²)`` rounds, so
  the multiplicative depth is ``ceil(log2 k²)·depth(P)`` instead of ``(k² − 1)·depth(P)``).

Max-pool rescaling. If every input lies in ``[−B, B]`` the differences lie in
``[−2B, 2B]``, so round 1 uses ``P((a − b)/(2B))``, error ``<= 2B·e_α``. The result is a
true max of values in ``[−B, B]`` plus that error, so it lies in ``[−B_1, B_1]`` with
``B_1 = B(1 + 2e_α)``; round ``r`` uses ``B_r = B(1 + 2e_α)^r`` (affine rescaling by
``1/(2B_r)``) which keeps every difference inside ``[−1, 1]``, where ``P`` is controlled.
Because ``max`` is 1-Lipschitz in each argument the errors add over rounds:
``|pool_approx − pool| <= Σ_{r<R} 2 B_r e_α ≈ 2 R B e_α`` (:func:`maxpool_error_bound`).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

__all__ = [
    "max_approx",
    "max_tournament",
    "maxpool2d_approx",
    "maxpool_error_bound",
    "relu_approx",
    "tournament_bounds",
]


class SignApprox(Protocol):
    def eval(self, x: np.ndarray) -> np.ndarray: ...


def relu_approx(x: np.ndarray, sign: SignApprox, B: float) -> np.ndarray:
    """``x(1 + P(x/B))/2``; error ``<= B·2^(−α)`` for ``|x| <= B``."""
    x = np.asarray(x, dtype=float)
    return x * (1.0 + sign.eval(x / B)) / 2.0


def max_approx(a: np.ndarray, b: np.ndarray, sign: SignApprox, B: float) -> np.ndarray:
    """``(a + b + (a − b)·P((a − b)/B))/2``; error ``<= B·2^(−α)`` for ``|a − b| <= B``."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    d = a - b
    return (a + b + d * sign.eval(d / B)) / 2.0


def tournament_bounds(n: int, B: float, e_alpha: float) -> list[float]:
    """Value bounds ``B_r = B(1 + 2e_α)^r`` for each of the ``ceil(log2 n)`` rounds."""
    rounds = max(0, math.ceil(math.log2(n))) if n > 1 else 0
    return [B * (1.0 + 2.0 * e_alpha) ** r for r in range(rounds)]


def maxpool_error_bound(n: int, B: float, e_alpha: float) -> float:
    """``Σ_r 2 B_r e_α``: sup-error of a tournament max of ``n`` values in ``[−B, B]``."""
    return sum(2.0 * br * e_alpha for br in tournament_bounds(n, B, e_alpha))


def max_tournament(
    values: list[np.ndarray], sign: SignApprox, B: float, e_alpha: float
) -> np.ndarray:
    """Max of ``values`` (each in ``[−B, B]``) by pairwise :func:`max_approx` rounds.

    Round ``r`` compares with bound ``2·B_r`` (see module docstring); an odd element out
    passes to the next round unchanged.
    """
    vals = list(values)
    for br in tournament_bounds(len(vals), B, e_alpha):
        nxt = [max_approx(vals[i], vals[i + 1], sign, 2.0 * br) for i in range(0, len(vals) - 1, 2)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


def maxpool2d_approx(
    x: np.ndarray, kernel: int, stride: int | None, sign: SignApprox, B: float, e_alpha: float
) -> np.ndarray:
    """``kernel×kernel`` max-pool (no padding) over the last two axes of ``x``."""
    stride = stride or kernel
    h, w = x.shape[-2:]
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    windows = [
        x[..., i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(kernel)
        for j in range(kernel)
    ]
    return max_tournament(windows, sign, B, e_alpha)
