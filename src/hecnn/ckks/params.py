"""CKKS parameter sets: an immutable value (ring degree, modulus chain, special primes, scale)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from hecnn.ckks.primes import MAX_PRIME_BITS, is_prime, ntt_primes
from hecnn.ckks.security import check_security, max_log_qp, minimal_ring_degree
from hecnn.errors import ParameterError


@dataclass(frozen=True)
class CkksParameters:
    """Ring degree N, data primes q_0..q_L (level ℓ uses q_0..q_ℓ), special primes P, scale Δ.

    Level L is the top (fresh ciphertexts); each rescale drops the last prime. The special primes
    only appear inside hybrid key switching (GHS): a key switch computes in Q_ℓ·P and divides by
    P, so its noise is scaled down by P. ``insecure_test_only`` records that the 128-bit check was
    skipped (unit tests only); such parameters are refused by every server-side entry point.
    """

    n: int
    moduli: tuple[int, ...]
    special_moduli: tuple[int, ...]
    scale: float
    base_primes: int = 1
    insecure_test_only: bool = False
    _fingerprint: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.n
        if n < 16 or n & (n - 1):
            raise ParameterError(f"ring degree N={n} must be a power of two ≥ 16")
        if not self.moduli:
            raise ParameterError("at least one data prime is required")
        if not self.special_moduli:
            raise ParameterError("at least one special prime is required for key switching")
        all_q = self.moduli + self.special_moduli
        if len(set(all_q)) != len(all_q):
            raise ParameterError("primes of the chain must be distinct")
        for q in all_q:
            if q.bit_length() > MAX_PRIME_BITS:
                raise ParameterError(f"prime {q} exceeds {MAX_PRIME_BITS} bits")
            if q % (2 * n) != 1 or not is_prime(q):
                raise ParameterError(f"{q} is not a prime ≡ 1 mod 2N={2 * n}")
        if not 1 <= self.base_primes <= len(self.moduli):
            raise ParameterError(f"base_primes={self.base_primes} outside [1, {len(self.moduli)}]")
        if not (self.scale > 1 and math.isfinite(self.scale)):
            raise ParameterError(f"scale must be a finite number > 1, got {self.scale}")
        check_security(n, self.log_qp, allow_insecure_test_only=self.insecure_test_only)
        desc = repr(
            (
                n,
                self.moduli,
                self.special_moduli,
                float(self.scale),
                self.base_primes,
                self.insecure_test_only,
            )
        )
        object.__setattr__(self, "_fingerprint", hashlib.sha256(desc.encode()).hexdigest()[:16])

    # -- derived quantities -------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """Number of complex slots (N/2); hecnn uses them as real slots."""
        return self.n // 2

    @property
    def max_level(self) -> int:
        """Level of a fresh ciphertext (index of its last prime)."""
        return len(self.moduli) - 1

    @property
    def min_level(self) -> int:
        """Lowest level a rescale may reach: the base primes q_0..q_{b-1} hold the result."""
        return self.base_primes - 1

    @property
    def depth(self) -> int:
        """Number of rescales available to a fresh ciphertext."""
        return self.max_level - self.min_level

    @property
    def log_q(self) -> float:
        return sum(math.log2(q) for q in self.moduli)

    @property
    def log_qp(self) -> float:
        return self.log_q + sum(math.log2(p) for p in self.special_moduli)

    @property
    def fingerprint(self) -> str:
        """Short hash identifying the parameter set; serialized objects carry it."""
        return self._fingerprint

    def describe(self) -> str:
        bits = [q.bit_length() for q in self.moduli]
        return (
            f"N={self.n} slots={self.slots} levels={self.max_level} "
            f"logQ={self.log_q:.0f} logQP={self.log_qp:.0f} scale=2^{math.log2(self.scale):.1f} "
            f"primes={bits}+special{[p.bit_length() for p in self.special_moduli]}"
            + (" INSECURE-TEST-ONLY" if self.insecure_test_only else "")
        )

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        depth: int,
        *,
        scale_bits: int = 26,
        first_prime_bits: int = 31,
        special_primes: int | None = None,
        special_prime_bits: int = MAX_PRIME_BITS,
        n: int | None = None,
        min_n: int = 4096,
        allow_insecure_test_only: bool = False,
    ) -> CkksParameters:
        """Pick a modulus chain for ``depth`` rescales at scale 2^scale_bits.

        The chain is a base modulus of ``first_prime_bits`` (one prime up to 31 bits, or several
        word-size primes for more; it holds the final result: values up to
        2^(first_prime_bits − scale_bits − 1) in magnitude) followed by ``depth`` primes of
        ``scale_bits`` bits, plus ``special_primes`` key-switching primes. Without ``n`` the
        smallest ring degree ≥ ``min_n`` that is 128-bit secure for this log2(QP) is chosen.
        """
        if depth < 0:
            raise ParameterError(f"depth must be ≥ 0, got {depth}")
        if not 10 <= scale_bits <= MAX_PRIME_BITS - 1:
            raise ParameterError(f"scale_bits={scale_bits} outside [10, {MAX_PRIME_BITS - 1}]")
        if not scale_bits <= first_prime_bits <= 4 * MAX_PRIME_BITS:
            raise ParameterError(
                f"first_prime_bits={first_prime_bits} must be in [scale_bits, {4 * MAX_PRIME_BITS}]"
            )
        # +1: primes just above 2^scale_bits make the true log2(QP) a hair larger than the estimate
        log_q = first_prime_bits + depth * scale_bits + 1
        if special_primes is None:
            chain = -(-first_prime_bits // MAX_PRIME_BITS) + depth
            wanted = max(1, min(3, -(-chain // 4)))
            ring = n or max(min_n, minimal_ring_degree(log_q + special_prime_bits))
            special_primes = 1
            for k in range(wanted, 0, -1):
                if allow_insecure_test_only or log_q + k * special_prime_bits <= max_log_qp(ring):
                    special_primes = k
                    break
        if special_primes < 1:
            raise ParameterError("special_primes must be ≥ 1")
        log_qp = log_q + special_primes * special_prime_bits
        if n is None:
            n = max(min_n, minimal_ring_degree(log_qp))
        special = ntt_primes(special_prime_bits, n, special_primes)
        nbase = -(-first_prime_bits // MAX_PRIME_BITS)
        base_bits = -(-first_prime_bits // nbase)
        first = ntt_primes(base_bits, n, nbase, exclude=set(special))
        used = set(special) | set(first)
        chain = _scale_primes(scale_bits, n, depth, used)
        return cls(
            n=n,
            moduli=tuple(first + chain),
            special_moduli=tuple(special),
            scale=float(2**scale_bits),
            base_primes=nbase,
            insecure_test_only=allow_insecure_test_only,
        )


def _scale_primes(bits: int, n: int, count: int, used: set[int]) -> list[int]:
    """``count`` primes near 2^bits, alternating just above and just below it.

    Rescaling by q turns scale Δ² into Δ²/q; alternating q slightly above and below Δ keeps the
    running scale within a tiny factor of Δ instead of drifting in one direction.
    """
    below = ntt_primes(bits, n, count, exclude=used)
    above: list[int] = []
    if bits < MAX_PRIME_BITS:
        m = 2 * n
        q = (1 << bits) + 1
        while len(above) < count and q < (1 << (bits + 1)):
            if q not in used and is_prime(q):
                above.append(q)
            q += m
    out: list[int] = []
    ia = ib = 0
    for i in range(count):
        if i % 2 == 0 and ia < len(above):
            out.append(above[ia])
            ia += 1
        else:
            out.append(below[ib])
            ib += 1
    return out
