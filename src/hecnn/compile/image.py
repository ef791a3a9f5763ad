"""Per-image packing: one image's features in the slots of a few ciphertexts.

Batch packing needs thousands of images to fill its slots; one image in batch packing wastes
almost all of them. Here the feature vector of one image lives in the slots, and every affine
node is a matrix–vector product by the diagonal method (Halevi–Shoup) with baby-step
giant-step rotations — rotations need Galois keys, and this module lists exactly the steps a
plan uses, so the client generates only those.

Layouts. A node's value is ``cts`` ciphertexts whose slot vectors repeat with a power-of-two
``period`` (the client replicates the input; the diagonal products keep the repetition), and
feature f sits in ciphertext ``pos[f] // period`` at slot ``pos[f] % period`` (and every copy of
it). Since a vector repeats with its period, rotating the whole slot vector by k rotates each
copy cyclically by k — the diagonal method needs exactly that. Slots no feature claims may hold
anything (their weights are zero).

An affine node W (out × in) with output row period m (a power of two ≥ out) works modulo
L = max(input period, m): the nonzero W[i, j] is placed on the diagonal c = (J − i) mod m at
"big row" I = i + t·m, t = ((J − i) mod L) // m, where J is j's slot. Rows are thus spread over
the L/m copies of the output (Gazelle's hybrid method), so a wide layer with few outputs needs
only m diagonals, and log2(L/m) rotate-and-sum steps add the copies. Layers wider than the
slots span several ciphertexts: a block of diagonals per (output ct, input ct).

The first layer can be cheaper still: the client may send any public rearrangement of its own
image. For a convolution it sends the taps of each output position side by side (im2col:
entry (rank r, position g) at slot r·G + g); output (channel c, position g) then sits on the
diagonal (r − c)·G, a handful of diagonals instead of hundreds. The compiler keeps this
expansion only when it lowers the estimated cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hecnn.ckks.linear import BlockSparseWeights
from hecnn.compile.ir import (
    AddNode,
    AffineNode,
    ConcatNode,
    InputNode,
    MulNode,
    Node,
    PolyNode,
)
from hecnn.compile.passes import consumers
from hecnn.errors import UnsupportedLayerError

#: cost of one rotation (a key switch) in plaintext products, measured at N=2^13 (~60×);
#: a hoisted baby-step rotation skips ModUp and costs about 0.6 of a plain one
ROTATION_COST = 60.0
HOISTED_FRACTION = 0.6


def pow2_ceil(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(x, 1))))


@dataclass(frozen=True, eq=False)
class Layout:
    """Feature f at slot ``pos[f] % period`` of ciphertext ``pos[f] // period``, repeated with
    the period across the slots."""

    period: int
    pos: np.ndarray

    @property
    def cts(self) -> int:
        return int(self.pos.max()) // self.period + 1 if len(self.pos) else 1

    def same_positions(self, other: Layout) -> bool:
        return self.cts == other.cts and np.array_equal(self.pos, other.pos)

    def plane(self, values: np.ndarray, slots: int) -> np.ndarray:
        """Per-feature ``values`` (…, features) → slot planes (…, cts, slots), repeated with the
        period; slots of no feature get 0."""
        v = np.asarray(values, dtype=np.float64)
        out = np.zeros((*v.shape[:-1], self.cts * self.period))
        out[..., self.pos] = v
        out = out.reshape(*v.shape[:-1], self.cts, self.period)
        return np.tile(out, (1,) * (out.ndim - 1) + (slots // self.period,))


@dataclass(eq=False)
class DiagonalMatrix:
    """An affine node as Σ_c diag_c ⊙ rot(x, c), grouped c = g·baby + j (BSGS).

    ``diags[(a, b, c)]``: the length-L diagonal c of the block (output ct a, input ct b);
    rot(x, k) rotates slots left by k. y_a = Σ_g rot(Σ_{b,j} rot(diag_{a,b,g·baby+j}, −g·baby)
    ⊙ rot(x_b, j), g·baby): baby-step rotations of x once (hoisted), one giant rotation per
    (a, g); then ``sum_steps`` rotate-and-add the output copies.
    """

    L: int
    m: int
    in_cts: int
    out_cts: int
    baby: int
    diags: dict[tuple[int, int, int], np.ndarray]
    bias: np.ndarray  # (out features,)
    sum_steps: tuple[int, ...]
    out: Layout

    @property
    def classes(self) -> list[int]:
        return sorted({c for _, _, c in self.diags})

    @property
    def baby_steps(self) -> list[int]:
        return sorted({c % self.baby for c in self.classes} - {0})

    @property
    def giant_steps(self) -> list[int]:
        return sorted({c - c % self.baby for c in self.classes} - {0})

    @property
    def rotation_steps(self) -> set[int]:
        return set(self.baby_steps) | set(self.giant_steps) | set(self.sum_steps)

    @property
    def rotations(self) -> int:
        """Key switches per evaluation (baby steps hoisted per input ciphertext)."""
        giants = {(a, c - c % self.baby) for a, _, c in self.diags} - {
            (a, 0) for a in range(self.out_cts)
        }
        return self.in_cts * len(self.baby_steps) + len(giants) + len(self.sum_steps)

    def cost(self) -> float:
        return _cost(
            len(self.diags),
            self.in_cts * len(self.baby_steps),
            self.out_cts * len(self.giant_steps) + len(self.sum_steps),
        )


def _cost(products: int, hoisted: int, plain: int) -> float:
    return products + ROTATION_COST * (HOISTED_FRACTION * hoisted + plain)


@dataclass(eq=False)
class ImagePacking:
    """Everything per-image evaluation needs beyond the plan's nodes: a layout per node, a
    diagonal form per affine node, the client's input arrangement, the rotation steps."""

    slots: int
    layouts: dict[str, Layout]
    matrices: dict[str, DiagonalMatrix]
    #: (input cts, input period) feature index of each input slot (−1: zero)
    input_gather: np.ndarray
    input_period: int

    @property
    def rotation_steps(self) -> list[int]:
        """Every rotation step the evaluation uses — the Galois keys the client must make."""
        steps: set[int] = set()
        for dm in self.matrices.values():
            steps |= dm.rotation_steps
        return sorted(steps)

    @property
    def input_cts(self) -> int:
        return self.input_gather.shape[0]


