"""What hecnn hands a peer runner and what comes back: ``.npz`` files in, ``.npz`` + JSON out.

The runners never import hecnn (they run in the peers' own environments), so the network goes
over as plain arrays: for the batch-packed peers the layers of the *plaintext* network after
hecnn's exact rewrites (batch-norm, convolution, pooling and flatten are one dense affine map
per layer, activations their polynomial coefficients — no HE-specific change); for Orion the
torch ``state_dict`` of its own architecture.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from hecnn.errors import HecnnError

RUNNERS = Path(__file__).resolve().parent


class PeerRunError(HecnnError):
    """A peer runner exited with an error or wrote no result."""


def network_layers(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``kinds`` and ``W<i>``/``b<i>``/``C<i>`` arrays of a chain of affine and polynomial layers
    (see :mod:`hecnn.benchmarks.peers.openfhe_runner`). Residual adds, concatenations and
    products of two activations are not a chain: a clear error."""
    from hecnn.compile.ir import AffineNode, InputNode, PolyNode
    from hecnn.compile.passes import merge_affine
    from hecnn.compile.trace import trace

    nodes, output = trace(model.eval(), input_shape)
    nodes = merge_affine(nodes, output)
    arrays: dict[str, np.ndarray] = {}
    kinds: list[str] = []
    prev = None
    for n in nodes:
        if isinstance(n, InputNode):
            prev = n.name
            continue
        if n.inputs != (prev,):
            raise HecnnError(f"{n.name}: not a plain chain of layers; peers take chains only")
        i = len(kinds)
        if isinstance(n, AffineNode):
            kinds.append("affine")
            arrays[f"W{i}"] = np.asarray(n.matrix.toarray(), dtype=np.float64)
            bias = np.zeros(n.features) if n.bias is None else np.asarray(n.bias, np.float64)
            arrays[f"b{i}"] = bias
        elif isinstance(n, PolyNode):
            kinds.append("poly")
            arrays[f"C{i}"] = np.asarray(n.coeffs, dtype=np.float64)
        else:
            raise HecnnError(f"{n.name}: {type(n).__name__} has no peer equivalent here")
        prev = n.name
    if prev != output:
        raise HecnnError("the chain does not end at the model output")
    arrays["kinds"] = np.array(kinds)
    return arrays


def orion_state(model: nn.Module) -> dict[str, np.ndarray]:
    """``sd.<name>`` arrays of the model's weights and batch-norm statistics (hecnn's own
    activation range buffers left out: Orion's modules have none)."""
    return {
        f"sd.{k}": v.detach().cpu().numpy()
        for k, v in model.state_dict().items()
        if ".range_" not in k
    }


@dataclass
class RunnerOutput:
    logits: np.ndarray
    result: dict
    wall_s: float


def run_runner(
    python: str | os.PathLike,
    runner: str,
    arrays: dict[str, np.ndarray],
    workdir: Path,
    *,
    threads: int | None = None,
    timeout: float | None = None,
) -> RunnerOutput:
    """Write ``arrays`` to ``workdir/net.npz``, run ``runner`` (a file beside this module) with
    ``python``, read back ``logits`` and the JSON result."""
    workdir.mkdir(parents=True, exist_ok=True)
    net, out, res = workdir / "net.npz", workdir / "out.npz", workdir / "result.json"
    for p in (out, res):
        p.unlink(missing_ok=True)
    np.savez(net, **arrays)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the runner sees its own environment only
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(python), str(RUNNERS / runner), str(net), str(out), str(res)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerRunError(f"{runner} ran past {timeout:.0f} s") from exc
    wall = time.perf_counter() - t0
    (workdir / "runner.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not res.exists():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise PeerRunError(f"{runner} exited with {proc.returncode}: {tail}")
    return read_output(out, res, wall)


def read_output(out: Path, res: Path, wall_s: float = 0.0) -> RunnerOutput:
    """Logits and result of a finished runner (a missing or malformed file is a clear error)."""
    try:
        logits = np.load(out)["logits"]
        result = json.loads(res.read_text())
    except (OSError, KeyError, ValueError) as exc:
        raise PeerRunError(f"unreadable runner output {out} / {res}: {exc}") from exc
    if logits.ndim != 2:
        raise PeerRunError(f"runner logits have shape {logits.shape}, expected (images, classes)")
    return RunnerOutput(logits, result, wall_s)
