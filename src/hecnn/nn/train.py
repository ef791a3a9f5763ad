"""Training, knowledge distillation and evaluation of the plaintext models.

Polynomial-activation networks train worse than their ReLU twins; knowledge distillation from the
trained ReLU twin (Hinton et al. 2015) closes part of the gap:

    loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, y)

with teacher logits ``t``, student logits ``s`` and temperature ``T`` (the ``T²`` keeps the soft
term's gradient magnitude independent of ``T``).

Runs are seeded and resumable: a checkpoint (model, optimizer, scheduler, RNG, history) is
written after every epoch and picked up again by a rerun with the same output. The result is a
``state_dict`` (``NAME.pt``) plus a JSON sidecar (``NAME.json``) with the model name,
activation, dataset, command line, epochs, wall time and test accuracy; :func:`load_trained`
rebuilds the model from the pair.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import nn

from hecnn.nn.activations import PolyActivation, TrainablePoly, poly_param_groups
from hecnn.nn.data import Splits, augment, load_dataset, random_crop_flip, to_float
from hecnn.nn.models import build_model

__all__ = [
    "TrainConfig",
    "evaluate",
    "kd_loss",
    "load_trained",
    "train",
]


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> torch.Tensor:
    """``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)``, batch-mean."""
    T = temperature
    soft = F.kl_div(
        F.log_softmax(student / T, dim=1),
        F.log_softmax(teacher / T, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(student, target)


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in the JSON sidecar)."""

    model: str
    activation: str = "relu"
    dataset: str = "mnist"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd (Nesterov) | adam
    weight_decay: float = 5e-4
    poly_weight_decay: float = 1e-3
    clip_grad: float = 5.0
    seed: int = 0
    teacher: str | None = None  # path to a trained .pt (with sidecar) for distillation
    alpha: float = 0.5
    temperature: float = 4.0
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool = False
    eval_each_epoch: bool = True  # off: test accuracy only after the last epoch (saves time)
    threads: int = 1
    device: str = "cpu"  # torch device for training ("cuda" on a GPU machine)
    verify: bool = True  # check dataset checksums
    data_dir: str | None = None
    out: str = "runs/model"  # output stem: writes OUT.pt, OUT.json, OUT.ckpt.pt
    command: str = field(default_factory=lambda: shlex.join(["hecnn", *sys.argv[1:]]))


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int):
    if n is None or n >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
    return x[idx], y[idx]


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, dataset: str, batch_size: int = 500
) -> float:
    """Top-1 accuracy in percent of ``model`` (put in eval mode) on uint8 images ``x``."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = torch.as_tensor(np.asarray(x[i : i + batch_size])).to(device)
        logits = model(to_float(xb, dataset)).cpu()
        correct += int((logits.argmax(1) == torch.as_tensor(y[i : i + batch_size])).sum())
    return 100.0 * correct / max(len(y), 1)


def load_trained(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model from ``NAME.pt`` and its ``NAME.json`` sidecar (eval mode)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = build_model(meta["model"], meta["activation"], num_classes=meta.get("num_classes", 10))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _progress():
    """A rich progress bar on a terminal; silent when stderr is a file (logs stay clean)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        "{task.fields[info]}",
        disable=not sys.stderr.isatty(),
        transient=True,
    )


