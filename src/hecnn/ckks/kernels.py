"""Compiled modular-arithmetic kernels (numba) for residue arrays.

Every array here holds residues modulo word-sized primes q < 2^31 in **int32**, shaped
(rows, N) where each row belongs to one prime; ``mod_idx[row]`` says which (an index into the
per-prime tables). Values are kept fully reduced in [0, q). Products of two residues are below
2^62 and are formed in 64-bit integers, so every operation is exact. 32-bit storage halves the
memory traffic of these bandwidth-bound loops and lets LLVM vectorize the 32×32→64-bit products
(AVX2 has no 64-bit multiply or int64↔double conversion, so int64 storage runs scalar).

Kernels are serial and release the GIL: :class:`~hecnn.ckks.context.CkksContext` runs them on
slices of rows from a small thread pool. (numba's own parallel loops spin-wait in OpenMP and
fight OpenBLAS's threads — 20–60× slower on a busy 2-core machine — so we don't use them.)

Hardware division is slow and does not vectorize, so no kernel divides:
- by a fixed operand w (NTT twiddles), Shoup's trick: with w' = ⌊w·2^32/q⌋ precomputed,
  x·w mod q = x·w − ⌊x·w'/2^32⌋·q − {0 or q};
- by a varying operand, a floating-point Barrett step: k = ⌊fl(a)·fl(b)·fl(1/q)⌋ is the true
  quotient ⌊ab/q⌋ up to ±1 (the relative error of the float product is ~2^-52 and the quotient is
  below 2^31, so it fits an int32), hence r = ab − kq lies in [−q, 2q) and one branch-free
  correction each way finishes the reduction.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_U32 = np.uint64(32)
_CONTIGUOUS_MIN_RUN = 8  # stages with shorter runs use strided runs across groups


@nb.njit(inline="never", cache=True)
def _ct_butterflies(a, b, q, w, wp):
    """(a, b) ← (a + w·b, a − w·b) mod q over two disjoint uint32 runs, one twiddle w.

    Separate, non-overlapping runs let LLVM vectorize the 32×32→64-bit products; the same loop
    written on one array with a runtime offset does not vectorize and is ~15× slower.
    """
    q64 = np.uint64(q)
    w = np.uint64(w)
    wp = np.uint64(wp)
    for j in range(a.shape[0]):
        u = a[j]
        y = np.uint64(b[j])
        v = np.uint32(y * w - ((y * wp) >> _U32) * q64)
        v = min(v, np.uint32(v - q))
        s = np.uint32(u + v)
        d = np.uint32(u + q - v)
        a[j] = min(s, np.uint32(s - q))
        b[j] = min(d, np.uint32(d - q))


@nb.njit(inline="never", cache=True)
def _ct_butterflies_tw(a, b, q, w, wp):
    """As :func:`_ct_butterflies` with one twiddle per butterfly (strided runs, late stages)."""
    q64 = np.uint64(q)
    for j in range(a.shape[0]):
        u = a[j]
        y = np.uint64(b[j])
        wj = np.uint64(w[j])
        v = np.uint32(y * wj - ((y * np.uint64(wp[j])) >> _U32) * q64)
        v = min(v, np.uint32(v - q))
        s = np.uint32(u + v)
        d = np.uint32(u + q - v)
        a[j] = min(s, np.uint32(s - q))
        b[j] = min(d, np.uint32(d - q))


@nb.njit(inline="never", cache=True)
def _gs_butterflies(a, b, q, w, wp):
    """(a, b) ← (a + b, (a − b)·w) mod q over two disjoint uint32 runs, one twiddle w."""
    q64 = np.uint64(q)
    w = np.uint64(w)
    wp = np.uint64(wp)
    for j in range(a.shape[0]):
        u = a[j]
        y = b[j]
        s = np.uint32(u + y)
        a[j] = min(s, np.uint32(s - q))
        d = np.uint64(np.uint32(u + q - y))
        v = np.uint32(d * w - ((d * wp) >> _U32) * q64)
        b[j] = min(v, np.uint32(v - q))


@nb.njit(inline="never", cache=True)
def _gs_butterflies_tw(a, b, q, w, wp):
    """As :func:`_gs_butterflies` with one twiddle per butterfly (strided runs, early stages)."""
    q64 = np.uint64(q)
    for j in range(a.shape[0]):
        u = a[j]
        y = b[j]
        s = np.uint32(u + y)
        a[j] = min(s, np.uint32(s - q))
        d = np.uint64(np.uint32(u + q - y))
        v = np.uint32(d * np.uint64(w[j]) - ((d * np.uint64(wp[j])) >> _U32) * q64)
        b[j] = min(v, np.uint32(v - q))


@nb.njit(inline="never", cache=True)
def _scale_shoup(x, q, w, wp):
    """x ← x·w mod q (uint32 run, fixed w with Shoup companion wp)."""
    q64 = np.uint64(q)
    for j in range(x.shape[0]):
        y = np.uint64(x[j])
        v = np.uint32(y * w - ((y * wp) >> _U32) * q64)
        x[j] = min(v, np.uint32(v - q))


@nb.njit(nogil=True, cache=True)
def ntt_forward(a, mod_idx, primes, psi_rev, psi_rev_shoup):
    """In-place negacyclic NTT of each row (Cooley–Tukey, bit-reversed output order).

    Row r becomes (A(ψ^{2·brv(k)+1}))_k for the row's prime: evaluations of the polynomial at the
    odd powers of a primitive 2N-th root ψ, which turns negacyclic convolution into a pointwise
    product. ``a`` is a uint32 view of the int32 residue array; tables are uint32.

    Stage with half-size t has m = N/(2t) groups. While t ≥ m the loop runs over groups, each a
    contiguous run of t butterflies sharing one twiddle; later stages run over the offset k < t,
    each a strided run of m butterflies with consecutive twiddles — so no run is shorter than
    √N/2 and every run vectorizes.
    """
    rows, n = a.shape
    for r in range(rows):
        p = mod_idx[r]
        q = np.uint32(primes[p])
        tw = psi_rev[p]
        tws = psi_rev_shoup[p]
        x = a[r]
        t = n
        m = 1
        while m < n:
            t >>= 1
            if t >= _CONTIGUOUS_MIN_RUN or t >= m:
                for i in range(m):
                    j1 = 2 * i * t
                    _ct_butterflies(
                        x[j1 : j1 + t],
                        x[j1 + t : j1 + 2 * t],
                        q,
                        tw[m + i],
                        tws[m + i],
                    )
            else:
                for k in range(t):  # butterfly (k + 2ti, k + 2ti + t) for group i, stride 2t
                    _ct_butterflies_tw(
                        x[k : n : 2 * t], x[k + t : n : 2 * t], q, tw[m : 2 * m], tws[m : 2 * m]
                    )
            m <<= 1


@nb.njit(nogil=True, cache=True)
def ntt_inverse(a, mod_idx, primes, psi_inv_rev, psi_inv_rev_shoup, n_inv, n_inv_shoup):
    """In-place inverse of :func:`ntt_forward` (Gentleman–Sande), including the 1/N factor."""
    rows, n = a.shape
    for r in range(rows):
        p = mod_idx[r]
        q = np.uint32(primes[p])
        tw = psi_inv_rev[p]
        tws = psi_inv_rev_shoup[p]
        x = a[r]
        t = 1
        m = n
        while m > 1:
            h = m >> 1
            if t >= _CONTIGUOUS_MIN_RUN or t >= h:
                for i in range(h):
                    j1 = 2 * i * t
                    _gs_butterflies(
                        x[j1 : j1 + t],
                        x[j1 + t : j1 + 2 * t],
                        q,
                        tw[h + i],
                        tws[h + i],
                    )
            else:
                for k in range(t):
                    _gs_butterflies_tw(
                        x[k : n : 2 * t], x[k + t : n : 2 * t], q, tw[h : 2 * h], tws[h : 2 * h]
                    )
            t <<= 1
            m = h
        _scale_shoup(x, q, n_inv[p], n_inv_shoup[p])


@nb.njit(inline="always")
def _mulmod(a, b, q, qinv):
    """a·b mod q for 0 ≤ a, b < 2^31, q < 2^31 (int64 q), qinv = 1.0/q — float Barrett."""
    k = np.int32(np.float64(a) * np.float64(b) * qinv)
    # every factor is a sign-extended int32: LLVM multiplies with vpmuldq (32×32→64 bits)
    # instead of emulating a full 64-bit product
    q32 = np.int64(np.int32(q))
    r = np.int64(np.int32(a)) * np.int64(np.int32(b)) - np.int64(k) * q32
    r = r + (q32 & (r >> 63))
    r = r - q32
    return r + (q32 & (r >> 63))


@nb.njit(inline="always")
def _addmod(a, b, q):
    """a + b mod q for a, b in [0, q), branch-free (int64 in, int64 out)."""
    r = np.int64(a) + np.int64(b) - q
    return r + (q & (r >> 63))


@nb.njit(nogil=True, cache=True)
def mul_mod(a, b, out, mod_idx, primes):
    """out = a·b mod q row-wise (int64, shape (rows, N))."""
    rows, n = a.shape
    for r in range(rows):
        q = np.int64(primes[mod_idx[r]])
        qinv = 1.0 / np.float64(q)
        for j in range(n):
            out[r, j] = _mulmod(a[r, j], b[r, j], q, qinv)


@nb.njit(nogil=True, cache=True)
def square2_mod(a, out, lo, hi, limb_primes):
    """(c0, c1)² = (c0², 2·c0·c1, c1²) for ciphertexts lo..hi in one pass: a (B, 2, L, N),
    out (B, 3, L, N), limb_primes (L,) the primes of the limbs."""
    limbs, n = a.shape[2], a.shape[3]
    for i in range(lo, hi):
        for li in range(limbs):
            q = np.int64(limb_primes[li])
            qinv = 1.0 / np.float64(q)
            for j in range(n):
                x0 = a[i, 0, li, j]
                x1 = a[i, 1, li, j]
                out[i, 0, li, j] = _mulmod(x0, x0, q, qinv)
                t = _mulmod(x0, x1, q, qinv)
                out[i, 1, li, j] = _addmod(t, t, q)
                out[i, 2, li, j] = _mulmod(x1, x1, q, qinv)


@nb.njit(nogil=True, cache=True)
def square2_linear_mod(a, w, out, lo, hi, limb_primes):
    """(c0, c1)² + w·(c0, c1, 0) = (c0² + w·c0, 2·c0·c1 + w·c1, c1²) for ciphertexts lo..hi in
    one pass: x² + c·x of a batch-packed quadratic, with w (B, L) the residues of c's encoding
    per ciphertext and limb. One read of x and one write, where square, scalar product and sum
    took four passes over memory."""
    limbs, n = a.shape[2], a.shape[3]
    for i in range(lo, hi):
        for li in range(limbs):
            q = np.int64(limb_primes[li])
            qinv = 1.0 / np.float64(q)
            c = np.int64(w[i, li])
            for j in range(n):
                x0 = a[i, 0, li, j]
                x1 = a[i, 1, li, j]
                out[i, 0, li, j] = _addmod(_mulmod(x0, x0, q, qinv), _mulmod(x0, c, q, qinv), q)
                t = _mulmod(x0, x1, q, qinv)
                out[i, 1, li, j] = _addmod(_addmod(t, t, q), _mulmod(x1, c, q, qinv), q)
                out[i, 2, li, j] = _mulmod(x1, x1, q, qinv)


@nb.njit(nogil=True, cache=True)
def mul_add_mod(a, b, acc, mod_idx, primes):
    """acc = acc + a·b mod q row-wise."""
    rows, n = a.shape
    for r in range(rows):
        q = np.int64(primes[mod_idx[r]])
        qinv = 1.0 / np.float64(q)
        for j in range(n):
            acc[r, j] = _addmod(acc[r, j], _mulmod(a[r, j], b[r, j], q, qinv), q)


@nb.njit(nogil=True, cache=True)
def mul_scalar_mod(a, s, out, mod_idx, primes):
    """out[r] = a[r]·s[r] mod q (s: one residue per row) — Shoup's product, fixed per row."""
    rows, n = a.shape
    for r in range(rows):
        q64 = np.uint64(primes[mod_idx[r]])
        q32 = np.uint32(q64)
        w = np.uint64(s[r])
        wp = (w << _U32) // q64
        src = a[r]
        dst = out[r]
        for j in range(n):
            y = np.uint64(np.uint32(src[j]))
            v = np.uint32(y * w - ((y * wp) >> _U32) * q64)
            dst[j] = np.int32(min(v, np.uint32(v - q32)))


