"""PyTorch modules that replace ReLU / MaxPool2d by composite polynomials (plaintext).

They compute exactly what an encrypted evaluation would compute (up to CKKS noise), in
float64 so that the simulation error is the approximation error, not float32 rounding
of large coefficients. ``forward`` uses only tensor arithmetic with Python-float constants,
so the modules are ``torch.fx`` traceable; a compiler can also treat them as leaves and
read :attr:`sign` (components, ascending power coefficients, applied first to last) and
:attr:`bound` (the ``B`` of the rescaling ``x ↦ x/B``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from hecnn.approx.composite import CompositeSign
from hecnn.approx.functions import tournament_bounds

__all__ = ["CompositeMaxPool2d", "CompositeReLU", "eval_composite"]


def _odd_horner(y: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """``p(y) = y·q(y²)`` with ``q`` from the odd-position coefficients (Horner in ``y²``)."""
    odd = coeffs[1::2]
    if len(odd) == 1:
        return y * odd[0]
    y2 = y * y
    acc = y2 * odd[-1]
    for c in reversed(odd[1:-1]):
        acc.add_(c).mul_(y2)  # in place: these tensors are large and memory-bound
    return acc.add_(odd[0]).mul_(y)


def eval_composite(sign: CompositeSign, y: torch.Tensor) -> torch.Tensor:
    """``P(y) = p_k(…p_1(y))`` on a tensor (dtype preserved)."""
    for comp in sign.components:
        y = _odd_horner(y, comp)
    return y


def _e_alpha(sign: CompositeSign) -> float:
    """Guaranteed ReLU sup-error on ``[−1, 1]`` of ``sign``: ``2^(−α)`` (or measured)."""
    if sign.alpha is not None:
        return 2.0 ** (-float(sign.alpha))
    from hecnn.approx.composite import relu_error

    return relu_error(sign)


class CompositeReLU(nn.Module):
    """``ReLU(x) ≈ x(1 + P(x/B))/2``; error ``<= B·2^(−α)`` when ``|x| <= B``."""

    def __init__(self, sign: CompositeSign, bound: float) -> None:
        super().__init__()
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.sign = sign
        self.bound = float(bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x64 = x.double()
        p = eval_composite(self.sign, x64 * (1.0 / self.bound))
        return (x64 * (1.0 + p) * 0.5).type_as(x)

    @property
    def error_bound(self) -> float:
        """Sup-error guaranteed for inputs in ``[−B, B]``."""
        return self.bound * _e_alpha(self.sign)

    def extra_repr(self) -> str:
        return f"degrees={self.sign.degrees}, alpha={self.sign.alpha}, bound={self.bound:.4g}"


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class CompositeMaxPool2d(nn.Module):
    """``k×k`` max-pool as a tournament of ``max(a,b) ≈ (a + b + (a−b)P((a−b)/(2B_r)))/2``.

    Inputs must lie in ``[−B, B]`` (``B`` = :attr:`bound`); round ``r`` uses the value bound
    ``B_r = B(1 + 2·2^(−α))^r`` (see :mod:`hecnn.approx.functions`), listed in
    :attr:`round_bounds`. Padding uses the value ``−B`` (never larger than a real input),
    the polynomial analogue of the ``−∞`` padding of :class:`torch.nn.MaxPool2d`.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        sign: CompositeSign | None = None,
        bound: float = 1.0,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        if sign is None:
            raise ValueError("sign (a CompositeSign) is required")
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)
        self.sign = sign
        self.bound = float(bound)
        n = self.kernel_size[0] * self.kernel_size[1]
        self.round_bounds = tuple(tournament_bounds(n, self.bound, _e_alpha(sign)))

    @property
    def error_bound(self) -> float:
        """``Σ_r 2 B_r 2^(−α)``: sup-error for inputs in ``[−B, B]``."""
        return sum(2.0 * br * _e_alpha(self.sign) for br in self.round_bounds)

    def _max(self, a: torch.Tensor, b: torch.Tensor, br: float) -> torch.Tensor:
        d = a - b
        return (a + b + d * eval_composite(self.sign, d * (1.0 / (2.0 * br)))) * 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x64 = x.double()
        ph, pw = self.padding
        if ph or pw:
            x64 = F.pad(x64, (pw, pw, ph, ph), value=-self.bound)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        win = x64.unfold(-2, kh, sh).unfold(-2, kw, sw)  # (..., Ho, Wo, kh, kw)
        vals = [win[..., i, j] for i in range(kh) for j in range(kw)]
        for br in self.round_bounds:
            nxt = [self._max(vals[i], vals[i + 1], br) for i in range(0, len(vals) - 1, 2)]
            if len(vals) % 2:
                nxt.append(vals[-1])
            vals = nxt
        return vals[0].type_as(x)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"degrees={self.sign.degrees}, alpha={self.sign.alpha}, bound={self.bound:.4g}, "
            f"rounds={len(self.round_bounds)}, depth={len(self.round_bounds) * self.sign.depth}"
        )
