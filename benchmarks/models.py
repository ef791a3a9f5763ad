"""Script form of ``hecnn bench models`` (``python benchmarks/models.py [--quick] [ROW ...]``)."""

import sys

from hecnn.benchmarks.models import run_models

if __name__ == "__main__":
    rows = tuple(a for a in sys.argv[1:] if not a.startswith("--"))
    run_models(rows or None, quick="--quick" in sys.argv)
