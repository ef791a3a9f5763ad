"""A plan's estimated server work: for progress bars, ETAs and the compiler's choices.

Every operation scales with the RNS limbs it touches (level + 1) and the ring degree N; a
multiply-accumulate of an affine node costs in proportion to its input's components (a lazily
relinearized 3-component input is 1.5× a 2-component one); a rescale (an NTT per limb and
component) and a key switch (relinearization) cost as much as many multiply-accumulates. An
estimate of ratios, not of seconds.

The two ratios were measured on a streamed 2-core run of the trained ``hemet_squeezenet``
(N = 2^12, 17 levels, batch 2048; cProfile): 191 s of products for 1.78e8 MAC units, 174 s of
rescales for 4.8e6 rescale units, ~65 s of key switches for 2.8e5 relinearization units.
"""

from __future__ import annotations

from hecnn.compile.ir import AffineNode, Plan, PolyNode

#: one relinearization ≈ this many 2-component multiply-accumulates at the same level
RELIN_MACS = 200.0
#: rescaling one 2-component ciphertext ≈ this many 2-component multiply-accumulates
RESCALE_MACS = 34.0


def node_costs(plan: Plan) -> list[float]:
    """Relative cost of each node (in 2-component MACs at one limb), in plan order."""
    relins = plan.relinearizations()
    comps = {n.name: n.components for n in plan.nodes}
    out = []
    for n in plan.nodes:
        limbs = max(n.level_in, 0) + 1
        if isinstance(n, AffineNode):
            cin = max(comps.get(n.inputs[0], 2), 2)
            c = n.macs * cin / 2
            if n.rescale:  # after a planned relinearization the rescale sees 2 components
                c += RESCALE_MACS * n.features * (2 if n.relin_after else cin) / 2 * n.depth
        elif isinstance(n, PolyNode):
            c = n.features * max(n.degree, 1) + RESCALE_MACS * n.features * 1.5 * n.depth
        else:
            c = n.features * 0.05 if n.inputs else 0.0
        relin_limbs = limbs - (n.rescales_before_relin if isinstance(n, AffineNode) else 0)
        out.append(c * limbs + RELIN_MACS * relins[n.name] * relin_limbs)
    return out


def plan_work(plan: Plan) -> float:
    """Total estimated work of one run of the plan: Σ node costs × N (comparable across rings:
    a plan that needs a ring twice as large costs twice as much for the same batch)."""
    return sum(node_costs(plan)) * plan.params.n
