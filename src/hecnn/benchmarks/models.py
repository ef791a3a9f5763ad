"""``hecnn bench models``: each model encrypted at full batch, against its plaintext self and SEAL.

One row per model (``ishiyama_mnist``, ``cryptonets_mnist``, ``ishiyama_cifar``,
``hemet_squeezenet``): compile with the real 128-bit defaults (the compiler picks N; the batch
fills the ring's slots), generate keys, encrypt real test images (the bundled MNIST sample
repeated to fill; CIFAR-10 test images), run, decrypt, and compare with the plaintext model on
the same images (label agreement, max logit error). Stages are timed; the server's peak
resident memory is measured over the run.

The client writes the encrypted batch to a file, a group of features at a time, and the server
maps it (as a server receiving an upload would): a streamed first layer then keeps only the
rows it still needs resident (see :mod:`hecnn.runtime.streaming`). The server runs in a process
of its own, given the serialized plan, the public evaluation keys and the file's path, so the
peak memory reported is the server's alone.

A row whose streamed memory estimate exceeds the memory available is not started (it says how
much it needs). A run that passes ``time_limit`` seconds is stopped; the row reports how far it
got and projects the total from the SEAL op-count weights of what is left.

SEAL column: an op-count estimate, not a SEAL run (see :mod:`hecnn.benchmarks.seal_ops`): SEAL's
per-operation times at the plan's parameters, measured on a few ciphertexts, times the plan's
operation counts; single-threaded, as SEAL runs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from hecnn.benchmarks.isolated import in_own_process
from hecnn.benchmarks.seal_ops import SealEstimate, seal_estimate
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import encrypt
from hecnn.ckks.keys import KeyGenerator
from hecnn.ckks.serialize import Kind
from hecnn.ckks.serialize import dumps as ckks_dumps
from hecnn.ckks.serialize import loads as ckks_loads
from hecnn.compile import compile_model
from hecnn.compile.ir import Plan
from hecnn.compile.serialize import dumps_plan, loads_plan
from hecnn.compile.streaming import default_memory_budget, plan_streaming
from hecnn.errors import HecnnError
from hecnn.runtime import RunReport, decrypt_outputs, pack, run
from hecnn.runtime.memory import current_rss, proc_kib, release_free_heap

ROWS = ("ishiyama_mnist", "cryptonets_mnist", "ishiyama_cifar", "hemet_squeezenet")
QUICK_ROWS = ("ishiyama_mnist", "cryptonets_mnist")
#: trained weights of each row: a bundled model name, or a file under the weights directory
WEIGHTS = {
    "ishiyama_mnist": ("bundled", "ishiyama_mnist_poly_element_kd"),
    "cryptonets_mnist": ("file", "cryptonets_mnist_square.pt"),
    "ishiyama_cifar": ("file", "cifar_ishiyama_swish4.pt"),
    "hemet_squeezenet": ("file", "cifar_squeeze_poly_element_kd.pt"),
    # Orion's own MNIST nets (hecnn bench peers), square activations
    "lola_mnist": ("file", "lola_mnist_square.pt"),
    "lenet5_mnist": ("file", "lenet5_mnist_square.pt"),
}
DEFAULT_TIME_LIMIT = 1500.0
#: features encrypted (and written) at once by the client
ENCRYPT_GROUP = 256
#: share of the available memory a row's estimate may take before it is not started
MEMORY_HEADROOM = 0.9
CALIBRATION_IMAGES = 256


def default_weights_dir() -> Path:
    """``benchmarks/weights`` of the source tree (``HECNN_WEIGHTS`` overrides)."""
    env = os.environ.get("HECNN_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "benchmarks" / "weights"


@dataclass
class ModelRow:
    """One model's measurements (times in seconds, memory in bytes)."""

    model: str
    weights: str
    n: int = 0
    levels: int = 0
    batch: int = 0
    status: str = "ok"  # ok | stopped | skipped | failed
    note: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    server_s: float = 0.0  # the run (measured; the projection when stopped)
    peak_rss: int = 0
    peak_held: int = 0  # ciphertext arrays the executor held at once (its own count)
    rss_at_start: int = 0  # resident when the run began (keys, plan, libraries, client leftovers)
    estimate: int = 0  # streamed memory estimate of ciphertext data
    cpu_s: float = 0.0  # process CPU seconds during the run (÷ server_s: cores kept busy)
    chunks: str = ""
    agreement: float | None = None  # percent of labels equal to the plaintext model's
    max_error: float | None = None
    plain_accuracy: float | None = None
    enc_accuracy: float | None = None
    seal: SealEstimate | None = None

    @property
    def ms_per_image(self) -> float:
        return 1e3 * self.server_s / self.batch if self.batch else float("nan")

    @property
    def seal_ratio(self) -> float | None:
        if self.seal is None or not self.server_s:
            return None
        return self.seal.seconds / self.server_s


