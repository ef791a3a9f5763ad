"""Script form of ``hecnn bench ckks`` (``python benchmarks/ckks_core.py [--quick]``)."""

import sys

from hecnn.benchmarks.ckks_core import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
