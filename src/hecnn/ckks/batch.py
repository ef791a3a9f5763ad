"""``CiphertextBatch``: many CKKS ciphertexts as one integer array.

``data`` has shape (ciphertexts, components, limbs, N): residues in NTT form of the components
(c0, c1[, c2]) of each ciphertext modulo q_0..q_ℓ, where ℓ = ``level``. All ciphertexts of a batch
share level and scale, so every homomorphic operation is a handful of vectorized array operations
over the whole batch. Decryption: m = c0 + c1·s (+ c2·s²) mod Q_ℓ, value = m/scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hecnn.ckks import kernels
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys, SwitchingKey
from hecnn.ckks.keyswitch import decompose, key_switch, switch_decomposed
from hecnn.errors import LevelError, ParameterError, ScaleError, ShapeError

#: Relative scale mismatch tolerated when adding (scales differ by rescale rounding only).
SCALE_RTOL = 1e-9
#: Most components a ciphertext may carry: (c0, …, c4) decrypts as Σ c_i·s^i. Products of
#: unrelinearized ciphertexts grow by one component per factor component; the compiler lets
#: them grow (saving key switches) up to this bound, and the client decrypts with s², s³, s⁴.
MAX_COMPONENTS = 5
#: ciphertexts key-switched together by one thread: their temporaries (a few MB) stay in cache
KEYSWITCH_CHUNK = 4


@dataclass(eq=False)
class CiphertextBatch:
    """A batch of ciphertexts sharing level and scale. Values are immutable by convention."""

    ctx: CkksContext
    data: np.ndarray
    scale: float

    def __new__(cls, ctx: CkksContext | None = None, data=None, scale=None):
        # the one backend dispatch point: a context on another array backend (hecnn.ckks.backend)
        # builds that backend's batch type, with the same API
        if cls is CiphertextBatch and getattr(ctx, "backend_name", "numpy") != "numpy":
            cls = ctx.backend.batch_class
        return super().__new__(cls)

    def __post_init__(self) -> None:
        d = self.data
        if not isinstance(d, np.ndarray) or d.dtype != np.int32 or d.ndim != 4:
            raise ShapeError("ciphertext data must be an int32 array (cts, comps, limbs, N)")
        if not 2 <= d.shape[1] <= MAX_COMPONENTS:
            raise ShapeError(f"a ciphertext has 2 to {MAX_COMPONENTS} components, got {d.shape[1]}")
        if d.shape[3] != self.ctx.n:
            raise ShapeError(f"ring degree {d.shape[3]} does not match N={self.ctx.n}")
        if not 1 <= d.shape[2] <= self.ctx.num_data:
            raise ShapeError(f"{d.shape[2]} limbs outside [1, {self.ctx.num_data}]")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ScaleError(f"invalid scale {self.scale}")
        log_q = sum(math.log2(float(q)) for q in self.ctx.primes[: d.shape[2]])
        if math.log2(self.scale) > log_q - 2:
            raise ScaleError(
                f"scale 2^{math.log2(self.scale):.1f} leaves no room in the modulus "
                f"2^{log_q:.1f} at level {d.shape[2] - 1}: rescale first, or use more levels"
            )

    # -- metadata -----------------------------------------------------------------------------
    @property
    def level(self) -> int:
        return self.data.shape[2] - 1

    @property
    def components(self) -> int:
        return self.data.shape[1]

    @property
    def params(self):
        return self.ctx.params

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        return (
            f"CiphertextBatch({len(self)} cts, {self.components} comps, level {self.level}, "
            f"scale 2^{math.log2(self.scale):.2f})"
        )

    @property
    def idx(self) -> np.ndarray:
        return self.ctx.data_idx(self.level)

    def _like(self, data: np.ndarray, scale: float | None = None) -> CiphertextBatch:
        return CiphertextBatch(self.ctx, data, self.scale if scale is None else scale)

    # -- slicing and stacking -----------------------------------------------------------------
    def __getitem__(self, item) -> CiphertextBatch:
        if isinstance(item, (int, np.integer)):
            item = slice(item, item + 1 if item != -1 else None)
        return self._like(np.ascontiguousarray(self.data[item]))

    @staticmethod
    def stack(batches: Sequence[CiphertextBatch]) -> CiphertextBatch:
        if not batches:
            raise ShapeError("cannot stack an empty list of batches")
        first = batches[0]
        if type(first) is not CiphertextBatch:  # another array backend stacks its own arrays
            return type(first).stack(batches)
        lvl = min(b.level for b in batches)
        comps = max(b.components for b in batches)
        parts = []
        for b in batches:
            b._check_compatible(first, same_scale=True)
            b = b.drop_to(lvl)
            parts.append(_pad_components(b.data, comps))
        return first._like(np.ascontiguousarray(np.concatenate(parts)), first.scale)

    # -- checks -------------------------------------------------------------------------------
    def _check_compatible(self, other: CiphertextBatch, *, same_scale: bool) -> None:
        if not isinstance(other, CiphertextBatch):
            raise ParameterError(f"expected a CiphertextBatch, got {type(other).__name__}")
        if other.params.fingerprint != self.params.fingerprint:
            raise ParameterError("ciphertexts belong to different parameter sets")
        if same_scale and not math.isclose(self.scale, other.scale, rel_tol=SCALE_RTOL):
            raise ScaleError(
                f"scales differ: 2^{math.log2(self.scale):.4f} vs 2^{math.log2(other.scale):.4f}; "
                "rescale or multiply by a constant to align them"
            )

    def _aligned(self, other: CiphertextBatch) -> tuple[CiphertextBatch, CiphertextBatch]:
        """Bring two batches to a common level (drop the higher) and component count."""
        self._check_compatible(other, same_scale=True)
        if len(other) not in (1, len(self)) and len(self) != 1:
            raise ShapeError(f"batch sizes {len(self)} and {len(other)} do not broadcast")
        lvl = min(self.level, other.level)
        a, b = self.drop_to(lvl), other.drop_to(lvl)
        comps = max(a.components, b.components)
        return a._like(_pad_components(a.data, comps)), b._like(_pad_components(b.data, comps))

    # -- additive operations ------------------------------------------------------------------
    def __add__(self, other: CiphertextBatch) -> CiphertextBatch:
        if self.components != other.components and len(self) == len(other):
            return self._add_uneven(other)
        a, b = self._aligned(other)
        x, y = np.broadcast_arrays(a.data, b.data)
        return a._like(self.ctx.add(np.ascontiguousarray(x), np.ascontiguousarray(y), a.idx))

    def _add_uneven(self, other: CiphertextBatch) -> CiphertextBatch:
        """Sum of batches with different component counts (e.g. x² + c·x before a rescale) in
        one pass: the longer one's extra components are copied, not added to padded zeros."""
        self._check_compatible(other, same_scale=True)
        lvl = min(self.level, other.level)
        long, short = (self, other) if self.components > other.components else (other, self)
        long, short = long.drop_to(lvl), short.drop_to(lvl)
        b, cl, limbs = len(long), long.components, lvl + 1
        cs = short.components
        # row (i, c, l) of the long batch meets row (i, c, l) of the short one for c < cs
        i, c, l_ = np.meshgrid(np.arange(b), np.arange(cl), np.arange(limbs), indexing="ij")
        b_row = np.where(c < cs, (i * cs + np.minimum(c, cs - 1)) * limbs + l_, -1)
        return long._like(self.ctx.add_rows(long.data, short.data, b_row.reshape(-1), long.idx))

    def __sub__(self, other: CiphertextBatch) -> CiphertextBatch:
        a, b = self._aligned(other)
        x, y = np.broadcast_arrays(a.data, b.data)
        return a._like(self.ctx.sub(np.ascontiguousarray(x), np.ascontiguousarray(y), a.idx))

    def __neg__(self) -> CiphertextBatch:
        return self._like(self.ctx.neg(self.data, self.idx))

    def add_const(self, values: float | np.ndarray) -> CiphertextBatch:
        """Add a real constant (one per ciphertext, or one for all) to every slot.

        The constant polynomial c·Δ has the same value c·Δ at every NTT evaluation point, so it is
        added to c0 limb-wise with no transform.
        """
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(self),))
        res = self._encode_constants(np.round(v * self.scale))  # (B, limbs)
        # one pass over every row: c0's rows get the constant, the other components add 0
        per_row = np.zeros((len(self), self.components, res.shape[1]), dtype=np.int64)
        per_row[:, 0] = res
        return self._like(self.ctx.add_row_scalars(self.data, per_row, self.idx))

    def add_const_in_place(self, values: float | np.ndarray) -> CiphertextBatch:
        """:meth:`add_const` written into this batch's own array (returned for chaining).

        Only for a batch its caller has just computed and holds alone (a layer's fresh sums):
        it saves a new array the size of the batch — whose first touch costs a page fault per
        4 KiB — and a pass over the components a constant does not change. Bit for bit what
        :meth:`add_const` gives."""
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(self),))
        if type(self) is not CiphertextBatch or not self.data.flags.c_contiguous:
            return self.add_const(v)  # another array backend, or a view: a new batch
        if not self.data.flags.writeable:
            raise ParameterError(
                "add_const_in_place needs a writable batch (a file-mapped one is not)"
            )
        res = np.ascontiguousarray(self._encode_constants(np.round(v * self.scale)))
        limb_primes = np.ascontiguousarray(self.ctx.primes[self.idx], dtype=np.int64)
        self.ctx.parallel(
            len(self),
            lambda lo, hi: kernels.add_c0_constants(self.data, res, lo, hi, limb_primes),
            work=self.data[:, 0].size,
        )
        return self

    def _encode_constants(self, enc: np.ndarray) -> np.ndarray:
        """Residues (B, limbs) of integer-valued floats (exact beyond 2^63 too: see reduce_int)."""
        if not np.all(np.isfinite(enc)):
            raise ScaleError("constant is not finite at this scale")
        return self.ctx.reduce_int(enc[:, None], self.idx)[:, :, 0]

    def add_plain(self, plain: np.ndarray) -> CiphertextBatch:
        """Add per-slot plaintext vectors: ``plain`` (B or 1, ≤ slots) real values."""
        from hecnn.ckks.encryption import encode

        p = np.atleast_2d(np.asarray(plain, dtype=np.float64))
        pt = encode(self.ctx, p, self.scale, self.level)  # (B', limbs, N)
        out = self.data.copy()
        c0, pt_b = np.broadcast_arrays(out[:, 0], pt)
        out[:, 0] = self.ctx.add(np.ascontiguousarray(c0), np.ascontiguousarray(pt_b), self.idx)
        return self._like(out)

    # -- multiplicative operations ------------------------------------------------------------
    def mul_scalar(self, values: float | np.ndarray, scale: float | None = None) -> CiphertextBatch:
        """Multiply ciphertext i by real ``values[i]`` (or one value for all).

        The scalar is encoded as the integer round(v·Δ_w) with Δ_w = ``scale`` (default: the last
        prime q_ℓ, so that a following :meth:`rescale` restores the current scale exactly).
        """
        sw = float(self.ctx.primes[self.level]) if scale is None else float(scale)
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(self),))
        enc = np.round(v * sw)
        res = self.ctx.reduce_int(enc[:, None], self.idx)[:, :, 0]  # (B, limbs)
        per_row = np.broadcast_to(res[:, None, :], self.data.shape[:3])
        return self._like(self.ctx.mul_row_scalars(self.data, per_row, self.idx), self.scale * sw)

    def mul_plain(self, plain: np.ndarray, scale: float | None = None) -> CiphertextBatch:
        """Multiply slot-wise by plaintext vectors ``plain`` (B or 1, ≤ slots), encoded at Δ_w."""
        from hecnn.ckks.encryption import encode

        sw = float(self.ctx.primes[self.level]) if scale is None else float(scale)
        p = np.atleast_2d(np.asarray(plain, dtype=np.float64))
        pt = encode(self.ctx, p, sw, self.level)[:, None]  # (B', 1, limbs, N)
        x, y = np.broadcast_arrays(self.data, pt)
        out = self.ctx.mul(np.ascontiguousarray(x), np.ascontiguousarray(y), self.idx)
        return self._like(out, self.scale * sw)

    def mul(self, other: CiphertextBatch) -> CiphertextBatch:
        """Tensor product: (a_0..a_m)⊗(b_0..b_n) → c_k = Σ_{i+j=k} a_i·b_j (m+n+1 components).

        Decrypting c with powers of s gives (Σ a_i s^i)(Σ b_j s^j), the product of the messages.
        Two fresh ciphertexts give the usual three components (c0d0, c0d1+c1d0, c1d1).
        """
        if not isinstance(other, CiphertextBatch):
            raise ParameterError(f"expected a CiphertextBatch, got {type(other).__name__}")
        if other.params.fingerprint != self.params.fingerprint:
            raise ParameterError("ciphertexts belong to different parameter sets")
        comps = self.components + other.components - 1
        if comps > MAX_COMPONENTS:
            raise ParameterError(
                f"the product would have {comps} components (at most {MAX_COMPONENTS}): "
                "relinearize a factor first"
            )
        lvl = min(self.level, other.level)
        a, b = self.drop_to(lvl), other.drop_to(lvl)
        rows = max(len(a), len(b))
        if len(a) not in (1, rows) or len(b) not in (1, rows):
            raise ShapeError(f"batch sizes {len(a)} and {len(b)} do not broadcast")
        ctx, idx = self.ctx, a.idx
        shape = (rows, *a.data.shape[2:])
        ac = [
            np.ascontiguousarray(np.broadcast_to(a.data[:, i], shape)) for i in range(a.components)
        ]
        bc = [
            np.ascontiguousarray(np.broadcast_to(b.data[:, j], shape)) for j in range(b.components)
        ]
        out = np.empty((rows, comps, *a.data.shape[2:]), dtype=np.int32)
        for k in range(comps):
            pairs = [(i, k - i) for i in range(a.components) if 0 <= k - i < b.components]
            acc = ctx.mul(ac[pairs[0][0]], bc[pairs[0][1]], idx)
            for i, j in pairs[1:]:
                ctx.mul_add(ac[i], bc[j], acc, idx)
            out[:, k] = acc
        return CiphertextBatch(ctx, out, a.scale * b.scale)

    def square(self) -> CiphertextBatch:
        """c_k = Σ_{i+j=k} a_i·a_j, each cross product computed once and doubled:
        (c0, c1)² = (c0², 2·c0·c1, c1²)."""
        comps = 2 * self.components - 1
        if comps > MAX_COMPONENTS:
            raise ParameterError(
                f"the square would have {comps} components (at most {MAX_COMPONENTS}): "
                "relinearize first"
            )
        ctx, idx = self.ctx, self.idx
        if self.components == 2 and self.data.flags.c_contiguous:  # the common case: one pass
            out = np.empty((len(self), 3, *self.data.shape[2:]), dtype=np.int32)
            limb_primes = np.ascontiguousarray(ctx.primes[idx], dtype=np.int64)
            ctx.parallel(
                len(self),
                lambda lo, hi: kernels.square2_mod(self.data, out, lo, hi, limb_primes),
                work=out.size,
            )
            return self._like(out, self.scale * self.scale)
        ac = [np.ascontiguousarray(self.data[:, i]) for i in range(self.components)]
        out = np.empty((len(self), comps, *ac[0].shape[1:]), dtype=np.int32)
        for k in range(comps):
            cross = [(i, k - i) for i in range(self.components) if i < k - i < self.components]
            acc = None
            if cross:
                acc = ctx.mul(ac[cross[0][0]], ac[cross[0][1]], idx)
                for i, j in cross[1:]:
                    ctx.mul_add(ac[i], ac[j], acc, idx)
                acc = ctx.add(acc, acc, idx)
            if k % 2 == 0:
                d = ac[k // 2]
                if acc is None:
                    acc = ctx.mul(d, d, idx)
                else:
                    ctx.mul_add(d, d, acc, idx)
            out[:, k] = acc
        return self._like(out, self.scale * self.scale)

    def square_plus_scaled(self, values: float | np.ndarray) -> CiphertextBatch:
        """x² + v·x with v (one per ciphertext) encoded at x's scale, so both terms share the
        scale x.scale² and one rescale serves the sum (a batch-packed x² + c·x).

        Equal to ``self.square() + self.mul_scalar(values, scale=self.scale)`` bit for bit; a
        2-component batch is done in one pass over memory."""
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(self),))
        fused = type(self) is CiphertextBatch and self.components == 2  # numpy arrays only
        if not fused or not self.data.flags.c_contiguous:
            return self.square() + self.mul_scalar(v, scale=self.scale)
        enc = np.round(v * self.scale)
        w = np.ascontiguousarray(self.ctx.reduce_int(enc[:, None], self.idx)[:, :, 0])
        out = np.empty((len(self), 3, *self.data.shape[2:]), dtype=np.int32)
        limb_primes = np.ascontiguousarray(self.ctx.primes[self.idx], dtype=np.int64)
        self.ctx.parallel(
            len(self),
            lambda lo, hi: kernels.square2_linear_mod(self.data, w, out, lo, hi, limb_primes),
            work=out.size,
        )
        return self._like(out, self.scale * self.scale)

    def _relin_key(self, keys: EvaluationKeys | SwitchingKey) -> SwitchingKey:
        """The s² → s key, after checking this batch has the 3 components it can switch
        (shared by every array backend)."""
        if self.components > 3:
            raise ParameterError(
                f"only 3-component ciphertexts can be relinearized (key for s²), got "
                f"{self.components}: relinearize before the product that made it"
            )
        return keys.relin_key() if isinstance(keys, EvaluationKeys) else keys

    def relinearize(self, keys: EvaluationKeys | SwitchingKey) -> CiphertextBatch:
        """(c0, c1, c2) → (c0, c1) + KeySwitch_{s²→s}(c2)."""
        if self.components == 2:
            return self
        rk = self._relin_key(keys)
        ctx, idx, lvl = self.ctx, self.idx, self.level
        out = np.empty((len(self), 2, *self.data.shape[2:]), dtype=np.int32)

        def part(lo: int, hi: int) -> None:
            d = self.data[lo:hi]
            k0, k1 = key_switch(ctx, np.ascontiguousarray(d[:, 2]), lvl, rk)
            out[lo:hi, 0] = ctx.add(np.ascontiguousarray(d[:, 0]), k0, idx)
            out[lo:hi, 1] = ctx.add(np.ascontiguousarray(d[:, 1]), k1, idx)

        ctx.for_each_chunk(len(self), KEYSWITCH_CHUNK, part)
        return self._like(out)

    def rotate(self, steps: int, keys: EvaluationKeys) -> CiphertextBatch:
        """Rotate slots left by ``steps``: automorphism X ↦ X^g, g = 5^steps, then key switch."""
        if self.components != 2:
            raise ParameterError("relinearize before rotating")
        from hecnn.ckks.encoder import galois_element

        g = galois_element(self.ctx.n, steps)
        if g == 1:
            return self
        gk = keys.galois_key(g, steps)
        perm = self.ctx.automorphism_perm(g)
        rot = np.ascontiguousarray(self.data[:, :, :, perm])
        k0, k1 = key_switch(self.ctx, np.ascontiguousarray(rot[:, 1]), self.level, gk)
        out = np.empty_like(rot)
        out[:, 0] = self.ctx.add(np.ascontiguousarray(rot[:, 0]), k0, self.idx)
        out[:, 1] = k1
        return self._like(out)

    def rotate_hoisted(
        self, steps: Sequence[int], keys: EvaluationKeys
    ) -> dict[int, CiphertextBatch]:
        """Rotations of the same ciphertexts by several ``steps`` with one decomposition.

        A rotation is σ_g then a key switch of σ_g(c1); the key switch's ModUp (inverse NTT,
        base conversion, NTT of every digit) depends on c1 only, and σ_g commutes with it, so
        it is done once and each step pays only a permutation, the key product and ModDown
        (hoisting, Halevi–Shoup 2018). Returns {step: rotated batch}; step 0 is the input.
        """
        if self.components != 2:
            raise ParameterError("relinearize before rotating")
        from hecnn.ckks.encoder import galois_element

        out: dict[int, CiphertextBatch] = {}
        todo = []
        for r in dict.fromkeys(int(s) for s in steps):
            if galois_element(self.ctx.n, r) == 1:
                out[r] = self
            else:
                todo.append(r)
        if not todo:
            return out
        keys_g = {r: keys.galois_key(galois_element(self.ctx.n, r), r) for r in todo}
        exts = decompose(self.ctx, np.ascontiguousarray(self.data[:, 1]), self.level)
        perms = {r: self.ctx.automorphism_perm(galois_element(self.ctx.n, r)) for r in todo}

        def step(lo: int, hi: int) -> None:  # one step per pool thread, its kernels inline
            for r in todo[lo:hi]:
                k0, k1 = switch_decomposed(self.ctx, exts, self.level, keys_g[r], perms[r])
                res = np.empty_like(self.data)
                c0 = np.ascontiguousarray(self.data[:, 0][..., perms[r]])
                res[:, 0] = self.ctx.add(c0, k0, self.idx)
                res[:, 1] = k1
                out[r] = self._like(res)

        self.ctx.for_each_chunk(len(todo), 1, step)
        return out

    # -- level management ---------------------------------------------------------------------
    def rescale(self) -> CiphertextBatch:
        """Divide by the last prime q_ℓ with rounding: c' = (c − [c]_{q_ℓ})·q_ℓ^{-1} mod q_i."""
        if self.level <= self.params.min_level:
            raise LevelError(
                f"cannot rescale at level {self.level}: the modulus chain is exhausted (the base "
                f"primes q_0..q_{self.params.min_level} hold the result); use more levels"
            )
        ctx = self.ctx
        lvl = self.level
        q_last = int(ctx.primes[lvl])
        low_idx = ctx.data_idx(lvl - 1)
        rows = self.data.reshape(-1, lvl + 1, ctx.n)  # (B·C, limbs, N), a view
        last = np.ascontiguousarray(rows[:, lvl])
        ctx.intt(last.reshape(-1, 1, ctx.n), np.array([lvl]))
        lifted = np.empty((rows.shape[0], lvl, ctx.n), dtype=np.int32)
        inv = np.array([pow(q_last, -1, int(ctx.primes[i])) for i in low_idx], dtype=np.int64)

        def lift(lo: int, hi: int) -> None:
            kernels.rescale_lift(last[lo:hi], np.int64(q_last), low_idx, ctx.primes, lifted[lo:hi])

        ctx.parallel(rows.shape[0], lift, work=lifted.size)
        ctx.ntt(lifted, low_idx)

        def combine(lo: int, hi: int) -> None:
            kernels.sub_mul_scalar_into(rows[lo:hi], lifted[lo:hi], inv, low_idx, ctx.primes)

        ctx.parallel(rows.shape[0], combine, work=lifted.size)  # in place
        shape = (*self.data.shape[:2], lvl, ctx.n)
        return self._like(lifted.reshape(shape), self.scale / q_last)

    def rescale_twice(self) -> CiphertextBatch:
        """Divide by the last two primes with one rounding: c' = (c − [c]_Q)·Q^{-1} mod q_i,
        Q = q_ℓ·q_{ℓ−1}, [c]_Q centered, from the CRT of the two dropped limbs.

        What an affine layer that owes its input's deferred rescale does: one inverse NTT of two
        limbs and one forward NTT of the ℓ−1 kept limbs, where two rescales in a row transform
        the ℓ limbs and then the ℓ−1 limbs. The result differs from ``rescale().rescale()`` by
        at most 1 per coefficient (one rounding instead of two)."""
        if type(self) is not CiphertextBatch:  # another array backend: two rescales
            return self.rescale().rescale()
        lvl = self.level
        if lvl - 2 < self.params.min_level:
            raise LevelError(
                f"cannot rescale twice at level {lvl}: the modulus chain is exhausted (the base "
                f"primes q_0..q_{self.params.min_level} hold the result); use more levels"
            )
        ctx = self.ctx
        q_hi, q_lo = int(ctx.primes[lvl]), int(ctx.primes[lvl - 1])
        low_idx = ctx.data_idx(lvl - 2)
        rows = self.data.reshape(-1, lvl + 1, ctx.n)
        top = np.ascontiguousarray(rows[:, lvl - 1 :])  # (B·C, 2, N)
        ctx.intt(top, np.array([lvl - 1, lvl]))
        lifted = np.empty((rows.shape[0], lvl - 1, ctx.n), dtype=np.int32)
        big = q_hi * q_lo
        inv = np.array([pow(big, -1, int(ctx.primes[i])) for i in low_idx], dtype=np.int64)
        q_lo_inv = np.int64(pow(q_lo, -1, q_hi))

        def lift(lo: int, hi: int) -> None:
            kernels.rescale_lift2(
                top[lo:hi],
                np.int64(q_lo),
                np.int64(q_hi),
                q_lo_inv,
                low_idx,
                ctx.primes,
                lifted[lo:hi],
            )

        ctx.parallel(rows.shape[0], lift, work=lifted.size)
        ctx.ntt(lifted, low_idx)

        def combine(lo: int, hi: int) -> None:
            kernels.sub_mul_scalar_into(rows[lo:hi], lifted[lo:hi], inv, low_idx, ctx.primes)

        ctx.parallel(rows.shape[0], combine, work=lifted.size)  # in place
        shape = (*self.data.shape[:2], lvl - 1, ctx.n)
        return self._like(lifted.reshape(shape), self.scale / q_hi / q_lo)

    def drop_to(self, level: int) -> CiphertextBatch:
        """Drop limbs above ``level`` (modulus switching without division; scale unchanged)."""
        if level == self.level:
            return self
        if not 0 <= level <= self.level:
            raise LevelError(f"cannot move from level {self.level} to level {level}")
        return self._like(np.ascontiguousarray(self.data[:, :, : level + 1]))

    def linear_combination(self, weights: np.ndarray, **kwargs) -> CiphertextBatch:
        """W @ batch (see :func:`hecnn.ckks.linear.linear_combination`)."""
        from hecnn.ckks.linear import linear_combination

        return linear_combination(self, weights, **kwargs)


def _pad_components(data: np.ndarray, comps: int) -> np.ndarray:
    """Append zero components up to ``comps``: (c0, c1) and (c0, c1, 0) decrypt alike."""
    if data.shape[1] >= comps:
        return data
    pad = np.zeros((data.shape[0], comps - data.shape[1], *data.shape[2:]), dtype=data.dtype)
    return np.concatenate([data, pad], axis=1)
