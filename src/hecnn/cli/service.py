"""``hecnn serve``, ``hecnn client classify`` and ``hecnn export-plan``: the two-process service.

The server holds the model and public evaluation keys only; the client holds the images and the
secret key. See docs/security.md for what each side learns.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import typer

from hecnn.cli.main import app
from hecnn.errors import HecnnError

DEFAULT_MODEL = "ishiyama_mnist_poly_element_kd"

client_app = typer.Typer(help="Client of a hecnn server (keys stay on this machine).")
app.add_typer(client_app, name="client")


def _load_plan(model: str, batch: int, insecure_ring: int | None):
    from hecnn.compile import compile_bundled, load_plan

    path = Path(model)
    if path.suffix == ".hecnn" or path.is_file():
        if insecure_ring is not None:
            raise HecnnError("--insecure-ring-for-tests applies to bundled models, not plan files")
        return load_plan(path)
    if insecure_ring is not None:
        batch = min(batch, insecure_ring // 2)
    return compile_bundled(model, batch=batch, insecure_ring_for_tests=insecure_ring)


@app.command("export-plan")
def export_plan(
    model: str = typer.Argument(DEFAULT_MODEL, help="Bundled model name."),
    out: Path = typer.Option(..., help="Plan file to write (.hecnn)."),
    batch: int = typer.Option(8192, help="Images per ciphertext batch the plan is sized for."),
    insecure_ring_for_tests: int = typer.Option(
        None, help="TEST ONLY: force a ring degree below 128-bit security."
    ),
) -> None:
    """Compile a bundled model into a plan file that `hecnn serve` can load."""
    from hecnn.compile import save_plan

    plan = _load_plan(model, batch, insecure_ring_for_tests)
    save_plan(plan, out)
    typer.echo(f"plan {plan.model_name} ({plan.params.describe()}) written to {out}")


@app.command()
def serve(
    model: str = typer.Argument(DEFAULT_MODEL, help="Bundled model name or a plan file."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port (0: any free port; the URL is printed)."),
    state_dir: Path = typer.Option(
        Path(".hecnn-server"), help="Where sessions, jobs and results are kept across restarts."
    ),
    batch: int = typer.Option(8192, help="Batch size a bundled model is compiled for."),
    workers: int = typer.Option(1, help="Jobs run at once (each already uses every core)."),
    max_queue: int = typer.Option(8, help="Jobs waiting at most; more get HTTP 429."),
    max_sessions: int = typer.Option(64, help="Sessions (uploaded key sets) kept at most."),
    preprocess: str = typer.Option("mnist", help="Normalization clients apply to uint8 images."),
    allow_insecure_test_only: bool = typer.Option(
        False,
        "--allow-insecure-test-only",
        help="TEST ONLY: accept a plan whose parameters are below 128-bit security.",
    ),
    insecure_ring_for_tests: int = typer.Option(
        None, help="TEST ONLY: compile the bundled model for this small ring degree."
    ),
    backend: str = typer.Option("numpy", help="Array backend of the jobs: numpy or torch."),
    device: str = typer.Option("cpu", help="Device of the torch backend: cpu, cuda, cuda:<i>."),
    executor: str = typer.Option(
        "local", help="Where jobs run: local (this process) or ray (a Ray cluster)."
    ),
    ray_address: str = typer.Option(
        "local", help="With --executor ray: HOST:PORT of the cluster's head, auto, or local."
    ),
    ray_cpus_per_task: int = typer.Option(1, help="With --executor ray: CPUs per task."),
) -> None:
    """Serve encrypted inference over HTTP (FastAPI + uvicorn)."""
    import uvicorn

    from hecnn.service import create_app

    if insecure_ring_for_tests is not None and not allow_insecure_test_only:
        raise HecnnError("--insecure-ring-for-tests needs --allow-insecure-test-only")
    if executor not in ("local", "ray"):
        raise HecnnError(f"--executor is local or ray, not {executor!r}")
    if executor == "ray" and backend != "numpy":
        raise HecnnError("--executor ray runs the numpy backend on the cluster's CPUs")
    plan = _load_plan(model, batch, insecure_ring_for_tests)
    runner = None
    if executor == "ray":
        from hecnn.distributed import RayExecutor

        cluster = RayExecutor(plan, ray_address, cpus_per_task=ray_cpus_per_task)
        runner = cluster.run_plan
        typer.echo(f"jobs run on the Ray cluster at {ray_address}")
    app_ = create_app(
        plan,
        state_dir,
        workers=workers,
        max_queue=max_queue,
        max_sessions=max_sessions,
        preprocess=preprocess,
        allow_insecure_test_only=allow_insecure_test_only,
        backend=backend,
        device=device,
        runner=runner,
    )
    if plan.params.insecure_test_only:
        typer.secho(
            "WARNING: INSECURE TEST-ONLY PARAMETERS (below 128-bit security) — never use with real "
            "data",
            fg=typer.colors.RED,
            bold=True,
            err=True,
        )
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        raise HecnnError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    typer.echo(f"model {plan.model_name}: {plan.params.describe()}")
    typer.echo(f"serving {plan.model_name} on http://{host}:{bound} (state in {state_dir})")
    sys.stdout.flush()
    config = uvicorn.Config(
        app_, log_level="warning", limit_concurrency=256, timeout_graceful_shutdown=30
    )
    uvicorn.Server(config).run(sockets=[sock])


def _sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` bundled MNIST test images, strided over the label-sorted sample (every class)."""
    from hecnn.nn import bundled

    x, y = bundled.sample_images()
    if n < 1:
        raise HecnnError("--sample needs N ≥ 1")
    idx = (np.arange(n) * len(x)) // n if n <= len(x) else np.arange(n) % len(x)
    return x[idx], y[idx]


