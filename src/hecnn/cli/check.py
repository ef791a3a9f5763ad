"""``hecnn check MODEL --images FILE``: will a user's own model run under encryption, how
accurately and how fast? The logic lives in :mod:`hecnn.check`; this is its command line."""

from __future__ import annotations

import typer

from hecnn.cli.main import app


@app.command("check")
def check_cmd(
    model: str = typer.Argument(..., help="An .onnx file or path/to/file.py:Factory."),
    images: str = typer.Option(
        ..., "--images", help=".npz with x (N×C×H×W, float or uint8) and optionally y, or a folder"
    ),
    weights: str = typer.Option(None, "--weights", help="state_dict (.pt) for a .py:Factory."),
    n: int = typer.Option(64, "--n", help="Images to run in the three modes."),
    alpha: int = typer.Option(8, "--alpha", help="Precision α of the composite ReLU/max (4…14)."),
    degree: int = typer.Option(7, "--degree", help="Degree of the SiLU/GELU/Sigmoid fits."),
    calib: int = typer.Option(256, "--calib", help="Calibration images (the first of FILE)."),
    insecure_ring_for_tests: int = typer.Option(
        None,
        "--insecure-ring-for-tests",
        help="TEST ONLY: force ring degree N below 128-bit security (e.g. 4096).",
    ),
) -> None:
    """Compile, print the plan and approximations, run clear / simulate / encrypted, compare."""
    from hecnn.check import check, load, load_images

    if insecure_ring_for_tests:
        typer.secho(
            f"WARNING: --insecure-ring-for-tests {insecure_ring_for_tests}: these parameters are "
            "NOT 128-bit secure. For tests only — never for real data.",
            fg=typer.colors.RED,
            bold=True,
            err=True,
        )
    net = load(model, weights)
    x, y = load_images(images)
    result = check(
        net,
        x,
        y,
        n=n,
        alpha=alpha,
        degree=degree,
        calib=calib,
        insecure_ring_for_tests=insecure_ring_for_tests or None,
        log=print,
    )
    print(result.table())
    print(result.last_line())
