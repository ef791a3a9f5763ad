"""Linear layers on ciphertext batches as exact modular matrix products.

Y = W @ X where X is a batch of K ciphertexts and W an (O × K) real matrix. Each weight is
encoded as the integer w̃ = round(w·Δ_w) (Δ_w = q_ℓ by default, so the following rescale
restores the input scale exactly) and Y = W̃ @ X mod q_i on every limb of every component.

Exactness in fp64 BLAS: the residues are lifted to (−q/2, q/2], |x| < 2^30, and W̃ is split into
signed base-2^b digit planes D_t (|d| ≤ 2^{b−1}) with K·2^{29+b} < 2^52, so every D_t @ X is
computed exactly by an ordinary fp64 GEMM; the planes are then recombined by Horner's rule,
r ← (D_t @ X + r·2^b) mod q, every step exact in doubles (b ≤ 21). When W̃ needs more than
``max_digits`` planes the matrix is stored in block floating point: W̃ = Ŵ·2^s with Ŵ keeping
``max_digits·b − 1`` significant bits relative to the largest weight (≥ 2^−25 for a 576-input
layer) — far below the CKKS noise — and the factor 2^s mod q applied once at the end.

Parallelism: the (component, limb) column blocks are independent; each worker thread takes a
share of them with single-threaded BLAS (two thread pools spinning against each other on two
cores cost more than they bring).

A convolution is a :class:`BlockSparseWeights`: one dense block per output position holding only
the kernel taps that touch the image, so no dense im2col matrix is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hecnn.ckks import kernels
from hecnn.ckks.batch import CiphertextBatch
from hecnn.errors import ParameterError, ShapeError

_CENTERED_BITS = 30  # |x| ≤ (q − 1)/2 < 2^30 for q < 2^31
#: the planes are recombined by Horner's rule in doubles: z + r·2^b with r < 2^31 must stay
#: below 2^53, so b ≤ 21 (see ``kernels.reduce_digit_products``)
MAX_DIGIT_BITS = 21


@dataclass(frozen=True)
class WeightBlock:
    """Outputs ``out_idx`` receive ``weights`` @ inputs ``in_idx``."""

    out_idx: np.ndarray
    in_idx: np.ndarray
    weights: np.ndarray  # (len(out_idx), len(in_idx))


@dataclass(frozen=True)
class BlockSparseWeights:
    """A sparse (out_features × in_features) matrix stored as dense blocks (e.g. a convolution)."""

    out_features: int
    in_features: int
    blocks: tuple[WeightBlock, ...]

    @classmethod
    def dense(cls, w: np.ndarray) -> BlockSparseWeights:
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 2:
            raise ShapeError(f"weight matrix must be 2-D, got shape {w.shape}")
        o, k = w.shape
        return cls(o, k, (WeightBlock(np.arange(o), np.arange(k), w),))

    @classmethod
    def conv2d(
        cls,
        weight: np.ndarray,
        in_shape: tuple[int, int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
    ) -> BlockSparseWeights:
        """Conv2d weight (Cout, Cin/groups, kh, kw) on inputs (Cin, H, W), row-major features.

        Output feature (co, y, x) is row co·H'·W' + y·W' + x; input (ci, h, w) is ci·H·W + h·W + w
        (the flattening order of ``torch.flatten``). Zero padding simply drops the taps that fall
        outside the image.
        """
        w = np.asarray(weight, dtype=np.float64)
        if w.ndim != 4:
            raise ShapeError(f"conv weight must be (Cout, Cin, kh, kw), got shape {w.shape}")
        cin, h, wd = in_shape
        cout, cin_g, kh, kw = w.shape
        if cin_g * groups != cin or cout % groups:
            raise ShapeError(
                f"conv weight {w.shape} with groups={groups} does not fit input {in_shape}"
            )
        sy, sx = (stride, stride) if isinstance(stride, int) else stride
        py, px = (padding, padding) if isinstance(padding, int) else padding
        ho = (h + 2 * py - kh) // sy + 1
        wo = (wd + 2 * px - kw) // sx + 1
        if ho <= 0 or wo <= 0:
            raise ShapeError(f"kernel {kh}×{kw} larger than padded input {in_shape}")
        cout_g = cout // groups
        blocks = []
        for g in range(groups):
            co = np.arange(g * cout_g, (g + 1) * cout_g)
            ci = np.arange(g * cin_g, (g + 1) * cin_g)
            wg = w[co].reshape(cout_g, cin_g * kh * kw)  # columns ordered (ci, dy, dx)
            for y in range(ho):
                for x in range(wo):
                    hh = y * sy - py + np.arange(kh)
                    ww = x * sx - px + np.arange(kw)
                    vy, vx = (hh >= 0) & (hh < h), (ww >= 0) & (ww < wd)
                    taps = (vy[:, None] & vx[None, :]).reshape(-1)
                    in_rows = (
                        ci[:, None, None] * h * wd + hh[None, :, None] * wd + ww[None, None, :]
                    )
                    cols = np.tile(taps, cin_g)
                    blocks.append(
                        WeightBlock(
                            out_idx=co * ho * wo + y * wo + x,
                            in_idx=in_rows.reshape(-1)[cols],
                            weights=wg[:, cols],
                        )
                    )
        return cls(cout * ho * wo, cin * h * wd, tuple(blocks))

    def to_dense(self) -> np.ndarray:
        out = np.zeros((self.out_features, self.in_features))
        for b in self.blocks:
            out[np.ix_(b.out_idx, b.in_idx)] += b.weights
        return out

    @property
    def nnz(self) -> int:
        """Ciphertext multiply-accumulates per component and limb (for plan summaries)."""
        return sum(b.weights.size for b in self.blocks)


#: bytes of one column tile's GEMM operands (inputs and digit products, fp64): a few MiB, so
#: that the tile's gather, GEMM and reduction pass over one core's caches, not memory (4 MiB
#: measured best among 2, 4, 8 and 32 MiB on the 2-core machine)
TILE_BYTES = 1 << 22
MIN_TILE = 1024  # narrower GEMMs lose more to call overhead than the cache saves


def column_tile(k: int, rows_out: int, n: int) -> int:
    """Columns per tile for products of k inputs into ``rows_out`` digit-product rows: the
    largest power of two ≤ N whose operands fit :data:`TILE_BYTES`, at least :data:`MIN_TILE`.

    Whole rows of N = 2^15 doubles are 256 KiB each: untiled, the GEMM's product rows leave
    the cache before the reduction reads them back (1.25 ns per element from memory, 0.57 in
    cache), and the two threads' passes contend for memory bandwidth."""
    fit = TILE_BYTES // (8 * max(1, k + rows_out))
    tile = 1 << max(0, fit.bit_length() - 1)
    return int(min(n, max(MIN_TILE, tile)))