@client_app.command("classify")
def classify_cmd(
    images: Path = typer.Argument(None, help=".npz with x (and optionally y), or an image folder."),
    server: str = typer.Option(..., help="Server URL, e.g. http://127.0.0.1:8000"),
    sample: int = typer.Option(0, help="Classify N bundled MNIST test images instead."),
    keys: Path = typer.Option(
        None, help="Key directory: loaded if it holds keys for this server, else created."
    ),
    out: Path = typer.Option(None, help="Save labels and probabilities (.npz, .json or .csv)."),
    poll: float = typer.Option(0.5, help="Seconds between status polls."),
    allow_insecure_test_only: bool = typer.Option(
        False,
        "--allow-insecure-test-only",
        help="TEST ONLY: accept a server whose parameters are below 128-bit security.",
    ),
) -> None:
    """Encrypt images, have the server classify them blind, decrypt the results here."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from hecnn.runtime.files import load_images
    from hecnn.service.client import ServiceClient, classify

    console = Console(stderr=True)
    with ServiceClient(server) as client:
        info = client.info()
        if (images is None) == (sample == 0):
            raise HecnnError("give either IMAGES or --sample N")
        if sample:
            x, y = _sample(sample)
        else:
            x, y = load_images(images, info.input_shape)
        security = info.raw.get("params", {}).get("security", "")
        console.print(
            f"server {server}: model {info.model}, input {info.input_shape}, "
            f"{info.classes} classes, {security}"
        )
        with Progress(
            TextColumn("[bold]{task.fields[stage]:<9}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("", total=100.0, stage="start")

            def on_progress(stage: str, frac: float, detail: str) -> None:
                bar.update(task, completed=100.0 * frac, description=detail, stage=stage)

            res = classify(
                client,
                x,
                keys_dir=keys,
                on_progress=on_progress,
                poll=poll,
                allow_insecure_test_only=allow_insecure_test_only,
            )
    table = Table(title=f"{len(res.labels)} images classified by {info.model} (encrypted)")
    for col in ("#", "label", "probability", *(["true"] if y is not None else [])):
        table.add_column(col, justify="right")
    for i in range(min(len(res.labels), 20)):
        row = [str(i), str(int(res.labels[i])), f"{res.probabilities[i, res.labels[i]]:.3f}"]
        table.add_row(*row, *([str(int(y[i]))] if y is not None else []))
    Console().print(table)
    if out is not None:
        _save(out, res, y)
        typer.echo(f"saved labels and probabilities to {out}")
    if y is not None:
        acc = 100.0 * float(np.mean(res.labels == y))
        typer.echo(f"classified={len(res.labels)} accuracy={acc:.2f}")
    else:
        typer.echo(f"classified={len(res.labels)}")


def _save(out: Path, res, y) -> None:
    import json

    if out.suffix == ".json":
        rows = [
            {"label": int(lab), "probabilities": [round(float(p), 6) for p in prob]}
            for lab, prob in zip(res.labels, res.probabilities, strict=True)
        ]
        out.write_text(json.dumps(rows, indent=1))
    elif out.suffix == ".csv":
        k = res.probabilities.shape[1]
        lines = ["index,label," + ",".join(f"p{c}" for c in range(k))]
        for i, (lab, prob) in enumerate(zip(res.labels, res.probabilities, strict=True)):
            lines.append(f"{i},{int(lab)}," + ",".join(f"{p:.6f}" for p in prob))
        out.write_text("\n".join(lines) + "\n")
    else:
        extra = {"true_labels": y} if y is not None else {}
        np.savez_compressed(
            out, labels=res.labels, probabilities=res.probabilities, logits=res.logits, **extra
        )
