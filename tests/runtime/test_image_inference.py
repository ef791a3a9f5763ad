"""Per-image packing: encrypted results equal the plaintext model for every layer type; the
Galois keys are exactly the rotations the evaluation uses; batch and image plans agree.

Small rings (N=2^12) through the explicit insecure test switch keep these fast.
"""

import numpy as np
import pytest
import torch
from torch import nn

from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys, KeyGenerator
from hecnn.compile import compile_model
from hecnn.compile.compiler import AUTO_IMAGE_MAX_BATCH
from hecnn.errors import MissingKeyError, ParameterError, ShapeError, UnsupportedLayerError
from hecnn.nn.activations import Square, SwishPoly4, TrainablePoly
from hecnn.runtime import decrypt_outputs, encrypt_images, run
from hecnn.runtime.image import (
    ImageEvaluator,
    decrypt_image,
    encrypt_image,
    image_keys,
    rotation_levels,
)

RING = 1 << 12


def _randomize_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _image_vs_plain(model, x, ring=RING, **kw):
    """Encrypted per-image outputs for every image of x, the plaintext outputs, plan, evaluator."""
    model.eval()
    plan = compile_model(
        model,
        tuple(x.shape[1:]),
        batch=1,
        calib=x,
        insecure_ring_for_tests=ring,
        packing="image",
        **kw,
    )
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk, evk = kg.public_key(sk), image_keys(plan, kg, sk)
    ev = ImageEvaluator(plan, ctx)
    got = np.stack(
        [decrypt_image(plan, ctx, sk, ev.run(encrypt_image(plan, ctx, pk, im), evk)) for im in x]
    )
    with torch.no_grad():
        ref = model(x).double().numpy()
    return got, ref, plan, ev


def _check(got, ref, rel=1e-2):
    assert np.abs(got - ref).max() < rel * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


class ConvNet(nn.Module):
    """Strided, padded conv → BN → layer-wise poly → avg pool → conv → channel-wise poly →
    linear → element-wise poly → linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.a1 = TrainablePoly(2, "layer")
        self.pool = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.a2 = TrainablePoly(2, "channel", shape=(4, 3, 3))
        self.fc1 = nn.Linear(36, 12)
        self.a3 = TrainablePoly(2, "element", shape=(12,))
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        y = self.pool(self.a1(self.bn1(self.c1(x))))
        y = torch.flatten(self.a2(self.c2(y)), 1)
        return self.fc2(self.a3(self.fc1(y)))


def _vary_polys(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TrainablePoly):
                m.a.uniform_(0.05, 0.3)
                m.b.uniform_(-0.5, 0.5)
                m.c.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("expand", [None, False])
def test_conv_pool_linear_and_every_poly_granularity(expand, monkeypatch):
    """Each layer type of the issue in per-image packing vs the plaintext model (with and
    without the client's im2col arrangement of the first layer)."""
    import hecnn.compile.compiler as comp
    from hecnn.compile import image

    if expand is False:
        monkeypatch.setattr(
            comp,
            "pack_image",
            lambda nodes, slots: image.pack_image(nodes, slots, expand_input=False),
        )
    torch.manual_seed(0)
    model = _randomize_bn(ConvNet())
    _vary_polys(model)
    x = torch.randn(4, 1, 12, 12)
    got, ref, plan, ev = _image_vs_plain(model, x)
    _check(got, ref)
    assert plan.packing == "image" and plan.image.input_cts == 1
    first = plan.image.matrices[plan.nodes[1].name]
    if expand is None:  # the im2col arrangement: 9 taps × 36 positions, few diagonals
        assert plan.image.input_gather.shape[1] == 512
        assert len(first.diags) <= 2 * 9 + 3
    assert sorted(ev.used_steps) == plan.rotation_steps()


class ZooNet(nn.Module):
    """Concatenation (Fire module), residual add, composite-free polys, global pool."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.a1 = SwishPoly4(4)
        self.e1 = nn.Conv2d(3, 2, 1)
        self.e3 = nn.Conv2d(3, 2, 3, padding=1)
        self.a2 = TrainablePoly(2, "element", shape=(4, 4, 4))
        self.pool = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.a3 = Square()
        self.a4 = TrainablePoly(2, "channel", shape=(4, 2, 2))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.a1(self.bn1(self.c1(x)))
        y = self.a2(torch.cat([self.e1(y), self.e3(y)], dim=1))
        y = self.pool(y)
        y = self.a4(y + self.a3(self.c3(y)))
        return self.fc(torch.flatten(self.gap(y), 1))


def test_concat_residual_add_global_pool():
    torch.manual_seed(1)
    model = _randomize_bn(ZooNet())
    _vary_polys(model)
    x = torch.randn(4, 2, 8, 8)
    got, ref, plan, ev = _image_vs_plain(model, x)
    _check(got, ref)
    cat = next(n for n in plan.nodes if type(n).__name__ == "ConcatNode")
    assert plan.image.layouts[cat.name].cts == 2  # the two branches side by side, no rotation
    assert sorted(ev.used_steps) == plan.rotation_steps()


class Wide(nn.Module):
    """A layer wider than the slots of N=2^12 (2048): 8·12·12 = 1152·2 features → several
    ciphertexts, block diagonals per (output ct, input ct)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.a1 = Square()
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(16 * 3 * 3, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.a1(self.c1(x))), 1))


