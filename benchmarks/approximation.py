"""Accuracy of pre-trained CNNs after swapping ReLU / MaxPool2d for composite polynomials.

Usage (from the repository root, 1 CPU thread)::

    python benchmarks/approximation.py train   # -> benchmarks/weights/mnist_cnn.pt
    python benchmarks/approximation.py report  # -> docs/approximation.md (+ PNGs in docs/)

``train`` fits a small ReLU + MaxPool2d CNN on the 8004-image training split of
``mnist10k.npz`` (seeded, deterministic on CPU). ``report`` converts it with
:func:`hecnn.approx.approximate` for α = 6…14 (calibrated on 512 training images),
measures test accuracy (1996 images) against the original model, and regenerates
``docs/approximation.md`` with the error table of the composite polynomials.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HECNN_DATA", ROOT.parent / "shared" / "data"))
MNIST = DATA / "mnist_subset" / "mnist10k.npz"
WEIGHTS = ROOT / "benchmarks" / "weights" / "mnist_cnn.pt"
DOC = ROOT / "docs" / "approximation.md"
ALPHAS = list(range(6, 15))
TRAIN_CMD = "python benchmarks/approximation.py train --epochs 8 --seed 0"
REPORT_CMD = "python benchmarks/approximation.py report"

PUBLISHED_RELU_LOG2 = {4: -3.71, 6: -6.05, 8: -8.03, 10: -10.11, 12: -12.09, 14: -14.02}


class MnistCNN(nn.Module):
    """conv5-ReLU-maxpool2 ×2, then FC-ReLU-FC: 4 ReLU/pool layers to approximate."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``, images scaled to ``[0, 1]``, shape N×1×28×28."""
    d = np.load(MNIST)
    x = torch.from_numpy(d["x"].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(d["y"].astype(np.int64))
    tr, te = torch.from_numpy(d["train_idx"]), torch.from_numpy(d["test_idx"])
    return x[tr], y[tr], x[te], y[te]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in torch.split(x, 500)])
    return float((logits.argmax(1) == y).float().mean()), logits


def out_of_range(model: nn.Module, x: torch.Tensor) -> int:
    """Test images for which some composite layer sees an input outside ``[-B, B]``.

    There the polynomial is not an approximation any more (it diverges like ``x^depth``),
    exactly as it would under encryption; calibration with a margin should make this rare.
    """
    from hecnn.approx import approx_layers

    bad = torch.zeros(0, dtype=torch.bool)
    cur: list[torch.Tensor] = []

    def hook(m: nn.Module, args: tuple) -> None:
        v = args[0].detach().abs().flatten(1).amax(1) > m.bound
        cur[0] |= v

    handles = [m.register_forward_pre_hook(hook) for m in approx_layers(model).values()]
    try:
        with torch.no_grad():
            for xb in torch.split(x, 500):
                cur[:] = [torch.zeros(len(xb), dtype=torch.bool)]
                model(xb)
                bad = torch.cat([bad, cur[0]])
    finally:
        for h in handles:
            h.remove()
    return int(bad.sum())


