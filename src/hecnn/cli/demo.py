"""``hecnn demo``: encrypted inference on a bundled model and bundled real MNIST test images.

The README's main job. Client and server roles run in one process here, but the server step
only ever sees the plan, the public evaluation keys and ciphertexts.
"""

from __future__ import annotations

import time

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hecnn.cli.main import app

DEFAULT_MODEL = "ishiyama_mnist_poly_element_kd"


@app.command()
def demo(
    model: str = typer.Option(DEFAULT_MODEL, help="Bundled model name."),
    batch: int = typer.Option(0, help="Images per ciphertext batch (default: fill the slots)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller batch (same ring, same cost)."),
    backend: str = typer.Option("numpy", help="Array backend: numpy (CPU kernels) or torch."),
    device: str = typer.Option("cpu", help="Device of the torch backend: cpu, cuda, cuda:<i>."),
) -> None:
    """Keygen → encrypt → encrypted inference → decrypt, checked against the plaintext model."""
    import torch

    from hecnn.ckks.context import CkksContext
    from hecnn.ckks.keys import KeyGenerator
    from hecnn.ckks.warmup import compile_kernels
    from hecnn.compile import compile_model
    from hecnn.nn import bundled
    from hecnn.runtime import RunReport, decrypt_outputs, encrypt_images, run

    console = Console()
    stages: list[tuple[str, float]] = []
    images, labels = bundled.sample_images()
    x_all = np.asarray(bundled.to_float(images), dtype=np.float32)
    net = bundled.load_model(model)

    t0 = time.perf_counter()
    probe = compile_model(net, x_all.shape[1:], batch=1, calib=x_all[:256], min_agreement=None)
    slots = probe.params.slots
    b = batch or (1024 if quick else slots)
    b = min(b, slots)
    plan = compile_model(net, x_all.shape[1:], batch=b, calib=x_all[:256])
    stages.append(("compile", time.perf_counter() - t0))
    reps = -(-b // len(x_all))
    x = np.concatenate([x_all] * reps)[:b]
    y = np.concatenate([labels] * reps)[:b]
    console.print(plan.summary())
    if b > len(x_all):
        console.print(f"[dim]{len(x_all)} bundled test images, repeated to fill {b} slots[/dim]")

    t0 = time.perf_counter()
    # keys and encryption run on the CPU whatever the backend; the batches then live on it
    ctx = CkksContext(plan.params, backend=backend, device=device)
    ring = ctx.backend  # built now, so a missing GPU fails before any work
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk)
    stages.append(("keygen (client)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    compile_kernels(ctx, pk, sk, evk)  # numba: seconds on the first run after an install
    stages.append(("compile kernels (numba, cached after the first run)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    ct = encrypt_images(plan, ctx, pk, x)
    stages.append((f"encrypt {len(ct)} ciphertexts (client)", time.perf_counter() - t0))

    report = RunReport()
    with Progress(
        TextColumn("[bold]encrypted inference"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=len(plan.nodes))

        def progress(name: str, i: int, total: int) -> None:
            if ring is not None:
                ring.synchronize()  # queued GPU work belongs to the node before
            bar.update(task, completed=i, description=name)

        if ring is not None:
            ring.reset_peak()
        t0 = time.perf_counter()
        out = run(plan, ct, evk, progress=progress, report=report)
        if ring is not None:
            ring.synchronize()
        t_run = time.perf_counter() - t0
    stages.append(("encrypted inference (server)", t_run))
    t0 = time.perf_counter()
    logits = decrypt_outputs(ctx, sk, out, b)
    stages.append(("decrypt (client)", time.perf_counter() - t0))

    with torch.no_grad():
        ref = net(torch.as_tensor(x)).double().numpy()
    enc_pred, ref_pred = logits.argmax(1), ref.argmax(1)
    agreement = 100.0 * float(np.mean(enc_pred == ref_pred))
    err = float(np.abs(logits - ref).max())
    amortized = 1e3 * t_run / b

    layers = Table(title="server time per node")
    layers.add_column("node")
    layers.add_column("ciphertexts out", justify="right")
    layers.add_column("seconds", justify="right")
    for t in report.timings[1:]:
        layers.add_row(t.name, str(t.ciphertexts), f"{t.seconds:.2f}")
    console.print(layers)
    where = "numpy" if ring is None else f"torch on {ring.device}"
    table = Table(
        title=f"{model}: {b} images, N={plan.params.n}, depth {plan.levels}, backend {where}"
    )
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, sec in stages:
        table.add_row(name, f"{sec:.2f}")
    console.print(table)
    peak = None if ring is None else ring.peak_bytes()
    if peak is not None:
        console.print(f"peak GPU memory during inference: {peak / 2**30:.2f} GiB")
    console.print(
        f"plaintext accuracy {100 * np.mean(ref_pred == y):.2f}% | encrypted accuracy "
        f"{100 * np.mean(enc_pred == y):.2f}% | label agreement {agreement:.2f}% | "
        f"max logit error {err:.2e} | amortized {amortized:.2f} ms/image"
    )
    print(f"agreement={agreement:.2f} amortized_ms={amortized:.3f}")
