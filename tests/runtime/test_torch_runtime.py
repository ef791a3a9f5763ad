"""A whole plan on the torch backend (CPU here, CUDA when present) gives bit-identical encrypted
outputs to the numpy backend, from the same keys and the same encryption seeds."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from hecnn.ckks.backend import to_backend, to_numpy  # noqa: E402
from hecnn.ckks.context import CkksContext  # noqa: E402
from hecnn.ckks.encryption import encrypt  # noqa: E402
from hecnn.ckks.keys import KeyGenerator  # noqa: E402
from hecnn.ckks.sampling import Prng  # noqa: E402
from hecnn.compile import compile_model  # noqa: E402
from hecnn.nn.activations import Square, SwishPoly4  # noqa: E402
from hecnn.runtime import decrypt_outputs, pack, run  # noqa: E402

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
    ),
]


class TinyNet(nn.Module):
    """conv (padding, stride) → BN → degree-4 activation → avg pool → cat/residual → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.a1 = SwishPoly4(4)
        self.pool = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(3, 3, 1)
        self.a2 = Square()
        self.fc = nn.Linear(27, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.a1(self.bn(self.c1(x))))
        y = self.a2(self.c2(y) + y)
        return self.fc(torch.flatten(y, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_plan_bit_identical_to_numpy(device):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(16, 1, 6, 6)
    plan = compile_model(model, (1, 6, 6), batch=16, calib=x, insecure_ring_for_tests=1 << 12)
    ctx = CkksContext(plan.params)
    tctx = CkksContext(plan.params, backend="torch", device=device)
    kg = KeyGenerator(ctx, Prng(b"runtime-keys-0123456789abcdef012"))
    sk = kg.secret_key()
    pk, evk = kg.public_key(sk), kg.evaluation_keys(sk)
    ct = encrypt(ctx, pack(plan, x.numpy()), pk, prng=Prng(b"runtime-enc-0123456789abcdef0123"))

    want = run(plan, ct, evk)
    got = run(plan, to_backend(ct, tctx), evk)
    assert type(got).__name__ == "TorchCiphertextBatch"
    assert np.array_equal(to_numpy(got.data), want.data) and got.scale == want.scale

    logits = decrypt_outputs(tctx, sk, got, len(x))
    with torch.no_grad():
        ref = model(x).double().numpy()
    assert np.abs(logits - ref).max() < 1e-2
