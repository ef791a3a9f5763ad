"""ONNX → ``torch.fx.GraphModule`` of ordinary layers, with hecnn's own small op table.

Why not onnx2torch. It was the first choice (maintained, broad op coverage), but it imports
torchvision unconditionally (for NMS / RoIAlign converters); torchvision wheels are built per
torch release and, next to the pinned CPU torch 2.13, either fail to load their C++ ops
(``operator torchvision::nms does not exist``) or make pip replace the pinned torch with a CUDA
build. The ops an encrypted CNN can use at all are few, so a ~200-line table over the ``onnx``
protobuf reader is smaller than the dependency and maps each op onto exactly the layer the
compiler knows:

Conv → ``nn.Conv2d``; Gemm / MatMul(+bias Add) → ``nn.Linear``; BatchNormalization →
``nn.BatchNorm1d/2d``; AveragePool / GlobalAveragePool → ``nn.AvgPool2d`` /
``nn.AdaptiveAvgPool2d(1)``; Relu / MaxPool / Sigmoid / Gelu → ``nn.ReLU`` / ``nn.MaxPool2d`` /
``nn.Sigmoid`` / ``nn.GELU`` (approximated later); ``x * Sigmoid(x)`` → ``nn.SiLU``;
Add / Sub / Mul / Div / Pow / Neg with scalar constants → the same Python arithmetic a user
writes (the compiler folds it into polynomials); Flatten / Reshape → ``torch.flatten``; Concat →
``torch.cat``; Identity / Dropout → aliases. Anything else raises
:class:`~hecnn.errors.UnsupportedLayerError` with the op, the node and what to do instead.
"""

from __future__ import annotations

import contextlib
import operator
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from hecnn.errors import HecnnError, UnsupportedLayerError

__all__ = ["ONNX_ADVICE", "ONNX_SUPPORTED", "load_onnx"]

#: ONNX op → what it becomes
ONNX_SUPPORTED: dict[str, str] = {
    "Conv": "Conv2d",
    "Gemm": "Linear",
    "MatMul": "Linear (constant 2-D weight)",
    "BatchNormalization": "BatchNorm (folded)",
    "AveragePool": "AvgPool2d",
    "GlobalAveragePool": "AdaptiveAvgPool2d(1)",
    "Flatten": "flatten",
    "Reshape": "reshape (per-image size kept)",
    "Identity": "alias",
    "Dropout": "alias",
    "Add": "residual add / bias / polynomial",
    "Sub": "polynomial",
    "Mul": "polynomial (x*x, a*x), x*Sigmoid(x) = SiLU",
    "Div": "polynomial (by a constant)",
    "Pow": "polynomial (integer exponent)",
    "Neg": "polynomial",
    "Concat": "channel concatenation",
    "Constant": "constant",
    "Relu": "composite minimax ReLU",
    "MaxPool": "composite minimax max-pool",
    "Sigmoid": "Chebyshev least-squares fit",
    "Gelu": "Chebyshev least-squares fit",
    "Erf": "only inside GELU's x·(1 + erf(x/√2)), as torch exports nn.GELU",
}
#: advice for common ops that cannot be evaluated under encryption
ONNX_ADVICE: dict[str, str] = {
    "Softmax": "drop the final Softmax (the argmax of the logits is the same) and export again",
    "LogSoftmax": "drop the final LogSoftmax (the argmax of the logits is the same)",
    "Tanh": "use Sigmoid, SiLU, ReLU or a polynomial activation (hecnn.nn) instead of Tanh",
    "LeakyRelu": "use ReLU (approximated by composite polynomials) or a hecnn.nn activation",
    "Shape": "use nn.Flatten() / x.flatten(1) instead of x.view(x.size(0), -1)",
    "Gather": "use nn.Flatten() / x.flatten(1) instead of x.view(x.size(0), -1)",
    "Transpose": "export with channels-first (N×C×H×W) inputs, e.g. tf2onnx --inputs-as-nchw",
    "Squeeze": "flatten with Flatten(axis=1) instead of squeezing pooled maps",
}


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(node: Any, idx: int, why: str | None = None) -> UnsupportedLayerError:
    advice = why or ONNX_ADVICE.get(
        node.op_type,
        f"rewrite that part with supported ops ({', '.join(sorted(ONNX_SUPPORTED))}) and export "
        "again",
    )
    return UnsupportedLayerError(
        f"ONNX op {node.op_type!r} (node {node.name or f'#{idx}'!r}, inputs {list(node.input)}) "
        f"cannot be evaluated under encryption: {advice}"
    )