def digit_bits(k: int) -> int:
    """Largest digit size b ≤ 21 with k·2^{29+b} < 2^52 (exact fp64 accumulation of k products).

    One bit below the 2^53 limit of exact doubles, so that the reduction's k·q (within q of a
    partial sum) is exact too.
    """
    b = min(MAX_DIGIT_BITS, math.ceil(52 - (_CENTERED_BITS - 1) - math.log2(max(k, 1))) - 1)
    if b < 2:
        raise ParameterError(f"a block of {k} inputs is too large for exact fp64 accumulation")
    return b


def weight_exponent(maxabs_scaled: float, b: int, max_digits: int) -> int:
    """Exponent s such that round(w̃/2^s) fits ``max_digits`` signed base-2^b digits.

    Keeps ``max_digits·b − 2`` significant bits of the largest weight (one bit of headroom for
    rounding); s = 0 (exact encoding) whenever the integers already fit.
    """
    total_bits = max(1, math.ceil(math.log2(maxabs_scaled + 1)))
    return max(0, total_bits - (max_digits * b - 2))


def digit_planes(w_scaled: np.ndarray, b: int, s: int, max_digits: int) -> np.ndarray:
    """Signed base-2^b digit planes of round(w_scaled/2^s): Σ_t planes[t]·2^{bt} = that integer.

    Every digit lies in [−2^{b−1}, 2^{b−1}], the bound :func:`digit_bits` was chosen for.
    """
    wi = np.round(np.asarray(w_scaled, dtype=np.float64) / 2.0**s).astype(np.int64)
    maxabs = int(np.max(np.abs(wi))) if wi.size else 0
    digits = max(1, min(max_digits, math.ceil((max(1, maxabs.bit_length()) + 1) / b)))
    planes = np.empty((digits, *wi.shape), dtype=np.float64)
    half, full = 1 << (b - 1), 1 << b
    rest = wi
    for t in range(digits):
        d = ((rest + half) & (full - 1)) - half if t < digits - 1 else rest
        planes[t] = d
        rest = (rest - d) >> b
    if np.max(np.abs(planes[-1]), initial=0) > half:
        raise ParameterError("weight digit overflow: increase max_digits")
    return planes