def test_layers_wider_than_the_slots_span_several_ciphertexts():
    torch.manual_seed(2)
    model = Wide().eval()
    x = torch.randn(2, 3, 12, 12)
    got, ref, plan, _ = _image_vs_plain(model, x)
    _check(got, ref)
    conv = plan.nodes[1].name
    assert plan.image.matrices[conv].out_cts == 2  # 2304 outputs over 2048-slot ciphertexts


def _convnet_image_setup(seed: int, images: int):
    """A per-image ConvNet plan, its context, keys (relin + Galois) and image 0 encrypted."""
    torch.manual_seed(seed)
    model = _randomize_bn(ConvNet())
    x = torch.randn(images, 1, 12, 12)
    plan = compile_model(
        model, (1, 12, 12), batch=1, calib=x, insecure_ring_for_tests=RING, packing="image"
    )
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    evk = image_keys(plan, kg, sk)
    return plan, ctx, evk, encrypt_image(plan, ctx, kg.public_key(sk), x[0].numpy())


@pytest.mark.parametrize("tiny_lead", [False, True])
def test_fire_module_with_batchnorm_after_activations(fire_after_bn, tiny_lead):
    """Conv → activation → BN (folded into the polynomials) in a Fire module, per image; with
    one leading coefficient that cannot fold, both concatenated expands keep theirs and land
    at the same scale."""
    model = fire_after_bn(7, tiny_lead=tiny_lead)
    x = torch.randn(3, 2, 4, 4)
    got, ref, plan, _ = _image_vs_plain(model, x)
    folded = [plan.node(n).fold_leading for n in ("a1", "a3")]
    assert folded == [not tiny_lead] * 2
    _check(got, ref)


def test_rotation_keys_are_exactly_the_steps_used():
    """The key set is minimal: the evaluation applies every generated step, and without any
    one of them it stops with MissingKeyError."""
    plan, ctx, evk, ct = _convnet_image_setup(3, 2)
    steps = plan.rotation_steps()
    assert len(evk.galois) == len(steps) > 0
    ev = ImageEvaluator(plan, ctx)
    ev.run(ct, evk)
    assert sorted(ev.used_steps) == steps
    from hecnn.ckks.encoder import galois_element

    # each key holds the limbs of the highest level its step is used at, no more
    levels = rotation_levels(plan)
    assert sorted(levels) == steps
    for st, lvl in levels.items():
        assert evk.galois[galois_element(ctx.n, st)].level == lvl
    assert min(levels.values()) < plan.params.max_level

    for drop in (steps[0], steps[len(steps) // 2], steps[-1]):
        g = galois_element(ctx.n, drop)
        fewer = EvaluationKeys(
            evk.params, evk.relin, {k: v for k, v in evk.galois.items() if k != g}
        )
        with pytest.raises(MissingKeyError):
            ImageEvaluator(plan, ctx).run(ct, fewer)


def test_diagonals_encoded_per_image_give_the_same_ciphertexts():
    """An evaluator without room to cache the diagonals (``cache_bytes``) encodes each
    giant-step group when it uses it: bit-identical outputs, nothing kept; a budget for the
    first layer only streams the others."""
    plan, ctx, evk, ct = _convnet_image_setup(4, 1)
    cached = ImageEvaluator(plan, ctx)
    want = cached.run(ct, evk).data
    assert not cached.streamed and cached._plain
    affine = list(plan.image.matrices)
    streamed = ImageEvaluator(plan, ctx, cache_bytes=0)
    assert np.array_equal(streamed.run(ct, evk).data, want)
    assert streamed.streamed == set(affine) and not streamed._plain
    first = plan.image.matrices[affine[0]]
    room = len(first.diags) * (plan.node(affine[0]).level_in + 1) * ctx.n * 4
    part = ImageEvaluator(plan, ctx, cache_bytes=room)
    assert np.array_equal(part.run(ct, evk).data, want)
    assert part.streamed == set(affine[1:])


def test_batch_and_image_packing_agree():
    """Both packings evaluate the same folded network: identical plaintext-equivalent results."""
    torch.manual_seed(4)
    model = _randomize_bn(ConvNet())
    _vary_polys(model)
    x = torch.randn(4, 1, 12, 12)
    img, ref, _, _ = _image_vs_plain(model, x)
    plan = compile_model(model, (1, 12, 12), batch=4, calib=x, insecure_ring_for_tests=RING)
    assert plan.packing == "batch" and plan.rotation_steps() == []
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    out = run(plan, encrypt_images(plan, ctx, kg.public_key(sk), x.numpy()), kg.evaluation_keys(sk))
    bat = decrypt_outputs(ctx, sk, out, len(x))
    _check(bat, ref)
    _check(img, ref)
    assert np.abs(img - bat).max() < 2e-2 * max(1.0, np.abs(ref).max())
    assert (img.argmax(1) == bat.argmax(1)).all()


def test_auto_packing_follows_the_batch_size():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), Square(), nn.Linear(3, 2))
    x = torch.randn(4, 1, 2, 2)
    kw = dict(calib=x, insecure_ring_for_tests=RING, packing="auto")
    assert compile_model(model, (1, 2, 2), batch=1, **kw).packing == "image"
    big = compile_model(model, (1, 2, 2), batch=AUTO_IMAGE_MAX_BATCH + 1, **kw)
    assert big.packing == "batch"
    with pytest.raises(ParameterError):
        compile_model(model, (1, 2, 2), batch=1, calib=x, packing="pixel")


