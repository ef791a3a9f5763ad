"""Model output shapes for every model × activation, fx traceability, documented widths."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from hecnn.nn.activations import PolyActivation, TrainablePoly
from hecnn.nn.models import ACTIVATIONS, MODELS, build_model, fx_trace

INPUT = {
    "ishiyama_mnist": (1, 28, 28),
    "cryptonets_mnist": (1, 28, 28),
    "lola_mnist": (1, 28, 28),
    "lenet5_mnist": (1, 28, 28),
    "ishiyama_cifar": (3, 32, 32),
    "hemet_squeezenet": (3, 32, 32),
    "resnet20": (3, 32, 32),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_output_shape_and_fx_trace(name, activation):
    torch.manual_seed(0)
    model = build_model(name, activation, num_classes=7).eval()
    x = torch.randn(2, *INPUT[name])
    y = model(x)
    assert y.shape == (2, 7)
    traced = torch.fx.symbolic_trace(model)
    # (x² stacked 19 times in resnet20 overflows on random inputs: compare inf/nan as equal)
    torch.testing.assert_close(traced(x), y, equal_nan=True)


def test_relu_twins_have_no_poly_and_poly_models_no_relu():
    for name in MODELS:
        relu = build_model(name, "relu")
        assert not any(isinstance(m, PolyActivation) for m in relu.modules())
        if name == "resnet20":
            continue
        sq = build_model(name, "square")
        assert not any(isinstance(m, torch.nn.ReLU | torch.nn.MaxPool2d) for m in sq.modules())


def test_only_allowed_module_types():
    allowed = (
        torch.nn.Conv2d,
        torch.nn.Linear,
        torch.nn.BatchNorm2d,
        torch.nn.BatchNorm1d,  # after a Linear (Orion's LoLa and LeNet-5); folds like BatchNorm2d
        torch.nn.AvgPool2d,
        torch.nn.AdaptiveAvgPool2d,
        torch.nn.Flatten,
        torch.nn.Identity,
        torch.nn.ReLU,
        PolyActivation,
    )
    for name in MODELS:
        for act in ("relu", "poly_element"):
            for m in build_model(name, act).modules():
                if not list(m.children()):
                    assert isinstance(m, allowed), (name, type(m))


def test_ishiyama_mnist_layout():
    m = build_model("ishiyama_mnist", "swish4")
    assert m.fc.in_features == 800
    assert [type(c).__name__ for c in m.children()][:3] == ["Conv2d", "BatchNorm2d", "SwishPoly4"]


def test_cryptonets_first_layer_is_5x13x13():
    m = build_model("cryptonets_mnist", "square")
    assert m.conv(torch.zeros(1, 1, 28, 28)).shape == (1, 5, 13, 13)
    assert m.fc1.in_features == 845 and m.fc1.out_features == 100


def test_ishiyama_cifar_global_pool():
    m = build_model("ishiyama_cifar", "swish4", global_pool=True)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert m.fc1.in_features == 128


def test_squeezenet_widths():
    m = build_model("hemet_squeezenet", "poly_element")
    x = torch.randn(1, 3, 32, 32)
    x = m.pool1(m.conv1(x))
    assert x.shape == (1, 64, 16, 16)
    x = m.fire1(x)
    assert x.shape == (1, 128, 16, 16)
    x = m.pool2(m.fire2(x))
    assert x.shape == (1, 128, 8, 8)
    assert m.fire1.expand3[1].coefficients().shape == (3, 64, 16, 16)
    assert m.conv2[1].coefficients().shape == (3, 128, 8, 8)


def test_resnet20_depth():
    m = build_model("resnet20")
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3)]
    linears = [c for c in m.modules() if isinstance(c, torch.nn.Linear)]
    assert len(convs) + len(linears) == 20


@pytest.mark.parametrize("granularity", ["layer", "channel", "element"])
def test_activation_parameter_counts(granularity):
    m = build_model("ishiyama_mnist", f"poly_{granularity}")
    n = sum(p.numel() for a in m.modules() if isinstance(a, TrainablePoly) for p in a.parameters())
    expected = {"layer": 3 * 2, "channel": 3 * (5 + 50), "element": 3 * (5 * 144 + 50 * 16)}
    assert n == expected[granularity]


def test_unknown_names():
    with pytest.raises(ValueError):
        build_model("vgg", "relu")
    with pytest.raises(ValueError):
        build_model("ishiyama_mnist", "gelu")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fx_trace_keeps_activations_as_leaves(name):
    model = build_model(name, "poly_channel" if name != "resnet20" else "swish4").eval()
    gm = fx_trace(model)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    acts = [n for n, m in model.named_modules() if isinstance(m, PolyActivation)]
    assert sorted(a for a in calls if a in acts) == sorted(acts)
    x = torch.randn(2, *INPUT[name])
    torch.testing.assert_close(gm(x), model(x))
