"""Encrypted inference equals the plaintext model: every layer type and the bundled models.

Small rings (N=2^12) through the explicit insecure test switch keep these fast.
"""

import numpy as np
import pytest
import torch
from torch import nn

from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.errors import ParameterError, ShapeError
from hecnn.nn.activations import Square, SwishPoly4, TrainablePoly
from hecnn.runtime import decrypt_outputs, encrypt_images, run

RING = 1 << 12


def _encrypted_vs_plain(model, x, ring=RING):
    model.eval()
    plan = compile_model(
        model, tuple(x.shape[1:]), batch=len(x), calib=x, insecure_ring_for_tests=ring
    )
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    out = run(plan, encrypt_images(plan, ctx, kg.public_key(sk), x.numpy()), kg.evaluation_keys(sk))
    got = decrypt_outputs(ctx, sk, out, len(x))
    with torch.no_grad():
        ref = model(x).double().numpy()
    return got, ref, plan


class LayerZoo(nn.Module):
    """Conv (stride, padding), BN, every activation, avg pool, cat, residual add, global pool,
    Flatten, Dropout, Identity, Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(2)
        self.a1 = SwishPoly4(4)
        self.c2a = nn.Conv2d(2, 2, 1)
        self.c2b = nn.Conv2d(2, 2, 3, padding=1)
        self.a2 = TrainablePoly(2, "element", shape=(4, 4, 4))
        self.pool = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.a3 = Square()
        self.a4 = TrainablePoly(2, "channel", shape=(4, 2, 2))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.3)
        self.idn = nn.Identity()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.a1(self.bn1(self.c1(x)))
        y = self.a2(torch.cat([self.c2a(y), self.c2b(y)], dim=1))
        y = self.pool(y)
        y = self.a4(y + self.a3(self.c3(y)))
        return self.fc(self.idn(self.drop(torch.flatten(self.gap(y), 1))))


def test_every_layer_type_encrypted_equals_plaintext():
    torch.manual_seed(0)
    model = LayerZoo()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(16, 1, 8, 8)
    got, ref, _plan = _encrypted_vs_plain(model, x)
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("lead", ["normal", "small", "tiny"])
def test_batchnorm_after_activation_in_fire_module_encrypted_equals_plaintext(fire_after_bn, lead):
    """HEMET's conv → activation → BN order in a Fire module: the BNs fold into the
    polynomials, the leading coefficients through the concatenation (a small one after the
    expand conv scaled its input down, a tiny one not at all), and the concatenated
    3-component expands are relinearized after the squeeze — still the plaintext model."""
    model = fire_after_bn(6, tiny_lead=lead == "tiny", small_lead=lead == "small")
    x = torch.randn(16, 2, 4, 4)
    got, ref, plan = _encrypted_vs_plain(model, x)
    assert plan.relinearizations().get("s") == 32
    assert [plan.node(n).fold_leading for n in ("a1", "a3")] == [lead != "tiny"] * 2
    assert any("scaled 1 of its 48" in d for d in plan.decisions) == (lead == "small")
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("name", ["ishiyama_mnist_poly_element_kd", "ishiyama_mnist_swish4"])
def test_bundled_models_encrypted_equal_plaintext(name):
    from hecnn.nn import bundled

    images, labels = bundled.sample_images()
    pick = np.arange(0, len(images), len(images) // 32)[:32]  # the sample is sorted by label
    x = torch.as_tensor(np.asarray(bundled.to_float(images[pick]), dtype=np.float32))
    got, ref, _plan = _encrypted_vs_plain(bundled.load_model(name), x)
    assert np.abs(got - ref).max() < 2e-2
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (ref.argmax(1) == labels[pick]).mean() > 0.9  # the model itself is trained
    assert len(set(labels[pick])) == 10


def test_runtime_rejects_foreign_keys_and_wrong_shapes():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), Square(), nn.Linear(2, 2))
    x = torch.randn(4, 1, 2, 2)
    plan = compile_model(model, (1, 2, 2), batch=4, calib=x, insecure_ring_for_tests=RING)
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    ct = encrypt_images(plan, ctx, kg.public_key(sk), x.numpy())
    with pytest.raises(ShapeError):
        run(plan, ct[:3], kg.evaluation_keys(sk))
    with pytest.raises(ShapeError):
        encrypt_images(plan, ctx, sk, np.zeros((2, 1, 3, 3)))
    other = compile_model(model, (1, 2, 2), batch=4, calib=x, insecure_ring_for_tests=2 * RING)
    okg = KeyGenerator(CkksContext(other.params))
    with pytest.raises(ParameterError):
        run(plan, ct, okg.evaluation_keys(okg.secret_key()))


class TwoSquares(nn.Module):
    """CryptoNets' shape: conv → x² → linear → poly (lead folded) → linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2)
        self.a1 = Square()
        self.fc1 = nn.Linear(27, 12)
        self.a2 = TrainablePoly(2, "element", shape=(12,))
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc2(self.a2(self.fc1(torch.flatten(self.a1(self.conv(x)), 1))))