def test_bad_inputs_raise_clear_errors():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), Square(), nn.Linear(3, 2))
    x = torch.randn(4, 1, 2, 2)
    batch_plan = compile_model(model, (1, 2, 2), batch=4, calib=x, insecure_ring_for_tests=RING)
    plan = compile_model(
        model, (1, 2, 2), batch=1, calib=x, insecure_ring_for_tests=RING, packing="image"
    )
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    with pytest.raises(ShapeError):
        encrypt_image(plan, ctx, pk, np.zeros((1, 3, 3)))
    with pytest.raises(ParameterError):
        encrypt_image(batch_plan, ctx, pk, np.zeros((1, 2, 2)))
    ct = encrypt_image(plan, ctx, pk, x[0].numpy())
    evk = image_keys(plan, kg, sk)
    with pytest.raises(ShapeError):
        ImageEvaluator(plan, ctx).run(ct.stack([ct, ct]), evk)
    got = decrypt_image(plan, ctx, sk, run(plan, ct, evk))  # run() dispatches on the packing
    with torch.no_grad():
        _check(got[None], model(x[:1]).double().numpy())


def test_differently_laid_out_add_is_refused():
    class AddCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 2)
            self.b = nn.Linear(4, 2)
            self.c = nn.Linear(4, 4)

        def forward(self, x):
            x = torch.flatten(x, 1)
            return torch.cat([self.a(x), self.b(x)], 1) + self.c(x)

    x = torch.randn(4, 1, 2, 2)
    with pytest.raises(UnsupportedLayerError):
        compile_model(
            AddCat(), (1, 2, 2), batch=1, calib=x, insecure_ring_for_tests=RING, packing="image"
        )


def test_image_plan_survives_serialization():
    """A saved per-image plan reloads with the same layouts and rotation steps."""
    from hecnn.compile.serialize import dumps_plan, loads_plan

    torch.manual_seed(7)
    model = _randomize_bn(ZooNet())
    x = torch.randn(2, 2, 8, 8)
    plan = compile_model(
        model, (2, 8, 8), batch=1, calib=x, insecure_ring_for_tests=RING, packing="image"
    )
    back = loads_plan(dumps_plan(plan))
    assert back.packing == "image" and back.rotation_steps() == plan.rotation_steps()
    assert np.array_equal(back.image.input_gather, plan.image.input_gather)
    for name, lay in plan.image.layouts.items():
        assert np.array_equal(back.image.layouts[name].pos, lay.pos)


@pytest.mark.parametrize("pool", [False, True])
def test_composite_relu_and_maxpool_per_image(pool):
    """Composite sign polynomials (degree 3 and 7, relinearized powers) and their products with
    x (MulNode); max-pooling's tournament of products and adds — per image vs the module."""
    import hecnn

    torch.manual_seed(8)
    layers = [nn.Conv2d(1, 2, 3, stride=2), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(8 if pool else 18, 3)]
    x = torch.randn(3, 1, 7 if not pool else 9, 7 if not pool else 9)
    am = hecnn.approximate(nn.Sequential(*layers).eval(), alpha=6, calib=x).eval()
    got, ref, plan, ev = _image_vs_plain(am, x)
    assert any(type(n).__name__ == "MulNode" for n in plan.nodes)
    assert np.abs(got - ref).max() < 5e-3 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert sorted(ev.used_steps) == plan.rotation_steps()
