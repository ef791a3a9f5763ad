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
