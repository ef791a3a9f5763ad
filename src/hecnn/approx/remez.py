"""Remez exchange algorithm for minimax approximation in an odd polynomial basis.

Problem. Given a target ``f`` on ``[a, b]`` with ``0 <= a < b`` and an odd degree
``d = 2m + 1``, find ``p(x) = sum_{j=0..m} c_j x^(2j+1)`` minimising
``E = max_{x in [a,b]} |p(x) - f(x)|``. Because ``p`` is odd, the same ``p`` is then the
minimax odd approximation of the odd extension of ``f`` on ``[-b,-a] ∪ [a,b]``; with
``f = 1`` this is the minimax approximation of ``sign(x)`` on ``[-1,-ε] ∪ [ε,1]``.

Why Remez works. The odd monomials restricted to ``[a, b]`` (``a > 0``) form a Haar
(Chebyshev) system of dimension ``n = m + 1``: any non-zero odd polynomial of degree ``d``
has at most ``m`` positive roots. By the equioscillation theorem ``p`` is the unique best
approximation iff there are ``n + 1 = m + 2`` points ``a <= x_0 < ... < x_{m+1} <= b``
with ``p(x_i) - f(x_i) = (-1)^i s E`` (``s = ±1``). Remez alternates

1. solve the ``(m+2) × (m+2)`` linear system ``p(x_i) + (-1)^i h = f(x_i)`` for the
   coefficients and the levelled error ``h`` on the current reference ``x_i``;
2. move the reference to the local extrema of the error ``p - f`` (one point per sign
   change, always keeping the global maximum), which increases ``|h|`` monotonically
   (de la Vallée Poussin: ``|h| <= E* <= max|p - f|``), until ``max|p - f| ≈ |h|``.

Numerics. The monomials ``x^(2j+1)`` are badly conditioned for ``d ≈ 31`` (the Vandermonde
matrix on ``[ε, 1]`` has condition number ``> 10^15``), so internally the basis is the odd
Chebyshev polynomials ``T_(2j+1)(x / b)``, which are orthogonal on ``[-1, 1]`` and keep the
system well conditioned in double precision. Coefficients are converted to ascending
powers of ``x`` once, at the end (exact linear map, ``numpy.polynomial.chebyshev``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev as cheb_

from hecnn.errors import HecnnError

Target = Callable[[np.ndarray], np.ndarray]

__all__ = [
    "MinimaxResult",
    "RemezError",
    "check_equioscillation",
    "eval_power",
    "minimax_odd",
    "minimax_sign",
]


class RemezError(HecnnError):
    """The exchange did not converge to an equioscillating solution."""


@dataclass(frozen=True)
class MinimaxResult:
    """A minimax odd polynomial on ``[a, b]``.

    ``coeffs`` are ascending powers of ``x`` (``coeffs[k]`` multiplies ``x**k``; even
    positions are exactly 0). ``error`` is the achieved ``max |p - f|`` on ``[a, b]``
    (measured on a dense grid refined around each extremum), ``levelled`` the levelled
    error ``|h|`` of the last reference, and ``reference`` the ``m + 2`` alternation points.
    """

    coeffs: np.ndarray
    error: float
    levelled: float
    reference: np.ndarray
    a: float
    b: float
    iterations: int
    cheb: np.ndarray = field(repr=False)  # coefficients of T_0..T_d in y = x / b

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        """Evaluate through the Chebyshev form (more accurate than the power form)."""
        return cheb_.chebval(np.asarray(x, dtype=float) / self.b, self.cheb)


def eval_power(coeffs: np.ndarray | list[float], x: np.ndarray | float) -> np.ndarray:
    """Horner evaluation of ascending power ``coeffs`` at ``x`` (numpy, float64)."""
    x = np.asarray(x, dtype=float)
    acc = np.zeros_like(x)
    for c in reversed(list(coeffs)):
        acc = acc * x + c
    return acc


def _odd_cheb_matrix(y: np.ndarray, m: int) -> np.ndarray:
    """Columns ``T_1(y), T_3(y), …, T_(2m+1)(y)`` via the three-term recurrence."""
    cols = np.empty((len(y), m + 1))
    t_prev, t_cur = np.ones_like(y), y.copy()  # T_0, T_1
    for k in range(1, 2 * m + 2):
        if k % 2 == 1:
            cols[:, k // 2] = t_cur
        t_prev, t_cur = t_cur, 2 * y * t_cur - t_prev
    return cols


def _dense_grid(a: float, b: float, n: int) -> np.ndarray:
    """Grid on ``[a, b]`` dense both uniformly and geometrically near ``a``.

    Minimax errors for ``sign`` on ``[ε, 1]`` oscillate fastest close to ``ε``, where a
    uniform grid would miss extrema; Chebyshev-clustered points handle both ends.
    """
    t = np.cos(np.linspace(np.pi, 0.0, n))
    pts = [a + (b - a) * (t + 1) / 2, np.linspace(a, b, n)]
    if a > 0:
        pts.append(np.geomspace(a, b, n))
    return np.unique(np.concatenate(pts))


def _local_extrema(xs: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Indices of local extrema of ``|err|`` with alternation, endpoints included."""
    n = len(xs)
    idx = [0]
    for i in range(1, n - 1):
        if (err[i] - err[i - 1]) * (err[i + 1] - err[i]) <= 0 and err[i] != err[i - 1]:
            idx.append(i)
    idx.append(n - 1)
    return np.array(sorted(set(idx)))


