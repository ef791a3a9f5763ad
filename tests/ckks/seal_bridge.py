"""Test-only bridge between hecnn's CKKS and Microsoft SEAL (seal-python), through SEAL's own
binary serialization format. Not shipped: it exists so SEAL can act as an independent oracle.

Wire format (SEAL 4.x, little endian, ``compr_mode_type.none``):

- ``SEALHeader`` (16 bytes): magic 0xA15E (u16), header size 0x10 (u8), version major, minor
  (u8, u8), compr_mode (u8), reserved (u16), total size in bytes including the header (u64).
- ``Ciphertext``: header; parms_id (4×u64); is_ntt_form (u8); size (u64, # polynomials);
  poly_modulus_degree (u64); coeff_modulus_size (u64); scale (f64); correction_factor (u64);
  then a ``DynArray<u64>`` laid out as (size, coeff_modulus_size, N).
- ``SecretKey`` = ``Plaintext``: header; parms_id (4×u64, non-zero ⇔ NTT form); coeff_count
  (u64); scale (f64); then a ``DynArray<u64>`` of (coeff_modulus_size, N) NTT-form residues.
- ``DynArray<u64>``: its own header; count (u64); count × u64.

NTT conventions are never assumed to agree: data crosses in coefficient form and SEAL itself
converts (``Evaluator.transform_to_ntt`` / ``transform_from_ntt``). SEAL's secret key is an
NTT-form polynomial over all primes *including* the special prime, which no data-level SEAL
ciphertext can hold; a helper SEAL context whose first data level is exactly our primes
q_0..q_L, P (its chain has one extra prime on top) performs those transforms.

Slot order differs: SEAL's CKKSEncoder puts slot i at ζ^{3^i} and its ``rotate_vector(r)`` is
X ↦ X^{3^r}, while hecnn uses ζ^{5^j} and X ↦ X^{5^r}. Both are valid;
:meth:`SealBridge.seal_to_ours_slots` maps SEAL's slot vector to ours (for real values it is a
permutation; odd SEAL slots sit at −5^j, i.e. hold the complex conjugate).
"""

from __future__ import annotations

import struct

import numpy as np
import seal

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import SecretKey
from hecnn.ckks.params import CkksParameters
from hecnn.ckks.primes import is_prime

MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
CT_META = struct.Struct("<4QBQQQdQ")  # parms_id, is_ntt, size, N, limbs, scale, correction
PT_META = struct.Struct("<4QQd")  # parms_id, coeff_count, scale


def _version() -> tuple[int, int]:
    major, minor = (int(x) for x in seal.__version__.split(".")[:2])
    return major, minor


def _header(body_len: int) -> bytes:
    major, minor = _version()
    return HEADER.pack(MAGIC, HEADER.size, major, minor, 0, 0, HEADER.size + body_len)


def _check_header(buf: bytes, off: int) -> int:
    """Validate a SEALHeader at ``off``; return the object's total size."""
    magic, hsize, major, _minor, compr, _res, size = HEADER.unpack_from(buf, off)
    if magic != MAGIC or hsize != HEADER.size or major != 4 or compr != 0:
        raise ValueError(f"unsupported SEAL header: magic={magic:#x} v{major} compr={compr}")
    return size


