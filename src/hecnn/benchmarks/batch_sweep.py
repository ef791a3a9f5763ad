"""``hecnn bench batch``: total and amortized encrypted-inference time against the batch size.

With slot = image packing, the server's work depends on the ring, not on how many slots are
used: the total stays flat and the amortized time falls as 1/B until the slots are full. The
sweep runs the bundled MNIST model at B = 1024, 2048, 4096, 8192 (N = 2^14 holds 8192) and writes
a table and, with matplotlib, a PNG of both curves.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.nn import bundled
from hecnn.runtime import decrypt_outputs, encrypt_images, run


def sweep(
    model: str = "ishiyama_mnist_poly_element_kd",
    batches: tuple[int, ...] = (1024, 2048, 4096, 8192),
    plot: Path | None = None,
    console: Console | None = None,
) -> list[dict]:
    console = console or Console()
    images, _ = bundled.sample_images()
    x_all = np.asarray(bundled.to_float(images), dtype=np.float32)
    net = bundled.load_model(model)
    rows = []
    for b in batches:
        plan = compile_model(net, x_all.shape[1:], batch=b, calib=x_all[:256])
        x = np.concatenate([x_all] * -(-b // len(x_all)))[:b]
        ctx = CkksContext(plan.params)
        kg = KeyGenerator(ctx)
        sk = kg.secret_key()
        evk = kg.evaluation_keys(sk)
        ct = encrypt_images(plan, ctx, kg.public_key(sk), x)
        t0 = time.perf_counter()
        out = run(plan, ct, evk)
        total = time.perf_counter() - t0
        import torch

        with torch.no_grad():
            ref = net(torch.as_tensor(x)).numpy().argmax(1)
        agree = float(np.mean(decrypt_outputs(ctx, sk, out, b).argmax(1) == ref))
        rows.append(
            {
                "batch": b,
                "n": plan.params.n,
                "depth": plan.levels,
                "total_s": total,
                "amortized_ms": 1e3 * total / b,
                "agreement": 100 * agree,
            }
        )
    table = Table(title=f"batch sweep — {model}")
    for col in ("batch", "N", "depth", "total s", "amortized ms/image", "agreement %"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["batch"]),
            str(r["n"]),
            str(r["depth"]),
            f"{r['total_s']:.1f}",
            f"{r['amortized_ms']:.2f}",
            f"{r['agreement']:.2f}",
        )
    console.print(table)
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax1 = plt.subplots(figsize=(6, 4))
        bs = [r["batch"] for r in rows]
        ax1.plot(bs, [r["total_s"] for r in rows], "o-", label="total (s)")
        ax1.set_xlabel("images per batch")
        ax1.set_ylabel("total seconds")
        ax2 = ax1.twinx()
        ax2.plot(bs, [r["amortized_ms"] for r in rows], "s--", color="tab:red", label="ms/image")
        ax2.set_ylabel("amortized ms/image")
        ax1.set_xscale("log", base=2)
        ax1.set_ylim(bottom=0)
        ax2.set_ylim(bottom=0)
        fig.legend(loc="upper center")
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
    best = rows[-1]
    print(
        f"batch={best['batch']} amortized_ms={best['amortized_ms']:.3f} agreement={best['agreement']:.2f}"
    )
    return rows
