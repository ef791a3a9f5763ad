"""Single-image latency with per-image packing (``hecnn bench latency --model NAME``).

One encrypted image, end to end on the server side: the run of the plan on the image's few
ciphertexts with the client's evaluation keys (relinearization + exactly the plan's Galois
keys). The first image also encodes the weight diagonals as plaintexts (a per-model cost a
server pays once, before any image arrives), so it is reported apart; ``latency_s`` is the
median over the following images. Every image is checked against the plaintext model (max
logit error, label agreement). Client stages (keygen, encrypt, decrypt) are reported too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hecnn.benchmarks.models import (
    CALIBRATION_IMAGES,
    MEMORY_HEADROOM,
    _available_memory,
    load_images,
    load_model,
)
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator, digits
from hecnn.compile import compile_model
from hecnn.errors import HecnnError
from hecnn.runtime.executor import RunReport
from hecnn.runtime.image import (
    ImageEvaluator,
    decrypt_image,
    encrypt_image,
    image_keys,
    plaintext_bytes,
    rotation_levels,
)


@dataclass
class LatencyResult:
    model: str
    weights: str
    params: str = ""
    n: int = 0
    levels: int = 0
    galois_keys: int = 0
    key_bytes: int = 0
    input_cts: int = 0
    rotations: int = 0  # key switches for rotations per image
    stages: dict[str, float] = field(default_factory=dict)
    first_s: float = 0.0  # first image: includes encoding the weight diagonals
    runs_s: list[float] = field(default_factory=list)
    #: process CPU seconds of each of those runs (all threads): the work itself, less
    #: sensitive than wall time to other processes sharing the cores
    cpu_s: list[float] = field(default_factory=list)
    per_node: dict[str, float] = field(default_factory=dict)
    max_error: float = 0.0
    agreement: float = 0.0
    plain_accuracy: float = 0.0
    enc_accuracy: float = 0.0
    diagonal_bytes: int = 0  # all encoded weight diagonals of the plan
    #: affine nodes whose diagonals did not fit in memory: encoded for every image (their
    #: encoding is part of every image's server time)
    streamed: list[str] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return statistics.median(self.runs_s) if self.runs_s else self.first_s


#: seed of the untrained models timed with ``activation=``
UNTRAINED_SEED = 0


def untrained_model(name: str, activation: str) -> torch.nn.Module:
    """Model row ``name``'s architecture with ``activation``, seeded initial weights, eval mode."""
    from hecnn.nn.models import build_model

    torch.manual_seed(UNTRAINED_SEED)
    try:
        return build_model(name, activation).eval()
    except ValueError as exc:
        raise HecnnError(str(exc)) from None


def galois_key_bytes(plan) -> int:
    """Bytes of the relinearization key and the plan's Galois keys: a key for level ℓ is
    (digits of q_0..q_ℓ, 2, ℓ + 1 + special limbs, N) int32 residues (see
    :func:`~hecnn.runtime.image.rotation_levels`)."""
    p = plan.params
    k = len(p.special_moduli)
    levels = [p.max_level, *rotation_levels(plan).values()]  # relinearization key: all levels
    return sum(len(digits(p, lvl)) * 2 * (lvl + 1 + k) * p.n * 4 for lvl in levels)


