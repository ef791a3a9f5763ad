"""Bundled demo assets: models load, images are real MNIST, accuracy is what the sidecar says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hecnn.nn import bundled
from hecnn.nn.activations import SwishPoly4, TrainablePoly
from hecnn.nn.train import evaluate

SWISH = "ishiyama_mnist_swish4"
POLY = "ishiyama_mnist_poly_element_kd"


def test_bundled_names_and_metadata():
    assert {SWISH, POLY} <= set(bundled.names())
    for name in (SWISH, POLY):
        meta = bundled.metadata(name)
        assert meta["model"] == "ishiyama_mnist" and meta["command"].startswith("hecnn train")
    assert "--teacher" in bundled.metadata(POLY)["command"]
    with pytest.raises(KeyError):
        bundled.metadata("nope")


def test_sample_images():
    x, y = bundled.sample_images()
    assert x.dtype == np.uint8 and x.shape[1:] == (1, 28, 28) and len(x) == len(y)
    assert len(x) >= 1000 and set(np.unique(y)) == set(range(10))
    assert 20 < x.mean() < 60  # real digits: mostly black background (MNIST mean ≈ 33)


def test_bundled_models_are_poly_and_accurate():
    x, y = bundled.sample_images()
    swish = bundled.load_model(SWISH)
    assert not swish.training
    assert isinstance(swish.act1, SwishPoly4) and swish.act1.r == 4.0
    acc = evaluate(swish, x, y, "mnist")
    # measured 98.35 % on these 1,996 test images (see the sidecar); margin for BLAS differences
    assert acc >= 97.5
    assert acc == pytest.approx(bundled.metadata(SWISH)["test_accuracy"], abs=0.2)
    poly = bundled.load_model(POLY)
    assert isinstance(poly.act2, TrainablePoly) and poly.act2.granularity == "element"
    assert poly.act2.coefficients().shape == (3, 50, 4, 4)
    assert evaluate(poly, x, y, "mnist") >= bundled.metadata(POLY)["test_accuracy"] - 0.2


def test_recorded_ranges_cover_bundled_images():
    """The swish model's inputs stay inside the polynomial's design range [-4, 4] (mostly)."""
    model = bundled.load_model(SWISH)
    x, _ = bundled.sample_images()
    seen = []
    hook = model.act2.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(bundled.to_float(x[:500]))
    hook.remove()
    inside = (seen[0].abs() <= 4).float().mean().item()
    assert inside > 0.99
    assert model.act2.range_absq.item() > 0  # recorded during training


@pytest.mark.dataset
def test_cli_eval_bundled_on_real_mnist():
    from _nnhelpers import real_data_file
    from typer.testing import CliRunner

    from hecnn.cli.main import _register, app

    real_data_file("mnist_subset/mnist10k.npz")
    _register()
    res = CliRunner().invoke(app, ["eval", "--model", SWISH, "--dataset", "mnist"])
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("accuracy=") and float(last.split("=")[1]) >= 97.5