@pytest.mark.parametrize("tail", [True, False])
def test_relinearization_free_tail_equals_plaintext(tail):
    """The rescale-free tail (no key switch at all, 5-component outputs) and the relinearized
    plan both agree with the plaintext model; the tail saves every relinearization and a level."""
    torch.manual_seed(5)
    model = TwoSquares().eval()
    with torch.no_grad():
        model.a2.a.uniform_(0.05, 0.3)  # a·x² + b·x + c with varied per-feature coefficients
        model.a2.b.uniform_(-0.5, 0.5)
    x = torch.randn(16, 1, 7, 7)
    plan = compile_model(
        model, (1, 7, 7), batch=16, calib=x, insecure_ring_for_tests=RING, relin_free_tail=tail
    )
    relins = sum(plan.relinearizations().values())
    out = plan.node(plan.output)
    if tail:
        assert relins == 0 and out.components == 5 and not out.rescale
    else:
        assert relins == 12 and out.components == 3 and out.rescale
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    res = run(plan, encrypt_images(plan, ctx, kg.public_key(sk), x.numpy()), kg.evaluation_keys(sk))
    assert res.components == out.components
    got = decrypt_outputs(ctx, sk, res, len(x))
    with torch.no_grad():
        ref = model(x).double().numpy()
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_pool_kept_apart_encrypted_equals_plaintext(pool_then_conv):
    """A pool kept apart from the conv after it (a level more, a quarter of the MACs) takes the
    3-component products of the polynomial before it and relinearizes them: 4× fewer key
    switches than at the polynomial — still the plaintext model."""
    model = pool_then_conv(2)
    x = torch.randn(16, 2, 8, 8)
    got, ref, plan = _encrypted_vs_plain(model, x)
    assert plan.decisions and plan.node("pool").relin_after
    assert plan.node("a0").components == 3 and plan.node("c1").components == 2
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize(
    ("fixture", "seed", "shape", "deferring", "owing", "owed"),
    [
        # the expands → the squeeze, the last activation → the classifier: one rescale each
        ("fire_after_bn", 7, (2, 4, 4), "a1", "s", 1),
        # the first conv skips its rescale (weights at ~Δ^(2/3), products at Δ·Δ_w) and the
        # squeeze divides by three primes after its sums
        ("head_then_squeeze", 5, (3, 8, 8), "c0", "s", 2),
    ],
)
def test_deferred_rescales_encrypted_equal_plaintext(
    request, fixture, seed, shape, deferring, owing, owed
):
    """Layers whose last rescale their shrinking consumers do still compute the plaintext
    model, no less precisely than the plan that rescales at every layer (one rounding after
    the sums instead of one per input)."""
    model = request.getfixturevalue(fixture)(seed)
    x = torch.randn(16, *shape)
    got, ref, plan = _encrypted_vs_plain(model, x)
    assert plan.node(deferring).defer_rescale and plan.node(owing).owed_rescales == owed
    err = np.abs(got - ref).max()
    assert err < 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    eager = compile_model(
        model, shape, batch=16, calib=x, insecure_ring_for_tests=RING, lazy_rescale=False
    )
    assert not eager.node(deferring).defer_rescale
    ctx = CkksContext(eager.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    ct = encrypt_images(eager, ctx, kg.public_key(sk), x.numpy())
    eager_err = np.abs(decrypt_outputs(ctx, sk, run(eager, ct, kg.evaluation_keys(sk)), 16) - ref)
    assert err < 4 * eager_err.max(), (err, eager_err.max())
