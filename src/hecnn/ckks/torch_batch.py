"""``TorchCiphertextBatch``: a :class:`CiphertextBatch` whose residues are a torch tensor.

Same API, same maths, same bits as the numpy batch (see :mod:`hecnn.ckks.batch` for the formulas);
each method here is written with the exact primitives of :class:`~hecnn.ckks.torch_ring.TorchRing`.
Building ``CiphertextBatch(ctx, data, scale)`` on a torch context returns one of these; numpy
data is moved to the context's device on construction.

Work that widens residues to 64 bits (products, key switching, rescale) runs over the ciphertext
axis in chunks sized by :meth:`TorchRing.chunks`, so a layer larger than the free device memory
still runs, chunk after chunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from hecnn.ckks.backend import is_torch_tensor
from hecnn.ckks.batch import MAX_COMPONENTS, CiphertextBatch
from hecnn.ckks.keys import EvaluationKeys, SwitchingKey
from hecnn.ckks.torch_keyswitch import key_switch
from hecnn.errors import LevelError, ParameterError, ScaleError, ShapeError

#: int64/float64 temporaries a widened elementwise product keeps alive, per output element
_PRODUCT_TEMPS = 6
#: the same for one polynomial through key switching, per element of Q_ℓ·P
_KEYSWITCH_TEMPS = 16


def _check_layout(ctx, shape: tuple[int, ...], scale: float) -> None:
    """The shape and scale checks of ``CiphertextBatch.__post_init__``."""
    if len(shape) != 4:
        raise ShapeError("ciphertext data must be an int32 array (cts, comps, limbs, N)")
    if not 2 <= shape[1] <= MAX_COMPONENTS:
        raise ShapeError(f"a ciphertext has 2 to {MAX_COMPONENTS} components, got {shape[1]}")
    if shape[3] != ctx.n:
        raise ShapeError(f"ring degree {shape[3]} does not match N={ctx.n}")
    if not 1 <= shape[2] <= ctx.num_data:
        raise ShapeError(f"{shape[2]} limbs outside [1, {ctx.num_data}]")
    if not (scale > 0 and math.isfinite(scale)):
        raise ScaleError(f"invalid scale {scale}")
    log_q = sum(math.log2(float(q)) for q in ctx.primes[: shape[2]])
    if math.log2(scale) > log_q - 2:
        raise ScaleError(
            f"scale 2^{math.log2(scale):.1f} leaves no room in the modulus "
            f"2^{log_q:.1f} at level {shape[2] - 1}: rescale first, or use more levels"
        )


class TorchCiphertextBatch(CiphertextBatch):
    """A batch of ciphertexts on a torch device (``data``: int32 tensor (cts, comps, limbs, N))."""

    def __post_init__(self) -> None:
        ring = self.ctx.backend
        d = self.data
        if isinstance(d, np.ndarray):
            if d.dtype not in (np.int32, np.uint32):
                raise ShapeError("ciphertext data must be an int32 array (cts, comps, limbs, N)")
            _check_layout(self.ctx, d.shape, self.scale)
            d = ring.to_device(d)
        elif is_torch_tensor(d):
            if d.dtype != torch.int32:
                raise ShapeError(f"ciphertext data must be an int32 tensor, got {d.dtype}")
            if d.device != ring.device or not d.is_contiguous():
                d = d.to(ring.device).contiguous()
        else:
            raise ShapeError(
                f"ciphertext data must be an int32 array or tensor, got {type(d).__name__}"
            )
        self.data = d
        _check_layout(self.ctx, tuple(d.shape), self.scale)

    # -- helpers ------------------------------------------------------------------------------
    @property
    def ring(self):
        return self.ctx.backend

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", {self.ring.device})"

    def _lim(self):
        return self.ring.limbs(self.idx)

    def _chunked(self, count: int, bytes_per_item: int, fn) -> torch.Tensor:
        """fn(lo, hi) → tensor for items [lo, hi); results concatenated along axis 0."""
        spans = self.ring.chunks(count, bytes_per_item)
        with self.ring.threads_limited():
            if len(spans) == 1:
                return fn(0, count)
            out = None
            for lo, hi in spans:
                part = fn(lo, hi)
                if out is None:
                    shape = (count, *part.shape[1:])
                    out = torch.empty(shape, dtype=part.dtype, device=part.device)
                out[lo:hi] = part
                del part
            return out

    def _elem_bytes(self) -> int:
        """Bytes of widened temporaries per ciphertext in a product."""
        return _PRODUCT_TEMPS * 8 * 3 * self.data.shape[2] * self.ctx.n

    def _check_compatible(self, other: CiphertextBatch, *, same_scale: bool) -> None:
        super()._check_compatible(other, same_scale=same_scale)
        if not isinstance(other, TorchCiphertextBatch) or other.data.device != self.data.device:
            raise ParameterError(
                "the batches live on different array backends or devices: move one with "
                "hecnn.ckks.backend.to_backend"
            )

    # -- slicing and stacking -----------------------------------------------------------------
    def __getitem__(self, item) -> CiphertextBatch:
        if isinstance(item, (int, np.integer)):
            item = slice(item, item + 1 if item != -1 else None)
        if isinstance(item, slice) and (item.step or 1) > 0:
            return self._like(self.data[item].contiguous())
        rows = np.atleast_1d(np.arange(len(self))[item])  # numpy semantics: negative steps, lists
        return self._like(self.data.index_select(0, self.ring.index(rows)))

    @staticmethod
    def stack(batches: Sequence[CiphertextBatch]) -> CiphertextBatch:
        if not batches:
            raise ShapeError("cannot stack an empty list of batches")
        first = batches[0]
        lvl = min(b.level for b in batches)
        comps = max(b.components for b in batches)
        parts = []
        for b in batches:
            b._check_compatible(first, same_scale=True)
            b = b.drop_to(lvl)
            parts.append(_pad(b.data, comps))
        return first._like(torch.cat(parts), first.scale)

    def _aligned(self, other: CiphertextBatch) -> tuple[CiphertextBatch, CiphertextBatch]:
        self._check_compatible(other, same_scale=True)
        if len(other) not in (1, len(self)) and len(self) != 1:
            raise ShapeError(f"batch sizes {len(self)} and {len(other)} do not broadcast")
        lvl = min(self.level, other.level)
        a, b = self.drop_to(lvl), other.drop_to(lvl)
        comps = max(a.components, b.components)
        if a.components < comps:
            a = a._like(_pad(a.data, comps))
        if b.components < comps:
            b = b._like(_pad(b.data, comps))
        return a, b

    # -- additive operations ------------------------------------------------------------------
    def __add__(self, other: CiphertextBatch) -> CiphertextBatch:
        a, b = self._aligned(other)
        return a._like(self.ring.add(a.data, b.data, a._lim().q32))

    def __sub__(self, other: CiphertextBatch) -> CiphertextBatch:
        a, b = self._aligned(other)
        return a._like(self.ring.sub(a.data, b.data, a._lim().q32))

    def __neg__(self) -> CiphertextBatch:
        return self._like(self.ring.neg(self.data, self._lim().q32))

    def _row_residues(self, enc: np.ndarray) -> torch.Tensor:
        """Integers (B,) → their residues (B, limbs, 1) int64 on the device (reduced on the CPU,
        by the numpy path's own code)."""
        res = self.ctx.reduce_int(enc[:, None], self.idx)[:, :, 0]
        return self.ring.to_device(res, torch.int64).unsqueeze(-1)

    def add_const(self, values: float | np.ndarray) -> CiphertextBatch:
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(self),))
        res = self._row_residues(np.round(v * self.scale)).to(torch.int32)
        out = self.data.clone()
        out[:, 0] = self.ring.add(out[:, 0], res, self._lim().q32)
        return self._like(out)

    def add_plain(self, plain: np.ndarray) -> CiphertextBatch:
        from hecnn.ckks.encryption import encode

        p = np.atleast_2d(np.asarray(plain, dtype=np.float64))
        pt = self.ring.to_device(encode(self.ctx, p, self.scale, self.level))
        out = self.data.clone()
        out[:, 0] = self.ring.add(out[:, 0], pt, self._lim().q32)
        return self._like(out)

    # -- multiplicative operations ------------------------------------------------------------
    def mul_scalar(self, values: float | np.ndarray, scale: float | None = None) -> CiphertextBatch:
        sw = float(self.ctx.primes[self.level]) if scale is None else float(scale)
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(self),))
        res = self._row_residues(np.round(v * sw)).unsqueeze(1)  # (B, 1, limbs, 1)
        lim, d = self._lim(), self.data

        def part(lo: int, hi: int) -> torch.Tensor:
            return self.ring.mul(d[lo:hi], res[lo:hi], lim).to(torch.int32)

        return self._like(self._chunked(len(self), self._elem_bytes(), part), self.scale * sw)

    def mul_plain(self, plain: np.ndarray, scale: float | None = None) -> CiphertextBatch:
        from hecnn.ckks.encryption import encode

        sw = float(self.ctx.primes[self.level]) if scale is None else float(scale)
        p = np.atleast_2d(np.asarray(plain, dtype=np.float64))
        pt = self.ring.to_device(encode(self.ctx, p, sw, self.level)).unsqueeze(1)
        if pt.shape[0] not in (1, len(self)) and len(self) != 1:
            raise ShapeError(f"{pt.shape[0]} plaintexts for {len(self)} ciphertexts")
        d, lim = self.data, self._lim()
        if pt.shape[0] != 1 and len(self) == 1:
            d = d.expand(pt.shape[0], *d.shape[1:])

        def part(lo: int, hi: int) -> torch.Tensor:
            p_ = pt if pt.shape[0] == 1 else pt[lo:hi]
            return self.ring.mul(d[lo:hi], p_, lim).to(torch.int32)

        return self._like(self._chunked(d.shape[0], self._elem_bytes(), part), self.scale * sw)

    def mul(self, other: CiphertextBatch) -> CiphertextBatch:
        """Tensor product c_k = Σ_{i+j=k} a_i·b_j (see :meth:`CiphertextBatch.mul`)."""
        self._check_compatible(other, same_scale=False)
        comps = self.components + other.components - 1
        if comps > MAX_COMPONENTS:
            raise ParameterError(
                f"the product would have {comps} components (at most {MAX_COMPONENTS}): "
                "relinearize a factor first"
            )
        lvl = min(self.level, other.level)
        a, b = self.drop_to(lvl), other.drop_to(lvl)
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            raise ShapeError(f"batch sizes {len(a)} and {len(b)} do not broadcast")
        count = max(len(a), len(b))
        x = a.data.expand(count, *a.data.shape[1:])
        y = b.data.expand(count, *b.data.shape[1:])
        ring, lim = self.ring, a._lim()
        ca, cb = a.components, b.components

        def part(lo: int, hi: int) -> torch.Tensor:
            out = []
            for k in range(comps):
                pairs = [(i, k - i) for i in range(ca) if 0 <= k - i < cb]
                acc = ring.mul(x[lo:hi, pairs[0][0]], y[lo:hi, pairs[0][1]], lim)
                for i, j in pairs[1:]:
                    acc = ring.add(acc, ring.mul(x[lo:hi, i], y[lo:hi, j], lim), lim.q)
                out.append(acc)
            return torch.stack(out, 1).to(torch.int32)

        out = self._chunked(count, comps * a._elem_bytes() // 3, part)
        return CiphertextBatch(self.ctx, out, a.scale * b.scale)

    def square(self) -> CiphertextBatch:
        """c_k = Σ_{i+j=k} a_i·a_j with each cross product once, doubled: (c0², 2c0c1, c1²)."""
        c = self.components
        comps = 2 * c - 1
        if comps > MAX_COMPONENTS:
            raise ParameterError(
                f"the square would have {comps} components (at most {MAX_COMPONENTS}): "
                "relinearize first"
            )
        ring, lim, d = self.ring, self._lim(), self.data

        def part(lo: int, hi: int) -> torch.Tensor:
            out = []
            for k in range(comps):
                acc = None
                for i in range(c):
                    j = k - i
                    if i < j < c:
                        t = ring.mul(d[lo:hi, i], d[lo:hi, j], lim)
                        acc = t if acc is None else ring.add(acc, t, lim.q)
                if acc is not None:
                    acc = ring.add(acc, acc, lim.q)
                if k % 2 == 0:
                    t = ring.mul(d[lo:hi, k // 2], d[lo:hi, k // 2], lim)
                    acc = t if acc is None else ring.add(acc, t, lim.q)
                out.append(acc)
            return torch.stack(out, 1).to(torch.int32)

        return self._like(
            self._chunked(len(self), comps * self._elem_bytes() // 3, part), self.scale**2
        )

    def _ks_bytes(self) -> int:
        nqp = self.level + 1 + len(self.ctx.special_idx)
        return _KEYSWITCH_TEMPS * 8 * nqp * self.ctx.n

    def relinearize(self, keys: EvaluationKeys | SwitchingKey) -> CiphertextBatch:
        """(c0, c1, c2) → (c0, c1) + KeySwitch_{s²→s}(c2)."""
        if self.components == 2:
            return self
        rk = self._relin_key(keys)
        ring, lim, d, lvl = self.ring, self._lim(), self.data, self.level

        def part(lo: int, hi: int) -> torch.Tensor:
            k0, k1 = key_switch(ring, d[lo:hi, 2], lvl, rk)
            return torch.stack(
                [ring.add(d[lo:hi, 0], k0, lim.q), ring.add(d[lo:hi, 1], k1, lim.q)], 1
            ).to(torch.int32)

        return self._like(self._chunked(len(self), self._ks_bytes(), part))

    def rotate(self, steps: int, keys: EvaluationKeys) -> CiphertextBatch:
        """Rotate slots left by ``steps``: automorphism X ↦ X^g, g = 5^steps, then key switch."""
        if self.components != 2:
            raise ParameterError("relinearize before rotating")
        from hecnn.ckks.encoder import galois_element

        g = galois_element(self.ctx.n, steps)
        if g == 1:
            return self
        gk = keys.galois_key(g, steps)
        ring, lim, d, lvl = self.ring, self._lim(), self.data, self.level
        perm = ring.perm(g)

        def part(lo: int, hi: int) -> torch.Tensor:
            rot = d[lo:hi].index_select(3, perm)
            k0, k1 = key_switch(ring, rot[:, 1], lvl, gk)
            return torch.stack([ring.add(rot[:, 0], k0, lim.q), k1], 1).to(torch.int32)

        return self._like(self._chunked(len(self), self._ks_bytes(), part))

    # -- level management ---------------------------------------------------------------------
    def rescale(self) -> CiphertextBatch:
        """Divide by the last prime q_ℓ with rounding: c' = (c − [c]_{q_ℓ})·q_ℓ^{-1} mod q_i."""
        if self.level <= self.params.min_level:
            raise LevelError(
                f"cannot rescale at level {self.level}: the modulus chain is exhausted (the base "
                f"primes q_0..q_{self.params.min_level} hold the result); use more levels"
            )
        ctx, ring = self.ctx, self.ring
        lvl = self.level
        q_last = int(ctx.primes[lvl])
        low_idx = ctx.data_idx(lvl - 1)
        low = ring.limbs(low_idx)
        inv = ring.column([pow(q_last, -1, int(ctx.primes[i])) for i in low_idx])
        rows = self.data.view(-1, lvl + 1, ctx.n)

        def part(lo: int, hi: int) -> torch.Tensor:
            last = rows[lo:hi, lvl : lvl + 1].to(torch.int64).contiguous()
            ring.intt(last, [lvl])
            centered = torch.where(last > q_last >> 1, last - q_last, last).to(torch.float64)
            lifted = ring.fmod(centered, low.qf, low.qinv).to(torch.int64)  # (R, lvl, N)
            del last, centered
            ring.ntt(lifted, low_idx)
            diff = ring.sub(rows[lo:hi, :lvl], lifted, low.q)
            return ring.mul(diff, inv, low).to(torch.int32)

        per_row = _PRODUCT_TEMPS * 8 * lvl * ctx.n
        out = self._chunked(rows.shape[0], per_row, part)
        shape = (*self.data.shape[:2], lvl, ctx.n)
        return self._like(out.view(shape), self.scale / q_last)

    def drop_to(self, level: int) -> CiphertextBatch:
        """Drop limbs above ``level`` (modulus switching without division; scale unchanged)."""
        if level == self.level:
            return self
        if not 0 <= level <= self.level:
            raise LevelError(f"cannot move from level {self.level} to level {level}")
        return self._like(self.data[:, :, : level + 1].contiguous())

    def linear_combination(self, weights, **kwargs) -> CiphertextBatch:
        """W @ batch (see :func:`hecnn.ckks.torch_linear.linear_combination`)."""
        from hecnn.ckks.torch_linear import linear_combination

        return linear_combination(self, weights, **kwargs)

    def numpy(self) -> CiphertextBatch:
        """This batch on a numpy context of the same parameters (a host copy of the residues)."""
        from hecnn.ckks.context import CkksContext

        ctx = CkksContext(self.params, threads=self.ctx.threads)
        return CiphertextBatch(ctx, self.data.cpu().numpy(), self.scale)


def _pad(d: torch.Tensor, comps: int) -> torch.Tensor:
    """Append zero components up to ``comps`` (a 2-component ciphertext is (c0, c1, 0))."""
    if d.shape[1] >= comps:
        return d
    zeros = torch.zeros((d.shape[0], comps - d.shape[1], *d.shape[2:]), dtype=d.dtype)
    return torch.cat([d, zeros.to(d.device)], 1)
