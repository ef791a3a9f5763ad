"""Encoding, encryption and decryption of whole batches of vectors.

Public-key encryption of m: (c0, c1) = (⌊(b·u + e0)/P⌉ + m, ⌊(a·u + e1)/P⌉) computed over
Q_ℓ·P, with u ternary and e0, e1 Gaussian, where (b, a) = (−a·s + e, a) is the public key; so
c0 + c1·s = m + (e·u + e0 + e1·s)/P + rounding: the division by the special modulus P leaves
a fresh noise of a few units instead of ~σ·√N (SEAL does the same).
Secret-key encryption: (c0, c1) = (−a·s + e + m, a) with a uniform.
"""

from __future__ import annotations

import numpy as np

from hecnn.ckks.backend import to_numpy
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import PublicKey, SecretKey
from hecnn.ckks.keyswitch import mod_down
from hecnn.ckks.rns import centered_to_float
from hecnn.ckks.sampling import Prng
from hecnn.errors import ParameterError, ScaleError, ShapeError


def encode(ctx: CkksContext, values: np.ndarray, scale: float, level: int) -> np.ndarray:
    """Real vectors (B, ≤ slots) → NTT-form plaintexts (B, level+1, N) at ``scale``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ShapeError(f"expected a (batch, slots) array of values, got shape {v.shape}")
    coeffs = np.round(ctx.encoder.embed(v) * scale)
    if not np.all(np.isfinite(coeffs)):
        raise ScaleError("encoded values overflow: reduce the scale or the values")
    idx = ctx.data_idx(level)
    pt = ctx.reduce_int(coeffs, idx)
    return ctx.ntt(pt, idx)


def _check_params(ctx: CkksContext, key) -> None:
    if key.params != ctx.params:
        raise ParameterError(f"{type(key).__name__} belongs to a different parameter set")


def encrypt(
    ctx: CkksContext,
    values: np.ndarray,
    key: PublicKey | SecretKey,
    *,
    scale: float | None = None,
    level: int | None = None,
    prng: Prng | None = None,
) -> CiphertextBatch:
    """Encrypt each row of ``values`` (B, ≤ N/2 real slots) into one ciphertext."""
    _check_params(ctx, key)
    scale = ctx.params.scale if scale is None else float(scale)
    level = ctx.params.max_level if level is None else level
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    prng = prng if prng is not None else Prng()
    idx = ctx.data_idx(level)
    m = encode(ctx, v, scale, level)
    b = v.shape[0]
    n = ctx.n
    small = lambda poly: ctx.ntt(ctx.reduce_int(poly, idx), idx)  # noqa: E731
    out = np.empty((b, 2, len(idx), n), dtype=np.int32)
    if isinstance(key, PublicKey):
        qp = ctx.qp_idx(level)
        key_limbs = np.concatenate([idx, ctx.special_idx])
        pk = to_numpy(key.data)  # encryption runs on the CPU whatever the backend
        pk_b = np.ascontiguousarray(pk[0, key_limbs])
        pk_a = np.ascontiguousarray(pk[1, key_limbs])

        def small_qp(poly: np.ndarray) -> np.ndarray:
            return ctx.ntt(ctx.reduce_int(poly, qp), qp)

        u = small_qp(prng.ternary((b, n)))
        c0 = ctx.add(_mul_b(ctx, u, pk_b, qp), small_qp(prng.gaussian((b, n))), qp)
        c1 = ctx.add(_mul_b(ctx, u, pk_a, qp), small_qp(prng.gaussian((b, n))), qp)
        c0 = ctx.add(mod_down(ctx, c0, level), m, idx)
        c1 = mod_down(ctx, c1, level)
    elif isinstance(key, SecretKey):
        s = ctx.ntt(ctx.reduce_int(key.coeffs, idx), idx)
        a = np.stack([prng.uniform_mod(int(ctx.primes[i]), (b, n)) for i in idx], axis=1)
        a = np.ascontiguousarray(a, dtype=np.int32)
        e = small(prng.gaussian((b, n)))
        c0 = ctx.add(ctx.sub(e, _mul_b(ctx, a, s, idx), idx), m, idx)
        c1 = a
    else:
        raise ParameterError(f"encryption needs a PublicKey or SecretKey, got {type(key).__name__}")
    out[:, 0], out[:, 1] = c0, c1
    return CiphertextBatch(ctx, out, scale)


def _mul_b(ctx: CkksContext, a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a (P, limbs, N) · b (limbs, N) broadcast over P."""
    return ctx.mul_broadcast(a, b, idx)


def decrypt_raw(ctx: CkksContext, batch: CiphertextBatch, sk: SecretKey) -> np.ndarray:
    """c0 + c1·s (+ c2·s²) as centered coefficients (B, N) float64 (not divided by the scale)."""
    _check_params(ctx, sk)
    if batch.params.fingerprint != ctx.params.fingerprint:
        raise ParameterError("ciphertext belongs to a different parameter set")
    idx = batch.idx
    s = ctx.ntt(ctx.reduce_int(sk.coeffs, idx), idx)
    d = to_numpy(batch.data)  # decryption runs on the CPU whatever the backend
    acc = np.ascontiguousarray(d[:, batch.components - 1])
    for c in range(batch.components - 2, -1, -1):  # Horner in s: ((c2·s) + c1)·s + c0
        acc = ctx.add(_mul_b(ctx, acc, s, idx), np.ascontiguousarray(d[:, c]), idx)
    ctx.intt(acc, idx)
    return centered_to_float(acc, [int(ctx.primes[i]) for i in idx], check_overflow=True)


def decrypt(
    ctx: CkksContext, batch: CiphertextBatch, sk: SecretKey, *, slots: int | None = None
) -> np.ndarray:
    """Decrypt and decode: (B, slots) real values."""
    coeffs = decrypt_raw(ctx, batch, sk) / batch.scale
    return ctx.encoder.project(coeffs, slots).real
