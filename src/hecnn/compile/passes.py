"""Graph passes on raw plan nodes, each a function from node list to node list.

- :func:`merge_affine` — compose chains of affine nodes (conv → BN → pooling → linear …) into
  one: W = W2·W1, b = W2·b1 + b2, so every chain costs one level;
- :func:`fold_elementwise_affine` — an elementwise affine map after a polynomial (a batch-norm
  behind an activation whose output branches or is concatenated, so :func:`merge_affine` cannot
  reach it) is part of the polynomial: d·p(x) + b, saving its level;
- :func:`fold_leading_coefficients` — p = c_d·(x^d + Σ (c_i/c_d) x^i): evaluate the monic part
  and scale the columns of the next affine nodes by c_d (through a concatenation too), saving
  the scalar's level; where the monic part would grow too large, the producer's rows are
  scaled down first (x = x'/t);
- :func:`block_weights` — turn each sparse matrix into dense blocks of rows that share their
  column set (one block per output position of a convolution).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import scipy.sparse as sp

from hecnn.ckks.linear import BlockSparseWeights, WeightBlock
from hecnn.compile.ir import AffineNode, ConcatNode, Node, PolyNode

#: fold c_d only while the monic polynomial p/c_d stays below this bound on the recorded input
#: range. Dividing by a small c_d costs no precision (the next layer multiplies by c_d again,
#: so absolute errors are unchanged); it only grows the values, which must fit the modulus at
#: the polynomial's level (≥ 2^60 above the scale) with a wide margin.
FOLD_MAX_VALUE = 2.0**20
#: smallest input pre-scale t of a folded polynomial (see :func:`fold_leading_coefficients`):
#: the producer's noise reaches the output amplified by up to 1/t
FOLD_MIN_PRESCALE = 2.0**-8
#: input bound assumed when an activation recorded no range
DEFAULT_INPUT_BOUND = 8.0


def consumers(nodes: list[Node]) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        for i in n.inputs:
            out[i].append(n)
    return out


def _until_stable(nodes: list[Node], step) -> list[Node]:
    """Apply ``step(n, by_name, users)`` — which folds node ``n`` with a neighbour and returns
    the node to drop, or None — to the first node it applies to, until none does."""
    while True:
        by_name = {n.name: n for n in nodes}
        users = consumers(nodes)
        for n in nodes:
            gone = step(n, by_name, users)
            if gone is not None:
                nodes = [m for m in nodes if m is not gone]
                break
        else:
            return nodes


def merge_affine(
    nodes: list[Node],
    output: str,
    *,
    keep_apart: frozenset[str] = frozenset(),
    merged: list[tuple[str, str, float]] | None = None,
) -> list[Node]:
    """Compose each affine node into its affine consumer when it has no other consumer.

    Merging saves a level but can multiply the MACs: a 2×2 average pooling composed into the
    3×3 convolution after it is a 6×6 stride-2 convolution, 4× the MACs of the 3×3 one.
    ``keep_apart`` names producers to leave apart from their consumer (a producer's name
    identifies the merge: its consumer takes over what is merged into it, under its own name);
    ``merged``, when given, receives (producer, consumer, MACs merged ÷ MACs apart) for every
    merge done.
    """

    def step(n: Node, by_name: dict, users: dict) -> Node | None:
        if not isinstance(n, AffineNode):
            return None
        prev = by_name.get(n.inputs[0])
        if not isinstance(prev, AffineNode) or len(users[prev.name]) != 1:
            return None
        if prev.name == output or prev.name in keep_apart:
            return None
        apart = prev.matrix.nnz + n.matrix.nnz
        n.bias = n.matrix @ prev.bias + n.bias
        n.matrix = (n.matrix @ prev.matrix).tocsr()
        if merged is not None:
            merged.append((prev.name, n.name, n.matrix.nnz / max(apart, 1)))
        n.inputs = prev.inputs
        n.source = f"{prev.source} → {n.source}"
        return prev

    return _until_stable(nodes, step)


def _diagonal(matrix: sp.spmatrix) -> np.ndarray | None:
    """The diagonal of a square sparse matrix with no entry off it, else None."""
    if matrix.shape[0] != matrix.shape[1]:
        return None
    coo = sp.coo_matrix(matrix)
    if np.any(coo.row != coo.col):
        return None
    return np.asarray(matrix.diagonal(), dtype=np.float64)


def fold_elementwise_affine(nodes: list[Node], output: str) -> list[Node]:
    """Fold y = d ⊙ p(x) + b into the polynomial: coefficients c_i ← d·c_i, c_0 ← c_0 + b.

    Conv → activation → batch-norm (HEMET's order) leaves such a node wherever the activation's
    output branches (a Fire module's squeeze feeds two expands) or is concatenated: there it
    cost a level and a pass over every ciphertext. Only power-basis polynomials with this node
    as their one consumer, and equal shapes (the layout of per-image packing follows the shape).
    """

    def step(n: Node, by_name: dict, users: dict) -> Node | None:
        if not isinstance(n, AffineNode) or n.name == output or n.matrix is None:
            return None
        prev = by_name.get(n.inputs[0])
        if not isinstance(prev, PolyNode) or prev.chebyshev or prev.name == output:
            return None
        if len(users[prev.name]) != 1 or tuple(prev.shape) != tuple(n.shape):
            return None
        d = _diagonal(n.matrix)
        if d is None:
            return None
        prev.coeffs = prev.coeffs * d[None, :]
        prev.coeffs[0] = prev.coeffs[0] + np.asarray(n.bias, dtype=np.float64)
        prev.source = f"{prev.source} → {n.source}"
        for c in users[n.name]:
            c.inputs = tuple(prev.name if i == n.name else i for i in c.inputs)
        return n

    return _until_stable(nodes, step)


def _column_targets(
    n: Node, users: dict[str, list[Node]], by_name: dict[str, Node], output: str
) -> list[tuple[AffineNode, int]] | None:
    """The affine nodes that read ``n``'s outputs, each with the column where they start (an
    affine consumer reads them from column 0; one behind a concatenation at the concat's
    offset of ``n``), or None when some consumer is not affine."""
    targets: list[tuple[AffineNode, int]] = []
    for c in users[n.name]:
        if isinstance(c, AffineNode):
            targets.append((c, 0))
            continue
        if not isinstance(c, ConcatNode) or c.name == output or c.inputs.count(n.name) != 1:
            return None
        behind = users[c.name]
        if not behind or not all(isinstance(x, AffineNode) for x in behind):
            return None
        offset = sum(by_name[i].features for i in c.inputs[: c.inputs.index(n.name)])
        targets += [(x, offset) for x in behind]
    return targets or None


def _monic_bounds(n: PolyNode) -> np.ndarray:
    """Per feature, a bound on |x^d + … + (c_1/c_d)·x| over the recorded input range (with a
    margin); inf where c_d = 0."""
    lead = n.coeffs[-1]
    r = max(map(abs, n.input_range)) if n.input_range else DEFAULT_INPUT_BOUND
    r = 1.5 * max(r, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        monic = n.coeffs[1:] / lead
        bound = np.sum(np.abs(monic) * r ** np.arange(1, n.degree + 1)[:, None], 0)
    return np.where(np.isfinite(bound), bound, np.inf)


def _prescale(n: PolyNode, by_name: dict[str, Node], users: dict[str, list[Node]], output: str):
    """Per-feature input scales t ≤ 1 that keep n's monic part below :data:`FOLD_MAX_VALUE`,
    or None when it cannot be folded.

    With x = x'/t, p(x) = c_d·t^-d·(x'^d + Σ_i (c_i/c_d)·t^(d−i)·x'^i): the monic part's bound
    on the range of x' = t·x is t^d times the bound for x, so t = (FOLD_MAX_VALUE/bound)^(1/d)
    where the bound is too large. x' costs nothing when n's producer is an affine node read by
    n alone: its rows and bias are scaled by t. The price is precision: the producer's noise
    reaches the output amplified by 1/t, so t stays ≥ :data:`FOLD_MIN_PRESCALE`, and only
    quadratics are pre-scaled (a degree-7 sigmoid fit pre-scaled so folds with consumer weights
    of ~1e-9, which the fixed-point model of :func:`hecnn.check.simulate_ckks` rounds away).
    """
    bound = _monic_bounds(n)
    if np.all(bound <= FOLD_MAX_VALUE):
        return np.ones(n.features)
    t = np.minimum(1.0, (FOLD_MAX_VALUE / bound) ** (1.0 / n.degree))
    prod = by_name.get(n.inputs[0])
    if (
        n.degree != 2
        or not np.all(t >= FOLD_MIN_PRESCALE)
        or not isinstance(prod, AffineNode)
        or prod.matrix is None
        or prod.name == output
        or [u.name for u in users[prod.name]] != [n.name]
    ):
        return None
    return t


def fold_leading_coefficients(
    nodes: list[Node], output: str, notes: list[str] | None = None
) -> list[Node]:
    """Fold c_d of a polynomial into its consumers when they are all affine (directly or behind
    a concatenation): each scales the columns that read the polynomial by c_d, and takes its
    constant c_0 into its bias — p = c_d·(x^d + … + (c_1/c_d)·x) + c_0, so the monic part stays
    small even where c_0/c_d would not (a batch-norm's shift folded into a small c_d).

    Where the monic part would still exceed :data:`FOLD_MAX_VALUE` (a nearly linear element:
    tiny c_d), the polynomial's input is scaled down by its producer (see :func:`_prescale`);
    ``notes`` receives a line per polynomial folded so.

    The inputs of a concatenation fold all or none: a folded polynomial's output lands at
    scale(x)²/q, an unfolded one at Δ, and a concatenation needs one scale."""
    users = consumers(nodes)
    by_name = {n.name: n for n in nodes}
    foldable = {}
    for n in nodes:
        if (
            not isinstance(n, PolyNode)
            or n.name == output
            or n.degree < 2
            or n.chebyshev
            or np.any(n.coeffs[-1] == 0)
        ):
            continue
        t = _prescale(n, by_name, users, output)
        targets = _column_targets(n, users, by_name, output)
        if t is not None and targets is not None:
            foldable[n.name] = (targets, t)
    for c in nodes:
        if isinstance(c, ConcatNode) and not all(i in foldable for i in c.inputs):
            for i in c.inputs:
                foldable.pop(i, None)
    for name, (targets, t) in foldable.items():
        n = by_name[name]
        d = n.degree
        lead = n.coeffs[-1] * t**-d  # c_d·t^-d: the factor the consumers take
        constant = n.coeffs[0]
        for c, offset in targets:
            cols = c.matrix[:, offset : offset + n.features]
            bias = np.zeros(c.matrix.shape[0]) if c.bias is None else c.bias
            c.bias = bias + cols @ constant
            scale = np.ones(c.matrix.shape[1])
            scale[offset : offset + n.features] = lead
            c.matrix = (c.matrix @ sp.diags(scale)).tocsr()
        powers = np.arange(1, d + 1)[:, None]
        monic = n.coeffs[1:] / n.coeffs[-1] * t[None, :] ** (d - powers)
        n.coeffs = np.vstack([np.zeros((1, n.features)), monic])
        n.fold_leading = True
        if np.any(t < 1):
            prod = by_name[n.inputs[0]]
            prod.matrix = (sp.diags(t) @ prod.matrix).tocsr()
            if prod.bias is not None:
                prod.bias = prod.bias * t
            if notes is not None:
                notes.append(
                    f"{name}: leading coefficient folded after {prod.name} scaled "
                    f"{int(np.sum(t < 1)):,} of its {n.features:,} outputs down (to ×"
                    f"{float(t.min()):.3g}) to keep the monic polynomial below "
                    f"2^{np.log2(FOLD_MAX_VALUE):.0f}"
                )
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