def encoding_exponent(weights: BlockSparseWeights, weight_scale: float, max_digits: int = 2) -> int:
    """The exponent s of the block floating point encoding W̃ = round(W·Δ_w/2^s)·2^s.

    It depends on the whole matrix (its largest weight and its largest block). Products of row or
    column subsets of one layer — the chunks of a streamed layer — must all use the exponent of
    the whole matrix, so that they encode the very same integers and their sums mod q equal the
    unchunked product bit for bit.
    """
    maxk = max((len(b.in_idx) for b in weights.blocks), default=1)
    maxabs = max(
        (float(np.max(np.abs(b.weights))) for b in weights.blocks if b.weights.size), default=0
    )
    return weight_exponent(maxabs * float(weight_scale), digit_bits(maxk), max_digits)


def linear_combination(
    batch: CiphertextBatch,
    weights: np.ndarray | BlockSparseWeights,
    *,
    bias: np.ndarray | None = None,
    weight_scale: float | None = None,
    max_digits: int = 2,
    exponent: int | None = None,
) -> CiphertextBatch:
    """W @ batch mod each prime: (O × K) weights on K ciphertexts → O ciphertexts.

    The result has scale ``batch.scale · Δ_w`` (Δ_w = ``weight_scale`` or the last prime q_ℓ);
    ``bias`` (O,) is added at that scale. Works for any component count. ``exponent``: the
    encoding exponent s of a larger matrix this one is a piece of (see
    :func:`encoding_exponent`); by default this matrix's own.
    """
    if isinstance(batch, CiphertextBatch) and type(batch) is not CiphertextBatch:
        if exponent is not None:
            raise ParameterError("a shared encoding exponent needs the numpy backend")
        return batch.linear_combination(  # another array backend (torch) has its own
            weights, bias=bias, weight_scale=weight_scale, max_digits=max_digits
        )
    sw = _check_weights(batch, weights)
    delta_w = float(batch.ctx.primes[batch.level]) if weight_scale is None else float(weight_scale)
    if exponent is None:
        exponent = encoding_exponent(sw, delta_w, max_digits)
    comps, limbs, n = batch.data.shape[1:]
    out = np.zeros((sw.out_features, comps, limbs, n), dtype=np.int32)
    _products(batch, [(blk, out) for blk in sw.blocks], delta_w, exponent, max_digits, False)
    result = CiphertextBatch(batch.ctx, out, batch.scale * delta_w)
    if bias is not None:
        bvec = np.asarray(bias, dtype=np.float64)
        if bvec.shape != (sw.out_features,):
            raise ShapeError(f"bias must have shape ({sw.out_features},), got {bvec.shape}")
        result = result.add_const_in_place(bvec)  # ``out`` is this call's own
    return result


