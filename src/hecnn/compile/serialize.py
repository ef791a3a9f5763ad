"""Compiled plans on disk and on the wire: the HECN envelope of kind ``PLAN``, without pickle.

A plan is its graph as JSON metadata (node kinds, names, inputs, shapes, levels, flags) plus raw
little-endian arrays with explicit dtypes and shapes:

- an affine node ``i`` stores ``n{i}.dims`` (int64, blocks × 2: rows, columns of each dense
  block), ``n{i}.out_idx`` and ``n{i}.in_idx`` (int64, every block's indices concatenated),
  ``n{i}.weights`` (float64, every block's row-major weights concatenated) and ``n{i}.bias``;
- a polynomial node stores ``n{i}.coeffs`` (float64, (degree + 1) × features).

The plan's CKKS parameters ride in the envelope like every other object's. Loading checks the
whole graph — unique names, inputs defined before use, feature counts of every edge, block
dimensions summing to the stored arrays, indices in range, finite weights, levels consistent
with the parameters — before any node is built, so a corrupted or hand-crafted plan raises
:class:`~hecnn.errors.SerializationError` instead of failing deep inside the executor.
Whether insecure (test-only) parameters are acceptable is the caller's decision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hecnn.ckks import serialize as envelope
from hecnn.ckks.batch import MAX_COMPONENTS
from hecnn.ckks.linear import BlockSparseWeights, WeightBlock
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
from hecnn.compile.levels import check_deferred_rescales
from hecnn.errors import HecnnError, ParameterError, SerializationError

PLAN_DTYPES = frozenset({"<f8", "<i8"})
MAX_NODES = 4096
MAX_FEATURES = 1 << 22
MAX_DEGREE = 256
MAX_TEXT = 4096

_OPS: dict[str, type[Node]] = {
    "input": InputNode,
    "affine": AffineNode,
    "poly": PolyNode,
    "add": AddNode,
    "mul": MulNode,
    "concat": ConcatNode,
}
_OP_OF = {cls: op for op, cls in _OPS.items()}


def dumps_plan(plan: Plan) -> bytes:
    """Serialize a compiled plan (graph, weights, coefficients, CKKS parameters)."""
    if not isinstance(plan, Plan):
        raise SerializationError(f"expected a Plan, got {type(plan).__name__}")
    nodes: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for i, n in enumerate(plan.nodes):
        op = _OP_OF.get(type(n))
        if op is None:
            raise SerializationError(f"cannot serialize node type {type(n).__name__}")
        entry: dict[str, Any] = {
            "op": op,
            "name": n.name,
            "inputs": list(n.inputs),
            "shape": [int(s) for s in n.shape],
            "level_in": int(n.level_in),
            "level_out": int(n.level_out),
            "relin_after": bool(n.relin_after),
            "rescale": bool(n.rescale),
            "components": int(n.components),
            "source": n.source,
        }
        if n.scale_factor != 1.0:
            entry["scale_factor"] = float(n.scale_factor)
        if isinstance(n, AffineNode):
            w = n.weights
            if w is None:
                raise SerializationError(f"{n.name}: affine node without blocked weights")
            entry["out_features"], entry["in_features"] = w.out_features, w.in_features
            entry["bias"] = n.bias is not None
            if n.owed_rescales:
                entry["owed_rescales"] = int(n.owed_rescales)
            if n.defer_rescale:
                entry["defer_rescale"] = True
            arrays[f"n{i}.dims"] = np.array(
                [b.weights.shape for b in w.blocks], dtype="<i8"
            ).reshape(-1, 2)
            arrays[f"n{i}.out_idx"] = _cat([b.out_idx for b in w.blocks], "<i8")
            arrays[f"n{i}.in_idx"] = _cat([b.in_idx for b in w.blocks], "<i8")
            arrays[f"n{i}.weights"] = _cat([b.weights.reshape(-1) for b in w.blocks], "<f8")
            if n.bias is not None:
                arrays[f"n{i}.bias"] = np.asarray(n.bias, dtype="<f8")
        elif isinstance(n, PolyNode):
            entry["fold_leading"] = bool(n.fold_leading)
            if n.defer_rescale:
                entry["defer_rescale"] = True
            entry["input_range"] = _pair_out(n.input_range)
            entry["valid_range"] = _pair_out(n.valid_range)
            if n.chebyshev:
                entry["basis"], entry["radius"] = "chebyshev", float(n.radius)
            arrays[f"n{i}.coeffs"] = np.asarray(n.coeffs, dtype="<f8")
        nodes.append(entry)
    meta = {
        "plan": {
            "nodes": nodes,
            "output": plan.output,
            "input_shape": [int(s) for s in plan.input_shape],
            "batch": int(plan.batch),
            "model_name": plan.model_name,
            "warnings": list(plan.warnings),
            "decisions": list(plan.decisions),
            "packing": plan.packing,
        }
    }
    return envelope.pack(envelope.Kind.PLAN, plan.params, meta, arrays)


def loads_plan(data: bytes) -> Plan:
    """Validate and rebuild a plan; anything malformed raises :class:`SerializationError`."""
    kind, fp, meta, payload = envelope.read_header(data)
    if kind != envelope.Kind.PLAN:
        raise SerializationError(f"expected a plan, got a {kind.name.lower()}")
    params = envelope.params_from_meta(meta.get("params", {}))
    if params.fingerprint != fp:
        raise SerializationError("parameter fingerprint does not match the embedded parameters")
    arrs = envelope.arrays(meta, payload, PLAN_DTYPES)
    spec = meta.get("plan")
    if not isinstance(spec, dict):
        raise SerializationError("malformed plan: missing graph description")
    try:
        return _build(spec, arrs, params)
    except HecnnError as exc:
        if isinstance(exc, SerializationError):
            raise
        raise SerializationError(f"malformed plan: {exc}") from None


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write ``plan`` to ``path`` (atomically: a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(dumps_plan(plan))
    tmp.replace(path)


def load_plan(path: str | Path) -> Plan:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SerializationError(f"cannot read plan {path}: {exc.strerror}") from None
    return loads_plan(data)


# -- validation helpers -----------------------------------------------------------------------


def _cat(parts: list[np.ndarray], dtype: str) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=dtype).reshape(-1) for p in parts] or [[]]).astype(
        dtype
    )


def _pair_out(r: tuple[float, float] | None) -> list[float] | None:
    return None if r is None else [float(r[0]), float(r[1])]


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SerializationError(f"malformed plan: {what} must be an integer in [{lo}, {hi}]")
    return v


def _flag(entry: dict[str, Any], key: str, name: str) -> bool:
    """An optional boolean field of a node entry (False when absent)."""
    v = entry.get(key, False)
    if not isinstance(v, bool):
        raise SerializationError(f"malformed plan: node {name!r} {key} flag")
    return v


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise SerializationError(f"malformed plan: {what} must be a string")
    return v


def _shape(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not 1 <= len(v) <= 8:
        raise SerializationError(f"malformed plan: {what} must be a list of 1..8 sizes")
    shape = tuple(_int(s, 1, MAX_FEATURES, what) for s in v)
    if math.prod(shape) > MAX_FEATURES:
        raise SerializationError(f"malformed plan: {what} {shape} exceeds {MAX_FEATURES} features")
    return shape


def _positive(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf"):
        raise SerializationError(f"malformed plan: {what} must be a positive number")
    return float(v)


def _pair_in(v: Any, what: str) -> tuple[float, float] | None:
    if v is None:
        return None
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    ):
        raise SerializationError(f"malformed plan: {what} must be null or two numbers")
    return float(v[0]), float(v[1])


def _array(arrs: dict, key: str, dtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = arrs.get(key)
    if a is None or a.dtype.str != dtype:
        raise SerializationError(f"malformed plan: array {key!r} missing or not {dtype}")
    if shape is not None and a.shape != shape:
        raise SerializationError(f"malformed plan: array {key!r} has shape {a.shape}, not {shape}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise SerializationError(f"malformed plan: array {key!r} holds non-finite values")
    return np.array(a)  # own, writable copy: the payload view dies with the input bytes


def _weights(i: int, e: dict, arrs: dict, out_f: int, in_f: int) -> BlockSparseWeights:
    dims = _array(arrs, f"n{i}.dims", "<i8")
    if dims.ndim != 2 or dims.shape[1] != 2 or len(dims) > out_f:
        raise SerializationError(f"malformed plan: node {i} block table has shape {dims.shape}")
    if np.any(dims < 0) or np.any(dims[:, 0] > out_f) or np.any(dims[:, 1] > in_f):
        raise SerializationError(f"malformed plan: node {i} block dimensions out of range")
    rows, cols = dims[:, 0].astype(object), dims[:, 1].astype(object)  # exact, no overflow
    out_idx = _array(arrs, f"n{i}.out_idx", "<i8", (int(rows.sum()),))
    in_idx = _array(arrs, f"n{i}.in_idx", "<i8", (int(cols.sum()),))
    w = _array(arrs, f"n{i}.weights", "<f8", (int((rows * cols).sum()),))
    if out_idx.size and (out_idx.min() < 0 or out_idx.max() >= out_f):
        raise SerializationError(f"malformed plan: node {i} output index out of range")
    if in_idx.size and (in_idx.min() < 0 or in_idx.max() >= in_f):
        raise SerializationError(f"malformed plan: node {i} input index out of range")
    blocks = []
    ro = ci = wo = 0
    for r, c in dims.tolist():
        blocks.append(
            WeightBlock(out_idx[ro : ro + r], in_idx[ci : ci + c], w[wo : wo + r * c].reshape(r, c))
        )
        ro, ci, wo = ro + r, ci + c, wo + r * c
    return BlockSparseWeights(out_f, in_f, tuple(blocks))


def _build(spec: dict, arrs: dict, params) -> Plan:
    raw_nodes = spec.get("nodes")
    if not isinstance(raw_nodes, list) or not 1 <= len(raw_nodes) <= MAX_NODES:
        raise SerializationError(f"malformed plan: 1..{MAX_NODES} nodes expected")
    input_shape = _shape(spec.get("input_shape"), "input_shape")
    batch = _int(spec.get("batch"), 1, params.slots, "batch")
    top = params.max_level
    nodes: list[Node] = []
    by_name: dict[str, Node] = {}
    for i, e in enumerate(raw_nodes):
        if not isinstance(e, dict) or not isinstance(e.get("op"), str) or e["op"] not in _OPS:
            raise SerializationError(f"malformed plan: node {i} has no known op")
        op = e["op"]
        name = _text(e.get("name"), f"node {i} name")
        if name in by_name or not name:
            raise SerializationError(f"malformed plan: node name {name[:40]!r} empty or repeated")
        raw_inputs = e.get("inputs")
        if not isinstance(raw_inputs, list) or len(raw_inputs) > MAX_NODES:
            raise SerializationError(f"malformed plan: node {name!r} inputs must be a list")
        inputs = tuple(_text(x, "input name") for x in raw_inputs)
        if any(x not in by_name for x in inputs):
            raise SerializationError(f"malformed plan: node {name!r} uses an undefined input")
        arity = {"input": (0, 0), "affine": (1, 1), "poly": (1, 1), "add": (2, 2), "mul": (2, 2)}
        lo, hi = arity.get(op, (1, MAX_NODES))
        if not lo <= len(inputs) <= hi:
            raise SerializationError(f"malformed plan: {op} node {name!r} has {len(inputs)} inputs")
        relin = e.get("relin_after")
        if not isinstance(relin, bool):
            raise SerializationError(f"malformed plan: node {name!r} relin_after must be a bool")
        rescale = e.get("rescale")
        if not isinstance(rescale, bool):
            raise SerializationError(f"malformed plan: node {name!r} rescale must be a bool")
        components = _int(e.get("components"), 2, MAX_COMPONENTS, f"node {name!r} components")
        common = {
            "name": name,
            "rescale": rescale,
            "components": components,
            "inputs": inputs,
            "shape": _shape(e.get("shape"), f"node {name!r} shape"),
            "level_in": _int(e.get("level_in"), 0, top, f"node {name!r} level_in"),
            "level_out": _int(e.get("level_out"), 0, top, f"node {name!r} level_out"),
            "relin_after": relin,
            "source": _text(e.get("source"), f"node {name!r} source"),
            "scale_factor": _positive(e.get("scale_factor", 1.0), f"node {name!r} scale_factor"),
        }
        feats = math.prod(common["shape"])
        in_feats = [by_name[x].features for x in inputs]
        if op == "input":
            node: Node = InputNode(**common)
            if common["shape"] != input_shape:
                raise SerializationError(
                    "malformed plan: input node shape differs from input_shape"
                )
        elif op == "affine":
            out_f = _int(e.get("out_features"), 1, MAX_FEATURES, "out_features")
            in_f = _int(e.get("in_features"), 1, MAX_FEATURES, "in_features")
            if out_f != feats or in_f != in_feats[0]:
                raise SerializationError(f"malformed plan: node {name!r} weight shape mismatch")
            if not isinstance(e.get("bias"), bool):
                raise SerializationError(f"malformed plan: node {name!r} bias flag missing")
            bias = _array(arrs, f"n{i}.bias", "<f8", (out_f,)) if e["bias"] else None
            owed = _int(e.get("owed_rescales", 0), 0, 2, f"node {name!r} owed_rescales")
            node = AffineNode(
                **common,
                weights=_weights(i, e, arrs, out_f, in_f),
                bias=bias,
                owed_rescales=owed,
                defer_rescale=_flag(e, "defer_rescale", name),
            )
        elif op == "poly":
            coeffs = _array(arrs, f"n{i}.coeffs", "<f8")
            if coeffs.ndim != 2 or not 1 <= coeffs.shape[0] <= MAX_DEGREE + 1:
                raise SerializationError(f"malformed plan: node {name!r} coefficient table")
            if coeffs.shape[1] != feats or in_feats[0] != feats:
                raise SerializationError(f"malformed plan: node {name!r} feature count mismatch")
            fold = e.get("fold_leading")
            if not isinstance(fold, bool):
                raise SerializationError(f"malformed plan: node {name!r} fold_leading flag")
            basis = e.get("basis", "power")
            radius = _positive(e.get("radius", 1.0), f"node {name!r} radius")
            if basis not in ("power", "chebyshev"):
                raise SerializationError(f"malformed plan: node {name!r} basis {basis!r}")
            node = PolyNode(
                **common,
                coeffs=coeffs,
                fold_leading=fold,
                input_range=_pair_in(e.get("input_range"), "input_range"),
                valid_range=_pair_in(e.get("valid_range"), "valid_range"),
                basis=basis,
                radius=radius,
                defer_rescale=_flag(e, "defer_rescale", name),
            )
        elif op in ("add", "mul"):
            if in_feats != [feats, feats]:
                raise SerializationError(f"malformed plan: {op} node {name!r} feature mismatch")
            node = AddNode(**common) if op == "add" else MulNode(**common)
        else:
            if sum(in_feats) != feats:
                raise SerializationError(f"malformed plan: concat node {name!r} feature mismatch")
            node = ConcatNode(**common)
        nodes.append(node)
        by_name[name] = node
    if sum(isinstance(n, InputNode) for n in nodes) != 1:
        raise SerializationError("malformed plan: exactly one input node expected")
    output = _text(spec.get("output"), "output")
    if output not in by_name:
        raise SerializationError(f"malformed plan: output {output[:40]!r} is not a node")
    _check_levels(nodes, params)
    try:
        check_deferred_rescales(nodes)
    except ParameterError as err:
        raise SerializationError(f"malformed plan: {err}") from None
    warnings = spec.get("warnings", [])
    if not isinstance(warnings, list) or len(warnings) > MAX_NODES:
        raise SerializationError("malformed plan: warnings must be a list of strings")
    decisions = spec.get("decisions", [])
    if not isinstance(decisions, list) or len(decisions) > MAX_NODES:
        raise SerializationError("malformed plan: decisions must be a list of strings")
    packing = spec.get("packing", "batch")
    if packing not in ("batch", "image"):
        raise SerializationError(f"malformed plan: unknown packing {str(packing)[:20]!r}")
    plan = Plan(
        nodes=nodes,
        output=output,
        params=params,
        input_shape=input_shape,
        batch=batch,
        model_name=_text(spec.get("model_name", ""), "model_name"),
        warnings=[_text(w, "warning") for w in warnings],
        decisions=[_text(d, "decision") for d in decisions],
        packing=packing,
    )
    if packing == "image":  # layouts and diagonals follow from the nodes: rebuilt, not stored
        from hecnn.compile.image import pack_image

        plan.image = pack_image(nodes, params.slots)
    return plan


def _check_levels(nodes: list[Node], params) -> None:
    """Levels must be what the compiler assigns: top minus the depth consumed so far."""
    depth: dict[str, int] = {}
    top = params.max_level
    for n in nodes:
        d_in = max((depth[i] for i in n.inputs), default=0)
        depth[n.name] = d_in + n.depth
        if n.level_in != top - d_in or n.level_out != top - depth[n.name]:
            raise SerializationError(
                f"malformed plan: node {n.name!r} levels {n.level_in}→{n.level_out} do not "
                f"match its depth (expected {top - d_in}→{top - depth[n.name]})"
            )
        if n.level_out < params.min_level:
            raise SerializationError(f"malformed plan: node {n.name!r} runs out of levels")
