"""Streaming schedule: which layers run chunk by chunk, in which chunks, and the memory it takes.

With slot = image packing a layer of F features is F ciphertexts; the CIFAR models' first
convolutions have 32,768–65,536 outputs, tens of GB at N = 2^14–2^15. Such a layer is never
needed whole: a *segment* is a chain head → n_2 → … → sink of affine and polynomial nodes in
which every node but the sink feeds only the next one. The head's input is materialized (or
mapped from a file); the head's outputs are computed a *piece* (≤ :data:`PIECE` features) at
a time and pushed down the chain:

- a polynomial node is elementwise: a piece in, the same features out;
- an affine node buffers its inputs until it holds a *chunk* of features, then adds their
  partial product (the columns of its weights they are) into accumulators for the row blocks
  those columns reach, every chunk encoded with one Δ_w and one exponent, so the partial sums
  share a scale and add exactly mod q. A row block whose columns have all arrived is complete:
  it gets its bias, rescale and planned relinearization and moves on, a piece at a time.
  Convolutions therefore complete row band by row band behind the head, and only the blocks
  in progress are ever held;
- the sink's outputs are assembled into the one materialized value of the segment.

Every operation is the one the unstreamed executor does, on fewer ciphertexts, and modular sums
are exact: the results are identical bit for bit. Memory falls with the chunk; time rises as it
shrinks (each delivery to an affine node costs one modular reduction of every row block it
reaches). This module is pure index bookkeeping (no ciphertexts): the runtime executes it, and
:func:`simulate_segment` replays it to estimate the peak memory, so that :func:`plan_streaming`
can choose the largest chunk that fits a memory budget.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.linear import BlockSparseWeights, WeightBlock
from hecnn.compile.chebyshev import chebyshev_schedule
from hecnn.compile.ir import AffineNode, ConcatNode, InputNode, Node, Plan, PolyNode
from hecnn.compile.polyeval import schedule
from hecnn.errors import ParameterError

#: bytes of one residue
RESIDUE_BYTES = 4
#: fraction of physical memory the default budget allows (the rest: the OS, other processes,
#: evaluation keys, weights, and the temporaries this model does not count)
DEFAULT_MEMORY_FRACTION = 0.6
#: transient copies of an affine node's output while it is computed (the product, its copy with
#: the bias, the rescaled result), and of other nodes' (the parts and the whole)
AFFINE_OUTPUT_COPIES = 3
OTHER_OUTPUT_COPIES = 2
#: smallest chunk tried when shrinking chunks to fit a budget
MIN_CHUNK = 8
#: features the head and the polynomials of a segment compute at once (bounds their
#: temporaries); the chunk — what a streamed affine node receives at once — may be larger:
#: each delivery to an affine node costs one modular reduction of every row block it reaches,
#: so fewer, larger deliveries are cheaper
PIECE = 256
#: outputs an unstreamed affine node computes at once (its pre-rescale products are the
#: largest temporaries of a wide layer at a high level)
AFFINE_PIECE = 16


def piece_size(chunk: int) -> int:
    """Features the head and the polynomials process at once for a given chunk."""
    return max(1, min(chunk, PIECE))


def row_pieces(blocks: list[tuple[int, int]], piece: int) -> Iterator[list[tuple[int, int, int]]]:
    """Group the rows of (block, rows) pairs, in order, into pieces of at most ``piece`` rows:
    lists of (block, lo, hi); a block larger than a piece is split."""
    group: list[tuple[int, int, int]] = []
    rows = 0
    for b, n in blocks:
        lo = 0
        while lo < n:
            take = min(n - lo, piece - rows)
            group.append((b, lo, lo + take))
            rows += take
            lo += take
            if rows == piece:
                yield group
                group, rows = [], 0
    if group:
        yield group


def default_memory_budget() -> int:
    """Bytes the executor may hold: ``HECNN_MEMORY_GIB`` (GiB), else a fraction of physical RAM."""
    env = os.environ.get("HECNN_MEMORY_GIB")
    if env:
        try:
            gib = float(env)
        except ValueError:
            raise ParameterError(f"HECNN_MEMORY_GIB must be a number of GiB, got {env!r}") from None
        if not gib > 0:
            raise ParameterError(f"HECNN_MEMORY_GIB must be positive, got {env!r}")
        return int(gib * 2**30)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * DEFAULT_MEMORY_FRACTION)


# -- segments -----------------------------------------------------------------------------------


def _consumers(plan: Plan) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {n.name: [] for n in plan.nodes}
    for n in plan.nodes:
        for i in n.inputs:
            out[i].append(n)
    return out


def find_segments(plan: Plan) -> list[tuple[Node, ...]]:
    """Streamed regions (≥ 2 nodes, in plan order): a head (affine or polynomial) that reads a
    materialized value, then affine, polynomial and concatenation nodes whose inputs all lie in
    the region, up to its sink — the one node whose output leaves the region (the only one with
    consumers outside it, or the plan's output).

    A Fire module is one region: the squeeze's output fans out to both expands, whose outputs
    meet again in the concatenation and the next squeeze, so none of its 16,384–32,768-feature
    values is ever held whole. Each region is the longest run from its head (in plan order)
    that still has a single exit."""
    users = _consumers(plan)
    order = {n.name: i for i, n in enumerate(plan.nodes)}
    taken: set[str] = set()
    segments = []
    for head in plan.nodes:
        if head.name in taken or head.name == plan.output:
            continue
        if not isinstance(head, AffineNode | PolyNode):
            continue
        region, inside = [head], {head.name}
        for n in plan.nodes[order[head.name] + 1 :]:
            streamable = isinstance(n, AffineNode | PolyNode | ConcatNode)
            if streamable and n.inputs and all(i in inside for i in n.inputs):
                region.append(n)
                inside.add(n.name)
        best, members = 0, set()
        for k, n in enumerate(region):
            members.add(n.name)
            exits = [
                m
                for m in region[: k + 1]
                if m.name == plan.output or any(u.name not in members for u in users[m.name])
            ]
            if k >= 1 and exits == [n]:
                best = k + 1
            if n.name == plan.output:
                break
        if best:
            segments.append(tuple(region[:best]))
            taken.update(m.name for m in region[:best])
    return segments


def segment_graph(nodes: tuple[Node, ...]) -> list[list[tuple[int, int]]]:
    """For each node of a segment, its consumers inside it as (position, column offset): a
    concatenation reads its k-th input at the offset of the inputs before it, others at 0."""
    pos = {n.name: k for k, n in enumerate(nodes)}
    succ: list[list[tuple[int, int]]] = [[] for _ in nodes]
    for k2, n in enumerate(nodes):
        offset = 0
        for i in n.inputs:
            if i in pos and k2 > 0:
                succ[pos[i]].append((k2, offset if isinstance(n, ConcatNode) else 0))
            if isinstance(n, ConcatNode):
                offset += nodes[pos[i]].features if i in pos else 0
    return succ


def covering_blocks(weights: BlockSparseWeights) -> list[WeightBlock]:
    """The weight blocks, plus one empty block for rows no block covers (bias-only rows), so
    that every output row belongs to exactly one block."""
    blocks = list(weights.blocks)
    covered = np.zeros(weights.out_features, dtype=bool)
    for b in blocks:
        covered[b.out_idx] = True
    rest = np.flatnonzero(~covered)
    if len(rest):
        blocks.append(WeightBlock(rest, np.zeros(0, dtype=np.int64), np.zeros((len(rest), 0))))
    return blocks


@dataclass(frozen=True)
class HeadChunk:
    """Head output features ``idx`` (global indices, in order) and, for an affine head, the
    weights that compute them (rows renumbered 0..len(idx)−1)."""

    idx: np.ndarray
    weights: BlockSparseWeights | None = None


def head_chunks(node: Node, chunk: int) -> Iterator[HeadChunk]:
    """The head's outputs in chunks of at most ``chunk`` features, in the order of its weight
    blocks (for a convolution: output positions in raster order, all channels together), so
    that the consumers' row blocks complete band by band."""
    if chunk < 1:
        raise ParameterError(f"chunk size must be ≥ 1, got {chunk}")
    if isinstance(node, PolyNode):
        for lo in range(0, node.features, chunk):
            yield HeadChunk(np.arange(lo, min(lo + chunk, node.features)))
        return
    if not isinstance(node, AffineNode):
        raise ParameterError(f"a segment head is affine or polynomial, not {type(node).__name__}")
    w = node.weights
    pieces: list[tuple[WeightBlock, int, int]] = []
    rows = 0

    def emit() -> HeadChunk:
        out_idx, blocks, at = [], [], 0
        for blk, lo, hi in pieces:
            out_idx.append(blk.out_idx[lo:hi])
            blocks.append(WeightBlock(np.arange(at, at + hi - lo), blk.in_idx, blk.weights[lo:hi]))
            at += hi - lo
        sub = BlockSparseWeights(at, w.in_features, tuple(blocks))
        return HeadChunk(np.concatenate(out_idx).astype(np.int64), sub)

    for blk in covering_blocks(w):
        for lo in range(0, len(blk.out_idx), chunk):
            hi = min(lo + chunk, len(blk.out_idx))
            if rows + hi - lo > chunk and pieces:
                yield emit()
                pieces, rows = [], 0
            pieces.append((blk, lo, hi))
            rows += hi - lo
    if pieces:
        yield emit()


def input_rows(hc: HeadChunk) -> np.ndarray:
    """The rows of the head's input that computing head chunk ``hc`` reads."""
    if hc.weights is None:
        return hc.idx
    used = [b.in_idx for b in hc.weights.blocks]
    return np.unique(np.concatenate(used)).astype(np.int64) if used else np.zeros(0, np.int64)


class Gather:
    """Input bookkeeping of an affine node whose inputs arrive in chunks.

    For each chunk: which row blocks its features reach, with the sub-blocks of weights that
    multiply them (columns renumbered to positions in the chunk, rows to positions in the
    block), and which blocks thereby become complete.
    """

    def __init__(self, weights: BlockSparseWeights) -> None:
        self.blocks = covering_blocks(weights)
        self.in_features = weights.in_features
        self.remaining = np.array([len(b.in_idx) for b in self.blocks], dtype=np.int64)
        # every (column, block, position in the block) entry, sorted by column
        cols = np.concatenate([b.in_idx for b in self.blocks]).astype(np.int64)
        owner = np.concatenate(
            [np.full(len(b.in_idx), i, dtype=np.int64) for i, b in enumerate(self.blocks)]
        )
        pos = np.concatenate([np.arange(len(b.in_idx), dtype=np.int64) for b in self.blocks])
        order = np.argsort(cols, kind="stable")
        self._owner, self._pos = owner[order], pos[order]
        self._ptr = np.searchsorted(cols[order], np.arange(weights.in_features + 1))
        self._seen = np.zeros(weights.in_features, dtype=bool)
        self._started = False

    def deliver(self, idx: np.ndarray) -> tuple[list[tuple[int, WeightBlock]], list[int]]:
        """Features ``idx`` arrive: ([(block, sub-block)], newly completed blocks).

        Blocks without inputs complete with the first delivery (they need a chunk's level and
        components to be built, and nothing else).
        """
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.in_features):
            raise ParameterError(f"features outside [0, {self.in_features}) delivered")
        if np.any(self._seen[idx]) or len(np.unique(idx)) != len(idx):
            raise ParameterError("a feature was delivered twice to a streamed layer")
        self._seen[idx] = True
        starts, ends = self._ptr[idx], self._ptr[idx + 1]
        counts = ends - starts
        total = int(counts.sum())
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
        ent = offsets + np.arange(total)
        chunk_pos = np.repeat(np.arange(len(idx), dtype=np.int64), counts)
        owner = self._owner[ent]
        order = np.argsort(owner, kind="stable")
        owner, ent, chunk_pos = owner[order], ent[order], chunk_pos[order]
        bounds = np.flatnonzero(np.diff(owner)) + 1
        parts = []
        done = []
        if not self._started:
            self._started = True
            done = [i for i, b in enumerate(self.blocks) if len(b.in_idx) == 0]
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, total], strict=True):
            if lo == hi:
                continue
            b = int(owner[lo])
            blk = self.blocks[b]
            cols = self._pos[ent[lo:hi]]
            sub = WeightBlock(np.arange(len(blk.out_idx)), chunk_pos[lo:hi], blk.weights[:, cols])
            parts.append((b, sub))
            self.remaining[b] -= hi - lo
            if self.remaining[b] == 0:
                done.append(b)
        return parts, done