def _dynarray(values: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(values, dtype="<u8").reshape(-1)
    body = struct.pack("<Q", flat.size) + flat.tobytes()
    return _header(len(body)) + body


def _parse_dynarray(buf: bytes, off: int) -> np.ndarray:
    _check_header(buf, off)
    (count,) = struct.unpack_from("<Q", buf, off + HEADER.size)
    start = off + HEADER.size + 8
    return np.frombuffer(buf, dtype="<u8", count=count, offset=start).astype(np.int64)


def ciphertext_bytes(parms_id, data: np.ndarray, scale: float, *, ntt: bool) -> bytes:
    """Serialize residues ``data`` (components, limbs, N) as a SEAL Ciphertext."""
    size, limbs, n = data.shape
    meta = CT_META.pack(*parms_id, int(ntt), size, n, limbs, float(scale), 1)
    body = meta + _dynarray(data)
    return _header(len(body)) + body


def parse_ciphertext(buf: bytes) -> dict:
    """Parse SEAL Ciphertext bytes (uncompressed, not seeded) into metadata and residues."""
    total = _check_header(buf, 0)
    if total != len(buf):
        raise ValueError(f"header size {total} != buffer length {len(buf)}")
    *pid, ntt, size, n, limbs, scale, corr = CT_META.unpack_from(buf, HEADER.size)
    data = _parse_dynarray(buf, HEADER.size + CT_META.size)
    if data.size != size * limbs * n:
        raise ValueError("seeded or truncated ciphertext data (save with compr_mode none)")
    return dict(
        parms_id=pid,
        ntt=bool(ntt),
        scale=scale,
        correction_factor=corr,
        data=data.reshape(size, limbs, n),
    )


def secret_key_bytes(parms_id, data: np.ndarray) -> bytes:
    """Serialize NTT-form residues (limbs, N) as a SEAL SecretKey (a Plaintext)."""
    meta = PT_META.pack(*parms_id, data.size, 1.0)
    body = meta + _dynarray(data)
    return _header(len(body)) + body


def parse_secret_key(buf: bytes) -> tuple[list[int], np.ndarray]:
    _check_header(buf, 0)
    *pid, count, _scale = PT_META.unpack_from(buf, HEADER.size)
    data = _parse_dynarray(buf, HEADER.size + PT_META.size)
    if data.size != count:
        raise ValueError("secret key coefficient count mismatch")
    return pid, data


def _seal_context(n: int, primes: list[int]) -> seal.SEALContext:
    ep = seal.EncryptionParameters(seal.scheme_type.ckks)
    ep.set_poly_modulus_degree(n)
    ep.set_coeff_modulus([seal.Modulus(q) for q in primes])
    # test parameters (small N) are below SEAL's 128-bit table: disable its security check
    ctx = seal.SEALContext(ep, True, seal.sec_level_type.none)
    if not ctx.parameters_set():
        raise ValueError(f"SEAL rejected the parameters: {ctx.parameter_error_message()}")
    return ctx


class SealBridge:
    """One hecnn parameter set (exactly one special prime) mirrored as a SEAL context."""

    def __init__(self, params: CkksParameters) -> None:
        if len(params.special_moduli) != 1:
            raise ValueError("SEAL has exactly one special prime: use special_primes=1")
        self.params = params
        self.ctx = CkksContext(params)
        # residue dtype of hecnn's arrays (whatever the context produces: int64 or int32)
        self.dtype = self.ctx.reduce_int(np.zeros((1, params.n), np.int64), np.arange(1)).dtype
        n = params.n
        all_q = list(params.moduli) + list(params.special_moduli)
        self.seal_ctx = _seal_context(n, all_q)  # SEAL takes the last prime as its special prime
        self.evaluator = seal.Evaluator(self.seal_ctx)
        self.encoder = seal.CKKSEncoder(self.seal_ctx)
        # parms_id of each level ℓ (primes q_0..q_ℓ): SEAL's chain drops the last prime per step
        self.level_parms: dict[int, list[int]] = {}
        cd = self.seal_ctx.first_context_data()
        while cd is not None:
            self.level_parms[len(cd.parms().coeff_modulus()) - 1] = list(cd.parms_id())
            cd = cd.next_context_data()
        self.key_parms_id = list(self.seal_ctx.key_context_data().parms_id())
        # helper context whose first data level is q_0..q_L, P (for key-level NTT transforms)
        extra = 2**40 + 1  # any NTT-friendly prime distinct from ours
        while not (extra % (2 * n) == 1 and is_prime(extra)):
            extra += 2 * n
        self.helper_ctx = _seal_context(n, [*all_q, extra])
        self.helper_eval = seal.Evaluator(self.helper_ctx)
        self.helper_parms_id = list(self.helper_ctx.first_parms_id())
        self._slot_map = _slot_map(n)

    # -- ciphertexts --------------------------------------------------------------------------
    def to_seal(self, batch: CiphertextBatch, i: int = 0) -> seal.Ciphertext:
        """Ciphertext ``i`` of a batch → SEAL Ciphertext (same residues mod Q_ℓ, same scale)."""
        coeffs = self.ctx.intt(
            batch.data[i].copy(), batch.idx
        )  # (comps, limbs, N); intt is in place
        raw = ciphertext_bytes(self.level_parms[batch.level], coeffs, batch.scale, ntt=False)
        ct = self.seal_ctx.from_cipher_str(raw)
        self.evaluator.transform_to_ntt_inplace(ct)
        return ct

    def from_seal(self, ct: seal.Ciphertext) -> CiphertextBatch:
        """SEAL Ciphertext → a hecnn batch of one ciphertext."""
        ct = seal.Ciphertext(ct)
        if ct.is_ntt_form():
            self.evaluator.transform_from_ntt_inplace(ct)
        parsed = parse_ciphertext(ct.to_string(seal.compr_mode_type.none))
        data = np.ascontiguousarray(parsed["data"], dtype=self.dtype)
        level = data.shape[1] - 1
        if parsed["parms_id"] != self.level_parms[level]:
            raise ValueError("ciphertext parms_id does not match the level of its limb count")
        self.ctx.ntt(data, self.ctx.data_idx(level))
        return CiphertextBatch(self.ctx, data[None], parsed["scale"])

    # -- secret key ---------------------------------------------------------------------------
    def secret_key_to_seal(self, sk: SecretKey) -> seal.SecretKey:
        """hecnn ternary s → SEAL SecretKey (NTT form over q_0..q_L, P, by SEAL's own NTT)."""
        all_idx = np.arange(len(self.ctx.primes))
        s = self.ctx.reduce_int(np.asarray(sk.coeffs, dtype=np.int64), all_idx)  # (L+2, N)
        ct = self.helper_ctx.from_cipher_str(
            ciphertext_bytes(self.helper_parms_id, np.stack([s, s]), 1.0, ntt=False)
        )
        self.helper_eval.transform_to_ntt_inplace(ct)
        s_ntt = parse_ciphertext(ct.to_string(seal.compr_mode_type.none))["data"][0]
        return self.seal_ctx.from_secret_str(secret_key_bytes(self.key_parms_id, s_ntt))

    def secret_key_from_seal(self, sk: seal.SecretKey) -> SecretKey:
        """SEAL SecretKey → hecnn ternary SecretKey (via SEAL's inverse NTT)."""
        pid, data = parse_secret_key(sk.to_string())
        if pid != self.key_parms_id:
            raise ValueError("secret key is not at SEAL's key level")
        s_ntt = data.reshape(len(self.ctx.primes), self.params.n)
        ct = self.helper_ctx.from_cipher_str(
            ciphertext_bytes(self.helper_parms_id, np.stack([s_ntt, s_ntt]), 1.0, ntt=True)
        )
        self.helper_eval.transform_from_ntt_inplace(ct)
        s = parse_ciphertext(ct.to_string(seal.compr_mode_type.none))["data"][0]
        q = self.ctx.primes.astype(np.int64)[:, None]
        centered = np.where(s > q // 2, s - q, s)
        if not (np.all(centered == centered[0]) and np.all(np.abs(centered[0]) <= 1)):
            raise ValueError("SEAL secret key is not ternary / inconsistent across primes")
        return SecretKey(self.params, np.ascontiguousarray(centered[0]))

    # -- slots --------------------------------------------------------------------------------
    def seal_to_ours_slots(self, seal_values: np.ndarray) -> np.ndarray:
        """SEAL slot vector (order ζ^{3^i}) → hecnn slot vector (order ζ^{5^j})."""
        j, conj = self._slot_map
        v = np.asarray(seal_values)
        out = np.empty_like(v)
        out[j] = np.where(conj, np.conj(v), v)
        return out

    def ours_to_seal_slots(self, values: np.ndarray) -> np.ndarray:
        j, conj = self._slot_map
        v = np.asarray(values)
        return np.where(conj, np.conj(v[j]), v[j])

    def seal_decrypt(self, ct: seal.Ciphertext, sk: seal.SecretKey) -> np.ndarray:
        """Decrypt and decode with SEAL, returned in hecnn slot order (real parts)."""
        pt = seal.Decryptor(self.seal_ctx, sk).decrypt(ct)
        return self.seal_to_ours_slots(np.asarray(self.encoder.decode(pt))).real


def _slot_map(n: int) -> tuple[np.ndarray, np.ndarray]:
    """For SEAL slot i (root ζ^{3^i}): our slot j with 5^j ≡ ±3^i mod 2N, and whether it is −."""
    m, slots = 2 * n, n // 2
    pos5 = {}
    g = 1
    for j in range(slots):
        pos5[g] = j
        g = g * 5 % m
    j_of = np.empty(slots, dtype=np.int64)
    conj = np.zeros(slots, dtype=bool)
    g = 1
    for i in range(slots):
        if g in pos5:
            j_of[i] = pos5[g]
        else:
            j_of[i], conj[i] = pos5[m - g], True
        g = g * 3 % m
    return j_of, conj
