"""Depth-optimal, numerically stable evaluation schedule of a polynomial in the Chebyshev basis.

Composite sign approximations have components of degree up to 29 whose power-basis
coefficients reach 10⁴–10⁵ with alternating signs: summing c_i·x^i under CKKS multiplies every
rounding error by those coefficients. In the Chebyshev basis on [−1, 1] the coefficients stay
O(1) and every T_k(x) is in [−1, 1], so the errors add up instead of cancelling badly.

The schedule is the recursive Chebyshev division used by bootstrapping implementations
(Bossuat et al. 2021): with G = 2^j ≤ deg p < 2G,

    T_k = 2·T_G·T_(k−G) − T_(2G−k)   (G ≤ k ≤ 2G)   ⇒   p = q·T_G + r,  deg q, deg r < G,

and q, r are split again until they are *leaves*: linear combinations Σ c_k T_k of "baby steps".
Levels: T_k sits ⌈log2 k⌉ levels below the input; a leaf spends one more level on its scalars,
and q·T_G one more than the deeper of q and T_G. A degree-d polynomial thus needs ⌈log2(d+1)⌉
levels — the minimum — provided a leaf only uses baby steps ≥ 1 level above its budget; the
planner splits until that holds. The scalars of a leaf are encoded so that the product with
T_G lands on the target scale (no separate rescale for them). Among the leaf-size bounds l
(powers of two) the planner keeps the one with the fewest ciphertext products: baby steps T_k
(one product each), giant steps T_(2^j) and one product per split.

Odd polynomials stay odd in every quotient and remainder (T_G is even), so only odd baby steps
are built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def t_depth(k: int) -> int:
    """Levels below the input at which T_k is built: ⌈log2 k⌉."""
    return math.ceil(math.log2(k)) if k > 1 else 0


def t_factors(k: int) -> tuple[int, int, int]:
    """T_k = 2·T_a·T_b − T_c with a = the largest power of two < k (a = b for k = 2a)."""
    a = 1 << ((k - 1).bit_length() - 1)
    return a, k - a, 2 * a - k


def degree_of(c: np.ndarray) -> int:
    """Highest index with a nonzero coefficient (in any column); −1 for the zero polynomial."""
    nz = np.flatnonzero(np.any(np.asarray(c).reshape(len(c), -1) != 0, axis=1))
    return int(nz[-1]) if nz.size else -1


def divide(c: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev division by T_g of ``c`` (rows = Chebyshev index, deg < 2g): (q, r) with
    Σ c_k T_k = q·T_g + r, both of degree < g."""
    q = np.zeros((g, *c.shape[1:]))
    r = np.zeros((g, *c.shape[1:]))
    r[: min(g, len(c))] = c[:g]
    if len(c) > g:
        q[0] = c[g]
    for k in range(g + 1, len(c)):  # c_k T_k = 2 c_k T_g T_(k−g) − c_k T_(2g−k)
        q[k - g] += 2.0 * c[k]
        r[2 * g - k] -= c[k]
    return q, r


@dataclass(frozen=True)
class ChebNode:
    """A node of the evaluation tree of one polynomial, within a level budget.

    A leaf (``giant == 0``) is Σ c_k T_k over ``terms`` (k ≥ 1, nonzero) plus the constant; a
    split node is quotient·T_giant + remainder (``quotient`` None: a constant quotient, a
    scalar multiple of T_giant)."""

    degree: int
    budget: int
    giant: int = 0
    terms: tuple[int, ...] = ()
    quotient: ChebNode | None = None
    remainder: ChebNode | None = None

    @property
    def splits(self) -> int:
        """Ciphertext products q·T_G in the tree (constant quotients are scalar products)."""
        if not self.giant:
            return 0
        own = 1 if self.quotient is not None else 0
        return own + sum(n.splits for n in (self.quotient, self.remainder) if n is not None)

    def used(self) -> set[int]:
        """Chebyshev polynomials T_k (k ≥ 1) the tree reads directly."""
        if not self.giant:
            return set(self.terms)
        out = {self.giant}
        for n in (self.quotient, self.remainder):
            if n is not None:
                out |= n.used()
        return out