def bench_latency(
    name: str,
    *,
    images: int = 4,
    weights_dir: Path | None = None,
    insecure_ring_for_tests: int | None = None,
    log: Callable[[str], None] = print,
    activation: str | None = None,
) -> LatencyResult:
    """Measure the single-image latency of model row ``name`` (see the module doc).

    ``activation`` (e.g. ``poly_layer``): time the same architecture with that activation,
    untrained (its seeded initialisation) — the cost of per-image packing does not depend on
    the weights, so this gives the time column of a granularity whose trained weights are
    not at hand; agreement with its plaintext model is still checked (accuracy is not
    meaningful and is reported as such)."""
    model, dataset, source = load_model(name, weights_dir)
    if activation is not None:
        model, source = untrained_model(name, activation), f"untrained {activation}"
    res = LatencyResult(name, source)
    calib, _ = load_images(dataset, CALIBRATION_IMAGES)
    xs, labels = load_images(dataset, 10_000 if dataset == "mnist" else CALIBRATION_IMAGES)
    pick = np.linspace(0, len(xs) - 1, images + 1).astype(int)  # spread over the labels
    xs, labels = xs[pick], labels[pick]
    t0 = time.perf_counter()
    plan = compile_model(
        model,
        tuple(calib.shape[1:]),
        batch=1,
        calib=calib,
        packing="image",
        insecure_ring_for_tests=insecure_ring_for_tests,
    )
    plan.model_name = name
    res.stages["compile"] = time.perf_counter() - t0
    res.params, res.n, res.levels = plan.params.describe(), plan.params.n, plan.params.max_level
    res.input_cts = plan.image.input_cts
    res.rotations = sum(dm.rotations for dm in plan.image.matrices.values())
    log(plan.summary())
    keys_need = galois_key_bytes(plan)
    if keys_need > MEMORY_HEADROOM * _available_memory():
        raise HecnnError(
            f"{name}: the {len(plan.rotation_steps())} Galois keys need "
            f"{keys_need / 2**30:.1f} GiB, {_available_memory() / 2**30:.1f} GiB are available "
            "— not started"
        )
    ctx = CkksContext(plan.params)
    t0 = time.perf_counter()
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = image_keys(plan, kg, sk)
    res.stages["keygen"] = time.perf_counter() - t0
    res.galois_keys = len(evk.galois)
    res.key_bytes = sum(k.data.nbytes for k in evk.galois.values()) + evk.relin_key().data.nbytes
    # keep the encoded diagonals that fit (after the keys); the rest are encoded per image
    need, room = plaintext_bytes(plan), int(MEMORY_HEADROOM * _available_memory())
    ev = ImageEvaluator(plan, ctx, cache_bytes=None if need <= room else room)
    res.diagonal_bytes = need
    with torch.no_grad():
        ref = model(torch.as_tensor(xs)).double().numpy()
    got, enc_s, dec_s = [], [], []
    for k, x in enumerate(xs):
        t0 = time.perf_counter()
        ct = encrypt_image(plan, ctx, pk, x)
        enc_s.append(time.perf_counter() - t0)
        report = RunReport()
        c0, t0 = time.process_time(), time.perf_counter()
        out = ev.run(ct, evk, report=report)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if k == 0:
            res.first_s = dt
        else:
            res.runs_s.append(dt)
            res.cpu_s.append(dc)
            for t in report.timings:
                res.per_node[t.name] = res.per_node.get(t.name, 0.0) + t.seconds / images
        t0 = time.perf_counter()
        got.append(decrypt_image(plan, ctx, sk, out))
        dec_s.append(time.perf_counter() - t0)
        log(
            f"{name}: image {k}: server {dt:.3f} s (CPU {dc:.3f} s)"
            + (" (encodes the weights)" if k == 0 else "")
        )
    res.streamed = sorted(ev.streamed)
    got = np.stack(got)
    res.stages["encrypt"] = statistics.median(enc_s)
    res.stages["decrypt"] = statistics.median(dec_s)
    res.max_error = float(np.abs(got - ref).max())
    res.agreement = 100.0 * float((got.argmax(1) == ref.argmax(1)).mean())
    res.plain_accuracy = 100.0 * float((ref.argmax(1) == labels).mean())
    res.enc_accuracy = 100.0 * float((got.argmax(1) == labels).mean())
    return res


def format_result(r: LatencyResult) -> Table:
    t = Table(title=f"single-image latency, per-image packing — {r.model} ({r.weights})")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    rows = [
        ("CKKS", r.params),
        ("input ciphertexts", str(r.input_cts)),
        (
            "Galois keys (rotation steps)",
            f"{r.galois_keys} ({r.key_bytes / 2**20:.0f} MiB with relin)",
        ),
        ("rotations per image", str(r.rotations)),
        *[(f"{k} (s)", f"{v:.3f}") for k, v in r.stages.items()],
        (
            "encoded weight diagonals",
            f"{r.diagonal_bytes / 2**30:.2f} GiB"
            + (f"; encoded per image: {', '.join(r.streamed)}" if r.streamed else ", cached"),
        ),
        ("first image, server (s, encodes weights)", f"{r.first_s:.3f}"),
        ("server per image (s), each", ", ".join(f"{s:.3f}" for s in r.runs_s)),
        ("server CPU per image (s, all threads), each", ", ".join(f"{s:.3f}" for s in r.cpu_s)),
        *[(f"  node {k} (s, mean)", f"{v:.3f}") for k, v in r.per_node.items() if v > 1e-3],
        ("max |logit error| vs plaintext", f"{r.max_error:.2e}"),
        ("label agreement (%)", f"{r.agreement:.1f}"),
        ("accuracy plain / encrypted (%)", f"{r.plain_accuracy:.1f} / {r.enc_accuracy:.1f}"),
        ("latency_s (median server time)", f"{r.latency_s:.3f}"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def main(
    name: str,
    *,
    images: int = 4,
    weights_dir: Path | None = None,
    quiet: bool = False,
    activation: str | None = None,
) -> LatencyResult:
    """Run, print the table, end with ``latency_s=<seconds>``."""
    console = Console(width=120)
    res = bench_latency(
        name,
        images=images,
        weights_dir=weights_dir,
        log=(lambda s: None) if quiet else print,
        activation=activation,
    )
    console.print(format_result(res))
    print(f"latency_s={res.latency_s:.3f}")
    return res
