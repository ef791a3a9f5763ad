"""Script form of ``hecnn bench peers`` (``python benchmarks/peers.py [--quick]``)."""

import sys

from hecnn.benchmarks.peers import run_peers

if __name__ == "__main__":
    run_peers(quick="--quick" in sys.argv)