def train(epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = load_mnist()
    model = MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        t0, tot = time.time(), 0.0
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        sched.step()
        model.eval()
        acc, _ = accuracy(model, xte, yte)
        dt = time.time() - t0
        print(f"epoch {ep + 1}: loss {tot / len(xtr):.4f} test acc {acc:.4f} ({dt:.1f}s)")
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    (WEIGHTS.with_suffix(".json")).write_text(
        json.dumps({"command": TRAIN_CMD, "test_accuracy": acc, "torch": torch.__version__}) + "\n"
    )
    print(f"saved {WEIGHTS.relative_to(ROOT)}")


def evaluate(margin: float) -> dict:
    """Original vs approximated accuracy for each α, plus prediction agreement."""
    from hecnn.approx import approx_layers, approximate

    xtr, _, xte, yte = load_mnist()
    model = MnistCNN()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model.eval()
    acc0, logits0 = accuracy(model, xte, yte)
    calib = xtr[:512]
    rows = []
    for a in ALPHAS:
        t0 = time.time()
        am = approximate(model, alpha=a, calib=calib, margin=margin)
        acc, logits = accuracy(am, xte, yte)
        agree = float((logits.argmax(1) == logits0.argmax(1)).float().mean())
        bounds = [round(m.bound, 3) for m in approx_layers(am).values()]
        rows.append(
            {
                "alpha": a,
                "accuracy": acc,
                "agreement": agree,
                "max_logit_diff": float((logits - logits0).abs().max()),
                "bounds": bounds,
                "out_of_range": out_of_range(am, xte),
                "seconds": time.time() - t0,
            }
        )
        print(rows[-1], flush=True)
    return {"original_accuracy": acc0, "margin": margin, "rows": rows}


# ----------------------------------------------------------------------------- ResNet-20

CIFAR_TAR = DATA / "cifar10" / "cifar10_jpg.tar.gz"
CIFAR_NPZ = ROOT / "runs" / "approx_cifar10.npz"  # decoded once (gitignored)
RESNET_WEIGHTS = ROOT / "benchmarks" / "weights" / "resnet20_cifar10.pt"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """He et al. 2016 CIFAR block; ReLUs as functional calls (exercises the fx path)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        blocks, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for k in range(3):
                blocks.append(BasicBlock(cin, cout, stride if k == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def load_cifar() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised CIFAR-10 ``(x_train, y_train, x_test, y_test)`` (N×3×32×32 float32)."""
    if not CIFAR_NPZ.exists():
        import io
        import tarfile

        from PIL import Image

        parts: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
        with tarfile.open(CIFAR_TAR) as tar:
            members = sorted((m for m in tar if m.isfile()), key=lambda m: m.name)
            classes = sorted({m.name.split("/")[1] for m in members})
            for m in members:
                split, cls, _ = m.name.split("/")
                img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                parts[split][0].append(np.asarray(img, dtype=np.uint8))
                parts[split][1].append(classes.index(cls))
        CIFAR_NPZ.parent.mkdir(exist_ok=True)
        np.savez(
            CIFAR_NPZ,
            **{f"x_{k}": np.stack(v[0]) for k, v in parts.items()},
            **{f"y_{k}": np.array(v[1], dtype=np.int64) for k, v in parts.items()},
        )
    d = np.load(CIFAR_NPZ)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def prep(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
        return ((t - mean) / std).contiguous()

    return (
        prep(d["x_train"]),
        torch.from_numpy(d["y_train"]),
        prep(d["x_test"]),
        torch.from_numpy(d["y_test"]),
    )


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel zero padding) and horizontal flip, per batch."""
    n = len(x)
    xp = nn.functional.pad(x, (4, 4, 4, 4))
    i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
    out = xp[:, :, i : i + 32, j : j + 32].clone()
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train_resnet(budget_min: float, seed: int, batch: int = 128, max_lr: float = 0.2) -> None:
    """SGD (Nesterov) for a fixed wall-clock budget on 1 thread, LR by elapsed time.

    The learning rate follows a one-cycle shape in the elapsed fraction ``u = t / budget``
    (linear warm-up to ``max_lr`` for ``u < 0.2``, then cosine to 0), so the schedule
    completes on time even when the shared CPU is slower than expected; the number of
    steps (recorded in the ``.json``) therefore depends on the machine load.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = load_cifar()
    model = ResNet20().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps_per_epoch = len(xtr) // batch
    budget = budget_min * 60.0
    t_start, step = time.time(), 0
    model.train()
    done = False
    while not done:
        perm = torch.randperm(len(xtr), generator=gen)
        for k in range(steps_per_epoch):
            u = (time.time() - t_start) / budget
            if u >= 1.0:
                done = True
                break
            lr = max_lr * (u / 0.2 if u < 0.2 else 0.5 * (1 + math.cos(math.pi * (u - 0.2) / 0.8)))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[k * batch : (k + 1) * batch]
            xb = _augment(xtr[idx], gen).to(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0:
                print(
                    f"step {step} ({step / steps_per_epoch:.2f} ep) lr {lr:.3f} "
                    f"loss {loss.item():.3f} ({time.time() - t_start:.0f}s)",
                    flush=True,
                )
    model.eval()
    acc, _ = accuracy(model, xte, yte)
    print(f"test accuracy {acc:.4f} after {step} steps, {time.time() - t_start:.0f}s")
    model = model.to(memory_format=torch.contiguous_format)
    torch.save(model.state_dict(), RESNET_WEIGHTS)
    RESNET_WEIGHTS.with_suffix(".json").write_text(
        json.dumps(
            {
                "command": f"python benchmarks/approximation.py train-resnet20 "
                f"--budget-min {budget_min:g} --seed {seed}",
                "steps": step,
                "epochs": step / steps_per_epoch,
                "test_accuracy": acc,
                "torch": torch.__version__,
            }
        )
        + "\n"
    )


def evaluate_resnet(
    margin: float, n_test: int, n_calib: int = 512, alphas: list[int] | None = None
) -> dict | None:
    """Like :func:`evaluate` for ResNet-20 / CIFAR-10 (``None`` without weights)."""
    if not RESNET_WEIGHTS.exists():
        return None
    from hecnn.approx import approx_layers, approximate

    xtr, _, xte, yte = load_cifar()
    g = torch.Generator().manual_seed(0)
    sub = torch.randperm(len(xte), generator=g)[:n_test]
    xte, yte = xte[sub], yte[sub]
    model = ResNet20()
    model.load_state_dict(torch.load(RESNET_WEIGHTS, weights_only=True))
    model.eval()
    acc0, logits0 = accuracy(model, xte, yte)
    rows = []
    for a in alphas or ALPHAS:
        t0 = time.time()
        am = approximate(model, alpha=a, calib=xtr[:n_calib], margin=margin)
        acc, logits = accuracy(am, xte, yte)
        rows.append(
            {
                "alpha": a,
                "accuracy": acc,
                "agreement": float((logits.argmax(1) == logits0.argmax(1)).float().mean()),
                "max_logit_diff": float((logits - logits0).abs().max()),
                "bounds": [round(m.bound, 3) for m in approx_layers(am).values()],
                "out_of_range": out_of_range(am, xte),
                "seconds": time.time() - t0,
            }
        )
        print("resnet20", rows[-1], flush=True)
    return {
        "original_accuracy": acc0,
        "margin": margin,
        "n_test": n_test,
        "n_calib": n_calib,
        "rows": rows,
    }


MARGIN_JSON = ROOT / "runs" / "approximation_resnet_margin.json"


def resnet_margin(margin: float, n_calib: int, alphas: list[int], n_test: int) -> None:
    """ResNet-20 again with more calibration data and a larger margin (extra doc table)."""
    res = evaluate_resnet(margin, n_test, n_calib, alphas)
    MARGIN_JSON.write_text(json.dumps(res, indent=1))


def _composite_rows() -> list[dict]:
    from hecnn.approx.composite import composite_sign, max_error, relu_error, relu_error_parts

    rows = []
    for a in range(4, 15):
        s = composite_sign(a)
        rows.append(
            {
                "alpha": a,
                "degrees": s.degrees,
                "depth": s.depth,
                "eps": s.eps,
                "relu": math.log2(relu_error(s)),
                "transition": math.log2(relu_error_parts(s)[0]),
                "max": math.log2(max_error(s, 1001)),
                "published": PUBLISHED_RELU_LOG2.get(a),
            }
        )
    return rows


def _plot(res: dict, path: Path, res_rn: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("MNIST CNN", res)]
    if res_rn:
        runs.append(("ResNet-20 / CIFAR-10, margin 1.1", res_rn))
        if MARGIN_JSON.exists():
            m = json.loads(MARGIN_JSON.read_text())
            runs.append((f"ResNet-20, margin {m['margin']}, {m['n_calib']} calib", m))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, r in runs:
        a = [row["alpha"] for row in r["rows"]]
        ax.plot(
            a,
            [100 * (row["accuracy"] - r["original_accuracy"]) for row in r["rows"]],
            "o-",
            label=f"{name} (original {100 * r['original_accuracy']:.2f} %)",
        )
    ax.axhline(0, ls="--", color="k", lw=0.8)
    ax.set_xlabel(r"precision $\alpha$ (ReLU error $\leq 2^{-\alpha} B$)")
    ax.set_ylabel("accuracy − original (points)")
    ax.set_title("ReLU + max-pool replaced by composite minimax polynomials")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(margin: float, resnet_test: int = 2000) -> None:
    torch.set_num_threads(1)
    comp = _composite_rows()
    res = evaluate(margin)
    res_rn = evaluate_resnet(margin, resnet_test)
    (ROOT / "runs").mkdir(exist_ok=True)
    (ROOT / "runs" / "approximation_results.json").write_text(
        json.dumps({"mnist": res, "resnet20": res_rn}, indent=1)
    )
    _write_doc(comp, res, res_rn)


def _write_doc(comp: list[dict], res: dict, res_rn: dict | None) -> None:
    png = DOC.with_name("approximation_accuracy.png")
    _plot(res, png, res_rn)
    DOC.write_text(render(comp, res, png.name, res_rn))
    from hecnn.cli.approx import plot

    plot(out=DOC.parent / "img_approx", alphas="6,8,10,12,14")
    print(f"wrote {DOC.relative_to(ROOT)} and {png.relative_to(ROOT)}")


def rerender() -> None:
    """Rewrite the doc from ``runs/approximation_results.json`` (no model evaluation)."""
    data = json.loads((ROOT / "runs" / "approximation_results.json").read_text())
    _write_doc(_composite_rows(), data["mnist"], data.get("resnet20"))


ENCRYPTED = ROOT / "benchmarks" / "results" / "approx_encrypted.json"
E2E = ROOT / "benchmarks" / "results" / "composite_e2e_alpha{alpha}.json"


def encrypted(alphas: list[int], count: int = 4096) -> None:
    """Each α's sign chain on ciphertexts at 128-bit security (the smallest secure ring for its
    depth, scale 2^30): levels used, products, ReLU error on uniform and near-zero inputs."""
    from hecnn.approx.composite import composite_sign
    from hecnn.ckks.context import CkksContext
    from hecnn.ckks.encryption import decrypt, encrypt
    from hecnn.ckks.keys import KeyGenerator
    from hecnn.ckks.params import CkksParameters
    from hecnn.compile.chebyshev import chebyshev_schedule, to_chebyshev
    from hecnn.runtime.chebyshev import evaluate_chebyshev

    rows = []
    for alpha in alphas:
        sign = composite_sign(alpha)
        params = CkksParameters.create(depth=sign.depth, scale_bits=30, first_prime_bits=62)
        ctx = CkksContext(params)
        kg = KeyGenerator(ctx)
        sk = kg.secret_key()
        pk, evk = kg.public_key(sk), kg.evaluation_keys(sk)
        rng = np.random.default_rng(alpha)
        slots = min(count, params.slots)
        x = np.concatenate(
            [rng.uniform(-1, 1, slots), rng.uniform(-4 * sign.eps, 4 * sign.eps, slots)]
        ).reshape(2, slots)
        radii = [1.0] + [(1 + e) * 1.01 for e in sign.stage_errors[:-1]]
        y = encrypt(ctx, x, pk, scale=params.scale)
        top, products, power_max, cheb_max = y.level, 0, 0.0, 0.0
        t0 = time.perf_counter()
        for i, comp in enumerate(sign.components):
            cheb = to_chebyshev(np.asarray(comp), radii[i] if i else 1.0)
            nxt = params.scale / radii[i + 1] if i + 1 < len(radii) else params.scale
            y = evaluate_chebyshev(y, cheb, radii[i], evk, target_scale=nxt)
            products += chebyshev_schedule(cheb).products
            power_max = max(power_max, float(np.abs(comp).max()))
            cheb_max = max(cheb_max, float(np.abs(cheb).max()))
        seconds = time.perf_counter() - t0
        p = decrypt(ctx, y, sk, slots=slots)
        err = np.abs(x * (1 + p) / 2 - np.maximum(x, 0))
        rows.append(
            {
                "alpha": alpha,
                "degrees": list(sign.degrees),
                "levels_used": top - y.level,
                "optimal_depth": sign.depth,
                "products": products,
                "power_coeff_max": power_max,
                "chebyshev_coeff_max": cheb_max,
                "N": params.n,
                "relu_err_log2": float(np.log2(err[0].max())),
                "relu_err_near_zero_log2": float(np.log2(err[1].max())),
                "seconds_per_2_ciphertexts": round(seconds, 2),
            }
        )
        print(rows[-1], flush=True)
    ENCRYPTED.write_text(json.dumps({"scale_bits": 30, "rows": rows}, indent=2) + "\n")
    print(f"wrote {ENCRYPTED.relative_to(ROOT)}")


def _encrypted_section() -> str:
    head = """## Encrypted evaluation

Each component `p_i` runs on ciphertexts in the **Chebyshev basis** of its input interval
(`hecnn.compile.chebyshev`, `hecnn.runtime.chebyshev`): the power-basis coefficients of the
α ≥ 12 components reach 10³–10⁵ with alternating signs, which multiplies every CKKS rounding
error; the Chebyshev coefficients stay below 1.3. The schedule is the recursive Chebyshev
division `p = q·T_(2^j) + r` down to leaves `Σ c_k T_k`, with the leaf scalars encoded so
that the product with the giant step lands exactly on the target scale: every degree-`d`
component costs the minimal `⌈log2(d + 1)⌉` levels (the power-basis evaluator needed one
more for degrees 7 and 13), and the leaf size is chosen to minimise ciphertext products.
The division by the interval radius is free: the producer of the input (the affine layer
before a ReLU, the difference `a − b` of a max, the previous stage) lands at scale `Δ/r`,
and a ciphertext of `x` at scale `Δ/r` *is* one of `x/r` at scale `Δ`. Every product is
relinearized before its rescale (relinearizing after it costs ~6 bits of precision).
"""
    if not ENCRYPTED.exists():
        return head + "\n(run `python benchmarks/approximation.py encrypted` for the table)\n\n"
    data = json.loads(ENCRYPTED.read_text())
    rows = "\n".join(
        f"| {r['alpha']} | {','.join(map(str, r['degrees']))} | {r['levels_used']} "
        f"| {r['optimal_depth']} | {r['products']} | {r['power_coeff_max']:.3g} "
        f"| {r['chebyshev_coeff_max']:.2f} | 2^{int(math.log2(r['N']))} | {r['relu_err_log2']:.2f} "
        f"| {r['relu_err_near_zero_log2']:.2f} |"
        for r in data["rows"]
    )
    table = f"""
Measured on ciphertexts (`python benchmarks/approximation.py encrypted`): the whole sign
chain at 128-bit security, on the smallest secure ring for its depth, scale 2^{data["scale_bits"]};
ReLU error `|x(1 + P(x))/2 − ReLU(x)|` (log2) over 2048–4096 uniform inputs in `[-1, 1]` and
as many within `4ε` of zero.

| α | degrees | levels used | Σ⌈log2(d+1)⌉ | products | max \\|power coeff\\| | max \\|Chebyshev coeff\\| | N | ReLU err | near 0 |
|---|---|---|---|---|---|---|---|---|---|
{rows}

Every α uses exactly the minimal number of levels. Up to α = 10 the encrypted chain reaches
its precision (within 0.01 bit). Beyond it the scale is the limit: hecnn's primes are
≤ 31 bits (int32 kernels), so Δ = 2^30, and fresh-encryption noise (~2^-14 at N = 2^15 with
the public key) is amplified by the steep early components: α = 11–13 lose 0.04–0.18 bit,
and α = 14 (whose first two components have stage errors 0.98 and 0.59, i.e. are steep
everywhere) reaches only 2^-10.8 away from zero (2^-14.0 near zero, where ReLU's error is
multiplied by |x|). Precision beyond ~2^-13 needs a larger scale — two primes per level
(Δ ≈ 2^60), not implemented.
"""
    e2e = ""
    for alpha in (10, 11, 12, 13, 14):
        path = Path(str(E2E).format(alpha=alpha))
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        sec = r["seconds"]
        e2e += (
            f"| {r['alpha']} | 2^{int(math.log2(r['N']))} | {r['levels']} | {r['log_qp']} "
            f"| {r['batch']} | {r['sign_chains']} | {r['relinearizations']:,} "
            f"| {sec['keygen']} / {sec['encrypt']} / {sec['infer']} / {sec['decrypt']} "
            f"| {r['ms_per_image']} | {r['peak_rss_gib']} | {r['agreement_vs_simulation']:.2f} "
            f"| {r['agreement_vs_original']:.2f} | {r['max_err_vs_simulation']:.3g} "
            f"| {r['accuracy_original']:.2f} / {r['accuracy_encrypted']:.2f} |\n"
        )
    if e2e:
        e2e = f"""
### End to end: a pre-trained ReLU + max-pool CNN, encrypted

**Status: the N = 2^16 run agrees with its simulation** (table below). Sessions before this
one recorded it as *failed* (agreement 10 %, logits ≈ 10¹²), with the inputs mapped or in
memory, public- or secret-key encryption. The cause, found by a node-by-node replay at
N = 2^15 that decrypted every node (all 16384 slots) and compared it with the plaintext
simulation: **the executor relinearized ciphertext products *after* their rescale.** The key
switch adds noise of a fixed size in the integers (~N·σ·√digits after the division by the
special primes); after the rescale it meets the message at its working scale — here Δ/r ≈
2^24.9, the scale of a max-pool round's output that is the next sign chain's input x/r — and
cost ~6 bits: the first round's product `d·sign(d)` came out with a max error of 0.66 (the
sign's own error allows 0.07), the second round's sign inputs left their interval (|u| up to
1.02), the degree-13 stage amplified that to 5.5, the ReLU's last stage to 10¹⁶, and the
logits wrapped the modulus. Relinearizing *before* the rescale divides that noise by the prime
with the rest: the same replay then stays inside every interval (max |u| 0.9902 against the
plaintext's 0.9901) and ends with a max logit error of 6·10⁻³. Two fixes in the runtime: every
planned relinearization now comes before its node's rescale (products, and the lazy
relinearization after an affine layer), and a rescaled `MulNode` is always relinearized (a
3-component product rescaled meets the rounding with s², ~2^-7 in the slots at N = 2^16 and
Δ/r). At N = 2^12 the α = 10 test network's relative error fell from 5·10⁻⁴ … 1.4·10⁻³ to
1·10⁻⁵ (`tests/runtime/test_composite_encrypted.py` now asserts < 10⁻⁴). And decryption now
*raises* (`ScaleError: decryption overflow`) when the coefficients fill the modulus instead
of returning the wrapped numbers.

`benchmarks/composite_e2e.py`: `conv4×4/2(4) → maxpool2 → ReLU → fc10` on 12×12 MNIST
digits (the client averages 2×2 and keeps the centre), trained here as a plain ReLU network
(`python benchmarks/composite_e2e.py train`, 20 epochs on the 8004 training digits),
converted with `hecnn.approximate(model, alpha=α, calib=1024 training digits, margin=1.5)`,
compiled at 128-bit security and run on a full batch (every slot; the 1996 test digits
repeated) with `python benchmarks/composite_e2e.py run --alpha α` (inputs encrypted to a
file the server maps, public-key encryption; `HECNN_MEMORY_GIB=6`), on this 2-core machine,
idle. *vs simulation*: the plaintext
simulation of the compiled plan (what the server computes); *vs original*: the ReLU model.

| α | N | levels | log QP | batch | sign chains | relins | keygen / encrypt / infer / decrypt (s) | ms/image | peak RSS (GiB) | agreement vs simulation (%) | vs original (%) | max \\|Δ logit\\| | accuracy original / encrypted (%) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{e2e}
Labels that differ from the simulation can only be near-ties: with every logit within the max
error ε of its simulated value, an argmax flips only where the simulated top two are closer
than 2ε (α = 10: 4 of 32768 slots, ε = 0.015). Where the time goes (α = 10): the first
max-pool round's three sign stages on 72 features 8 chunks × ~65 s, the second round's on 36
features 131 s, the ReLU's on 36 features (at lower levels) 52 s; the affine layers a few
seconds. A per-node trace of the encrypted errors: `python benchmarks/node_replay.py
[--insecure-ring 32768]`.
"""
    return head + table + e2e + "\n"


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _acc_table(res: dict) -> str:
    head = (
        "| α | approximated acc. (%) | original acc. (%) | Δ (points) | agreement (%) "
        "| max \\|Δ logit\\| | out of range |\n|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r['alpha']} | {100 * r['accuracy']:.2f} | {100 * res['original_accuracy']:.2f} "
        f"| {100 * (r['accuracy'] - res['original_accuracy']):+.2f} | {100 * r['agreement']:.2f} "
        f"| {r['max_logit_diff']:.3g} | {r['out_of_range']} |"
        for r in res["rows"]
    )


def render(comp: list[dict], res: dict, png: str, res_rn: dict | None = None) -> str:
    t1 = "\n".join(
        f"| {r['alpha']} | {','.join(map(str, r['degrees']))} | {r['depth']} | {r['eps']:.4g} "
        f"| {r['relu']:.3f} | {r['transition']:.3f} | {r['max']:.3f} | {_fmt(r['published'])} |"
        for r in comp
    )
    if res_rn is None:
        resnet = RESNET_NOT_RUN
    else:
        meta = json.loads(RESNET_WEIGHTS.with_suffix(".json").read_text())
        extra = ""
        if MARGIN_JSON.exists():
            m = json.loads(MARGIN_JSON.read_text())
            extra = RESNET_MARGIN_TEMPLATE.format(
                n_calib=m["n_calib"], margin=m["margin"], n_test=m["n_test"], table=_acc_table(m)
            )
        resnet = (
            RESNET_TEMPLATE.format(
                table=_acc_table(res_rn),
                n_test=res_rn["n_test"],
                epochs=meta["epochs"],
                cmd=meta["command"],
                full_acc=100 * meta["test_accuracy"],
                margin=res_rn["margin"],
            )
            + extra
        )
    return TEMPLATE.format(
        table_errors=t1,
        table_acc=_acc_table(res),
        png=png,
        margin=res["margin"],
        train_cmd=TRAIN_CMD,
        report_cmd=REPORT_CMD,
        bounds=res["rows"][-1]["bounds"],
        resnet=resnet,
        encrypted=_encrypted_section(),
    )


RESNET_NOT_RUN = """\
**ResNet-20 on CIFAR-10: not run yet.** No pre-trained weights exist in this repository
and training them was out of reach on the 2 shared CPU cores of this session: one epoch
(50 000 images × ~41 M multiply-adds forward, ×3 with the backward pass ≈ 12 TFLOP) is an
estimated 10+ minutes per core, and the usual ~91 % schedule is 160+ epochs (a day).
`approximate` handles such a model (ReLU modules, functional ReLUs, no max-pool); the row
will be filled in when weights trained elsewhere are added.
"""

RESNET_MARGIN_TEMPLATE = """
With more calibration data ({n_calib} training images) and margin {margin} (same weights,
{n_test} test images; command `python benchmarks/approximation.py resnet-margin`):

{table}

In the run recorded here this is a calibration problem, not a precision problem: with
margin 1.1 the same test images stay out of range for every α ≥ 11 (the bounds are the
same), while with 2000 calibration images and margin 1.5 no test image leaves `[-B, B]` and
α ≥ 11 reproduces every prediction of the original network. For deep networks use a
large calibration set and a margin around 1.5 (each extra factor in `B` costs
`log2(margin)` bits of absolute precision).
"""

RESNET_TEMPLATE = """\
### ResNet-20 on CIFAR-10

ResNet-20 (He et al. 2016; 19 ReLUs, functional ones inside the blocks: converted through
`torch.fx`), `benchmarks/weights/resnet20_cifar10.pt`, trained here on one CPU thread for
a fixed time budget (`{cmd}`, {epochs:.1f} epochs, one-cycle SGD, crop + flip): test
accuracy {full_acc:.2f} % on all 10 000 test images, far from the usual ~91 % (which
needs ~160 epochs), so this is an under-trained network. Accuracies below are on a fixed
random subset of {n_test} test images; calibration 512 training images, margin {margin}.

{table}

Deep networks amplify the approximation error: at low α, on some test images, activations
of later layers (perturbed by the errors of all earlier approximations) exceed the bounds
`B` calibrated on 512 training images (+10 % margin, checked on the approximated model).
Outside `[-1, 1]` the composite `P` leaves ±1 fast (α = 6: `P(1.05) ≈ 0.53`; α = 8:
`P(1.05) ≈ 42`; α = 14: overflow already at 1.02), so each out-of-range element gets a wrong
activation (`nan` logits when it overflows, see *max |Δ logit|*); whether the class
changes depends on how many elements are hit and how far out they are.
The *out of range* count depends on which bounds the calibration happened to pick, so it
need not decrease monotonically in α. Larger α or a larger `margin` (at the cost of
precision relative to `B`) remove this.
"""


TEMPLATE = """\
# Precise approximation of ReLU and max-pooling (issue 5)

<!-- Generated by `{report_cmd}`; edit benchmarks/approximation.py, not this file. -->

CKKS can only evaluate polynomials, so `hecnn.approx` replaces `ReLU` and max-pooling in
an existing, pre-trained network by polynomials precise enough that the network needs
no retraining (Lee et al. 2021, *Precise approximation of convolutional neural networks
for homomorphically encrypted data*).

## Construction

* **sign.** `sign(x)` on `[-1,-ε] ∪ [ε,1]` is approximated by a composition
  `P = p_k ∘ … ∘ p_1` of odd minimax polynomials (`hecnn.approx.remez`, Remez exchange in
  an odd Chebyshev basis, converted to ascending powers at the end; equioscillation on
  `m + 2` points is checked). `p_1` is minimax for 1 on `[ε, 1]` with error `δ_1`; `p_i`
  is minimax for 1 on the previous image `[1 - δ_(i-1), 1 + δ_(i-1)]`.
* **precision α.** `ReLU(x) ≈ x(1 + P(x))/2` has error `|x|·|1 - P(|x|)|/2` (oddness). On
  `ε ≤ |x| ≤ 1` it is `≤ δ_k / 2`, so we bisect for the smallest `ε` with
  `δ_k ≤ 2^(1-α)` (minus a 10⁻³ slack for rounding); on `|x| < ε` (transition region)
  the error is measured (column *transition*). Both stay `≤ 2^-α`: the ReLU sup-error on
  `[-1, 1]` is at most `2^-α`. Depth = `Σ ceil(log2(d_i + 1))`.
* **max.** `max(a, b) = (a + b + (a - b)·P((a - b)/B))/2 = b + relu_approx(a - b)` for
  `|a - b| ≤ B`: error `≤ B·2^-α`. The *max* column is measured on a 1001×1001 grid of
  `a, b ∈ [0, 1]` with `B = 1`.
* **max-pool.** a `k×k` window is a tournament of `ceil(log2 k²)` rounds of pairwise
  maxima. Inputs in `[-B, B]` give differences in `[-2B, 2B]`; round `r` rescales by
  `1/(2B_r)` with `B_r = B(1 + 2·2^-α)^r`, because a max of values in `[-B_r, B_r]` is
  again in that interval up to its error `2B_r·2^-α`. Errors add over rounds (max is
  1-Lipschitz): total `≤ Σ_r 2B_r·2^-α`. Padding uses `-B` instead of `-∞`.

Coefficients are computed by our own code and shipped in
`src/hecnn/approx/coeffs_cache.json` (regenerate: `python -m hecnn.approx --write-cache`,
about 4 minutes on one core); anything else (other α or degrees) is computed on demand.

## Errors of the composite polynomials

`log2` of the measured sup-errors (ReLU on a dense grid of `[-1, 1]`, refined near `ε`).
Published: the maximum ReLU error measured by Lee et al. 2021 for the same degrees.

| α | degrees | depth | ε | ReLU err | transition err | max err | published ReLU |
|---|---|---|---|---|---|---|---|
{table_errors}

Our ReLU errors sit just below `2^-α` (by the 10⁻³ slack), so they are comparable to the
published ones: 0.29 bits better at α = 4, 0.02–0.11 bits worse for α ≥ 6 (we did not
investigate the difference; the paper's exact choice of `ε` is not in the material we had).
The *max* column equals the ReLU column, as it must: `max(a, b) = b + ReLU(a - b)`. Note
that `ε` is far larger than `2^-α` (the transition region is harmless for ReLU because
`|x|` is small there), which is what lets these low degrees reach precision α.

## Converting a pre-trained model

```python
import hecnn
approx_model = hecnn.approximate(model, alpha=10, calib=calib_images, margin=1.5)
```

Every `nn.ReLU`, `F.relu` / `torch.relu` / `x.relu()` (found with `torch.fx`),
`nn.MaxPool2d` and `F.max_pool2d` becomes a `CompositeReLU(sign, bound)` /
`CompositeMaxPool2d(kernel, stride, sign, bound)`. Each layer's `B` is
`margin × max|input|` over the calibration data; a check pass re-runs the approximated
model (whose activations differ slightly) and raises `B` where an input left `[-B, B]`.
The modules compute in float64, are fx-traceable and expose `.sign` (components, ascending
power coefficients, applied first to last) and `.bound` for the encrypted compiler;
`hecnn.approx.trace_composite_leaves(model)` gives the fx graph with one `call_module` node
per composite layer. Multiplicative depth per layer: `depth(P) + 1` for ReLU (the product
with `x`; the scaling by `1/B` is free, see *Encrypted evaluation*) and
`ceil(log2 k²)·(depth(P) + 1)` for a `k×k` max-pool.

## Accuracy vs α

MNIST CNN (`conv5(8)-ReLU-maxpool2-conv5(16)-ReLU-maxpool2-fc64-ReLU-fc10`,
`benchmarks/weights/mnist_cnn.pt`, trained with `{train_cmd}` on the 8004-image training
split of `mnist10k.npz`), evaluated on the 1996 test images; calibration: 512 training
images, margin {margin}. *Agreement*: fraction of test images whose predicted class equals
the original model's; *out of range*: test images for which some approximated layer saw an
input outside its calibrated `[-B, B]` (where the polynomial diverges, as it would under
encryption).

{table_acc}

![accuracy vs alpha]({png})

Composite approximations and their errors (`hecnn approx plot --out docs/img_approx`):

![sign and ReLU approximations](img_approx/approximations.png)
![ReLU errors](img_approx/relu_errors.png)

Layer bounds `B` chosen by calibration (α = 14): {bounds}.

{resnet}
{encrypted}
## Reproduce

```sh
python -m hecnn.approx --write-cache            # coefficient cache
python benchmarks/approximation.py train        # MNIST weights (~20 s, 1 thread)
python benchmarks/approximation.py train-resnet20 --budget-min 52 --seed 0  # ~1 h
{report_cmd}       # this file + PNGs (~20 min, 1 thread)
python benchmarks/approximation.py render       # re-render from runs/ (no evaluation)
hecnn approx table                              # the error table
hecnn approx coeffs --alpha 14 --json           # coefficients, first to last
hecnn approx plot --out docs/img_approx         # approximation / error plots
python benchmarks/approximation.py encrypted    # sign chains on ciphertexts (128-bit)
python benchmarks/composite_e2e.py train        # the end-to-end model (~30 s)
python benchmarks/composite_e2e.py run --alpha 10  # encrypted end to end, N=2^16
```
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train-resnet20")
    t.add_argument("--budget-min", type=float, default=60.0)
    t.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("--margin", type=float, default=1.1)
    r.add_argument("--resnet-test", type=int, default=2000, help="CIFAR-10 test images used")
    sub.add_parser("render", help="rewrite the doc from the last report's saved results")
    en = sub.add_parser("encrypted", help="each α's sign chain on ciphertexts")
    en.add_argument("--alphas", default="6,7,8,9,10,11,12,13,14")
    rm = sub.add_parser("resnet-margin", help="ResNet-20 with more calibration / margin")
    rm.add_argument("--margin", type=float, default=1.5)
    rm.add_argument("--calib", type=int, default=2000)
    rm.add_argument("--alphas", default="8,11,14")
    rm.add_argument("--n-test", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "train":
        train(args.epochs, args.seed)
    elif args.cmd == "train-resnet20":
        train_resnet(args.budget_min, args.seed)
    elif args.cmd == "render":
        rerender()
    elif args.cmd == "encrypted":
        encrypted([int(a) for a in args.alphas.split(",")])
    elif args.cmd == "resnet-margin":
        alphas = [int(a) for a in args.alphas.split(",")]
        resnet_margin(args.margin, args.calib, alphas, args.n_test)
    else:
        report(args.margin, args.resnet_test)


if __name__ == "__main__":
    main()
