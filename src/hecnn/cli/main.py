"""Root of the ``hecnn`` command: registers the command groups of the sibling modules."""

from __future__ import annotations

import sys

import typer

from hecnn.errors import HecnnError

app = typer.Typer(
    name="hecnn",
    help="Privacy-preserving CNN inference over CKKS homomorphic encryption.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Import command modules; each adds its commands to ``app``."""
    from hecnn.cli import bench, check, demo, pipeline, service  # noqa: F401

    for optional in ("hecnn.cli.nn", "hecnn.cli.approx"):
        try:
            __import__(optional)
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != optional:
                raise


def main() -> None:
    """Console entry point: run the app, turning :class:`HecnnError` into a clean exit 2."""
    _register()
    try:
        app()
    except HecnnError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
