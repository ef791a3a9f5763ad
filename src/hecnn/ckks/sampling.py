"""Randomness for keys and encryption, from the OS CSPRNG only.

:class:`Prng` is a SHAKE-256 extendable-output stream keyed by a 32-byte seed drawn from
``os.urandom`` (the kernel CSPRNG). Each request hashes (seed ‖ counter) afresh, so the stream is
a standard XOF-based deterministic generator: unpredictable without the seed, reproducible with it
(tests pass an explicit seed to compare backends bit for bit). numpy's generators are never used.

Distributions (the HE Standard's assumptions):
- uniform residues mod q, by rejection from 32-bit words (no modulo bias);
- ternary secrets, uniform over {−1, 0, 1} (rejection of byte 255 so 3 divides the range);
- errors from the discrete Gaussian of width σ = 3.2 truncated at ⌈6σ⌉ = 20, by inversion of its
  cumulative table with 53-bit uniforms.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

SIGMA = 3.2
TAIL = math.ceil(6 * SIGMA)


def _gaussian_cdf_table(sigma: float = SIGMA, tail: int = TAIL) -> np.ndarray:
    support = np.arange(-tail, tail + 1)
    weights = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma * sigma))
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


class Prng:
    """SHAKE-256 counter-mode stream seeded from the OS CSPRNG (or an explicit seed for tests)."""

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is None:
            seed = os.urandom(32)
        if len(seed) < 16:
            raise ValueError("a PRNG seed needs at least 16 bytes")
        self._seed = bytes(seed)
        self._counter = 0
        self._cdf = _gaussian_cdf_table()

    def random_bytes(self, n: int) -> bytes:
        self._counter += 1
        return hashlib.shake_256(self._seed + self._counter.to_bytes(8, "little")).digest(n)

    def _words(self, count: int) -> np.ndarray:
        return np.frombuffer(self.random_bytes(4 * count), dtype=np.uint32)

    def uniform_mod(self, q: int, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform integers in [0, q) (q < 2^32), by rejection sampling of 32-bit words."""
        total = int(np.prod(shape))
        limit = (1 << 32) - ((1 << 32) % q)  # accept w < limit, then w mod q is unbiased
        out = np.empty(0, dtype=np.int64)
        while out.size < total:
            need = total - out.size
            w = self._words(int(need * 1.05) + 16).astype(np.int64)
            out = np.concatenate([out, w[w < limit][:need] % q])
        return out.reshape(shape)

    def ternary(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform over {−1, 0, 1}."""
        total = int(np.prod(shape))
        out = np.empty(0, dtype=np.int64)
        while out.size < total:
            need = total - out.size
            b = np.frombuffer(self.random_bytes(int(need * 1.02) + 16), dtype=np.uint8)
            b = b[b < 255].astype(np.int64)[:need]
            out = np.concatenate([out, b % 3 - 1])
        return out.reshape(shape)

    def gaussian(self, shape: tuple[int, ...]) -> np.ndarray:
        """Discrete Gaussian, σ = 3.2, support [−20, 20] (inversion of the cumulative table)."""
        total = int(np.prod(shape))
        words = np.frombuffer(self.random_bytes(8 * total), dtype=np.uint64)
        u = (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        idx = np.searchsorted(self._cdf, u, side="right")
        return (idx - TAIL).astype(np.int64).reshape(shape)