def train(
    cfg: TrainConfig, splits: Splits | None = None, log=print, stop_after: int | None = None
) -> dict | None:
    """Train (or resume) per ``cfg``; write ``OUT.pt``/``OUT.json``; return the sidecar dict.

    ``stop_after=k`` stops after epoch ``k`` with only the checkpoint written (returns ``None``);
    a later call with the same ``cfg`` resumes from it.
    """
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_name(out.name + ".ckpt.pt")

    splits = splits or load_dataset(cfg.dataset, cfg.data_dir, verify=cfg.verify)
    xtr, ytr = _subset(splits.x_train, splits.y_train, cfg.train_subset, cfg.seed)
    xte, yte = _subset(splits.x_test, splits.y_test, cfg.test_subset, cfg.seed + 1)
    num_classes = int(max(splits.y_train.max(), splits.y_test.max())) + 1
    device = torch.device(cfg.device)
    # the whole (uint8) training set lives on the device: batches are gathered there
    xtr_t, ytr_t = torch.as_tensor(xtr).to(device), torch.as_tensor(ytr).to(device)

    model = build_model(cfg.model, cfg.activation, num_classes=num_classes).to(device)
    teacher = load_trained(cfg.teacher).to(device) if cfg.teacher else None
    teacher_logits = None
    if teacher is not None and not cfg.augment:
        # without augmentation the teacher sees the same images every epoch: run it once
        with torch.no_grad():
            teacher_logits = torch.cat(
                [
                    teacher(to_float(xtr_t[i : i + 500], cfg.dataset))
                    for i in range(0, len(ytr), 500)
                ]
            )
    groups = poly_param_groups(model, cfg.weight_decay, cfg.poly_weight_decay)
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(ytr) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.15
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch, wall = 0, 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["config"] == {k: v for k, v in asdict(cfg).items() if k != "command"}:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            history, start_epoch, wall = state["history"], state["epoch"], state["wall"]
            log(f"resumed from {ckpt_path} at epoch {start_epoch}")
        else:
            log(f"ignoring {ckpt_path}: it was written for a different configuration")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        tot_loss, correct = 0.0, 0
        with _progress() as bar:
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, info="")
            for i in range(steps_per_epoch):
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size].to(device)
                xb, yb = to_float(xtr_t[idx], cfg.dataset), ytr_t[idx]
                if cfg.augment:
                    xb = _augment(xb, cfg.dataset, gen)
                logits = model(xb)
                if teacher is not None:
                    if teacher_logits is not None:
                        t_logits = teacher_logits[idx]
                    else:
                        with torch.no_grad():
                            t_logits = teacher(xb)
                    loss = kd_loss(logits, t_logits, yb, cfg.alpha, cfg.temperature)
                else:
                    loss = F.cross_entropy(logits, yb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                sched.step()
                tot_loss += loss.item() * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
        train_time = time.perf_counter() - t0
        last = epoch + 1 == cfg.epochs
        test_acc = evaluate(model, xte, yte, cfg.dataset) if cfg.eval_each_epoch or last else None
        wall += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "loss": tot_loss / len(ytr),
            "train_acc": 100.0 * correct / len(ytr),
            "test_acc": test_acc,
            "epoch_time_s": round(train_time, 1),
        }
        history.append(row)
        test_txt = "-" if test_acc is None else f"{test_acc:.2f}%"
        log(
            f"epoch {row['epoch']}/{cfg.epochs} loss {row['loss']:.4f} "
            f"train {row['train_acc']:.2f}% test {test_txt} ({train_time:.0f}s)"
        )
        torch.save(
            {
                "config": {k: v for k, v in asdict(cfg).items() if k != "command"},
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "epoch": epoch + 1,
                "wall": wall,
            },
            ckpt_path,
        )
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < cfg.epochs:
            log(f"stopped after epoch {epoch + 1}; rerun to resume from {ckpt_path}")
            return None

    model.eval().cpu()
    if history and history[-1]["test_acc"] is not None:
        final_acc = history[-1]["test_acc"]
    else:
        final_acc = evaluate(model, xte, yte, cfg.dataset)
    meta = {
        "model": cfg.model,
        "activation": cfg.activation,
        "num_classes": num_classes,
        "dataset": cfg.dataset,
        "dataset_source": splits.source,
        "train_images": len(ytr),
        "test_images": len(yte),
        "command": cfg.command,
        "epochs": cfg.epochs,
        "wall_time_s": round(wall, 1),
        "test_accuracy": final_acc,
        "config": asdict(cfg),
        "activation_ranges": _ranges(model),
        "history": history,
        "torch": torch.__version__,
    }
    torch.save(model.state_dict(), out.with_suffix(".pt"))
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _augment(x: torch.Tensor, dataset: str, gen: torch.Generator) -> torch.Tensor:
    """CIFAR: random crop + horizontal flip; digits (no flips): small rotation/scale/shift."""
    if dataset == "cifar10":
        return random_crop_flip(x, generator=gen)
    return augment(x, rotation=10.0, scale=(0.9, 1.1), translate=0.08, generator=gen)


def _ranges(model: nn.Module) -> dict[str, dict]:
    """Recorded input ranges of each polynomial activation (for the sidecar)."""
    rows = {}
    for name, m in model.named_modules():
        if isinstance(m, PolyActivation):
            rows[name] = {
                "min": float(m.range_min),
                "max": float(m.range_max),
                "absq999": float(m.range_absq),
                "granularity": m.granularity,
                "trainable": isinstance(m, TrainablePoly),
            }
    return rows
