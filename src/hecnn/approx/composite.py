"""Composite minimax approximation of ``sign`` (Lee et al. 2021) for a precision ``α``.

Construction. For degrees ``(d_1, …, d_k)`` and a gap ``ε``:

* ``p_1`` = minimax odd polynomial of degree ``d_1`` for ``sign`` on ``[ε, 1]``; its
  error ``δ_1`` equioscillates, so ``p_1([ε, 1]) = [1 − δ_1, 1 + δ_1]``;
* ``p_i`` = minimax odd polynomial of degree ``d_i`` for ``1`` on the image interval
  ``[1 − δ_{i−1}, 1 + δ_{i−1}]`` of the previous stage, error ``δ_i``.

Then ``P = p_k ∘ … ∘ p_1`` satisfies ``|P(x) − sign(x)| <= δ_k`` on ``[−1,−ε] ∪ [ε,1]``
(oddness gives the negative half). ``δ_k`` decreases as ``ε`` grows; we bisect (in
``log ε``) for the smallest ``ε`` with ``δ_k <= 2^(1−α)``.

Why ``2^(1−α)`` and the smallest ``ε``. With ``ReLU(x) ≈ x(1 + P(x))/2`` the error is
``|x|·|1 − P(|x|)|/2`` for every ``x`` (oddness: ``1 + P(−y) = 1 − P(y)``), so

* on ``ε <= |x| <= 1``: error ``<= |x| δ_k / 2 <= δ_k / 2 <= 2^(−α)``, attained near
  ``|x| = 1`` where the equioscillation peaks have full weight;
* on ``|x| < ε`` (the transition region) the error is ``|x|(1 − P(|x|))/2``: ``P`` rises
  from 0 to ``1 − δ_k`` with slope ``P'(0) = Π p_i'(0) ≈ (1 … 2.3)/ε`` (α = 4 … 14), so
  ``1 − P`` is small wherever ``|x|`` is not, and the product stays below ``2^(−α)``
  although ``ε`` itself is much larger than ``2^(−α)`` (``ε ≈ 0.28`` for ``α = 4``,
  ``≈ 0.001`` for ``α = 14``). This part is not covered
  by the minimax theory; it grows with ``ε``, which is why we take the smallest ``ε``, and
  :func:`relu_error_parts` measures it (stored in the cache, asserted by the tests).

Hence ``sup_{[−1,1]} |ReLU − approx| <= 2^(−α)``; :func:`relu_error` measures it on a dense
grid. Multiplicative depth of evaluating ``p_i`` (Paterson–Stockmeyer / baby-step
giant-step on odd polynomials) is ``ceil(log2(d_i + 1))``; the depth is the sum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from hecnn.approx.remez import MinimaxResult, RemezError, eval_power, minimax_odd, minimax_sign

__all__ = [
    "CACHE_PATH",
    "DEPTH_OPTIMAL_DEGREES",
    "CompositeSign",
    "build_composite",
    "composite_for_eps",
    "composite_sign",
    "load_cache",
    "max_error",
    "relu_error",
    "relu_error_parts",
    "write_cache",
]

#: Depth-optimal degree sequences for precision α (Lee et al. 2021, Table 2).
DEPTH_OPTIMAL_DEGREES: dict[int, tuple[int, ...]] = {
    4: (5,),
    5: (13,),
    6: (3, 7),
    7: (7, 7),
    8: (7, 15),
    9: (15, 15),
    10: (7, 7, 13),
    11: (7, 7, 27),
    12: (7, 15, 27),
    13: (15, 15, 27),
    14: (15, 27, 29),
}

CACHE_PATH = Path(__file__).with_name("coeffs_cache.json")
CACHE_COMMAND = "python -m hecnn.approx --write-cache"


@dataclass(frozen=True)
class CompositeSign:
    """``P = p_k ∘ … ∘ p_1`` approximating ``sign`` on ``[−1,−ε] ∪ [ε,1]``.

    ``components[i]`` are the ascending power coefficients of ``p_(i+1)`` (applied first to
    last), ``stage_errors[i] = δ_(i+1)`` and ``intervals[i]`` the interval ``p_(i+1)`` was
    optimised on. ``alpha`` is the target precision (ReLU sup-error ``<= 2^(−α)``).
    """

    components: tuple[tuple[float, ...], ...]
    eps: float
    alpha: float | None = None
    stage_errors: tuple[float, ...] = ()
    intervals: tuple[tuple[float, float], ...] = ()
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def degrees(self) -> tuple[int, ...]:
        return tuple(len(c) - 1 for c in self.components)

    @property
    def depth(self) -> int:
        """Multiplicative depth ``Σ ceil(log2(d_i + 1))``."""
        return sum(math.ceil(math.log2(d + 1)) for d in self.degrees)

    @property
    def sign_error(self) -> float:
        """``δ_k``: the guaranteed ``|P − sign|`` on ``[ε, 1]``."""
        return self.stage_errors[-1] if self.stage_errors else float("nan")

    def eval(self, x: np.ndarray | float) -> np.ndarray:
        """Evaluate ``P(x)`` in float64 by Horner on each component, first to last."""
        y = np.asarray(x, dtype=float)
        for c in self.components:
            y = eval_power(c, y)
        return y

    __call__ = eval

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "eps": self.eps,
            "degrees": list(self.degrees),
            "depth": self.depth,
            "stage_errors": list(self.stage_errors),
            "intervals": [list(iv) for iv in self.intervals],
            "components": [list(c) for c in self.components],
            **({"meta": self.meta} if self.meta else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CompositeSign:
        return cls(
            components=tuple(tuple(float(v) for v in c) for c in d["components"]),
            eps=float(d["eps"]),
            alpha=d.get("alpha"),
            stage_errors=tuple(float(v) for v in d.get("stage_errors", ())),
            intervals=tuple((float(a), float(b)) for a, b in d.get("intervals", ())),
            meta=dict(d.get("meta", {})),
        )


def composite_for_eps(degrees: tuple[int, ...], eps: float) -> CompositeSign:
    """The composite construction for a fixed ``ε`` (each stage on the previous image)."""
    comps: list[tuple[float, ...]] = []
    errs: list[float] = []
    ivs: list[tuple[float, float]] = []
    lo, hi = eps, 1.0
    for i, d in enumerate(degrees):
        res: MinimaxResult = minimax_sign(d, lo, hi) if i == 0 else minimax_odd(_ones, lo, hi, d)
        comps.append(tuple(float(c) for c in res.coeffs))
        errs.append(res.error)
        ivs.append((lo, hi))
        lo, hi = 1.0 - res.error, 1.0 + res.error
    return CompositeSign(tuple(comps), eps, None, tuple(errs), tuple(ivs))


def _ones(x: np.ndarray) -> np.ndarray:
    return np.ones_like(np.asarray(x, dtype=float))


def build_composite(
    degrees: tuple[int, ...], alpha: float, *, slack: float = 1e-3, iters: int = 32
) -> CompositeSign:
    """Smallest ``ε`` (log-bisection) such that ``δ_k(ε) <= 2^(1−α)·(1 − slack)``.

    ``slack`` leaves room for floating-point evaluation so the measured ReLU sup-error is
    strictly below ``2^(−α)``.
    """
    target = 2.0 ** (1 - alpha) * (1 - slack)

    def final_err(eps: float) -> tuple[float, CompositeSign | None]:
        try:
            cs = composite_for_eps(degrees, eps)
        except RemezError:
            return math.inf, None
        return cs.sign_error, cs

    # Bracket: grow ε from 2^(2−α) until the target is met. (Starting near ε = 1 fails:
    # the later stages then live on intervals of width ~1e-12 where the system is singular.)
    lo, hi = math.log(2.0 ** (-alpha - 8)), math.log(min(0.5, 2.0 ** (2 - alpha)))
    err_hi, best = final_err(math.exp(hi))
    while err_hi > target:
        if hi >= math.log(0.75):
            raise ValueError(f"degrees {degrees} cannot reach precision α={alpha}")
        lo, hi = hi, min(hi + math.log(1.5), math.log(0.75))
        err_hi, best = final_err(math.exp(hi))
    for _ in range(iters):
        mid = (lo + hi) / 2
        err, cs = final_err(math.exp(mid))
        if err <= target:
            hi, best = mid, cs
        else:
            lo = mid
    assert best is not None
    return CompositeSign(
        best.components,
        best.eps,
        alpha,
        best.stage_errors,
        best.intervals,
        {"target_sign_error": target},
    )


def relu_error(sign: CompositeSign, n: int = 200_001) -> float:
    """Measured ``sup_{x∈[−1,1]} |x(1+P(x))/2 − ReLU(x)|`` on a dense grid.

    By oddness the error at ``−x`` equals the one at ``x`` (``|x|·|1 − P(|x|)|/2``), so only
    ``[0, 1]`` is sampled: uniformly plus geometrically around ``ε`` (transition region).
    """
    x = np.unique(
        np.concatenate(
            [
                np.linspace(0.0, 1.0, n),
                np.geomspace(sign.eps * 1e-3, 1.0, n // 2),
                np.linspace(0.0, min(1.0, 4 * sign.eps), n // 4),
            ]
        )
    )
    return float(np.max(x * np.abs(1.0 - sign.eval(x)) / 2))


def relu_error_parts(sign: CompositeSign, n: int = 100_001) -> tuple[float, float]:
    """``(transition, outer)``: measured ReLU sup-error on ``|x| < ε`` and ``ε <= |x| <= 1``."""
    inner = np.linspace(0.0, sign.eps, n)
    outer = np.unique(np.concatenate([np.geomspace(sign.eps, 1.0, n), np.linspace(sign.eps, 1, n)]))
    f = lambda x: x * np.abs(1.0 - sign.eval(x)) / 2  # noqa: E731
    return float(np.max(f(inner))), float(np.max(f(outer)))


def max_error(sign: CompositeSign, n: int = 1001) -> float:
    """Measured ``sup |max_approx(a, b) − max(a, b)|`` over a dense grid of ``a, b ∈ [0, 1]``.

    Uses ``B = 1`` (``|a − b| <= 1``). Since ``max_approx(a, b) = b + relu_approx(a − b)``
    this equals the ReLU error on ``[−1, 1]`` in exact arithmetic; the grid confirms it.
    """
    from hecnn.approx.functions import max_approx

    g = np.linspace(0.0, 1.0, n)
    a, b = np.meshgrid(g, g, indexing="ij")
    return float(np.max(np.abs(max_approx(a, b, sign, 1.0) - np.maximum(a, b))))


# ----------------------------------------------------------------------------- cache


def load_cache(path: Path = CACHE_PATH) -> dict[int, CompositeSign]:
    """Read the shipped coefficient cache (``{}`` if absent)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {int(k): CompositeSign.from_dict(v) for k, v in data["entries"].items()}