def _sym_pads(pads: list[int] | None, node: Any, idx: int) -> tuple[int, int]:
    if not pads:
        return (0, 0)
    t, left, b, r = pads
    if (t, left) != (b, r):
        raise _unsupported(node, idx, f"asymmetric padding {pads}; pad symmetrically")
    return (int(t), int(left))


def _scalar(name: str, consts: dict[str, np.ndarray]) -> float | None:
    c = consts.get(name)
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None


def _gelu_input(
    ins: list[str], producer: dict[str, Any], consts: dict[str, np.ndarray]
) -> str | None:
    """``x`` when ``Mul(x, Add(Erf(Div(x, √2)), 1))`` (either operand order), else ``None``."""
    for s, other in ((ins[1], ins[0]), (ins[0], ins[1])):
        add = producer.get(s)
        if add is None or add.op_type != "Add":
            continue
        for e, one in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            erf = producer.get(e)
            if erf is None or erf.op_type != "Erf" or _scalar(one, consts) != 1.0:
                continue
            div = producer.get(erf.input[0])
            if div is None or div.input[0] != other:
                continue
            k = _scalar(div.input[1], consts)
            if div.op_type == "Div" and k is not None and abs(k - np.sqrt(2.0)) < 1e-4:
                return other
            if div.op_type == "Mul" and k is not None and abs(k - np.sqrt(0.5)) < 1e-4:
                return other
    return None