@nb.njit(nogil=True, cache=True)
def add_mod(a, b, out, mod_idx, primes):
    rows, n = a.shape
    for r in range(rows):
        q = np.int64(primes[mod_idx[r]])
        for j in range(n):
            out[r, j] = _addmod(a[r, j], b[r, j], q)


@nb.njit(nogil=True, cache=True)
def add_mod_rows(a, b_row, out, mod_idx, primes, b):
    """out[r] = a[r] + b[b_row[r]] mod q, or a copy of a[r] where b_row[r] < 0.

    The sum of ciphertexts with different component counts in one pass: the shorter one's
    missing components are zeros, so their rows are copied instead of padded and added."""
    rows, n = a.shape
    for r in range(rows):
        br = b_row[r]
        if br < 0:
            for j in range(n):
                out[r, j] = a[r, j]
            continue
        q = np.int64(primes[mod_idx[r]])
        for j in range(n):
            out[r, j] = _addmod(a[r, j], b[br, j], q)


@nb.njit(nogil=True, cache=True)
def sub_mod(a, b, out, mod_idx, primes):
    rows, n = a.shape
    for r in range(rows):
        q = np.int64(primes[mod_idx[r]])
        for j in range(n):
            out[r, j] = _addmod(a[r, j], q - np.int64(b[r, j]), q)


