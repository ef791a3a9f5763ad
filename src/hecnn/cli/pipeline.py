"""``hecnn keygen | encrypt | infer | decrypt``: the client and server steps as separate processes.

Files: ``keygen`` writes a key directory — ``spec.json`` (model and batch the plan is compiled
for), ``params.hecnn``, ``public.hecnn``, ``eval.hecnn`` (server-bound) and ``secret.hecnn``
(client only). ``infer`` reads only the spec, the parameters and the evaluation keys, and its
loader refuses secret keys, so the server process cannot hold one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from hecnn.cli.main import app
from hecnn.errors import HecnnError, SerializationError


def _plan(spec: dict):
    from hecnn.compile import compile_bundled

    return compile_bundled(spec["model"], batch=spec["batch"])


def _read(path: Path, ctx=None, **kw):
    from hecnn.runtime.files import read_object

    return read_object(path, ctx, **kw)


def _spec(keys: Path) -> dict:
    from hecnn.runtime.files import read_spec

    return read_spec(keys)


@app.command()
def keygen(
    out: Path = typer.Option(..., help="Key directory to create."),
    model: str = typer.Option("ishiyama_mnist_poly_element_kd", help="Bundled model name."),
    batch: int = typer.Option(8192, help="Images per ciphertext batch."),
) -> None:
    """Client: compile the plan's parameters and generate secret, public and evaluation keys."""
    from hecnn.runtime.files import generate_keys, write_key_dir

    spec = {"model": model, "batch": batch, "input_shape": [1, 28, 28]}
    plan = _plan(spec)
    write_key_dir(out, generate_keys(plan.params), spec)
    typer.echo(f"keys for {model} (batch {batch}, {plan.params.describe()}) in {out}")


@app.command()
def encrypt(
    keys: Path = typer.Option(..., help="Key directory from `hecnn keygen`."),
    images: Path = typer.Option(..., help=".npz with x (N×1×28×28, uint8 or float)."),
    out: Path = typer.Option(..., help="Ciphertext file to write."),
) -> None:
    """Client: encrypt images with the public key."""
    from hecnn.ckks import serialize
    from hecnn.ckks.context import CkksContext
    from hecnn.runtime import encrypt_images
    from hecnn.runtime.files import load_images, prepare_images

    spec = _spec(keys)
    params = _read(keys / "params.hecnn", expect=serialize.Kind.PARAMS)
    ctx = CkksContext(params)
    pk = _read(keys / "public.hecnn", ctx, expect=serialize.Kind.PUBLIC_KEY)
    x = prepare_images(load_images(images, tuple(spec["input_shape"]))[0])
    plan = _plan(spec)
    t0 = time.perf_counter()
    ct = encrypt_images(plan, ctx, pk, x)
    out.write_bytes(serialize.dumps(ct))
    typer.echo(
        f"encrypted {len(x)} images into {len(ct)} ciphertexts in {time.perf_counter() - t0:.1f} s"
    )


@app.command()
def infer(
    keys: Path = typer.Option(..., help="Directory with spec.json, params.hecnn, eval.hecnn."),
    inp: Path = typer.Option(..., "--in", help="Ciphertext file from `hecnn encrypt`."),
    out: Path = typer.Option(..., help="Encrypted outputs to write."),
    backend: str = typer.Option("numpy", help="Array backend: numpy (CPU kernels) or torch."),
    device: str = typer.Option("cpu", help="Device of the torch backend: cpu, cuda, cuda:<i>."),
    ray: str = typer.Option(
        "", "--ray", help="Run on a Ray cluster: HOST:PORT of its head, auto, or local."
    ),
) -> None:
    """Server: run the plan on ciphertexts with evaluation keys only (secret keys are refused)."""
    from hecnn.ckks import serialize
    from hecnn.ckks.context import CkksContext
    from hecnn.runtime import run
    from hecnn.runtime.files import require_secure

    spec = _spec(keys)
    plan = _plan(spec)
    params = _read(keys / "params.hecnn", expect=serialize.Kind.PARAMS)
    if params.fingerprint != plan.params.fingerprint:
        raise SerializationError("the keys were made for a different plan (parameters differ)")
    require_secure(params)
    ctx = CkksContext(params, backend=backend, device=device)
    _ = ctx.backend  # fail early on a missing GPU
    evk = _read(keys / "eval.hecnn", ctx, expect=serialize.Kind.EVALUATION_KEYS)
    ct = _read(inp, ctx, expect=serialize.Kind.CIPHERTEXT_BATCH)
    t0 = time.perf_counter()
    if ray:
        if backend != "numpy":
            raise HecnnError("--ray runs the numpy backend on the cluster's CPUs")
        from hecnn.distributed import RayExecutor

        cluster = RayExecutor(plan, ray)
        try:
            res = cluster.run(ct, evk)
        finally:
            cluster.close()
        where = f" on the Ray cluster at {ray}"
    else:
        res = run(plan, ct, evk)
        where = ""
    out.write_bytes(serialize.dumps(res))
    typer.echo(f"inference on {len(ct)} ciphertexts in {time.perf_counter() - t0:.1f} s{where}")


@app.command()
def decrypt(
    keys: Path = typer.Option(..., help="Key directory with secret.hecnn."),
    inp: Path = typer.Option(..., "--in", help="Encrypted outputs from `hecnn infer`."),
    count: int = typer.Option(..., help="Number of images in the batch."),
    out: Path = typer.Option(None, help="Optional .npz for logits and labels."),
) -> None:
    """Client: decrypt the outputs into logits and predicted labels."""
    from hecnn.ckks import serialize
    from hecnn.ckks.context import CkksContext
    from hecnn.runtime import decrypt_outputs

    params = _read(keys / "params.hecnn", expect=serialize.Kind.PARAMS)
    ctx = CkksContext(params)
    sk = _read(keys / "secret.hecnn", ctx, expect=serialize.Kind.SECRET_KEY, allow_secret=True)
    res = _read(inp, ctx, expect=serialize.Kind.CIPHERTEXT_BATCH)
    logits = decrypt_outputs(ctx, sk, res, count)
    labels = logits.argmax(1)
    if out is not None:
        np.savez_compressed(out, logits=logits, labels=labels)
    typer.echo(" ".join(str(int(v)) for v in labels[:20]) + (" …" if count > 20 else ""))
    typer.echo(f"labels={count}")
