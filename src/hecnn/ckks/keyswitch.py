"""Hybrid (GHS) key switching, batched over polynomials.

Given d ∈ R_{Q_ℓ} (NTT form) and a key for s' → s, returns (c0, c1) with c0 + c1·s ≈ d·s'.

1. ModUp: split d into digits [d]_{D_j}; extend each exactly-represented digit to the basis
   Q_ℓ·P by fast base conversion (the approximation error is a multiple of Q_j, which the key's
   g_j factor annihilates mod Q_ℓ·P).
2. Inner product with the key: Σ_j d̃_j · ksk_j over Q_ℓ·P.
3. ModDown: divide by P with rounding, (x − [x]_P)/P, via a base conversion of the P limbs.
"""

from __future__ import annotations

import numpy as np

from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import SwitchingKey, digits
from hecnn.errors import ParameterError


def key_switch(
    ctx: CkksContext, d: np.ndarray, level: int, key: SwitchingKey
) -> tuple[np.ndarray, np.ndarray]:
    """(P, ℓ+1, N) NTT-form polynomials → (c0, c1), each (P, ℓ+1, N) NTT form.

    Digit by digit: each extended digit goes into the key's inner product as soon as it is
    made, so one digit's extension (not all of them) is alive beside the accumulators — a
    working set a few times smaller, which the two threads' key switches share the cache
    with. The same operations in the same order as ``switch_decomposed(decompose(…))``."""
    idx_qp, d_coeff = _coefficients(ctx, d, level)
    _check_key(ctx, key)
    key_limbs = key.limbs_for(level)
    acc = np.zeros((2, d.shape[0], len(idx_qp), ctx.n), dtype=np.int32)
    for j, grp in enumerate(digits(ctx.params, level)):
        ext = _extend_digit(ctx, d, d_coeff, grp, idx_qp)
        kj = key.data[j][:, key_limbs]
        for c in range(2):
            ctx.mul_broadcast(ext, kj[c], idx_qp, acc=acc[c])
    return mod_down(ctx, acc[0], level), mod_down(ctx, acc[1], level)


def decompose(ctx: CkksContext, d: np.ndarray, level: int) -> list[np.ndarray]:
    """ModUp: the digits [d]_{D_j} of (P, ℓ+1, N) NTT-form polynomials, each extended to Q_ℓ·P
    (NTT form, (P, ℓ+1+k, N)). Shared by every key switch of the same d — the expensive half
    of a rotation that hoisting does once for many rotation steps."""
    idx_qp, d_coeff = _coefficients(ctx, d, level)
    return [_extend_digit(ctx, d, d_coeff, grp, idx_qp) for grp in digits(ctx.params, level)]


def _coefficients(ctx: CkksContext, d: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(the Q_ℓ·P prime indices, d in coefficient form) after checking d's shape."""
    idx_q = ctx.data_idx(level)
    if d.ndim != 3 or d.shape[1] != len(idx_q):
        raise ParameterError(f"key switch input shape {d.shape} does not match level {level}")
    return ctx.qp_idx(level), ctx.intt(d.copy(), idx_q)


def _extend_digit(
    ctx: CkksContext, d: np.ndarray, d_coeff: np.ndarray, grp: np.ndarray, idx_qp: np.ndarray
) -> np.ndarray:
    """One digit [d]_{D_j} extended to Q_ℓ·P (NTT form): its own limbs are d's, the others a
    fast base conversion of its coefficients, transformed."""
    nqp = len(idx_qp)
    others = np.setdiff1d(np.arange(nqp), grp)  # positions in Q_ℓ·P other than the digit
    conv = ctx.base_convert(np.ascontiguousarray(d_coeff[:, grp]), grp, idx_qp[others])
    ctx.ntt(conv, idx_qp[others])
    ext = np.empty((d.shape[0], nqp, ctx.n), dtype=np.int32)
    ext[:, others] = conv
    ext[:, grp] = d[:, grp]
    return ext


def _check_key(ctx: CkksContext, key: SwitchingKey) -> None:
    if key.params != ctx.params:
        raise ParameterError("switching key belongs to a different parameter set")


def switch_decomposed(
    ctx: CkksContext,
    exts: list[np.ndarray],
    level: int,
    key: SwitchingKey,
    perm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inner product of decomposed digits with the key, then ModDown: (c0, c1) over Q_ℓ.

    ``perm``: an automorphism's permutation of the NTT evaluation points, applied to the
    digits first. An automorphism commutes with ModUp (it permutes coefficients with signs,
    and the base conversion's error stays a multiple of Q_j), so σ(decompose(d)) is a valid
    decomposition of σ(d): a hoisted rotation.
    """
    _check_key(ctx, key)
    idx_qp = ctx.qp_idx(level)
    nqp = len(idx_qp)
    key_limbs = key.limbs_for(level)
    acc = np.zeros((2, exts[0].shape[0], nqp, ctx.n), dtype=np.int32)
    for j, ext in enumerate(exts):
        if perm is not None:
            ext = np.ascontiguousarray(ext[..., perm])
        kj = key.data[j][:, key_limbs]
        for c in range(2):
            ctx.mul_broadcast(ext, kj[c], idx_qp, acc=acc[c])
    return mod_down(ctx, acc[0], level), mod_down(ctx, acc[1], level)


def mod_down(ctx: CkksContext, x: np.ndarray, level: int) -> np.ndarray:
    """(P, ℓ+1+k, N) over Q_ℓ·P → round(x/P) over Q_ℓ, NTT form in and out.

    round(x/P) = (x + ⌊P/2⌋ − [x + ⌊P/2⌋]_P)/P: ⌊P/2⌋ is added to every coefficient of the P
    limbs before the base conversion and subtracted again from the converted Q limbs (both in
    coefficient form), so rounding costs two scalar additions per limb.
    """
    idx_q = ctx.data_idx(level)
    nq = len(idx_q)
    sp = ctx.special_idx
    p_prod = 1
    for p in ctx.params.special_moduli:
        p_prod *= p
    half = p_prod // 2
    x_p = ctx.intt(np.ascontiguousarray(x[:, nq:]), sp)
    x_p = ctx.add_row_scalars(x_p, np.broadcast_to(ctx.residues_of(half, sp), x_p.shape[:-1]), sp)
    # exact conversion: a fast one is off by u·P (0 ≤ u < k), which the division turns into an
    # error u per coefficient — multiplied by s at decryption, ~k·√N: worth removing
    conv = ctx.base_convert(x_p, sp, idx_q, exact=True)
    minus_half = np.broadcast_to(ctx.residues_of(-half, idx_q), conv.shape[:-1])
    conv = ctx.ntt(ctx.add_row_scalars(conv, minus_half, idx_q), idx_q)  # coefficient-wise −⌊P/2⌋
    p_inv = np.array([pow(p_prod, -1, int(ctx.primes[i])) for i in idx_q], dtype=np.int64)
    diff = ctx.sub(np.ascontiguousarray(x[:, :nq]), conv, idx_q)
    return ctx.mul_row_scalars(diff, np.broadcast_to(p_inv, diff.shape[:-1]), idx_q)
