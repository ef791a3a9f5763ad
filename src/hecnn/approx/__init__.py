"""Polynomial approximation of ReLU and max-pooling for CKKS (Lee et al. 2021).

``sign(x)`` on ``[−1,−ε] ∪ [ε,1]`` is approximated by a composition ``p_k ∘ … ∘ p_1`` of odd
minimax polynomials (:mod:`.remez`, :mod:`.composite`); then ``ReLU(x) = x(1 + sign x)/2``
and ``max(a, b) = (a + b + (a − b) sign(a − b))/2`` (:mod:`.functions`). :mod:`.modules`
and :mod:`.convert` (which need torch, imported lazily) swap them into pre-trained models.
"""

from __future__ import annotations

from typing import Any

from hecnn.approx.composite import (
    DEPTH_OPTIMAL_DEGREES,
    CompositeSign,
    build_composite,
    composite_sign,
    max_error,
    relu_error,
)
from hecnn.approx.functions import max_approx, max_tournament, maxpool2d_approx, relu_approx
from hecnn.approx.remez import MinimaxResult, check_equioscillation, minimax_odd, minimax_sign

__all__ = [
    "DEPTH_OPTIMAL_DEGREES",
    "CompositeMaxPool2d",
    "CompositeReLU",
    "CompositeSign",
    "MinimaxResult",
    "approx_layers",
    "approximate",
    "build_composite",
    "check_equioscillation",
    "composite_sign",
    "max_approx",
    "max_error",
    "max_tournament",
    "maxpool2d_approx",
    "minimax_odd",
    "minimax_sign",
    "relu_approx",
    "relu_error",
    "trace_composite_leaves",
]

_LAZY = {
    "approximate": "hecnn.approx.convert",
    "trace_composite_leaves": "hecnn.approx.convert",
    "approx_layers": "hecnn.approx.convert",
    "CompositeReLU": "hecnn.approx.modules",
    "CompositeMaxPool2d": "hecnn.approx.modules",
}


def __getattr__(name: str) -> Any:
    """Torch-dependent names are imported on first use (keeps ``hecnn approx`` CLI fast)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hecnn.approx' has no attribute {name!r}")
