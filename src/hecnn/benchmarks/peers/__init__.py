"""hecnn against the libraries a user would otherwise pick (OpenFHE, Orion, SEAL).

Each peer runs in its own environment through a small runner script written against the peer's
own API (:mod:`.openfhe_runner`, :mod:`.orion_runner`; they never import hecnn);
:mod:`.envs` sets those environments up, :mod:`.exchange` moves networks, images and results
between them, :mod:`.bench` measures and prints the table.
"""

from hecnn.benchmarks.peers.bench import PeerRow, run_peers, summary_line

__all__ = ["PeerRow", "run_peers", "summary_line"]