def accumulate_products(
    batch: CiphertextBatch,
    targets: Sequence[tuple[WeightBlock, np.ndarray]],
    *,
    weight_scale: float,
    exponent: int,
    max_digits: int = 2,
) -> None:
    """acc[blk.out_idx] += W̃_blk @ batch[blk.in_idx] mod q, in place, for each (blk, acc).

    ``acc`` is an int32 residue array (rows, comps, limbs, N) with the batch's components and
    limbs. A layer whose inputs arrive in chunks adds each chunk's partial product to its
    accumulators; with one Δ_w and one ``exponent`` for every chunk the partial sums share a
    scale (``batch.scale · weight_scale``) and add exactly mod q.
    """
    if not isinstance(batch, CiphertextBatch):
        raise ParameterError(f"expected a CiphertextBatch, got {type(batch).__name__}")
    shape = batch.data.shape[1:]
    for blk, acc in targets:
        if acc.dtype != np.int32 or acc.shape[1:] != shape or not acc.flags.c_contiguous:
            raise ShapeError(
                f"accumulator {acc.dtype}{acc.shape} does not hold ciphertexts of shape {shape}"
            )
        if len(blk.in_idx) and (blk.in_idx.max() >= len(batch) or blk.in_idx.min() < 0):
            raise ShapeError(f"weight block reads inputs beyond the {len(batch)} of the batch")
        if len(blk.out_idx) and (blk.out_idx.max() >= len(acc) or blk.out_idx.min() < 0):
            raise ShapeError(f"weight block writes rows beyond the {len(acc)} of its accumulator")
        if not np.all(np.isfinite(blk.weights)):
            raise ShapeError("weights must be finite")
    _products(batch, list(targets), float(weight_scale), exponent, max_digits, True)


def _check_weights(
    batch: CiphertextBatch, weights: np.ndarray | BlockSparseWeights
) -> BlockSparseWeights:
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
    return sw


def _products(
    batch: CiphertextBatch,
    targets: list[tuple[WeightBlock, np.ndarray]],
    delta_w: float,
    s: int,
    max_digits: int,
    accumulate: bool,
) -> None:
    """Write (or add, ``accumulate``) W̃_blk @ X into acc[blk.out_idx] for each (blk, acc).

    The digit size b is this call's own (the largest block here); the integers
    round(w·Δ_w/2^s)·2^s do not depend on it, only on s.
    """
    ctx = batch.ctx
    x = batch.data
    comps, limbs, n = x.shape[1:]
    maxk = max((len(blk.in_idx) for blk, _ in targets), default=1)
    b = digit_bits(maxk)
    encoded = []
    for blk, acc in targets:
        if len(blk.in_idx) == 0:
            continue
        planes = digit_planes(blk.weights * delta_w, b, s, max_digits)
        nplanes, nout = planes.shape[0], len(blk.out_idx)
        encoded.append(
            (
                np.ascontiguousarray(planes.reshape(nplanes * nout, -1)),  # one GEMM, all planes
                np.ascontiguousarray(blk.in_idx, dtype=np.int64),
                np.ascontiguousarray(blk.out_idx, dtype=np.int64),
                nplanes,
                acc,
            )
        )
    if not encoded:
        return
    maxout = max(e[0].shape[0] for e in encoded)
    tile = column_tile(maxk, maxout, n)
    radix = float(2**b)
    s_factors = [pow(2, s, int(q)) for q in ctx.primes[:limbs]]  # block-floating-point 2^s
    s_shoup = [(f << 32) // int(q) for f, q in zip(s_factors, ctx.primes[:limbs], strict=True)]
    jobs = [(li, c) for li in range(limbs) for c in range(comps)]

    def work(lo: int, hi: int) -> None:
        # each worker owns its buffers; BLAS runs single-threaded inside (see module doc)
        xbuf = np.empty((maxk, tile), dtype=np.float64)
        zbuf = np.empty((maxout, tile), dtype=np.float64)
        for li, c in jobs[lo:hi]:
            q = int(ctx.primes[li])
            for col in range(0, n, tile):
                for stacked, rows, out_rows, nplanes, acc in encoded:
                    xb = xbuf[: len(rows)]
                    z = zbuf[: stacked.shape[0]]
                    kernels.gather_centered(x, rows, c, li, np.int64(q), xb, col)
                    np.matmul(stacked, xb, out=z)
                    kernels.reduce_digit_products(
                        z.reshape(nplanes, len(out_rows), tile),
                        radix,
                        np.int64(s_factors[li]),
                        np.int64(s_shoup[li]),
                        np.int64(q),
                        acc,
                        c,
                        li,
                        out_rows,
                        accumulate,
                        col,
                    )

    with ctx.blas.limit(limits=1, user_api="blas"):
        ctx.parallel(len(jobs), work)
