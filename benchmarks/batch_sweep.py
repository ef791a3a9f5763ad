"""Script form of ``hecnn bench batch`` (``python benchmarks/batch_sweep.py [PNG]``)."""

import sys
from pathlib import Path

from hecnn.benchmarks.batch_sweep import sweep

if __name__ == "__main__":
    sweep(plot=Path(sys.argv[1]) if len(sys.argv) > 1 else None)
