"""``hecnn bench …``: benchmark scripts exposed as commands (tables + one summary line)."""

from __future__ import annotations

import typer

from hecnn.cli.main import app

bench_app = typer.Typer(
    help="Benchmarks: print a table and a final summary line.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("ckks")
def bench_ckks(
    quick: bool = typer.Option(
        False, "--quick", help="One repetition, small SEAL slices (< 1 min)."
    ),
    n: int = typer.Option(1 << 14, help="Ring degree N."),
    primes: int = typer.Option(9, help="Number of data primes."),
) -> None:
    """Our CKKS core vs SEAL op-by-op; last line: linear_vs_seal=… relin_vs_seal=…"""
    from hecnn.benchmarks.ckks_core import run

    run(quick=quick, n=n, data_primes=primes)


@bench_app.command("batch")
def bench_batch(
    model: str = typer.Option("ishiyama_mnist_poly_element_kd", help="Bundled model."),
    batches: str = typer.Option("1024,2048,4096,8192", help="Comma-separated batch sizes."),
    plot: str = typer.Option("", help="Write a PNG of total and amortized time here."),
) -> None:
    """Total and amortized encrypted-inference time for several batch sizes."""
    from pathlib import Path

    from hecnn.benchmarks.batch_sweep import sweep

    sweep(model, tuple(int(b) for b in batches.split(",")), Path(plot) if plot else None)


@bench_app.command("gpu")
def bench_gpu(
    device: str = typer.Option("cuda", help="Torch device to measure: cuda, cuda:<i> or cpu."),
    quick: bool = typer.Option(
        False, "--quick", help="Small insecure ring, one model: checks the script end to end."
    ),
    out: str = typer.Option("", help="Also write the markdown tables to this file."),
    models: str = typer.Option("", help="Comma-separated models (default: all)."),
    cpu_threads: int = typer.Option(2, help="Threads of the numpy CPU baseline."),
    cpu_baseline: bool = typer.Option(
        True, "--cpu-baseline/--no-cpu-baseline", help="Also run every model on the CPU."
    ),
    time_limit: float = typer.Option(480, help="Start no model run after this many seconds."),
) -> None:
    """Torch backend on a GPU vs numpy on the CPU: bit identity, kernels, full-batch models.

    Last line: gpu_bench_failures=… (0 when every check passed).
    """
    from pathlib import Path

    from hecnn.benchmarks.gpu import main

    failures = main(
        device=device,
        quick=quick,
        out=Path(out) if out else None,
        model_names=tuple(m for m in models.split(",") if m) or None,
        cpu_threads=cpu_threads,
        cpu_baseline=cpu_baseline,
        time_limit_s=time_limit,
    )
    raise typer.Exit(1 if failures else 0)


@bench_app.command("models")
def bench_models(
    models: str = typer.Option(
        "",
        help="Comma-separated rows (default: ishiyama_mnist, cryptonets_mnist, "
        "ishiyama_cifar, hemet_squeezenet; with --quick the two MNIST models).",
    ),
    quick: bool = typer.Option(False, "--quick", help="MNIST rows only, fewer SEAL repetitions."),
    time_limit: float = typer.Option(1500.0, help="Stop a run after this many seconds."),
    memory_gib: float = typer.Option(
        0.0, help="Memory budget in GiB (default: HECNN_MEMORY_GIB or 60 % of RAM)."
    ),
    weights: str = typer.Option(
        "", help="Trained weights directory (default: benchmarks/weights)."
    ),
) -> None:
    """Per model at full batch: N, levels, time, ms/image, peak memory, agreement, SEAL estimate."""
    from pathlib import Path

    from hecnn.benchmarks.models import run_models

    run_models(
        tuple(m.strip() for m in models.split(",") if m.strip()) or None,
        quick=quick,
        time_limit=time_limit,
        memory_budget=int(memory_gib * 2**30) if memory_gib > 0 else None,
        weights_dir=Path(weights) if weights else None,
    )


@bench_app.command("scale")
def bench_scale(
    model: str = typer.Option("cryptonets_mnist", help="Model row (see bench models)."),
    batches: int = typer.Option(4, help="Ciphertext batches in the job."),
    workers: int = typer.Option(2, help="Tasks at once in the scaled run (vs one)."),
    batch: int = typer.Option(4096, help="Images per batch (the compiler picks N ≥ 2·batch)."),
    ray: str = typer.Option("local", "--ray", help="Cluster: HOST:PORT, auto, or local."),
    cpus_per_task: int = typer.Option(1, help="CPUs (and kernel threads) per task."),
    split_memory_mib: int = typer.Option(
        0, help="Also run batch 1 with its layers split for this many MiB per task."
    ),
    insecure_ring_for_tests: int = typer.Option(
        None, help="TEST ONLY: force a ring degree below 128-bit security."
    ),
) -> None:
    """A job of many batches on Ray, 1 vs w workers; last line: batches=… workers=…
    agreement=… speedup=…"""
    from hecnn.benchmarks.scale import run_scale

    run_scale(
        model,
        batches=batches,
        workers=workers,
        batch=batch,
        address=ray,
        cpus_per_task=cpus_per_task,
        split_memory=split_memory_mib << 20,
        insecure_ring_for_tests=insecure_ring_for_tests,
    )


@bench_app.command("latency")
def bench_latency(
    model: str = typer.Option(
        "ishiyama_mnist", help="Model row: ishiyama_mnist, cryptonets_mnist, hemet_squeezenet."
    ),
    images: int = typer.Option(4, help="Images after the first (which also encodes weights)."),
    weights: str = typer.Option(
        "", help="Trained weights directory (default: benchmarks/weights)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="Only the table and the last line."),
    activation: str = typer.Option(
        "",
        help="Time the architecture with this activation instead, untrained (poly_layer, "
        "poly_channel, poly_element): per-image cost does not depend on the weights.",
    ),
) -> None:
    """Single encrypted image with per-image packing; last line: latency_s=<seconds>."""
    from pathlib import Path

    from hecnn.benchmarks.latency import main

    main(
        model,
        images=images,
        weights_dir=Path(weights) if weights else None,
        quiet=quiet,
        activation=activation or None,
    )


@bench_app.command("peers")
def bench_peers(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="1024 images, OpenFHE on cryptonets_mnist and Orion on LoLa only (< 10 min once "
        "set up).",
    ),
    peers: str = typer.Option("openfhe,orion,seal", help="Comma-separated peers to run."),
    batch: int = typer.Option(0, help="Images per batch-packed run (default 8192; quick 1024)."),
    orion_images: int = typer.Option(0, help="Images Orion classifies one by one (5; quick 3)."),
    nets: str = typer.Option(
        "",
        help="Per-image networks: lola_mnist,lenet5_mnist (default both; quick lola_mnist); "
        "'none' for none.",
    ),
    batch_nets: str = typer.Option(
        "", help="Batch-packed networks (default cryptonets_mnist,ishiyama_mnist); 'none'."
    ),
    install: bool = typer.Option(
        True, "--install/--no-install", help="Create missing peer environments (pip, once)."
    ),
    json_out: str = typer.Option("", "--json", help="Also write the rows as JSON here."),
    time_limit: float = typer.Option(
        300.0, help="Stop a hecnn batch run after this many seconds and project the rest."
    ),
    workdir: str = typer.Option("", help="Keep the exchanged .npz/.json files here."),
    openfhe_threads: int = typer.Option(
        0,
        help="OpenMP threads for OpenFHE (default: all cores; on an oversubscribed machine "
        "1 is much faster, see docs/benchmarks.md).",
    ),
) -> None:
    """hecnn vs OpenFHE, Orion and SEAL on the same nets, weights and images.

    Last line: vs_openfhe=<hecnn speed-up, batch> vs_orion=<hecnn speed-up, latency>.
    """
    from pathlib import Path

    from hecnn.benchmarks.peers import run_peers

    run_peers(
        quick=quick,
        peers=tuple(p.strip() for p in peers.split(",") if p.strip()),
        batch=batch or None,
        orion_images=orion_images or None,
        image_nets=_names(nets),
        batch_nets=_names(batch_nets),
        install=install,
        time_limit=time_limit,
        openfhe_threads=openfhe_threads or None,
        workdir=Path(workdir) if workdir else None,
        json_out=Path(json_out) if json_out else None,
    )


def _names(arg: str) -> tuple[str, ...] | None:
    """Comma-separated names; '' → None (the default), 'none' → ()."""
    if arg.strip() == "none":
        return ()
    return tuple(n.strip() for n in arg.split(",") if n.strip()) or None