def build_tree(c: np.ndarray, budget: int, leaf_bound: int) -> ChebNode | None:
    """The tree for coefficients ``c`` within ``budget`` levels; leaves have degree <
    ``leaf_bound``. None for the zero polynomial (and for a constant: the caller adds it)."""
    d = degree_of(c)
    if d < 1:
        return None
    nz = [k for k in range(1, d + 1) if np.any(c[k] != 0)]
    if d < leaf_bound and all(t_depth(k) + 1 <= budget for k in nz):
        return ChebNode(d, budget, terms=tuple(nz))
    g = 1 << (d.bit_length() - 1)  # G ≤ d < 2G
    if t_depth(g) + 1 > budget:
        raise ValueError(f"degree {d} does not fit in {budget} levels")
    q, r = divide(c[: d + 1], g)
    quotient = build_tree(q, budget - 1, leaf_bound) if degree_of(q) >= 1 else None
    remainder = build_tree(r, budget, leaf_bound)
    return ChebNode(d, budget, giant=g, quotient=quotient, remainder=remainder)


def closure(used: set[int]) -> set[int]:
    """Every T_k (k ≥ 2) that must be built to have ``used``: T_k needs T_a, T_b, T_c."""
    need: set[int] = set()
    stack = [k for k in used if k >= 2]
    while stack:
        k = stack.pop()
        if k in need:
            continue
        need.add(k)
        a, b, c = t_factors(k)
        stack += [m for m in (a, b, c) if m >= 2 and m not in need]
    return need


@dataclass(frozen=True)
class ChebSchedule:
    degree: int
    depth: int
    tree: ChebNode | None
    powers: tuple[int, ...]  # the T_k (k ≥ 2) built, ascending: one product each
    leaf_bound: int

    @property
    def products(self) -> int:
        """Ciphertext-ciphertext products (each followed by a relinearization)."""
        return len(self.powers) + (self.tree.splits if self.tree else 0)


def chebyshev_schedule(coeffs: np.ndarray) -> ChebSchedule:
    """The cheapest depth-optimal schedule for Chebyshev coefficients ``coeffs``
    ((degree + 1,) or (degree + 1, features)): depth ⌈log2(d + 1)⌉, fewest products."""
    c = np.asarray(coeffs, dtype=np.float64)
    d = degree_of(c)
    if d < 1:
        return ChebSchedule(max(d, 0), 0, None, (), 1)
    depth = math.ceil(math.log2(d + 1))
    best: ChebSchedule | None = None
    bound = 2
    while bound <= 2 * (d + 1):
        tree = build_tree(c, depth, bound)
        sch = ChebSchedule(d, depth, tree, tuple(sorted(closure(tree.used()))), bound)
        if best is None or sch.products < best.products:
            best = sch
        bound *= 2
    return best


def evaluate(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Σ c_k T_k(x) in float64 (x: (features, B); coeffs: (degree + 1, features))."""
    c = np.asarray(coeffs, dtype=np.float64)
    return np.polynomial.chebyshev.chebval(x, c[:, :, None] if c.ndim == 2 else c, tensor=False)


def to_chebyshev(power_coeffs: np.ndarray, radius: float) -> np.ndarray:
    """Chebyshev coefficients of u ↦ p(radius·u) on [−1, 1], from ascending power coefficients
    of p ((degree + 1,) or (degree + 1, features)); an odd (even) p keeps exact zeros."""
    p = np.asarray(power_coeffs, dtype=np.float64)
    scaled = p * (radius ** np.arange(len(p))).reshape(-1, *([1] * (p.ndim - 1)))
    cols = scaled.reshape(len(p), -1)
    out = np.stack([np.polynomial.chebyshev.poly2cheb(cols[:, j]) for j in range(cols.shape[1])])
    out = out.T.reshape(p.shape)
    for parity in (0, 1):  # poly2cheb leaves ~1e-17 where the parity says exactly zero
        if not np.any(p[parity::2]):
            out[parity::2] = 0.0
    return out
