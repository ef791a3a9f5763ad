"""Where each peer library runs: its own virtual environment, made once and cached.

Neither peer installs next to hecnn. The ``openfhe`` wheel on PyPI holds a CPython 3.10 binary
(it imports under Python 3.10 only), and ``orion-fhe`` pins ``scipy ≤ 1.14.1`` and pulls
``torchvision``, which clashes with hecnn's pinned torch. So each gets a venv under
``HECNN_PEERS_DIR`` (default ``~/.cache/hecnn/peers``), created with the right interpreter on
first use, and its runner script is started there as a subprocess. A peer that cannot be set up
is *skipped* with a line saying why and how to provide it — never an error.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PeerSpec:
    """How to build one peer's environment."""

    name: str
    #: Python versions the peer's wheel imports under, e.g. ("3.10",)
    pythons: tuple[str, ...]
    #: pip install steps, run in order (each a list of requirement arguments)
    installs: tuple[tuple[str, ...], ...]
    #: a module the runner imports: the environment is ready when it imports
    probe: str
    #: environment variable naming an interpreter to use
    python_env: str


OPENFHE = PeerSpec(
    name="openfhe",
    pythons=("3.10",),
    installs=(("numpy", "openfhe==1.6.1.0.22.4"),),
    probe="openfhe",
    python_env="HECNN_PYTHON310",
)
#: orion-fhe without its declared torchvision (used only by its dataset helpers, which the
#: runner does not import); everything else it imports is installed explicitly
ORION = PeerSpec(
    name="orion",
    pythons=("3.11", "3.12", "3.10"),
    installs=(
        ("torch", "numpy", "scipy>=1.7,<=1.14.1", "PyYAML", "h5py", "matplotlib", "tqdm"),
        ("networkx", "certifi"),
        ("--no-deps", "orion-fhe==1.0.2"),
    ),
    probe="orion",
    python_env="HECNN_PYTHON_ORION",
)
PEERS = {p.name: p for p in (OPENFHE, ORION)}


def peers_dir() -> Path:
    """Root of the cached peer environments (``HECNN_PEERS_DIR`` overrides)."""
    env = os.environ.get("HECNN_PEERS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hecnn" / "peers"


def _version(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_interpreter(spec: PeerSpec) -> tuple[str | None, str]:
    """(a Python the peer's wheel supports, or None; how it was found or why not)."""
    explicit = os.environ.get(spec.python_env)
    if explicit:
        v = _version(explicit)
        if v in spec.pythons:
            return explicit, f"{spec.python_env}={explicit}"
        return (
            None,
            f"{spec.python_env}={explicit} is Python {v or '?'}, not {'/'.join(spec.pythons)}",
        )
    candidates: list[str] = []
    base = getattr(sys, "_base_executable", sys.executable)
    candidates.append(base)
    for v in spec.pythons:
        found = shutil.which(f"python{v}")
        if found:
            candidates.append(found)
        candidates += sorted(glob.glob(str(Path.home() / f".pyenv/versions/{v}*/bin/python")))
    for c in candidates:
        if _version(c) in spec.pythons:
            return c, c
    return None, (
        f"no Python {' or '.join(spec.pythons)} found (its wheel imports only there); "
        f"install one and set {spec.python_env}=/path/to/python{spec.pythons[0]}"
    )


def env_python(spec: PeerSpec) -> Path:
    return peers_dir() / spec.name / "bin" / "python"


def _ready(python: Path, probe: str) -> bool:
    if not python.exists():
        return False
    r = subprocess.run([str(python), "-c", f"import {probe}"], capture_output=True, timeout=120)
    return r.returncode == 0


def ensure_env(spec: PeerSpec, *, install: bool = True, log=print) -> tuple[Path | None, str]:
    """The peer's venv interpreter, creating the venv on first use (minutes: pip downloads the
    wheels). Returns (None, why) when the peer cannot run here."""
    python = env_python(spec)
    if _ready(python, spec.probe):
        return python, f"{python}"
    if not install:
        return (
            None,
            f"{spec.name} not installed in {python.parent.parent} (run without --no-install)",
        )
    base, how = find_interpreter(spec)
    if base is None:
        return None, how
    log(f"{spec.name}: creating {python.parent.parent} with {how} (once; pip install …)")
    steps = [[base, "-m", "venv", str(python.parent.parent)]]
    steps += [[str(python), "-m", "pip", "install", "-q", *req] for req in spec.installs]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return None, f"setting up {spec.name} failed: {' '.join(cmd[-2:])}: {' | '.join(tail)}"
    if not _ready(python, spec.probe):
        return (
            None,
            f"{spec.name} installed in {python.parent.parent} but `import {spec.probe}` fails",
        )
    return python, f"{python}"
