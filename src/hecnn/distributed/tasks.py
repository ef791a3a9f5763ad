"""The Ray tasks: a whole batch, or one slice of one layer. Both are pure functions of their
arguments (a plan, evaluation keys, ciphertexts; evaluation is deterministic), so Ray may run
one again after its worker died and the result is the same bit for bit — a retried task is
indistinguishable from a first attempt.

Arguments and results are HECN objects as ``uint8`` arrays (:mod:`hecnn.distributed.wire`); each
task also returns a small record (time, bytes, level, components, scale) the driver reads
without fetching the ciphertexts.
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray

from hecnn.ckks.batch import CiphertextBatch, _pad_components
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys
from hecnn.ckks.linear import BlockSparseWeights, WeightBlock, encoding_exponent
from hecnn.compile.ir import AddNode, AffineNode, ConcatNode, MulNode, Plan, PolyNode
from hecnn.distributed.split import Slice, concat_sources
from hecnn.distributed.wire import open_batch, open_context, open_keys, open_plan, pack_batch
from hecnn.errors import ParameterError

# the executor's own node evaluations: a slice is computed exactly as the whole node would be
from hecnn.runtime.executor import _add, _affine, _mul, _poly, _weight_scale, run


def _record(out: CiphertextBatch, blob: np.ndarray, seconds: float, read: int) -> dict:
    return {
        "seconds": seconds,
        "bytes_out": int(blob.nbytes),
        "bytes_in": int(read),
        "level": out.level,
        "components": out.components,
        "scale": out.scale,
        "pid": os.getpid(),
    }


@ray.remote(num_returns=2)
def run_batch(
    plan_blob: np.ndarray, keys_blob: np.ndarray, batch_blob: np.ndarray, memory_budget: int | None
) -> tuple[dict, np.ndarray]:
    """One batch through the whole plan on this worker (streamed within ``memory_budget``)."""
    t0 = time.perf_counter()
    plan = open_plan(plan_blob)
    ctx = open_context(plan.params)
    keys = open_keys(keys_blob, ctx)
    x = open_batch(batch_blob, ctx)
    out = run(plan, x, keys, memory_budget=memory_budget)
    blob = pack_batch(out)
    return _record(out, blob, time.perf_counter() - t0, batch_blob.nbytes), blob


class _Rows:
    """The parts of one input value a slice task received, addressable by global row."""

    def __init__(self, ctx: CkksContext, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        batches = [open_batch(blob, ctx) for _, blob in parts]
        self.ctx, self.scale = ctx, batches[0].scale
        self.idx = np.concatenate([idx for idx, _ in parts])
        self.order = np.argsort(self.idx, kind="stable")
        self.data = (
            batches[0].data if len(batches) == 1 else np.concatenate([b.data for b in batches])
        )

    def take(self, rows: np.ndarray) -> CiphertextBatch:
        pos = np.searchsorted(self.idx, rows, sorter=self.order)
        at = self.order[np.minimum(pos, len(self.idx) - 1)]
        if len(rows) and not np.array_equal(self.idx[at], rows):
            raise ParameterError("a slice task did not receive every input row it reads")
        return CiphertextBatch(self.ctx, np.ascontiguousarray(self.data[at]), self.scale)


def _local_weights(weights: BlockSparseWeights, rows: np.ndarray) -> BlockSparseWeights:
    """``weights`` with its columns renumbered to positions in ``rows`` (the inputs gathered)."""
    blocks = tuple(
        WeightBlock(b.out_idx, np.searchsorted(rows, b.in_idx), b.weights) for b in weights.blocks
    )
    return BlockSparseWeights(weights.out_features, len(rows), blocks)


def evaluate_slice(
    plan: Plan,
    node_name: str,
    s: Slice,
    inputs: dict[str, _Rows],
    keys: EvaluationKeys,
    ctx: CkksContext,
    target: dict,
) -> CiphertextBatch:
    """Slice ``s`` of node ``node_name``, as the executor computes the whole node."""
    n = plan.node(node_name)
    if isinstance(n, AffineNode):
        rows = s.reads[n.inputs[0]]
        x = inputs[n.inputs[0]].take(rows)
        exponent = encoding_exponent(n.weights, _weight_scale(n, x))  # the whole matrix's
        bias = None if n.bias is None else n.bias[s.idx]
        out = _affine(n, x, keys, _local_weights(s.weights, rows), bias, exponent)
    elif isinstance(n, PolyNode):
        out = _poly(n, inputs[n.inputs[0]].take(s.idx), keys, n.coeffs[:, s.idx])
    elif isinstance(n, AddNode):
        out = _add(inputs[n.inputs[0]].take(s.idx), inputs[n.inputs[1]].take(s.idx))
    elif isinstance(n, MulNode):
        out = _mul(n, inputs[n.inputs[0]].take(s.idx), inputs[n.inputs[1]].take(s.idx), keys)
    elif isinstance(n, ConcatNode):
        # the whole node stacks every input at the lowest level, padded to the most components,
        # with the first input's scale: the driver passes those (``target``)
        parts = []
        for name, lo, hi in concat_sources(plan, n):
            mine = s.idx[(s.idx >= lo) & (s.idx < hi)]
            if len(mine):
                y = inputs[name].take(mine - lo).drop_to(target["level"])
                parts.append((mine, _pad_components(y.data, target["components"])))
        order = np.argsort(np.concatenate([m for m, _ in parts]), kind="stable")
        data = np.concatenate([d for _, d in parts])[order]
        out = CiphertextBatch(ctx, np.ascontiguousarray(data), target["scale"])
    else:  # pragma: no cover - plan_split admits only these
        raise ParameterError(f"cannot evaluate a slice of a {type(n).__name__}")
    if n.relin_after and out.components > 2:
        out = out.relinearize(keys)
    return out


@ray.remote(num_returns=2)
def run_slice(
    plan_blob: np.ndarray,
    keys_blob: np.ndarray,
    node_name: str,
    s: Slice,
    target: dict,
    part_index: list[tuple[str, np.ndarray]],
    *parts: np.ndarray,
) -> tuple[dict, np.ndarray]:
    """Slice ``s`` of node ``node_name`` from the input parts it reads: ``parts[i]`` holds the
    rows ``part_index[i][1]`` of input ``part_index[i][0]``."""
    t0 = time.perf_counter()
    plan = open_plan(plan_blob)
    ctx = open_context(plan.params)
    keys = open_keys(keys_blob, ctx)
    grouped: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for (name, idx), blob in zip(part_index, parts, strict=True):
        grouped.setdefault(name, []).append((idx, blob))
    inputs = {name: _Rows(ctx, got) for name, got in grouped.items()}
    out = evaluate_slice(plan, node_name, s, inputs, keys, ctx, target)
    blob = pack_batch(out)
    read = sum(int(p.nbytes) for p in parts)
    return _record(out, blob, time.perf_counter() - t0, read), blob
