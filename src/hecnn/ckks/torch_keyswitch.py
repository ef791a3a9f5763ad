"""Hybrid (GHS) key switching and ModDown on torch tensors — :mod:`hecnn.ckks.keyswitch` on the
torch backend, step for step, so the residues are bit-identical:

1. ModUp: INTT of d; per digit D_j, an exact-representation base conversion of [d]_{D_j} to the
   other primes of Q_ℓ·P, NTT, and d's own NTT limbs on D_j.
2. Inner product with the key: Σ_j d̃_j·ksk_j over Q_ℓ·P (each product reduced, the dnum-term sum
   kept in int64 and reduced once).
3. ModDown: round(x/P) = (x + ⌊P/2⌋ − [x + ⌊P/2⌋]_P)/P with an exact base conversion of the P
   limbs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from hecnn.ckks.keys import SwitchingKey, digits
from hecnn.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from hecnn.ckks.torch_ring import TorchRing


def key_switch(
    ring: TorchRing, d: torch.Tensor, level: int, key: SwitchingKey
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, ℓ+1, N) NTT-form residues → (c0, c1), each (P, ℓ+1, N) int64 NTT form."""
    ctx = ring.ctx
    if key.params != ctx.params:
        raise ParameterError("switching key belongs to a different parameter set")
    idx_q = ctx.data_idx(level)
    idx_qp = ctx.qp_idx(level)
    nq, nqp = len(idx_q), len(idx_qp)
    if d.ndim != 3 or d.shape[1] != nq:
        raise ParameterError(
            f"key switch input shape {tuple(d.shape)} does not match level {level}"
        )
    lqp = ring.limbs(idx_qp)
    keyt = ring.key_limbs(key, level)  # (dnum, 2, nqp, N)
    d64 = d.to(torch.int64)
    d_coeff = ring.intt(d64.clone(), idx_q)
    acc = None
    for j, grp in enumerate(digits(ctx.params, level)):
        others = np.setdiff1d(np.arange(nqp), grp)
        conv = ring.base_convert(d_coeff[:, grp[0] : grp[-1] + 1], grp, idx_qp[others])
        ring.ntt(conv, idx_qp[others])
        ext = torch.empty((d.shape[0], nqp, ring.n), dtype=torch.int64, device=d.device)
        ext[:, ring.index(others)] = conv
        ext[:, grp[0] : grp[-1] + 1] = d64[:, grp[0] : grp[-1] + 1]
        del conv
        prods = ring.mul(ext.unsqueeze(0), keyt[j].unsqueeze(1), lqp)  # (2, P, nqp, N)
        acc = prods if acc is None else acc.add_(prods)  # ≤ dnum·q < 2^63
        del ext, prods
    q = lqp.q
    acc = torch.remainder(acc, q) if len(digits(ctx.params, level)) > 1 else acc
    return mod_down(ring, acc[0], level), mod_down(ring, acc[1], level)


def _mod_down_consts(ring: TorchRing, level: int):
    key = ("mod_down", level)
    c = ring._consts.get(key)
    if c is None:
        ctx = ring.ctx
        idx_q = ctx.data_idx(level)
        p_prod = 1
        for p in ctx.params.special_moduli:
            p_prod *= p
        half = p_prod // 2
        c = (
            ring.column(ctx.residues_of(half, ctx.special_idx)),
            ring.column(ctx.residues_of(-half, idx_q)),
            ring.column([pow(p_prod, -1, int(ctx.primes[i])) for i in idx_q]),
        )
        ring._consts[key] = c
    return c


def mod_down(ring: TorchRing, x: torch.Tensor, level: int) -> torch.Tensor:
    """(P, ℓ+1+k, N) int64 over Q_ℓ·P → round(x/P) over Q_ℓ, NTT form in and out (int64)."""
    ctx = ring.ctx
    idx_q = ctx.data_idx(level)
    nq = len(idx_q)
    sp = ctx.special_idx
    half_p, minus_half_q, p_inv = _mod_down_consts(ring, level)
    lq, lsp = ring.limbs(idx_q), ring.limbs(sp)
    x_p = ring.intt(x[:, nq:].contiguous(), sp)
    x_p = ring.add(x_p, half_p, lsp.q)
    conv = ring.base_convert(x_p, sp, idx_q, exact=True)
    conv = ring.ntt(ring.add(conv, minus_half_q, lq.q), idx_q)
    diff = ring.sub(x[:, :nq], conv, lq.q)
    return ring.mul(diff, p_inv, lq)
