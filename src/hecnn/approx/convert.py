"""Replace ReLU and max-pooling in a pre-trained model by composite polynomials.

Why calibration. The approximations are only accurate on ``[−B, B]``: ``P(x/B)`` of a
composite minimax polynomial explodes outside ``[−1, 1]`` (its degree is up to
``15·27·29``). Each replaced layer therefore gets its own ``B = margin · max|input|``
over calibration data (max-pool: max of its input values). ``margin > 1`` absorbs unseen
inputs; after replacement a *check pass* runs the approximated model on the calibration
data again (its activations differ slightly from the original's) and raises
``B ← margin · max|input|`` for any layer whose input left ``[−B, B]``, up to
``max_retries`` times. The default margin 1.5 comes from ResNet-20 on CIFAR-10: with 1.1,
test images beyond the calibration set's range pushed inputs outside ``[−B, B]``, where the
composite diverges (NaN logits); 1.5 matched the original at every α tried.

Graph rewriting. ``nn.ReLU`` / ``nn.MaxPool2d`` modules are swapped in place (a deep copy
of the model keeps its class). Functional calls (``F.relu``, ``torch.relu``,
``x.relu()``, ``F.max_pool2d``) are found with ``torch.fx``; if there are any, the result
is the traced ``GraphModule`` with each call turned into its own module.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from hecnn.approx.composite import CompositeSign, composite_sign
from hecnn.approx.modules import CompositeMaxPool2d, CompositeReLU

__all__ = ["CompositeLeafTracer", "approx_layers", "approximate", "trace_composite_leaves"]

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}
_POOL_FUNCS = {F.max_pool2d, torch.max_pool2d}


def _batches(calib: Any, batch_size: int = 256) -> Iterable[torch.Tensor]:
    """Inputs from a tensor (split in batches) or an iterable of tensors / ``(x, y)``."""
    if isinstance(calib, torch.Tensor):
        yield from torch.split(calib, batch_size)
        return
    for item in calib:
        yield item[0] if isinstance(item, (tuple, list)) else item


def _const_args(node: fx.Node, names: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    vals = dict(defaults)
    for name, arg in zip(names, node.args[1:], strict=False):
        vals[name] = arg
    vals.update({k: v for k, v in node.kwargs.items() if k != "input"})
    for k, v in vals.items():
        if isinstance(v, fx.Node):
            raise NotImplementedError(f"{node.target} with a non-constant {k} is not supported")
    return vals


def _functionals_to_modules(gm: fx.GraphModule) -> int:
    """Turn functional relu / max_pool2d calls into ``call_module`` nodes; one module per call."""
    count = 0
    for node in list(gm.graph.nodes):
        new_mod: nn.Module | None = None
        if (node.op == "call_function" and node.target in _RELU_FUNCS) or (
            node.op == "call_method" and node.target in _RELU_METHODS
        ):
            new_mod = nn.ReLU()
        elif node.op == "call_function" and node.target in _POOL_FUNCS:
            kw = _const_args(
                node,
                ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
                {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False},
            )
            new_mod = nn.MaxPool2d(**kw)
        elif node.op == "call_module" and isinstance(
            gm.get_submodule(node.target), (nn.ReLU, nn.MaxPool2d)
        ):
            new_mod = copy.deepcopy(gm.get_submodule(node.target))  # per-call bound
        else:
            continue
        name = f"hecnn_approx_{count}"
        count += 1
        gm.add_submodule(name, new_mod)
        with gm.graph.inserting_after(node):
            repl = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(repl)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return count


def _has_functionals(gm: fx.GraphModule) -> bool:
    return any(
        (n.op == "call_function" and n.target in (_RELU_FUNCS | _POOL_FUNCS))
        or (n.op == "call_method" and n.target in _RELU_METHODS)
        for n in gm.graph.nodes
    )


def _prepare(model: nn.Module) -> nn.Module:
    """Deep copy; if functional calls exist, the traced graph with them as modules."""
    work = copy.deepcopy(model)
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:  # data-dependent control flow etc.
        warnings.warn(
            f"torch.fx could not trace the model ({exc}); only nn.ReLU / nn.MaxPool2d "
            "modules are replaced, functional calls are left exact",
            stacklevel=3,
        )
        return work
    if _has_functionals(gm):
        _functionals_to_modules(gm)
        return gm
    return work


def _targets(model: nn.Module, kinds: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and n]


def _record_max_abs(
    model: nn.Module, mods: list[tuple[str, nn.Module]], calib: Any
) -> dict[str, float]:
    """Max ``|input|`` seen by each module over the calibration data (forward pre-hooks)."""
    seen: dict[str, float] = {}
    handles = []
    for name, mod in mods:

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            v = float(args[0].detach().abs().max()) if args[0].numel() else 0.0
            seen[name] = max(seen.get(name, 0.0), v)

        handles.append(mod.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for xb in _batches(calib):
                model(xb)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def _make(old: nn.Module, sign: CompositeSign, bound: float) -> nn.Module:
    if isinstance(old, nn.ReLU):
        return CompositeReLU(sign, bound)
    assert isinstance(old, nn.MaxPool2d)
    if old.dilation not in (1, (1, 1)) or old.ceil_mode or old.return_indices:
        raise NotImplementedError("MaxPool2d with dilation, ceil_mode or return_indices")
    return CompositeMaxPool2d(old.kernel_size, old.stride, sign, bound, padding=old.padding)


def approximate(
    model: nn.Module,
    alpha: int = 10,
    calib: Any = None,
    margin: float = 1.5,
    *,
    degrees: tuple[int, ...] | None = None,
    sign: CompositeSign | None = None,
    check: bool = True,
    max_retries: int = 3,
    default_bound: float = 1.0,
) -> nn.Module:
    """A copy of ``model`` with every ReLU and MaxPool2d replaced by composite polynomials.

    ``calib``: a tensor of inputs or an iterable (e.g. a ``DataLoader``) of inputs or
    ``(inputs, targets)``; each layer's ``B = margin · max|input|`` (``default_bound`` when
    no calibration data is given or the layer never runs). ``sign`` overrides the composite
    (default: :func:`composite_sign` ``(alpha, degrees)``). The original is not modified.
    """
    if margin < 1.0:
        raise ValueError("margin must be >= 1")
    sign = sign or composite_sign(alpha, degrees)
    work = _prepare(model)
    old = _targets(work, (nn.ReLU, nn.MaxPool2d))
    seen = _record_max_abs(work, old, calib) if calib is not None else {}
    for name, mod in old:
        m = seen.get(name, 0.0)
        _replace(work, name, _make(mod, sign, margin * m if m > 0 else default_bound))
    if calib is not None and check:
        for _ in range(max_retries):
            layers = approx_layers(work)
            seen = _record_max_abs(work, list(layers.items()), calib)
            bad = {n: v for n, v in seen.items() if v > layers[n].bound}
            if not bad:
                break
            for n, v in bad.items():
                _replace(work, n, _make(_original_kind(layers[n]), sign, margin * v))
        else:
            warnings.warn(f"inputs still outside [-B, B] in layers {sorted(bad)}", stacklevel=2)
    if isinstance(work, fx.GraphModule):
        work.recompile()
    return work.train(model.training)


def _original_kind(m: nn.Module) -> nn.Module:
    if isinstance(m, CompositeReLU):
        return nn.ReLU()
    return nn.MaxPool2d(m.kernel_size, m.stride, m.padding)


def approx_layers(model: nn.Module) -> dict[str, CompositeReLU | CompositeMaxPool2d]:
    """The composite layers of an approximated model, by qualified name."""
    return {
        n: m for n, m in model.named_modules() if isinstance(m, (CompositeReLU, CompositeMaxPool2d))
    }


class CompositeLeafTracer(fx.Tracer):
    """fx tracer that keeps :class:`CompositeReLU` / :class:`CompositeMaxPool2d` as single
    ``call_module`` nodes (instead of inlining their Horner arithmetic), so a compiler sees
    one node per activation and reads ``.sign`` / ``.bound`` from the module."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (CompositeReLU, CompositeMaxPool2d)) or super().is_leaf_module(
            m, qualname
        )


def trace_composite_leaves(model: nn.Module) -> fx.GraphModule:
    """``GraphModule`` of an approximated model with composite layers as leaf nodes."""
    graph = CompositeLeafTracer().trace(model)
    return fx.GraphModule(model, graph)
