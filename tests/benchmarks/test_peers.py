"""hecnn bench peers: skip logic, the npz/JSON exchange, and (slow) the OpenFHE runner itself."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hecnn.benchmarks.peers import bench, envs, exchange
from hecnn.benchmarks.peers import openfhe_runner as ofr
from hecnn.benchmarks.peers.bench import PeerRow, summary_line
from hecnn.errors import HecnnError
from hecnn.nn.activations import Square, TrainablePoly


class _Chain(nn.Module):
    """Conv → BN → element-wise poly → Linear → square → Linear: what the peers take."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, stride=2)
        self.bn = nn.BatchNorm2d(2)
        self.act1 = TrainablePoly(2, "element", (2, 3, 3))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(18, 6)
        self.act2 = Square()
        self.fc2 = nn.Linear(6, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.act1.a.uniform_(0.1, 0.5)  # a non-zero x² coefficient for every feature
            self.act1.b.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.flatten(self.act1(self.bn(self.conv(x))))
        return self.fc2(self.act2(self.fc1(x)))


def test_exported_chain_folded_as_openfhe_runs_it_is_the_model():
    """The arrays sent to OpenFHE, rewritten as its runner rewrites them (a·(x+s)² + c, a and c
    folded into the next layer), compute the plaintext model's logits."""
    model = _Chain().eval()
    x = torch.rand(16, 1, 7, 7)
    arrays = exchange.network_layers(model, (1, 7, 7))
    assert list(arrays["kinds"]) == ["affine", "poly", "affine", "poly", "affine"]
    layers = ofr._fold([str(k) for k in arrays["kinds"]], arrays)
    assert [layer[0] for layer in layers] == ["affine", "square", "affine", "square", "affine"]
    assert ofr._depth(layers) == 5
    got = ofr.evaluate_clear(layers, x.reshape(16, -1).double().numpy())
    want = model(x).double().detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_model_that_is_not_a_chain_is_a_clear_error():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x

    with pytest.raises(HecnnError, match="chain"):
        exchange.network_layers(Residual(), (4,))


def test_orion_state_leaves_out_hecnn_range_buffers():
    from hecnn.nn.models import LolaMNIST

    state = exchange.orion_state(LolaMNIST())
    assert "sd.fc1.weight" in state and "sd.bn2.running_var" in state
    assert not any(".range_" in k for k in state)


def test_runner_output_round_trip_and_malformed_files(tmp_path):
    out, res = tmp_path / "out.npz", tmp_path / "result.json"
    np.savez(out, logits=np.arange(6.0).reshape(2, 3))
    res.write_text(json.dumps({"stages": {"inference": 1.5}, "peak_rss": 1024}))
    got = exchange.read_output(out, res)
    assert got.logits.shape == (2, 3) and got.result["stages"]["inference"] == 1.5
    np.savez(out, logits=np.arange(3.0))
    with pytest.raises(exchange.PeerRunError, match="shape"):
        exchange.read_output(out, res)
    res.write_text("{not json")
    with pytest.raises(exchange.PeerRunError, match="unreadable"):
        exchange.read_output(out, res)


def test_a_runner_that_fails_is_a_clear_error(tmp_path):
    """The OpenFHE runner started where openfhe is absent (this interpreter): the error names
    the runner and carries its last stderr lines."""
    pytest.importorskip("numpy")
    try:
        import openfhe  # noqa: F401

        pytest.skip("openfhe importable here")
    except ImportError:
        pass
    arrays = exchange.network_layers(_Chain().eval(), (1, 7, 7))
    arrays.update(
        images=np.zeros((2, 49)),
        ring_dim=1024,
        scale_bits=40,
        first_mod_bits=60,
        security="insecure_test_only",
    )
    with pytest.raises(exchange.PeerRunError, match=r"openfhe_runner\.py exited with 1.*openfhe"):
        exchange.run_runner(sys.executable, "openfhe_runner.py", arrays, tmp_path)
    assert (tmp_path / "net.npz").exists() and (tmp_path / "runner.log").exists()


def test_wrong_interpreter_is_a_skip_reason_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HECNN_PEERS_DIR", str(tmp_path))
    monkeypatch.setenv("HECNN_PYTHON310", sys.executable)  # 3.11: not what the wheel needs
    python, why = envs.find_interpreter(envs.OPENFHE)
    assert python is None and "HECNN_PYTHON310" in why and "not 3.10" in why
    python, why = envs.ensure_env(envs.OPENFHE, install=True, log=lambda s: None)
    assert python is None and "HECNN_PYTHON310" in why
    python, why = envs.ensure_env(envs.OPENFHE, install=False, log=lambda s: None)
    assert python is None and "not installed" in why


def test_missing_peers_are_skipped_rows_and_the_summary_says_n_a(monkeypatch, tmp_path):
    """With no peer environment and installs off, run_peers still finishes: one 'skipped' row
    per peer and network, with the reason; hecnn's own rows are not needed for the skip logic
    and are left out here (they are measured by tests/benchmarks/test_models_bench.py)."""
    monkeypatch.setenv("HECNN_PEERS_DIR", str(tmp_path))
    monkeypatch.setattr(bench, "hecnn_batch_rows", lambda *a, **k: [])
    lines: list[str] = []

    class _Console:
        def print(self, s):
            lines.append(str(s))

    rows = bench.run_peers(
        peers=("openfhe", "orion"), install=False, image_nets=("lola_mnist",), console=_Console()
    )
    skipped = {(r.network, r.system) for r in rows if r.status == "skipped"}
    assert ("cryptonets_mnist", "OpenFHE") in skipped
    assert ("ishiyama_mnist", "OpenFHE") in skipped
    assert ("lola_mnist", "Orion") in skipped
    assert any(line.startswith("OpenFHE skipped:") for line in lines)
    assert any(line.startswith("Orion skipped:") for line in lines)
    assert summary_line(rows) == "vs_openfhe=n/a vs_orion=n/a"


def test_ratios_and_summary_are_the_smallest_speed_up():
    rows = [
        PeerRow("a", "hecnn", "batch", ms=2.0),
        PeerRow("a", "OpenFHE 1.6", "batch", ms=10.0),
        PeerRow("b", "hecnn", "batch", ms=1.0),
        PeerRow("b", "OpenFHE 1.6", "batch", ms=8.0),
        PeerRow("c", "hecnn", "image", status="skipped"),
        PeerRow("c", "Orion", "image", ms=300.0),
    ]
    bench._ratios(rows)
    assert rows[1].ratio == pytest.approx(5.0) and rows[3].ratio == pytest.approx(8.0)
    assert rows[5].ratio is None  # no hecnn per-image latency: no ratio
    assert summary_line(rows) == "vs_openfhe=5.00 vs_orion=n/a"


@pytest.mark.slow
def test_openfhe_runner_on_a_tiny_batch_agrees_with_the_plaintext_model(tmp_path):
    """The real OpenFHE runner (in its own environment, when set up) on a small insecure ring:
    labels and logits match the plaintext model."""
    python, why = envs.ensure_env(envs.OPENFHE, install=False, log=lambda s: None)
    if python is None:
        pytest.skip(why)
    model = _Chain().eval()
    x = torch.rand(32, 1, 7, 7)
    arrays = exchange.network_layers(model, (1, 7, 7))
    arrays.update(
        images=x.reshape(32, -1).double().numpy(),
        ring_dim=1024,  # insecure: tests only (security="insecure_test_only")
        scale_bits=45,
        first_mod_bits=60,
        security="insecure_test_only",
    )
    out = exchange.run_runner(python, "openfhe_runner.py", arrays, tmp_path, threads=2)
    want = model(x).double().detach().numpy()
    assert out.result["depth"] == 5 and out.result["batch"] == 32
    assert np.array_equal(out.logits.argmax(1), want.argmax(1))
    assert np.abs(out.logits - want).max() < 1e-3


def test_no_per_image_packing_is_a_skipped_hecnn_latency_row(monkeypatch):
    monkeypatch.setitem(sys.modules, "hecnn.benchmarks.latency", None)  # import fails
    row = bench.hecnn_latency_row("lola_mnist", 2, log=lambda s: None)
    assert row.status == "skipped" and row.note == "hecnn per-image packing not available"
    assert row.ms is None
