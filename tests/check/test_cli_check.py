"""``hecnn check`` end to end in a subprocess, for an ``.onnx`` file and a ``.py:Factory``."""

import subprocess
import sys
from pathlib import Path

import _models
import numpy as np
import pytest
import torch

from hecnn.check import load, load_images

HERE = Path(__file__).parent


def _hecnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from hecnn.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("imgs") / "images.npz"
    np.savez(path, x=(rng.random((16, 1, 8, 8)) * 255).astype(np.uint8), y=rng.integers(0, 3, 16))
    return path


def _check_output(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "HE plan" in out and "memory estimate" in out and "relinearizations" in out
    for mode in ("clear", "simulate", "encrypted"):
        assert mode in out
    assert "accuracy" in out and "ms/image" in out
    assert "NOT 128-bit secure" in proc.stderr
    last = out.strip().splitlines()[-1]
    assert last.startswith("agreement=") and " max_err=" in last
    agreement = float(last.split()[0].split("=")[1])
    max_err = float(last.split()[1].split("=")[1])
    assert agreement == 100.0 and max_err < 1e-2


def test_check_onnx_file(onnx_dir, npz):
    proc = _hecnn(
        "check", str(onnx_dir / "sigmoid_mlp.onnx"), "--images", str(npz), "--n", "8",
        "--insecure-ring-for-tests", "4096",
    )  # fmt: skip
    _check_output(proc)
    assert "Chebyshev least-squares deg 7" in proc.stdout  # the report names the approximation


def test_check_py_factory_with_weights(tmp_path, npz):
    weights = tmp_path / "w.pt"
    model = _models.square_bn_cnn()
    torch.save(model.state_dict(), weights)
    proc = _hecnn(
        "check", f"{HERE / '_models.py'}:SquareBnCnn", "--weights", str(weights),
        "--images", str(npz), "--n", "8", "--insecure-ring-for-tests", "4096",
    )  # fmt: skip
    _check_output(proc)
    assert "approximations: none" in proc.stdout


def test_unsupported_model_is_a_clean_error(tmp_path, npz):
    src = tmp_path / "bad.py"
    src.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.tanh(x.flatten(1))\n"
    )
    proc = _hecnn("check", f"{src}:M", "--images", str(npz), "--insecure-ring-for-tests", "4096")
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "tanh" in proc.stderr and "Traceback" not in proc.stderr


def test_load_factory_and_weights(tmp_path):
    weights = tmp_path / "w.pt"
    ref = _models.relu_lenet()
    torch.save(ref.state_dict(), weights)
    model = load(f"{HERE / '_models.py'}:ReluLeNet", weights)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_load_images_npz_uint8_and_folder(tmp_path, npz):
    x, y = load_images(npz)
    assert x.dtype == np.float32 and x.shape == (16, 1, 8, 8) and x.max() <= 1.0
    assert y is not None and y.shape == (16,)
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 255 if label == "dog" else 0, np.uint8)).save(
            tmp_path / "folder" / label / "a.png"
        )
    x, y = load_images(tmp_path / "folder")
    assert x.shape == (2, 1, 8, 8) and list(y) == [0, 1] and x[1].max() == 1.0


def test_images_of_the_wrong_shape_are_a_clear_error(onnx_dir, tmp_path):
    bad = tmp_path / "rgb.npz"
    np.savez(bad, x=np.zeros((4, 3, 8, 8), np.uint8))
    proc = _hecnn("check", str(onnx_dir / "square_bn_cnn.onnx"), "--images", str(bad))
    assert proc.returncode == 2 and "(3, 8, 8)" in proc.stderr and "Traceback" not in proc.stderr
