"""Plaintext execution of a plan in float64: the same folded graph, no encryption.

It checks the compiler (the plan must compute what the model computes) and gives the reference
an encrypted run is compared with, in milliseconds.
"""

from __future__ import annotations

import numpy as np

from hecnn.compile.chebyshev import evaluate as chebyshev_values
from hecnn.compile.ir import AddNode, AffineNode, ConcatNode, InputNode, MulNode, Plan, PolyNode


def simulate(plan: Plan, images: np.ndarray) -> np.ndarray:
    """images (B, *input_shape) → outputs (B, classes), evaluating the plan node by node."""
    return simulate_nodes(plan, images)[plan.output].T


def simulate_nodes(plan: Plan, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every node's plaintext value, (features, B) — what an encrypted run's nodes should
    decrypt to (``benchmarks/node_replay.py`` compares them node by node)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1).T  # (features, B)
    vals: dict[str, np.ndarray] = {}
    for n in plan.nodes:
        if isinstance(n, InputNode):
            vals[n.name] = x
        elif isinstance(n, AffineNode):
            v = vals[n.inputs[0]]
            out = np.zeros((n.weights.out_features, v.shape[1]))
            for b in n.weights.blocks:
                out[b.out_idx] += b.weights @ v[b.in_idx]
            vals[n.name] = out if n.bias is None else out + n.bias[:, None]  # bias optional
        elif isinstance(n, PolyNode) and n.chebyshev:
            vals[n.name] = chebyshev_values(n.coeffs, vals[n.inputs[0]] / n.radius)
        elif isinstance(n, PolyNode):
            v = vals[n.inputs[0]]
            acc = np.zeros_like(v)
            for c in n.coeffs[::-1]:  # Horner
                acc = acc * v + c[:, None]
            vals[n.name] = acc
        elif isinstance(n, AddNode):
            vals[n.name] = vals[n.inputs[0]] + vals[n.inputs[1]]
        elif isinstance(n, MulNode):
            vals[n.name] = vals[n.inputs[0]] * vals[n.inputs[1]]
        elif isinstance(n, ConcatNode):
            vals[n.name] = np.concatenate([vals[i] for i in n.inputs])
    return vals
