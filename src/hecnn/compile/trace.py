"""torch.fx graph → raw plan nodes, one per supported operation.

Every linear operation becomes an :class:`AffineNode` holding a scipy sparse matrix over the
flattened (C, H, W) features (row-major, the order of ``torch.flatten``); later passes merge and
block them. Reshapes, Flatten, Dropout and Identity become aliases. Anything else raises
:class:`UnsupportedLayerError` naming the operation and the node.

Plain-PyTorch polynomials. Users write activations by hand — ``x * x``, ``x ** 2``,
``torch.square(x)``, ``torch.pow(x, 3)``, ``0.5 * x + 1``, sums of such terms. Each elementwise
arithmetic node is kept as a symbolic polynomial of one *base* tensor (numpy polynomial
arithmetic on ascending coefficients); only when a non-polynomial operation (a layer, the
output) consumes it is it materialized, as one :class:`PolyNode` (degree ≥ 2) or one
:class:`AffineNode` (degree ≤ 1, which the passes then merge). So a hand-written
``bn(conv(x)) ** 2`` compiles exactly like a ``hecnn.nn`` activation after BN: the BN folds into
the convolution and the square is one level.
"""

from __future__ import annotations

import operator

import numpy as np
import scipy.sparse as sp
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from hecnn.approx.modules import CompositeMaxPool2d, CompositeReLU
from hecnn.ckks.linear import BlockSparseWeights
from hecnn.compile.chebyshev import to_chebyshev
from hecnn.compile.ir import AddNode, AffineNode, ConcatNode, InputNode, MulNode, Node, PolyNode
from hecnn.errors import UnsupportedLayerError
from hecnn.nn.activations import PolyActivation

_ALIAS_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)

_MUL = {operator.mul, torch.mul, "mul", torch.multiply}
_ADD = {operator.add, torch.add, "add"}
_SUB = {operator.sub, torch.sub, "sub", torch.subtract}
_NEG = {operator.neg, torch.neg, "neg"}
_DIV = {operator.truediv, torch.div, "div", torch.true_divide, "truediv"}
_POW = {operator.pow, torch.pow, "pow"}
_SQUARE = {torch.square, "square"}
#: highest degree a hand-written polynomial may reach (beyond, coefficients and depth explode)
MAX_POLY_DEGREE = 31

Expr = tuple[str | None, np.ndarray]  # (base tensor's plan name or None for a constant, coeffs)


def _is_poly_op(n: torch.fx.Node) -> bool:
    if n.op not in ("call_function", "call_method"):
        return False
    t = n.target
    try:
        return any(t in group for group in (_MUL, _ADD, _SUB, _NEG, _DIV, _POW, _SQUARE))
    except TypeError:  # unhashable target
        return False


def _poly_expr(n: torch.fx.Node, expr_of, where: str) -> Expr | None:
    """The polynomial ``n`` computes of one base tensor, or ``None`` when ``n`` is an addition
    of two different tensors (a residual add, handled as an :class:`AddNode`)."""
    P = np.polynomial.polynomial
    if n.kwargs.get("alpha", 1) != 1 or n.kwargs.get("rounding_mode") is not None:
        raise UnsupportedLayerError(f"{where}: alpha= / rounding_mode= are not supported")
    args = [*n.args, *[v for k, v in n.kwargs.items() if k in ("other", "exponent")]]
    t = n.target
    if t in _SQUARE:
        args = [args[0], 2]
        t = "pow"
    if t in _NEG:
        (base, c) = expr_of(args[0])
        return base, -c
    a, b = args[0], args[1]
    if t in _POW:
        base, c = expr_of(a)
        if isinstance(b, torch.fx.Node) or float(b) != int(b) or int(b) < 0:
            raise UnsupportedLayerError(
                f"{where}: only non-negative integer powers are polynomials (got exponent {b!r})"
            )
        out = np.array([1.0])
        for _ in range(int(b)):
            out = P.polymul(out, c)
        return base, out
    if t in _DIV:
        if isinstance(b, torch.fx.Node):
            raise UnsupportedLayerError(
                f"{where}: division by a tensor is not a polynomial; divide by a constant"
            )
        base, c = expr_of(a)
        return base, c / float(b)
    (ba, ca), (bb, cb) = expr_of(a), expr_of(b)
    if ba is not None and bb is not None and ba != bb:
        if t in _ADD:
            return None
        op = "×" if t in _MUL else "−"
        raise UnsupportedLayerError(
            f"{where}: {op} of two different tensors ({a} and {b}) is not a polynomial of one "
            "tensor; only products/differences of a tensor with itself or with constants are "
            "supported (use a residual `+`, or hecnn.nn activations)"
        )
    base = ba if ba is not None else bb
    if t in _MUL:
        return base, P.polymul(ca, cb)
    if t in _ADD:
        return base, P.polyadd(ca, cb)
    return base, P.polysub(ca, cb)


