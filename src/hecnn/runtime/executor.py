"""Encrypted execution of a plan on a ciphertext batch, with public evaluation keys only.

Scale discipline: every affine node encodes its weights at Δ_w = Δ·q_ℓ/scale_in, so after the
rescale by q_ℓ its output sits exactly at the parameter scale Δ; inside a polynomial, each term's
scalar is encoded so the term lands exactly on the scale of the top term. Equal scales make every
addition exact, with no level spent on alignment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.keys import EvaluationKeys
from hecnn.ckks.linear import BlockSparseWeights, encoding_exponent
from hecnn.compile.chebyshev import chebyshev_schedule
from hecnn.compile.ir import AddNode, AffineNode, ConcatNode, InputNode, MulNode, Plan, PolyNode
from hecnn.compile.levels import TAIL_WEIGHT_BITS
from hecnn.compile.polyeval import feeding_powers, power_factors, schedule
from hecnn.compile.streaming import (
    AFFINE_PIECE,
    PIECE,
    StreamingSchedule,
    default_memory_budget,
    head_chunks,
    input_rows,
    memory_profile,
    plan_streaming,
)
from hecnn.errors import LevelError, ParameterError, ShapeError
from hecnn.runtime.chebyshev import add_coeff, evaluate_chebyshev, mul_coeff
from hecnn.runtime.memory import (
    current_rss,
    file_mapping,
    peak_rss,
    release_rows,
    reset_peak_rss,
)
from hecnn.runtime.streaming import relinearize_then_rescale, run_segment

#: features evaluated together in a polynomial node (bounds the 3-component temporaries; the
#: memory model of :mod:`hecnn.compile.streaming` counts them per piece of this size)
POLY_CHUNK = PIECE


@dataclass
class NodeTiming:
    name: str
    seconds: float
    ciphertexts: int


@dataclass
class RunReport:
    """What a run measured: time per node, the streaming schedule, and memory.

    ``peak_rss`` is the process's resident-set high-water mark during the run (the run resets
    it at its start where Linux allows, else it is the process's lifetime peak:
    ``rss_since_start`` says which); ``peak_held`` the most bytes of ciphertext arrays the
    executor held at once (live values, accumulators, the assembled output) at the points it
    checked — transient temporaries come on top; ``rss_at_start`` the resident set when the
    run began (the process's keys, plan and libraries, and whatever it held before: the part
    of ``peak_rss`` that is not the run's own).
    """

    timings: list[NodeTiming] = field(default_factory=list)
    schedule: StreamingSchedule | None = None
    peak_rss: int = 0
    rss_since_start: bool = False
    rss_at_start: int = 0
    peak_held: int = 0

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
    memory_budget: int | None = None,
    chunk: int | None = None,
    streaming: bool = True,
) -> CiphertextBatch:
    """Evaluate ``plan`` on encrypted features; returns the encrypted outputs (one per class).

    Chains of affine and polynomial layers run as streamed segments, chunk by chunk, with
    chunks as large as ``memory_budget`` bytes allow (default: ``HECNN_MEMORY_GIB`` or a
    fraction of RAM; see :func:`hecnn.compile.streaming.plan_streaming`); ``chunk`` forces a
    chunk size; ``streaming=False`` materializes every node whole. The results are the same
    bit for bit. Inputs mapped from a file (``np.memmap``) stay there: a streamed first layer
    pages in the rows it needs and releases them after their last use. A per-image plan
    (``plan.packing == "image"``) runs :func:`hecnn.runtime.image.run_image` on one image's
    ciphertexts.
    """
    if plan.packing == "image":  # one image in a few ciphertexts: rotations, not streaming
        from hecnn.runtime.image import run_image

        return run_image(plan, inputs, keys, report=report)
    if inputs.params.fingerprint != plan.params.fingerprint:
        raise ParameterError("the ciphertexts were not made with the plan's parameters")
    if keys.params.fingerprint != plan.params.fingerprint:
        raise ParameterError("the evaluation keys do not belong to the plan's parameters")
    feats = int(np.prod(plan.input_shape))
    if len(inputs) != feats:
        raise ShapeError(f"the plan expects {feats} input ciphertexts, got {len(inputs)}")
    on_disk = file_mapping(inputs.data) is not None
    if type(inputs) is not CiphertextBatch:
        streaming = False  # another array backend (torch) chunks its work to device memory itself
    if streaming:
        schedule = plan_streaming(plan, memory_budget, chunk=chunk, input_on_disk=on_disk)
    else:
        budget = default_memory_budget() if memory_budget is None else memory_budget
        schedule = StreamingSchedule(budget, [], memory_profile(plan, input_on_disk=on_disk)[0])
    heads = {s.nodes[0]: s for s in schedule.segments}
    inner = {name for s in schedule.segments for name in s.nodes[1:]}
    if report is not None:
        report.schedule = schedule
        report.rss_since_start = reset_peak_rss()
        report.rss_at_start = current_rss()
    vals: dict[str, CiphertextBatch] = {}
    remaining = {n.name: sum(n.name in m.inputs for m in plan.nodes) for n in plan.nodes}
    seconds: dict[str, float] = {}
    counts = {n.name: n.features for n in plan.nodes}
    peak_held = 0

    def held(extra: int = 0) -> int:
        nonlocal peak_held
        now = sum(v.data.nbytes for v in vals.values() if file_mapping(v.data) is None) + extra
        peak_held = max(peak_held, now)
        return now

    try:
        for i, n in enumerate(plan.nodes):
            if n.name in inner:
                continue
            if progress:
                progress(n.name, i, len(plan.nodes))
            seg = heads.get(n.name)
            t0 = time.perf_counter()
            if seg is not None:

                def on_chunk(k: int, total: int, stream_bytes: int, i: int = i, seg=seg) -> None:
                    held(stream_bytes)
                    if progress:
                        progress(
                            f"{seg.nodes[0]}…{seg.nodes[-1]} chunk {k}/{total}", i, len(plan.nodes)
                        )

                out = run_segment(
                    plan,
                    seg,
                    vals[n.inputs[0]],
                    keys,
                    affine=_affine,
                    poly=_poly,
                    weight_scale=_weight_scale,
                    seconds=seconds,
                    on_chunk=on_chunk,
                )
                name = seg.nodes[-1]
            else:
                if isinstance(n, InputNode):
                    out = inputs
                elif isinstance(n, AffineNode):
                    out = _affine_pieces(n, vals[n.inputs[0]], keys)
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
                seconds[n.name] = time.perf_counter() - t0
                name = n.name
            vals[name] = out
            held()
            for x in n.inputs:  # free what no later node needs: bounded memory
                remaining[x] -= 1
                if remaining[x] == 0 and x != plan.output:
                    vals.pop(x, None)
    finally:  # a run stopped midway (an exception from ``progress``) still reports
        if report is not None:
            report.timings.extend(
                NodeTiming(n.name, seconds[n.name], counts[n.name])
                for n in plan.nodes
                if n.name in seconds
            )
            report.peak_rss = peak_rss()
            report.peak_held = peak_held
    if progress:
        progress("done", len(plan.nodes), len(plan.nodes))
    return vals[plan.output]


def _two(x: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    return x.relinearize(keys) if x.components > 2 else x


def _weight_scale(n: AffineNode, x: CiphertextBatch) -> float:
    """Δ_w of an affine node on inputs like ``x``: Δ·q_ℓ/scale(x), so that the rescale by q_ℓ
    lands on Δ (Δ·q_ℓ·q_{ℓ−1}/scale(x) where the input owes a deferred rescale: x is then at
    its product's scale, ~Δ², and Δ_w comes out the same); in the rescale-free tail a fixed
    2^TAIL_WEIGHT_BITS."""
    if not n.rescale:  # rescale-free tail: the product keeps its scale
        return 2.0**TAIL_WEIGHT_BITS
    if n.defer_rescale:
        return deferred_head_weight_scale(n, x)
    drops = 1 + n.owed_rescales
    if x.level < drops or x.level - drops < x.params.min_level:
        raise LevelError(f"{n.name}: no level left for an affine layer")
    primes = np.prod([float(x.ctx.primes[x.level - k]) for k in range(drops)])
    return x.params.scale * n.scale_factor * float(primes) / x.scale


def deferred_head_weight_scale(n: AffineNode, x: CiphertextBatch) -> float:
    """Δ_w of a first layer that defers its rescale through x² + c·x to consumers dividing by
    Q₃ = q_ℓ·q_{ℓ−1}·q_{ℓ−2}: those encode their weights at Δ·Q₃/(scale(x)·Δ_w)², so
    Δ_w = 2^⌊log2(Δ·Q₃/scale(x)²)/3⌋ gives both layers the same precision (~2^-20 relative
    at Δ = 2^30; see :func:`~hecnn.compile.levels.defer_rescales`)."""
    if x.level - 3 < x.params.min_level:
        raise LevelError(f"{n.name}: no level left for the three rescales it defers")
    q3 = sum(math.log2(float(x.ctx.primes[x.level - k])) for k in range(3))
    return 2.0 ** math.floor((math.log2(x.params.scale) + q3 - 2 * math.log2(x.scale)) / 3)


def _affine(
    n: AffineNode,
    x: CiphertextBatch,
    keys: EvaluationKeys,
    weights: BlockSparseWeights | None = None,
    bias: np.ndarray | None = None,
    exponent: int | None = None,
) -> CiphertextBatch:
    """n's weights (or ``weights``, some of its rows, with ``bias`` and the whole matrix's
    encoding ``exponent``) applied to x, then relinearized where planned and rescaled (not in
    the rescale-free tail)."""
    if weights is None:
        weights, bias = n.weights, n.bias
    extra = {} if exponent is None else {"exponent": exponent}  # streamed pieces share it
    # the product goes straight into the call: no local keeps it past its relinearization
    return relinearize_then_rescale(
        n, x.linear_combination(weights, bias=bias, weight_scale=_weight_scale(n, x), **extra), keys
    )


def _affine_pieces(n: AffineNode, x: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    """An unstreamed affine node computed :data:`AFFINE_PIECE` outputs at a time into one
    output array: the pre-rescale products (input components at the input level, several
    copies) exist for one piece only. One encoding exponent for all pieces keeps the result
    bit-identical to the whole-node product; rows of an input mapped from a file are released
    after their last piece."""
    if type(x) is not CiphertextBatch or not n.rescale or n.features <= AFFINE_PIECE:
        return _affine(n, x, keys)
    exponent = encoding_exponent(n.weights, _weight_scale(n, x))
    pieces = list(head_chunks(n, AFFINE_PIECE))
    last_use = None
    if file_mapping(x.data) is not None:
        last_use = np.full(len(x), -1, dtype=np.int64)
        for k, hc in enumerate(pieces):
            last_use[input_rows(hc)] = k
    out, scale = None, 0.0
    for k, hc in enumerate(pieces):
        bias = None if n.bias is None else n.bias[hc.idx]
        y = _affine(n, x, keys, hc.weights, bias, exponent)
        if out is None:
            out, scale = np.empty((n.features, *y.data.shape[1:]), dtype=np.int32), y.scale
        out[hc.idx] = y.data
        if last_use is not None:
            release_rows(x.data, np.flatnonzero(last_use == k))
    return CiphertextBatch(x.ctx, out, scale)


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
    return mul_coeff(x, coeff, want * q / x.scale).rescale()


def _poly(
    n: PolyNode, x: CiphertextBatch, keys: EvaluationKeys, coeffs: np.ndarray | None = None
) -> CiphertextBatch:
    """n's polynomial on every ciphertext of x (``coeffs``: the columns of n's coefficients for
    x's features, when x holds only some of them), :data:`POLY_CHUNK` at a time, written into
    one output array."""
    coeffs = n.coeffs if coeffs is None else coeffs
    evaluate = _chebyshev if n.chebyshev else _poly_chunk if n.rescale else _poly_tail
    if len(x) <= POLY_CHUNK:
        return evaluate(n, x, coeffs, keys)
    out, first = None, None
    for s in range(0, len(x), POLY_CHUNK):
        y = evaluate(n, x[s : s + POLY_CHUNK], coeffs[:, s : s + POLY_CHUNK], keys)
        if out is None:
            first = y
            out = np.empty((len(x), *y.data.shape[1:]), dtype=np.int32)
        out[s : s + len(y)] = y.data
    return CiphertextBatch(x.ctx, out, first.scale)


def _chebyshev(
    n: PolyNode, x: CiphertextBatch, coeffs: np.ndarray, keys: EvaluationKeys
) -> CiphertextBatch:
    return evaluate_chebyshev(
        x,
        coeffs,
        n.radius,
        keys,
        schedule=chebyshev_schedule(n.coeffs),
        target_scale=x.params.scale * n.scale_factor,
    )


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
        return add_coeff(x.mul_scalar(0.0).rescale(), coeffs[0])
    feeding = feeding_powers(sch)
    target_level = x.level - sch.depth
    if target_level < x.params.min_level:
        raise LevelError(f"{n.name}: the polynomial needs {sch.depth} levels, {x.level} left")
    if n.fold_leading and sch.depth == 1 and max(sch.powers) == 2:
        # x² + c1·x: the linear term is encoded at x's scale so it matches x² before the
        # rescale — one rescale for the sum instead of one per term
        lin = [t for t in sch.terms[1:] if t.power == 1]
        if len(lin) == len(sch.terms) - 1 and np.ndim(coeffs) == 2 and lin:  # batch packing
            acc = x.square_plus_scaled(coeffs[1])  # one pass
        else:
            acc = x.square()
            for t in sch.terms[1:]:
                acc = acc + mul_coeff(x, coeffs[t.power], x.scale)
        # ``acc`` and what is made of it are this call's own: the constant goes in place
        return add_coeff(relinearize_then_rescale(n, acc, keys), coeffs[0], in_place=True)
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
    return add_coeff(result, coeffs[0])


def _mul(
    n: MulNode, a: CiphertextBatch, b: CiphertextBatch, keys: EvaluationKeys
) -> CiphertextBatch:
    """a_f·b_f per feature, chunked like a polynomial (3-component temporaries)."""
    parts = []
    for s in range(0, len(a), POLY_CHUNK):
        y = _two(a[s : s + POLY_CHUNK], keys).mul(_two(b[s : s + POLY_CHUNK], keys))
        if n.rescale and y.level <= y.params.min_level:
            raise LevelError(f"{n.name}: no level left for the product")
        parts.append(relinearize_then_rescale(n, y, keys))
    return parts[0] if len(parts) == 1 else CiphertextBatch.stack(parts)


def _add(a: CiphertextBatch, b: CiphertextBatch) -> CiphertextBatch:
    if not np.isclose(a.scale, b.scale, rtol=1e-9):
        hi, lo = (a, b) if a.level > b.level else (b, a)
        if hi.level <= lo.level:
            raise LevelError("residual add of operands with different scales at the same level")
        hi = _mul_to_scale(hi, np.ones(len(hi)), lo.scale)
        return hi + lo
    return a + b
