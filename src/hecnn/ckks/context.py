"""``CkksContext``: the precomputed tables (NTT twiddles, RNS constants) for one parameter set.

A context is a value derived from :class:`CkksParameters`; building one costs milliseconds and
nothing is cached at module level. Residue arrays are int32 with the limb axis second to last:
``(..., limbs, N)``. Limb i of a level-ℓ object is prime q_i for i ≤ ℓ; in the key-switching basis
Q_ℓ·P the special primes follow. Each method names which primes the limb axis holds by their
indices into :attr:`primes` (data primes first, then special primes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np
from threadpoolctl import ThreadpoolController

from hecnn.ckks import kernels
from hecnn.ckks.backend import check_backend, make_backend
from hecnn.ckks.encoder import Encoder
from hecnn.ckks.params import CkksParameters
from hecnn.ckks.primes import primitive_root_of_unity
from hecnn.errors import ParameterError


def _bit_reverse(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    idx = np.arange(n)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


def _shoup(w: np.ndarray, q: int) -> np.ndarray:
    return ((w.astype(object) << 32) // q).astype(np.uint64)


_POOL_PREFIX = "hecnn-ckks"
#: rows below which a kernel runs inline instead of on the pool (thread hand-off costs ~20 µs)
_MIN_PARALLEL_ELEMENTS = 1 << 15


def default_threads() -> int:
    """Worker threads: ``HECNN_THREADS`` or the cores this process may use."""
    env = os.environ.get("HECNN_THREADS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)))


class CkksContext:
    """Tables and residue-array primitives for one :class:`CkksParameters`.

    Kernels run on row slices spread over ``threads`` worker threads (they release the GIL).
    ``backend``/``device`` choose where ciphertext batches live and run (see
    :mod:`hecnn.ckks.backend`); the methods below are the numpy primitives either way.
    """

    def __init__(
        self,
        params: CkksParameters,
        *,
        threads: int | None = None,
        backend: str = "numpy",
        device: str = "cpu",
    ) -> None:
        if not isinstance(params, CkksParameters):
            raise ParameterError(f"expected CkksParameters, got {type(params).__name__}")
        self.params = params
        self.backend_name, self.device = check_backend(backend, device)
        self.threads = threads or default_threads()
        n = params.n
        self.n = n
        all_primes = list(params.moduli) + list(params.special_moduli)
        self.primes = np.array(all_primes, dtype=np.uint64)
        self.num_data = len(params.moduli)
        self.special_idx = np.arange(self.num_data, len(all_primes), dtype=np.int64)
        k = len(all_primes)
        brv = _bit_reverse(n)
        self.bit_reverse = brv
        self.psi_rev = np.empty((k, n), dtype=np.uint64)
        self.psi_inv_rev = np.empty((k, n), dtype=np.uint64)
        self.psi_rev_shoup = np.empty((k, n), dtype=np.uint64)
        self.psi_inv_rev_shoup = np.empty((k, n), dtype=np.uint64)
        self.n_inv = np.empty(k, dtype=np.uint64)
        self.n_inv_shoup = np.empty(k, dtype=np.uint64)
        for i, q in enumerate(all_primes):
            psi = primitive_root_of_unity(2 * n, q)
            powers = _powers(psi, n, q)
            inv_powers = _powers(pow(psi, -1, q), n, q)
            self.psi_rev[i] = powers[brv]
            self.psi_inv_rev[i] = inv_powers[brv]
            self.psi_rev_shoup[i] = _shoup(self.psi_rev[i], q)
            self.psi_inv_rev_shoup[i] = _shoup(self.psi_inv_rev[i], q)
            self.n_inv[i] = pow(n, -1, q)
            self.n_inv_shoup[i] = (int(self.n_inv[i]) << 32) // q
        # uint32 twiddle tables feed the vectorized butterflies (see kernels._ct_butterflies)
        self.psi_rev32 = self.psi_rev.astype(np.uint32)
        self.psi_rev_shoup32 = self.psi_rev_shoup.astype(np.uint32)
        self.psi_inv_rev32 = self.psi_inv_rev.astype(np.uint32)
        self.psi_inv_rev_shoup32 = self.psi_inv_rev_shoup.astype(np.uint32)

    # -- parallel execution -------------------------------------------------------------------
    @cached_property
    def pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=_POOL_PREFIX)

    @cached_property
    def blas(self) -> ThreadpoolController:
        """The process's BLAS thread pools, found once: ``threadpool_limits`` rescans every
        loaded library on each call (~2 ms with torch and numba loaded, once per GEMM batch)."""
        return ThreadpoolController()

    def parallel(self, count: int, fn: Callable[[int, int], None], *, work: int = 0) -> None:
        """Run fn(lo, hi) over [0, count) split into ``threads`` contiguous parts.

        ``work`` (elements touched) below a threshold, or a single item, runs inline; so does a
        call made from one of the pool's own threads (waiting on the pool from inside it could
        deadlock).
        """
        parts = min(self.threads, count)
        nested = threading.current_thread().name.startswith(_POOL_PREFIX)
        if parts <= 1 or nested or (work and work < _MIN_PARALLEL_ELEMENTS):
            fn(0, count)
            return
        bounds = [count * i // parts for i in range(parts + 1)]
        futures = [self.pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        fn(bounds[0], bounds[1])
        for f in futures:
            f.result()

    def for_each_chunk(self, count: int, chunk: int, fn: Callable[[int, int], None]) -> None:
        """fn(lo, hi) over consecutive chunks of at most ``chunk`` items, pulled by the pool's
        threads one at a time.

        For fused multi-kernel work on a few ciphertexts (key switching, rescaling): a chunk's
        temporaries stay in cache between kernels, where whole-batch kernels stream every
        intermediate array through memory. Kernels called inside ``fn`` run inline.
        """
        nested = threading.current_thread().name.startswith(_POOL_PREFIX)
        if self.threads <= 1 or count <= chunk or nested:
            for lo in range(0, count, chunk):
                fn(lo, min(lo + chunk, count))
            return
        starts = iter(range(0, count, chunk))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    lo = next(starts, None)
                if lo is None:
                    return
                fn(lo, min(lo + chunk, count))

        futures = [self.pool.submit(worker) for _ in range(self.threads)]
        for f in futures:
            f.result()

    def _rowwise(self, kernel, arrays: list[np.ndarray], mod_idx: np.ndarray, *extra) -> None:
        """kernel(*[a[lo:hi] for a in arrays], mod_idx[lo:hi], *extra) over row slices."""
        rows = arrays[0].shape[0]

        def part(lo: int, hi: int) -> None:
            kernel(*[a[lo:hi] for a in arrays], mod_idx[lo:hi], *extra)

        self.parallel(rows, part, work=arrays[0].size)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("pool", None)  # threads do not pickle; a copy makes its own
        state.pop("blas", None)
        state.pop("backend", None)  # device tables: a copy rebuilds its own
        return state

    @cached_property
    def backend(self):
        """The array backend object: None for numpy, a torch ring (tables on the device)."""
        return make_backend(self, self.backend_name, self.device)

    # -- limb bookkeeping ---------------------------------------------------------------------
    def data_idx(self, level: int) -> np.ndarray:
        """Prime indices of a level-ℓ object: q_0..q_ℓ."""
        if not 0 <= level <= self.params.max_level:
            raise ParameterError(f"level {level} outside [0, {self.params.max_level}]")
        return np.arange(level + 1, dtype=np.int64)

    def qp_idx(self, level: int) -> np.ndarray:
        """Prime indices of the key-switching basis Q_ℓ·P."""
        return np.concatenate([self.data_idx(level), self.special_idx])

    def moduli_column(self, idx: np.ndarray) -> np.ndarray:
        """The primes of ``idx`` as an int64 column (limbs, 1) for numpy broadcasting."""
        return self.primes[idx].astype(np.int64)[:, None]

    # -- transforms ---------------------------------------------------------------------------
    def _rows(self, a: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if a.dtype != np.int32 or not a.flags.c_contiguous:
            raise ParameterError("residue arrays must be C-contiguous int32")
        limbs = a.shape[-2]
        if limbs != len(idx) or a.shape[-1] != self.n:
            raise ParameterError(
                f"residue array shape {a.shape} does not match {len(idx)} limbs × N={self.n}"
            )
        rows = a.reshape(-1, self.n)
        mod_idx = np.tile(np.asarray(idx, dtype=np.int64), rows.shape[0] // limbs)
        return rows, mod_idx

    def ntt(self, a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """In-place forward negacyclic NTT of every limb (coefficient → evaluation form)."""
        rows, mod_idx = self._rows(a, idx)
        self._rowwise(
            kernels.ntt_forward,
            [rows.view(np.uint32)],
            mod_idx,
            self.primes,
            self.psi_rev32,
            self.psi_rev_shoup32,
        )
        return a

    def intt(self, a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """In-place inverse NTT (evaluation → coefficient form)."""
        rows, mod_idx = self._rows(a, idx)
        self._rowwise(
            kernels.ntt_inverse,
            [rows.view(np.uint32)],
            mod_idx,
            self.primes,
            self.psi_inv_rev32,
            self.psi_inv_rev_shoup32,
            self.n_inv,
            self.n_inv_shoup,
        )
        return a

    # -- elementwise modular arithmetic (broadcast over leading axes) -------------------------
    def add(self, a: np.ndarray, b: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None):
        out = np.empty_like(a) if out is None else out
        ra, mi = self._rows(a, idx)
        self._rowwise(
            kernels.add_mod, [ra, self._rows(b, idx)[0], self._rows(out, idx)[0]], mi, self.primes
        )
        return out

    def sub(self, a: np.ndarray, b: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None):
        out = np.empty_like(a) if out is None else out
        ra, mi = self._rows(a, idx)
        self._rowwise(
            kernels.sub_mod, [ra, self._rows(b, idx)[0], self._rows(out, idx)[0]], mi, self.primes
        )
        return out

    def mul(self, a: np.ndarray, b: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None):
        out = np.empty_like(a) if out is None else out
        ra, mi = self._rows(a, idx)
        self._rowwise(
            kernels.mul_mod, [ra, self._rows(b, idx)[0], self._rows(out, idx)[0]], mi, self.primes
        )
        return out

    def mul_add(self, a: np.ndarray, b: np.ndarray, acc: np.ndarray, idx: np.ndarray) -> None:
        """acc += a·b (mod q), in place."""
        ra, mi = self._rows(a, idx)
        self._rowwise(
            kernels.mul_add_mod,
            [ra, self._rows(b, idx)[0], self._rows(acc, idx)[0]],
            mi,
            self.primes,
        )

    def mul_row_scalars(self, a: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """a·s mod q where s has shape a.shape[:-1] (one residue per row, already reduced)."""
        out = np.empty_like(a)
        ra, mi = self._rows(a, idx)
        s_rows = np.ascontiguousarray(s, dtype=np.int64).reshape(-1)
        self._rowwise(
            kernels.mul_scalar_mod, [ra, s_rows, self._rows(out, idx)[0]], mi, self.primes
        )
        return out

    def add_rows(
        self, a: np.ndarray, b: np.ndarray, b_row: np.ndarray, idx: np.ndarray
    ) -> np.ndarray:
        """a + b[b_row] row-wise (rows of N residues), a's rows copied where b_row < 0."""
        out = np.empty_like(a)
        ra, mi = self._rows(a, idx)
        rb = self._rows(b, idx)[0]
        self._rowwise(
            kernels.add_mod_rows, [ra, b_row, self._rows(out, idx)[0]], mi, self.primes, rb
        )
        return out

    def add_row_scalars(self, a: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        ra, mi = self._rows(a, idx)
        s_rows = np.ascontiguousarray(s, dtype=np.int64).reshape(-1)
        self._rowwise(
            kernels.add_scalar_mod, [ra, s_rows, self._rows(out, idx)[0]], mi, self.primes
        )
        return out

    def neg(self, a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        q = self.moduli_column(idx).astype(np.int32)
        return np.ascontiguousarray(np.where(a == 0, 0, q - a), dtype=np.int32)

    def reduce_int(self, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Residues of signed integers (int64 or exactly-integral float64) in each prime of idx.

        Returns int32 residues of shape values.shape[:-1] + (len(idx), N) — a limb axis is
        inserted before the last. fmod on floats is exact in IEEE arithmetic, so integers beyond
        2^63 are reduced correctly.
        """
        v = np.asarray(values)
        lead = v.shape[:-1]
        if np.issubdtype(v.dtype, np.integer) or (v.size and float(np.max(np.abs(v))) < 2.0**62):
            flat = np.ascontiguousarray(v.reshape(-1, v.shape[-1]), dtype=np.int64)
            out = np.empty((flat.shape[0], len(idx), v.shape[-1]), dtype=np.int32)
            mod_idx = np.asarray(idx, dtype=np.int64)

            def part(lo: int, hi: int) -> None:
                kernels.reduce_signed(flat[lo:hi], mod_idx, self.primes, out[lo:hi])

            self.parallel(flat.shape[0], part, work=out.size)
            return out.reshape(*lead, len(idx), v.shape[-1])
        q = self.primes[idx].astype(np.float64)[:, None]
        r = np.fmod(v[..., None, :].astype(np.float64), q)
        r = np.where(r < 0, r + q, r)
        return np.ascontiguousarray(r, dtype=np.int32)

    def residues_of(self, value: int, idx: np.ndarray) -> np.ndarray:
        """[value]_{q_i} for a Python integer (any size), as int64 per limb."""
        return np.array([int(value) % int(self.primes[i]) for i in idx], dtype=np.int64)

    # -- base conversion ----------------------------------------------------------------------
    def base_convert(
        self, x: np.ndarray, src: np.ndarray, dst: np.ndarray, *, exact: bool = False
    ) -> np.ndarray:
        """Base conversion of coefficient-form residues (P, len(src), N) → (P, len(dst), N).

        Fast (approximate, result + u·B with 0 ≤ u < len(src)) by default; ``exact`` removes
        the u·B term (see :func:`kernels.base_convert`).
        """
        src_q = [int(self.primes[i]) for i in src]
        big = 1
        for q in src_q:
            big *= q
        qhat_inv = np.array([pow(big // q, -1, q) for q in src_q], dtype=np.int64)
        qhat_mod = np.array(
            [[(big // q) % int(self.primes[t]) for t in dst] for q in src_q], dtype=np.int64
        )
        big_mod = np.array([big % int(self.primes[t]) for t in dst], dtype=np.int64)
        npoly = x.shape[0]
        out = np.empty((npoly, len(dst), self.n), dtype=np.int32)
        xc = np.ascontiguousarray(x)
        src_a, dst_a = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)

        def part(lo: int, hi: int) -> None:
            kernels.base_convert(
                xc[lo:hi], src_a, dst_a, self.primes, qhat_inv, qhat_mod, big_mod, exact, out[lo:hi]
            )

        self.parallel(npoly, part, work=out.size)
        return out

    def mul_broadcast(
        self, a: np.ndarray, b: np.ndarray, idx: np.ndarray, acc: np.ndarray | None = None
    ) -> np.ndarray:
        """a (P, limbs, N) · b (limbs, N) mod q, b shared by all P; added into ``acc`` if given."""
        a = np.ascontiguousarray(a)
        b = np.ascontiguousarray(b)
        mod_idx = np.asarray(idx, dtype=np.int64)
        out = np.empty_like(a) if acc is None else acc
        kernel = kernels.mul_bcast if acc is None else kernels.mul_add_bcast

        def part(lo: int, hi: int) -> None:
            kernel(a[lo:hi], b, out[lo:hi], mod_idx, self.primes)

        self.parallel(a.shape[0], part, work=a.size)
        return out

    @cached_property
    def encoder(self) -> Encoder:
        """The canonical-embedding encoder for this ring (its tables depend only on N)."""
        return Encoder(self.n)

    @cached_property
    def galois_cache(self) -> dict[int, np.ndarray]:
        """Per-instance memo of NTT-domain automorphism permutations."""
        return {}

    def automorphism_perm(self, g: int) -> np.ndarray:
        """Permutation π with σ_g(a)[k] = a[π[k]] in NTT (evaluation) form, σ_g: X ↦ X^g.

        Slot k of our NTT holds a(ψ^{e_k}) with e_k = 2·brv(k)+1; σ_g(a)(ψ^e) = a(ψ^{e·g}), so
        slot k takes the slot whose exponent is e_k·g mod 2N.
        """
        if g in self.galois_cache:
            return self.galois_cache[g]
        n = self.n
        e = 2 * self.bit_reverse + 1
        pos = np.empty(2 * n, dtype=np.int64)
        pos[e] = np.arange(n)
        perm = pos[(e * g) % (2 * n)]
        self.galois_cache[g] = perm
        return perm


def _powers(x: int, n: int, q: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    v = 1
    for i in range(n):
        out[i] = v
        v = v * x % q
    return out
