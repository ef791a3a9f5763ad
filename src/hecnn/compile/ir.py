"""The HE plan: a small dataflow graph over *features* (one ciphertext per feature).

With "slot = image" packing every node transforms a vector of ciphertexts — feature f of all B
images lives in ciphertext f — so a whole network is four kinds of node:

- :class:`AffineNode` — y = W x + b with W a sparse (out × in) matrix stored as dense blocks
  (a convolution, a linear layer, average pooling, batch-norm and flatten all fold into it);
- :class:`PolyNode` — y_f = p_f(x_f), one polynomial per feature (layer-, channel- or
  element-wise coefficients all become per-feature rows);
- :class:`AddNode` and :class:`ConcatNode` for residual adds and Fire modules;
- :class:`MulNode` — y_f = a_f·b_f, the product of two feature vectors (composite ReLU, max).

A :class:`Plan` is a plain value: nodes in topological order, CKKS parameters, levels. It holds
no keys and no ciphertexts.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.linear import BlockSparseWeights
from hecnn.ckks.params import CkksParameters


@dataclass
class Node:
    name: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]  # output feature shape (without the batch axis)
    level_in: int = -1
    level_out: int = -1
    relin_after: bool = False  # relinearize this node's output (else lazily downstream)
    #: False in the rescale-free tail: products keep their grown scale (no level is consumed;
    #: the base modulus holds it), so ciphertexts with 4–5 components are never rescaled —
    #: rescaling rounds c_i, and that rounding error is multiplied by s^i at decryption
    rescale: bool = True
    components: int = 2  # ciphertext components of this node's output (set by the compiler)
    #: the output lands at scale Δ·scale_factor (affine and Chebyshev nodes): a producer whose
    #: consumer evaluates T_k(x/r) lands at Δ/r, so reading it at Δ gives x/r for free
    scale_factor: float = 1.0
    source: str = ""  # the torch module/function it came from, for messages and summaries

    @property
    def features(self) -> int:
        return int(np.prod(self.shape))

    @property
    def depth(self) -> int:
        return 0


@dataclass
class InputNode(Node):
    pass


@dataclass
class AffineNode(Node):
    weights: BlockSparseWeights | None = None
    bias: np.ndarray | None = None
    matrix: object = None  # scipy sparse (out × in) while compiling; blocked into ``weights``
    #: rescales its input still owes (a polynomial before it deferred its last one, see
    #: :func:`~hecnn.compile.levels.defer_rescales`): done after this node's own
    owed_rescales: int = 0
    #: a first layer that leaves its rescale to the affine layer after its polynomial: its
    #: products keep scale Δ·Δ_w (:func:`~hecnn.compile.levels.defer_rescales`)
    defer_rescale: bool = False

    @property
    def depth(self) -> int:
        return 1 + self.owed_rescales - int(self.defer_rescale) if self.rescale else 0

    @property
    def rescales_before_relin(self) -> int:
        """Primes divided out before the planned relinearization: two of three when the node
        finishes with three rescales (it owes two), so the key switch runs two limbs lower
        while its noise still meets a scale one prime above the message's (see
        :func:`hecnn.runtime.streaming.relinearize_then_rescale`); none otherwise."""
        owes_three = self.rescale and not self.defer_rescale and self.owed_rescales >= 2
        return 2 if owes_three and self.relin_after else 0

    @property
    def macs(self) -> int:
        if self.weights is None:  # still a sparse matrix (before ``block_weights``)
            return int(self.matrix.nnz) if self.matrix is not None else 0
        return self.weights.nnz


@dataclass
class PolyNode(Node):
    """y_f = p_f(x_f). ``basis="power"``: ``coeffs`` are ascending powers (trained activations);
    ``basis="chebyshev"``: y_f = Σ_k coeffs[k, f]·T_k(x_f / radius), the numerically stable,
    depth-optimal form used for high-degree composite sign components."""

    coeffs: np.ndarray | None = None  # (degree + 1, features)
    fold_leading: bool = False  # output is p/c_d; c_d is folded into the consumer
    input_range: tuple[float, float] | None = None
    valid_range: tuple[float, float] | None = None
    basis: str = "power"
    radius: float = 1.0  # Chebyshev basis: the input interval is [−radius, radius]
    #: the final rescale is left to the affine consumers (fewer outputs: fewer rescales); the
    #: output stays one level higher at the product's scale (see
    #: :func:`~hecnn.compile.levels.defer_rescales`)
    defer_rescale: bool = False

    @property
    def degree(self) -> int:
        return self.coeffs.shape[0] - 1

    @property
    def chebyshev(self) -> bool:
        return self.basis == "chebyshev"

    @property
    def depth(self) -> int:
        if self.chebyshev:
            from hecnn.compile.chebyshev import chebyshev_schedule

            return chebyshev_schedule(self.coeffs).depth
        from hecnn.compile.polyeval import schedule

        if not self.rescale:
            return 0
        return schedule(self.coeffs, self.fold_leading).depth - int(self.defer_rescale)

    @property
    def products(self) -> int:
        """Relinearized ciphertext products per feature."""
        if self.chebyshev:
            from hecnn.compile.chebyshev import chebyshev_schedule

            return chebyshev_schedule(self.coeffs).products
        from hecnn.compile.polyeval import schedule

        return schedule(self.coeffs, self.fold_leading).relinearized_powers if self.rescale else 0


@dataclass
class AddNode(Node):
    pass


@dataclass
class MulNode(Node):
    """y_f = a_f · b_f: the elementwise product of two feature vectors (one ciphertext product
    per feature), e.g. x · (1 + P(x/B)) in a composite ReLU."""

    @property
    def depth(self) -> int:
        return 1 if self.rescale else 0


@dataclass
class ConcatNode(Node):
    pass


@dataclass
class Plan:
    """A compiled network: nodes (topological order), output node, CKKS parameters."""

    nodes: list[Node]
    output: str
    params: CkksParameters
    input_shape: tuple[int, ...]
    batch: int
    model_name: str = ""
    warnings: list[str] = field(default_factory=list)
    #: choices the compiler made by estimated cost, for the summary (e.g. a pooling kept apart
    #: from the next layer because merging them would multiply its MACs)
    decisions: list[str] = field(default_factory=list)
    #: "batch": one ciphertext per feature, one image per slot; "image": one image's features
    #: in the slots of a few ciphertexts (:mod:`hecnn.compile.image`, layouts in ``image``)
    packing: str = "batch"
    image: object = None  # hecnn.compile.image.ImagePacking for packing="image"
    #: label agreement (per cent) the compiler predicted from simulated CKKS noise on the
    #: calibration images (:func:`hecnn.compile.noise.predicted_agreement`); None unchecked
    predicted_agreement: float | None = None

    def rotation_steps(self) -> list[int]:
        """The slot rotations the evaluation uses: the Galois keys a client must generate
        (none for batch packing)."""
        return list(self.image.rotation_steps) if self.image is not None else []

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def levels(self) -> int:
        """Multiplicative depth the plan consumes."""
        return self.params.max_level - self.node(self.output).level_out

    @property
    def num_classes(self) -> int:
        return self.node(self.output).features

    def relinearizations(self) -> dict[str, int]:
        """Ciphertexts relinearized per node (key switches; the dominant cost)."""
        out: dict[str, int] = {}
        for n in self.nodes:
            if self.image is not None:  # per-image: one key switch per ciphertext of the node
                cts = self.image.layouts[n.name].cts
                out[n.name] = cts * (bool(n.relin_after) + _poly_relins(n)) + (
                    cts * sum(self.node(i).components > 2 for i in n.inputs)
                    if isinstance(n, MulNode)
                    else 0
                )
                continue
            count = 0
            if isinstance(n, PolyNode):
                count = n.products * n.features
            if n.relin_after:
                count += n.features
            if isinstance(n, MulNode):  # 3-component factors are relinearized first
                count += sum(self.node(i).features for i in n.inputs if self.node(i).components > 2)
            out[n.name] = count
        return out

    def memory_estimate(self, memory_budget: int | None = None, *, streaming: bool = True) -> int:
        """Estimated peak bytes of ciphertext data while the executor runs this plan.

        With ``streaming`` the wide chains run chunk by chunk with the largest chunks that fit
        ``memory_budget`` (default: ``HECNN_MEMORY_GIB`` or a fraction of RAM), and a streamed
        layer counts the accumulators of the row blocks in progress and one chunk's working
        set, not the whole layer (see :mod:`hecnn.compile.streaming`).
        """
        from hecnn.compile.streaming import memory_profile, plan_streaming

        if not streaming:
            return memory_profile(self)[0]
        return plan_streaming(self, memory_budget).peak

    def summary(self) -> str:
        """Per node: kind, ciphertexts, MACs, relinearizations, levels; totals and parameters."""
        from rich.console import Console
        from rich.table import Table

        relins = self.relinearizations()
        table = Table(title=f"HE plan {self.model_name} — batch {self.batch}")
        for col in ("node", "op", "cts out", "ct MACs", "relins", "comps", "level in→out"):
            table.add_column(col, justify="left" if col in ("node", "op") else "right")
        for nd in self.nodes:
            if isinstance(nd, AffineNode) and self.image is not None:
                dm = self.image.matrices[nd.name]
                op, macs = f"affine ({nd.source})", f"{len(dm.diags):,} diag"
            elif isinstance(nd, AffineNode):
                op, macs = f"affine ({nd.source})", f"{nd.macs:,}"
            elif isinstance(nd, PolyNode):
                fold = ", lead folded" if nd.fold_leading else ""
                kind = "chebyshev" if nd.chebyshev else "poly"
                op, macs = f"{kind} deg {nd.degree}{fold} ({nd.source})", "—"
            else:
                op, macs = type(nd).__name__.removesuffix("Node").lower(), "—"
            table.add_row(
                nd.name,
                op,
                f"{nd.features:,}" if self.image is None else f"{self.image.layouts[nd.name].cts}",
                macs,
                f"{relins[nd.name]:,}",
                f"{nd.components}",
                f"{nd.level_in}→{nd.level_out}" + _rescale_note(nd),
            )
        total_macs = sum(n.macs for n in self.nodes if isinstance(n, AffineNode))
        what = "ciphertext MACs"
        if self.image is not None:
            total_macs = sum(len(dm.diags) for dm in self.image.matrices.values())
            what = "diagonal products"
        console = Console(width=120, record=True, file=io.StringIO())
        console.print(table)
        p = self.params
        lines = [
            console.export_text(),
            f"totals: {total_macs:,} {what}, {sum(relins.values()):,} relinearizations, "
            f"depth {self.levels}",
            f"CKKS: {p.describe()}",
            self._memory_line() if self.image is None else self._image_lines(),
        ]
        if self.predicted_agreement is not None:
            lines.append(
                f"precision: {self.predicted_agreement:.2f} % label agreement predicted from "
                "simulated CKKS noise on the calibration images"
            )
        lines += [f"decision: {d}" for d in self.decisions]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _image_lines(self) -> str:
        img = self.image
        parts = [
            f"per-image packing: input {img.input_cts} ciphertext(s) of period "
            f"{img.input_period}; {len(self.rotation_steps())} Galois keys"
        ]
        for name, dm in img.matrices.items():
            parts.append(
                f"  {name}: {len(dm.diags)} diagonals, baby step {dm.baby}, "
                f"{dm.rotations} rotations, {dm.in_cts}→{dm.out_cts} cts"
            )
        return "\n".join(parts)

    def _memory_line(self) -> str:
        from hecnn.compile.streaming import memory_profile, plan_streaming

        sched = plan_streaming(self)
        whole = memory_profile(self)[0] / 2**30
        chunks = ", ".join(f"{s.nodes[0]}…{s.nodes[-1]} by {s.chunk}" for s in sched.segments)
        fits = "" if sched.fits else f" (over the {sched.budget / 2**30:.1f} GiB budget)"
        return (
            f"memory estimate: {sched.peak / 2**30:.2f} GiB of ciphertexts at peak streamed "
            f"({chunks or 'nothing to stream'}){fits}, {whole:.2f} GiB unstreamed"
        )

    def __repr__(self) -> str:
        return (
            f"Plan({self.model_name!r}, {len(self.nodes)} nodes, depth {self.levels}, "
            f"N={self.params.n}, batch {self.batch})"
        )


def _rescale_note(n: Node) -> str:
    if not n.rescale:
        return " (no rescale)"
    if isinstance(n, PolyNode | AffineNode) and n.defer_rescale:
        return " (rescale deferred)"
    if isinstance(n, AffineNode) and n.owed_rescales:
        return f" ({1 + n.owed_rescales} rescales)"
    return ""


def _poly_relins(n: Node) -> int:
    if not isinstance(n, PolyNode) or not n.rescale:
        return 0
    from hecnn.compile.polyeval import schedule

    return schedule(n.coeffs, n.fold_leading).relinearized_powers


def log2_ceil(x: float) -> int:
    return max(0, math.ceil(math.log2(max(x, 1e-300))))
