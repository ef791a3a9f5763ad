"""HE-friendly polynomial activations.

CKKS evaluates only additions and multiplications, so every non-linearity in an encrypted network
must be a polynomial. Each activation here subclasses :class:`PolyActivation`, which exposes what
the encrypted compiler reads:

* ``degree`` and ``coefficients()`` — a tensor of shape ``(degree + 1, *coef_shape)`` in
  ascending power order ``c0, c1, c2, ...`` (``coef_shape`` is ``()`` layer-wise, ``(C,)`` per
  channel, ``(C, H, W)`` per element);
* ``granularity`` — ``"layer"``, ``"channel"`` or ``"element"``;
* ``range_min`` / ``range_max`` / ``range_absq`` buffers — the input range seen in training
  (running min, max, and the max over batches of the 99.9th percentile of ``|x|``), so the
  compiler can check inputs stay where the polynomial is accurate;
* ``valid_range`` — the interval the polynomial was designed for, or ``None``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.fx
from torch import nn

__all__ = [
    "PolyActivation",
    "Square",
    "SwishPoly4",
    "TrainablePoly",
    "poly_param_groups",
    "poly_sgd",
    "swish_poly4_coefficients",
]

GRANULARITIES = ("layer", "channel", "element")


class PolyActivation(nn.Module):
    """Base of all polynomial activations: coefficients, granularity, input-range recording."""

    degree: int
    granularity: str = "layer"
    valid_range: tuple[float, float] | None = None
    #: the percentile of |x| kept in ``range_absq`` (robust to a few outliers)
    ABS_QUANTILE: ClassVar[float] = 0.999
    #: at most this many values per batch go into the percentile estimate
    QUANTILE_SAMPLE: ClassVar[int] = 1 << 16

    def __init__(self) -> None:
        super().__init__()
        self.record_range = True
        self.register_buffer("range_min", torch.tensor(math.inf))
        self.register_buffer("range_max", torch.tensor(-math.inf))
        self.register_buffer("range_absq", torch.tensor(0.0))

    def coefficients(self) -> torch.Tensor:  # pragma: no cover - abstract
        """Coefficients, shape ``(degree + 1, *coef_shape)``, ascending powers."""
        raise NotImplementedError

    @torch.no_grad()
    def _record(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        if flat.numel() == 0:
            return
        self.range_min.copy_(torch.minimum(self.range_min, flat.min()))
        self.range_max.copy_(torch.maximum(self.range_max, flat.max()))
        # an exact quantile sorts the whole activation map (slow on CPU, and torch.quantile
        # refuses > 16M elements): use a deterministic strided sample of at most 2^16 values
        if flat.numel() > self.QUANTILE_SAMPLE:
            flat = flat[:: -(-flat.numel() // self.QUANTILE_SAMPLE)]
        q = torch.quantile(flat.abs(), self.ABS_QUANTILE)
        self.range_absq.copy_(torch.maximum(self.range_absq, q))

    def reset_range(self) -> None:
        """Forget the recorded input range."""
        self.range_min.fill_(math.inf)
        self.range_max.fill_(-math.inf)
        self.range_absq.fill_(0.0)

    def maybe_record(self, x: torch.Tensor) -> None:
        """Record ``x``'s range in training mode with ``record_range`` on (not under fx tracing)."""
        if self.training and self.record_range and not isinstance(x, torch.fx.Proxy):
            self._record(x)

    def _coef_view(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Broadcast one coefficient slice (``coef_shape``) against ``x`` of shape (N, C, ...)."""
        if self.granularity == "channel":
            return c.reshape(1, -1, *([1] * (x.dim() - 2)))
        return c  # layer: scalar; element: (C, H, W) broadcasts against (N, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Horner evaluation of the polynomial (fx-traceable: the loop is over the fixed degree)."""
        self.maybe_record(x)
        coefs = self.coefficients()
        y = self._coef_view(coefs[self.degree], x)
        for k in range(self.degree - 1, -1, -1):
            y = y * x + self._coef_view(coefs[k], x)
        return y

    def extra_repr(self) -> str:
        return f"degree={self.degree}, granularity={self.granularity!r}"


class Square(PolyActivation):
    """``x ↦ x²`` (CryptoNets). One ciphertext multiplication, one level; unbounded growth."""

    degree = 2

    def coefficients(self) -> torch.Tensor:
        return torch.tensor([0.0, 0.0, 1.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_record(x)
        return x * x


def swish_poly4_coefficients(r: float, points: int = 200_001) -> np.ndarray:
    """Least-squares degree-4 fit of Swish ``x·σ(x)`` on a uniform grid of ``[-r, r]``.

    Swish(x) = x/2 + x·tanh(x/2)/2: the odd part is exactly ``x/2`` and the rest is even, so on a
    symmetric grid the fit has ``c1 = 0.5`` and ``c3 = 0``; we set those exactly and fit the even
    part with ``{1, x², x⁴}``. Returns ``[c0, c1, c2, c3, c4]`` (ascending powers).
    """
    if not r > 0:
        raise ValueError(f"range r must be positive, got {r}")
    x = np.linspace(-r, r, points)
    even = 0.5 * x * np.tanh(x / 2)  # swish(x) - x/2
    basis = np.stack([np.ones_like(x), x**2, x**4], axis=1)
    (c0, c2, c4), *_ = np.linalg.lstsq(basis, even, rcond=None)
    return np.array([c0, 0.5, c2, 0.0, c4])


class SwishPoly4(PolyActivation):
    """Degree-4 least-squares approximation of Swish on ``[-r, r]`` (fixed, not trained).

    Put a BatchNorm immediately before it so inputs stay inside ``[-r, r]``: outside, the negative
    ``x⁴`` term makes the polynomial dive. r=4: ``0.03347 + 0.5x + 0.19566x² - 0.005075x⁴``.
    """

    degree = 4

    def __init__(self, r: float = 4.0) -> None:
        super().__init__()
        self.r = float(r)
        self.valid_range = (-self.r, self.r)
        coefs = torch.tensor(swish_poly4_coefficients(self.r), dtype=torch.float32)
        self.register_buffer("coefs", coefs)

    def coefficients(self) -> torch.Tensor:
        return self.coefs

    def extra_repr(self) -> str:
        return f"r={self.r:g}, " + super().extra_repr()


def relu_quadratic_fit(lo: float, hi: float, points: int = 20_001) -> tuple[float, float, float]:
    """Least-squares ``a·x² + b·x + c`` fit of ReLU on a uniform grid of ``[lo, hi]``."""
    x = np.linspace(lo, hi, points)
    a, b, c = np.polyfit(x, np.maximum(x, 0.0), 2)
    return float(a), float(b), float(c)


class TrainablePoly(PolyActivation):
    """Trainable ``a·x² + b·x + c`` with one coefficient triple per layer, channel or element.

    Initialisation: the least-squares quadratic fit of ReLU on ``init_range`` (default
    ``[-3, 3]``: after BatchNorm inputs are roughly standard normal, so ±3 covers 99.7 % of them).
    On [-3, 3] that fit is about ``0.1563x² + 0.5x + 0.2813``. Train the coefficients with
    :func:`poly_sgd` (SGD + Nesterov momentum, L2 weight decay on the coefficients keeps ``a``
    small, which keeps activations — and CKKS scale growth — bounded).

    ``shape`` is the activation input's ``(C, H, W)``: needed for ``"channel"`` (``C``) and
    ``"element"`` (all three).
    """

    def __init__(
        self,
        degree: int = 2,
        granularity: str = "layer",
        shape: tuple[int, ...] | None = None,
        init_range: tuple[float, float] = (-3.0, 3.0),
    ) -> None:
        super().__init__()
        if degree != 2:
            raise ValueError("TrainablePoly supports degree=2 (a·x² + b·x + c)")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if granularity == "layer":
            pshape: tuple[int, ...] = (1,)
        elif shape is None:
            raise ValueError(f"granularity={granularity!r} needs shape=(C, H, W)")
        elif granularity == "channel":
            pshape = (int(shape[0]),)
        else:
            pshape = tuple(int(s) for s in shape)
        self.degree = degree
        self.granularity = granularity
        self.init_range = init_range
        a, b, c = relu_quadratic_fit(*init_range)
        self.a = nn.Parameter(torch.full(pshape, a))
        self.b = nn.Parameter(torch.full(pshape, b))
        self.c = nn.Parameter(torch.full(pshape, c))

    @property
    def coef_shape(self) -> tuple[int, ...]:
        return () if self.granularity == "layer" else tuple(self.a.shape)

    def coefficients(self) -> torch.Tensor:
        coefs = torch.stack([self.c, self.b, self.a])
        return coefs.reshape(3, *self.coef_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_record(x)
        if self.granularity == "channel":
            view = (1, -1) + (1,) * (x.dim() - 2)
            a, b, c = self.a.reshape(view), self.b.reshape(view), self.c.reshape(view)
        else:  # layer: shape (1,) broadcasts; element: (C, H, W) broadcasts over the batch
            a, b, c = self.a, self.b, self.c
        return (a * x + b) * x + c

    def extra_repr(self) -> str:
        return super().extra_repr() + f", coef_shape={self.coef_shape}"


def poly_param_groups(
    model: nn.Module, weight_decay: float = 5e-4, poly_weight_decay: float = 1e-3
) -> list[dict]:
    """Split ``model``'s parameters into [other, poly-coefficient] optimizer groups.

    The poly coefficients get their own (L2) weight decay so the square term can be pulled
    towards zero independently of the convolution weights.
    """
    poly_ids = {
        id(p) for m in model.modules() if isinstance(m, TrainablePoly) for p in m.parameters()
    }
    poly = [p for p in model.parameters() if id(p) in poly_ids]
    other = [p for p in model.parameters() if id(p) not in poly_ids]
    groups = [{"params": other, "weight_decay": weight_decay}]
    if poly:
        groups.append({"params": poly, "weight_decay": poly_weight_decay, "name": "poly"})
    return groups


def poly_sgd(
    model: nn.Module,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    poly_weight_decay: float = 1e-3,
) -> torch.optim.SGD:
    """Default optimizer for models with trainable polys: SGD, Nesterov momentum, L2 decay."""
    groups = poly_param_groups(model, weight_decay, poly_weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
