"""``hecnn bench latency``: the measured run is checked against the plaintext model, and the
command's last line is ``latency_s=<seconds>``."""

import pytest

from hecnn.benchmarks import latency


def test_latency_bench_runs_checks_and_ends_with_its_line(monkeypatch, capsys):
    real = latency.bench_latency
    monkeypatch.setattr(
        latency,
        "bench_latency",
        lambda name, **kw: real(name, **kw, insecure_ring_for_tests=1 << 12),
    )
    res = latency.main("ishiyama_mnist", images=2, quiet=True)
    assert res.agreement == 100.0 and res.max_error < 5e-2
    assert res.galois_keys > 0 and res.rotations > 0
    assert len(res.runs_s) == 2 and res.first_s > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("latency_s=") and float(last.split("=")[1]) == pytest.approx(
        res.latency_s, abs=1e-3
    )


def test_latency_bench_refuses_keys_memory_cannot_hold(monkeypatch):
    from hecnn.errors import HecnnError

    monkeypatch.setattr(latency, "_available_memory", lambda: 1 << 20)
    with pytest.raises(HecnnError, match="Galois keys need"):
        latency.bench_latency("cryptonets_mnist", images=1, insecure_ring_for_tests=1 << 12)


def test_latency_bench_encodes_per_image_the_diagonals_memory_cannot_hold(monkeypatch):
    """With the keys fitting but no room for the encoded diagonals, every affine node's
    diagonals are encoded per image; the result is still checked against the model."""
    monkeypatch.setattr(latency, "_available_memory", lambda: 1 << 20)
    monkeypatch.setattr(latency, "galois_key_bytes", lambda plan: 0)
    res = latency.bench_latency("cryptonets_mnist", images=1, insecure_ring_for_tests=1 << 12)
    assert res.streamed and res.diagonal_bytes > 1 << 20
    assert res.agreement == 100.0 and res.max_error < 5e-2


def test_latency_bench_times_an_untrained_granularity():
    """``activation=`` times the architecture with another activation granularity, untrained
    (seeded): the run is still checked against that model; an unknown activation is a clear
    error."""
    from hecnn.errors import HecnnError

    res = latency.bench_latency(
        "ishiyama_mnist", images=1, activation="poly_layer", insecure_ring_for_tests=1 << 12
    )
    assert res.weights == "untrained poly_layer"
    assert res.agreement == 100.0 and res.max_error < 5e-2
    with pytest.raises(HecnnError, match="unknown activation"):
        latency.bench_latency("ishiyama_mnist", images=1, activation="poly_cubic")