def _refine(x0: float, lo: float, hi: float, err_fn: Callable[[np.ndarray], np.ndarray]) -> float:
    """Golden-section search of the extremum of ``s·err`` in ``[lo, hi]`` (``s`` = its sign)."""
    s = np.sign(err_fn(np.array([x0]))[0]) or 1.0
    g = (np.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = s * err_fn(np.array([c]))[0], s * err_fn(np.array([d]))[0]
    for _ in range(60):
        if fc > fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = s * err_fn(np.array([c]))[0]
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = s * err_fn(np.array([d]))[0]
        if hi - lo < 1e-15 * max(1.0, abs(hi)):
            break
    cand = [x0, (lo + hi) / 2]
    vals = [s * err_fn(np.array([v]))[0] for v in cand]
    return cand[int(np.argmax(vals))]


def _alternating(xs: np.ndarray, es: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep, in each run of equal error sign, the point of largest ``|error|``.

    Exact zeros are dropped: at ``x = 0`` every odd basis function vanishes, so for an odd
    target on ``[0, b]`` the error there is identically 0 and never an alternation point.
    """
    nz = es != 0
    xs, es = xs[nz], es[nz]
    keep_x, keep_e = [xs[0]], [es[0]]
    for x, e in zip(xs[1:], es[1:], strict=True):
        if np.sign(e) == np.sign(keep_e[-1]):
            if abs(e) > abs(keep_e[-1]):
                keep_x[-1], keep_e[-1] = x, e
        else:
            keep_x.append(x)
            keep_e.append(e)
    return np.array(keep_x), np.array(keep_e)


def _initial_reference(f: Target, a: float, b: float, m: int, grid: np.ndarray) -> np.ndarray:
    """Reference points from a discrete minimax (linear programme) on a coarse grid.

    The LP ``min h  s.t. |Φ c - f| <= h`` on ~2000 points is robust for any ``ε`` and its
    solution's error extrema already alternate, so the exchange starts close to optimal.
    """
    from scipy.optimize import linprog

    sub = grid[np.unique(np.linspace(0, len(grid) - 1, 2000).astype(int))]
    phi = _odd_cheb_matrix(sub / b, m)
    fv = f(sub)
    n = m + 1
    # variables: c (n), h;  phi c - h <= f ; -phi c - h <= -f
    a_ub = np.block([[phi, -np.ones((len(sub), 1))], [-phi, -np.ones((len(sub), 1))]])
    b_ub = np.concatenate([fv, -fv])
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (n + 1), method="highs")
    if not res.success:
        t = np.cos(np.linspace(np.pi, 0.0, m + 2))
        return a + (b - a) * (t + 1) / 2
    err = phi @ res.x[:n] - fv
    ext = _local_extrema(sub, err)
    xs, es = _alternating(sub[ext], err[ext])
    if len(xs) < m + 2:
        t = np.cos(np.linspace(np.pi, 0.0, m + 2))
        return a + (b - a) * (t + 1) / 2
    i = int(np.argmax(np.abs(es)))
    start = min(max(i - (m + 1), 0), len(xs) - (m + 2))
    return xs[start : start + m + 2]


def minimax_odd(
    f: Target,
    a: float,
    b: float,
    degree: int,
    *,
    tol: float = 1e-9,
    max_iter: int = 60,
    grid_size: int = 6000,
) -> MinimaxResult:
    """Minimax odd polynomial of ``degree`` (odd) for ``f`` on ``[a, b]``, ``0 <= a < b``.

    Converges when ``(max|p - f| - |h|) / max|p - f| < tol`` (equioscillation up to
    ``tol`` relative). Raises :class:`RemezError` if that does not happen.
    """
    if degree < 1 or degree % 2 == 0:
        raise ValueError(f"degree must be odd and >= 1, got {degree}")
    if not 0 <= a < b:
        raise ValueError(f"need 0 <= a < b, got [{a}, {b}]")
    m = (degree - 1) // 2
    grid = _dense_grid(a, b, grid_size)
    ref = _initial_reference(f, a, b, m, grid)
    signs = (-1.0) ** np.arange(m + 2)
    fgrid = f(grid)
    coef = np.zeros(m + 1)
    h = 0.0
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported
        mat = np.column_stack([_odd_cheb_matrix(ref / b, m), signs])
        try:
            sol = np.linalg.solve(mat, f(ref))
        except np.linalg.LinAlgError as exc:
            raise RemezError(
                f"singular reference system (degree {degree} on [{a:g}, {b:g}])"
            ) from exc
        coef, h = sol[:-1], sol[-1]

        def err_fn(x: np.ndarray, c: np.ndarray = coef) -> np.ndarray:
            return _odd_cheb_matrix(x / b, m) @ c - f(x)

        err = _odd_cheb_matrix(grid / b, m) @ coef - fgrid
        ext = _local_extrema(grid, err)
        xs = []
        for i in ext:
            if i in (0, len(grid) - 1):
                xs.append(grid[i])
            else:
                xs.append(_refine(grid[i], grid[i - 1], grid[i + 1], err_fn))
        xs = np.array(xs)
        xs, es = _alternating(xs, err_fn(xs))
        emax = float(np.max(np.abs(es)))
        if len(xs) >= m + 2:
            i = int(np.argmax(np.abs(es)))
            start = min(max(i - (m + 1), 0), len(xs) - (m + 2))
            ref = xs[start : start + m + 2]
        if emax - abs(h) <= tol * emax + 1e-14 and len(xs) >= m + 2:
            break
    else:
        raise RemezError(
            f"Remez did not converge (degree {degree} on [{a:g}, {b:g}]): "
            f"max error {emax:.3e} vs levelled {abs(h):.3e}"
        )
    cheb = np.zeros(degree + 1)
    cheb[1::2] = coef
    power = cheb_.cheb2poly(cheb) / b ** np.arange(degree + 1)
    power[0::2] = 0.0
    return MinimaxResult(
        coeffs=power,
        error=emax,
        levelled=abs(float(h)),
        reference=np.asarray(ref),
        a=a,
        b=b,
        iterations=it,
        cheb=cheb,
    )


def _one(x: np.ndarray) -> np.ndarray:
    return np.ones_like(np.asarray(x, dtype=float))


def minimax_sign(degree: int, a: float, b: float = 1.0, **kw: float) -> MinimaxResult:
    """Minimax odd approximation of ``sign`` on ``[-b,-a] ∪ [a,b]`` (i.e. of 1 on ``[a,b]``)."""
    return minimax_odd(_one, a, b, degree, **kw)


def check_equioscillation(
    res: MinimaxResult, f: Target = _one, rtol: float = 1e-6
) -> tuple[bool, np.ndarray]:
    """Check the equioscillation theorem on ``res.reference``.

    Returns ``(ok, errors)``: ``ok`` iff the ``m + 2`` reference errors alternate in sign,
    have equal magnitude within ``rtol`` and that magnitude equals the sup-error within
    ``rtol`` (so the polynomial is the best approximation, not just levelled).
    """
    e = res(res.reference) - f(res.reference)
    m = (res.degree - 1) // 2
    alternate = bool(np.all(np.sign(e[1:]) == -np.sign(e[:-1])))
    mag = np.abs(e)
    level = bool(np.max(mag) - np.min(mag) <= rtol * np.max(mag))
    sup = bool(abs(np.max(mag) - res.error) <= rtol * res.error)
    return (len(e) == m + 2 and alternate and level and sup), e
