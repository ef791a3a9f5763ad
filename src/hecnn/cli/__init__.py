"""The ``hecnn`` command. Each command group lives in its own module of this package."""

from hecnn.cli.main import app, main

__all__ = ["app", "main"]
