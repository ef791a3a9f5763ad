"""Level assignment, lazy relinearization, and the choice of 128-bit CKKS parameters.

Levels count down from the top: the input sits at level L, an affine node costs one level (its
weights are encoded at the scale of the prime it then rescales away), a polynomial costs the
depth of its schedule, and adds/concatenations take the lower operand level. The depth of the
plan fixes the chain; the output range fixes the base modulus (values × scale must stay below
half of it); the scale is the largest (≤ 2^30) that keeps the smallest secure ring degree.
"""

from __future__ import annotations

import math

from hecnn.ckks.params import CkksParameters
from hecnn.ckks.primes import MAX_PRIME_BITS
from hecnn.ckks.security import MAX_LOG_QP_128, SUPPORTED_RING_DEGREES
from hecnn.compile.ir import AffineNode, InputNode, Node, PolyNode
from hecnn.compile.passes import consumers
from hecnn.compile.polyeval import schedule
from hecnn.errors import ParameterError


def relative_depths(nodes: list[Node]) -> dict[str, int]:
    """Levels consumed from the input to each node's output."""
    depth: dict[str, int] = {}
    for n in nodes:
        d_in = max((depth[i] for i in n.inputs), default=0)
        depth[n.name] = d_in + n.depth
    return depth


def assign_levels(nodes: list[Node], top: int) -> None:
    depth = relative_depths(nodes)
    for n in nodes:
        n.level_in = top - max((depth[i] for i in n.inputs), default=0)
        n.level_out = top - depth[n.name]


def plan_relinearization(nodes: list[Node], output: str) -> None:
    """Relinearize each 3-component polynomial output now, or after its affine consumers when
    they have fewer outputs than inputs (fewer key switches); the final output may stay at 3
    components (the client decrypts with s²)."""
    users = consumers(nodes)
    for n in nodes:
        if not isinstance(n, PolyNode):
            continue
        sch = schedule(n.coeffs, n.fold_leading)
        three = any(t.power >= 2 for t in sch.terms)
        if not three or n.name == output:
            continue
        cons = users[n.name]
        lazy = cons and all(isinstance(c, AffineNode) and c.features < n.features for c in cons)
        if lazy:
            for c in cons:
                # the plan's output may stay at three components: the client decrypts with s²
                c.relin_after = c.name != output
        else:
            n.relin_after = True


def choose_parameters(
    depth: int,
    batch: int,
    output_bound: float,
    *,
    scale_bits: int | None = None,
    insecure_ring: int | None = None,
) -> CkksParameters:
    """Smallest secure ring for ``depth`` and ``batch``; then the largest scale that fits it.

    ``insecure_ring`` forces a small ring degree for unit tests (parameters are then marked
    insecure and refused by servers).
    """
    value_bits = max(1, math.ceil(math.log2(max(output_bound, 1.0) * 2)) + 1)
    candidates = range(26, 31) if scale_bits is None else [scale_bits]
    best: CkksParameters | None = None
    for sb in candidates:
        base = max(sb + value_bits, sb + 1)
        base = base if base <= MAX_PRIME_BITS else MAX_PRIME_BITS * math.ceil(base / MAX_PRIME_BITS)
        try:
            if insecure_ring is not None:
                p = CkksParameters.create(
                    depth,
                    scale_bits=sb,
                    first_prime_bits=base,
                    n=insecure_ring,
                    allow_insecure_test_only=True,
                )
            else:
                min_n = max(4096, 1 << math.ceil(math.log2(max(2 * batch, 2))))
                p = CkksParameters.create(depth, scale_bits=sb, first_prime_bits=base, min_n=min_n)
        except ParameterError:
            continue
        if best is None or p.n < best.n or (p.n == best.n and p.scale > best.scale):
            best = p
    if best is None:
        raise ParameterError(
            f"no 128-bit parameter set up to N={SUPPORTED_RING_DEGREES[-1]} holds depth {depth} "
            f"(max log QP {MAX_LOG_QP_128[SUPPORTED_RING_DEGREES[-1]]})"
        )
    if 2 * batch > best.n:
        raise ParameterError(f"batch {batch} exceeds the {best.slots} slots of N={best.n}")
    return best


def input_node(nodes: list[Node]) -> InputNode:
    ins = [n for n in nodes if isinstance(n, InputNode)]
    if len(ins) != 1:
        raise ParameterError(f"a plan needs exactly one input, found {len(ins)}")
    return ins[0]
