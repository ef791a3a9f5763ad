"""Encrypted end to end: a pre-trained ReLU + max-pool CNN, converted without retraining.

A shallow MNIST network with a max-pool and a ReLU (``conv4×4/2(4) → maxpool2 → ReLU → fc10`` on
12×12 images: the client averages the 28×28 digits 2×2 and keeps the central 12×12, because at
N = 2^16 and 40 limbs every input ciphertext takes 21 MB) is trained here as an ordinary
ReLU network, converted by ``hecnn.approximate`` (composite minimax sign, precision α), compiled
at 128-bit security — the depth forces N = 2^16 — and run on a full batch of encrypted images
(every slot, the 1996 test digits repeated). The decrypted logits are compared with the
plaintext simulation of the approximated model (what the server computes) and with the
original ReLU model.

    python benchmarks/composite_e2e.py train                     # ~20 s, weights committed
    python benchmarks/composite_e2e.py run --alpha 10            # ~30–60 min on 2 cores
    python benchmarks/composite_e2e.py run --alpha 10 --insecure-ring 4096 --batch 256  # smoke

Results go to ``benchmarks/results/composite_e2e_alpha<α>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import hecnn
from hecnn.benchmarks.models import _encrypt_to_file as encrypt_to_file
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.compile.ir import PolyNode
from hecnn.runtime import decrypt_outputs, encrypt_images, run
from hecnn.runtime.executor import RunReport
from hecnn.runtime.simulate import simulate

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "mnist_subset" / "mnist10k.npz"
WEIGHTS = HERE / "weights" / "mnist12_relu_maxpool.pt"
RESULTS = HERE / "results"


class ShallowReluNet(nn.Module):
    """conv 4×4 stride 2 (4 channels) → max-pool 2 → ReLU → linear: one max-pool and one ReLU
    layer, 72 + 36 + 36 composite evaluations (ReLU after the max-pool equals ReLU before it,
    at a quarter of the cost)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 4, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.pool(self.conv(x))), 1))


