"""How one batch's layers are split across workers: output slices chosen from the memory model.

A node's outputs are independent ciphertexts, so any subset of them can be computed alone from
the input rows it reads: an affine node's rows from the columns their weights touch (a band of
a convolution's input, all of a dense layer's), an element-wise node's (polynomial, product,
sum) from the same features of its inputs, a concatenation's from the parts of its inputs they
come from. A *slice* is such a subset, computed by one task; the slices of a layer together are
its whole output, so a layer that does not fit one machine runs on several.

The split of each node is the smallest number of slices whose largest estimated working set —
the input rows it reads plus what the node holds while computing it
(:func:`hecnn.compile.streaming.working_bytes`, the same model the streaming executor budgets
with) — fits the per-worker memory. An affine node is sliced along its weight blocks
(:func:`hecnn.compile.streaming.head_chunks`), so a slice's rows share their inputs and every
slice is encoded with the whole matrix's exponent: the slices equal the whole layer bit for bit.

Pure index bookkeeping, no ciphertexts and no Ray: the schedule can be inspected (and tested)
before any cluster exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.linear import BlockSparseWeights
from hecnn.compile.ir import (
    AddNode,
    AffineNode,
    ConcatNode,
    InputNode,
    MulNode,
    Node,
    Plan,
    PolyNode,
)
from hecnn.compile.streaming import (
    HeadChunk,
    head_chunks,
    input_rows,
    output_bytes,
    working_bytes,
)
from hecnn.errors import ParameterError

#: a node is cut finer only while that shrinks its largest slice below this share: a dense
#: layer's slices each read the whole input, so cutting it finer multiplies the bytes moved
#: while its peak stays that of the input (the schedule then says it does not fit)
SHRINK = 0.9


@dataclass(frozen=True)
class Slice:
    """Outputs ``idx`` (global feature indices) of one node, the input rows they read
    (``reads``: input name → sorted global rows) and, for an affine node, the weights that
    compute them (rows renumbered to positions in ``idx``, columns global)."""

    idx: np.ndarray
    reads: dict[str, np.ndarray]
    weights: BlockSparseWeights | None = None


@dataclass
class NodeSplit:
    """A node's slices (``count`` asked for; an affine node's follow its weight blocks, so
    there may be a few more) and the estimated bytes of its largest one."""

    node: str
    slices: list[Slice]
    peak: int
    count: int = 1


@dataclass
class SplitSchedule:
    """Every node's split under a per-worker memory budget."""

    budget: int
    nodes: dict[str, NodeSplit] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max((s.peak for s in self.nodes.values()), default=0)

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget

    @property
    def tasks(self) -> int:
        return sum(len(s.slices) for s in self.nodes.values())

    def describe(self) -> str:
        split = [f"{s.node}×{len(s.slices)}" for s in self.nodes.values() if len(s.slices) > 1]
        return (
            f"{self.tasks} slice tasks, largest {self.peak / 2**20:.1f} MiB of a "
            f"{self.budget / 2**20:.0f} MiB budget; split: {', '.join(split) or 'none'}"
        )


def row_bytes(plan: Plan, name: str) -> int:
    """Bytes of one ciphertext of node ``name``'s output."""
    n = plan.node(name)
    return output_bytes(plan, n) // max(n.features, 1)


def concat_sources(plan: Plan, n: ConcatNode) -> list[tuple[str, int, int]]:
    """(input, first output feature, end) of each input of a concatenation."""
    out, at = [], 0
    for name in n.inputs:
        f = plan.node(name).features
        out.append((name, at, at + f))
        at += f
    return out


def _reads(plan: Plan, n: Node, idx: np.ndarray, weights) -> dict[str, np.ndarray]:
    if isinstance(n, AffineNode):
        return {n.inputs[0]: input_rows(HeadChunk(idx, weights))}
    if isinstance(n, PolyNode):
        return {n.inputs[0]: idx}
    if isinstance(n, AddNode | MulNode):
        return dict.fromkeys(n.inputs, idx)
    if isinstance(n, ConcatNode):
        out: dict[str, np.ndarray] = {}
        for name, lo, hi in concat_sources(plan, n):
            rows = idx[(idx >= lo) & (idx < hi)] - lo
            if len(rows):  # an input concatenated twice is read once
                out[name] = np.union1d(out.get(name, rows), rows)
        return out
    raise ParameterError(f"cannot split a {type(n).__name__}")


def node_slices(plan: Plan, n: Node, count: int) -> list[Slice]:
    """``n``'s outputs in (about) ``count`` slices; an affine node's follow its weight blocks,
    so there may be a few more."""
    count = max(1, min(count, n.features))
    if isinstance(n, AffineNode):
        size = math.ceil(n.features / count)
        return [
            Slice(hc.idx, _reads(plan, n, hc.idx, hc.weights), hc.weights)
            for hc in head_chunks(n, size)
        ]
    return [
        Slice(idx, _reads(plan, n, idx, None))
        for idx in np.array_split(np.arange(n.features, dtype=np.int64), count)
    ]


def slice_bytes(plan: Plan, n: Node, s: Slice) -> int:
    """Estimated peak bytes of a task computing slice ``s`` of ``n``: its input rows, and the
    working set of its outputs."""
    reads = sum(len(rows) * row_bytes(plan, name) for name, rows in s.reads.items())
    return reads + working_bytes(plan, n, len(s.idx))


def plan_split(plan: Plan, budget: int, *, slices: int | None = None) -> SplitSchedule:
    """Each node's split: the fewest slices (doubling) whose largest fits ``budget`` bytes, or
    ``slices`` per node when given (tests, benchmarks). A node that cannot fit — its slices'
    reads alone exceed the budget, or one output per slice does not fit — stops where cutting
    finer no longer shrinks its largest slice (:data:`SHRINK`); the schedule says it does not
    fit, and the run goes ahead over budget."""
    if budget <= 0:
        raise ParameterError(f"memory budget must be positive, got {budget} bytes")
    if slices is not None and slices < 1:
        raise ParameterError(f"slices must be ≥ 1, got {slices}")
    out = SplitSchedule(budget)
    for n in plan.nodes:
        if isinstance(n, InputNode):
            continue
        count = slices or 1
        parts = node_slices(plan, n, count)
        peak = max(slice_bytes(plan, n, s) for s in parts)
        while slices is None and peak > budget and count < n.features:
            finer = node_slices(plan, n, 2 * count)
            finer_peak = max(slice_bytes(plan, n, s) for s in finer)
            if finer_peak > SHRINK * peak:
                break  # the slices' reads dominate (a dense layer): more of them only cost
            count, parts, peak = 2 * count, finer, finer_peak
        out.nodes[n.name] = NodeSplit(n.name, parts, peak, count)
    return out
