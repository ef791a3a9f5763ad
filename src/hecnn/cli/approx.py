"""``hecnn approx …``: composite minimax sign/ReLU/max coefficients, error table and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from hecnn.cli.main import app

approx_app = typer.Typer(
    help="Composite minimax approximations of sign, ReLU and max (Lee et al. 2021).",
    no_args_is_help=True,
)
app.add_typer(approx_app, name="approx")

#: Max ReLU error on [−1, 1] measured by Lee et al. 2021 (log2), for comparison.
DEFAULT_PLOT_DIR = Path("approx_plots")

PUBLISHED_RELU_LOG2 = {4: -3.71, 6: -6.05, 8: -8.03, 10: -10.11, 12: -12.09, 14: -14.02}


def _parse_degrees(degrees: str | None) -> tuple[int, ...] | None:
    if not degrees:
        return None
    try:
        return tuple(int(d) for d in degrees.split(","))
    except ValueError as exc:
        raise typer.BadParameter(
            f"degrees must be comma-separated odd integers: {degrees}"
        ) from exc


@approx_app.command("coeffs")
def coeffs(
    alpha: int = typer.Option(..., "--alpha", "-a", help="Precision α (ReLU error <= 2^-α)."),
    degrees: str = typer.Option("", help="Comma-separated degrees (default: depth-optimal)."),
    as_json: bool = typer.Option(False, "--json", help="Print the components as JSON."),
) -> None:
    """Coefficients of p_1, …, p_k (ascending powers, applied first to last)."""
    from hecnn.approx.composite import composite_sign

    try:
        sign = composite_sign(alpha, _parse_degrees(degrees))
    except ValueError as exc:  # unknown α without degrees, even or unreachable degrees
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps([list(c) for c in sign.components]))
        return
    typer.echo(
        f"alpha={alpha} degrees={sign.degrees} depth={sign.depth} eps={sign.eps:.6g} "
        f"sign_error={sign.sign_error:.4g}"
    )
    for i, comp in enumerate(sign.components, 1):
        typer.echo(f"p_{i} (degree {len(comp) - 1}):")
        for k, c in enumerate(comp):
            if k % 2:
                typer.echo(f"  x^{k:<3d} {c:+.17e}")


@approx_app.command("table")
def table(
    alphas: str = typer.Option("4,5,6,7,8,9,10,11,12,13,14", help="Comma-separated α values."),
    grid: int = typer.Option(1001, help="Points per axis of the (a, b) grid for max."),
) -> None:
    """α, degrees, depth, ε and measured log2 sup-errors of ReLU on [−1,1] and max on [0,1]²."""
    from rich.console import Console
    from rich.table import Table

    from hecnn.approx.composite import composite_sign, max_error, relu_error

    t = Table(title="Composite minimax ReLU / max (errors: log2 of measured sup)")
    for col in ("α", "degrees", "depth", "ε", "ReLU err", "max err", "published ReLU"):
        t.add_column(col, justify="right")
    for a in (int(v) for v in alphas.split(",")):
        s = composite_sign(a)
        pub = PUBLISHED_RELU_LOG2.get(a)
        t.add_row(
            str(a),
            ",".join(map(str, s.degrees)),
            str(s.depth),
            f"{s.eps:.4g}",
            f"{math.log2(relu_error(s)):.3f}",
            f"{math.log2(max_error(s, grid)):.3f}",
            f"{pub:.2f}" if pub is not None else "-",
        )
    Console().print(t)


@approx_app.command("plot")
def plot(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = DEFAULT_PLOT_DIR,
    alphas: str = typer.Option("6,8,10,12,14", help="Comma-separated α values."),
) -> None:
    """PNGs: sign/ReLU approximations and their errors for several α."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hecnn.approx.composite import composite_sign

    out.mkdir(parents=True, exist_ok=True)
    x = np.linspace(-1, 1, 40001)
    signs = {int(a): composite_sign(int(a)) for a in alphas.split(",")}

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for a, s in signs.items():
        ax[0].plot(x, s.eval(x), lw=0.8, label=f"α={a} {s.degrees}")
        ax[1].plot(x, x * (1 + s.eval(x)) / 2, lw=0.8, label=f"α={a}")
    ax[0].set_title("composite sign approximation P(x)")
    ax[1].set_title("ReLU ≈ x(1+P(x))/2")
    for a_ in ax:
        a_.legend(fontsize=7)
        a_.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "approximations.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for a, s in signs.items():
        err = np.abs(x * (1 + s.eval(x)) / 2 - np.maximum(x, 0))
        ax.semilogy(x, np.maximum(err, 1e-12), lw=0.6, label=f"α={a}")
        ax.axhline(2.0**-a, ls="--", lw=0.6, color=ax.lines[-1].get_color())
    ax.set_ylim(1e-9, 1)
    ax.set_title(r"$|$ReLU approximation error$|$ on [−1,1] (dashed: $2^{-\alpha}$)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "relu_errors.png", dpi=120)
    plt.close(fig)

    from hecnn.approx.functions import max_approx

    a_max = max(signs)
    g = np.linspace(0, 1, 401)
    A, B = np.meshgrid(g, g, indexing="ij")
    err = np.abs(max_approx(A, B, signs[a_max], 1.0) - np.maximum(A, B))
    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(np.log2(np.maximum(err, 1e-30)), origin="lower", extent=(0, 1, 0, 1), vmin=-30)
    fig.colorbar(im, label="log2 |error|")
    ax.set_title(f"max(a, b) approximation error, α={a_max}")
    ax.set_xlabel("b")
    ax.set_ylabel("a")
    fig.tight_layout()
    fig.savefig(out / "max_error.png", dpi=120)
    plt.close(fig)
    typer.echo(f"wrote {', '.join(sorted(p.name for p in out.glob('*.png')))} to {out}")
