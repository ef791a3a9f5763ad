"""Encrypted execution of a plan on a ciphertext batch, with public evaluation keys only.

Scale discipline: every affine node encodes its weights at Δ_w = Δ·q_ℓ/scale_in, so after the
rescale by q_ℓ its output sits exactly at the parameter scale Δ; inside a polynomial, each term's
scalar is encoded so the term lands exactly on the scale of the top term. Equal scales make every
addition exact, with no level spent on alignment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.keys import EvaluationKeys
from hecnn.compile.ir import AddNode, AffineNode, ConcatNode, InputNode, MulNode, Plan, PolyNode
from hecnn.compile.levels import TAIL_WEIGHT_BITS
from hecnn.compile.polyeval import feeding_powers, power_factors, schedule
from hecnn.errors import LevelError, ParameterError, ShapeError

#: features evaluated together in a polynomial node (bounds the 3-component temporaries)
POLY_CHUNK = 256


@dataclass
class NodeTiming:
    name: str
    seconds: float
    ciphertexts: int


@dataclass
class RunReport:
    timings: list[NodeTiming] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(t.seconds for t in self.timings)


ProgressFn = Callable[[str, int, int], None]  # (node name, node index, node count)


def run(
    plan: Plan,
    inputs: CiphertextBatch,
    keys: EvaluationKeys,
    *,
    progress: ProgressFn | None = None,
    report: RunReport | None = None,
) -> CiphertextBatch:
    """Evaluate ``plan`` on encrypted features; returns the encrypted outputs (one per class)."""
    if inputs.params.fingerprint != plan.params.fingerprint:
        raise ParameterError("the ciphertexts were not made with the plan's parameters")
    if keys.params.fingerprint != plan.params.fingerprint:
        raise ParameterError("the evaluation keys do not belong to the plan's parameters")
    feats = int(np.prod(plan.input_shape))
    if len(inputs) != feats:
        raise ShapeError(f"the plan expects {feats} input ciphertexts, got {len(inputs)}")
    vals: dict[str, CiphertextBatch] = {}
    remaining = {n.name: sum(n.name in m.inputs for m in plan.nodes) for n in plan.nodes}
    for i, n in enumerate(plan.nodes):
        if progress:
            progress(n.name, i, len(plan.nodes))
        t0 = time.perf_counter()
        if isinstance(n, InputNode):
            out = inputs
        elif isinstance(n, AffineNode):
            out = _affine(n, vals[n.inputs[0]], keys)
        elif isinstance(n, PolyNode):
            out = _poly(n, vals[n.inputs[0]], keys)
        elif isinstance(n, AddNode):
            out = _add(vals[n.inputs[0]], vals[n.inputs[1]])
        elif isinstance(n, MulNode):
            out = _mul(n, vals[n.inputs[0]], vals[n.inputs[1]], keys)
        elif isinstance(n, ConcatNode):
            out = CiphertextBatch.stack([vals[x] for x in n.inputs])  # pads components
        else:  # pragma: no cover
            raise ParameterError(f"unknown node type {type(n).__name__}")
        if n.relin_after and out.components > 2:
            out = out.relinearize(keys)
        vals[n.name] = out
        if report is not None:
            report.timings.append(NodeTiming(n.name, time.perf_counter() - t0, len(out)))
        for x in n.inputs:  # free what no later node needs: bounded memory
            remaining[x] -= 1
            if remaining[x] == 0 and x != plan.output:
                vals.pop(x, None)
    if progress:
        progress("done", len(plan.nodes), len(plan.nodes))
    return vals[plan.output]


def _two(x: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    return x.relinearize(keys) if x.components > 2 else x


def _affine(n: AffineNode, x: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    if not n.rescale:  # rescale-free tail: the product keeps its scale
        return x.linear_combination(n.weights, bias=n.bias, weight_scale=2.0**TAIL_WEIGHT_BITS)
    if x.level < 1 or x.level <= x.params.min_level:
        raise LevelError(f"{n.name}: no level left for an affine layer")
    q = float(x.ctx.primes[x.level])
    y = x.linear_combination(n.weights, bias=n.bias, weight_scale=x.params.scale * q / x.scale)
    return y.rescale()


def _mul_to_scale(
    x: CiphertextBatch,
    coeff: np.ndarray,
    target_scale: float,
    partner_scale: float = 1.0,
    partner_prime: float = 1.0,
) -> CiphertextBatch:
    """x·coeff rescaled, with the scalar encoded so that (x·coeff)·partner/partner_prime — or
    x·coeff alone when partner_scale = partner_prime = 1 — lands exactly on ``target_scale``."""
    q = float(x.ctx.primes[x.level])
    want = target_scale * partner_prime / partner_scale  # scale of x·coeff after its rescale
    return x.mul_scalar(coeff, scale=want * q / x.scale).rescale()


def _poly(n: PolyNode, x: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    evaluate = _poly_chunk if n.rescale else _poly_tail
    if len(x) <= POLY_CHUNK:
        return evaluate(n, x, n.coeffs, keys)
    parts = [
        evaluate(n, x[s : s + POLY_CHUNK], n.coeffs[:, s : s + POLY_CHUNK], keys)
        for s in range(0, len(x), POLY_CHUNK)
    ]
    return CiphertextBatch.stack(parts)


def _poly_tail(
    n: PolyNode, x: CiphertextBatch, coeffs: np.ndarray, keys: EvaluationKeys
) -> CiphertextBatch:
    """Rescale-free evaluation: powers by plain products (components grow, no key switch), each
    term's scalar encoded so the term lands on the scale of the top term; nothing is rescaled,
    so the rounding of a rescale never meets the high powers of s."""
    sch = schedule(n.coeffs, n.fold_leading)
    if not sch.terms:
        return x.mul_scalar(0.0, scale=1.0).add_const(coeffs[0])
    powers: dict[int, CiphertextBatch] = {1: x}
    for k in sch.powers:
        if k > 1:
            a, b = power_factors(k)
            powers[k] = powers[a].square() if a == b else powers[a].mul(powers[b])
    top = powers[sch.terms[0].power]
    if n.fold_leading:
        result, target, rest = top, top.scale, sch.terms[1:]
    else:
        result, target, rest = None, top.scale * 2.0**TAIL_WEIGHT_BITS, sch.terms
    for t in rest:
        p = powers[t.power]
        y = p.mul_scalar(coeffs[t.power], scale=target / p.scale)
        result = y if result is None else result + y
    return result.add_const(coeffs[0])


def _poly_chunk(
    n: PolyNode, x: CiphertextBatch, coeffs: np.ndarray, keys: EvaluationKeys
) -> CiphertextBatch:
    x = _two(x, keys)  # the compiler relinearizes upstream; a no-op then
    sch = schedule(n.coeffs, n.fold_leading)
    if not sch.terms:
        return x.mul_scalar(0.0).rescale().add_const(coeffs[0])
    feeding = feeding_powers(sch)
    target_level = x.level - sch.depth
    if target_level < x.params.min_level:
        raise LevelError(f"{n.name}: the polynomial needs {sch.depth} levels, {x.level} left")
    if n.fold_leading and sch.depth == 1 and max(sch.powers) == 2:
        # x² + c1·x: the linear term is encoded at x's scale so it matches x² before the
        # rescale — one rescale for the sum instead of one per term
        acc = x.square()
        for t in sch.terms[1:]:
            acc = acc + x.mul_scalar(coeffs[t.power], scale=x.scale)
        return acc.rescale().add_const(coeffs[0])
    powers: dict[int, CiphertextBatch] = {1: x}
    for k in sch.powers:
        if k == 1:
            continue
        a, b = power_factors(k)
        p = powers[a].square() if a == b else powers[a].mul(powers[b])
        if k in feeding:
            p = p.relinearize(keys)
        powers[k] = p.rescale()
    top = sch.terms[0]
    if n.fold_leading:
        result = powers[top.power].drop_to(target_level)
        target_scale = result.scale
        rest = sch.terms[1:]
    else:
        result = None
        target_scale = x.params.scale
        rest = sch.terms
    for t in rest:
        c = coeffs[t.power]
        if t.split == 0:
            y = _mul_to_scale(powers[t.power], c, target_scale)
        else:
            partner = powers[t.power - t.split]
            lvl = min(powers[t.split].level - 1, partner.level)
            q_m = float(x.ctx.primes[lvl])
            u = _mul_to_scale(powers[t.split], c, target_scale, partner.scale, q_m)
            y = u.mul(partner).rescale()
        y = y.drop_to(target_level)
        result = y if result is None else result + y
    return result.add_const(coeffs[0])


def _mul(
    n: MulNode, a: CiphertextBatch, b: CiphertextBatch, keys: EvaluationKeys
) -> CiphertextBatch:
    """a_f·b_f per feature, chunked like a polynomial (3-component temporaries)."""
    parts = []
    for s in range(0, len(a), POLY_CHUNK):
        y = _two(a[s : s + POLY_CHUNK], keys).mul(_two(b[s : s + POLY_CHUNK], keys))
        if n.rescale:
            if y.level <= y.params.min_level:
                raise LevelError(f"{n.name}: no level left for the product")
            y = y.rescale()
        parts.append(y)
    return parts[0] if len(parts) == 1 else CiphertextBatch.stack(parts)


def _add(a: CiphertextBatch, b: CiphertextBatch) -> CiphertextBatch:
    if not np.isclose(a.scale, b.scale, rtol=1e-9):
        hi, lo = (a, b) if a.level > b.level else (b, a)
        if hi.level <= lo.level:
            raise LevelError("residual add of operands with different scales at the same level")
        hi = _mul_to_scale(hi, np.ones(len(hi)), lo.scale)
        return hi + lo
    return a + b
