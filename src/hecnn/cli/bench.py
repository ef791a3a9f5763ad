"""``hecnn bench …``: benchmark scripts exposed as commands (tables + one summary line)."""

from __future__ import annotations

import typer

from hecnn.cli.main import app

bench_app = typer.Typer(help="Benchmarks: print a table and a final summary line.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
