"""Key material and its generation.

- :class:`SecretKey` — ternary s. It has its own type, never part of :class:`EvaluationKeys`
  nor of any server-bound serialized message.
- :class:`PublicKey` — (b, a) = (−a·s + e, a) over Q_L·P, NTT form (encryption computes in
  Q_ℓ·P and divides by P, which scales the encryption noise down by P, as SEAL does).
- :class:`SwitchingKey` — hybrid (GHS) key-switching key from s' to s over Q_L·P with the data
  primes grouped into digits D_j of ``alpha`` = #special primes each:
  ksk_j = (−a_j·s + e_j + P·g_j·s', a_j), g_j ≡ 1 mod D_j and ≡ 0 mod the other digits, so in
  RNS the term P·g_j·s' is [P]_{q_i}·s' on the limbs of D_j and 0 elsewhere.
  Relinearization uses s' = s²; a rotation by r uses s' = s(X^{5^r}).
- :class:`EvaluationKeys` — the public evaluation material a server needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.context import CkksContext
from hecnn.ckks.params import CkksParameters
from hecnn.ckks.sampling import Prng
from hecnn.errors import MissingKeyError, ParameterError


@dataclass(frozen=True, eq=False)
class SecretKey:
    """Ternary secret s ∈ {−1,0,1}^N (coefficients). Client-side only."""

    params: CkksParameters
    coeffs: np.ndarray

    def __repr__(self) -> str:  # never print key material
        return f"SecretKey(params={self.params.fingerprint})"


@dataclass(frozen=True, eq=False)
class PublicKey:
    params: CkksParameters
    data: np.ndarray  # (2, L+1+k, N) NTT form over Q_L·P


@dataclass(frozen=True, eq=False)
class SwitchingKey:
    """A key switching key over Q_ℓ·P for some level ℓ ≤ L: (digits of q_0..q_ℓ, 2,
    ℓ+1+k, N), NTT form. It switches ciphertexts at levels ≤ ℓ; a key for a lower level is the
    full key with the limbs and digits above ℓ left out — fewer bytes for a rotation that a
    plan only applies deep in the network."""

    params: CkksParameters
    data: np.ndarray  # (dnum, 2, ℓ+1+k, N) NTT form over Q_ℓ·P

    @property
    def dnum(self) -> int:
        return self.data.shape[0]

    @property
    def level(self) -> int:
        """The highest ciphertext level this key switches."""
        return self.data.shape[2] - len(self.params.special_moduli) - 1

    def limbs_for(self, level: int) -> np.ndarray:
        """Positions of Q_level·P's limbs in this key's limb axis."""
        if level > self.level:
            raise MissingKeyError(
                f"this switching key serves levels ≤ {self.level}, the ciphertext is at level "
                f"{level}: generate the key for that level"
            )
        k = len(self.params.special_moduli)
        return np.concatenate([np.arange(level + 1), self.level + 1 + np.arange(k)])


@dataclass(frozen=True, eq=False)
class EvaluationKeys:
    """Relinearization key and Galois keys (by Galois element g = 5^r mod 2N)."""

    params: CkksParameters
    relin: SwitchingKey | None = None
    galois: dict[int, SwitchingKey] = field(default_factory=dict)

    def relin_key(self) -> SwitchingKey:
        if self.relin is None:
            raise MissingKeyError("no relinearization key in these evaluation keys")
        return self.relin

    def galois_key(self, g: int, steps: int | None = None) -> SwitchingKey:
        if g not in self.galois:
            what = f"rotation by {steps}" if steps is not None else f"Galois element {g}"
            raise MissingKeyError(f"no Galois key for {what}; generate it with rotations=[...]")
        return self.galois[g]


def digits(params: CkksParameters, level: int) -> list[np.ndarray]:
    """Data-prime index groups D_j (restricted to q_0..q_level) for hybrid key switching."""
    alpha = len(params.special_moduli)
    return [
        np.arange(start, min(start + alpha, level + 1), dtype=np.int64)
        for start in range(0, level + 1, alpha)
    ]


class KeyGenerator:
    """Generates a secret key and the public/evaluation keys bound to it."""

    def __init__(self, ctx: CkksContext, prng: Prng | None = None) -> None:
        self.ctx = ctx
        self.prng = prng if prng is not None else Prng()

    def secret_key(self) -> SecretKey:
        return SecretKey(self.ctx.params, self.prng.ternary((self.ctx.n,)))

    def _ntt_of_small(self, poly: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Small signed polynomial(s) (…, N) → NTT-form residues (…, len(idx), N)."""
        r = self.ctx.reduce_int(poly, idx)
        return self.ctx.ntt(r, idx)

    def _uniform(self, idx: np.ndarray, lead: tuple[int, ...] = ()) -> np.ndarray:
        """Uniform residues; uniform in coefficient form ⇔ uniform in NTT form."""
        out = np.empty((*lead, len(idx), self.ctx.n), dtype=np.int32)
        for k, i in enumerate(idx):
            out[..., k, :] = self.prng.uniform_mod(int(self.ctx.primes[i]), (*lead, self.ctx.n))
        return out

    def _check(self, sk: SecretKey) -> None:
        if not isinstance(sk, SecretKey):
            raise ParameterError(f"expected a SecretKey, got {type(sk).__name__}")
        if sk.params != self.ctx.params:
            raise ParameterError("secret key belongs to a different parameter set")

    def public_key(self, sk: SecretKey) -> PublicKey:
        self._check(sk)
        idx = self.ctx.qp_idx(self.ctx.params.max_level)
        s = self._ntt_of_small(sk.coeffs, idx)
        a = self._uniform(idx)
        e = self._ntt_of_small(self.prng.gaussian((self.ctx.n,)), idx)
        b = self.ctx.sub(e, self.ctx.mul(a, s, idx), idx)
        return PublicKey(sk.params, np.stack([b, a]))

    def switching_key(
        self, sk: SecretKey, s_from_ntt_qp: np.ndarray, level: int | None = None
    ) -> SwitchingKey:
        """Key switching s' → s, with s' given in NTT form over all primes Q_L·P; the key
        serves ciphertexts up to ``level`` (default L) and holds only Q_level·P's limbs."""
        ctx = self.ctx
        level = ctx.params.max_level if level is None else int(level)
        if not 0 <= level <= ctx.params.max_level:
            raise ParameterError(f"key level {level} outside 0..{ctx.params.max_level}")
        idx = ctx.qp_idx(level)
        s = self._ntt_of_small(sk.coeffs, idx)
        p_prod = 1
        for p in ctx.params.special_moduli:
            p_prod *= p
        groups = digits(ctx.params, level)
        out = np.empty((len(groups), 2, len(idx), ctx.n), dtype=np.int32)
        for j, grp in enumerate(groups):
            a = self._uniform(idx)
            e = self._ntt_of_small(self.prng.gaussian((ctx.n,)), idx)
            b = ctx.sub(e, ctx.mul(a, s, idx), idx)
            p_mod = ctx.residues_of(p_prod, grp)
            term = ctx.mul_row_scalars(np.ascontiguousarray(s_from_ntt_qp[grp]), p_mod, grp)
            b[grp] = ctx.add(b[grp], term, grp)
            out[j, 0], out[j, 1] = b, a
        return SwitchingKey(sk.params, out)

    def relin_key(self, sk: SecretKey) -> SwitchingKey:
        self._check(sk)
        idx = self.ctx.qp_idx(self.ctx.params.max_level)
        s = self._ntt_of_small(sk.coeffs, idx)
        return self.switching_key(sk, self.ctx.mul(s, s, idx))

    def galois_key(self, sk: SecretKey, g: int, level: int | None = None) -> SwitchingKey:
        self._check(sk)
        idx = self.ctx.qp_idx(self.ctx.params.max_level)
        s = self._ntt_of_small(sk.coeffs, idx)
        perm = self.ctx.automorphism_perm(g)
        return self.switching_key(sk, np.ascontiguousarray(s[:, perm]), level)

    def evaluation_keys(
        self,
        sk: SecretKey,
        *,
        relin: bool = True,
        rotations: list[int] | tuple[int, ...] = (),
        rotation_levels: dict[int, int] | None = None,
    ) -> EvaluationKeys:
        """Relinearization key (all levels) and Galois keys for ``rotations``;
        ``rotation_levels[step]``: the highest level that rotation is applied at (default L),
        so its key holds only those limbs."""
        from hecnn.ckks.encoder import galois_element

        levels: dict[int, int] = {}
        for r in rotations:
            g = galois_element(self.ctx.n, r)
            if g != 1:
                lvl = self.ctx.params.max_level
                if rotation_levels is not None and r in rotation_levels:
                    lvl = rotation_levels[r]
                levels[g] = max(levels.get(g, -1), lvl)
        galois = {g: self.galois_key(sk, g, lvl) for g, lvl in levels.items()}
        return EvaluationKeys(sk.params, self.relin_key(sk) if relin else None, galois)
