"""A plan's estimated server work: for progress bars, ETAs and the compiler's choices.

Every operation scales with the RNS limbs it touches (level + 1) and the ring degree N; a
multiply-accumulate of an affine node costs in proportion to its input's components (a lazily
relinearized 3-component input is 1.5× a 2-component one), and a key switch (relinearization)
about as much as a few dozen multiply-accumulates (measured: ~25–40 at N = 2^12…2^15). An
estimate of ratios, not of seconds.
"""

from __future__ import annotations

from hecnn.compile.ir import AffineNode, Plan, PolyNode

#: one relinearization ≈ this many 2-component multiply-accumulates at the same level
RELIN_MACS = 40.0


def node_costs(plan: Plan) -> list[float]:
    """Relative cost of each node (in 2-component MACs at one limb), in plan order."""
    relins = plan.relinearizations()
    comps = {n.name: n.components for n in plan.nodes}
    out = []
    for n in plan.nodes:
        limbs = max(n.level_in, 0) + 1
        if isinstance(n, AffineNode):
            c = n.macs * max(comps.get(n.inputs[0], 2), 2) / 2
        elif isinstance(n, PolyNode):
            c = n.features * max(n.degree, 1)
        else:
            c = n.features * 0.05 if n.inputs else 0.0
        out.append((c + RELIN_MACS * relins[n.name]) * limbs)
    return out


def plan_work(plan: Plan) -> float:
    """Total estimated work of one run of the plan: Σ node costs × N (comparable across rings:
    a plan that needs a ring twice as large costs twice as much for the same batch)."""
    return sum(node_costs(plan)) * plan.params.n
