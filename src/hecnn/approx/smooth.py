"""Polynomial fits of smooth activations (SiLU, GELU, Sigmoid) on a calibrated range.

Why a fit and not a composite. Smooth activations are already close to low-degree polynomials on
a bounded interval, so a single least-squares fit in the Chebyshev basis (sampled at Chebyshev
points of ``[−B, B]``, which avoids Runge oscillation at the ends) costs ``ceil(log2(d+1))``
levels instead of a composite sign's chain. The fit is only meaningful on ``[−B, B]`` — outside
it the polynomial diverges — so ``B`` comes from calibration data (``margin · max|input|``),
exactly like the composite ReLU's bound.

The result is a :class:`FittedPoly`, a :class:`hecnn.nn.activations.PolyActivation` with fixed
coefficients: the compiler treats it like any hecnn activation (BN before it folds, its leading
coefficient folds into the next layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from hecnn.nn.activations import PolyActivation

__all__ = ["SMOOTH_FUNCTIONS", "FittedPoly", "fit_smooth", "smooth_name"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


#: exact float64 references, by name
SMOOTH_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "gelu": _gelu,
}

_TORCH_EXACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "gelu": F.gelu,
}


def smooth_name(m: nn.Module) -> str | None:
    """``"sigmoid"`` / ``"silu"`` / ``"gelu"`` for the modules we can fit, else ``None``."""
    if isinstance(m, nn.Sigmoid):
        return "sigmoid"
    if isinstance(m, nn.SiLU):
        return "silu"
    if isinstance(m, nn.GELU):
        return "gelu"
    return None


def fit_smooth(name: str, bound: float, degree: int) -> np.ndarray:
    """Ascending power coefficients of the least-squares degree-``degree`` fit of ``name`` on
    ``[−bound, bound]`` (Chebyshev basis on 8·(degree+1) Chebyshev points, then converted)."""
    if name not in SMOOTH_FUNCTIONS:
        raise ValueError(f"no smooth function {name!r}; have {sorted(SMOOTH_FUNCTIONS)}")
    if degree < 1 or not bound > 0:
        raise ValueError(f"need degree ≥ 1 and bound > 0, got {degree}, {bound}")
    m = 8 * (degree + 1)
    x = bound * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    cheb = np.polynomial.Chebyshev.fit(x, SMOOTH_FUNCTIONS[name](x), degree, domain=[-bound, bound])
    return cheb.convert(kind=np.polynomial.Polynomial).coef.astype(np.float64)


class FittedPoly(PolyActivation):
    """A fixed polynomial fit of a smooth activation, valid on ``[−bound, bound]``."""

    granularity = "layer"

    def __init__(self, name: str, bound: float, degree: int) -> None:
        super().__init__()
        self.function = name
        self.bound = float(bound)
        self.degree = int(degree)
        self.valid_range = (-self.bound, self.bound)
        self.record_range = False
        self.register_buffer(
            "coefs", torch.tensor(fit_smooth(name, bound, degree), dtype=torch.float64)
        )
        self.range_min.fill_(-self.bound)
        self.range_max.fill_(self.bound)

    def coefficients(self) -> torch.Tensor:
        return self.coefs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Horner in float64 (large-range fits have tiny high coefficients)."""
        x64 = x.double()
        y = torch.zeros_like(x64) + float(self.coefs[-1])
        for c in reversed(self.coefs[:-1].tolist()):
            y = y * x64 + c
        return y.type_as(x)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The function this polynomial approximates (for measured errors)."""
        return _TORCH_EXACT[self.function](x)

    def max_error_on_range(self, points: int = 4001) -> float:
        """Sup error of the fit on ``[−bound, bound]`` (dense grid)."""
        x = np.linspace(-self.bound, self.bound, points)
        p = np.polynomial.polynomial.polyval(x, self.coefs.numpy())
        return float(np.abs(p - SMOOTH_FUNCTIONS[self.function](x)).max())

    def extra_repr(self) -> str:
        return f"{self.function}, degree={self.degree}, bound={self.bound:.4g}"
