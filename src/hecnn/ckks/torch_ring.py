"""Exact RNS ring arithmetic on torch tensors (CPU or CUDA): the torch backend's primitives.

Residues are stored as int32 in [0, q), q < 2^31, exactly as on the numpy path; arithmetic that
needs more bits widens to int64 or float64, and every operation returns the canonical residue —
so results are bit-identical to the numba kernels whatever the device. The tricks:

- a + b, a − b: in int32 as a − (q − b) ∈ (−q, q), plus q when negative (no overflow).
- a·b mod q for varying a, b: float Barrett as in :mod:`hecnn.ckks.kernels`,
  k = ⌊fl(a)·fl(b)·fl(1/q)⌋ is the true quotient up to ±1, r = a·b − k·q in int64 (< 2^62), one
  correction each way.
- y·w mod q for a fixed w (NTT twiddles): Shoup, w' = ⌊w·2^32/q⌋ < 2^32 and y < 2^31, so y·w'
  < 2^63 fits a signed int64; the result lies in [0, 2q), one correction.
- Σ_i y_i·c_i mod q (basis conversion): one fp64 GEMM per 16-bit half of c — each partial sum
  stays below 2^53, so the GEMM is exact — then an exact fp64 remainder z − ⌊z/q⌋·q.
- NTT/INTT: the same Cooley–Tukey / Gentleman–Sande stages as the numba kernels, each stage one
  vectorized butterfly over all polynomials and limbs at once ((rows, limbs, m, 2, t) views), so
  the output order (bit-reversed evaluation points) is identical.

Memory: :meth:`TorchRing.rows_per_chunk` sizes chunks of work from the free device memory (or
``memory_budget`` when set), and :meth:`TorchRing.peak_bytes` reports the CUDA peak.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hecnn.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from hecnn.ckks.context import CkksContext
    from hecnn.ckks.keys import SwitchingKey

#: fraction of the free device memory one chunk of work may use (temporaries included)
CHUNK_MEMORY_FRACTION = 0.5
#: host memory a chunk may use on the CPU device: small chunks keep every temporary below
#: glibc's mmap threshold (32 MiB), whose page faults on each fresh allocation cost more than
#: the arithmetic
CPU_CHUNK_BYTES = 64 << 20
#: rows of one CPU NTT call transformed together (its stages then stay in cache)
CPU_NTT_BYTES = 4 << 20
#: torch intra-op threads on the CPU device: every elementwise operation is one OpenMP parallel
#: region, and on a shared 2-core machine their barriers made a layer 4.5× slower with 2 threads
#: than with 1 (the numpy path avoids OpenMP for the same reason, see kernels.py)
CPU_TORCH_THREADS = 1


@dataclass(frozen=True)
class Limbs:
    """Per-limb constants of one list of primes, as device columns (limbs, 1) and tables."""

    idx: tuple[int, ...]
    q: torch.Tensor  # int64 (L, 1)
    q32: torch.Tensor  # int32 (L, 1)
    qf: torch.Tensor  # float64 (L, 1)
    qinv: torch.Tensor  # float64 (L, 1), fl(1/q)


class TorchRing:
    """The torch backend of one :class:`CkksContext`: device tables and exact primitives.

    Tables (twiddles, per-limb constants, automorphism permutations, keys) are copied to the
    device on first use and cached on this object — never at module level.
    """

    name = "torch"

    def __init__(self, ctx: CkksContext, device: str) -> None:
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ParameterError(
                    "device 'cuda' asked but torch sees no CUDA GPU "
                    f"(torch {torch.__version__}); use device='cpu'"
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ParameterError(
                    f"device {device!r} asked but only {torch.cuda.device_count()} GPU(s) present"
                )
            if dev.index is None:  # tensors report cuda:<i>: compare like with like
                dev = torch.device("cuda", torch.cuda.current_device())
        self.ctx = ctx
        self.device = dev
        self.n = ctx.n
        self.memory_budget: int | None = None  # bytes per chunk of work; None: from free memory
        self.cpu_threads = CPU_TORCH_THREADS  # torch threads while this ring works on the CPU
        # NTT stages fused by torch.compile (Triton on CUDA): opt-in until measured
        self.fused_ntt = os.environ.get("HECNN_TORCH_FUSED_NTT", "") == "1"
        self._compiled: dict[str, Any] = {}
        self._limbs: dict[tuple[int, ...], Limbs] = {}
        self._tables: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self._consts: dict[Any, Any] = {}
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"TorchRing(N={self.n}, device={self.device})"

    @property
    def batch_class(self) -> type:
        from hecnn.ckks.torch_batch import TorchCiphertextBatch

        return TorchCiphertextBatch

    # -- transfers ----------------------------------------------------------------------------
    def to_device(self, a: Any, dtype: torch.dtype = torch.int32) -> torch.Tensor:
        """numpy array or tensor → contiguous tensor of ``dtype`` on this device."""
        if isinstance(a, torch.Tensor):
            t = a
        else:
            arr = np.ascontiguousarray(a)
            if arr.dtype == np.uint32:  # serialized residues (< 2^31): same bits as int32
                arr = arr.view(np.int32)
            t = torch.from_numpy(arr)
        return t.to(device=self.device, dtype=dtype).contiguous()

    def index(self, idx: Any) -> torch.Tensor:
        """An int64 index tensor on the device (cached by value)."""
        key = ("index", tuple(int(i) for i in np.asarray(idx).reshape(-1)))
        t = self._tables.get(key)
        if t is None:
            t = torch.tensor(key[1], dtype=torch.int64, device=self.device)
            self._tables[key] = t
        return t

    # -- per-limb constants and tables --------------------------------------------------------
    def limbs(self, idx: Any) -> Limbs:
        key = tuple(int(i) for i in np.asarray(idx).reshape(-1))
        lim = self._limbs.get(key)
        if lim is None:
            q = self.ctx.primes[list(key)].astype(np.int64)
            qt = torch.tensor(q, dtype=torch.int64, device=self.device).view(-1, 1)
            qf = qt.to(torch.float64)
            lim = Limbs(key, qt, qt.to(torch.int32), qf, 1.0 / qf)
            self._limbs[key] = lim
        return lim

    def table(self, name: str, idx: Any) -> torch.Tensor:
        """Rows ``idx`` of a context table (psi_rev, psi_rev_shoup, ...) as int64 on the device."""
        key = (name, tuple(int(i) for i in np.asarray(idx).reshape(-1)))
        t = self._tables.get(key)
        if t is None:
            src = getattr(self.ctx, name)[list(key[1])]
            t = torch.from_numpy(np.ascontiguousarray(src.astype(np.int64))).to(self.device)
            self._tables[key] = t
        return t

    def column(self, values: Any) -> torch.Tensor:
        """Per-limb int64 constants (L,) → a device column (L, 1)."""
        return torch.as_tensor(np.asarray(values, dtype=np.int64), device=self.device).view(-1, 1)

    # -- elementwise modular arithmetic (int32 or int64 in; broadcast over leading axes) ------
    @staticmethod
    def add(a: torch.Tensor, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """a + b mod q, in the dtype of ``q`` (int32 q keeps int32 storage, with no overflow)."""
        r = a - (q - b)
        return torch.where(r < 0, r + q, r)

    @staticmethod
    def sub(a: torch.Tensor, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        r = a - b
        return torch.where(r < 0, r + q, r)

    @staticmethod
    def neg(a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.where(a == 0, a, q - a)

    @staticmethod
    def mul(a: torch.Tensor, b: torch.Tensor, lim: Limbs) -> torch.Tensor:
        """a·b mod q (int64 result) for 0 ≤ a, b < 2^31 with a·b/q < 2^31 — float Barrett."""
        k = torch.floor(a.to(torch.float64) * b.to(torch.float64) * lim.qinv).to(torch.int64)
        r = a.to(torch.int64) * b.to(torch.int64) - k * lim.q
        r = torch.where(r < 0, r + lim.q, r)
        return torch.where(r >= lim.q, r - lim.q, r)

    @staticmethod
    def mul_shoup(y: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, q: torch.Tensor):
        """y·w mod q for int64 0 ≤ y < 2^31 and a fixed w with Shoup companion ws < 2^32."""
        v = y * w - ((y * ws) >> 32) * q
        return torch.where(v >= q, v - q, v)

    @staticmethod
    def fmod(z: torch.Tensor, qf: torch.Tensor, qinv: torch.Tensor) -> torch.Tensor:
        """Exact z mod q in float64 for integral |z| < 2^52: ⌊z/q⌋·q is within q of z, exact."""
        r = z - torch.floor(z * qinv) * qf
        r = torch.where(r < 0, r + qf, r)
        return torch.where(r >= qf, r - qf, r)

    # -- NTT ----------------------------------------------------------------------------------
    def _ntt_spans(self, rows: int, limbs: int) -> list[tuple[int, int]]:
        """Row ranges for one NTT call: on the CPU, ~4 MiB at a time (the stages then run in
        cache); on a GPU, everything at once (one launch per operation and stage)."""
        if self.device.type != "cpu":
            return [(0, rows)]
        step = max(1, CPU_NTT_BYTES // (8 * limbs * self.n))
        return [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]

    def _fused(self, kind: str):
        """The torch.compile'd butterfly stage ``kind`` ("ct" forward, "gs" inverse)."""
        fn = self._compiled.get(kind)
        if fn is None:
            fn = torch.compile(_ct_stage if kind == "ct" else _gs_stage, dynamic=True)
            self._compiled[kind] = fn
        return fn

    @staticmethod
    def _add_q_if_negative(x: torch.Tensor, q: torch.Tensor, tmp: torch.Tensor) -> None:
        """x += q where x < 0, in place, branch-free: q & (x >> 63)."""
        torch.bitwise_right_shift(x, 63, out=tmp)
        tmp.bitwise_and_(q)
        x.add_(tmp)

    def ntt(self, x: torch.Tensor, idx: Any) -> torch.Tensor:
        """Forward negacyclic NTT of int64 residues (..., L, N), in place; returns ``x``.

        Stage m (m = 1, 2, …, N/2) pairs x[2it + j] with x[2it + t + j] (t = N/2m) under twiddle
        ψ_rev[m + i] — the numba kernel's loop, as one (rows, L, m, 2, t) view. Every operation
        writes into preallocated buffers: no allocation inside the stages.
        """
        lim = self.limbs(idx)
        psi, psis = self.table("psi_rev", idx), self.table("psi_rev_shoup", idx)
        n, nl = self.n, len(lim.idx)
        allrows = x.view(-1, nl, n)  # in place: x must be contiguous
        q = lim.q.view(1, nl, 1, 1)
        fused = self._fused("ct") if self.fused_ntt else None
        for lo, hi in self._ntt_spans(allrows.shape[0], nl):
            rows, r = allrows[lo:hi], hi - lo
            buf = torch.empty((3, r, nl, n // 2), dtype=torch.int64, device=x.device)
            m, t = 1, n
            while m < n:
                t >>= 1
                v4 = rows.view(r, nl, m, 2, t)
                a, b = v4[:, :, :, 0, :], v4[:, :, :, 1, :]
                w = psi[:, m : 2 * m].reshape(1, nl, m, 1)
                ws = psis[:, m : 2 * m].reshape(1, nl, m, 1)
                if fused is not None:
                    s_, d_ = fused(a, b, w, ws, q)
                    a.copy_(s_)
                    b.copy_(d_)
                    m <<= 1
                    continue
                v, d, tmp = (buf[i].view(r, nl, m, t) for i in range(3))
                # v = b·w mod q (Shoup: b·w − ⌊b·ws/2^32⌋·q ∈ [0, 2q), minus q, plus q if < 0)
                torch.mul(b, ws, out=tmp)
                tmp.bitwise_right_shift_(32)
                tmp.mul_(q)
                torch.mul(b, w, out=v)
                v.sub_(tmp)
                v.sub_(q)
                self._add_q_if_negative(v, q, tmp)
                # (a, b) ← (a + v, a − v) mod q
                torch.sub(a, v, out=d)
                self._add_q_if_negative(d, q, tmp)
                a.add_(v)
                a.sub_(q)
                self._add_q_if_negative(a, q, tmp)
                b.copy_(d)
                m <<= 1
        return x

    def intt(self, x: torch.Tensor, idx: Any) -> torch.Tensor:
        """Inverse NTT of int64 residues (..., L, N), in place, including the 1/N factor."""
        lim = self.limbs(idx)
        psi, psis = self.table("psi_inv_rev", idx), self.table("psi_inv_rev_shoup", idx)
        n, nl = self.n, len(lim.idx)
        allrows = x.view(-1, nl, n)  # in place: x must be contiguous
        q = lim.q.view(1, nl, 1, 1)
        ninv = self.table("n_inv", idx).view(1, nl, 1)
        ninv_s = self.table("n_inv_shoup", idx).view(1, nl, 1)
        fused = self._fused("gs") if self.fused_ntt else None
        for lo, hi in self._ntt_spans(allrows.shape[0], nl):
            rows, r = allrows[lo:hi], hi - lo
            buf = torch.empty((3, r, nl, n // 2), dtype=torch.int64, device=x.device)
            t, m = 1, n
            while m > 1:
                h = m >> 1
                v4 = rows.view(r, nl, h, 2, t)
                a, b = v4[:, :, :, 0, :], v4[:, :, :, 1, :]
                w = psi[:, h : 2 * h].reshape(1, nl, h, 1)
                ws = psis[:, h : 2 * h].reshape(1, nl, h, 1)
                if fused is not None:
                    s_, v_ = fused(a, b, w, ws, q)
                    a.copy_(s_)
                    b.copy_(v_)
                    t <<= 1
                    m = h
                    continue
                v, d, tmp = (buf[i].view(r, nl, h, t) for i in range(3))
                # d = a − b mod q; a ← a + b mod q; b ← d·w mod q (Shoup)
                torch.sub(a, b, out=d)
                self._add_q_if_negative(d, q, tmp)
                a.add_(b)
                a.sub_(q)
                self._add_q_if_negative(a, q, tmp)
                torch.mul(d, ws, out=tmp)
                tmp.bitwise_right_shift_(32)
                tmp.mul_(q)
                torch.mul(d, w, out=v)
                v.sub_(tmp)
                v.sub_(q)
                self._add_q_if_negative(v, q, tmp)
                b.copy_(v)
                t <<= 1
                m = h
            rows.copy_(self.mul_shoup(rows, ninv, ninv_s, lim.q.view(1, nl, 1)))
        return x

    # -- base conversion ----------------------------------------------------------------------
    def _convert_consts(self, src: tuple[int, ...], dst: tuple[int, ...]):
        key = ("convert", src, dst)
        c = self._consts.get(key)
        if c is None:
            primes = [int(p) for p in self.ctx.primes]
            src_q = [primes[i] for i in src]
            big = 1
            for q in src_q:
                big *= q
            qhat_inv = [pow(big // q, -1, q) for q in src_q]
            qhat_mod = np.array([[(big // q) % primes[t] for q in src_q] for t in dst], np.int64)
            big_mod = [big % primes[t] for t in dst]
            c = (
                self.column(qhat_inv),
                torch.as_tensor((qhat_mod & 0xFFFF).astype(np.float64), device=self.device),
                torch.as_tensor((qhat_mod >> 16).astype(np.float64), device=self.device),
                self.column(big_mod),
            )
            self._consts[key] = c
        return c

    def base_convert(self, x: torch.Tensor, src: Any, dst: Any, *, exact: bool = False):
        """Coefficient-form residues (P, k, N) in primes ``src`` → (P, m, N) int64 in ``dst``.

        out_t = Σ_i [x_i·(B/b_i)^{-1}]_{b_i}·[B/b_i]_t mod t = x + u·B, 0 ≤ u < k; ``exact``
        subtracts u·B with u = ⌊Σ_i y_i/b_i⌋ summed in float64 in the numba kernel's order (the
        same IEEE operations, hence the same u).
        """
        src_t = tuple(int(i) for i in np.asarray(src).reshape(-1))
        dst_t = tuple(int(i) for i in np.asarray(dst).reshape(-1))
        qhat_inv, c_lo, c_hi, big_mod = self._convert_consts(src_t, dst_t)
        k = len(src_t)
        if k >= 32:  # keeps k·2^47 < 2^52 in the GEMMs below
            raise ParameterError(f"base conversion from {k} primes exceeds the exact fp64 bound")
        lsrc, ldst = self.limbs(src_t), self.limbs(dst_t)
        y = self.mul(x, qhat_inv, lsrc)  # (P, k, N), canonical
        yf = y.to(torch.float64)
        z_hi = torch.matmul(c_hi, yf)  # (m, k) @ (P, k, N) → (P, m, N), each sum < k·2^46
        r = self.fmod(z_hi, ldst.qf, ldst.qinv) * 65536.0
        r += torch.matmul(c_lo, yf)  # < 2^47 + k·2^47 < 2^53: exact
        out = self.fmod(r, ldst.qf, ldst.qinv).to(torch.int64)
        if exact and k > 1:
            # divide by device tensors, not Python floats: CUDA turns division by a host scalar
            # into multiplication by its reciprocal, which may round differently from numba's
            # true division — and u must come out the same
            qf = lsrc.qf.view(-1)
            v = yf[:, 0] / qf[0:1]
            for i in range(1, k):
                v = v + yf[:, i] / qf[i : i + 1]
            u = torch.floor(v).to(torch.int64).unsqueeze(1)  # (P, 1, N), 0 ≤ u < k
            corr = torch.remainder(u * big_mod, ldst.q)
            out = self.sub(out, corr, ldst.q)
        return out

    # -- keys and permutations ----------------------------------------------------------------
    def key_limbs(self, key: SwitchingKey, level: int) -> torch.Tensor:
        """The key's digits restricted to Q_ℓ·P, int64 on the device (cached per key object)."""
        per_key = self._keys.get(key)
        if per_key is None:
            per_key = {}
            self._keys[key] = per_key
        t = per_key.get(level)
        if t is None:
            sel = key.limbs_for(level)
            full = self.to_device(key.data, torch.int64)
            t = full.index_select(2, self.index(sel)).contiguous()
            per_key[level] = t
        return t

    def perm(self, g: int) -> torch.Tensor:
        """The NTT-domain permutation of the automorphism X ↦ X^g, on the device."""
        key = ("perm", (g,))
        t = self._tables.get(key)
        if t is None:
            t = torch.as_tensor(self.ctx.automorphism_perm(g), device=self.device)
            self._tables[key] = t
        return t

    @contextlib.contextmanager
    def threads_limited(self) -> Iterator[None]:
        """On the CPU device, run the enclosed torch work on ``cpu_threads`` threads (restored on
        exit; torch's thread count is per process, so do not share a CPU ring across threads)."""
        if self.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # -- memory -------------------------------------------------------------------------------
    def budget_bytes(self) -> int:
        """Bytes one chunk of work may use: ``memory_budget``, else a share of free memory."""
        if self.memory_budget is not None:
            return int(self.memory_budget)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(
                self.device
            )
            return int(CHUNK_MEMORY_FRACTION * (free + cached))
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):  # pragma: no cover - non-POSIX
            avail = CPU_CHUNK_BYTES
        return int(min(CPU_CHUNK_BYTES, CHUNK_MEMORY_FRACTION * avail))

    def rows_per_chunk(self, bytes_per_row: int) -> int:
        """How many items of ``bytes_per_row`` working memory one chunk may hold (≥ 1)."""
        return max(1, self.budget_bytes() // max(1, int(bytes_per_row)))

    def chunks(self, count: int, bytes_per_row: int) -> list[tuple[int, int]]:
        """[lo, hi) ranges covering ``count`` items, each within the memory budget."""
        step = self.rows_per_chunk(bytes_per_row)
        return [(lo, min(count, lo + step)) for lo in range(0, count, step)]

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int | None:
        """Peak device memory allocated by torch since :meth:`reset_peak` (None on the CPU)."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return None


def _ct_stage(a, b, w, ws, q):
    """One Cooley–Tukey stage, out of place: (a + b·w, a − b·w) mod q (for torch.compile)."""
    v = b * w - ((b * ws) >> 32) * q
    v = torch.where(v >= q, v - q, v)
    s = a + v
    d = a - v
    return torch.where(s >= q, s - q, s), torch.where(d < 0, d + q, d)


def _gs_stage(a, b, w, ws, q):
    """One Gentleman–Sande stage, out of place: (a + b, (a − b)·w) mod q (for torch.compile)."""
    s = a + b
    d = a - b
    d = torch.where(d < 0, d + q, d)
    v = d * w - ((d * ws) >> 32) * q
    return torch.where(s >= q, s - q, s), torch.where(v >= q, v - q, v)
