"""Plaintext accuracy of the HE-friendly models vs their ReLU twins → ``docs/accuracy.md``.

Every table row is one ``hecnn train`` command. ``python benchmarks/accuracy.py run [--only S]``
runs the rows whose result (``runs/acc/ID.json``) is missing (sequentially, one CPU thread each);
``python benchmarks/accuracy.py report`` writes ``docs/accuracy.md`` from the JSON sidecars those
runs left — rows without one are reported as "not run yet", never estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: CPU-budget runs: sidecars (small JSON) committed; ``.pt`` weights, logs, checkpoints ignored
RUNS = Path(os.environ.get("HECNN_ACC_CPU_RUNS", "benchmarks/results/acc_cpu"))
#: runs on a lent GPU machine; their sidecars (small JSON) are committed beside this script
#: (``$HECNN_ACC_GPU_RUNS`` moves them, e.g. outside the tree on the GPU machine)
GPU_RUNS = Path(os.environ.get("HECNN_ACC_GPU_RUNS", "benchmarks/results/acc_gpu"))
GPU_LONG_RUNS = Path(os.environ.get("HECNN_ACC_GPU_LONG_RUNS", "benchmarks/results/acc_gpu_long"))

MNIST = ["--dataset", "mnist", "--epochs", "30"]
# CIFAR budget on a shared 2-core CPU machine: full 50k training set, 2 epochs, no augmentation
CIFAR_ISHIYAMA = ["--dataset", "cifar10", "--epochs", "2", "--no-eval-each-epoch"]
# SqueezeNet is ~4x costlier per image: 10k random training images, 4 epochs
CIFAR_SQUEEZE = [
    "--dataset",
    "cifar10",
    "--epochs",
    "4",
    "--train-subset",
    "10000",
    "--no-eval-each-epoch",
]
# GPU budget (one H100, several runs sharing it): augmentation and real epoch counts
GPU = ["--device", "cuda", "--augment", "--no-eval-each-epoch"]
GPU_MNIST = ["--dataset", "mnist", "--epochs", "60", *GPU]
GPU_CIFAR = ["--dataset", "cifar10", "--epochs", "40", "--batch-size", "256", "--lr", "0.1", *GPU]

# a second GPU call: the CIFAR rows furthest from their targets, with 70 epochs; the KD row
# distils from the 40-epoch ReLU teacher of the "gpu" budget
GPU_CIFAR_LONG = [*GPU_CIFAR[:2], "--epochs", "70", *GPU_CIFAR[4:]]

BUDGETS = {
    "cpu": {"mnist": MNIST, "cifar_ishiyama": CIFAR_ISHIYAMA, "cifar_squeeze": CIFAR_SQUEEZE},
    "gpu": {"mnist": GPU_MNIST, "cifar_ishiyama": GPU_CIFAR, "cifar_squeeze": GPU_CIFAR},
    "gpu_long": {"mnist": [], "cifar_ishiyama": GPU_CIFAR_LONG, "cifar_squeeze": GPU_CIFAR_LONG},
}
RUN_DIRS = {"cpu": RUNS, "gpu": GPU_RUNS, "gpu_long": GPU_LONG_RUNS}
#: rows of a budget (all when absent)
BUDGET_ROWS = {
    "gpu_long": {
        "cifar_ishiyama_relu",
        "cifar_ishiyama_swish4",
        "cifar_ishiyama_square",
        "cifar_squeeze_relu",
        "cifar_squeeze_poly_element_kd",
    }
}
#: where a budget's KD rows find their teacher (default: the budget's own ReLU row)
TEACHER_RUNS = {"gpu_long": GPU_RUNS}


def _row(rid, table, label, model, act, extra, runs: Path) -> dict:
    args = ["train", "--model", model, "--activation", act, *extra, "--out", str(runs / rid)]
    return {"id": rid, "table": table, "label": label, "args": args, "teacher": None}


def rows(budget: str = "cpu") -> list[dict]:
    """The table rows of one budget; KD rows name the ReLU row they distil from."""
    b, runs = BUDGETS[budget], RUN_DIRS[budget]
    teachers = TEACHER_RUNS.get(budget, runs)
    out = [
        _row(f"mnist_ishiyama_{a}", "mnist", lbl, "ishiyama_mnist", a, b["mnist"], runs)
        for a, lbl in [
            ("relu", "ReLU"),
            ("square", "x²"),
            ("swish4", "SwishPoly4, r=4"),
            ("swish4_r6", "SwishPoly4, r=6"),
            ("poly_layer", "poly, layer-wise"),
            ("poly_channel", "poly, channel-wise"),
            ("poly_element", "poly, element-wise"),
        ]
    ]
    out.append(
        _row(
            "mnist_ishiyama_poly_element_kd",
            "mnist",
            "poly, element-wise + KD",
            "ishiyama_mnist",
            "poly_element",
            [*b["mnist"], "--teacher", str(teachers / "mnist_ishiyama_relu.pt")],
            runs,
        )
        | {"teacher": "mnist_ishiyama_relu" if teachers == runs else None}
    )
    out += [
        _row(
            f"cifar_ishiyama_{a}",
            "cifar_ishiyama",
            lbl,
            "ishiyama_cifar",
            a,
            b["cifar_ishiyama"],
            runs,
        )
        for a, lbl in [("relu", "ReLU"), ("square", "x²"), ("swish4", "SwishPoly4, r=4")]
    ]
    out += [
        _row(
            f"cifar_squeeze_{a}",
            "cifar_squeeze",
            lbl,
            "hemet_squeezenet",
            a,
            b["cifar_squeeze"],
            runs,
        )
        for a, lbl in [
            ("relu", "ReLU"),
            ("poly_layer", "poly, layer-wise"),
            ("poly_channel", "poly, channel-wise"),
            ("poly_element", "poly, element-wise"),
        ]
    ]
    out += [
        _row(
            f"cifar_squeeze_{a}_kd",
            "cifar_squeeze",
            lbl,
            "hemet_squeezenet",
            a,
            [*b["cifar_squeeze"], "--teacher", str(teachers / "cifar_squeeze_relu.pt")],
            runs,
        )
        | {"teacher": "cifar_squeeze_relu" if teachers == runs else None}
        for a, lbl in [
            ("poly_channel", "poly, channel-wise + KD"),
            ("poly_element", "poly, element-wise + KD"),
        ]
    ]
    if budget in BUDGET_ROWS:
        out = [r for r in out if r["id"] in BUDGET_ROWS[budget]]
    return out


ROWS: list[dict] = rows("cpu")

BUDGET_TITLES = {
    "cpu": "CPU budget (2 shared cores, 2026-11-22)",
    "gpu": "GPU budget (one H100, 2026-11-23)",
    "gpu_long": "longer GPU budget (one H100, 2026-11-23)",
}

TABLES = {
    "mnist": "MNIST — `ishiyama_mnist`",
    "cifar_ishiyama": "CIFAR-10 — `ishiyama_cifar`",
    "cifar_squeeze": "CIFAR-10 — `hemet_squeezenet`",
}


def run(only: str | None, retry: bool = False, budget: str = "cpu", jobs: int = 1) -> None:
    """Run every row (matching ``only``) whose sidecar is missing (and log too, unless retry).

    ``jobs`` rows run at once (on a GPU they share the device); a KD row waits for its teacher.
    """
    import time

    runs = RUN_DIRS[budget]
    todo = []
    for row in rows(budget):
        if only and only not in row["id"]:
            continue
        if (runs / f"{row['id']}.json").is_file():
            print(f"skip {row['id']} (done)", flush=True)
            continue
        if (runs / f"{row['id']}.log").is_file() and not retry:
            print(f"skip {row['id']} (started elsewhere; --retry resumes it)", flush=True)
            continue
        todo.append(row)
    runs.mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    while todo or running:
        for rid, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                print(f"  {rid} -> exit {proc.returncode}", flush=True)
                del running[rid]
        ready = [
            r for r in todo if r["teacher"] is None or (runs / f"{r['teacher']}.json").is_file()
        ]
        while ready and len(running) < jobs:
            row = ready.pop(0)
            todo.remove(row)
            cmd = [
                sys.executable,
                "-c",
                "import sys; sys.argv[0] = 'hecnn'; from hecnn.cli import main; main()",
                *row["args"],
            ]
            print(f"run {row['id']}: hecnn {' '.join(row['args'])}", flush=True)
            log = open(runs / f"{row['id']}.log", "a")  # noqa: SIM115 (closed when it exits)
            running[row["id"]] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                log,
            )
        if todo and not ready and not running:
            print(f"cannot run {[r['id'] for r in todo]}: teacher missing", flush=True)
            return
        time.sleep(2)


def param_table() -> list[str]:
    """Activation-coefficient counts per granularity, computed from the built models."""
    from hecnn.nn.activations import PolyActivation
    from hecnn.nn.models import build_model

    lines = [
        "| model | activation layers | layer-wise | channel-wise | element-wise | model weights |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("ishiyama_mnist", "cryptonets_mnist", "ishiyama_cifar", "hemet_squeezenet"):
        counts = {}
        for g in ("layer", "channel", "element"):
            m = build_model(name, f"poly_{g}")
            counts[g] = sum(
                p.numel()
                for mod in m.modules()
                if isinstance(mod, PolyActivation)
                for p in mod.parameters()
            )
        relu = build_model(name, "relu")
        n_act = sum(
            isinstance(mod, PolyActivation) for mod in build_model(name, "square").modules()
        )
        weights = sum(p.numel() for p in relu.parameters())
        lines.append(
            f"| `{name}` | {n_act} | {counts['layer']:,} | {counts['channel']:,} | "
            f"{counts['element']:,} | {weights:,} |"
        )
    return lines


#: hand-written reading of the 2026-11-22 run (update it when the tables are regenerated)
NOTES = [
    "## Reading the runs",
    "",
    "Targets of the issue: MNIST ≥ 99.2 %, `ishiyama_cifar` ≥ 80.5 %, `hemet_squeezenet`",
    "element-wise + KD within 1.5 points of ReLU.",
    "",
    "- **MNIST**: best 98.85 % (SwishPoly4, GPU budget with rotation/scale/shift augmentation;",
    "  CPU budget without it: 98.35 %). The 99.2 % target is not reached: only 8,004 training",
    "  images exist on this machine (the official 60k set is not here); on 1,996 test images",
    "  one point is 20 images. All activations land within 0.4 points of each other (98.45–",
    "  98.85 %); KD lifts the element-wise poly from 98.45 to 98.65 %.",
    "- **`ishiyama_cifar`**: with 70 epochs SwishPoly4 reaches **80.83 %** (target 80.5 %",
    "  met; ReLU 85.37 %, x² 79.89 %); with 40 epochs 79.04 %.",
    "- **`hemet_squeezenet`**: 40 epochs: ReLU 85.45 %, layer/channel/element-wise poly",
    "  84.00 / 83.92 / 80.57 %, channel + KD 85.32 %, element + KD 83.28 %. Distillation is",
    "  what rescues the element-wise polynomials (+2.7 points; channel-wise +1.4). 70 epochs:",
    "  element + KD **85.04 %** against its 40-epoch teacher's 85.45 % (−0.41) and a 70-epoch",
    "  ReLU's 86.62 % (−1.58, just outside the 1.5-point target).",
    "- CPU budget rows (2 shared cores, a few epochs) are kept for comparison; they are far",
    "  from converged.",
    "",
]


def bundled_table() -> list[str]:
    """The models shipped in ``hecnn/data`` (their sidecars hold the exact commands)."""
    from hecnn.nn import bundled

    lines = [
        "## Bundled models (`hecnn.nn.bundled`)",
        "",
        "Shipped in `src/hecnn/data/` for the demo, with 1,996 real MNIST test images.",
        "`absq999` is the largest 99.9th percentile of |input| recorded per activation during",
        "training (SwishPoly4 is fitted on [−4, 4]).",
        "",
        "| name | activation | epochs | test accuracy | wall time | absq999 act1 / act2 "
        "| command |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name in bundled.names():
        m = bundled.metadata(name)
        r = m["activation_ranges"]
        cmd = m["command"]
        if "teacher_command" in m:
            cmd += f"` (teacher: `{m['teacher_command']}`)"
        else:
            cmd += "`"
        lines.append(
            f"| `{name}` | {m['activation']} | {m['epochs']} | **{m['test_accuracy']:.2f} %** | "
            f"{_fmt_time(m['wall_time_s'])} | {r['act1']['absq999']:.2f} / "
            f"{r['act2']['absq999']:.2f} | `{cmd} |"
        )
    return [*lines, ""]


def _fmt_time(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def report(path: Path) -> None:
    out = [
        "# Plaintext accuracy of HE-friendly activations",
        "",
        "Generated by `python benchmarks/accuracy.py report` from the JSON sidecars that",
        "`python benchmarks/accuracy.py run [--budget cpu|gpu|gpu_long]` leaves in",
        "`benchmarks/results/acc_*/` (committed; one `hecnn train` command per",
        "row, shown below). No figure here is estimated: a row without a finished run says so.",
        "",
        "**Budgets.** Two budgets: a shared 2-core CPU machine (one thread per run, small",
        "budgets), and a lent GPU (one H100 shared by up to nine runs at once, with",
        "augmentation: random crop + flip for CIFAR, ±10° rotation / ±10 % scale / shift for",
        "digits). Each row states its epochs and training set. MNIST: only a 10k-image real MNIST subset exists on",
        "this machine (`mnist10k.npz`: 8,004 training / 1,996 test images, the official 60k/10k",
        "split is not available), so MNIST figures are on those 1,996 test images after training",
        "on 8,004 images — expect a few tenths of a percent below published full-MNIST numbers.",
        "CIFAR-10: a JPEG re-encoded copy of all 60,000 images (accuracies are comparable to, not",
        "identical with, published CIFAR-10 numbers); test accuracy is on the full 10,000-image",
        "test set; the training budget (epochs, training subset) is in each row and is far below",
        "a converged run, so compare rows within a table, not with the literature.",
        "",
        "Wall times are on that machine while other jobs (and up to two of these runs) shared",
        "its two cores, so they vary by ~3x between otherwise similar rows; they state the cost",
        "of the budget, not the models' speed.",
        "",
        "**Reproduce.** Datasets are looked up in `--data`, `$HECNN_DATA`, `~/.cache/hecnn`, then",
        "`../shared/data/` beside the repository (`hecnn.nn.data.download(name)` fetches the",
        "official files for users). Each command below resumes from its per-epoch checkpoint.",
        "",
        "Optimiser for every row: SGD with Nesterov momentum 0.9, one-cycle learning rate (peak",
        "0.05), batch 128, weight decay 5e-4 (1e-3 on trainable polynomial coefficients), gradient",
        "norm clipped at 5, seed 0. KD rows distil from the ReLU row of the same table",
        "(α = 0.5, T = 4). GPU CIFAR rows: batch 256, peak learning rate 0.1. The GPU commands",
        "wrote to /tmp on that machine (``HECNN_ACC_*_RUNS``); their sidecars were copied here.",
        "",
    ]
    for budget, note in BUDGET_TITLES.items():
        runs = ROOT / RUN_DIRS[budget]
        if budget != "cpu" and not any(runs.glob("*.json")):
            continue
        for table, title in TABLES.items():
            out += [
                f"## {title} — {note}",
                "",
                "| activation | train images | epochs | test accuracy | wall time | command |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for row in (r for r in rows(budget) if r["table"] == table):
                cmd = "`hecnn " + " ".join(row["args"]) + "`"
                side = runs / f"{row['id']}.json"
                if side.is_file():
                    m = json.loads(side.read_text())
                    cmd = f"`{m['command']}`"
                    out.append(
                        f"| {row['label']} | {m['train_images']:,} | {m['epochs']} | "
                        f"**{m['test_accuracy']:.2f} %** ({m['test_images']:,} images) | "
                        f"{_fmt_time(m['wall_time_s'])} | {cmd} |"
                    )
                else:
                    why = _why_missing(row, runs)
                    out.append(f"| {row['label']} | — | — | not run yet ({why}) | — | {cmd} |")
            out.append("")
    out += NOTES
    out += bundled_table()
    out += [
        "## Trainable activation coefficients per granularity",
        "",
        "`TrainablePoly` (a·x² + b·x + c) has 3 coefficients per activation layer (layer-wise),",
        "3·C (channel-wise) or 3·C·H·W (element-wise). Counted from the built models:",
        "",
        *param_table(),
        "",
    ]
    path.write_text("\n".join(out))
    print(f"wrote {path}")


def _why_missing(row: dict, runs: Path) -> str:
    log = runs / f"{row['id']}.log"
    if not log.is_file():
        return "did not fit the session's CPU budget"
    tail = log.read_text().strip().splitlines()[-1:] or ["started, no output"]
    return f"unfinished; last log line: {tail[0][:80]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--only", help="substring of the row ids to run")
    r.add_argument("--retry", action="store_true", help="also rerun/resume started rows")
    r.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    r.add_argument("--jobs", type=int, default=1, help="rows run at once")
    rep = sub.add_parser("report")
    rep.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.md")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.only, args.retry, args.budget, args.jobs)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
