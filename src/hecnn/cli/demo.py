"""``hecnn demo``: the README's main job.

Until the compiler and runtime land, the demo exercises the CKKS core end to end at 128-bit
security: key generation, batch encryption of N/2-slot vectors, an encrypted linear layer
followed by a square activation (multiply, relinearize, rescale), decryption, and a comparison
with the same computation in numpy.
"""

from __future__ import annotations

import time

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from hecnn.cli.main import app


@app.command()
def demo(
    inputs: int = typer.Option(64, help="Input ciphertexts (features)."),
    outputs: int = typer.Option(16, help="Output ciphertexts of the linear layer."),
    quick: bool = typer.Option(False, "--quick", help="Fewer ciphertexts."),
) -> None:
    """Encrypted linear layer + square on a full batch of slots, checked against numpy."""
    from hecnn.ckks.context import CkksContext
    from hecnn.ckks.encryption import decrypt, encrypt
    from hecnn.ckks.keys import KeyGenerator
    from hecnn.ckks.params import CkksParameters

    console = Console()
    if quick:
        inputs, outputs = 16, 4
    stages: list[tuple[str, float]] = []

    def stage(name: str, t0: float) -> None:
        stages.append((name, time.perf_counter() - t0))

    t0 = time.perf_counter()
    params = CkksParameters.create(depth=3, scale_bits=28)
    ctx = CkksContext(params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk)
    stage("keygen", t0)
    console.print(f"parameters: {params.describe()}")

    rng = np.random.default_rng()  # demo data only
    x = rng.uniform(-1, 1, (inputs, params.slots))
    w = rng.normal(size=(outputs, inputs)) / np.sqrt(inputs)
    b = rng.normal(size=outputs) * 0.1

    t0 = time.perf_counter()
    ct = encrypt(ctx, x, pk)
    stage(f"encrypt {inputs} ciphertexts", t0)
    t0 = time.perf_counter()
    y = ct.linear_combination(w, bias=b).rescale()
    stage(f"linear {inputs}→{outputs}", t0)
    t0 = time.perf_counter()
    z = y.square().relinearize(evk).rescale()
    stage("square + relinearize + rescale", t0)
    t0 = time.perf_counter()
    out = decrypt(ctx, z, sk)
    stage("decrypt", t0)

    ref = (w @ x + b[:, None]) ** 2
    err = float(np.abs(out - ref).max())
    table = Table(title=f"CKKS round trip: {inputs} ciphertexts × {params.slots} slots")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, sec in stages:
        table.add_row(name, f"{sec:.3f}")
    console.print(table)
    console.print(f"max |encrypted − plaintext| = {err:.2e} over {out.size} values")
    print(f"max_error={err:.3e} slots={params.slots} levels={params.depth}")
