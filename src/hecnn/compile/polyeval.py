"""Depth-aware evaluation schedule of per-feature polynomials on ciphertexts.

Powers x^k are built by the binary method (x^{2^j} by squaring, x^k = x^{2^j}·x^{k−2^j}), so
x^k sits ⌈log2 k⌉ levels down. A term c·x^i costs one more level for the scalar — unless the
scalar rides on a lower factor, (c·x^a)·x^{i−a}, which is free when x^a is shallower. With
``fold_leading`` the top term is x^d itself (c_d moves into the next linear layer), so a
degree-d polynomial costs exactly ⌈log2 d⌉ levels when every lower term fits beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def power_depth(k: int) -> int:
    return math.ceil(math.log2(k)) if k > 1 else 0


def power_factors(k: int) -> tuple[int, int]:
    """x^k = x^a · x^b used by the binary method."""
    hi = 1 << (k.bit_length() - 1)
    if hi == k:
        return k // 2, k // 2
    return hi, k - hi


@dataclass(frozen=True)
class Term:
    power: int
    split: int  # 0: c·x^power directly; a>0: (c·x^a)·x^(power−a)
    depth: int


@dataclass(frozen=True)
class Schedule:
    degree: int
    terms: tuple[Term, ...]  # non-constant terms with a nonzero coefficient (top term first)
    powers: tuple[int, ...]  # powers x^k that must be computed
    depth: int
    relinearized_powers: int  # powers that feed a further multiplication


def _term(i: int, scaled: bool) -> Term:
    if not scaled:
        return Term(i, 0, power_depth(i))
    best = Term(i, 0, power_depth(i) + 1)
    for a in range(1, i):
        d = max(power_depth(a) + 1, power_depth(i - a)) + 1
        if d < best.depth:
            best = Term(i, a, d)
    return best


def schedule(coeffs: np.ndarray, fold_leading: bool) -> Schedule:
    c = np.asarray(coeffs)
    degree = c.shape[0] - 1
    nonzero = [i for i in range(1, degree + 1) if np.any(c[i] != 0)]
    if not nonzero:
        return Schedule(degree, (), (), 0, 0)
    top = nonzero[-1]
    terms = [_term(top, scaled=not fold_leading)]
    terms += [_term(i, scaled=True) for i in reversed(nonzero[:-1])]
    needed: set[int] = set()

    def need(k: int) -> None:
        if k in needed:
            return
        needed.add(k)
        if k > 1:
            a, b = power_factors(k)
            need(a)
            need(b)

    for t in terms:
        if t.split:
            need(t.split)
            need(t.power - t.split)
        else:
            need(t.power)
    depth = max(t.depth for t in terms)
    sch = Schedule(degree, tuple(terms), tuple(sorted(needed)), depth, 0)
    return Schedule(degree, sch.terms, sch.powers, depth, len(feeding_powers(sch)))


def feeding_powers(sch: Schedule) -> set[int]:
    """Powers (k ≥ 2) that are factors of a further ciphertext product: these must be
    relinearized; the others may stay at three components."""
    feeding: set[int] = set()
    for k in sch.powers:
        if k > 1:
            feeding.update(power_factors(k))
    for t in sch.terms:
        if t.split:
            feeding.add(t.power - t.split)
    return {k for k in feeding if k > 1}
