"""Script form of ``hecnn bench peers``.

``python benchmarks/peers.py [--quick]`` runs the benchmark; ``python benchmarks/peers.py plot
OUT.png RUN.json …`` plots amortized ms/image against the batch size from runs saved with
``hecnn bench peers --json RUN.json``.
"""

import sys
from pathlib import Path

from hecnn.benchmarks.peers import run_peers

if __name__ == "__main__":
    if sys.argv[1:2] == ["plot"]:
        from hecnn.benchmarks.peers.plot import plot_amortized

        pts = plot_amortized([Path(a) for a in sys.argv[3:]], Path(sys.argv[2]))
        for (net, system), xy in sorted(pts.items()):
            print(net, system, " ".join(f"{b}:{ms:.3f}" for b, ms in xy))
    else:
        run_peers(quick="--quick" in sys.argv)
