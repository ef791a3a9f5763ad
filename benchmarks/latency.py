"""Script form of ``hecnn bench latency`` (``python benchmarks/latency.py [MODEL ...]``): the
single-image latency of each model with per-image packing; each run ends with its
``latency_s=<seconds>`` line, a model that cannot run says why."""

import sys

from hecnn.benchmarks.latency import main
from hecnn.errors import HecnnError

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name in names or ["ishiyama_mnist", "cryptonets_mnist", "hemet_squeezenet"]:
        try:
            main(name, quiet="--quiet" in sys.argv)
        except HecnnError as exc:
            print(f"{name}: not run: {exc}")
