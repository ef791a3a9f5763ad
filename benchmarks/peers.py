"""Script form of ``hecnn bench peers``.

``python benchmarks/peers.py [--quick]`` runs the benchmark; ``python benchmarks/peers.py report
OUT.png RUN.json …`` prints the rows of runs saved with ``hecnn bench peers --json RUN.json`` as a
markdown table and plots amortized ms/image against the batch size into OUT.png.
"""

import sys
from pathlib import Path

from hecnn.benchmarks.peers import run_peers

if __name__ == "__main__":
    if sys.argv[1:2] == ["report"]:
        from hecnn.benchmarks.peers.report import markdown_table, plot_amortized

        runs = [Path(a) for a in sys.argv[3:]]
        print(markdown_table(runs))
        pts = plot_amortized(runs, Path(sys.argv[2]))
        for (net, system), xy in sorted(pts.items()):
            print(net, system, " ".join(f"{b}:{ms:.3f}" for b, ms in xy))
    else:
        run_peers(quick="--quick" in sys.argv)
