"""``hecnn bench peers``: the same networks, weights and images through hecnn and its peers.

Batch packing (one ciphertext per feature, one image per slot): ``cryptonets_mnist`` and
``ishiyama_mnist`` through hecnn and through OpenFHE written by hand
(:mod:`~hecnn.benchmarks.peers.openfhe_runner`, N = 2^14, 128-bit, OpenMP on every core), plus
Microsoft SEAL's op-count estimate at hecnn's own plan (:mod:`hecnn.benchmarks.seal_ops`).
Per-image packing: Orion's LoLa-style MNIST net and LeNet-5 (square activations, weights trained
in hecnn and loaded into Orion), one image at a time; hecnn's side is its per-image latency when
``compile_model(..., packing="image")`` exists, and its batch-packed amortized time as a
separate row either way.

Every system's decrypted logits are compared with the plaintext torch model on the same images
(label agreement, max logit error). Ratios are "peer time ÷ hecnn time" (hecnn's speed-up):
amortized server ms/image for batch packing, latency for per-image packing. The last line is
``vs_openfhe=<smallest batch speed-up over the networks> vs_orion=<smallest latency speed-up>``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hecnn.benchmarks.models import _plain_logits, bench_row, load_images, load_model
from hecnn.benchmarks.peers.envs import OPENFHE, ORION, ensure_env
from hecnn.benchmarks.peers.exchange import (
    PeerRunError,
    network_layers,
    orion_state,
    run_runner,
)
from hecnn.errors import HecnnError

BATCH_NETS = ("cryptonets_mnist", "ishiyama_mnist")
IMAGE_NETS = {"lola_mnist": "lola", "lenet5_mnist": "lenet"}
FULL_BATCH, QUICK_BATCH = 8192, 1024
#: OpenFHE parameters: the ring that holds 8192 images; scale and first prime as OpenFHE's
#: CKKS examples set them
OPENFHE_RING, OPENFHE_SCALE_BITS, OPENFHE_FIRST_BITS = 1 << 14, 50, 60
FIT_IMAGES = 256
#: hecnn batch runs stop after this many seconds and project the rest (LeNet-5 at full batch)
HECNN_TIME_LIMIT = 300.0
#: --quick runs OpenFHE on the smaller network only: at N = 2^14 its time does not shrink with
#: the batch, and both networks take longer than the quick run's 10 minutes on 2 busy cores
QUICK_OPENFHE_NETS = ("cryptonets_mnist",)


@dataclass
class PeerRow:
    """One system on one network (times in seconds, memory in bytes)."""

    network: str
    system: str
    packing: str  # batch | image
    params: str = ""
    images: int = 0
    total_s: float | None = None  # server time (batch) or the images' summed latency
    ms: float | None = None  # amortized ms/image (batch) or median latency in ms (image)
    peak_rss: int = 0
    agreement: float | None = None
    max_error: float | None = None
    ratio: float | None = None  # this system's ms ÷ hecnn's ms: hecnn's speed-up
    cpu_s: float | None = None  # CPU seconds of the server part (all threads; load-robust)
    status: str = "ok"  # ok | skipped | failed | estimate
    note: str = ""


def _compare(row: PeerRow, logits: np.ndarray, ref: np.ndarray) -> None:
    row.agreement = 100.0 * float(np.mean(logits.argmax(1) == ref.argmax(1)))
    row.max_error = float(np.abs(logits - ref).max())


def hecnn_batch_rows(
    name: str, batch: int, *, seal: bool, quick: bool, log, time_limit: float = HECNN_TIME_LIMIT
) -> list[PeerRow]:
    """hecnn at ``batch`` images (``bench models``' measurement) and SEAL's op-count estimate.
    A run past ``time_limit`` stops and projects its total (status "stopped")."""
    r = bench_row(name, batch=batch, seal_reps=2 if quick else 4, time_limit=time_limit, log=log)
    row = PeerRow(
        name,
        "hecnn",
        "batch",
        f"N=2^{r.n.bit_length() - 1}, {r.levels} levels",
        r.batch,
        r.server_s,
        r.ms_per_image,
        r.peak_rss,
        r.agreement,
        r.max_error,
        status="ok" if r.status == "ok" else r.status,
        note=r.note,
        cpu_s=r.cpu_s,
    )
    rows = [row]
    if seal and r.seal is not None:
        rows.append(
            PeerRow(
                name,
                "SEAL (op-count estimate)",
                "batch",
                row.params + ", 1 thread",
                r.batch,
                r.seal.seconds,
                1e3 * r.seal.seconds / r.batch,
                status="estimate",
                note="SEAL's per-op times × hecnn's plan op counts (not a SEAL run)",
            )
        )
    return rows


def openfhe_row(name: str, batch: int, python, workdir: Path, threads: int, log) -> PeerRow:
    model, dataset, _ = load_model(name)
    x, _ = load_images(dataset, batch)
    arrays = network_layers(model, tuple(x.shape[1:]))
    arrays.update(
        images=x.reshape(len(x), -1).astype(np.float64),
        ring_dim=OPENFHE_RING,
        scale_bits=OPENFHE_SCALE_BITS,
        first_mod_bits=OPENFHE_FIRST_BITS,
        security="128",
    )
    log(f"{name}: OpenFHE on {batch} images (N=2^14, {threads} OpenMP threads)…")
    out = run_runner(
        python, "openfhe_runner.py", arrays, workdir / f"openfhe-{name}-{batch}", threads=threads
    )
    res = out.result
    server = res["stages"]["inference"]
    row = PeerRow(
        name,
        f"OpenFHE {res.get('version', '')}".strip(),
        "batch",
        f"N=2^{res['ring_dim'].bit_length() - 1}, depth {res['depth']}, {threads} thread{'s' if threads > 1 else ''}",
        batch,
        server,
        1e3 * server / batch,
        res["peak_rss"],
        note=", ".join(f"{k} {v:.1f} s" for k, v in res["stages"].items()),
        cpu_s=res.get("inference_cpu_s"),
    )
    _compare(row, out.logits, _plain_logits(model, x))
    log(
        f"{name}: OpenFHE server {server:.1f} s ({row.ms:.2f} ms/image), agreement "
        f"{row.agreement:.2f} %, max error {row.max_error:.1e}"
    )
    return row


def orion_row(name: str, images: int, python, workdir: Path, log) -> PeerRow:
    model, dataset, _ = load_model(name)
    x, _ = load_images(dataset, max(images, FIT_IMAGES))
    arrays = orion_state(model)
    arrays.update(model=IMAGE_NETS[name], images=x[:images], fit_images=x[:FIT_IMAGES])
    log(f"{name}: Orion on {images} images, one at a time…")
    out = run_runner(python, "orion_runner.py", arrays, workdir / f"orion-{name}")
    res = out.result
    lat = res["latency_s"]
    steady = lat[1:] or lat  # the first image also warms Orion's caches
    row = PeerRow(
        name,
        "Orion 1.0.2 (Lattigo)",
        "image",
        f"N=2^{res['log_n']}, {len(res['log_q'])} primes, LogScale {res['log_scale']}",
        images,
        sum(lat),
        1e3 * statistics.median(steady),
        res["peak_rss"],
        note=f"compile {res['stages']['compile']:.1f} s; first image {lat[0]:.2f} s",
        cpu_s=statistics.median(res["latency_cpu_s"][1:] or res["latency_cpu_s"]),
    )
    _compare(row, out.logits, _plain_logits(model, x[:images]))
    log(
        f"{name}: Orion median latency {row.ms / 1e3:.2f} s, agreement {row.agreement:.2f} %, "
        f"compile {res['stages']['compile']:.1f} s, peak {row.peak_rss / 2**30:.1f} GiB"
    )
    return row


def hecnn_latency_row(name: str, images: int, log) -> PeerRow:
    """hecnn's per-image latency, measured by ``hecnn bench latency`` when this hecnn has
    per-image packing (``hecnn.benchmarks.latency``); otherwise a skipped row saying so."""
    row = PeerRow(name, "hecnn", "image")
    try:
        from hecnn.benchmarks.latency import bench_latency
    except ImportError:
        row.status = "skipped"
        row.note = "hecnn per-image packing not available"
        return row
    try:
        r = bench_latency(name, images=images, log=log)
    except (HecnnError, TypeError, ValueError, AttributeError) as exc:
        row.status = "skipped"
        row.note = f"hecnn per-image latency failed: {exc}"
        return row
    row.params = r.params or f"N=2^{r.n.bit_length() - 1}, {r.levels} levels"
    row.images = images
    row.total_s = r.first_s + sum(r.runs_s)
    row.ms = 1e3 * r.latency_s
    row.cpu_s = statistics.median(r.cpu_s) if r.cpu_s else None
    row.agreement, row.max_error = r.agreement, r.max_error
    row.note = f"first image {r.first_s:.2f} s (encodes the weight diagonals)"
    return row


def _ratios(rows: list[PeerRow]) -> None:
    base = {
        (r.network, r.packing): r.ms
        for r in rows
        if r.system == "hecnn" and r.status == "ok" and r.ms
    }
    for r in rows:
        ref = base.get((r.network, r.packing))
        if r.system != "hecnn" and ref and r.ms:
            r.ratio = r.ms / ref


def summary_line(rows: list[PeerRow]) -> str:
    def smallest(prefix: str, packing: str) -> str:
        vals = [
            r.ratio
            for r in rows
            if r.system.startswith(prefix) and r.packing == packing and r.ratio
        ]
        return f"{min(vals):.2f}" if vals else "n/a"

    return f"vs_openfhe={smallest('OpenFHE', 'batch')} vs_orion={smallest('Orion', 'image')}"


def format_table(rows: list[PeerRow]) -> Table:
    table = Table(
        title=f"hecnn vs peers — {os.cpu_count()} cores ({platform.machine()}), 128-bit CKKS"
    )
    cols = (
        "network",
        "system",
        "packing",
        "parameters",
        "images",
        "server s",
        "CPU s",
        "ms/image or latency ms",
        "peak RSS GiB",
        "agreement %",
        "max err",
        "hecnn speed-up",
    )
    for c in cols:
        table.add_column(c, justify="left" if c in cols[:4] else "right")
    for r in rows:
        if r.status in ("skipped", "failed"):
            table.add_row(
                r.network, r.system, r.packing, r.status, "", "", "", r.note[:60], "", "", "", ""
            )
            continue
        proj = "~" if r.status == "stopped" else ""  # projected from a run stopped midway
        table.add_row(
            r.network,
            r.system,
            r.packing,
            r.params,
            str(r.images),
            "—" if r.total_s is None else f"{proj}{r.total_s:.1f}",
            "—" if r.cpu_s is None else f"{proj}{r.cpu_s:.1f}",
            "—" if r.ms is None else f"{proj}{r.ms:.3f}",
            f"{r.peak_rss / 2**30:.2f}" if r.peak_rss else "—",
            "—" if r.agreement is None else f"{r.agreement:.2f}",
            "—" if r.max_error is None else f"{r.max_error:.1e}",
            "—" if r.ratio is None else f"{r.ratio:.2f}×",
        )
    return table


def _guard(rows: list[PeerRow], network: str, system: str, packing: str, log, fn):
    """Run one measurement; a failure becomes a 'failed' row, not an aborted benchmark."""
    try:
        got = fn()
    except (HecnnError, PeerRunError, MemoryError, OSError) as exc:
        log(f"{network}: {system} failed: {exc}")
        rows.append(PeerRow(network, system, packing, status="failed", note=str(exc)))
        return
    rows.extend(got if isinstance(got, list) else [got])


def run_peers(
    *,
    quick: bool = False,
    peers: tuple[str, ...] = ("openfhe", "orion", "seal"),
    batch: int | None = None,
    orion_images: int | None = None,
    image_nets: tuple[str, ...] | None = None,
    batch_nets: tuple[str, ...] | None = None,
    install: bool = True,
    time_limit: float = HECNN_TIME_LIMIT,
    openfhe_threads: int | None = None,
    workdir: Path | None = None,
    json_out: Path | None = None,
    console: Console | None = None,
) -> list[PeerRow]:
    """Measure, print the table, per-row notes and the summary line (see the module doc)."""
    console = console or Console(width=max(170, Console().width))
    log = console.print
    batch = batch or (QUICK_BATCH if quick else FULL_BATCH)
    orion_images = orion_images or (3 if quick else 5)
    if image_nets is None:
        image_nets = ("lola_mnist",) if quick else tuple(IMAGE_NETS)
    threads = openfhe_threads or os.cpu_count() or 1
    rows: list[PeerRow] = []
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="hecnn-peers-")
        workdir = Path(tmp.name)

    openfhe_py = orion_py = None
    openfhe_why = orion_why = ""
    if "openfhe" in peers:
        openfhe_py, openfhe_why = ensure_env(OPENFHE, install=install, log=log)
        if openfhe_py is None:
            log(f"OpenFHE skipped: {openfhe_why}")
    if "orion" in peers:
        orion_py, orion_why = ensure_env(ORION, install=install, log=log)
        if orion_py is None:
            log(f"Orion skipped: {orion_why}")

    for name in BATCH_NETS if batch_nets is None else batch_nets:
        _guard(
            rows,
            name,
            "hecnn",
            "batch",
            log,
            lambda n=name: hecnn_batch_rows(
                n, batch, seal="seal" in peers, quick=quick, log=log, time_limit=time_limit
            ),
        )
        if quick and name not in QUICK_OPENFHE_NETS:
            continue
        if "openfhe" in peers:
            if openfhe_py is None:
                rows.append(PeerRow(name, "OpenFHE", "batch", status="skipped", note=openfhe_why))
            else:
                _guard(
                    rows,
                    name,
                    "OpenFHE",
                    "batch",
                    log,
                    lambda n=name: openfhe_row(n, batch, openfhe_py, workdir, threads, log),
                )
    for name in image_nets:
        rows.append(hecnn_latency_row(name, orion_images, log))
        _guard(
            rows,
            name,
            "hecnn",
            "batch",
            log,
            lambda n=name: hecnn_batch_rows(
                n, batch, seal=False, quick=quick, log=log, time_limit=time_limit
            ),
        )
        if "orion" in peers:
            if orion_py is None:
                rows.append(PeerRow(name, "Orion", "image", status="skipped", note=orion_why))
            else:
                _guard(
                    rows,
                    name,
                    "Orion",
                    "image",
                    log,
                    lambda n=name: orion_row(n, orion_images, orion_py, workdir, log),
                )
    _ratios(rows)
    console.print(format_table(rows))
    for r in rows:
        if r.note:
            console.print(f"{r.network} / {r.system} ({r.packing}): {r.note}")
    if json_out is not None:
        json_out.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if tmp is not None:
        tmp.cleanup()
    print(summary_line(rows))
    return rows
