"""``hecnn bench ckks``: our CKKS core against Microsoft SEAL called op by op.

Both run in the same process on the same parameters (N, data primes, special prime). SEAL is
driven the way a user would drive it: one library call per ciphertext operation, one thread.
hecnn processes whole batches as arrays. Per-ciphertext times are reported for both; the two
goal ratios are

- ``linear_vs_seal``: a 3×3×64→64 conv-shaped layer (576 inputs × 64 outputs) at N=2^14 —
  SEAL's time per output (multiply_plain + add_inplace over 576 inputs, measured on a slice of
  the outputs) × 64, over hecnn's ``linear_combination`` of the whole layer;
- ``relin_vs_seal``: SEAL ``relinearize`` per ciphertext over hecnn's batched relinearization
  per ciphertext (batch ≥ 64).
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from hecnn.benchmarks.seal_ops import SealSession
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.keys import KeyGenerator
from hecnn.ckks.params import CkksParameters


@dataclass
class Row:
    op: str
    seal_ms: float | None  # per ciphertext (or per output for the layer)
    ours_ms: float
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.seal_ms is None else self.seal_ms / self.ours_ms


def _timed(fn, repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(
    quick: bool = False,
    *,
    n: int = 1 << 14,
    data_primes: int = 9,
    console: Console | None = None,
) -> dict[str, float]:
    """Measure and print the table; return the summary ratios."""
    console = console or Console()
    params = CkksParameters.create(depth=data_primes - 1, n=n, scale_bits=26)
    params_k1 = CkksParameters.create(depth=data_primes - 1, n=n, scale_bits=26, special_primes=1)
    ctx = CkksContext(params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk, rotations=[1])
    rng = np.random.default_rng(0)  # benchmark data, not key material
    width = 64
    k_in, k_out = 576, 64
    relin_batch = 64
    distinct = 8
    x = rng.uniform(-1, 1, (distinct, width))
    w = rng.normal(size=(k_out, k_in)) / math.sqrt(k_in)

    base = encrypt(ctx, x, pk)
    tiles = -(-k_in // distinct)
    inputs = CiphertextBatch(
        ctx, np.ascontiguousarray(np.tile(base.data, (tiles, 1, 1, 1))[:k_in]), base.scale
    )
    xs = np.tile(x, (tiles, 1))[:k_in]

    rows: list[Row] = []
    repeat = 1 if quick else 3

    # warm the compiled kernels on a small problem first
    inputs[:8].linear_combination(w[:2, :8])
    inputs[:2].square().relinearize(evk).rescale().rotate(1, evk)

    t_lin = _timed(lambda: inputs.linear_combination(w), repeat)
    y = inputs.linear_combination(w).rescale()
    lin_err = float(np.abs(decrypt(ctx, y, sk, slots=width) - w @ xs).max())
    sq = inputs[:relin_batch].square()
    t_relin = _timed(lambda: sq.relinearize(evk), repeat) / relin_batch
    r = sq.relinearize(evk)
    ctx1 = CkksContext(params_k1)
    kg1 = KeyGenerator(ctx1)
    evk1 = kg1.evaluation_keys(kg1.secret_key())
    sq1 = CiphertextBatch(ctx1, sq.data, sq.scale)  # same data primes: timing only
    sq1[:2].relinearize(evk1)
    t_relin_k1 = _timed(lambda: sq1.relinearize(evk1), repeat) / relin_batch
    t_rescale = _timed(lambda: r.rescale(), repeat) / relin_batch
    relin_err = float(
        np.abs(decrypt(ctx, r.rescale(), sk, slots=width) - xs[:relin_batch] ** 2).max()
    )
    t_add = _timed(lambda: inputs + inputs, repeat) / k_in
    t_scal = _timed(lambda: inputs.mul_scalar(0.7), repeat) / k_in
    one = inputs[:relin_batch]
    t_rot = _timed(lambda: one.rotate(1, evk), repeat) / relin_batch
    limbs = inputs.data[:64].reshape(-1, n).shape[0]
    ntt_arr = np.ascontiguousarray(inputs.data[:64])
    t_ntt = _timed(
        lambda: ctx.ntt(ntt_arr.reshape(-1, params.max_level + 1, n), inputs.idx), repeat
    )
    t_ntt /= limbs

    seal_rows: dict[str, float | None] = dict.fromkeys(
        ("add", "scal", "lin", "relin", "rescale", "rot")
    )
    seal_note = ""
    try:
        s = SealSession(params)
    except ImportError:
        s = None
        seal_note = "seal-python not installed (pip install 'hecnn[bench]'): SEAL columns skipped"
    if s is not None:
        ev = s.evaluator
        cts = [s.encrypt(x[i]) for i in range(distinct)]
        m = 4 if quick else 16
        t0 = time.perf_counter()
        for i in range(m):
            ev.add(cts[i % distinct], cts[(i + 1) % distinct])
        seal_rows["add"] = (time.perf_counter() - t0) / m
        pt = s.scalar(0.7, cts[0])
        t0 = time.perf_counter()
        for i in range(m):
            ev.multiply_plain(cts[i % distinct], pt)
        seal_rows["scal"] = (time.perf_counter() - t0) / m
        outs = 1 if quick else 2
        wpts = [[s.scalar(float(w[o, k]), cts[0]) for k in range(k_in)] for o in range(outs)]
        t0 = time.perf_counter()
        seal_out = []
        for o in range(outs):
            acc = ev.multiply_plain(cts[0], wpts[o][0])
            for k in range(1, k_in):
                ev.add_inplace(acc, ev.multiply_plain(cts[k % distinct], wpts[o][k]))
            seal_out.append(acc)
        seal_rows["lin"] = (time.perf_counter() - t0) / outs
        ev.rescale_to_next_inplace(seal_out[0])
        seal_lin_err = float(np.abs(s.decrypt(seal_out[0], width) - (w @ xs)[0]).max())
        seal_note = f"SEAL layer error {seal_lin_err:.1e} on output 0 (ours {lin_err:.1e})"
        three = [ev.square(cts[i % distinct]) for i in range(m)]
        t0 = time.perf_counter()
        relin = [ev.relinearize(c, s.rk) for c in three]
        seal_rows["relin"] = (time.perf_counter() - t0) / m
        t0 = time.perf_counter()
        for c in relin:
            ev.rescale_to_next(c)
        seal_rows["rescale"] = (time.perf_counter() - t0) / m
        t0 = time.perf_counter()
        for i in range(m):
            ev.rotate_vector(cts[i % distinct], 1, s.gk)
        seal_rows["rot"] = (time.perf_counter() - t0) / m

    def ms(v):
        return None if v is None else 1e3 * v

    macs = k_out * k_in * 2 * (params.max_level + 1) * n
    rows = [
        Row("add (per ct)", ms(seal_rows["add"]), 1e3 * t_add),
        Row("ct × scalar (per ct)", ms(seal_rows["scal"]), 1e3 * t_scal),
        Row(
            f"linear {k_in}→{k_out} (per output)",
            ms(seal_rows["lin"]),
            1e3 * t_lin / k_out,
            f"hecnn {macs / t_lin / 1e9:.2f} G modMAC/s, layer {t_lin:.2f} s",
        ),
        Row(
            f"relinearize (per ct, batch {relin_batch})",
            ms(seal_rows["relin"]),
            1e3 * t_relin,
            f"hybrid key switching, {len(params.special_moduli)} special primes",
        ),
        Row(
            "relinearize, 1 special prime",
            ms(seal_rows["relin"]),
            1e3 * t_relin_k1,
            "SEAL's decomposition (one digit per prime)",
        ),
        Row("rescale (per ct)", ms(seal_rows["rescale"]), 1e3 * t_rescale),
        Row("rotate by 1 (per ct)", ms(seal_rows["rot"]), 1e3 * t_rot),
        Row("NTT (per 2^14 limb)", None, 1e3 * t_ntt * (1 << 14) / n),
    ]
    table = Table(
        title=f"hecnn CKKS core vs SEAL op-by-op — N={n}, {params.max_level + 1} data primes "
        f"(log Q={params.log_q:.0f}), scale 2^26, {os.cpu_count()} cores ({platform.machine()})"
    )
    for col in ("operation", "SEAL ms", "hecnn ms", "speed-up", "note"):
        table.add_column(col, justify="right" if col != "operation" and col != "note" else "left")
    for row in rows:
        table.add_row(
            row.op,
            "—" if row.seal_ms is None else f"{row.seal_ms:.3f}",
            f"{row.ours_ms:.3f}",
            "—" if row.ratio is None else f"{row.ratio:.1f}×",
            row.note,
        )
    console.print(table)
    console.print(f"max error: layer {lin_err:.2e}, square+relin+rescale {relin_err:.2e}")
    if seal_note:
        console.print(seal_note)
    lin_ratio = rows[2].ratio
    relin_ratio = rows[3].ratio  # our default parameters
    summary = {
        "linear_vs_seal": float("nan") if lin_ratio is None else lin_ratio,
        "relin_vs_seal": float("nan") if relin_ratio is None else relin_ratio,
    }
    lin, rel = summary["linear_vs_seal"], summary["relin_vs_seal"]
    print(f"linear_vs_seal={lin:.1f} relin_vs_seal={rel:.2f}")
    return summary