@nb.njit(nogil=True, cache=True)
def add_scalar_mod(a, s, out, mod_idx, primes):
    """out[r] = a[r] + s[r] mod q (s reduced, one residue per row)."""
    rows, n = a.shape
    for r in range(rows):
        q = np.int64(primes[mod_idx[r]])
        c = s[r]
        for j in range(n):
            out[r, j] = _addmod(a[r, j], c, q)


@nb.njit(nogil=True, cache=True)
def add_c0_constants(data, res, lo, hi, limb_primes):
    """data[i, 0, l] += res[i, l] mod q_l in place for ciphertexts lo..hi: a constant per
    ciphertext added to its c0 (data (B, C, L, N), res (B, L) reduced residues)."""
    limbs, n = data.shape[2], data.shape[3]
    for i in range(lo, hi):
        for li in range(limbs):
            q = np.int64(limb_primes[li])
            c = np.int64(res[i, li])
            row = data[i, 0, li]
            for j in range(n):
                row[j] = _addmod(row[j], c, q)


@nb.njit(nogil=True, cache=True)
def mul_bcast(a, b, out, mod_idx, primes):
    """out[p, r] = a[p, r]·b[r] mod q_r: a (P, R, N), b (R, N) shared by every p."""
    npoly, rows, n = a.shape
    for idx in range(npoly * rows):
        p = idx // rows
        r = idx % rows
        q = np.int64(primes[mod_idx[r]])
        qinv = 1.0 / np.float64(q)
        for j in range(n):
            out[p, r, j] = _mulmod(a[p, r, j], b[r, j], q, qinv)


