"""Graph passes on raw plan nodes, each a function from node list to node list.

- :func:`merge_affine` — compose chains of affine nodes (conv → BN → pooling → linear …) into
  one: W = W2·W1, b = W2·b1 + b2, so every chain costs one level;
- :func:`fold_leading_coefficients` — p = c_d·(x^d + Σ (c_i/c_d) x^i): evaluate the monic part
  and scale the columns of the next affine node by c_d, saving the scalar's level;
- :func:`block_weights` — turn each sparse matrix into dense blocks of rows that share their
  column set (one block per output position of a convolution).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import scipy.sparse as sp

from hecnn.ckks.linear import BlockSparseWeights, WeightBlock
from hecnn.compile.ir import AffineNode, Node, PolyNode

#: fold c_d only while the monic polynomial p/c_d stays below this bound on the recorded input
#: range. Dividing by a small c_d costs no precision (the next layer multiplies by c_d again,
#: so absolute errors are unchanged); it only grows the values, which must fit the modulus at
#: the polynomial's level (≥ 2^60 above the scale) with a wide margin.
FOLD_MAX_VALUE = 2.0**20
#: input bound assumed when an activation recorded no range
DEFAULT_INPUT_BOUND = 8.0


def consumers(nodes: list[Node]) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        for i in n.inputs:
            out[i].append(n)
    return out


def merge_affine(nodes: list[Node], output: str) -> list[Node]:
    """Compose each affine node into its affine consumer when it has no other consumer."""
    changed = True
    while changed:
        changed = False
        by_name = {n.name: n for n in nodes}
        users = consumers(nodes)
        for n in nodes:
            if not isinstance(n, AffineNode):
                continue
            prev = by_name.get(n.inputs[0])
            if not isinstance(prev, AffineNode) or len(users[prev.name]) != 1:
                continue
            if prev.name == output:
                continue
            n.bias = n.matrix @ prev.bias + n.bias
            n.matrix = (n.matrix @ prev.matrix).tocsr()
            n.inputs = prev.inputs
            n.source = f"{prev.source} → {n.source}"
            nodes = [m for m in nodes if m is not prev]
            changed = True
            break
    return nodes


def fold_leading_coefficients(nodes: list[Node], output: str) -> list[Node]:
    """Fold c_d of a polynomial into its only consumer when that consumer is affine."""
    users = consumers(nodes)
    for n in nodes:
        if not isinstance(n, PolyNode) or n.name == output or n.degree < 2 or n.chebyshev:
            continue
        lead = n.coeffs[-1]
        if np.any(lead == 0):
            continue
        r = max(map(abs, n.input_range)) if n.input_range else DEFAULT_INPUT_BOUND
        r = 1.5 * max(r, 1.0)
        monic_bound = np.sum(np.abs(n.coeffs / lead) * r ** np.arange(n.degree + 1)[:, None], 0)
        if not np.all(np.isfinite(monic_bound)) or np.max(monic_bound) > FOLD_MAX_VALUE:
            continue
        cons = users[n.name]
        if len(cons) != 1 or not isinstance(cons[0], AffineNode):
            continue
        n.coeffs = n.coeffs / lead
        cons[0].matrix = (cons[0].matrix @ sp.diags(lead)).tocsr()
        n.fold_leading = True
    return nodes


def block_weights(nodes: list[Node]) -> list[Node]:
    """Group the rows of each sparse matrix by their column set into dense blocks."""
    for n in nodes:
        if not isinstance(n, AffineNode) or n.matrix is None:
            continue
        m = n.matrix.tocsr()
        m.sum_duplicates()
        groups: dict[bytes, list[int]] = defaultdict(list)
        for r in range(m.shape[0]):
            cols = m.indices[m.indptr[r] : m.indptr[r + 1]]
            groups[np.sort(cols).tobytes()].append(r)
        blocks = []
        for key, rows in groups.items():
            cols = np.frombuffer(key, dtype=m.indices.dtype).astype(np.int64)
            dense = m[rows][:, cols].toarray() if len(cols) else np.zeros((len(rows), 0))
            blocks.append(WeightBlock(np.array(rows, dtype=np.int64), cols, dense))
        n.weights = BlockSparseWeights(m.shape[0], m.shape[1], tuple(blocks))
        n.matrix = None
    return nodes
