"""CNN architectures for encrypted inference, each with a ReLU twin.

Every model is built from the operations the encrypted compiler understands — Conv2d, Linear,
BatchNorm, AvgPool2d / AdaptiveAvgPool2d, Flatten, ``torch.cat``, residual add and the
polynomial activations of :mod:`hecnn.nn.activations` (plus ReLU / MaxPool2d in the plaintext
twins and ``resnet20``) — and ``forward`` has no data-dependent control flow, so
``torch.fx.symbolic_trace`` works on all of them.

``build_model(name, activation=..., num_classes=...)`` builds any of them; ``activation`` is one
of :data:`ACTIVATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
from torch import nn

from hecnn.nn.activations import PolyActivation, Square, SwishPoly4, TrainablePoly

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "CryptoNetsMNIST",
    "HemetSqueezeNet",
    "IshiyamaCIFAR",
    "IshiyamaMNIST",
    "LeNet5MNIST",
    "LolaMNIST",
    "ResNet20",
    "build_model",
    "fx_trace",
    "make_activation",
]

ACTIVATIONS = (
    "relu",
    "square",
    "swish4",
    "swish4_r6",
    "poly_layer",
    "poly_channel",
    "poly_element",
)


def make_activation(kind: str, shape: tuple[int, ...]) -> nn.Module:
    """One activation module of ``kind`` for a per-sample input shape ``(C, H, W)`` or ``(C,)``."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "square":
        return Square()
    if kind == "swish4":
        return SwishPoly4(4.0)
    if kind.startswith("swish4_r"):
        return SwishPoly4(float(kind.removeprefix("swish4_r")))
    if kind.startswith("poly_"):
        return TrainablePoly(2, kind.removeprefix("poly_"), shape)
    raise ValueError(f"unknown activation {kind!r}; choose one of {ACTIVATIONS}")


class IshiyamaMNIST(nn.Module):
    """Ishiyama et al. (2020) MNIST net: 2 strided convs with BN before each activation.

    Conv(1→5, 5×5, s2) → BN → act → Conv(5→50, 5×5, s2) → BN → act → Linear(800→10).
    Spatial sizes: 28 → 12 → 4, so the flattened feature has 50·4·4 = 800 entries.
    """

    def __init__(self, activation: str = "swish4", num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 5, 5, stride=2)
        self.bn1 = nn.BatchNorm2d(5)
        self.act1 = make_activation(activation, (5, 12, 12))
        self.conv2 = nn.Conv2d(5, 50, 5, stride=2)
        self.bn2 = nn.BatchNorm2d(50)
        self.act2 = make_activation(activation, (50, 4, 4))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(800, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(x))


class IshiyamaCIFAR(nn.Module):
    """Ishiyama et al. CIFAR-10 net: 3 × [Conv(k, 3×3, same) → BN → act → AvgPool(2)], k=32,64,128.

    Then Flatten → Linear(2048→256) → Linear(256→classes) (128·4·4 = 2048). With
    ``global_pool=True`` a global average pool replaces the flatten (Linear(128→256) follows).
    """

    def __init__(
        self, activation: str = "swish4", num_classes: int = 10, global_pool: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = 3, 32
        for k in (32, 64, 128):
            layers += [
                nn.Conv2d(cin, k, 3, padding=1),
                nn.BatchNorm2d(k),
                make_activation(activation, (k, size, size)),
                nn.AvgPool2d(2),
            ]
            cin, size = k, size // 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128 if global_pool else 128 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.fc2(self.fc1(x))


class CryptoNetsMNIST(nn.Module):
    """CryptoNets (Gilad-Bachrach et al., 2016) MNIST net.

    Conv(1→5, 5×5, stride 2, padding 1) → 5×13×13 as in the paper (which pads to 29×29; the
    extra bottom/right padding row here is never reached by a stride-2 window) → square →
    Linear(845→100) (the paper's sum-pool and following linear layer folded into one) → square →
    Linear(100→classes).
    """

    def __init__(self, activation: str = "square", num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 5, stride=2, padding=1)
        self.act1 = make_activation(activation, (5, 13, 13))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(845, 100)
        self.act2 = make_activation(activation, (100,))
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.act1(self.conv(x)))
        return self.fc2(self.act2(self.fc1(x)))


class LolaMNIST(nn.Module):
    """The LoLa-style MNIST net Orion ships (``orion.models.LoLA``), kept layer for layer so the
    same weights load into both: Conv(1→5, 2×2, stride 2) → BN → act → Linear(980→100) → BN →
    act → Linear(100→classes). Used to compare with Orion (``hecnn bench peers``).
    """

    def __init__(self, activation: str = "square", num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 5, 2, stride=2)
        self.bn1 = nn.BatchNorm2d(5)
        self.act1 = make_activation(activation, (5, 14, 14))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(980, 100)
        self.bn2 = nn.BatchNorm1d(100)
        self.act2 = make_activation(activation, (100,))
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.act1(self.bn1(self.conv1(x))))
        return self.fc2(self.act2(self.bn2(self.fc1(x))))


