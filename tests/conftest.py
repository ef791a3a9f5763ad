"""Models shared by the compiler and runtime tests."""

import pytest
import torch
from torch import nn

from hecnn.nn.activations import TrainablePoly


class FireAfterBN(nn.Module):
    """HEMET's order, conv → activation → batch-norm, into a Fire module: the squeeze's BN
    branches to two expands, the expands' BNs are concatenated before the next conv."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(2, 4, 3, padding=1)
        self.a0 = TrainablePoly(2, "channel", shape=(4, 4, 4))
        self.b0 = nn.BatchNorm2d(4)
        self.e1 = nn.Conv2d(4, 3, 1)
        self.a1 = TrainablePoly(2, "element", shape=(3, 4, 4))
        self.b1 = nn.BatchNorm2d(3)
        self.e3 = nn.Conv2d(4, 3, 3, padding=1)
        self.a3 = TrainablePoly(2, "layer", shape=(3, 4, 4))
        self.b3 = nn.BatchNorm2d(3)
        self.s = nn.Conv2d(6, 2, 1)
        self.a4 = TrainablePoly(2, "channel", shape=(2, 4, 4))
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        s = self.b0(self.a0(self.c0(x)))
        y = torch.cat([self.b1(self.a1(self.e1(s))), self.b3(self.a3(self.e3(s)))], dim=1)
        return self.fc(torch.flatten(self.a4(self.s(y)), 1))


@pytest.fixture
def fire_after_bn():
    """``seed`` → a :class:`FireAfterBN` with random polynomials and batch-norm statistics;
    ``tiny_lead``: one element of the 1×1 expand's polynomial gets c_2 ≈ 0 (1e-13), so its
    leading coefficient cannot fold, not even with its input scaled down, and, with it,
    neither can the 3×3 expand's (a concatenation's inputs fold all or none); ``small_lead``:
    c_2 = 1e-6 there, which folds once the expand conv scales that output down."""

    def build(seed: int, tiny_lead: bool = False, small_lead: bool = False) -> FireAfterBN:
        torch.manual_seed(seed)
        model = FireAfterBN()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, TrainablePoly):
                    for p in m.parameters():
                        p.add_(torch.rand_like(p) * 0.3)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2)
                    m.weight.data.uniform_(0.5, 1.5)
                    m.bias.data.uniform_(-0.2, 0.2)
            if tiny_lead or small_lead:
                model.a1.a.view(-1)[5] = 1e-13 if tiny_lead else 1e-6
        return model.eval()

    return build


class PoolThenConv(nn.Module):
    """conv → element-wise polynomial → BN → 2×2 average pool → 3×3 conv → poly → 1×1 conv →
    poly → linear (the last two polynomials form the rescale-free tail; ``deep=False`` drops
    the 1×1 conv and its polynomial): merged, the pool and
    the 3×3 conv would be a 6×6 stride-2 conv (4× the MACs), so the compiler keeps them apart
    at the cost of a level (HEMET's pool2 → conv2, ishiyama_cifar's pools)."""

    def __init__(self, deep: bool = True):
        super().__init__()
        self.deep = deep
        self.c0 = nn.Conv2d(2, 6, 3, padding=1)
        self.a0 = TrainablePoly(2, "element", shape=(6, 8, 8))
        self.b0 = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(2)
        self.c1 = nn.Conv2d(6, 6, 3, padding=1)
        self.a1 = TrainablePoly(2, "channel", shape=(6, 4, 4))
        self.c2 = nn.Conv2d(6, 6, 1)
        self.a2 = TrainablePoly(2, "layer", shape=(6, 4, 4))
        self.fc = nn.Linear(96, 3)

    def forward(self, x):
        y = self.pool(self.b0(self.a0(self.c0(x))))
        y = self.a1(self.c1(y))
        if self.deep:
            y = self.a2(self.c2(y))
        return self.fc(torch.flatten(y, 1))


@pytest.fixture
def pool_then_conv():
    """(``seed``, ``deep``) → a :class:`PoolThenConv` with random polynomials and batch-norm
    statistics."""

    def build(seed: int, deep: bool = True) -> PoolThenConv:
        torch.manual_seed(seed)
        return _randomized(PoolThenConv(deep), ["a0"])

    return build


def _randomized(model: nn.Module, polys: list[str]) -> nn.Module:
    """``model`` in eval mode with the parameters of its polynomials ``polys`` (attribute
    names) shifted by U(0, 0.3) and random statistics for its batch-norm ``b0``."""
    with torch.no_grad():
        for name in polys:
            for p in getattr(model, name).parameters():
                p.add_(torch.rand_like(p) * 0.3)
        model.b0.running_mean.uniform_(-0.5, 0.5)
        model.b0.running_var.uniform_(0.5, 2)
    return model.eval()


class HeadThenSqueeze(nn.Module):
    """HEMET's first layers in small: a 3×3 conv on the input (1,024 outputs) → element-wise
    x² + c·x → BN → 2×2 average pool → 1×1 squeeze (64 outputs) → poly → linear. The squeeze
    has 16× fewer outputs than the conv, so both the conv's rescale and the polynomial's
    are left to it (it divides by three primes)."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 16, 3, padding=1)
        self.a0 = TrainablePoly(2, "element", shape=(16, 8, 8))
        self.b0 = nn.BatchNorm2d(16)
        self.pool = nn.AvgPool2d(2)
        self.s = nn.Conv2d(16, 4, 1)
        self.a1 = TrainablePoly(2, "channel", shape=(4, 4, 4))
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        y = self.s(self.pool(self.b0(self.a0(self.c0(x)))))
        return self.fc(torch.flatten(self.a1(y), 1))


@pytest.fixture
def head_then_squeeze():
    """``seed`` → a :class:`HeadThenSqueeze` with random polynomials and BN statistics."""

    def build(seed: int) -> HeadThenSqueeze:
        torch.manual_seed(seed)
        return _randomized(HeadThenSqueeze(), ["a0", "a1"])

    return build