def load_model(name: str, weights_dir: Path | None = None) -> tuple[nn.Module, str, str]:
    """(trained model in eval mode, dataset, where its weights came from) of a row."""
    from hecnn.nn import bundled
    from hecnn.nn.models import MODELS
    from hecnn.nn.train import load_trained

    if name not in WEIGHTS:
        raise HecnnError(f"unknown model row {name!r}; choose from {', '.join(ROWS)}")
    kind, what = WEIGHTS[name]
    dataset = MODELS[name][1]
    if kind == "bundled":
        return bundled.load_model(what), dataset, f"bundled {what}"
    path = (weights_dir or default_weights_dir()) / what
    if not path.exists():
        raise HecnnError(
            f"no trained weights {path} (see docs/benchmarks.md for how they were made)"
        )
    return load_trained(path), dataset, path.name


def load_images(dataset: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` float test images of ``dataset`` (repeated when the test set is smaller) and
    their labels."""
    from hecnn.nn import bundled
    from hecnn.nn.data import load_dataset, to_float

    if dataset == "mnist":
        raw, labels = bundled.sample_images()
        x = np.asarray(bundled.to_float(raw), dtype=np.float32)
    else:
        splits = load_dataset(dataset)
        raw, labels = splits.x_test, splits.y_test
        x = np.asarray(to_float(raw, dataset), dtype=np.float32)
    reps = -(-count // len(x))
    return np.concatenate([x] * reps)[:count], np.concatenate([labels] * reps)[:count]


def _available_memory() -> int:
    found = proc_kib("/proc/meminfo", "MemAvailable")
    if found is not None:
        return found
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _encrypt_to_file(
    plan: Plan, ctx: CkksContext, pk, images: np.ndarray, path: Path
) -> CiphertextBatch:
    """The client's side: encrypt the batch a group of features at a time into ``path``; the
    server's side: the file mapped read-only as one ciphertext batch."""
    slots = pack(plan, images)  # (features, batch)
    shape = (len(slots), 2, plan.params.max_level + 1, plan.params.n)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=shape)
    scale = plan.params.scale
    for lo in range(0, len(slots), ENCRYPT_GROUP):
        ct = encrypt(ctx, slots[lo : lo + ENCRYPT_GROUP], pk)
        out[lo : lo + len(ct)] = ct.data
        scale = ct.scale
    out.flush()
    del out
    mapped = np.load(path, mmap_mode="r")
    return CiphertextBatch(ctx, np.asarray(mapped), scale)


class _TimeLimitError(Exception):
    """Raised from the progress callback when the run passes its time limit."""


@dataclass
class _Served:
    """What the server's side hands back: the outputs' residues and scale (None when stopped
    at the time limit), wall and CPU seconds, how far it got, and the run's report."""

    out: tuple[np.ndarray, float] | None
    seconds: float
    cpu_s: float
    fraction: float
    at: str
    report: RunReport


def _serve(
    plan: Plan,
    ct: CiphertextBatch,
    evk,
    budget: int,
    time_limit: float,
    weights: dict[str, float],
    name: str,
    log: Callable[[str], None],
) -> _Served:
    """Run the plan on the encrypted batch with a progress line a minute; stop past
    ``time_limit`` seconds, saying how far the run got (by the SEAL op-count weights)."""
    state = {"fraction": 0.0, "at": ""}
    started = time.perf_counter()
    last_log = [started]

    def progress(node: str, i: int, total: int) -> None:
        state["fraction"] = _fraction_done(plan, weights, node, i)
        state["at"] = node
        now = time.perf_counter()
        if now - last_log[0] > 60:
            last_log[0] = now
            log(f"{name}: {now - started:.0f} s, {100 * state['fraction']:.1f} % — {node}")
        if now - started > time_limit:
            raise _TimeLimitError

    report = RunReport()
    cpu0 = time.process_time()
    try:
        out = run(plan, ct, evk, report=report, memory_budget=budget, progress=progress)
    except _TimeLimitError:
        frac = max(state["fraction"], 1e-9)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
        return _Served(None, elapsed, cpu, frac, state["at"], report)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    return _Served((np.asarray(out.data), out.scale), elapsed, cpu, 1.0, "", report)


def _serve_in_child(
    plan_bytes: bytes,
    keys_bytes: bytes,
    input_path: str,
    scale: float,
    budget: int,
    time_limit: float,
    weights: dict[str, float],
    name: str,
) -> _Served:
    """The server's side in a process of its own: it loads the plan and the public evaluation
    keys, maps the client's ciphertext file, and runs. It holds nothing of the client's — the
    model, the images, SEAL, the secret key (never sent) — so its peak resident set is what a
    server needs, not the sum of both sides' leftovers."""
    plan = loads_plan(plan_bytes)
    ctx = CkksContext(plan.params)
    evk = ckks_loads(keys_bytes, ctx, expect=Kind.EVALUATION_KEYS)
    ct = CiphertextBatch(ctx, np.asarray(np.load(input_path, mmap_mode="r")), scale)
    release_free_heap()
    return _serve(plan, ct, evk, budget, time_limit, weights, name, _print_now)


def _print_now(msg: str) -> None:
    print(msg, flush=True)  # the child's progress lines, into the parent's output


def _plain_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), 1024):
            out.append(model(torch.as_tensor(x[lo : lo + 1024])).double().numpy())
    return np.concatenate(out)


def bench_row(
    name: str,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    memory_budget: int | None = None,
    weights_dir: Path | None = None,
    seal_reps: int = 4,
    batch: int | None = None,
    insecure_ring_for_tests: int | None = None,
    log: Callable[[str], None] = print,
    server_process: bool = True,
) -> ModelRow:
    """Measure one model row (see the module doc). ``batch`` and ``insecure_ring_for_tests``
    exist for unit tests; the benchmark uses the real defaults. ``server_process``: run the
    server's side in a process of its own (the default, see :func:`_serve_in_child`), or in
    this one beside the client's leftovers."""
    model, dataset, source = load_model(name, weights_dir)
    row = ModelRow(name, source)
    t0 = time.perf_counter()
    calib_x, _ = load_images(dataset, CALIBRATION_IMAGES)
    plan = compile_model(
        model,
        tuple(calib_x.shape[1:]),
        batch=batch or 8192,
        calib=calib_x,
        insecure_ring_for_tests=insecure_ring_for_tests,
    )
    plan.model_name = name
    row.batch = plan.batch = batch or plan.params.slots  # the ring's slots: a full batch
    row.stages["compile"] = time.perf_counter() - t0
    resident = {"compile": current_rss()}  # what the client's side keeps, stage by stage
    row.n, row.levels = plan.params.n, plan.params.max_level
    log(f"{name}: N={row.n}, {row.levels} levels, depth {plan.levels}, batch {row.batch}")
    with contextlib.suppress(ImportError):
        t0 = time.perf_counter()
        row.seal = seal_estimate(plan, reps=seal_reps)
        row.stages["SEAL op timing"] = time.perf_counter() - t0
        resident["SEAL op timing"] = current_rss()
    budget = default_memory_budget() if memory_budget is None else memory_budget
    sched = plan_streaming(plan, budget, input_on_disk=True)
    row.estimate = sched.peak
    row.chunks = ", ".join(f"{s.nodes[0]}…{s.nodes[-1]} by {s.chunk}" for s in sched.segments)
    avail = _available_memory()
    if sched.peak > MEMORY_HEADROOM * avail:
        row.status = "skipped"
        row.note = (
            f"not run: the streamed estimate is {sched.peak / 2**30:.0f} GiB of ciphertexts, "
            f"{avail / 2**30:.0f} GiB available"
        )
        log(f"{name}: {row.note}")
        return row
    images, labels = load_images(dataset, row.batch)
    ctx = CkksContext(plan.params)
    t0 = time.perf_counter()
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk, evk = kg.public_key(sk), kg.evaluation_keys(sk)
    row.stages["keygen"] = time.perf_counter() - t0
    resident["images and keygen"] = current_rss()
    with tempfile.TemporaryDirectory(prefix="hecnn-bench-") as tmp:
        t0 = time.perf_counter()
        ct_path = Path(tmp) / "inputs.npy"
        ct = _encrypt_to_file(plan, ctx, pk, images, ct_path)
        row.stages["encrypt"] = time.perf_counter() - t0
        log(f"{name}: encrypted {len(ct)} ciphertexts in {row.stages['encrypt']:.1f} s")
        resident["encrypt"] = current_rss()
        if release_free_heap():
            resident["freed heap"] = current_rss()
        log(
            f"{name}: resident after "
            + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in resident.items())
        )
        weights = _progress_weights(plan, row.seal)
        if server_process:  # the server's side as its own process, as ``hecnn infer`` runs
            args = (dumps_plan(plan), ckks_dumps(evk), str(ct_path), ct.scale, budget)
            del ct
            served = in_own_process(_serve_in_child, *args, time_limit, weights, name)
        else:
            served = _serve(plan, ct, evk, budget, time_limit, weights, name, log)
            del ct
        report = served.report
        row.peak_rss, row.peak_held = report.peak_rss, report.peak_held
        row.rss_at_start = report.rss_at_start
        if served.out is None:  # stopped at the time limit
            row.status = "stopped"
            row.server_s = served.seconds / served.fraction
            row.cpu_s = served.cpu_s / served.fraction
            row.note = (
                f"stopped after {served.seconds:.0f} s at {served.at} ({100 * served.fraction:.1f}"
                f" % of the estimated work): server time {row.server_s:.0f} s projected"
            )
            log(f"{name}: {row.note}")
            return row
        row.server_s, row.cpu_s = served.seconds, served.cpu_s
        out = CiphertextBatch(ctx, served.out[0], served.out[1])
    t0 = time.perf_counter()
    logits = decrypt_outputs(ctx, sk, out, row.batch)
    row.stages["decrypt"] = time.perf_counter() - t0
    ref = _plain_logits(model, images)
    enc, plain = logits.argmax(1), ref.argmax(1)
    row.agreement = 100.0 * float(np.mean(enc == plain))
    row.max_error = float(np.abs(logits - ref).max())
    row.plain_accuracy = 100.0 * float(np.mean(plain == labels))
    row.enc_accuracy = 100.0 * float(np.mean(enc == labels))
    log(
        f"{name}: server {row.server_s:.1f} s ({row.ms_per_image:.3f} ms/image), agreement "
        f"{row.agreement:.2f} %, max logit error {row.max_error:.2e}, peak RSS "
        f"{row.peak_rss / 2**30:.2f} GiB ({row.rss_at_start / 2**30:.2f} GiB resident when the "
        "run began)"
    )
    return row


def _progress_weights(plan: Plan, seal: SealEstimate | None) -> dict[str, float]:
    """Each node's share of the work, from the SEAL op-count estimate (MACs when absent)."""
    if seal is not None and seal.seconds > 0:
        return {k: v / seal.seconds for k, v in seal.by_node.items()}
    macs = {n.name: float(getattr(n, "macs", 0) if n.features else 0) for n in plan.nodes}
    total = sum(macs.values()) or 1.0
    return {k: v / total for k, v in macs.items()}


def _fraction_done(plan: Plan, weights: dict[str, float], node: str, i: int) -> float:
    """Work done when the executor reports ``node`` (index i): the nodes before it, plus the
    finished chunks of a streamed segment (``"head…sink chunk k/K"``)."""
    names = [n.name for n in plan.nodes]
    done = sum(weights.get(x, 0.0) for x in names[: min(i, len(names))])
    if " chunk " in node:
        span, _, counter = node.partition(" chunk ")
        head, _, sink = span.partition("…")
        k, _, total = counter.partition("/")
        seg = names[names.index(head) : names.index(sink) + 1]
        done += sum(weights.get(x, 0.0) for x in seg) * int(k) / max(int(total), 1)
    return min(done, 1.0)


def format_table(rows: list[ModelRow]) -> Table:
    table = Table(
        title=f"hecnn models at full batch — {os.cpu_count()} cores ({platform.machine()}), "
        "128-bit CKKS"
    )
    cols = (
        "model",
        "N",
        "levels",
        "batch",
        "server s",
        "ms/image",
        "peak RSS GiB",
        "agreement %",
        "max logit err",
        "SEAL est. s",
        "SEAL ÷ hecnn",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        proj = "~" if r.status == "stopped" else ""
        ran = r.status in ("ok", "stopped")
        table.add_row(
            r.model,
            str(r.n),
            str(r.levels),
            str(r.batch),
            f"{proj}{r.server_s:.1f}" if ran else "—",
            f"{proj}{r.ms_per_image:.3f}" if ran else "—",
            f"{r.peak_rss / 2**30:.2f}" if ran else f"(est. {r.estimate / 2**30:.0f})",
            "—" if r.agreement is None else f"{r.agreement:.2f}",
            "—" if r.max_error is None else f"{r.max_error:.1e}",
            "—" if r.seal is None else f"{r.seal.seconds:.0f}",
            "—" if r.seal_ratio is None else f"{proj}{r.seal_ratio:.1f}×",
        )
    return table


def summary_line(rows: list[ModelRow]) -> str:
    parts = []
    for r in rows:
        if r.status == "ok":
            parts.append(f"{r.model}_ms={r.ms_per_image:.3f}")
        elif r.status == "stopped":
            parts.append(f"{r.model}_ms=~{r.ms_per_image:.1f}(projected)")
        else:
            parts.append(f"{r.model}={r.status}")
    agree = [r.agreement for r in rows if r.agreement is not None]
    peaks = [r.peak_rss for r in rows if r.status in ("ok", "stopped")]
    if agree:
        parts.append(f"min_agreement={min(agree):.2f}")
    if peaks:
        parts.append(f"max_peak_gib={max(peaks) / 2**30:.2f}")
    return " ".join(parts)


def run_models(
    models: tuple[str, ...] | None = None,
    *,
    quick: bool = False,
    time_limit: float = DEFAULT_TIME_LIMIT,
    memory_budget: int | None = None,
    weights_dir: Path | None = None,
    console: Console | None = None,
) -> list[ModelRow]:
    """Measure the rows, print the table, per-row details and the summary line."""
    console = console or Console(width=max(160, Console().width))  # logs: full table width
    names = models or (QUICK_ROWS if quick else ROWS)
    rows = []
    for name in names:
        try:
            rows.append(
                bench_row(
                    name,
                    time_limit=time_limit,
                    memory_budget=memory_budget,
                    weights_dir=weights_dir,
                    seal_reps=2 if quick else 4,
                    log=console.print,
                )
            )
        except (HecnnError, MemoryError) as exc:
            rows.append(ModelRow(name, "", status="failed", note=f"{type(exc).__name__}: {exc}"))
            console.print(f"{name}: failed: {exc}")
    console.print(format_table(rows))
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in r.stages.items())
        acc = (
            f"; accuracy plaintext {r.plain_accuracy:.2f} %, encrypted {r.enc_accuracy:.2f} %"
            if r.plain_accuracy is not None
            else ""
        )
        held = (
            f", held {r.peak_held / 2**30:.2f} GiB, {r.cpu_s / r.server_s:.2f} cores busy"
            if r.server_s
            else ""
        )
        console.print(
            f"{r.model} ({r.weights}): {r.status}{' — ' + r.note if r.note else ''}; "
            f"stages: {stages}; streamed ({r.chunks or 'nothing'}), estimate "
            f"{r.estimate / 2**30:.2f} GiB{held}{acc}"
        )
        if r.seal is not None:
            kinds = ", ".join(f"{k} {v:.0f} s" for k, v in r.seal.by_kind.items() if v >= 0.5)
            console.print(f"  SEAL op-count estimate by operation: {kinds}")
    print(summary_line(rows))
    return rows
