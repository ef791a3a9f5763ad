"""Per-image packing at run time: client encode/decode and the server's evaluation.

The client replicates its (possibly im2col-arranged) image with the plan's input period,
encrypts it into a few ciphertexts and generates Galois keys for exactly
``plan.rotation_steps()``. The server evaluates each affine node by baby-step giant-step
diagonals (:class:`hecnn.compile.image.DiagonalMatrix`), polynomials with per-slot coefficient
planes, adds, products and concatenations as for batch packing. The diagonals are encoded as
plaintexts once per (node, level, scale) and kept by :class:`ImageEvaluator`: they depend on the
model only, so a server encodes them before the first image arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import decrypt, encode, encrypt
from hecnn.ckks.keys import EvaluationKeys, KeyGenerator, PublicKey, SecretKey
from hecnn.compile.image import DiagonalMatrix, ImagePacking
from hecnn.compile.ir import AddNode, AffineNode, ConcatNode, InputNode, MulNode, Plan, PolyNode
from hecnn.errors import LevelError, ParameterError, ShapeError
from hecnn.runtime.executor import NodeTiming, RunReport, _add, _mul, _poly


def _packing(plan: Plan) -> ImagePacking:
    if plan.packing != "image" or plan.image is None:
        raise ParameterError(f"plan uses {plan.packing!r} packing, not per-image packing")
    return plan.image


def pack_image(plan: Plan, image: np.ndarray) -> np.ndarray:
    """One (*input_shape) image → (input cts, slots) slot values: the plan's arrangement of
    its pixels, repeated with the input period."""
    img = _packing(plan)
    x = np.asarray(image, dtype=np.float64)
    if x.shape != tuple(plan.input_shape):
        raise ShapeError(f"image has shape {x.shape}, the plan expects {plan.input_shape}")
    flat = np.append(x.ravel(), 0.0)  # index −1 reads the appended zero
    vals = flat[img.input_gather]
    return np.tile(vals, (1, img.slots // img.input_period))


def encrypt_image(
    plan: Plan, ctx: CkksContext, key: PublicKey | SecretKey, image: np.ndarray
) -> CiphertextBatch:
    """Encrypt one image for per-image evaluation (``plan.image.input_cts`` ciphertexts)."""
    return encrypt(ctx, pack_image(plan, image), key)


def rotation_levels(plan: Plan) -> dict[int, int]:
    """Each rotation step → the highest level the plan rotates by it (an affine node rotates
    at its input level and below)."""
    levels: dict[int, int] = {}
    for name, dm in _packing(plan).matrices.items():
        lvl = plan.node(name).level_in
        for step in dm.rotation_steps:
            levels[step] = max(levels.get(step, -1), lvl)
    return levels


def image_keys(plan: Plan, kg: KeyGenerator, sk: SecretKey) -> EvaluationKeys:
    """Relinearization key and the Galois keys of exactly the plan's rotation steps, each
    holding only the limbs of the highest level it is used at (``hemet_squeezenet``: most of
    its 295 keys serve deep layers)."""
    return kg.evaluation_keys(
        sk, rotations=plan.rotation_steps(), rotation_levels=rotation_levels(plan)
    )


def decrypt_image(plan: Plan, ctx: CkksContext, sk: SecretKey, out: CiphertextBatch) -> np.ndarray:
    """Encrypted outputs → the output features (e.g. logits) of the image."""
    lay = _packing(plan).layouts[plan.output]
    vals = decrypt(ctx, out, sk)  # (cts, slots)
    return vals[lay.pos // lay.period, lay.pos % lay.period]


def plaintext_bytes(plan: Plan) -> int:
    """Bytes of the encoded weight diagonals an :class:`ImageEvaluator` keeps (NTT residues,
    4 bytes per limb and coefficient, at each affine node's input level)."""
    img = _packing(plan)
    return sum(
        len(dm.diags) * (plan.node(name).level_in + 1) * plan.params.n * 4
        for name, dm in img.matrices.items()
    )


@dataclass
class ImageEvaluator:
    """Evaluates a per-image plan; keeps the encoded diagonals between images.

    ``cache_bytes``: how many bytes of encoded diagonals it may keep (None: all of them). A
    node whose diagonals do not fit any more is encoded *per image*, one giant-step group at a
    time inside the worker that uses it, and dropped after — bounded memory (one group's
    plaintexts per worker) for plans whose diagonals outgrow RAM (``hemet_squeezenet``: 57 GiB),
    at the price of encoding them for every image."""

    plan: Plan
    ctx: CkksContext
    cache_bytes: int | None = None
    _plain: dict[tuple, np.ndarray] = field(default_factory=dict)
    _cached: int = 0
    #: rotation steps actually applied (for tests: the key set must be exactly these)
    used_steps: set[int] = field(default_factory=set)
    #: nodes whose diagonals are encoded per image (they did not fit ``cache_bytes``)
    streamed: set[str] = field(default_factory=set)

    def run(
        self, inputs: CiphertextBatch, keys: EvaluationKeys, *, report: RunReport | None = None
    ) -> CiphertextBatch:
        plan, img = self.plan, _packing(self.plan)
        if inputs.params.fingerprint != plan.params.fingerprint:
            raise ParameterError("the ciphertexts were not made with the plan's parameters")
        if keys.params.fingerprint != plan.params.fingerprint:
            raise ParameterError("the evaluation keys do not belong to the plan's parameters")
        if type(inputs) is not CiphertextBatch:
            raise ParameterError("per-image packing runs on the numpy backend only (for now)")
        if len(inputs) != img.input_cts:
            raise ShapeError(
                f"the plan expects {img.input_cts} input ciphertext(s) per image, got {len(inputs)}"
            )
        vals: dict[str, CiphertextBatch] = {}
        for n in plan.nodes:
            t0 = time.perf_counter()
            if isinstance(n, InputNode):
                out = inputs
            elif isinstance(n, AffineNode):
                out = self._affine(n, img.matrices[n.name], vals[n.inputs[0]], keys)
            elif isinstance(n, PolyNode):
                lay = img.layouts[n.name]
                out = _poly(n, vals[n.inputs[0]], keys, lay.plane(n.coeffs, img.slots))
            elif isinstance(n, AddNode):
                out = _add(vals[n.inputs[0]], vals[n.inputs[1]])
            elif isinstance(n, MulNode):
                out = _mul(n, vals[n.inputs[0]], vals[n.inputs[1]], keys)
            elif isinstance(n, ConcatNode):
                out = CiphertextBatch.stack([vals[x] for x in n.inputs])
            else:  # pragma: no cover
                raise ParameterError(f"unknown node type {type(n).__name__}")
            if n.relin_after and out.components > 2:
                out = out.relinearize(keys)
            vals[n.name] = out
            if report is not None:
                report.timings.append(NodeTiming(n.name, time.perf_counter() - t0, len(out)))
        return vals[plan.output]

    def _diagonals(self, dm: DiagonalMatrix, name: str, level: int, scale: float) -> dict:
        """{(a, b, g, j): NTT plaintext of rot(diag, −g·baby)} at ``scale``, cached — or, for a
        node that does not fit the cache budget, {(a, b, g, j): None} (encoded at use)."""
        key = (name, level, scale)
        if key not in self._plain:
            nbytes = len(dm.diags) * (level + 1) * self.ctx.n * 4
            if self.cache_bytes is not None and self._cached + nbytes > self.cache_bytes:
                self.streamed.add(name)
                return {(a, b, c - c % dm.baby, c % dm.baby): None for a, b, c in dm.diags}
            items = sorted(dm.diags)
            pts = self._encode(dm, items, level, scale) if items else None
            self._plain[key] = {
                (a, b, c - c % dm.baby, c % dm.baby): pts[k] for k, (a, b, c) in enumerate(items)
            }
            self._cached += nbytes
        return self._plain[key]

    def _encode(
        self, dm: DiagonalMatrix, items: list[tuple[int, int, int]], level: int, scale: float
    ) -> np.ndarray:
        """NTT plaintexts of rot(diag_(a,b,c), −g·baby) for ``items`` (a, b, c), repeated over
        the slots."""
        slots = self.plan.params.slots
        vecs = np.empty((len(items), slots))
        for k, (a, b, c) in enumerate(items):
            g = c - c % dm.baby
            vecs[k] = np.tile(np.roll(dm.diags[(a, b, c)], g), slots // dm.L)
        return encode(self.ctx, vecs, scale, level)

    def _rotate(self, x: CiphertextBatch, step: int, keys: EvaluationKeys) -> CiphertextBatch:
        self.used_steps.add(step)
        return x.rotate(step, keys)

    def _affine(
        self, n: AffineNode, dm: DiagonalMatrix, x: CiphertextBatch, keys: EvaluationKeys
    ) -> CiphertextBatch:
        """y = W x + b by BSGS diagonals, one rescale; then rotate-and-sum of the copies."""
        if x.components > 2:
            x = x.relinearize(keys)
        if x.level > n.level_in:  # the plan's level: the Galois keys serve up to it
            x = x.drop_to(n.level_in)
        if x.level < 1 or x.level <= x.params.min_level:
            raise LevelError(f"{n.name}: no level left for an affine layer")
        ctx = x.ctx
        sw = x.params.scale * n.scale_factor * float(ctx.primes[x.level]) / x.scale
        pts = self._diagonals(dm, n.name, x.level, sw)
        self.used_steps.update(dm.baby_steps)
        if hasattr(x, "rotate_hoisted"):
            rots = x.rotate_hoisted([0, *dm.baby_steps], keys)
        else:  # another array backend: one key switch per step
            rots = {j: x.rotate(j, keys) for j in [0, *dm.baby_steps]}
        idx = x.idx
        shape = x.data.shape[1:]
        groups: dict[tuple[int, int], list] = {}
        for (a, b, g, j), pt in pts.items():
            groups.setdefault((a, g), []).append((b, j, pt))
        order = sorted(groups)
        parts: dict[tuple[int, int], CiphertextBatch] = {}

        def giant(lo: int, hi: int) -> None:
            """rot(Σ_{b,j} pt ⊙ rot(x_b, j), g) for some (a, g) groups: whole groups per pool
            thread (kernels inline), coarse enough that thread hand-offs cost nothing."""
            for a, g in order[lo:hi]:
                acc = np.zeros(shape, dtype=np.int32)
                group = groups[(a, g)]
                if group[0][2] is None:  # not cached: encode this group's diagonals now
                    enc = self._encode(dm, [(a, b, g + j) for b, j, _ in group], x.level, sw)
                    group = [(b, j, enc[k]) for k, (b, j, _) in enumerate(group)]
                for b, j, pt in group:  # acc += pt ⊙ rot(x_b, j), both components
                    ctx.mul_broadcast(rots[j].data[b], pt, idx, acc=acc)
                part = CiphertextBatch(ctx, acc[None], x.scale * sw)
                parts[(a, g)] = self._rotate(part, g % x.params.slots, keys) if g else part

        ctx.for_each_chunk(len(order), 1, giant)
        outs = []
        for a in range(dm.out_cts):
            total = None
            for key in order:
                if key[0] == a:
                    total = parts[key] if total is None else total + parts[key]
            if total is None:  # an output ciphertext with no weights: zeros
                total = x[0].mul_scalar(0.0, scale=sw)
            outs.append(total)
        y = (outs[0] if len(outs) == 1 else CiphertextBatch.stack(outs)).rescale()
        for s in dm.sum_steps:
            y = y + self._rotate(y, s, keys)
        return y.add_plain(dm.out.plane(dm.bias, x.params.slots))


def run_image(
    plan: Plan,
    inputs: CiphertextBatch,
    keys: EvaluationKeys,
    *,
    evaluator: ImageEvaluator | None = None,
    report: RunReport | None = None,
) -> CiphertextBatch:
    """Evaluate a per-image plan on one encrypted image (see :func:`encrypt_image`)."""
    ev = evaluator if evaluator is not None else ImageEvaluator(plan, inputs.ctx)
    return ev.run(inputs, keys, report=report)
