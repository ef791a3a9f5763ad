"""``hecnn bench scale``: a job of many batches on a Ray cluster, one worker against ``w``.

The model is compiled at 128-bit security (the compiler picks N for ``--batch`` images per
ciphertext batch), a client encrypts ``--batches`` batches of real test images, and the job runs
on the cluster twice in one process: with one task at a time (one worker) and with ``w`` at a
time, every task asking Ray for ``--cpus-per-task`` CPUs and using as many threads. Both runs
must return the same ciphertexts bit for bit; they are decrypted and compared with the
plaintext model on the same images (label agreement, max logit error). One batch is also run
in this process without Ray, with the same threads, to show what Ray adds.

The table gives per batch the worker's compute time in each run and the bytes that crossed
the network (ciphertexts in and out; the plan and evaluation keys are put once per job). The
last line is ``batches=<n> workers=<w> agreement=<percent> speedup=<x>``.

With ``--ray local`` (the default) the cluster is a private one in this process with ``w``
CPUs; on one machine the workers share its cores and memory bandwidth, so the speedup measured
there is a lower bound of what separate machines give (docs/scale-out.md).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hecnn.benchmarks.models import load_images, load_model
from hecnn.ckks import serialize
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.errors import HecnnError
from hecnn.runtime import decrypt_outputs, encrypt_images, run

CALIBRATION_IMAGES = 256


@dataclass
class ScaleResult:
    batches: int
    workers: int
    agreement: float
    max_error: float
    one_worker_s: float
    many_workers_s: float
    identical: bool

    @property
    def speedup(self) -> float:
        return self.one_worker_s / self.many_workers_s


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def run_scale(
    model_name: str = "cryptonets_mnist",
    *,
    batches: int = 4,
    workers: int = 2,
    batch: int = 4096,
    address: str = "local",
    cpus_per_task: int = 1,
    split_memory: int = 0,
    insecure_ring_for_tests: int | None = None,
    log=print,
) -> ScaleResult:
    """Measure and print the table (see the module doc); returns the summary figures."""
    from hecnn.distributed import RayExecutor

    if batches < 1 or workers < 1:
        raise HecnnError("--batches and --workers must be ≥ 1")
    console = Console()
    model, dataset, weights = load_model(model_name)
    x_all, _ = load_images(dataset, batches * batch + CALIBRATION_IMAGES)
    calib = x_all[-CALIBRATION_IMAGES:]
    plan = compile_model(
        model,
        tuple(x_all.shape[1:]),
        batch=batch,
        calib=calib,
        insecure_ring_for_tests=insecure_ring_for_tests,
    )
    batch = min(batch, plan.params.slots)
    p = plan.params
    log(
        f"model {model_name} ({weights}): {p.describe()}, depth {plan.levels}, "
        f"{batches} batches of {batch} images"
    )
    log(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.2f} (shared machine: times are upper bounds)"
    )
    ctx = CkksContext(p)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk)
    images = [x_all[i * batch : (i + 1) * batch] for i in range(batches)]
    t0 = time.perf_counter()
    cts = [encrypt_images(plan, ctx, pk, x) for x in images]
    log(f"client: keys and {batches} batches encrypted in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    uploads = [serialize.dumps(ct) for ct in cts]  # what clients send; the driver forwards it
    log(f"client: batches encoded for upload in {(time.perf_counter() - t0) / batches:.2f} s each")

    local_ctx = CkksContext(p, threads=cpus_per_task)  # the same threads as one task
    t0 = time.perf_counter()
    local = run(plan, CiphertextBatch(local_ctx, cts[0].data, cts[0].scale), evk)
    local_s = time.perf_counter() - t0
    log(f"without Ray: batch 1 in {local_s:.2f} s ({cpus_per_task} thread(s))")

    ex = RayExecutor(plan, address, cpus_per_task=cpus_per_task, num_cpus=workers * cpus_per_task)
    try:
        slots = int(ex.ray.cluster_resources().get("CPU", 0)) // cpus_per_task
        if slots < workers:
            raise HecnnError(f"the cluster runs {slots} tasks at once, not {workers}")
        ex.run_many(uploads[:1], evk)  # start the workers, fetch plan and keys: not timed
        one = ex.run_many(uploads, evk, concurrency=1)
        one_stats = ex.last
        many = ex.run_many(uploads, evk, concurrency=workers)
        many_stats = ex.last
        if split_memory:
            _split_row(ex, cts[0], evk, many[0], split_memory, log)
    finally:
        ex.close()
    identical = all(
        np.array_equal(a.data, b.data) and a.scale == b.scale
        for a, b in zip(one, many, strict=True)
    ) and np.array_equal(one[0].data, local.data)
    logits = np.concatenate(
        [decrypt_outputs(ctx, sk, out, len(x)) for out, x in zip(many, images, strict=True)]
    )
    with torch.no_grad():
        ref = np.concatenate([model(torch.as_tensor(x)).double().numpy() for x in images])
    agreement = 100.0 * float(np.mean(logits.argmax(1) == ref.argmax(1)))
    max_error = float(np.abs(logits - ref).max())

    table = Table(title=f"{model_name} on Ray: {batches} batches, 1 vs {workers} workers")
    for col in ("batch", "images", "1 worker s", f"{workers} workers s", "in MiB", "out MiB"):
        table.add_column(col, justify="right")
    for i, (a, b) in enumerate(zip(one_stats.tasks, many_stats.tasks, strict=True)):
        table.add_row(
            str(i + 1),
            str(len(images[i])),
            f"{a.seconds:.2f}",
            f"{b.seconds:.2f}",
            _mib(b.bytes_in),
            _mib(b.bytes_out),
        )
    console.print(table)
    result = ScaleResult(
        batches,
        workers,
        agreement,
        max_error,
        one_stats.wall_seconds,
        many_stats.wall_seconds,
        identical,
    )
    log(
        f"shared once per job: plan + evaluation keys {_mib(many_stats.shared_bytes)} MiB; "
        f"per batch {_mib(many_stats.bytes_in / batches)} MiB in, "
        f"{_mib(many_stats.bytes_out / batches)} MiB out"
    )
    log(
        f"job wall time: 1 worker {result.one_worker_s:.2f} s "
        f"({1e3 * result.one_worker_s / (batches * batch):.3f} ms/image), {workers} workers "
        f"{result.many_workers_s:.2f} s ({1e3 * result.many_workers_s / (batches * batch):.3f} "
        f"ms/image); Ray overhead per batch vs in-process: "
        f"{result.one_worker_s / batches - local_s:+.2f} s"
    )
    log(
        f"driver hand-over per batch (uploaded bytes into the object store): "
        f"{many_stats.driver_seconds / batches:.2f} s; worker task (decode, run, encode): "
        f"median {np.median([t.seconds for t in one_stats.tasks]):.2f} s alone, "
        f"{np.median([t.seconds for t in many_stats.tasks]):.2f} s with {workers} at once"
    )
    log(
        f"results identical across runs and to the in-process runtime: {identical}; "
        f"max logit error vs plaintext {max_error:.2e}"
    )
    if not identical:
        raise HecnnError("the distributed runs disagree with each other or with the runtime")
    log(
        f"batches={batches} workers={workers} agreement={agreement:.2f} "
        f"speedup={result.speedup:.2f}"
    )
    return result


def _split_row(ex, ct, evk, whole, memory: int, log) -> None:
    """Batch 1 again with its layers split for ``memory`` bytes per task: slices, time, bytes
    moved between tasks; the result must equal the whole-batch task's bit for bit."""
    sched = ex.split_schedule(memory=memory)
    out = ex.run_split(ct, evk, memory=memory)
    st = ex.last
    same = np.array_equal(out.data, whole.data) and out.scale == whole.scale
    log(f"layer split for {_mib(memory)} MiB per task: {sched.describe()}")
    log(
        f"  {len(st.tasks)} tasks in {st.wall_seconds:.2f} s (sum of task times "
        f"{sum(t.seconds for t in st.tasks):.2f} s); bytes read by tasks "
        f"{_mib(st.bytes_in)} MiB, written {_mib(st.bytes_out)} MiB; equal to the whole-batch "
        f"task: {same}"
    )
    if not same:
        raise HecnnError("the split run disagrees with the whole-batch run")
