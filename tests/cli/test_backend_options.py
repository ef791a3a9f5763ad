"""``--backend`` / ``--device`` on the command line: bad choices are clean errors (exit 2)."""

import subprocess
import sys

import pytest
import torch


def _demo(*args):
    return subprocess.run(
        [sys.executable, "-c", "from hecnn.cli import main; main()", "demo", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_unknown_backend_is_a_clean_error():
    proc = _demo("--backend", "jax")
    assert proc.returncode == 2, proc.stderr
    assert "unknown array backend" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no GPU is present")
def test_cuda_without_gpu_is_a_clean_error():
    proc = _demo("--backend", "torch", "--device", "cuda")
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