def holds_window(n: Node, in_features: int) -> bool:
    """Whether a streamed affine node holds a *window of its inputs* (each output block is
    computed once all its inputs are there; an input is released after its last block) rather
    than accumulators of its outputs: the smaller of the two for a widening layer — a Fire
    module's 3×3 expand (16 → 64 channels) holds about three input rows of 16 channels instead
    of two output rows of 64."""
    return isinstance(n, AffineNode) and n.features > in_features


class Window:
    """Input bookkeeping of an affine node that holds a window of its inputs.

    :meth:`deliver` says which output blocks became computable and which arriving features no
    block needs; :meth:`group` gives, for some completed blocks' rows, the weights renumbered
    to the union of their input columns; :meth:`computed` the columns no pending block needs.
    """

    def __init__(self, weights: BlockSparseWeights) -> None:
        self.gather = Gather(weights)
        self.blocks = self.gather.blocks
        self.uses = np.zeros(weights.in_features, dtype=np.int64)
        for b in self.blocks:
            np.add.at(self.uses, b.in_idx, 1)

    def deliver(self, idx: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Features ``idx`` arrive: (blocks now complete, the features no block reads)."""
        idx = np.asarray(idx, dtype=np.int64)
        _, done = self.gather.deliver(idx)
        return done, idx[self.uses[idx] == 0]

    def group(
        self, group: list[tuple[int, int, int]]
    ) -> tuple[np.ndarray, np.ndarray, BlockSparseWeights]:
        """(output rows, input columns U, weights over U) of rows ``lo:hi`` of some blocks."""
        cols = [self.blocks[b].in_idx for b, _, _ in group]
        union = np.unique(np.concatenate(cols)).astype(np.int64) if cols else np.zeros(0, int)
        out_idx, parts, at = [], [], 0
        for b, lo, hi in group:
            blk = self.blocks[b]
            out_idx.append(blk.out_idx[lo:hi])
            pos = np.searchsorted(union, blk.in_idx)
            parts.append(WeightBlock(np.arange(at, at + hi - lo), pos, blk.weights[lo:hi]))
            at += hi - lo
        weights = BlockSparseWeights(at, len(union), tuple(parts))
        return np.concatenate(out_idx).astype(np.int64), union, weights

    def computed(self, blocks: list[int]) -> np.ndarray:
        """Blocks finished: the input columns that no other block reads any more."""
        if not blocks:
            return np.zeros(0, dtype=np.int64)
        cols = np.concatenate([self.blocks[b].in_idx for b in blocks]).astype(np.int64)
        np.subtract.at(self.uses, cols, 1)
        return np.unique(cols[self.uses[cols] == 0])


# -- memory -------------------------------------------------------------------------------------


def ct_bytes(plan: Plan, components: int, level: int) -> int:
    """Bytes of one ciphertext with ``components`` at ``level``."""
    return components * (level + 1) * plan.params.n * RESIDUE_BYTES


def output_bytes(plan: Plan, n: Node) -> int:
    """Bytes of node ``n``'s whole output."""
    comps = 2 if isinstance(n, InputNode) else n.components
    return n.features * ct_bytes(plan, comps, n.level_out)


def _input_components(plan: Plan, n: Node) -> int:
    return max(plan.node(i).components for i in n.inputs) if n.inputs else 2


@dataclass
class SegmentSchedule:
    """One streamed segment: its nodes, the chunk size, and its simulated memory."""

    nodes: tuple[str, ...]
    chunk: int
    chunks: int = 0
    #: peak of accumulators, completed-row buffers and the chunk working set (bytes)
    stream_bytes: int = 0


@dataclass
class StreamingSchedule:
    """How a plan runs under a memory budget: segments (with chunk sizes), the estimated peak
    of ciphertext memory, and whether it fits the budget."""

    budget: int
    segments: list[SegmentSchedule] = field(default_factory=list)
    peak: int = 0

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget

    def segment_of(self, head: str) -> SegmentSchedule | None:
        for s in self.segments:
            if s.nodes[0] == head:
                return s
        return None


def working_bytes(plan: Plan, n: Node, features: int) -> int:
    """Bytes node ``n`` holds beyond its input while it computes ``features`` outputs.

    Affine: the product before the rescale (input components, input level), its copy with the
    bias and the rescaled result. Polynomial: its output, and for the :data:`PIECE` features
    evaluated at once their powers, a term and the running sum (three or more components, at
    the input level). Others: the output and a copy.
    """
    if isinstance(n, InputNode):
        return features * output_bytes(plan, n) // max(n.features, 1)
    if isinstance(n, AffineNode):
        pre = ct_bytes(plan, _input_components(plan, n), n.level_in)
        return features * AFFINE_OUTPUT_COPIES * pre
    out = ct_bytes(plan, n.components, n.level_out)
    if isinstance(n, PolyNode):
        live = _live_powers(n) + 2
        temps = live * ct_bytes(plan, max(3, n.components), n.level_in)
        return features * out + min(features, PIECE) * temps
    return features * OTHER_OUTPUT_COPIES * out


def _unstreamed_bytes(plan: Plan, n: Node) -> int:
    """What an unstreamed node holds beyond its inputs: an affine node with a rescale is computed
    :data:`AFFINE_PIECE` outputs at a time into its output array (see the executor)."""
    if isinstance(n, AffineNode) and n.rescale and n.features > AFFINE_PIECE:
        return output_bytes(plan, n) + working_bytes(plan, n, AFFINE_PIECE)
    return working_bytes(plan, n, n.features)


def _live_powers(n: PolyNode) -> int:
    """Powers (or Chebyshev T_k) a polynomial holds at once while it is evaluated."""
    if n.chebyshev:
        return len(chebyshev_schedule(n.coeffs).powers) + 1
    return len(schedule(n.coeffs, n.fold_leading).powers)


def simulate_segment(
    plan: Plan, nodes: tuple[Node, ...], chunk: int, *, input_row_bytes: int = 0
) -> tuple[int, int]:
    """Replay a segment's flow on indices only: (head pieces, peak bytes held by the stream).

    The same rules as the runtime: the head and the polynomials work :func:`piece_size`
    features at a time; a streamed affine node buffers its inputs until it holds ``chunk``
    features, adds their partial products to the accumulators of the row blocks they reach
    (allocated on first touch), and finishes its completed blocks ``chunk`` rows at a time.
    Counts the accumulators, the input buffers, and the working set of the piece or chunk being
    processed (its input and the transient copies of its output, as for an unstreamed node) —
    the head's input and the sink's assembled output are counted by :func:`memory_profile`,
    except when ``input_row_bytes`` is given: the head's input then lies in a file and only the
    rows between their first and last use are resident (the runtime releases the others).
    """
    succ = segment_graph(nodes)
    pos = {n.name: k for k, n in enumerate(nodes)}
    windows = [
        Window(n.weights) if k and holds_window(n, nodes[pos[n.inputs[0]]].features) else None
        for k, n in enumerate(nodes)
    ]
    gathers = [
        Gather(n.weights) if k and isinstance(n, AffineNode) and windows[k] is None else None
        for k, n in enumerate(nodes)
    ]  # the head computes its rows directly from its materialized input
    acc_bytes = [
        ct_bytes(plan, _input_components(plan, n), n.level_in) if g else 0
        for n, g in zip(nodes, gathers, strict=True)
    ]
    out_ct = [ct_bytes(plan, n.components, n.level_out) for n in nodes]
    in_ct = [out_ct[pos[n.inputs[0]]] if k else 0 for k, n in enumerate(nodes)]
    held = [0] * len(nodes)  # bytes of input buffers and accumulators per node
    inbuf: list[list[np.ndarray]] = [[] for _ in nodes]
    done_rows: list[list[tuple[int, int]]] = [[] for _ in nodes]  # completed (block, rows)
    started: list[set[int]] = [set() for _ in nodes]
    peak = 0
    inflight = 0  # pieces produced and not yet taken in by every consumer

    def note(extra: int) -> None:
        nonlocal peak
        peak = max(peak, sum(held) + inflight + extra)

    def flush(k: int) -> Iterator[np.ndarray]:
        g = gathers[k]
        done, done_rows[k] = done_rows[k], []
        for group in row_pieces(done, piece_size(chunk)):
            idx = np.concatenate([g.blocks[b].out_idx[lo:hi] for b, lo, hi in group])
            note(working_bytes(plan, nodes[k], len(idx)))
            held[k] -= len(idx) * acc_bytes[k]
            yield idx

    def deliver(k: int) -> Iterator[np.ndarray]:
        g = gathers[k]
        idx = np.concatenate(inbuf[k])
        inbuf[k] = []
        parts, done = g.deliver(idx)
        for b in [b for b, _ in parts] + done:
            if b not in started[k]:  # accumulator allocated on first touch
                started[k].add(b)
                held[k] += len(g.blocks[b].out_idx) * acc_bytes[k]
        note(len(idx) * in_ct[k])  # the buffered inputs, concatenated
        held[k] -= len(idx) * in_ct[k]  # and released
        done_rows[k] += [(b, len(g.blocks[b].out_idx)) for b in done]
        if sum(rows for _, rows in done_rows[k]) >= piece_size(chunk):
            yield from flush(k)

    def compute(k: int) -> Iterator[np.ndarray]:
        """A window node computes its completed blocks a piece of rows at a time, then
        releases the inputs no pending block reads."""
        w = windows[k]
        ready, done_rows[k] = done_rows[k], []
        for group in row_pieces(ready, piece_size(chunk)):
            idx, union, _ = w.group(group)
            note(len(union) * in_ct[k] + working_bytes(plan, nodes[k], len(idx)))
            whole = [b for b, _lo, hi in group if hi == len(w.blocks[b].out_idx)]
            held[k] -= len(w.computed(whole)) * in_ct[k]
            yield idx

    def take(k: int, idx: np.ndarray, release: int) -> Iterator[np.ndarray]:
        """Node k takes in the piece ``idx`` (its input's features) and, as its last consumer,
        ``release``s it from the bytes in flight; yields what it produces."""
        nonlocal inflight
        if isinstance(nodes[k], ConcatNode):  # renumbered, nothing computed
            inflight -= release
            yield idx
        elif windows[k] is not None:
            w = windows[k]
            done, unused = w.deliver(idx)
            held[k] += (len(idx) - len(unused)) * in_ct[k]
            inflight -= release
            done_rows[k] += [(b, len(w.blocks[b].out_idx)) for b in done]
            if sum(rows for _, rows in done_rows[k]) >= piece_size(chunk):
                yield from compute(k)
        elif gathers[k] is None:  # elementwise: the same features go on
            note(working_bytes(plan, nodes[k], len(idx)))  # its input is in flight
            inflight -= release
            yield idx
        else:
            inbuf[k].append(idx)
            held[k] += len(idx) * in_ct[k]
            inflight -= release  # moved into the buffer
            if sum(map(len, inbuf[k])) >= chunk:
                yield from deliver(k)

    def push(k: int, items: Iterable[np.ndarray]) -> None:
        """Node k produces ``items`` one piece at a time, as the runtime's generators do: each
        goes to every consumer in the segment, and stays in flight until the last of them has
        taken it in (the runtime's :class:`~hecnn.runtime.streaming._Piece`)."""
        nonlocal inflight
        for idx in items:
            size = len(idx) * out_ct[k]
            inflight += size
            if not succ[k]:  # the sink: stored in the segment's output
                inflight -= size
            for j, (k2, offset) in enumerate(succ[k]):
                push(k2, take(k2, idx + offset, size if j == len(succ[k]) - 1 else 0))

    pieces = list(head_chunks(nodes[0], piece_size(chunk)))
    resident = np.zeros(len(pieces) + 1, dtype=np.int64)
    if input_row_bytes:  # rows resident from their first to their last use
        uses = [input_rows(hc) for hc in pieces]
        nrows = max((int(u.max()) + 1 for u in uses if len(u)), default=0)
        first = np.full(nrows, len(pieces), dtype=np.int64)
        last = np.full(nrows, -1, dtype=np.int64)
        for k, u in enumerate(uses):
            first[u] = np.minimum(first[u], k)
            last[u] = k
        seen = last >= 0
        np.add.at(resident, first[seen], 1)
        np.add.at(resident, last[seen] + 1, -1)
        resident = np.cumsum(resident) * input_row_bytes
    for k, hc in enumerate(pieces):
        held[0] = int(resident[k])
        note(working_bytes(plan, nodes[0], len(hc.idx)))
        push(0, [hc.idx])
    held[0] = 0
    count = len(pieces)
    for k in range(1, len(nodes)):  # plan order: a node's producers have finished before it
        if windows[k] is not None:
            push(k, compute(k))
        if gathers[k] is None:
            continue
        if inbuf[k]:
            push(k, deliver(k))
        push(k, flush(k))
    return count, peak


def memory_profile(
    plan: Plan,
    segments: dict[str, SegmentSchedule] | None = None,
    *,
    input_on_disk: bool = False,
) -> tuple[int, dict[str, int]]:
    """Estimated peak bytes of ciphertext data while running ``plan``, and the estimate at each
    node (a segment's at its head).

    Follows the executor: a value stays alive until its last consumer has run (the input, which
    the caller owns, until then too); an unstreamed node holds its input and its output, with
    transient copies; a streamed segment (``segments``, keyed by head) holds the head's input,
    the sink's assembled output and what :func:`simulate_segment` counted. With
    ``input_on_disk`` (ciphertexts mapped from a file) the input is resident only while an
    unstreamed node reads it; a segment's simulation counts its window.
    """
    segments = segments or {}
    source = next(n.name for n in plan.nodes if isinstance(n, InputNode))
    source_bytes = output_bytes(plan, plan.node(source))
    in_segment = {name: s for s in segments.values() for name in s.nodes}
    users = _consumers(plan)
    remaining = {n.name: len(users[n.name]) for n in plan.nodes}
    live: dict[str, int] = {}
    peak, at = 0, {}
    for n in plan.nodes:
        seg = in_segment.get(n.name)
        if seg is not None and seg.nodes[0] != n.name:
            continue  # accounted at the head
        if seg is not None:
            sink = plan.node(seg.nodes[-1])
            here = sum(live.values()) + output_bytes(plan, sink) + seg.stream_bytes
            out_name, out_bytes, inputs = sink.name, output_bytes(plan, sink), n.inputs
        else:
            out_bytes = output_bytes(plan, n)
            here = sum(live.values()) + _unstreamed_bytes(plan, n)
            if input_on_disk and source in n.inputs:
                here += source_bytes  # read whole: paged in
            out_name, inputs = n.name, n.inputs
        if input_on_disk and n.name == source:
            out_bytes = here = 0
        at[n.name] = here
        peak = max(peak, here)
        live[out_name] = out_bytes
        for x in inputs:
            remaining[x] -= 1
            if remaining[x] == 0 and x != plan.output:
                live.pop(x, None)
    return peak, at


def plan_streaming(
    plan: Plan,
    memory_budget: int | None = None,
    *,
    chunk: int | None = None,
    input_on_disk: bool = False,
) -> StreamingSchedule:
    """Choose each segment's chunk: the largest (whole layer, then halving) whose estimated peak
    fits ``memory_budget`` (default :func:`default_memory_budget`), or ``chunk`` features when
    given (tests). When nothing fits, the chunk with the smallest estimate is kept: the schedule
    says it does not fit, and the caller decides. ``input_on_disk``: the input ciphertexts are
    mapped from a file, and only the window a streamed head still needs is resident."""
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise ParameterError(f"memory budget must be positive, got {budget} bytes")
    if chunk is not None and chunk < 1:
        raise ParameterError(f"chunk size must be ≥ 1, got {chunk}")
    chosen: dict[str, SegmentSchedule] = {}
    for nodes in find_segments(plan):
        head = nodes[0]
        names = tuple(n.name for n in nodes)
        src = plan.node(head.inputs[0])
        row_bytes = output_bytes(plan, src) // src.features
        window = row_bytes if input_on_disk and isinstance(src, InputNode) else 0
        if chunk is not None:
            sizes = [chunk]
        else:
            sizes, c = [], head.features
            while c > MIN_CHUNK:
                sizes.append(c)
                c = -(-c // 2)
            sizes.append(min(MIN_CHUNK, head.features))
        best: tuple[int, SegmentSchedule] | None = None
        for size in sizes:  # the largest chunk that fits, else the smallest peak
            count, stream = simulate_segment(plan, nodes, size, input_row_bytes=window)
            chosen[head.name] = SegmentSchedule(names, size, count, stream)
            here = memory_profile(plan, chosen, input_on_disk=input_on_disk)[1][head.name]
            if best is None or here < best[0]:
                best = (here, chosen[head.name])
            if here <= budget:
                break
        else:
            chosen[head.name] = best[1]
    peak, _ = memory_profile(plan, chosen, input_on_disk=input_on_disk)
    return StreamingSchedule(budget, list(chosen.values()), peak)
