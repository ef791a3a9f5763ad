"""Pre-trained ReLU / max-pool models under encryption through composite sign polynomials.

``hecnn.approximate`` swaps ReLU and MaxPool2d for :class:`CompositeReLU` /
:class:`CompositeMaxPool2d`; the compiler turns them into polynomial chains, a ciphertext
product per feature and (max-pool) a tournament of rounds. The encrypted result must equal the
approximated model (the plaintext simulation) up to CKKS noise; small insecure rings keep this
fast.
"""

import numpy as np
import pytest
import torch
from torch import nn

import hecnn
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.compile.ir import MulNode, PolyNode
from hecnn.compile.serialize import dumps_plan, loads_plan
from hecnn.runtime import decrypt_outputs, encrypt_images, run
from hecnn.runtime.simulate import simulate

RING = 1 << 12


def _check(model: nn.Module, x: torch.Tensor, alpha: int, tol: float = 5e-3):
    am = hecnn.approximate(model.eval(), alpha=alpha, calib=x).eval()
    plan = compile_model(
        am, tuple(x.shape[1:]), batch=len(x), calib=x, insecure_ring_for_tests=RING
    )
    with torch.no_grad():
        ref = am(x).double().numpy()
    assert np.abs(simulate(plan, x.numpy()) - ref).max() < 1e-6  # the plan computes the module
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    out = run(plan, encrypt_images(plan, ctx, kg.public_key(sk), x.numpy()), kg.evaluation_keys(sk))
    got = decrypt_outputs(ctx, sk, out, len(x))
    assert np.abs(got - ref).max() < tol * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    return plan


def test_composite_relu_encrypted_equals_its_plaintext_simulation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
    plan = _check(model, torch.randn(16, 1, 7, 7), alpha=6)
    muls = [n for n in plan.nodes if isinstance(n, MulNode)]
    assert len(muls) == 1 and muls[0].features == 18
    # α=6 is (3, 7): one chain of two polynomials, then the product with x
    assert [n.degree for n in plan.nodes if isinstance(n, PolyNode)] == [3, 7]
    again = loads_plan(dumps_plan(plan))
    assert [type(n) for n in again.nodes] == [type(n) for n in plan.nodes]


@pytest.mark.parametrize("kernel", [2, 3])
def test_composite_maxpool_encrypted_equals_its_plaintext_simulation(kernel):
    """2×2 (two rounds) and 3×3 (an odd slot carried through four rounds)."""
    torch.manual_seed(kernel)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.MaxPool2d(kernel), nn.Flatten(), nn.Linear(2 * (6 // kernel) ** 2, 3)
    )
    plan = _check(model, torch.randn(16, 1, 8, 8), alpha=6)
    rounds = {2: 2, 3: 4}[kernel]
    assert sum(isinstance(n, MulNode) for n in plan.nodes) == rounds


def test_alpha_10_relu_and_maxpool_depth_optimal():
    """α = 10 (degrees 7, 7, 13): each sign chain costs exactly Σ⌈log2(d+1)⌉ = 10 levels
    (Chebyshev basis, depth-optimal) and the encrypted network matches its simulation."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)
    )
    # measured relative error ~1e-5; relinearizing the products *after* their rescale (at the
    # scale Δ/r of the next chain's input) gave 5e-4 … 1.4e-3, and failed at N = 2^16
    plan = _check(model, torch.randn(8, 1, 11, 11), alpha=10, tol=1e-4)
    muls = [n for n in plan.nodes if isinstance(n, MulNode)]
    assert muls and all(n.relin_after and n.components == 2 for n in muls)
    sign = hecnn.approx.composite_sign(10)
    chains = [n for n in plan.nodes if isinstance(n, PolyNode)]
    assert all(n.chebyshev for n in chains) and len(chains) == 3 * 3  # 2 rounds + ReLU
    for first, last in zip(chains[0::3], chains[2::3], strict=True):
        assert first.level_in - last.level_out == sign.depth == 10
