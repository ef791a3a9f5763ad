"""128-bit security bounds from the Homomorphic Encryption Standard.

The HE Standard (Albrecht et al., 2018, Table 1 — "classical", ternary/uniform secret, σ ≈ 3.2)
gives the largest total modulus log2(Q·P) that still offers 128-bit security for each ring degree.
Every parameter set hecnn builds is checked against this table; going beyond it needs the
explicit, loudly named switch ``allow_insecure_test_only=True`` (unit tests only).
"""

from __future__ import annotations

from hecnn.errors import SecurityError

#: Max log2(QP) for 128-bit classical security with a ternary secret (HE Standard, Table 1).
MAX_LOG_QP_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
    65536: 1761,
}

SUPPORTED_RING_DEGREES = (4096, 8192, 16384, 32768, 65536)


def max_log_qp(n: int) -> int:
    """Largest log2(QP) allowed at 128-bit security for ring degree ``n``."""
    if n not in MAX_LOG_QP_128:
        raise SecurityError(f"no 128-bit security bound known for ring degree N={n}")
    return MAX_LOG_QP_128[n]


def check_security(n: int, log_qp: float, *, allow_insecure_test_only: bool = False) -> None:
    """Raise :class:`SecurityError` unless (n, log_qp) meets the 128-bit HE Standard bound."""
    if allow_insecure_test_only:
        return
    if n not in SUPPORTED_RING_DEGREES:
        raise SecurityError(
            f"ring degree N={n} is not a supported secure degree {SUPPORTED_RING_DEGREES}; "
            "small rings are for unit tests only (allow_insecure_test_only=True)"
        )
    bound = max_log_qp(n)
    if log_qp > bound:
        raise SecurityError(
            f"log2(QP)={log_qp:.1f} bits exceeds the 128-bit HE Standard bound of {bound} bits "
            f"for N={n}: use a larger ring degree or fewer/smaller primes"
        )


def minimal_ring_degree(log_qp: float) -> int:
    """Smallest supported N whose 128-bit bound admits ``log_qp`` bits."""
    for n in SUPPORTED_RING_DEGREES:
        if log_qp <= MAX_LOG_QP_128[n]:
            return n
    raise SecurityError(f"log2(QP)={log_qp:.1f} bits exceeds every supported ring degree")