class _Tracer(torch.fx.Tracer):
    """Keeps polynomial activations as single leaf nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaf = (PolyActivation, CompositeReLU, CompositeMaxPool2d)
        return isinstance(m, leaf) or super().is_leaf_module(m, qualname)


def _csr(bs: BlockSparseWeights) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for b in bs.blocks:
        r, c = np.meshgrid(b.out_idx, b.in_idx, indexing="ij")
        rows.append(r.ravel())
        cols.append(c.ravel())
        vals.append(b.weights.ravel())
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(bs.out_features, bs.in_features),
    )


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv(m: nn.Conv2d, in_shape) -> tuple[sp.csr_matrix, np.ndarray]:
    if _pair(m.dilation) != (1, 1):
        raise UnsupportedLayerError(f"Conv2d with dilation {m.dilation} is not supported")
    if m.padding_mode != "zeros" or (
        isinstance(m.padding, str) and m.padding not in ("valid", "same")
    ):
        raise UnsupportedLayerError(f"Conv2d padding {m.padding!r}/{m.padding_mode}")
    pad = m.padding
    if pad == "valid":
        pad = (0, 0)
    elif pad == "same":
        pad = (m.kernel_size[0] // 2, m.kernel_size[1] // 2)
    bs = BlockSparseWeights.conv2d(
        m.weight.detach().double().numpy(),
        tuple(in_shape),
        stride=_pair(m.stride),
        padding=_pair(pad),
        groups=m.groups,
    )
    out_positions = bs.out_features // m.out_channels
    bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_channels)
    return _csr(bs), np.repeat(bias, out_positions)


def _avgpool(in_shape, kernel, stride, padding) -> sp.csr_matrix:
    c = in_shape[0]
    kh, kw = _pair(kernel)
    w = np.zeros((c, 1, kh, kw))
    w[:] = 1.0 / (kh * kw)  # count_include_pad=True (torch's default)
    bs = BlockSparseWeights.conv2d(
        w, tuple(in_shape), stride=_pair(stride), padding=_pair(padding), groups=c
    )
    return _csr(bs)


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, in_shape) -> tuple[sp.csr_matrix, np.ndarray]:
    var = m.running_var.detach().double().numpy()
    mean = m.running_mean.detach().double().numpy()
    gamma = m.weight.detach().double().numpy() if m.affine else np.ones_like(var)
    beta = m.bias.detach().double().numpy() if m.affine else np.zeros_like(var)
    scale = gamma / np.sqrt(var + m.eps)
    shift = beta - mean * scale
    per = int(np.prod(in_shape[1:])) if len(in_shape) > 1 else 1
    return sp.diags(np.repeat(scale, per)).tocsr(), np.repeat(shift, per)


def _poly_coeffs(m: PolyActivation, shape) -> np.ndarray:
    c = m.coefficients().detach().double().numpy()
    deg = c.shape[0] - 1
    feats = int(np.prod(shape))
    if c.ndim == 1:
        return np.repeat(c[:, None], feats, axis=1)
    if m.granularity == "channel" or c.ndim == 2:
        per = feats // c.shape[1]
        return np.repeat(c, per, axis=1)
    return c.reshape(deg + 1, feats)


#: widening of a composite stage's input interval beyond 1 + δ: room for CKKS noise
STAGE_MARGIN = 1.01


def _sign_chain(name: str, x: str, shape, sign, scale: float, label: str) -> list[Node]:
    """Chebyshev-basis PolyNodes for 1 + P(x·scale), P = p_k∘…∘p_1.

    p_1 reads x on [−1/scale, 1/scale]; p_i (i ≥ 2) reads the previous stage's output, which
    stays within 1 + δ_(i−1) of ±1 (the previous stage's minimax error), so its interval is
    [−(1 + δ), 1 + δ] widened by a small margin for CKKS noise. Chebyshev coefficients stay
    O(1) where the power-basis ones of these components reach 10⁵ (see
    :mod:`hecnn.compile.chebyshev`).
    """
    feats = int(np.prod(shape))
    comps = sign.components
    nodes: list[Node] = []
    prev = x
    for i, comp in enumerate(comps):
        if i == 0:
            radius = 1.0 / scale
            cheb = to_chebyshev(np.asarray(comp, dtype=np.float64), 1.0)
        else:
            delta = sign.stage_errors[i - 1] if len(sign.stage_errors) >= i else 1.0
            radius = (1.0 + delta) * STAGE_MARGIN
            cheb = to_chebyshev(np.asarray(comp, dtype=np.float64), radius)
        if i == len(comps) - 1:
            cheb[0] += 1.0
        node = PolyNode(
            f"{name}.p{i + 1}",
            (prev,),
            shape,
            source=f"{label} p{i + 1} (degree {len(cheb) - 1})",
            coeffs=np.repeat(cheb[:, None], feats, axis=1),
            input_range=(-radius, radius),
            valid_range=(-radius, radius) if i == 0 else None,
            basis="chebyshev",
            radius=radius,
        )
        nodes.append(node)
        prev = node.name
    return nodes


def _composite_maxpool(name: str, x: str, in_shape, out_shape, m, label: str) -> list[Node]:
    """k×k max-pool as a tournament: per round, pairs (a, b) of window values give
    2·max = a + b + d·(1 + P(d/(2B_r))) − d with d = a − b, i.e. a + b + d·P(d/(2B_r)).

    Each round is an affine node for d, the sign chain on d, a product node d·(1 + P), and an
    affine node for a + b − d + … folded as: 2·max = (a + b − d) + d·(1 + P) = 2b + d·(1 + P).
    The halving of a round rides on the next round's affine nodes (and the last one on the
    consumer layer), so a round costs the chain's depth + 2 levels.
    """
    if m.padding != (0, 0):
        raise UnsupportedLayerError(f"{label}: padded max-pooling is not supported encrypted")
    c, h, w = in_shape
    (kh, kw), (sh, sw) = m.kernel_size, m.stride
    _, ho, wo = out_shape
    feats = c * ho * wo
    cc, yy, xx = np.meshgrid(np.arange(c), np.arange(ho), np.arange(wo), indexing="ij")
    base = (cc * h * w + yy * sh * w + xx * sw).reshape(-1)
    slots = [base + i * w + j for i in range(kh) for j in range(kw)]  # feature index per slot
    src, src_feats, factor = x, c * h * w, 1.0
    nodes: list[Node] = []
    for r, br in enumerate(m.round_bounds):
        pairs = [(slots[2 * t], slots[2 * t + 1]) for t in range(len(slots) // 2)]
        odd = slots[-1] if len(slots) % 2 else None
        npair = len(pairs)
        rows = np.arange(npair * feats)
        a_cols = np.concatenate([p[0] for p in pairs])
        b_cols = np.concatenate([p[1] for p in pairs])
        d = AffineNode(f"{name}.r{r}.d", (src,), (npair * feats,), source=f"{label} round {r} a−b")
        d.matrix = sp.csr_matrix(
            (
                np.concatenate([np.full(len(rows), factor), np.full(len(rows), -factor)]),
                (np.concatenate([rows, rows]), np.concatenate([a_cols, b_cols])),
            ),
            shape=(npair * feats, src_feats),
        )
        d.bias = np.zeros(npair * feats)
        chain = _sign_chain(
            f"{name}.r{r}", d.name, (npair * feats,), m.sign, 1.0 / (2.0 * br), label
        )
        prod = MulNode(
            f"{name}.r{r}.mul",
            (d.name, chain[-1].name),
            (npair * feats,),
            source=f"{label} d·(1+P)",
        )
        # 2·max(a, b) = 2b + d·(1 + P): the 2b rows (and an odd slot's value, doubled) come from
        # src; concatenated with the product they add into the next round's values
        keep = [p[1] for p in pairs] + ([odd] if odd is not None else [])
        nkeep = len(keep)
        twob = AffineNode(
            f"{name}.r{r}.b", (src,), (nkeep * feats,), source=f"{label} round {r} 2b"
        )
        krows = np.arange(nkeep * feats)
        twob.matrix = sp.csr_matrix(
            (np.full(len(krows), 2.0 * factor), (krows, np.concatenate(keep))),
            shape=(nkeep * feats, src_feats),
        )
        twob.bias = np.zeros(nkeep * feats)
        # 2b before the chain: the round's input is then freed before the chain's temporaries
        nodes += [d, twob, *chain, prod]
        if odd is None:
            out = AddNode(f"{name}.r{r}", (twob.name, prod.name), (npair * feats,), source=label)
            nodes.append(out)
        else:
            pad = AffineNode(
                f"{name}.r{r}.pad", (prod.name,), (nkeep * feats,), source=f"{label} pad"
            )
            pad.matrix = sp.eye(nkeep * feats, npair * feats, format="csr")
            pad.bias = np.zeros(nkeep * feats)
            out = AddNode(f"{name}.r{r}", (twob.name, pad.name), (nkeep * feats,), source=label)
            nodes += [pad, out]
        src, src_feats, factor = out.name, out.features, 0.5
        slots = [np.arange(t * feats, (t + 1) * feats) for t in range(out.features // feats)]
    half = AffineNode(name, (src,), out_shape, source=f"{label} ×½")
    half.matrix = sp.identity(feats, format="csr") * 0.5
    half.bias = np.zeros(feats)
    return [*nodes, half]


def _composite_relu(name: str, x: str, shape, m: CompositeReLU, label: str) -> list[Node]:
    """2·ReLU(x) ≈ x·(1 + P(x/B)), P = p_k∘…∘p_1 — then ×½ (an affine node the next linear
    layer absorbs).

    p_1 takes x/B through its coefficients (c_i/B^i), so no level is spent on the division; the
    constant 1 rides on p_k; the product with x is one :class:`MulNode`.
    """
    feats = int(np.prod(shape))
    nodes = _sign_chain(name, x, shape, m.sign, 1.0 / m.bound, label)
    prev = nodes[-1].name
    nodes.append(MulNode(f"{name}.mul", (x, prev), shape, source=f"{label} x·(1+P)"))
    half = AffineNode(name, (f"{name}.mul",), shape, source=f"{label} ×½")
    half.matrix = sp.identity(feats, format="csr") * 0.5
    half.bias = np.zeros(feats)
    return [*nodes, half]


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[Node], str]:
    """Raw nodes (topological order) and the output node's name."""
    model = model.eval()
    try:
        gm = torch.fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # fx raises many kinds of errors for untraceable code
        raise UnsupportedLayerError(f"torch.fx could not trace the model: {exc}") from exc
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros((1, *input_shape), dtype=torch.float32))
    modules = dict(gm.named_modules())
    nodes: list[Node] = []
    alias: dict[str, str] = {}
    output = ""

    def shape_of(n: torch.fx.Node) -> tuple[int, ...]:
        return tuple(n.meta["tensor_meta"].shape[1:])

    poly: dict[str, Expr] = {}  # fx node → pending polynomial of a base tensor
    made: set[str] = set()

    def src(n: torch.fx.Node) -> str:
        if n.name in poly and n.name not in made:
            _materialize(n)
        return alias.get(n.name, n.name)

    def expr_of(a) -> Expr:
        if isinstance(a, torch.fx.Node):
            if a.name in poly:
                return poly[a.name]
            return src(a), np.array([0.0, 1.0])
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return None, np.array([float(a)])
        raise UnsupportedLayerError(f"argument {a!r} of an arithmetic operation is not a number")

    def _materialize(n: torch.fx.Node) -> None:
        made.add(n.name)
        base, c = poly[n.name]
        op = getattr(n.target, "__name__", str(n.target))
        c = np.trim_zeros(np.asarray(c, dtype=np.float64), "b")
        shape = shape_of(n)
        feats = int(np.prod(shape))
        if base is None or len(c) == 0:
            raise UnsupportedLayerError(f"node {n.name!r}: a constant tensor is not supported")
        if len(c) - 1 > MAX_POLY_DEGREE:
            raise UnsupportedLayerError(
                f"node {n.name!r}: polynomial of degree {len(c) - 1} > {MAX_POLY_DEGREE}"
            )
        if len(c) <= 2:  # a·x + b: affine, merged into its neighbours by the passes
            node = AffineNode(n.name, (base,), shape, source=f"{op}: a·x+b")
            node.matrix = sp.identity(feats, format="csr") * (c[1] if len(c) > 1 else 0.0)
            node.bias = np.full(feats, c[0])
        else:
            node = PolyNode(
                n.name,
                (base,),
                shape,
                source=f"{op}: polynomial of {base}",
                coeffs=np.repeat(c[:, None], feats, axis=1),
            )
        nodes.append(node)

    for n in gm.graph.nodes:
        where = f"node {n.name!r} ({n.op} {n.target})"
        if n.op == "placeholder":
            nodes.append(InputNode(n.name, (), tuple(input_shape), source="input"))
            continue
        if n.op == "output":
            output = src(n.args[0])
            continue
        if n.op == "get_attr":
            raise UnsupportedLayerError(
                f"{where}: tensors used directly in forward are not supported"
            )
        ins = [a for a in n.args if isinstance(a, torch.fx.Node)]
        in_shape = shape_of(ins[0]) if ins else ()
        out_shape = shape_of(n)
        if n.op == "call_module":
            m = modules[n.target]
            name = f"{type(m).__name__} {n.target}"
            if isinstance(m, _ALIAS_MODULES):
                alias[n.name] = src(ins[0])
                continue
            if isinstance(m, CompositeReLU):
                nodes += _composite_relu(n.name, src(ins[0]), out_shape, m, name)
                continue
            if isinstance(m, CompositeMaxPool2d):
                nodes += _composite_maxpool(n.name, src(ins[0]), in_shape, out_shape, m, name)
                continue
            if isinstance(m, PolyActivation):
                rng = None
                if torch.isfinite(m.range_min) and torch.isfinite(m.range_max):
                    rng = (float(m.range_min), float(m.range_max))
                nodes.append(
                    PolyNode(
                        n.name,
                        (src(ins[0]),),
                        out_shape,
                        source=name,
                        coeffs=_poly_coeffs(m, out_shape),
                        input_range=rng,
                        valid_range=getattr(m, "valid_range", None),
                    )
                )
                continue
            if isinstance(m, nn.Conv2d):
                mat, bias = _conv(m, in_shape)
            elif isinstance(m, nn.Linear):
                mat = sp.csr_matrix(m.weight.detach().double().numpy())
                bias = (
                    m.bias.detach().double().numpy()
                    if m.bias is not None
                    else np.zeros(m.out_features)
                )
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                mat, bias = _batchnorm(m, in_shape)
            elif isinstance(m, nn.AvgPool2d):
                if m.ceil_mode or not m.count_include_pad:
                    raise UnsupportedLayerError(
                        f"{where}: AvgPool2d needs ceil_mode=False, count_include_pad=True"
                    )
                mat, bias = (
                    _avgpool(in_shape, m.kernel_size, m.stride or m.kernel_size, m.padding),
                    None,
                )
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                if _pair(m.output_size) != (1, 1):
                    raise UnsupportedLayerError(
                        f"{where}: only global AdaptiveAvgPool2d(1) is supported"
                    )
                mat, bias = _avgpool(in_shape, in_shape[1:], in_shape[1:], 0), None
            else:
                raise UnsupportedLayerError(
                    f"{where}: {type(m).__name__} cannot be evaluated homomorphically "
                    "(supported: Conv2d, Linear, BatchNorm, AvgPool2d, AdaptiveAvgPool2d(1), "
                    "Flatten, Dropout, Identity, cat, residual add, hecnn.nn polynomial activations)"
                )
            nodes.append(AffineNode(n.name, (src(ins[0]),), out_shape, source=name))
            nodes[-1].matrix = mat  # type: ignore[attr-defined]
            nodes[-1].bias = np.zeros(mat.shape[0]) if bias is None else bias
            continue
        if _is_poly_op(n):
            e = _poly_expr(n, expr_of, where)
            if e is not None:
                if e[0] is None:
                    raise UnsupportedLayerError(f"{where}: a constant tensor is not supported")
                poly[n.name] = e
                continue
        if _is_poly_op(n) and n.target in _ADD:
            if len(ins) != 2:
                raise UnsupportedLayerError(
                    f"{where}: only tensor + tensor additions are supported"
                )
            nodes.append(AddNode(n.name, (src(ins[0]), src(ins[1])), out_shape, source="add"))
            continue
        if n.op == "call_function" and n.target is torch.cat:
            tensors = n.args[0]
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            if dim not in (1, -3) and not (dim == -1 and len(out_shape) == 1):
                raise UnsupportedLayerError(
                    f"{where}: only channel concatenation (dim=1) is supported"
                )
            nodes.append(
                ConcatNode(n.name, tuple(src(t) for t in tensors), out_shape, source="cat")
            )
            continue
        if (n.op == "call_function" and n.target is torch.flatten) or (
            n.op == "call_method" and n.target in ("flatten", "view", "reshape")
        ):
            if int(np.prod(out_shape)) != int(np.prod(in_shape)):
                raise UnsupportedLayerError(f"{where}: reshape must keep the per-image size")
            alias[n.name] = src(ins[0])
            continue
        if n.op == "call_method" and n.target == "size":
            continue
        raise UnsupportedLayerError(
            f"{where}: operation {n.target} is not supported under encryption; use a polynomial "
            "activation from hecnn.nn, plain arithmetic (x * x, x ** 2, a * x + b), or "
            "hecnn.approximate / `hecnn check` for ReLU, max-pool, SiLU, GELU and Sigmoid"
        )
    return nodes, output
