"""Linear layers on torch ciphertext batches: exact fp64 GEMMs on split residues.

The maths of :mod:`hecnn.ckks.linear` (same weight encoding, same digit planes, same exactness
bound — its helpers are reused, so both backends encode identically): residues lifted to
(−q/2, q/2], weights split into signed base-2^b digit planes with K·2^{29+b} < 2^52, one fp64
GEMM per plane (exact), an exact fp64 remainder per limb, and the planes recombined with their
factors 2^{b·t+s} mod q.

The GEMM does not depend on the prime — only the recombination does — so all (component, limb)
columns of the input go through one GEMM: X is (K inputs) × (C·L·N columns). The blocks of a
:class:`BlockSparseWeights` (one per convolution output position) are grouped by shape and
run as one batched GEMM per group; a block with fewer inputs (at the image border) is padded
with a zero input row and zero weights. Columns are processed in chunks that fit the memory
budget of the device (:meth:`TorchRing.budget_bytes`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.linear import BlockSparseWeights, digit_bits, digit_planes, weight_exponent
from hecnn.errors import ParameterError, ShapeError

#: live float64 copies of a GEMM result while it is reduced (z, remainder, products)
_REDUCE_TEMPS = 4


@dataclass
class _Group:
    """Blocks with the same (planes, outputs) shape, padded to a common input count."""

    weights: torch.Tensor  # (G, T·nout, nin) float64 digit planes
    rows: torch.Tensor  # (G, nin) input rows; K (one past the last) is the zero row
    outs: torch.Tensor  # (G·nout,) output rows
    planes: int
    nout: int


def _groups(sw: BlockSparseWeights, delta_w: float, b: int, s: int, max_digits: int, ring):
    by_shape: dict[tuple[int, int], list] = defaultdict(list)
    for blk in sw.blocks:
        if len(blk.in_idx) == 0:
            continue
        planes = digit_planes(blk.weights * delta_w, b, s, max_digits)
        by_shape[(planes.shape[0], len(blk.out_idx))].append((planes, blk))
    zero_row = sw.in_features
    groups = []
    for (nplanes, nout), members in by_shape.items():
        nin = max(len(blk.in_idx) for _, blk in members)
        w = np.zeros((len(members), nplanes, nout, nin), dtype=np.float64)
        rows = np.full((len(members), nin), zero_row, dtype=np.int64)
        for g, (planes, blk) in enumerate(members):
            w[g, :, :, : len(blk.in_idx)] = planes
            rows[g, : len(blk.in_idx)] = blk.in_idx
        outs = np.concatenate([np.asarray(blk.out_idx, dtype=np.int64) for _, blk in members])
        groups.append(
            _Group(
                torch.from_numpy(w.reshape(len(members), nplanes * nout, nin)).to(ring.device),
                torch.from_numpy(rows).to(ring.device),
                torch.from_numpy(outs).to(ring.device),
                nplanes,
                nout,
            )
        )
    return groups


def linear_combination(
    batch: CiphertextBatch,
    weights: np.ndarray | BlockSparseWeights,
    *,
    bias: np.ndarray | None = None,
    weight_scale: float | None = None,
    max_digits: int = 2,
) -> CiphertextBatch:
    """W @ batch mod each prime on the torch backend; bit-identical to the numpy version."""
    if not isinstance(batch, CiphertextBatch):
        raise ParameterError(f"expected a CiphertextBatch, got {type(batch).__name__}")
    sw = BlockSparseWeights.dense(weights) if isinstance(weights, np.ndarray) else weights
    if not isinstance(sw, BlockSparseWeights):
        raise ParameterError(f"weights must be an array or BlockSparseWeights, got {type(weights)}")
    if sw.in_features != len(batch):
        raise ShapeError(f"weights expect {sw.in_features} inputs, the batch has {len(batch)}")
    for blk in sw.blocks:
        if not np.all(np.isfinite(blk.weights)):
            raise ShapeError("weights must be finite")
    ctx = batch.ctx
    ring = ctx.backend
    lvl = batch.level
    delta_w = float(ctx.primes[lvl]) if weight_scale is None else float(weight_scale)
    x = batch.data
    k_in, comps, limbs, n = x.shape
    maxk = max((len(blk.in_idx) for blk in sw.blocks), default=1)
    b = digit_bits(maxk)
    maxabs = max(
        (float(np.max(np.abs(blk.weights))) for blk in sw.blocks if blk.weights.size), default=0
    )
    s = weight_exponent(maxabs * delta_w, b, max_digits)
    groups = _groups(sw, delta_w, b, s, max_digits, ring)
    out = torch.zeros((sw.out_features, comps * limbs, n), dtype=torch.int32, device=x.device)
    pairs = comps * limbs  # column blocks (component, limb), each N wide
    xv = x.view(k_in, pairs, n)

    # bytes per column: the centered input (+ zero row), per group the gathered inputs and the
    # GEMM result with its reduction temporaries
    per_col = 8 * (k_in + 1)
    per_col += (
        max(
            (8 * g.rows.numel() + _REDUCE_TEMPS * 8 * g.weights.shape[0] * g.weights.shape[1])
            for g in groups
        )
        if groups
        else 0
    )
    budget_cols = max(1, ring.budget_bytes() // per_col)
    if budget_cols >= n:
        step = budget_cols // n
        spans = [(j, min(pairs, j + step), 0, n) for j in range(0, pairs, step)]
    else:  # one (component, limb) block is too wide: split it along N (powers of two)
        width = 1 << max(0, budget_cols.bit_length() - 1)
        spans = [(j, j + 1, c, c + width) for j in range(pairs) for c in range(0, n, width)]

    with ring.threads_limited():
        _columns(ring, ctx, xv, out, groups, spans, b, s, limbs)
    result = CiphertextBatch(ctx, out.view(sw.out_features, comps, limbs, n), batch.scale * delta_w)
    if bias is not None:
        bvec = np.asarray(bias, dtype=np.float64)
        if bvec.shape != (sw.out_features,):
            raise ShapeError(f"bias must have shape ({sw.out_features},), got {bvec.shape}")
        result = result.add_const(bvec)
    return result


def _columns(ring, ctx, xv, out, groups, spans, b: int, s: int, limbs: int) -> None:
    """out[:, pairs, cols] = Σ_t 2^{bt+s}·[D_t @ centered(x)] mod q, one span of columns at a
    time (``xv``: (K, pairs, N) residues, pair j on limb j mod L)."""
    k_in = xv.shape[0]
    for j0, j1, c0, c1 in spans:
        limb_idx = [j % limbs for j in range(j0, j1)]
        lim = ring.limbs(limb_idx)
        qcol = lim.q32.view(1, -1, 1)
        xs = xv[:, j0:j1, c0:c1]
        xc = torch.empty((k_in + 1, j1 - j0, c1 - c0), dtype=torch.float64, device=xv.device)
        xc[:k_in] = torch.where(xs > qcol >> 1, xs - qcol, xs)
        xc[k_in] = 0
        xc = xc.view(k_in + 1, -1)
        qf = lim.qf.view(1, 1, 1, -1, 1)
        qinv = lim.qinv.view(1, 1, 1, -1, 1)
        for grp in groups:
            ng = grp.weights.shape[0]
            z = torch.bmm(grp.weights, xc[grp.rows])  # (G, T·nout, cols): exact
            z = z.view(ng, grp.planes, grp.nout, j1 - j0, c1 - c0)
            r = ring.fmod(z, qf, qinv).to(torch.int64)
            del z
            # plane t carries the factor 2^{b·t+s} (2^s folded into plane 0 too)
            mul = [
                [pow(2, b * t + s, int(ctx.primes[i])) for i in limb_idx] for t in range(grp.planes)
            ]
            mul_t = torch.tensor(mul, dtype=torch.int64, device=xv.device).view(grp.planes, -1, 1)
            acc = ring.mul(r[:, 0], mul_t[0], lim)
            for t in range(1, grp.planes):
                acc = ring.add(acc, ring.mul(r[:, t], mul_t[t], lim), lim.q)
            out[grp.outs, j0:j1, c0:c1] = acc.reshape(-1, j1 - j0, c1 - c0).to(torch.int32)
            del r, acc
