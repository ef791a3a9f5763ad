"""``hecnn train`` and ``hecnn eval``: plaintext training / evaluation of the CNNs in hecnn.nn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hecnn.cli.main import app
from hecnn.errors import HecnnError


def _command_line(ctx: typer.Context) -> str:
    """``hecnn train ...`` with the options given on the command line (declaration order)."""
    import shlex

    args = ["hecnn", ctx.info_name or "train"]
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[p.name]
        flag = "--" + p.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + p.name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return shlex.join(args)


@app.command()
def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="model name, e.g. ishiyama_mnist")],
    activation: Annotated[str, typer.Option(help="relu|square|swish4|swish4_r6|poly_*")] = "relu",
    dataset: Annotated[str, typer.Option(help="mnist|fashion_mnist|cifar10")] = "mnist",
    epochs: Annotated[int, typer.Option()] = 10,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option(help="peak learning rate (one-cycle schedule)")] = 0.05,
    optimizer: Annotated[str, typer.Option(help="sgd (Nesterov momentum) | adam")] = "sgd",
    weight_decay: Annotated[float, typer.Option()] = 5e-4,
    poly_weight_decay: Annotated[
        float, typer.Option(help="L2 decay of trainable poly coefficients")
    ] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    teacher: Annotated[
        Path | None, typer.Option(help="trained .pt (with .json) to distil from")
    ] = None,
    alpha: Annotated[float, typer.Option(help="KD weight of the soft loss")] = 0.5,
    temperature: Annotated[float, typer.Option(help="KD temperature")] = 4.0,
    train_subset: Annotated[int | None, typer.Option(help="train on N random images only")] = None,
    test_subset: Annotated[
        int | None, typer.Option(help="evaluate on N random test images")
    ] = None,
    augment: Annotated[bool, typer.Option(help="random crop + flip (CIFAR)")] = False,
    eval_each_epoch: Annotated[bool, typer.Option(help="test accuracy after every epoch")] = True,
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    device: Annotated[str, typer.Option(help="torch device: cpu | cuda")] = "cpu",
    data: Annotated[
        Path | None, typer.Option(help="dataset directory (else $HECNN_DATA, ...)")
    ] = None,
    verify: Annotated[bool, typer.Option(help="check the dataset files' checksums")] = True,
    out: Annotated[Path, typer.Option(help="output stem: OUT.pt, OUT.json")] = Path("runs/model"),
) -> None:
    """Train a model (resumes from OUT.ckpt.pt); writes OUT.pt and its JSON sidecar."""
    from hecnn.nn.train import TrainConfig
    from hecnn.nn.train import train as run_train

    cfg = TrainConfig(
        model=model,
        activation=activation,
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        poly_weight_decay=poly_weight_decay,
        seed=seed,
        teacher=str(teacher) if teacher else None,
        alpha=alpha,
        temperature=temperature,
        train_subset=train_subset,
        test_subset=test_subset,
        augment=augment,
        eval_each_epoch=eval_each_epoch,
        threads=threads,
        device=device,
        verify=verify,
        data_dir=str(data) if data else None,
        out=str(out),
        command=_command_line(ctx),
    )
    try:
        meta = run_train(cfg, log=lambda s: typer.echo(s))
    except ValueError as exc:
        raise HecnnError(str(exc)) from exc
    typer.echo(f"saved {out.with_suffix('.pt')} ({meta['wall_time_s']:.0f}s)")
    typer.echo(f"accuracy={meta['test_accuracy']:.2f}")


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Option(help="bundled model name or path to a trained .pt")],
    dataset: Annotated[
        str | None, typer.Option(help="mnist|fashion_mnist|cifar10 (default: model's)")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
    verify: Annotated[bool, typer.Option(help="check the dataset files' checksums")] = True,
    threads: Annotated[int, typer.Option()] = 1,
) -> None:
    """Evaluate on the full test set; the last line printed is ``accuracy=<percent>``."""
    import json

    import torch

    from hecnn.nn import bundled
    from hecnn.nn.data import load_dataset
    from hecnn.nn.train import evaluate, load_trained

    torch.set_num_threads(threads)
    path = Path(model)
    if path.suffix == ".pt" and path.is_file():
        net, meta = load_trained(path), json.loads(path.with_suffix(".json").read_text())
    elif model in bundled.names():
        net, meta = bundled.load_model(model), bundled.metadata(model)
    else:
        raise HecnnError(f"{model!r} is neither a .pt file nor a bundled model {bundled.names()}")
    ds = dataset or meta["dataset"]
    splits = load_dataset(ds, data, verify=verify)
    acc = evaluate(net, splits.x_test, splits.y_test, ds)
    typer.echo(f"{meta['model']} ({meta['activation']}) on {ds} test: {len(splits.y_test)} images")
    typer.echo(f"source: {splits.source}")
    typer.echo(f"accuracy={acc:.2f}")
