"""``hecnn bench gpu --quick`` runs end to end on the CPU device and finds no mismatch."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_gpu_bench_quick_on_cpu(tmp_path):
    from hecnn.benchmarks.gpu import main

    out = tmp_path / "gpu.md"
    failures = main(device="cpu", quick=True, out=out, cpu_threads=1)
    text = out.read_text()
    assert failures == 0, text
    assert "**NO**" not in text and "| ishiyama_mnist_poly_element_kd |" in text
