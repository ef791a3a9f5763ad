"""Models written for the ``hecnn check`` tests only (not shipped): what a user brings — plain
PyTorch with no hecnn layer in it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention


class ReluLeNet(nn.Module):
    """LeNet-style: conv → ReLU → max-pool → linear → F.relu → linear (8×8 grey inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(18, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flat(self.pool(self.relu(self.conv(x))))
        return self.fc2(F.relu(self.fc1(x)))


class SquareBnCnn(nn.Module):
    """conv → BN → ``x * x`` → avg-pool → linear → ``0.5 * y ** 2 + y`` → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(27, 5)
        self.fc2 = nn.Linear(5, 3)
        with torch.no_grad():  # non-trivial running statistics, as after training
            self.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.05]))
            self.bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
            self.bn.weight.copy_(torch.tensor([1.2, 0.7, 1.0]))
            self.bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        h = self.flat(self.pool(h * h))
        y = self.fc1(h)
        return self.fc2(0.5 * y**2 + y)


class SigmoidMlp(nn.Module):
    """flatten → linear → Sigmoid → linear → SiLU → linear (8×8 grey inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 12),
            nn.Sigmoid(),
            nn.Linear(12, 8),
            nn.SiLU(),
            nn.Linear(8, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def relu_lenet() -> nn.Module:
    torch.manual_seed(1)
    return ReluLeNet().eval()


def square_bn_cnn() -> nn.Module:
    torch.manual_seed(2)
    return SquareBnCnn().eval()


def sigmoid_mlp() -> nn.Module:
    torch.manual_seed(3)
    return SigmoidMlp().eval()