@nb.njit(nogil=True, cache=True)
def mul_add_bcast(a, b, acc, mod_idx, primes):
    """acc[p, r] += a[p, r]·b[r] mod q_r: a (P, R, N), b (R, N) shared by every p."""
    npoly, rows, n = a.shape
    for idx in range(npoly * rows):
        p = idx // rows
        r = idx % rows
        q = np.int64(primes[mod_idx[r]])
        qinv = 1.0 / np.float64(q)
        for j in range(n):
            acc[p, r, j] = _addmod(acc[p, r, j], _mulmod(a[p, r, j], b[r, j], q, qinv), q)


@nb.njit(nogil=True, cache=True)
def base_convert(x, src_idx, dst_idx, primes, qhat_inv, qhat_mod, big_mod, exact, out):
    """Fast RNS base conversion (approximate: adds a small multiple of the source modulus B).

    x: (P, k, N) residues of P polynomials in the k source primes (coefficient form).
    out[p, t] = Σ_i [x_i · (B/b_i)^{-1}]_{b_i} · [B/b_i]_t mod t   for each target prime t,
    with qhat_inv[i] = (B/b_i)^{-1} mod b_i and qhat_mod[i, t] = (B/b_i) mod t.

    The sum equals x + u·B with u = ⌊Σ_i y_i/b_i⌋ ∈ [0, k). With ``exact`` the overflow u is
    computed in floating point (Σ_i y_i/b_i has ~2^-50 relative error, so u is exact except for
    values within ~2^-48·B of a multiple of B) and u·[B]_t (``big_mod[t]``) subtracted.
    """
    npoly, k, n = x.shape
    m = dst_idx.shape[0]
    for p in range(npoly):
        y = np.empty((k, n), dtype=np.int32)
        for i in range(k):
            qi = np.int64(primes[src_idx[i]])
            qiinv = 1.0 / np.float64(qi)
            w = qhat_inv[i]
            for j in range(n):
                y[i, j] = _mulmod(x[p, i, j], w, qi, qiinv)
        for t in range(m):
            qt = np.int64(primes[dst_idx[t]])
            qtinv = 1.0 / np.float64(qt)
            row = out[p, t]
            c0 = qhat_mod[0, t]
            for j in range(n):  # y may exceed qt (larger source prime): _mulmod allows a < 2^31
                row[j] = _mulmod(y[0, j], c0, qt, qtinv)
            for i in range(1, k):
                ci = qhat_mod[i, t]
                for j in range(n):
                    row[j] = _addmod(row[j], _mulmod(y[i, j], ci, qt, qtinv), qt)
            if exact and k > 1:
                bt = big_mod[t]
                for j in range(n):
                    v = 0.0
                    for i in range(k):
                        v += np.float64(y[i, j]) / np.float64(primes[src_idx[i]])
                    u = np.int64(v)
                    row[j] = _addmod(row[j], qt - _mulmod(u, bt, qt, qtinv), qt)