def load_mnist12() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): the 28×28 digits in [0, 1], averaged 2×2 → 14×14,
    central 12×12."""
    d = np.load(DATA)
    x = torch.from_numpy(d["x"].astype(np.float32) / 255.0).unsqueeze(1)
    x = F.avg_pool2d(x, 2)[:, :, 1:13, 1:13]
    y = torch.from_numpy(d["y"].astype(np.int64))
    tr, te = torch.from_numpy(d["train_idx"]), torch.from_numpy(d["test_idx"])
    return x[tr], y[tr], x[te], y[te]


def train(epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = load_mnist12()
    model = ShallowReluNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    torch.save(model.state_dict(), WEIGHTS)
    print(f"test accuracy {100 * acc:.2f}% → {WEIGHTS}")


def run_encrypted(
    alpha: int,
    batch: int | None,
    insecure_ring: int | None,
    mapped: bool | None = None,
    symmetric: bool = False,
) -> dict:
    xtr, _, xte, yte = load_mnist12()
    model = ShallowReluNet()
    model.load_state_dict(torch.load(WEIGHTS))
    model.eval()
    calib = xtr[:1024]
    t0 = time.perf_counter()
    approx = hecnn.approximate(model, alpha=alpha, calib=calib, margin=1.5).eval()
    slots_probe = compile_model(
        approx, (1, 12, 12), batch=1, calib=calib, insecure_ring_for_tests=insecure_ring
    )
    full = slots_probe.params.slots
    batch = full if batch is None else min(batch, full)
    plan = compile_model(
        approx, (1, 12, 12), batch=batch, calib=calib, insecure_ring_for_tests=insecure_ring
    )
    t_compile = time.perf_counter() - t0
    print(plan.summary(), flush=True)
    reps = -(-batch // len(xte))
    images = xte.repeat(reps, 1, 1, 1)[:batch]
    labels = yte.repeat(reps)[:batch].numpy()
    with torch.no_grad():
        ref_orig = model(images).double().numpy()
        ref_approx = approx(images).double().numpy()
    sim = simulate(plan, images.numpy())

    ctx = CkksContext(plan.params)
    t = time.perf_counter()
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk)
    t_keygen = time.perf_counter() - t
    # the client encrypts with its public key (or, --encrypt-with secret, its secret key: fresh
    # noise ~σ per coefficient instead of ~N·σ)
    enc_key = sk if symmetric else pk
    t = time.perf_counter()
    mapped = insecure_ring is None if mapped is None else mapped
    if mapped:  # 21 MB a ciphertext at N = 2^16: the server maps the client's file
        tmp = Path(tempfile.mkdtemp(prefix="hecnn-e2e-"))
        cts = encrypt_to_file(plan, ctx, enc_key, images.numpy(), tmp / "inputs.npy")
    else:
        cts = encrypt_images(plan, ctx, enc_key, images.numpy())
    t_encrypt = time.perf_counter() - t
    report = RunReport()
    t = time.perf_counter()
    last = [time.perf_counter()]

    def progress(name: str, i: int, total: int) -> None:
        now = time.perf_counter()
        print(f"  [{i}/{total}] {name} (+{now - last[0]:.1f}s)", flush=True)
        last[0] = now

    out = run(plan, cts, evk, report=report, progress=progress)
    t_infer = time.perf_counter() - t
    t = time.perf_counter()
    got = decrypt_outputs(ctx, sk, out, batch)
    t_decrypt = time.perf_counter() - t
    if mapped:
        del cts
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    chains = [n for n in plan.nodes if isinstance(n, PolyNode)]
    res = {
        "alpha": alpha,
        "degrees": list(hecnn.approx.composite_sign(alpha).degrees),
        "sign_depth": hecnn.approx.composite_sign(alpha).depth,
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), 2 cores",
        "N": plan.params.n,
        "levels": plan.params.max_level,
        "log_qp": round(plan.params.log_qp, 1),
        "secure_128": not plan.params.insecure_test_only,
        "batch": batch,
        "sign_chains": int(sum(n.features for n in chains if n.name.endswith(".p1"))),
        "relinearizations": int(sum(plan.relinearizations().values())),
        "seconds": {
            "compile": round(t_compile, 2),
            "keygen": round(t_keygen, 2),
            "encrypt": round(t_encrypt, 2),
            "infer": round(t_infer, 2),
            "decrypt": round(t_decrypt, 2),
        },
        "ms_per_image": round(1e3 * t_infer / batch, 3),
        "peak_rss_gib": round(report.peak_rss / 2**30, 2),
        "memory_estimate_gib": round(plan.memory_estimate() / 2**30, 2),
        "max_err_vs_simulation": float(np.abs(got - sim).max()),
        "agreement_vs_simulation": float(100 * (got.argmax(1) == sim.argmax(1)).mean()),
        "agreement_vs_original": float(100 * (got.argmax(1) == ref_orig.argmax(1)).mean()),
        "max_err_simulation_vs_module": float(np.abs(sim - ref_approx).max()),
        "accuracy_original": float(100 * (ref_orig.argmax(1) == labels).mean()),
        "accuracy_approximated": float(100 * (ref_approx.argmax(1) == labels).mean()),
        "accuracy_encrypted": float(100 * (got.argmax(1) == labels).mean()),
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--seed", type=int, default=0)
    rn = sub.add_parser("run")
    rn.add_argument("--alpha", type=int, default=10)
    rn.add_argument("--batch", type=int, default=None, help="default: every slot of the ring")
    rn.add_argument("--insecure-ring", type=int, default=None, help="tests only: below 128-bit")
    rn.add_argument(
        "--inputs",
        choices=["file", "memory"],
        default=None,
        help="encrypted inputs mapped from a file (default at 128-bit) or held in memory",
    )
    rn.add_argument(
        "--encrypt-with",
        choices=["secret", "public"],
        default="public",
        help="the client's key for encrypting its images (secret: less fresh noise)",
    )
    rn.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/…)")
    args = ap.parse_args()
    if args.cmd == "train":
        train(args.epochs, args.seed)
        return
    mapped = None if args.inputs is None else args.inputs == "file"
    symmetric = args.encrypt_with == "secret"
    res = run_encrypted(args.alpha, args.batch, args.insecure_ring, mapped, symmetric)
    res["encrypted_with"] = args.encrypt_with
    res["inputs"] = (
        "file" if (mapped if mapped is not None else args.insecure_ring is None) else "memory"
    )
    print(json.dumps(res, indent=2))
    if args.insecure_ring is None or args.out:
        RESULTS.mkdir(exist_ok=True)
        path = Path(args.out) if args.out else RESULTS / f"composite_e2e_alpha{args.alpha}.json"
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"→ {path}")


if __name__ == "__main__":
    main()
