"""The file-based client/server steps: the server step refuses secret keys; end to end (slow)."""

import subprocess
import sys

import numpy as np
import pytest

from hecnn.nn import bundled


def _hecnn(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-c", "from hecnn.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    return proc


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    _hecnn("keygen", "--out", str(d), "--batch", "16")
    return d


def test_keygen_writes_server_and_client_files(keydir):
    names = {p.name for p in keydir.iterdir()}
    assert {"spec.json", "params.hecnn", "public.hecnn", "eval.hecnn", "secret.hecnn"} <= names
    assert (keydir / "secret.hecnn").stat().st_mode & 0o077 == 0


def test_server_step_refuses_a_secret_key(keydir, tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    for name in ("spec.json", "params.hecnn"):
        (server / name).write_bytes((keydir / name).read_bytes())
    # a secret key disguised as the evaluation keys
    (server / "eval.hecnn").write_bytes((keydir / "secret.hecnn").read_bytes())
    proc = _hecnn("infer", "--keys", str(server), "--in", "x", "--out", "y", check=False)
    assert proc.returncode == 2
    assert "secret_key" in proc.stderr or "secret key" in proc.stderr


@pytest.mark.slow
def test_client_server_round_trip(keydir, tmp_path):
    x, y = bundled.sample_images()
    pick = np.arange(0, len(x), len(x) // 16)[:16]
    np.savez(tmp_path / "imgs.npz", x=x[pick], y=y[pick])
    server = tmp_path / "server"
    server.mkdir()
    for name in ("spec.json", "params.hecnn", "eval.hecnn"):
        (server / name).write_bytes((keydir / name).read_bytes())
    _hecnn(
        "encrypt",
        "--keys",
        str(keydir),
        "--images",
        str(tmp_path / "imgs.npz"),
        "--out",
        str(tmp_path / "ct.bin"),
    )
    _hecnn(
        "infer",
        "--keys",
        str(server),
        "--in",
        str(tmp_path / "ct.bin"),
        "--out",
        str(tmp_path / "out.bin"),
    )
    _hecnn(
        "decrypt",
        "--keys",
        str(keydir),
        "--in",
        str(tmp_path / "out.bin"),
        "--count",
        "16",
        "--out",
        str(tmp_path / "res.npz"),
    )
    import torch

    got = np.load(tmp_path / "res.npz")["labels"]
    model = bundled.load_model("ishiyama_mnist_poly_element_kd")
    with torch.no_grad():
        ref = model(torch.as_tensor(np.asarray(bundled.to_float(x[pick])))).argmax(1).numpy()
    assert (got == ref).all()