@nb.njit(nogil=True, cache=True)
def gather_centered(x, rows, comp, limb, q, out, col):
    """out[i, :] = centered float of x[rows[i], comp, limb, col : col + T] (T = out's width);
    rows < 0 give zero rows.

    x: (K, C, L, N) int32 residues. The centered lift (−q/2, q/2] halves the magnitude entering
    the fp64 GEMM, which buys one more exact bit per weight digit. ``col``: the first of the
    column tile (see ``linear._products``: a tile's gather, GEMM and reduction stay in cache).
    """
    k = rows.shape[0]
    t = out.shape[1]
    half = np.int32(q // 2)
    qf = np.float64(q)
    for i in range(k):
        r = rows[i]
        dst = out[i]
        if r < 0:
            dst[:] = 0.0
            continue
        src = x[r, comp, limb, col : col + t]  # contiguous: a branch-free, vectorized loop
        for j in range(t):
            v = src[j]
            dst[j] = np.float64(v) - (qf if v > half else 0.0)


@nb.njit(nogil=True, cache=True)
def reduce_digit_products(z, radix, s_mul, s_shoup, q, out, comp, limb, out_rows, accumulate, col):
    """out[out_rows[o], comp, limb, col : col + T] = (Σ_t z[t, o, :]·radix^t)·2^s mod q, T being
    z's width (``accumulate``: added to what the row holds, mod q — partial products of one
    layer summed chunk by chunk).

    z[t] are exact fp64 GEMM results of weight digit-plane t, |z| < 2^52. Horner's rule from the
    top plane stays exact in doubles: with r < q < 2^31 the partial result and radix = 2^b
    (b ≤ 21), z[t] + r·2^b < 2^53. Each step reduces in doubles — r = v − ⌊v/q⌋·q is exact and
    float→int32 conversions vectorize where int64 ones do not — and the block-floating-point
    factor 2^s mod q (``s_mul``, with its Shoup companion ``s_shoup``) is applied once.
    """
    planes, outs, n = z.shape
    qf = np.float64(q)
    qinv = 1.0 / qf
    q32 = np.uint32(q)
    q64 = np.uint64(q)
    w = np.uint64(s_mul)
    wp = np.uint64(s_shoup)
    r = np.empty(n, dtype=np.float64)  # one output row's partial result (stays in L1/L2)
    for o in range(outs):
        for t in range(planes - 1, -1, -1):  # plane loop outside: the j loops vectorize
            zt = z[t, o]
            carry = 0.0 if t == planes - 1 else radix
            for j in range(n):
                v = zt[j] + r[j] * carry if t < planes - 1 else zt[j]
                u = v - np.floor(v * qinv) * qf
                u = u + qf if u < 0 else u
                r[j] = u - qf if u >= qf else u
        row = out[out_rows[o], comp, limb, col : col + n]  # (a runtime offset would not vectorize)
        for j in range(n):
            y = np.uint64(np.uint32(np.int32(r[j])))
            m = np.uint32(y * w - ((y * wp) >> _U32) * q64)
            m = min(m, np.uint32(m - q32))
            if accumulate:
                a = np.uint32(row[j]) + m
                m = min(a, np.uint32(a - q32))
            row[j] = np.int32(m)


@nb.njit(nogil=True, cache=True)
def reduce_signed(v, mod_idx, primes, out):
    """out[r, l, :] = v[r, :] mod q_l for signed integers |v| < 2^62 (int64) — float Barrett."""
    rows, n = v.shape
    limbs = mod_idx.shape[0]
    for r in range(rows):
        for li in range(limbs):
            q = np.int64(primes[mod_idx[li]])
            qinv = 1.0 / np.float64(q)
            for j in range(n):
                x = v[r, j]
                k = np.int64(np.floor(np.float64(x) * qinv))
                t = x - k * q  # within a few q of [0, q): the float quotient is off by ≤ 2
                t = t + (q & (t >> 63))
                t = t + (q & (t >> 63))
                t = t - q
                t = t + (q & (t >> 63))
                t = t - q
                out[r, li, j] = t + (q & (t >> 63))


@nb.njit(nogil=True, cache=True)
def rescale_lift(last, q_last, mod_idx, primes, out):
    """out[r, i] = [centered(last[r])]_{q_i}: the dropped limb, lifted to (−q/2, q/2] and reduced
    into each remaining prime: one conditional correction each way when q_last/2 < q_i, a true
    remainder when q_i is smaller (small base primes split a base modulus of a few bits more
    than the scale)."""
    rows, n = last.shape
    half = q_last >> 1
    for r in range(rows):
        for i in range(mod_idx.shape[0]):
            q = np.int64(primes[mod_idx[i]])
            if half >= q:
                for j in range(n):
                    v = np.int64(last[r, j])
                    v = v - q_last if v > half else v
                    out[r, i, j] = v % q
                continue
            for j in range(n):
                v = np.int64(last[r, j])
                v = v - q_last if v > half else v
                v = v + (q & (v >> 63))
                v = v - q
                out[r, i, j] = v + (q & (v >> 63))


@nb.njit(nogil=True, cache=True)
def rescale_lift2(top, q_lo, q_hi, q_lo_inv, mod_idx, primes, out):
    """out[r, i] = [centered(v)]_{q_i} where v ∈ [0, q_lo·q_hi) is the CRT lift of the two
    dropped limbs top[r] = (v mod q_lo, v mod q_hi) (Garner: v = a + q_lo·((b − a)·q_lo⁻¹ mod
    q_hi)), centered to (−Q/2, Q/2], Q = q_lo·q_hi < 2^62: a rescale by two primes at once."""
    rows, n = top.shape[0], top.shape[2]
    big = q_lo * q_hi
    half = big >> 1
    hinv = 1.0 / np.float64(q_hi)
    v = np.empty(n, dtype=np.int64)
    for r in range(rows):
        for j in range(n):
            a = np.int64(top[r, 0, j])
            d = np.int64(top[r, 1, j]) - a  # in (−2^31, 2^31): one float-quotient reduction
            d = d - np.int64(np.float64(d) * hinv) * q_hi
            d = d + (q_hi & (d >> 63))
            t = _mulmod(d, q_lo_inv, q_hi, hinv)
            w = a + q_lo * t
            v[j] = w - big if w > half else w
        for i in range(mod_idx.shape[0]):
            q = np.int64(primes[mod_idx[i]])
            qinv = 1.0 / np.float64(q)
            for j in range(n):  # |v| < 2^61: the float quotient is off by at most one
                x = v[j] - np.int64(np.float64(v[j]) * qinv) * q  # in (−2q, 2q)
                x = x + (q & (x >> 63))
                x = x + (q & (x >> 63))
                x = x - q
                out[r, i, j] = x + (q & (x >> 63))


@nb.njit(nogil=True, cache=True)
def sub_mul_scalar_into(a, b, s, mod_idx, primes):
    """b[r, i] ← (a[r, i] − b[r, i])·s[i] mod q_i for a (R, ≥L, N) and b (R, L, N), in place.

    The difference is formed in uint32 (a + q − b < 2^32) and s[i] is a fixed multiplier per
    limb, so Shoup's product applies (no division, no float round trip). In place because
    the rescale needs no second batch-sized array — and written as such: passing b as a
    separate output makes LLVM's runtime overlap check fail and fall back to scalar code
    (3× slower), where one array read and written at the same index vectorizes.
    """
    rows, limbs, n = b.shape
    for i in range(limbs):
        q64 = np.uint64(primes[mod_idx[i]])
        q32 = np.uint32(q64)
        w = np.uint64(s[i])
        wp = (w << _U32) // q64
        for r in range(rows):
            src_a = a[r, i]
            dst = b[r, i]
            for j in range(n):
                d = np.uint32(np.uint32(src_a[j]) + q32 - np.uint32(dst[j]))
                y = np.uint64(min(d, np.uint32(d - q32)))
                v = np.uint32(y * w - ((y * wp) >> _U32) * q64)
                dst[j] = np.int32(min(v, np.uint32(v - q32)))
