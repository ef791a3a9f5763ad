"""Exact reconstruction of centered integers from RNS residues (Garner's mixed radix).

x = v_0 + v_1·q_0 + v_2·q_0q_1 + …, every digit v_i ∈ [0, q_i) computed with word-size modular
arithmetic. The centered representative (x or x − Q) is chosen from the top digit; summing the
digits from the top in float64 then gives the value to 53-bit relative precision even when Q has
hundreds of bits — no big integers, no cancellation.
"""

from __future__ import annotations

import numpy as np

from hecnn.errors import ScaleError

#: decrypted coefficients reaching Q/2^OVERFLOW_BITS mean the computation overflowed (see
#: :func:`centered_to_float`): an honest result is far below Q/2, a wrapped one is uniform in
#: [−Q/2, Q/2) and has every coefficient below Q/32 with probability 16^−N
OVERFLOW_BITS = 5


def centered_to_float(
    residues: np.ndarray, primes: list[int], *, check_overflow: bool = False
) -> np.ndarray:
    """(…, L, N) residues modulo primes[0..L) → (…, N) float64 of the centered integer.

    ``check_overflow``: raise :class:`~hecnn.errors.ScaleError` when some value reaches
    Q/2^:data:`OVERFLOW_BITS` — read from the most significant mixed-radix digit d (value ≈
    d·Q/q_top), so it works where Q exceeds float64's range. Decryption uses it: a message
    times its scale that outgrew the modulus (scale or noise budget exhausted, a polynomial
    evaluated far outside its interval, the wrong key) decrypts to uniform garbage, which must
    not be returned as numbers."""
    res = np.asarray(residues, dtype=np.int64)
    qs = [int(q) for q in primes]
    if res.shape[-2] != len(qs):
        raise ValueError("limb count does not match the number of primes")
    pos = _garner_digits(res, qs)
    neg = _garner_digits(np.where(res == 0, 0, np.array(qs, dtype=np.int64)[:, None] - res), qs)
    top_q = qs[-1]
    negative = pos[-1] > (top_q - 1) // 2
    if check_overflow:
        top = np.where(negative, neg[-1], pos[-1])
        if top.size and int(top.max()) << OVERFLOW_BITS >= top_q:
            raise ScaleError(
                "decryption overflow: the decrypted coefficients fill the ciphertext modulus "
                f"(≥ Q/2^{OVERFLOW_BITS}), so the values are garbage — the computation exceeded "
                "its scale or noise budget (an activation input far outside its polynomial's "
                "range, too few levels), or the key does not match"
            )
    if len(qs) == 1:
        return np.where(negative, -neg[0].astype(np.float64), pos[0].astype(np.float64))
    digits = [np.where(negative, nd, pd) for pd, nd in zip(pos, neg, strict=True)]
    # past ~34 limbs the weights q_0⋯q_(i−1) exceed float64's range (inf); a small value has
    # zero digits there, which must add 0, not inf·0 = nan
    with np.errstate(over="ignore"):
        weights = np.cumprod([1.0, *[float(q) for q in qs[:-1]]])
    value = np.zeros(digits[0].shape, dtype=np.float64)
    with np.errstate(over="ignore"):  # values beyond float64 (unchecked garbage) become ±inf
        for i in range(len(qs) - 1, -1, -1):
            d = digits[i].astype(np.float64)
            if np.isfinite(weights[i]):
                value += d * weights[i]
            else:
                value += np.where(d == 0, 0.0, np.inf)
    return np.where(negative, -value, value)


def _garner_digits(res: np.ndarray, qs: list[int]) -> list[np.ndarray]:
    digits: list[np.ndarray] = []
    for i, qi in enumerate(qs):
        t = res[..., i, :] % qi
        for j in range(i):
            inv = pow(qs[j], -1, qi)
            t = ((t - digits[j] % qi) % qi) * inv % qi
        digits.append(t)
    return digits
