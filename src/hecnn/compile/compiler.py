"""``hecnn.compile``: a trained ``nn.Module`` → an HE :class:`Plan` for batch packing."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from hecnn.ckks.params import CkksParameters
from hecnn.compile.cost import plan_work
from hecnn.compile.image import pack_image
from hecnn.compile.ir import Node, Plan, PolyNode
from hecnn.compile.levels import (
    MAX_SCALE_BITS,
    assign_levels,
    assign_scale_factors,
    choose_parameters,
    defer_rescales,
    input_node,
    plan_relinearization,
    relative_depths,
    relinearize_every_product,
    tail_scale_bits,
)
from hecnn.compile.passes import (
    block_weights,
    fold_elementwise_affine,
    fold_leading_coefficients,
    merge_affine,
)
from hecnn.compile.trace import trace
from hecnn.errors import HecnnError, ParameterError, ShapeError

#: headroom on the largest calibrated output when sizing the base modulus
OUTPUT_MARGIN = 4.0
DEFAULT_OUTPUT_BOUND = 64.0


#: the label agreement (per cent) the compiler asks of the plan's CKKS precision on the
#: calibration images by default (the issue's goal for every bundled model)
MIN_PREDICTED_AGREEMENT = 99.9


def compile_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch: int = 8192,
    calib: torch.Tensor | np.ndarray | None = None,
    scale_bits: int | None = None,
    fold_leading: bool = True,
    merge_by_cost: bool = True,
    relin_free_tail: bool = True,
    lazy_rescale: bool = True,
    insecure_ring_for_tests: int | None = None,
    packing: str = "batch",
    min_agreement: float | None = MIN_PREDICTED_AGREEMENT,
) -> Plan:
    """Trace, fold and level ``model`` for encrypted inference on ``batch`` images at once.

    ``packing``: "batch" (one ciphertext per feature, an image per slot: throughput),
    "image" (one image in the slots of a few ciphertexts, rotations: latency; see
    :mod:`hecnn.compile.image`) or "auto" (image packing for batches up to
    :data:`AUTO_IMAGE_MAX_BATCH`). Both evaluate the same folded network.

    ``merge_by_cost``: keep a pooling apart from the layer after it where merging them would
    cost more than the level it saves (see :func:`_cheapest_merges`; the choice is listed in
    ``plan.decisions``); False merges every affine chain (the fewest levels).
    ``relin_free_tail`` lets the last two multiplying layers run without relinearization (a
    rescale-free tail, see :func:`hecnn.compile.levels.rescale_free_tail`). ``lazy_rescale``
    lets a polynomial leave its last rescale to affine consumers with fewer outputs (see
    :func:`hecnn.compile.levels.defer_rescales`; batch packing; listed in ``plan.decisions``).
    ``calib`` (a few
    real inputs) sizes the base modulus from the largest output and checks the
    polynomial activations' recorded input ranges, and with ``min_agreement`` (per cent;
    batch packing, scale not forced) the CKKS precision: where the simulated noise predicts
    fewer labels kept on ``calib`` (:func:`hecnn.compile.noise.predicted_agreement`), the
    scale is raised — at the price of a larger ring where the chain then needs one — and the
    reason listed in ``plan.decisions``. ``insecure_ring_for_tests`` forces a small ring
    degree below 128-bit security — unit tests only.
    """
    options = {
        "batch": batch,
        "calib": calib,
        "fold_leading": fold_leading,
        "merge_by_cost": merge_by_cost,
        "relin_free_tail": relin_free_tail,
        "lazy_rescale": lazy_rescale,
        "insecure_ring_for_tests": insecure_ring_for_tests,
        "packing": packing,
    }
    plan = _compile(model, input_shape, scale_bits=scale_bits, min_scale_bits=26, **options)
    if calib is None or min_agreement is None or scale_bits is not None or plan.packing != "batch":
        return plan

    def recompile(floor: int) -> Plan:
        return _compile(model, input_shape, scale_bits=None, min_scale_bits=floor, **options)

    return _precise_enough(plan, min_agreement, np.asarray(calib, np.float32), recompile, model)


def _precise_enough(plan: Plan, min_agreement: float, calib: np.ndarray, recompile, model):
    """``plan``, or the plan at a larger scale, whichever first predicts ``min_agreement``.

    The simulated error σ halves with each bit of scale, so the bits missing are read off the
    first simulation (:func:`~hecnn.compile.noise.margin_agreement` with σ shrunk by 2^-b);
    the recompiled plan is simulated again and kept if it closes at least half the gap (else
    the error is not the scale's to fix, and the cheaper plan stays, with a warning).
    """
    from hecnn.compile.noise import margin_agreement, simulate_ckks

    with torch.no_grad():  # float64: float32 rounding would pass for CKKS noise
        try:
            ref = copy.deepcopy(model).double().eval()(torch.as_tensor(calib, torch.float64))
        except (RuntimeError, TypeError):  # a forward that builds float32 tensors of its own
            ref = model.eval()(torch.as_tensor(calib))
    ref = ref.double().numpy().reshape(len(calib), -1)
    err = simulate_ckks(plan, calib).reshape(ref.shape) - ref
    predicted = margin_agreement(ref, err)
    bits = round(math.log2(plan.params.scale))
    first = (bits, predicted)
    while predicted < min_agreement and bits < MAX_SCALE_BITS:
        enough = (
            b
            for b in range(1, MAX_SCALE_BITS - bits)
            if margin_agreement(ref, err, 2.0**-b) >= min_agreement
        )
        more = next(enough, MAX_SCALE_BITS - bits)
        candidate = recompile(bits + more)
        cand_bits = round(math.log2(candidate.params.scale))
        if cand_bits <= bits:  # nothing larger fits any ring
            break
        cand_err = simulate_ckks(candidate, calib).reshape(ref.shape) - ref
        cand_predicted = margin_agreement(ref, cand_err)
        if cand_predicted < predicted + 0.5 * (min_agreement - predicted):
            break  # the error is not the scale's (the polynomials', the weights'): keep it
        plan, bits, err, predicted = candidate, cand_bits, cand_err, cand_predicted
    if bits != first[0]:
        plan.decisions.append(
            f"scale 2^{first[0]} → 2^{bits}: simulated CKKS noise on {len(calib)} calibration "
            f"images predicted {first[1]:.2f} % label agreement at 2^{first[0]}, "
            f"{predicted:.2f} % at 2^{bits} (asked: ≥ {min_agreement} %)"
        )
    if predicted < min_agreement:
        plan.warnings.append(
            f"simulated CKKS noise predicts {predicted:.2f} % label agreement on the "
            f"calibration images (asked: ≥ {min_agreement} %) at scale 2^{bits}, and a larger "
            "scale does not help enough: check the approximations (hecnn check)"
        )
    plan.predicted_agreement = predicted
    return plan


def _compile(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch: int,
    calib,
    scale_bits: int | None,
    fold_leading: bool,
    merge_by_cost: bool,
    relin_free_tail: bool,
    lazy_rescale: bool,
    insecure_ring_for_tests: int | None,
    packing: str,
    min_scale_bits: int,
) -> Plan:
    """:func:`compile_model` for one lower bound on the scale's bits."""
    input_shape = tuple(int(s) for s in input_shape)
    if batch < 1:
        raise ShapeError(f"batch must be ≥ 1, got {batch}")
    packing = choose_packing(packing, batch)
    image = packing == "image"
    if image:
        relin_free_tail = False  # rotations need 2-component ciphertexts
    traced, output = trace(model, input_shape)
    bound = DEFAULT_OUTPUT_BOUND
    if calib is not None:
        x = torch.as_tensor(np.asarray(calib), dtype=torch.float32)
        if tuple(x.shape[1:]) != input_shape:
            raise ShapeError(
                f"calibration inputs have shape {tuple(x.shape[1:])}, not {input_shape}"
            )
        with torch.no_grad():
            out = model.eval()(x)
        bound = float(out.abs().max()) * OUTPUT_MARGIN

    def lower(
        keep_apart: frozenset[str], merged: list | None = None
    ) -> tuple[list[Node], CkksParameters, list[str]]:
        """Fold, relinearize, level and pick parameters for one choice of merges; the notes
        say which rescales were deferred."""
        nodes = merge_affine(copy.deepcopy(traced), output, keep_apart=keep_apart, merged=merged)
        nodes = fold_elementwise_affine(nodes, output)
        notes: list[str] = []
        if fold_leading:
            nodes = fold_leading_coefficients(nodes, output, notes)
        plan_relinearization(nodes, output, tail=relin_free_tail)
        if image:
            relinearize_every_product(nodes, output)
        assign_scale_factors(nodes)
        depth = max(relative_depths(nodes).values())
        params = choose_parameters(
            depth,
            1 if image else batch,
            bound,
            scale_bits=scale_bits,
            insecure_ring=insecure_ring_for_tests,
            tail_bits=lambda sb: tail_scale_bits(nodes, sb),
            tight_base=image,
            min_scale_bits=min_scale_bits,
        )
        assign_levels(nodes, params.max_level)
        if lazy_rescale and not image:
            notes += defer_rescales(nodes, output)
            assign_levels(nodes, params.max_level)
        input_node(nodes)
        return nodes, params, notes

    merged: list[tuple[str, str, float]] = []
    nodes, params, notes = lower(frozenset(), merged)
    decisions: list[str] = []
    # per-image cost lies in rotations and diagonals, which plan_work does not model
    if merge_by_cost and not image:
        nodes, params, notes, decisions = _cheapest_merges(
            lower, nodes, params, notes, merged, batch, input_shape, output
        )
    decisions += notes
    warnings: list[str] = []
    for n in nodes:
        if isinstance(n, PolyNode) and n.valid_range and n.input_range:
            lo, hi = n.input_range
            vlo, vhi = n.valid_range
            if lo < vlo or hi > vhi:
                warnings.append(
                    f"{n.source}: inputs seen in training span [{lo:.2f}, {hi:.2f}], beyond the "
                    f"polynomial's valid range [{vlo:.2f}, {vhi:.2f}]"
                )
    nodes = block_weights(nodes)
    plan = Plan(
        nodes=nodes,
        output=output,
        params=params,
        input_shape=input_shape,
        batch=1 if image else batch,
        model_name=type(model).__name__,
        warnings=warnings,
        decisions=decisions,
        packing=packing,
    )
    if image:
        plan.image = pack_image(nodes, params.slots)
    return plan


#: merges that multiply the MACs by more than this are tried both ways (see :func:`_cheapest_merges`)
MERGE_TRIAL_GROWTH = 1.25
#: keep a merge apart only when that cuts the estimated work below this fraction: the extra
#: level also enlarges every ciphertext the client uploads and the evaluation keys, and its
#: accumulators can need more memory (hemet_squeezenet: pool2 apart 0.45×, kept; pool1 apart
#: a further 0.96×, not worth 6 GiB more of streamed accumulators)
MERGE_APART_GAIN = 0.9


def _cheapest_merges(lower, nodes, params, notes, merged, batch, input_shape, output):
    """Keep an affine merge apart where that makes the plan cheaper, greedily, merge by merge.

    Merging two affine nodes saves a level for every node before them, but the composition
    can cost several times the MACs (a pooling composed into a convolution). Each merge that
    grew the MACs by more than :data:`MERGE_TRIAL_GROWTH` is undone in turn, largest growth
    first, the plan lowered again, and the choice kept when the estimated work
    (:func:`hecnn.compile.cost.plan_work`, which also sees a larger ring, should the extra level
    need one) falls below :data:`MERGE_APART_GAIN` of the best so far. Returns the nodes, the
    parameters, the chosen lowering's notes and a sentence per merge kept apart.
    """

    def work(nodes, params) -> float:
        return plan_work(Plan(nodes, output, params, input_shape, batch))

    first = best = work(nodes, params)
    keep: frozenset = frozenset()
    decisions = []
    for prev, cons, growth in sorted(merged, key=lambda m: -m[2]):
        if growth <= MERGE_TRIAL_GROWTH:
            continue
        try:
            trial_nodes, trial_params, trial_notes = lower(keep | {prev})
        except HecnnError:  # e.g. one more level fits no 128-bit ring
            continue
        w = work(trial_nodes, trial_params)
        if w < MERGE_APART_GAIN * best:
            best, keep = w, keep | {prev}
            nodes, params, notes = trial_nodes, trial_params, trial_notes
            decisions.append(
                f"{prev} → {cons} kept apart (merged: {growth:.1f}× the MACs, one level "
                f"fewer); estimated work {w / first:.2f}× the all-merged plan's"
            )
    return nodes, params, notes, decisions


#: ``packing="auto"`` picks per-image packing up to this many images: a batch-packed run costs
#: the same for 1 or N/2 images (tens of seconds for the MNIST models), a per-image run about a
#: second per image (docs/benchmarks.md, latency)
AUTO_IMAGE_MAX_BATCH = 8
PACKINGS = ("batch", "image", "auto")


def choose_packing(packing: str, batch: int) -> str:
    """ "batch" or "image" for the user's request and batch size."""
    if packing not in PACKINGS:
        raise ParameterError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if packing == "auto":
        return "image" if batch <= AUTO_IMAGE_MAX_BATCH else "batch"
    return packing


def compile_bundled(
    name: str,
    *,
    batch: int = 8192,
    insecure_ring_for_tests: int | None = None,
    packing: str = "batch",
) -> Plan:
    """The plan of bundled model ``name`` for (1, 28, 28) MNIST inputs, calibrated on 256 of the
    bundled test images: the plan ``hecnn keygen|infer`` and ``hecnn serve`` agree on."""
    from hecnn.nn import bundled

    if name not in bundled.names():
        raise HecnnError(f"no bundled model {name!r}; have {bundled.names()}")
    images, _ = bundled.sample_images()
    calib = np.asarray(bundled.to_float(images[:256]), dtype=np.float32)
    plan = compile_model(
        bundled.load_model(name),
        (1, 28, 28),
        batch=batch,
        calib=calib,
        insecure_ring_for_tests=insecure_ring_for_tests,
        packing=packing,
    )
    plan.model_name = name
    return plan
