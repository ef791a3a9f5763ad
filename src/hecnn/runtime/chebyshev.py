"""Encrypted evaluation of Σ c_k T_k(x/r) by the schedule of :mod:`hecnn.compile.chebyshev`.

Scales are managed top-down, so that nothing is rescaled twice: a node asked to land on
(level ℓ, scale S) either sums its leaf terms c_k·T_k, each scalar encoded at S·q/scale(T_k) so
that one rescale by the prime q of T_k's level gives exactly S, or computes quotient·T_G with
the quotient asked for (ℓ + 1, S·q_(ℓ+1)/scale(T_G)), so that the product's single rescale
gives S. The division by the radius r is free: a ciphertext of x at scale s *is* a ciphertext
of x/r at scale s·r. Every product is relinearized *before* its rescale, so the key switch's
noise is divided by the prime too (relinearizing after the rescale costs ~6 bits here).
"""

from __future__ import annotations

import math

import numpy as np

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.keys import EvaluationKeys
from hecnn.compile.chebyshev import ChebNode, ChebSchedule, chebyshev_schedule, divide, t_factors
from hecnn.errors import LevelError


def _two(x: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    return x.relinearize(keys) if x.components > 2 else x


def mul_coeff(x: CiphertextBatch, coeff, scale: float) -> CiphertextBatch:
    """x·coeff with coeff encoded at ``scale``: one scalar per ciphertext (batch packing, shape
    (cts,) or a float) or one value per slot (per-image packing, (cts, slots) planes)."""
    if np.ndim(coeff) == 2:
        return x.mul_plain(coeff, scale=scale)
    return x.mul_scalar(coeff, scale=scale)


def add_coeff(x: CiphertextBatch, coeff, *, in_place: bool = False) -> CiphertextBatch:
    """x + coeff, per ciphertext or per slot like :func:`mul_coeff`; x itself when coeff is
    all zeros (a folded polynomial's constant went to its consumers' bias). ``in_place``: a
    per-ciphertext constant is written into x's own array (x must be the caller's alone; see
    :meth:`CiphertextBatch.add_const_in_place`)."""
    if not np.any(coeff):
        return x
    if np.ndim(coeff) == 2:
        return x.add_plain(coeff)
    return x.add_const_in_place(coeff) if in_place else x.add_const(coeff)


def _scaled(y: CiphertextBatch, coeff, scale: float) -> CiphertextBatch:
    """coeff·y before its rescale: encoded so that the rescale by y's last prime gives ``scale``."""
    q = float(y.ctx.primes[y.level])
    return mul_coeff(y, coeff, scale * q / y.scale)


class ChebyshevEvaluator:
    """T_k(u) built on demand (cached) for one batch u = x/r, and the tree evaluated on them."""

    def __init__(self, u: CiphertextBatch, keys: EvaluationKeys) -> None:
        self.keys = keys
        self.t: dict[int, CiphertextBatch] = {1: u}

    def power(self, k: int) -> CiphertextBatch:
        """T_k = 2·T_a·T_b − T_c (T_2a = 2·T_a² − 1), relinearized: it feeds further products."""
        if k in self.t:
            return self.t[k]
        a, b, c = t_factors(k)
        ta, tb = self.power(a), self.power(b)
        prod = ta.square() if a == b else ta.mul(tb)
        prod = (prod + prod).relinearize(self.keys).rescale()
        if c == 0:
            out = prod.add_const(-1.0)
        else:
            out = prod - self._land(self.power(c), 1.0, prod.level, prod.scale)
        self.t[k] = out
        return out

    @staticmethod
    def _land(y: CiphertextBatch, coeff, level: int, scale: float) -> CiphertextBatch:
        """coeff·y at exactly (level, scale): one scalar product and rescale, then limbs dropped."""
        if y.level <= level:
            raise LevelError(f"T at level {y.level} cannot land at level {level}")
        return _scaled(y, coeff, scale).rescale().drop_to(level)

    def node(
        self, node: ChebNode | None, c: np.ndarray, level: int, scale: float
    ) -> CiphertextBatch | None:
        """Σ c_k T_k at (level, scale), constant included; None when only the constant is left
        (the caller adds it)."""
        if node is None:
            return None
        if not node.giant:
            groups: dict[int, CiphertextBatch] = {}
            for k in node.terms:  # terms at one level share the pre-rescale scale: one rescale
                y = self.power(k)
                z = _scaled(y, c[k], scale)
                groups[y.level] = z if y.level not in groups else groups[y.level] + z
            acc = None
            for z in groups.values():
                z = z.rescale().drop_to(level)
                acc = z if acc is None else acc + z
            return add_coeff(acc, c[0])
        g = node.giant
        q, r = divide(c[: node.degree + 1], g)
        tg = self.power(g)
        if node.quotient is None:  # constant quotient: a scalar multiple of T_G
            prod = self._land(tg, q[0], level, scale)
        else:
            up = level + 1
            tg_up = tg.drop_to(up)
            q_scale = scale * float(tg.ctx.primes[up]) / tg.scale
            qv = _two(self.node(node.quotient, q, up, q_scale), self.keys)
            # relinearized before the rescale: the key switch's noise is then divided by q
            prod = qv.mul(tg_up).relinearize(self.keys).rescale()
        rv = self.node(node.remainder, r, level, scale)
        return add_coeff(prod, r[0]) if rv is None else prod + rv


def evaluate_chebyshev(
    x: CiphertextBatch,
    coeffs: np.ndarray,
    radius: float,
    keys: EvaluationKeys,
    schedule: ChebSchedule | None = None,
    target_scale: float | None = None,
) -> CiphertextBatch:
    """Σ_k coeffs[k]·T_k(x/radius) per ciphertext (``coeffs``: (degree + 1, len(x)), per-slot
    planes (degree + 1, len(x), slots), or (degree + 1,)), landing at level(x) − depth with scale ``target_scale`` (default Δ).

    x/radius is read for free as x at scale·radius; for the T_k to keep scales near Δ, x
    should arrive at Δ/radius (see :func:`hecnn.compile.levels.assign_scale_factors`)."""
    coeffs = np.asarray(coeffs, dtype=np.float64)
    if coeffs.ndim == 1:
        coeffs = np.repeat(coeffs[:, None], len(x), axis=1)
    sch = chebyshev_schedule(coeffs) if schedule is None else schedule
    x = _two(x, keys)
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be positive and finite, got {radius}")
    u = CiphertextBatch(x.ctx, x.data, x.scale * radius)
    level = u.level - max(sch.depth, 1)
    if level < x.params.min_level:
        raise LevelError(
            f"a degree-{sch.degree} polynomial needs {sch.depth} levels, {u.level} left"
        )
    target = x.params.scale if target_scale is None else float(target_scale)
    if sch.tree is None:  # a constant (or zero) polynomial
        return add_coeff(ChebyshevEvaluator._land(u, 0.0, level, target), coeffs[0])
    return ChebyshevEvaluator(u, keys).node(sch.tree, coeffs, level, target)