def _coo(w: BlockSparseWeights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols, vals = [], [], []
    for blk in w.blocks:
        r, c = np.meshgrid(blk.out_idx, blk.in_idx, indexing="ij")
        rows.append(r.ravel())
        cols.append(c.ravel())
        vals.append(blk.weights.ravel())
    if not rows:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0),)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def diagonalize(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    out_features: int,
    bias: np.ndarray,
    inp: Layout,
    slots: int,
) -> DiagonalMatrix:
    """The diagonal (BSGS) form of the sparse matrix (rows, cols, vals) on inputs laid out as
    ``inp``, with the cheapest baby-step size."""
    if out_features <= slots:
        m = pow2_ceil(out_features)
        L = max(inp.period, m)
    else:
        m = L = slots
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    p = inp.pos[cols]
    b, J = p // inp.period, p % inp.period
    a, i = rows // m, rows % m
    d = (J - i) % L
    c, t = d % m, d // m
    big = i + t * m
    diags: dict[tuple[int, int, int], np.ndarray] = {}
    key = (a * (inp.cts + 1) + b) * m + c
    order = np.argsort(key, kind="stable")
    starts = np.unique(key[order], return_index=True)[1]
    ends = np.append(starts[1:], len(order))[: len(starts)]
    for s, e in zip(starts, ends, strict=True):
        sel = order[s:e]
        vec = np.zeros(L)
        np.add.at(vec, big[sel], vals[sel])
        diags[(int(a[sel[0]]), int(b[sel[0]]), int(c[sel[0]]))] = vec
    out_cts = -(-out_features // m) if out_features > slots else 1
    sums = t.max(initial=0) > 0
    sum_steps = tuple(m << k for k in range(int(math.log2(L // m)))) if sums else ()
    period = m if sums else L
    if out_features > slots:
        period = slots
    out = Layout(period, np.arange(out_features, dtype=np.int64))
    baby = _best_baby_step(
        np.array(sorted({k[2] for k in diags}), dtype=np.int64), m, inp.cts, out_cts, len(diags)
    )
    return DiagonalMatrix(
        L, m, inp.cts, out_cts, baby, diags, np.asarray(bias, np.float64), sum_steps, out
    )


def _best_baby_step(classes: np.ndarray, m: int, in_cts: int, out_cts: int, products: int) -> int:
    """The baby-step size b (c = g + j, j = c mod b) with the least estimated cost, over every
    b ≤ m: diagonal sets of convolutions are arithmetic progressions modulo m, whose best b is
    often their stride, far from √#diagonals."""
    best_cost, best = math.inf, 1
    for b in range(1, m + 1):
        low = classes % b
        babies = len(np.unique(low[low != 0]))
        giants = len(np.unique((classes - low)[classes != low]))
        cost = _cost(products, in_cts * babies, out_cts * giants)
        if cost < best_cost:
            best_cost, best = cost, b
    return best


def _expanded(w: BlockSparseWeights):
    """im2col arrangement of the input for the first layer: the columns of each block (rows
    sharing a column set) side by side, rank-major. Returns (gather, rows, cols', vals)."""
    groups = [blk for blk in w.blocks if len(blk.in_idx)]
    G = len(groups)
    R = max((len(blk.in_idx) for blk in groups), default=0)
    gather = np.full(R * G, -1, dtype=np.int64)
    rows, cols, vals = [], [], []
    for g, blk in enumerate(groups):
        k = len(blk.in_idx)
        gather[np.arange(k) * G + g] = blk.in_idx
        r, rank = np.meshgrid(blk.out_idx, np.arange(k), indexing="ij")
        rows.append(r.ravel())
        cols.append((rank * G + g).ravel())
        vals.append(blk.weights.ravel())
    return gather, np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _contiguous(features: int, slots: int) -> Layout:
    period = min(pow2_ceil(features), slots)
    return Layout(period, np.arange(features, dtype=np.int64))


def pack_image(nodes: list[Node], slots: int, *, expand_input: bool | None = None) -> ImagePacking:
    """Layouts and diagonal forms of a leveled plan's nodes for ``slots`` slots per ciphertext.

    ``expand_input``: None lets the cost estimate decide whether the client sends the first
    layer's im2col arrangement; True/False force it.
    """
    users = consumers(nodes)
    layouts: dict[str, Layout] = {}
    matrices: dict[str, DiagonalMatrix] = {}
    gather = period = None
    for n in nodes:
        if isinstance(n, InputNode):
            lay = _contiguous(n.features, slots)
            layouts[n.name] = lay
            gather = np.full(lay.cts * lay.period, -1, dtype=np.int64)
            gather[lay.pos] = np.arange(n.features)
            period = lay.period
        elif isinstance(n, AffineNode):
            inp = layouts[n.inputs[0]]
            rows, cols, vals = _coo(n.weights)
            dm = diagonalize(rows, cols, vals, n.features, n.bias, inp, slots)
            src = next(m for m in nodes if m.name == n.inputs[0])
            if (
                isinstance(src, InputNode)
                and len(users[src.name]) == 1
                and expand_input is not False
            ):
                g2, r2, c2, v2 = _expanded(n.weights)
                lay2 = _contiguous(len(g2), slots)
                dm2 = diagonalize(r2, c2, v2, n.features, n.bias, lay2, slots)
                if expand_input or dm2.cost() < dm.cost():
                    dm = dm2
                    layouts[src.name] = lay2
                    gather = np.full(lay2.cts * lay2.period, -1, dtype=np.int64)
                    gather[: len(g2)] = g2
                    period = lay2.period
            matrices[n.name] = dm
            layouts[n.name] = dm.out
        elif isinstance(n, PolyNode):
            layouts[n.name] = layouts[n.inputs[0]]
        elif isinstance(n, (AddNode, MulNode)):
            la, lb = (layouts[i] for i in n.inputs)
            if not la.same_positions(lb):
                raise UnsupportedLayerError(
                    f"{n.source or n.name}: per-image packing adds/multiplies only tensors laid "
                    "out alike (e.g. two affine outputs); use packing='batch' for this model"
                )
            layouts[n.name] = Layout(max(la.period, lb.period), la.pos)
        elif isinstance(n, ConcatNode):
            ins = [layouts[i] for i in n.inputs]
            per = max(lay.period for lay in ins)
            pos, offset = [], 0
            for lay in ins:
                pos.append(lay.pos + offset * per)
                offset += lay.cts
            layouts[n.name] = Layout(per, np.concatenate(pos))
        else:  # pragma: no cover
            raise UnsupportedLayerError(f"per-image packing has no rule for {type(n).__name__}")
    return ImagePacking(slots, layouts, matrices, gather.reshape(-1, period), period)