def write_cache(
    alphas: list[int] | None = None, path: Path = CACHE_PATH
) -> Iterator[tuple[int, dict]]:
    """Compute the depth-optimal composites, rewriting the JSON cache after each ``α``."""
    alphas = alphas or sorted(DEPTH_OPTIMAL_DEGREES)
    old = json.loads(path.read_text())["entries"] if path.exists() else {}
    data = {
        "format": 1,
        "generated_by": CACHE_COMMAND,
        "definition": "components: ascending power coefficients, applied first to last; "
        "|P - sign| <= stage_errors[-1] on [eps, 1]; ReLU sup-error <= 2^-alpha",
        "entries": {k: v for k, v in old.items() if int(k) not in alphas},
    }
    for a in alphas:
        cs = build_composite(DEPTH_OPTIMAL_DEGREES[a], a)
        d = cs.to_dict()
        d["relu_error_log2"] = math.log2(relu_error(cs))
        d["relu_error_transition_log2"] = math.log2(relu_error_parts(cs)[0])
        d["max_error_log2"] = math.log2(max_error(cs))
        data["entries"][str(a)] = d
        data["entries"] = dict(sorted(data["entries"].items(), key=lambda kv: int(kv[0])))
        path.write_text(json.dumps(data, indent=1) + "\n")  # incremental: survives a kill
        yield a, d
    return data


@cache
def _cached() -> dict[int, CompositeSign]:
    return load_cache()


@cache
def _computed(alpha: int, degrees: tuple[int, ...]) -> CompositeSign:
    return build_composite(degrees, alpha)


def composite_sign(alpha: int, degrees: tuple[int, ...] | None = None) -> CompositeSign:
    """The composite sign approximation of precision ``α``.

    Reads the shipped cache for the depth-optimal degrees; computes (and memoises in this
    process) anything missing, e.g. custom ``degrees`` or an ``α`` outside 4…14.
    """
    if degrees is None:
        if alpha in _cached():
            return _cached()[alpha]
        if alpha not in DEPTH_OPTIMAL_DEGREES:
            raise ValueError(f"no default degrees for α={alpha}; pass degrees=")
        degrees = DEPTH_OPTIMAL_DEGREES[alpha]
    hit = _cached().get(alpha)
    if hit is not None and hit.degrees == tuple(degrees):
        return hit
    return _computed(alpha, tuple(degrees))
