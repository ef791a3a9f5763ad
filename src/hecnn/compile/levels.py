"""Level assignment, lazy relinearization, and the choice of 128-bit CKKS parameters.

Levels count down from the top: the input sits at level L, an affine node costs one level (its
weights are encoded at the scale of the prime it then rescales away), a polynomial costs the
depth of its schedule, and adds/concatenations take the lower operand level. The depth of the
plan fixes the chain; the output range fixes the base modulus (values × scale must stay below
half of it); the scale is the largest (≤ 2^30) that keeps the smallest secure ring degree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hecnn.ckks.params import CkksParameters
from hecnn.ckks.primes import MAX_PRIME_BITS
from hecnn.ckks.security import MAX_LOG_QP_128, SUPPORTED_RING_DEGREES
from hecnn.compile.ir import AffineNode, ConcatNode, InputNode, MulNode, Node, PolyNode
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


#: bits of Δ_w for weights and coefficients applied in the rescale-free tail (relative weight
#: precision 2^-20, far below the CKKS noise; every tail factor adds these bits to the scale)
TAIL_WEIGHT_BITS = 20


def _multiplies(n: Node) -> bool:
    """A node that multiplies ciphertexts: a product node, or a polynomial with a term of
    degree ≥ 2."""
    if isinstance(n, MulNode):
        return True
    if not isinstance(n, PolyNode):
        return False
    if n.chebyshev:
        return n.degree >= 2
    return any(t.power >= 2 for t in schedule(n.coeffs, n.fold_leading).terms)


def _downstream(nodes: list[Node], start: Node) -> list[Node]:
    """Nodes that depend on ``start`` (topological order)."""
    reach = {start.name}
    out = []
    for n in nodes:
        if any(i in reach for i in n.inputs):
            reach.add(n.name)
            out.append(n)
    return out


def rescale_free_tail(nodes: list[Node], output: str) -> tuple[PolyNode, PolyNode] | None:
    """(P_prev, P_last) when the last two multiplying layers can run without relinearizing.

    P_prev's 3-component output flows through affine nodes into P_last, a degree-2 polynomial
    (no power feeds a further product), whose square then has 5 components; P_last and every
    (affine) node after it keep their products' scales instead of rescaling, and the client
    decrypts with s..s⁴. This saves one key switch per feature of P_prev or its consumers.
    """
    mult = [n for n in nodes if _multiplies(n)]
    if len(mult) < 2:
        return None
    last, prev = mult[-1], mult[-2]
    if not isinstance(last, PolyNode) or not isinstance(prev, PolyNode):
        return None
    if last.chebyshev or prev.chebyshev:  # these relinearize every product themselves
        return None
    sch = schedule(last.coeffs, last.fold_leading)
    if sch.relinearized_powers or max(sch.powers) > 2:
        return None
    after = nodes[nodes.index(last) + 1 :]
    if not all(isinstance(n, AffineNode) for n in after):
        return None
    users = consumers(nodes)
    cur = last
    while True:  # walk back from P_last through single-consumer affine nodes to P_prev
        (inp,) = cur.inputs
        node = next(n for n in nodes if n.name == inp)
        if len(users[node.name]) != 1:
            return None
        if node is prev:
            break
        if not isinstance(node, AffineNode):
            return None
        cur = node
    return prev, last


def plan_relinearization(
    nodes: list[Node], output: str, *, tail: bool = True
) -> tuple[PolyNode, PolyNode] | None:
    """Decide where ciphertexts are relinearized, and which nodes form a rescale-free tail.

    Each multiplying polynomial must see 2-component inputs, except the tail polynomial (see
    :func:`rescale_free_tail`). A 3-component polynomial output is relinearized only when a
    later multiplying layer needs it: right away, or after its affine consumers when they have
    fewer outputs than inputs (fewer key switches). Outputs that only flow through affine
    nodes to the client stay at 3 components (the client decrypts with s²).
    Sets ``relin_after``, ``rescale`` and ``components`` on the nodes; returns the tail pair
    (``tail=False``: no rescale-free tail).
    """
    users = consumers(nodes)
    tail = rescale_free_tail(nodes, output) if tail else None
    if tail is not None:
        last = tail[1]
        for n in [last, *nodes[nodes.index(last) + 1 :]]:
            n.rescale = False
    for n in nodes:
        if isinstance(n, MulNode) and n.rescale:
            # a rescaled 3-component product meets the rounding with s² (~N/5 per coefficient,
            # 2^-7 in the slots at N = 2^16 and the scale Δ/r of a composite ReLU's input):
            # relinearize it first, whatever follows — one key switch per feature
            n.relin_after = True
            continue
        if not _multiplies(n) or n.name == output:
            continue
        if tail is not None and n is tail[0]:
            continue  # its 3-component output feeds the tail polynomial unrelinearized
        if not any(_multiplies(m) for m in _downstream(nodes, n)):
            continue  # only affine work until the client: stay at 3 components
        lazy = _lazy_relinearizers(n, users, output)
        if lazy:
            for c in lazy:
                c.relin_after = True
        else:
            n.relin_after = True
    _count_components(nodes)
    return tail


def _lazy_relinearizers(n: Node, users: dict[str, list[Node]], output: str) -> list[Node]:
    """The affine nodes that should relinearize in ``n``'s place (fewer key switches), or [].

    Every consumer must be affine, with fewer outputs together than ``n`` — or a concatenation
    whose consumers are all affine, with fewer outputs together than the concatenation (a Fire module's
    expands, 2×16,384 features, feed the next squeeze, 4,096): the 3-component ciphertexts
    pass through the concatenation unchanged."""
    direct = users[n.name]
    out = [c for c in direct if isinstance(c, AffineNode)]
    if sum(c.features for c in out) >= n.features:
        return []
    for c in direct:
        if isinstance(c, AffineNode):
            continue
        if not isinstance(c, ConcatNode) or c.name == output or not users[c.name]:
            return []
        behind = users[c.name]
        if not all(isinstance(x, AffineNode) for x in behind):
            return []
        if sum(x.features for x in behind) >= c.features:
            return []
        out += behind
    return out


def _can_defer(n: Node, output: str) -> bool:
    """A polynomial whose last rescale the executor can leave to its consumers: x² + c1·x
    (leading coefficient folded), a single product and a single rescale."""
    if not isinstance(n, PolyNode) or n.chebyshev or not n.rescale or n.name == output:
        return False
    if not n.fold_leading:
        return False
    sch = schedule(n.coeffs, n.fold_leading)
    return sch.depth == 1 and bool(sch.terms) and max(sch.powers) == 2


def _deferral_groups(nodes: list[Node], output: str) -> list[tuple[list[PolyNode], list[Node]]]:
    """(polynomials, their affine consumers) that could defer their last rescale together:
    a polynomial read only by rescaling affine nodes, or every input of a concatenation read
    only by such nodes (a Fire module's expands: both branches must land on one scale)."""
    users = consumers(nodes)
    by_name = {n.name: n for n in nodes}

    def affine_only(ns: list[Node]) -> bool:
        return bool(ns) and all(isinstance(c, AffineNode) and c.rescale for c in ns)

    groups, seen = [], set()
    for n in nodes:
        if not _can_defer(n, output):
            continue
        direct = users[n.name]
        if affine_only(direct):
            groups.append(([n], direct))
            continue
        if len(direct) != 1 or not isinstance(direct[0], ConcatNode) or direct[0].name in seen:
            continue
        cat = direct[0]
        seen.add(cat.name)
        polys = [by_name[i] for i in cat.inputs]
        single = all(len(users[p.name]) == 1 for p in polys)
        eligible = all(_can_defer(p, output) for p in polys)
        if cat.name != output and single and eligible and affine_only(users[cat.name]):
            groups.append((polys, users[cat.name]))
    return groups


def defer_rescales(nodes: list[Node], output: str) -> list[str]:
    """Let polynomials leave their last rescale to affine consumers with fewer outputs.

    A rescale costs about one NTT per limb and component (~34 multiply-accumulates' worth,
    :data:`~hecnn.compile.cost.RESCALE_MACS`) for *every* ciphertext it touches. Rescaling is
    linear up to its rounding, so W·(x/q) = (W·x)/q: a polynomial's output can stay at its
    product's scale, one level higher, and the affine node reading it rescales twice after its
    sums — on its own outputs, 16× fewer where a 3×3 conv on 64 channels is pooled into a
    16-channel squeeze. The consumer's products then run one limb higher, and its rescales
    touch one more limb; the group is deferred where the estimate says the trade pays.
    The depth is unchanged (the polynomial consumes one level less, its consumers one more).
    Levels must be assigned; call :func:`assign_levels` again afterwards. Returns a sentence
    per deferred group.
    """
    from hecnn.compile.cost import RELIN_MACS, RESCALE_MACS

    comps = {n.name: n.components for n in nodes}
    out = []
    for polys, affs in _deferral_groups(nodes, output):
        gain = sum(p.features * p.components / 2 * RESCALE_MACS * p.level_in for p in polys)
        cost = 0.0
        for a in affs:
            cin = max(comps[a.inputs[0]], 2)
            c_resc = 2 if a.relin_after else cin
            cost += a.macs * cin / 2  # the products: one more limb
            cost += RELIN_MACS * a.features * (a.relin_after and cin > 2)
            cost += a.features * c_resc / 2 * RESCALE_MACS * (a.level_in + 1)  # the extra rescale
        if gain <= cost:
            continue
        for p in polys:
            p.defer_rescale = True
        for a in affs:
            a.owed_rescales = 1
        names = ", ".join(p.name for p in polys)
        readers = ", ".join(a.name for a in affs)
        out.append(
            f"{names}: last rescale deferred to {readers} "
            f"({sum(p.features for p in polys):,} → {sum(a.features for a in affs):,} "
            f"ciphertexts rescaled; estimated {gain / cost:.0f}× the extra work saved)"
        )
        head = _deferring_head(polys[0], nodes) if len(polys) == 1 else None
        if head is not None:
            out += _defer_head(head, polys[0], affs)
    check_deferred_rescales(nodes)
    return out


def _defer_head(head: AffineNode, p: PolyNode, affs: list[Node]) -> list[str]:
    """Let the first affine layer leave its rescale to ``affs`` as well (they then divide by
    three primes), where the estimate says it pays.

    The input arrives at Δ; the head's weights are encoded at a fixed Δ_w (a third of the
    three primes' bits beyond Δ, ~2^20 at Δ = 2^30) instead of ≈ q_ℓ, so its products sit at
    Δ·Δ_w, the polynomial's x² at (Δ·Δ_w)², and the consumers' weights come out at
    Δ·q_ℓq_{ℓ−1}q_{ℓ−2}/(Δ·Δ_w)² ≈ Δ_w again: both keep 2^-20 relative precision. Saved: the
    head's rescale of every output (the widest layer of a CNN: 65,536 ciphertexts at the top
    level in hemet_squeezenet). Paid: the polynomial and the consumers' products one limb
    higher, and a third rescale after the consumers' sums.
    """
    from hecnn.compile.cost import RELIN_MACS, RESCALE_MACS

    gain = head.features * RESCALE_MACS * head.level_in
    cost = p.features * p.components / 2  # the square, one limb more
    cin = max(p.components, 2)
    for a in affs:
        cost += a.macs * cin / 2 + RELIN_MACS * a.features * (a.relin_after and cin > 2)
        cost += a.features * RESCALE_MACS * (a.level_in + 1)
    if gain <= cost:
        return []
    head.defer_rescale = True
    for a in affs:
        a.owed_rescales = 2
    readers = ", ".join(a.name for a in affs)
    return [
        f"{head.name}: rescale deferred through {p.name} to {readers} ({head.features:,} → "
        f"{sum(a.features for a in affs):,} ciphertexts rescaled; estimated "
        f"{gain / cost:.0f}× the extra work saved)"
    ]


def _deferring_head(p: PolyNode, nodes: list[Node]) -> AffineNode | None:
    """The affine node before ``p`` when it could leave its rescale to p's consumers too."""
    by_name = {n.name: n for n in nodes}
    src = by_name[p.inputs[0]]
    return src if _head_may_defer(src, by_name, consumers(nodes)) else None


def _head_may_defer(n: Node, by_name: dict[str, Node], users: dict[str, list[Node]]) -> bool:
    """n is a rescaling affine layer that reads the plan's input (at scale Δ), owes nothing,
    lands on Δ, stays at 2 components, and is read by one polynomial alone."""
    return (
        isinstance(n, AffineNode)
        and n.rescale
        and not n.owed_rescales
        and n.scale_factor == 1.0
        and not n.relin_after
        and isinstance(by_name[n.inputs[0]], InputNode)
        and len(users[n.name]) == 1
        and isinstance(users[n.name][0], PolyNode)
    )


def owed_by(n: Node, by_name: dict[str, Node]) -> int:
    """Rescales n's output still owes: 1 for a deferring affine head, 1 + its input's for a
    deferring polynomial (x² of a product at Δ·Δ_w still owes that product's rescale), the
    common count of a concatenation's inputs, 0 otherwise."""
    if isinstance(n, AffineNode):
        return int(n.defer_rescale)
    if isinstance(n, PolyNode):
        return 1 + owed_by(by_name[n.inputs[0]], by_name) if n.defer_rescale else 0
    if isinstance(n, ConcatNode):
        owed = {owed_by(by_name[i], by_name) for i in n.inputs}
        if len(owed) > 1:
            raise ParameterError(
                f"{n.name}: concatenates deferred and rescaled inputs (owing {sorted(owed)})"
            )
        return owed.pop()
    return 0


def check_deferred_rescales(nodes: list[Node]) -> None:
    """Every deferred rescale is done by exactly the affine nodes that read it: a deferred
    output is read only by affine nodes owing its rescales (directly or through a
    concatenation), a deferring affine head only by a deferring polynomial, and every owed
    rescale has a producer that deferred it."""
    by_name = {n.name: n for n in nodes}
    users = consumers(nodes)
    for n in nodes:
        if isinstance(n, PolyNode) and n.defer_rescale and not _can_defer(n, ""):
            raise ParameterError(f"{n.name}: only x² + c·x (lead folded) defers its rescale")
        if isinstance(n, AffineNode):
            if n.owed_rescales not in (0, 1, 2):
                raise ParameterError(f"{n.name}: owes {n.owed_rescales} rescales (0 to 2)")
            owed = owed_by(by_name[n.inputs[0]], by_name)
            if n.owed_rescales != owed or (owed and not n.rescale):
                raise ParameterError(
                    f"{n.name}: owes {n.owed_rescales} rescales, its input defers {owed}"
                )
            if n.defer_rescale:
                if not (_head_may_defer(n, by_name, users) and users[n.name][0].defer_rescale):
                    raise ParameterError(
                        f"{n.name}: only a first affine layer read by one deferring "
                        "polynomial defers its rescale"
                    )
                continue
        if not owed_by(n, by_name):
            continue
        for c in users[n.name]:
            if not isinstance(c, ConcatNode | AffineNode) or (
                isinstance(c, AffineNode) and not c.owed_rescales
            ):
                raise ParameterError(f"{c.name}: reads {n.name}, whose rescale it does not do")


def relinearize_every_product(nodes: list[Node], output: str) -> None:
    """Per-image packing: every multiplying node but the output relinearizes its own output —
    the affine layers after it rotate, and a rotation switches keys on 2 components only."""
    for n in nodes:
        n.rescale = True
        n.relin_after = _multiplies(n) and n.name != output
    _count_components(nodes)


def _count_components(nodes: list[Node]) -> None:
    comps: dict[str, int] = {}
    for n in nodes:
        c = max((comps[i] for i in n.inputs), default=2)
        if isinstance(n, MulNode):
            c = 3  # the executor relinearizes 3-component factors first
        elif isinstance(n, PolyNode) and n.chebyshev:
            c = 2  # every product is relinearized before its rescale
        elif _multiplies(n):
            if n.rescale:  # the executor relinearizes a 3-component input first
                c = 3
            else:  # tail: x^top of a c-component x has top·(c − 1) + 1 components
                c = max(t.power for t in schedule(n.coeffs, n.fold_leading).terms) * (c - 1) + 1
        if n.relin_after:
            c = 2
        comps[n.name] = n.components = c


def assign_scale_factors(nodes: list[Node]) -> None:
    """Let the producer of each Chebyshev polynomial's input land at Δ/radius.

    A ciphertext of x at scale Δ/r read at scale Δ is a ciphertext of x/r: the division costs
    no level, and the T_k(x/r) then keep scales ≈ Δ (reading x at Δ as x/r at Δ·r instead would
    let T_k's scale grow like r^k and starve the scalars of precision). Affine and Chebyshev
    producers whose other consumers are products can land anywhere; others keep Δ (and the
    polynomial reads its input at scale·r).
    """
    by_name = {n.name: n for n in nodes}
    users = consumers(nodes)
    for n in nodes:
        if not (isinstance(n, PolyNode) and n.chebyshev):
            continue
        src = by_name[n.inputs[0]]
        chebyshev_src = isinstance(src, PolyNode) and src.chebyshev
        # only where every other consumer is a product (indifferent to its factor's scale)
        free = all(isinstance(c, MulNode) or c is n for c in users[src.name])
        lands = (isinstance(src, AffineNode) and src.rescale) or chebyshev_src
        if free and lands and src.scale_factor == 1.0:
            src.scale_factor = 1.0 / n.radius


def tail_scale_bits(nodes: list[Node], scale_bits: int) -> int:
    """Bits the tail adds to the output's scale beyond Δ (0 without a tail)."""
    extra = 0
    for n in nodes:
        if n.rescale:
            continue
        if isinstance(n, PolyNode):
            top = max(t.power for t in schedule(n.coeffs, n.fold_leading).terms)
            extra += (top - 1) * scale_bits + (0 if n.fold_leading else TAIL_WEIGHT_BITS)
        elif isinstance(n, AffineNode):
            extra += TAIL_WEIGHT_BITS
    return extra


#: the largest scale a plan picks (≤ the 31-bit word-size primes, one bit of headroom)
MAX_SCALE_BITS = 30


def choose_parameters(
    depth: int,
    batch: int,
    output_bound: float,
    *,
    scale_bits: int | None = None,
    insecure_ring: int | None = None,
    tail_bits: Callable[[int], int] | None = None,
    tight_base: bool = False,
    min_scale_bits: int = 26,
) -> CkksParameters:
    """Smallest secure ring for ``depth`` and ``batch``; then the largest scale that fits it.

    ``insecure_ring`` forces a small ring degree for unit tests (parameters are then marked
    insecure and refused by servers). ``tail_bits(scale_bits)``: extra scale bits the output
    carries from a rescale-free tail; the base modulus holds them too. ``tight_base`` also
    tries a base modulus of exactly the bits needed (split over several smaller primes) rather
    than whole 31-bit primes: one fewer bit-hungry prime can halve the ring (per-image plans,
    where N is set by the depth alone).
    """
    value_bits = max(1, math.ceil(math.log2(max(output_bound, 1.0) * 2)) + 1)
    top = MAX_SCALE_BITS
    candidates = range(min(min_scale_bits, top), top + 1) if scale_bits is None else [scale_bits]
    best: CkksParameters | None = None
    for sb in candidates:
        extra = tail_bits(sb) if tail_bits else 0
        need = max(sb + extra + value_bits, sb + 1)
        rounded = (
            need if need <= MAX_PRIME_BITS else MAX_PRIME_BITS * math.ceil(need / MAX_PRIME_BITS)
        )
        for base in dict.fromkeys([rounded, need] if tight_base else [rounded]):
            p = _try_parameters(depth, sb, base, batch, insecure_ring)
            if p is None:
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


def _try_parameters(
    depth: int, sb: int, base: int, batch: int, insecure_ring: int | None
) -> CkksParameters | None:
    """The parameter set for one (scale, base) choice, or None where none exists."""
    try:
        if insecure_ring is not None:
            return CkksParameters.create(
                depth,
                scale_bits=sb,
                first_prime_bits=base,
                n=insecure_ring,
                allow_insecure_test_only=True,
            )
        min_n = max(4096, 1 << math.ceil(math.log2(max(2 * batch, 2))))
        return CkksParameters.create(depth, scale_bits=sb, first_prime_bits=base, min_n=min_n)
    except ParameterError:
        return None


def input_node(nodes: list[Node]) -> InputNode:
    ins = [n for n in nodes if isinstance(n, InputNode)]
    if len(ins) != 1:
        raise ParameterError(f"a plan needs exactly one input, found {len(ins)}")
    return ins[0]