class LeNet5MNIST(nn.Module):
    """The LeNet-5 variant Orion ships (``orion.models.LeNet``), layer for layer: Conv(1→32,
    5×5, s2, p2) → BN → act → Conv(32→64, 5×5, s2, p2) → BN → act → Linear(3136→512) → BN → act
    → Linear(512→classes). Used to compare with Orion (``hecnn bench peers``).
    """

    def __init__(self, activation: str = "square", num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = make_activation(activation, (32, 14, 14))
        self.conv2 = nn.Conv2d(32, 64, 5, stride=2, padding=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = make_activation(activation, (64, 7, 7))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(7 * 7 * 64, 512)
        self.bn3 = nn.BatchNorm1d(512)
        self.act3 = make_activation(activation, (512,))
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.flatten(self.act2(self.bn2(self.conv2(x))))
        return self.fc2(self.act3(self.bn3(self.fc1(x))))


class _ConvActBN(nn.Sequential):
    """HEMET block order: conv → act → BN (BN folds into the next layer's affine map)."""

    def __init__(self, cin: int, cout: int, k: int, act: str, shape: tuple[int, int, int]) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2),
            make_activation(act, shape),
            nn.BatchNorm2d(cout),
        )


class Fire(nn.Module):
    """SqueezeNet Fire module: squeeze 1×1, then 1×1 and 3×3 expands concatenated on channels."""

    def __init__(self, cin: int, squeeze: int, expand: int, act: str, size: int) -> None:
        super().__init__()
        self.squeeze = _ConvActBN(cin, squeeze, 1, act, (squeeze, size, size))
        self.expand1 = _ConvActBN(squeeze, expand, 1, act, (expand, size, size))
        self.expand3 = _ConvActBN(squeeze, expand, 3, act, (expand, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


class HemetSqueezeNet(nn.Module):
    """HE-friendly SqueezeNet (after HEMET, Lou & Jiang 2021) for 32×32 inputs.

    Widths (C×H×W after each stage):
    conv 3→64 3×3 (64×32×32) → avgpool (64×16×16) → Fire(16, 64+64) (128×16×16) →
    Fire(16, 64+64) (128×16×16) → avgpool (128×8×8) → conv 128→128 3×3 → conv 128→128 1×1 →
    conv 128→classes 1×1 (classes×8×8) → global avgpool → classes. Every conv except the last is
    conv → act → BN.
    """

    def __init__(self, activation: str = "poly_channel", num_classes: int = 10) -> None:
        super().__init__()
        a = activation
        self.conv1 = _ConvActBN(3, 64, 3, a, (64, 32, 32))
        self.pool1 = nn.AvgPool2d(2)
        self.fire1 = Fire(64, 16, 64, a, 16)
        self.fire2 = Fire(128, 16, 64, a, 16)
        self.pool2 = nn.AvgPool2d(2)
        self.conv2 = _ConvActBN(128, 128, 3, a, (128, 8, 8))
        self.conv3 = _ConvActBN(128, 128, 1, a, (128, 8, 8))
        self.classifier = nn.Conv2d(128, num_classes, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.fire2(self.fire1(x)))
        x = self.classifier(self.conv3(self.conv2(x)))
        return self.flatten(self.gap(x))


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut is a 1×1 strided conv + BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, size: int) -> None:
        super().__init__()
        out = size // stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(act, (cout, out, out))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = make_activation(act, (cout, out, out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 3 stages × 3 basic blocks, widths 16/32/64."""

    def __init__(self, activation: str = "relu", num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act = make_activation(activation, (16, 32, 32))
        blocks: list[nn.Module] = []
        cin, size = 16, 32
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                s = stride if i == 0 else 1
                blocks.append(BasicBlock(cin, cout, s, activation, size))
                cin, size = cout, size // s
        self.layers = nn.Sequential(*blocks)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.act(self.bn(self.conv(x))))
        return self.fc(self.flatten(self.gap(x)))


#: name → (constructor, default dataset)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "ishiyama_mnist": (IshiyamaMNIST, "mnist"),
    "ishiyama_cifar": (IshiyamaCIFAR, "cifar10"),
    "cryptonets_mnist": (CryptoNetsMNIST, "mnist"),
    "lola_mnist": (LolaMNIST, "mnist"),
    "lenet5_mnist": (LeNet5MNIST, "mnist"),
    "hemet_squeezenet": (HemetSqueezeNet, "cifar10"),
    "resnet20": (ResNet20, "cifar10"),
}


def build_model(name: str, activation: str = "relu", num_classes: int = 10, **kwargs) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) with the given activation."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if activation not in ACTIVATIONS and not activation.startswith("swish4_r"):
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    return MODELS[name][0](activation=activation, num_classes=num_classes, **kwargs)


class _PolyLeafTracer(torch.fx.Tracer):
    """fx tracer that keeps each :class:`PolyActivation` as one ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, PolyActivation) or super().is_leaf_module(m, module_qualified_name)


def fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx`` graph of ``model`` with polynomial activations as leaf modules.

    Plain ``torch.fx.symbolic_trace`` also works but inlines the activations into mul/add nodes;
    with this tracer the compiler sees one node per activation and reads its coefficients.
    """
    graph = _PolyLeafTracer().trace(model)
    return torch.fx.GraphModule(model, graph, type(model).__name__)