def load_onnx(path: str | Path) -> fx.GraphModule:
    """An ``.onnx`` file → a ``GraphModule`` (eval mode) whose submodules are named after the
    ONNX nodes, so compiler messages point at the node in the user's graph."""
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError as exc:
        raise HecnnError("ONNX import needs the onnx package: pip install 'hecnn[onnx]'") from exc
    if not Path(path).is_file():
        raise HecnnError(f"ONNX file {str(path)!r} does not exist")
    proto = onnx.load(str(path))
    with contextlib.suppress(Exception):  # shapes only pick BatchNorm1d vs 2d (default 2d)
        proto = onnx.shape_inference.infer_shapes(proto)
    g = proto.graph
    for i, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ONNX_SUPPORTED:
            raise _unsupported(node, i)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*g.value_info, *g.input, *g.output]
        if v.type.HasField("tensor_type")
    }
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    graph = fx.Graph()
    root = nn.Module()
    env: dict[str, fx.Node] = {}
    inputs = [v for v in g.input if v.name not in consts]
    if len(inputs) != 1:
        raise HecnnError(f"{path}: the model must have one image input, has {len(inputs)}")
    env[inputs[0].name] = graph.placeholder("x")
    used: set[str] = set()

    def add_module(node: Any, idx: int, mod: nn.Module, arg: fx.Node) -> fx.Node:
        base = re.sub(r"\W+", "_", node.name or f"{node.op_type}_{idx}").strip("_") or "n"
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        root.add_module(name, mod)
        return graph.call_module(name, (arg,))

    def operand(name: str, node: Any, idx: int) -> fx.Node | float | np.ndarray:
        if name in env:
            return env[name]
        if name in consts:
            c = consts[name]
            return float(c.reshape(-1)[0]) if c.size == 1 else c
        raise _unsupported(node, idx, f"input {name!r} is neither a tensor nor a constant")

    def const(name: str, node: Any, idx: int) -> np.ndarray:
        if name not in consts:
            raise _unsupported(node, idx, f"{name!r} must be a constant (initializer)")
        return consts[name]

    def tensor(name: str) -> torch.Tensor:
        return torch.tensor(np.array(consts[name], dtype=np.float32))

    for idx, node in enumerate(g.node):
        op, a = node.op_type, _attrs(node)
        ins = [i for i in node.input]
        out = node.output[0]
        if op == "Constant":
            val = a.get("value")
            if val is None:
                raise _unsupported(node, idx, "only tensor-valued Constant nodes are supported")
            consts[out] = numpy_helper.to_array(val)
            continue
        if op in ("Identity", "Dropout"):
            env[out] = env[ins[0]]
            continue
        x = env.get(ins[0]) if ins else None
        if op in ONNX_SUPPORTED and op not in ("Add", "Sub", "Mul", "Div", "Pow") and x is None:
            raise _unsupported(node, idx, "its input is a constant; fold constants before export")
        if op == "Conv":
            w = const(ins[1], node, idx)
            if w.ndim != 4:
                raise _unsupported(node, idx, "only 2-D convolutions are supported")
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
                raise _unsupported(node, idx, "auto_pad SAME_*: export with explicit pads")
            if any(d != 1 for d in a.get("dilations", [1, 1])):
                raise _unsupported(node, idx, "dilated convolutions are not supported")
            groups = int(a.get("group", 1))
            m = nn.Conv2d(
                w.shape[1] * groups,
                w.shape[0],
                tuple(w.shape[2:]),
                stride=tuple(a.get("strides", [1, 1])),
                padding=_sym_pads(a.get("pads"), node, idx),
                groups=groups,
                bias=len(ins) > 2 and bool(ins[2]),
            )
            m.weight.data = tensor(ins[1])
            if m.bias is not None:
                m.bias.data = tensor(ins[2])
            env[out] = add_module(node, idx, m, x)
        elif op in ("Gemm", "MatMul"):
            bw = const(ins[1], node, idx).astype(np.float32)
            if bw.ndim != 2 or (op == "Gemm" and a.get("transA", 0)):
                raise _unsupported(node, idx, "only x·W with a constant 2-D W is supported")
            if op == "Gemm":
                weight = a.get("alpha", 1.0) * (bw if a.get("transB", 0) else bw.T)
                bias = (
                    a.get("beta", 1.0) * np.broadcast_to(const(ins[2], node, idx), weight.shape[:1])
                    if len(ins) > 2 and ins[2]
                    else None
                )
            else:
                weight, bias = bw.T, None
            m = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            m.weight.data = torch.as_tensor(np.ascontiguousarray(weight), dtype=torch.float32)
            if bias is not None:
                m.bias.data = torch.as_tensor(np.array(bias), dtype=torch.float32)
            env[out] = add_module(node, idx, m, x)
        elif op == "BatchNormalization":
            scale = const(ins[1], node, idx)
            for i in ins[2:5]:
                const(i, node, idx)
            cls = nn.BatchNorm1d if ranks.get(ins[0], 4) == 2 else nn.BatchNorm2d
            m = cls(len(scale), eps=float(a.get("epsilon", 1e-5)))
            m.weight.data, m.bias.data = tensor(ins[1]), tensor(ins[2])
            m.running_mean.data, m.running_var.data = tensor(ins[3]), tensor(ins[4])
            env[out] = add_module(node, idx, m.eval(), x)
        elif op in ("AveragePool", "MaxPool"):
            k = tuple(a["kernel_shape"])
            stride = tuple(a.get("strides", k))
            pad = _sym_pads(a.get("pads"), node, idx)
            if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise _unsupported(node, idx, "ceil_mode / dilations are not supported")
            if op == "MaxPool":
                m = nn.MaxPool2d(k, stride, pad)
            else:
                if pad != (0, 0) and not a.get("count_include_pad", 0):
                    raise _unsupported(
                        node, idx, "padded average pooling must count the padding (torch default)"
                    )
                m = nn.AvgPool2d(k, stride, pad)
            env[out] = add_module(node, idx, m, x)
        elif op == "GlobalAveragePool":
            env[out] = add_module(node, idx, nn.AdaptiveAvgPool2d(1), x)
        elif op in ("Relu", "Sigmoid", "Gelu"):
            m = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Gelu": nn.GELU}[op]()
            env[out] = add_module(node, idx, m, x)
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise _unsupported(node, idx, "only Flatten(axis=1) keeps images apart")
            env[out] = graph.call_function(torch.flatten, (x, 1))
        elif op == "Reshape":
            shape = [int(s) for s in const(ins[1], node, idx)]
            env[out] = graph.call_method("reshape", (x, -1, *shape[1:]))
        elif op == "Concat":
            parts = [env[i] for i in ins]
            env[out] = graph.call_function(torch.cat, (parts,), {"dim": int(a["axis"])})
        elif op == "Erf":  # kept only when a GELU pattern below consumes it (else compile error)
            env[out] = graph.call_function(torch.erf, (x,))
        elif op == "Neg":
            env[out] = graph.call_function(operator.neg, (x,))
        else:  # Add, Sub, Mul, Div, Pow
            lhs, rhs = operand(ins[0], node, idx), operand(ins[1], node, idx)
            if op == "Mul" and isinstance(lhs, fx.Node) and isinstance(rhs, fx.Node):
                silu_of = None  # x * Sigmoid(x), as torch exports nn.SiLU
                for s, other in ((ins[1], ins[0]), (ins[0], ins[1])):
                    p = producer.get(s)
                    if p is not None and p.op_type == "Sigmoid" and p.input[0] == other:
                        silu_of = other
                if silu_of is not None:
                    env[out] = add_module(node, idx, nn.SiLU(), env[silu_of])
                    continue
                gelu_of = _gelu_input(ins, producer, consts)
                if gelu_of is not None:  # x·(1 + erf(x/√2)) = 2·GELU(x)
                    gelu = add_module(node, idx, nn.GELU(), env[gelu_of])
                    env[out] = graph.call_function(operator.mul, (gelu, 2.0))
                    continue
            if isinstance(rhs, np.ndarray) and op == "Add" and isinstance(lhs, fx.Node):
                bias = rhs.reshape(-1)
                if ranks.get(ins[0], 2) != 2:
                    raise _unsupported(node, idx, "adding a constant tensor to a feature map")
                m = nn.Linear(len(bias), len(bias))
                m.weight.data = torch.eye(len(bias))
                m.bias.data = torch.as_tensor(bias, dtype=torch.float32)
                env[out] = add_module(node, idx, m, lhs)
                continue
            if isinstance(lhs, np.ndarray) or isinstance(rhs, np.ndarray):
                raise _unsupported(node, idx, f"{op} with a non-scalar constant")
            fn = {
                "Add": operator.add,
                "Sub": operator.sub,
                "Mul": operator.mul,
                "Div": operator.truediv,
                "Pow": operator.pow,
            }[op]
            if op == "Pow" and isinstance(rhs, float) and rhs == int(rhs):
                rhs = int(rhs)
            env[out] = graph.call_function(fn, (lhs, rhs))
    if len(g.output) != 1:
        raise HecnnError(f"{path}: the model must have one output, has {len(g.output)}")
    graph.output(env[g.output[0].name])
    gm = fx.GraphModule(root, graph, class_name=Path(path).stem.replace("-", "_") or "OnnxModel")
    gm.graph.eliminate_dead_code()  # e.g. the Sigmoid of a fused x·Sigmoid(x)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
