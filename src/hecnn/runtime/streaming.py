"""Chunk-by-chunk execution of a streamed segment (see :mod:`hecnn.compile.streaming`).

The head's outputs are computed a piece of features at a time (at most
:data:`~hecnn.compile.streaming.PIECE`) and pushed down the chain; each stage turns what it
receives into what it passes on:

- :class:`_PolyStage`: the same features, the polynomial evaluated on them;
- :class:`_AffineStage`: inputs buffered to a chunk, whose partial product is added into the
  accumulators of the row blocks it reaches (one Δ_w and one encoding exponent for all chunks,
  so the partial sums share a scale and add exactly mod q); completed blocks are buffered and,
  once there are a chunk's worth, finished as the unstreamed node would finish them (bias,
  rescale, relinearization);
- the sink's chunks are written into the segment's one materialized output.

Stages are generators: a piece a stage produces goes down the chain before the stage computes
its next one, so at most one piece per stage is in flight (a list of every piece of a flush
held at once had cost 40 % more memory than the stage buffers). A piece is handed over in a
:class:`_Piece` that its consumers *take* from: once the last one has taken it, no frame up
the chain still references the ciphertexts (a generator's locals live until it resumes, so a
product its stage had yielded stayed alive while everything downstream of it ran — about a
gigabyte of pieces at N = 2^15).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np

from hecnn.ckks.batch import CiphertextBatch, _pad_components
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys
from hecnn.ckks.linear import (
    BlockSparseWeights,
    WeightBlock,
    accumulate_products,
    encoding_exponent,
)
from hecnn.compile.ir import AffineNode, ConcatNode, Node, Plan, PolyNode
from hecnn.compile.streaming import (
    Gather,
    SegmentSchedule,
    Window,
    head_chunks,
    holds_window,
    input_rows,
    piece_size,
    row_pieces,
    segment_graph,
)
from hecnn.errors import ParameterError, ScaleError
from hecnn.runtime.memory import file_mapping, release_rows

Chunk = tuple[np.ndarray, CiphertextBatch]  # (global feature indices, their ciphertexts)


class _Piece:
    """Features ``idx`` and their ciphertexts, handed down the chain: each of its ``takers``
    calls :meth:`take` once, and the last take drops the piece's own reference, so the
    ciphertexts live exactly as long as a consumer still needs them.

    Producers build a piece from an expression (``_Piece(idx, f(...))``), never from a local
    they keep, and consumers ``del`` what they took once used: a generator's locals otherwise
    outlive the yield by everything that runs downstream."""

    __slots__ = ("_batch", "idx", "takers")

    def __init__(self, idx: np.ndarray, batch: CiphertextBatch) -> None:
        self.idx, self._batch, self.takers = idx, batch, 1

    def take(self) -> CiphertextBatch:
        batch = self._batch
        if batch is None or self.takers < 1:
            raise ParameterError("a streamed piece was taken more often than it has consumers")
        self.takers -= 1
        if self.takers == 0:
            self._batch = None
        return batch


def _template(x: CiphertextBatch) -> CiphertextBatch:
    """x's first ciphertext, copied: context, level, scale and components for the rest of the
    stream (a view would keep x's whole piece alive for the whole run)."""
    return CiphertextBatch(x.ctx, x.data[:1].copy(), x.scale)


def _relinearize_as_planned(n: Node, y: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    """What the executor does after every node: the planned relinearization."""
    return y.relinearize(keys) if n.relin_after and y.components > 2 else y


def relinearize_then_rescale(n: Node, y: CiphertextBatch, keys: EvaluationKeys) -> CiphertextBatch:
    """Finish a product (an affine layer's sums, a ciphertext product): the planned
    relinearization *before* the rescale, then the rescale (where the node rescales).

    The key switch adds noise of a fixed size (~N·σ·√digits after the mod-down by P);
    before the rescale that noise is divided by the prime with the message's extra scale,
    after it the noise meets the message at scale Δ — or at Δ/r for the input of a
    Chebyshev stage, where 2^-25 slot units let one relinearization cost ~6 bits and sent
    composite max-pool chains at N = 2^16 out of their intervals. An affine node that owes
    its input's deferred rescales divides by two or three primes (see :func:`final_rescales`);
    with three, the first two come before the key switch — its noise still meets a scale one
    prime above the message's and is divided by the last one as before, and it switches two
    limbs fewer (``fire1_squeeze_0``: 4,096 relinearizations at 15 limbs instead of 17)."""
    k = final_rescales(n)
    if isinstance(n, AffineNode) and n.rescales_before_relin and y.components > 2:
        y, k = y.rescale_twice(), k - 2
    y = _relinearize_as_planned(n, y, keys)
    if k >= 2:  # one rounding, one NTT pass (see CiphertextBatch.rescale_twice)
        y, k = y.rescale_twice(), k - 2
    for _ in range(k):
        y = y.rescale()
    return y


def final_rescales(n: Node) -> int:
    """Rescales that finish node n's product: none in the rescale-free tail or for a node
    that defers its last one; an affine node also does those its input owes."""
    if not n.rescale or (isinstance(n, PolyNode | AffineNode) and n.defer_rescale):
        return 0
    return 1 + (n.owed_rescales if isinstance(n, AffineNode) else 0)


class _PolyStage:
    def __init__(self, n: PolyNode, keys: EvaluationKeys, poly: Callable) -> None:
        self.node, self.keys, self.poly = n, keys, poly
        self.held = 0

    def push(self, idx: np.ndarray, piece: _Piece) -> Iterator[_Piece]:
        yield self._evaluate(idx, piece)

    def _evaluate(self, idx: np.ndarray, piece: _Piece) -> _Piece:
        y = self.poly(self.node, piece.take(), self.keys, self.node.coeffs[:, idx])
        return _Piece(idx, _relinearize_as_planned(self.node, y, self.keys))

    def finish(self) -> Iterator[_Piece]:
        yield from ()


class _AffineStage:
    """An affine node fed chunk by chunk: its inputs are buffered until ``chunk`` features are
    there, then their partial products go into the accumulators of the row blocks they reach;
    completed blocks are finished ``chunk`` rows at a time."""

    def __init__(
        self,
        n: AffineNode,
        ctx: CkksContext,
        keys: EvaluationKeys,
        chunk: int,
        weight_scale: Callable[[AffineNode, CiphertextBatch], float],
    ) -> None:
        self.node, self.ctx, self.keys, self.chunk = n, ctx, keys, chunk
        self.weight_scale = weight_scale
        self.gather = Gather(n.weights)
        self.inbuf: list[Chunk] = []
        self.acc: dict[int, np.ndarray] = {}
        self.done: list[int] = []
        self.delta_w: float | None = None
        self.exponent = 0
        self.scale = 0.0
        self.shape: tuple[int, ...] = ()

    @property
    def held(self) -> int:
        return sum(a.nbytes for a in self.acc.values()) + sum(y.data.nbytes for _, y in self.inbuf)

    def push(self, idx: np.ndarray, piece: _Piece) -> Iterator[_Piece]:
        x = piece.take()
        if self.delta_w is None:  # fixed by the first chunk: every chunk shares level and scale
            self.delta_w = self.weight_scale(self.node, x)
            self.exponent = encoding_exponent(self.node.weights, self.delta_w)
            self.scale, self.shape = x.scale, x.data.shape[1:]
        elif x.data.shape[1:] != self.shape or not math.isclose(x.scale, self.scale, rel_tol=1e-12):
            raise ScaleError(
                f"{self.node.name}: streamed chunks disagree in components, level or scale"
            )
        self.inbuf.append((idx, x))
        del x
        if sum(len(i) for i, _ in self.inbuf) >= self.chunk:
            yield from self._deliver()

    def finish(self) -> Iterator[_Piece]:
        if self.inbuf:
            yield from self._deliver()
        if self.delta_w is None or np.any(self.gather.remaining > 0):
            raise ParameterError(f"{self.node.name}: the stream ended before all inputs arrived")
        yield from self._flush()

    def _deliver(self) -> Iterator[_Piece]:
        """Add the buffered inputs' partial products; finish the completed blocks once they
        hold a piece's worth of rows."""
        if len(self.inbuf) == 1:
            idx, x = self.inbuf[0]
        else:
            idx = np.concatenate([i for i, _ in self.inbuf])
            x = CiphertextBatch.stack([y for _, y in self.inbuf])
        self.inbuf = []
        parts, done = self.gather.deliver(idx)
        targets = []
        for b, sub in parts:
            if b not in self.acc:
                self.acc[b] = self._zeros(b)
            targets.append((sub, self.acc[b]))
        accumulate_products(x, targets, weight_scale=self.delta_w, exponent=self.exponent)
        del x
        for b in done:
            if b not in self.acc:  # a block without inputs: bias only
                self.acc[b] = self._zeros(b)
            self.done.append(b)
        if sum(len(self.gather.blocks[b].out_idx) for b in self.done) >= piece_size(self.chunk):
            yield from self._flush()

    def _zeros(self, b: int) -> np.ndarray:
        return np.zeros((len(self.gather.blocks[b].out_idx), *self.shape), dtype=np.int32)

    def _flush(self) -> Iterator[_Piece]:
        """Finish every completed block as the unstreamed node would (bias, rescale, planned
        relinearization), a piece of rows at a time; their accumulators are released."""
        done, self.done = self.done, []
        for group in row_pieces(
            [(b, len(self.gather.blocks[b].out_idx)) for b in done], piece_size(self.chunk)
        ):
            yield self._finish(group)

    def _finish(self, group: list[tuple[int, int, int]]) -> _Piece:
        """The completed rows of ``group`` as the unstreamed node finishes them: bias, planned
        relinearization, rescale. The sums go straight into the call (no local keeps them), so
        each step's input is released as the next step starts."""
        idx = np.concatenate([self.gather.blocks[b].out_idx[lo:hi] for b, lo, hi in group])
        y = relinearize_then_rescale(self.node, self._sums(idx, group), self.keys)
        return _Piece(idx.astype(np.int64), y)

    def _sums(self, idx: np.ndarray, group: list[tuple[int, int, int]]) -> CiphertextBatch:
        """The accumulated rows of ``group`` with their bias (in place: the rows are copied out
        of the accumulators, whose whole blocks are released)."""
        data = np.concatenate([self.acc[b][lo:hi] for b, lo, hi in group])
        for b, _lo, hi in group:
            if hi == len(self.gather.blocks[b].out_idx):
                del self.acc[b]
        y = CiphertextBatch(self.ctx, data, self.scale * self.delta_w)
        if self.node.bias is not None:
            y = y.add_const_in_place(self.node.bias[idx])
        return y


class _WindowStage:
    """An affine node that holds a window of its inputs (see
    :func:`~hecnn.compile.streaming.holds_window`): inputs are kept by feature until every
    output block reading them is computed; a completed block is computed whole from its input
    columns, a piece of rows at a time, with the executor's own affine evaluation and the whole
    matrix's encoding exponent — the very products of the unstreamed node."""

    def __init__(
        self,
        n: AffineNode,
        keys: EvaluationKeys,
        chunk: int,
        affine: Callable,
        weight_scale: Callable[[AffineNode, CiphertextBatch], float],
    ) -> None:
        self.node, self.keys, self.chunk = n, keys, chunk
        self.affine, self.weight_scale = affine, weight_scale
        self.window = Window(n.weights)
        self.rows: dict[int, np.ndarray] = {}
        self.ready: list[tuple[int, int]] = []
        self.first: CiphertextBatch | None = None  # a template: level, scale, components
        self.exponent = 0
        self.buf: np.ndarray | None = None

    @property
    def held(self) -> int:
        return sum(r.nbytes for r in self.rows.values()) + (
            0 if self.buf is None else self.buf.nbytes
        )

    def push(self, idx: np.ndarray, piece: _Piece) -> Iterator[_Piece]:
        x = piece.take()
        if self.first is None:
            self.first = _template(x)
            self.exponent = encoding_exponent(self.node.weights, self.weight_scale(self.node, x))
        elif x.data.shape[1:] != self.first.data.shape[1:] or not math.isclose(
            x.scale, self.first.scale, rel_tol=1e-12
        ):
            raise ScaleError(
                f"{self.node.name}: streamed chunks disagree in components, level or scale"
            )
        done, unused = self.window.deliver(idx)
        skip = set(unused.tolist())
        for i, c in enumerate(idx.tolist()):
            if c not in skip:
                self.rows[c] = x.data[i]  # views: the piece lives until its last row is used
        del x
        w = self.window
        self.ready += [(b, len(w.blocks[b].out_idx)) for b in done]
        if sum(rows for _, rows in self.ready) >= piece_size(self.chunk):
            yield from self._compute()

    def finish(self) -> Iterator[_Piece]:
        if self.first is None or np.any(self.window.gather.remaining > 0):
            raise ParameterError(f"{self.node.name}: the stream ended before all inputs arrived")
        yield from self._compute()

    def _gather(self, cols: np.ndarray) -> np.ndarray:
        """The held rows ``cols`` as one contiguous array, in a buffer reused from piece to
        piece (a fresh multi-MB array per piece costs its page faults: ~7 % of a run)."""
        if self.buf is None or len(self.buf) < len(cols):
            self.buf = np.empty((len(cols), *self.first.data.shape[1:]), dtype=np.int32)
        data = self.buf[: len(cols)]
        np.stack([self.rows[c] for c in cols.tolist()], out=data)
        return data

    def _compute(self) -> Iterator[_Piece]:
        ready, self.ready = self.ready, []
        for group in row_pieces(ready, piece_size(self.chunk)):
            yield self._rows_of(group)

    def _rows_of(self, group: list[tuple[int, int, int]]) -> _Piece:
        """Compute the rows of ``group`` from the held inputs; release the inputs no pending
        block reads."""
        w, n = self.window, self.node
        idx, union, weights = w.group(group)
        if len(union):
            x = CiphertextBatch(self.first.ctx, self._gather(union), self.first.scale)
        else:  # bias-only rows: a zero-weight column of any input gives 0 exactly
            x = self.first
            weights = BlockSparseWeights(
                len(idx),
                1,
                (WeightBlock(np.arange(len(idx)), np.zeros(1, np.int64), np.zeros((len(idx), 1))),),
            )
        bias = None if n.bias is None else n.bias[idx]
        y = self.affine(n, x, self.keys, weights, bias, self.exponent)
        del x
        whole = [b for b, _lo, hi in group if hi == len(w.blocks[b].out_idx)]
        for c in w.computed(whole).tolist():
            self.rows.pop(c, None)
        return _Piece(idx, y)


class _ConcatStage:
    """A concatenation inside a segment: its inputs' chunks pass on renumbered (the offset is
    applied by the feed), brought to the node's components and level."""

    def __init__(self, n: ConcatNode) -> None:
        self.node = n
        self.held = 0

    def push(self, idx: np.ndarray, piece: _Piece) -> Iterator[_Piece]:
        yield self._convert(idx, piece)

    def _convert(self, idx: np.ndarray, piece: _Piece) -> _Piece:
        x = piece.take()
        if x.level > self.node.level_out:
            x = x.drop_to(self.node.level_out)
        if x.components < self.node.components:  # (c0, c1) and (c0, c1, 0) decrypt alike
            x = x._like(_pad_components(x.data, self.node.components), x.scale)
        return _Piece(idx, x)

    def finish(self) -> Iterator[_Piece]:
        yield from ()


class _Sink:
    """The segment's materialized output, written chunk by chunk."""

    def __init__(self, features: int) -> None:
        self.features = features
        self.data: np.ndarray | None = None
        self.first: CiphertextBatch | None = None
        self.filled = 0

    @property
    def held(self) -> int:
        return 0 if self.data is None else self.data.nbytes

    def store(self, idx: np.ndarray, y: CiphertextBatch) -> None:
        if self.first is None and len(idx) == self.features and np.all(idx[1:] > idx[:-1]):
            self.first, self.data, self.filled = y, y.data, self.features  # one chunk: as is
            return
        if self.first is None:
            self.first = _template(y)
            self.data = np.empty((self.features, *y.data.shape[1:]), dtype=np.int32)
        elif y.data.shape[1:] != self.data.shape[1:] or not math.isclose(
            y.scale, self.first.scale, rel_tol=1e-12
        ):
            raise ScaleError("streamed output chunks disagree in components, level or scale")
        self.data[idx] = y.data
        self.filled += len(idx)

    def result(self, name: str) -> CiphertextBatch:
        if self.first is None or self.filled != self.features:
            raise ParameterError(f"{name}: the stream produced {self.filled} of {self.features}")
        return CiphertextBatch(self.first.ctx, self.data, self.first.scale)


def run_segment(
    plan: Plan,
    seg: SegmentSchedule,
    x: CiphertextBatch,
    keys: EvaluationKeys,
    *,
    affine: Callable,
    poly: Callable,
    weight_scale: Callable[[AffineNode, CiphertextBatch], float],
    seconds: dict[str, float],
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> CiphertextBatch:
    """Run one segment on its head's input ``x``; returns the sink's whole output.

    ``affine(n, x, keys, weights, bias, exponent)`` and ``poly(n, x, keys, coeffs)`` are the
    executor's own node evaluations (the head's chunks use them); ``seconds`` accumulates the
    time spent per node; ``on_chunk(k, chunks, held_bytes)`` is called after each head chunk.
    """
    nodes = tuple(plan.node(name) for name in seg.nodes)
    head = nodes[0]
    stages: list = [None]
    for n in nodes[1:]:
        if isinstance(n, PolyNode):
            stages.append(_PolyStage(n, keys, poly))
        elif holds_window(n, plan.node(n.inputs[0]).features):
            stages.append(_WindowStage(n, keys, seg.chunk, affine, weight_scale))
        elif isinstance(n, AffineNode):
            stages.append(_AffineStage(n, x.ctx, keys, seg.chunk, weight_scale))
        elif isinstance(n, ConcatNode):
            stages.append(_ConcatStage(n))
        else:  # pragma: no cover - find_segments admits only these
            raise ParameterError(f"cannot stream a {type(n).__name__}")
    succ = segment_graph(nodes)
    sink = _Sink(nodes[-1].features)
    for n in nodes:
        seconds.setdefault(n.name, 0.0)

    def timed(k: int, produced: Iterator[_Piece]) -> Iterator[_Piece]:
        """``produced``, with the time node k spends computing each chunk (not the time its
        consumers spend on it) added to ``seconds``."""
        while True:
            t0 = time.perf_counter()
            item = next(produced, None)
            seconds[nodes[k].name] += time.perf_counter() - t0
            if item is None:
                return
            yield item

    def feed(k: int, items: Iterator[_Piece]) -> None:
        """Node k produces ``items``: each goes to every consumer in the segment, depth first —
        what a consumer completes goes on before node k computes its next chunk. Each consumer
        (and the sink) takes the piece once; the last take releases it."""
        is_sink = k == len(nodes) - 1
        for piece in items:
            piece.takers = len(succ[k]) + is_sink
            if is_sink:
                sink.store(piece.idx, piece.take())
            for k2, offset in succ[k]:
                feed(k2, timed(k2, stages[k2].push(piece.idx + offset, piece)))

    if isinstance(head, AffineNode):
        exponent = encoding_exponent(head.weights, weight_scale(head, x))

        def compute(hc) -> CiphertextBatch:
            bias = None if head.bias is None else head.bias[hc.idx]
            return affine(head, x, keys, hc.weights, bias, exponent)
    else:

        def compute(hc) -> CiphertextBatch:
            return poly(head, x[hc.idx], keys, head.coeffs[:, hc.idx])

    pieces = list(head_chunks(head, piece_size(seg.chunk)))
    last_use = None
    if file_mapping(x.data) is not None:  # an input mapped from a file: keep only its window
        last_use = np.full(len(x), -1, dtype=np.int64)
        for k, hc in enumerate(pieces):
            last_use[input_rows(hc)] = k
    total = len(pieces)
    for k, hc in enumerate(pieces):
        t0 = time.perf_counter()
        piece = _Piece(hc.idx, _relinearize_as_planned(head, compute(hc), keys))
        seconds[head.name] += time.perf_counter() - t0
        if last_use is not None:
            release_rows(x.data, np.flatnonzero(last_use == k))
        feed(0, iter([piece]))
        del piece
        if on_chunk is not None:
            on_chunk(k + 1, total, sink.held + sum(s.held for s in stages[1:]))
    for k in range(1, len(nodes)):  # plan order: a node's producers have finished before it
        feed(k, timed(k, stages[k].finish()))
    return sink.result(seg.nodes[-1])
