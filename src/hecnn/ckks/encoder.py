"""CKKS encoding through the canonical embedding, with numpy's FFT (O(N log N)).

A plaintext polynomial m(X) ∈ Z[X]/(X^N+1) holds N/2 complex slots: slot j is m(ζ^{5^j})/Δ with
ζ = e^{iπ/N}. Evaluating m at all odd powers ζ^{2t+1} is one FFT of the twisted coefficients:
m(ζ^{2t+1}) = Σ_i (m_i ζ^i) ω^{ti}, ω = ζ² — so decode is an FFT and encode its inverse. The
powers 5^j walk one half of the odd residues mod 2N; the other half holds the complex conjugates,
which makes m real. Rotating slots by r is the automorphism X ↦ X^{5^r}.
"""

from __future__ import annotations

import numpy as np

from hecnn.errors import ShapeError


def galois_element(n: int, steps: int) -> int:
    """g = 5^steps mod 2N: the automorphism X ↦ X^g rotates slots left by ``steps``."""
    return pow(5, steps % (n // 2), 2 * n)


class Encoder:
    """Maps real/complex slot vectors ↔ real coefficient vectors (unscaled, unrounded)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.slots = n // 2
        two_n = 2 * n
        k = np.empty(self.slots, dtype=np.int64)
        g = 1
        for j in range(self.slots):
            k[j] = g
            g = g * 5 % two_n
        #: t-index (ζ^{2t+1}) of slot j and of its conjugate
        self.slot_t = (k - 1) // 2
        self.conj_t = (two_n - k - 1) // 2
        self.twist = np.exp(1j * np.pi * np.arange(n) / n)

    def galois_element(self, steps: int) -> int:
        """g = 5^steps mod 2N: the automorphism that rotates slots left by ``steps``."""
        return galois_element(self.n, steps)

    def embed(self, values: np.ndarray) -> np.ndarray:
        """Slot values (..., ≤ N/2) → real polynomial coefficients (..., N), before scaling.

        Missing trailing slots are zero. The result is exactly the inverse of :meth:`project`.
        """
        v = np.asarray(values)
        if v.ndim == 0 or v.shape[-1] > self.slots:
            raise ShapeError(f"expected at most {self.slots} slots per vector, got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ShapeError("values to encode must be finite")
        lead = v.shape[:-1]
        spec = np.zeros((*lead, self.n), dtype=np.complex128)
        s = v.shape[-1]
        spec[..., self.slot_t[:s]] = v
        spec[..., self.conj_t[:s]] = np.conj(v)
        twisted = np.fft.fft(spec, axis=-1) / self.n
        return (twisted * np.conj(self.twist)).real

    def project(self, coeffs: np.ndarray, count: int | None = None) -> np.ndarray:
        """Real polynomial coefficients (..., N) → complex slot values (..., count)."""
        c = np.asarray(coeffs, dtype=np.float64)
        if c.shape[-1] != self.n:
            raise ShapeError(f"expected {self.n} coefficients, got shape {c.shape}")
        evals = np.fft.ifft(c * self.twist, axis=-1) * self.n
        count = self.slots if count is None else count
        return evals[..., self.slot_t[:count]]
