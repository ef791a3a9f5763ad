"""The compiler: traced plans compute what the model computes (plaintext simulation), folding
saves levels, parameters are secure, unsupported operations are named."""

import numpy as np
import pytest
import torch
from torch import nn

from hecnn.compile import compile_model
from hecnn.compile.ir import AffineNode, PolyNode
from hecnn.compile.polyeval import schedule
from hecnn.errors import UnsupportedLayerError
from hecnn.nn.activations import Square, SwishPoly4, TrainablePoly
from hecnn.runtime import simulate


def _check_sim(model, shape, n=8, tol=1e-6):
    model.eval()
    x = torch.randn(n, *shape)
    plan = compile_model(model, shape, batch=n, calib=x)
    with torch.no_grad():
        ref = model(x).double().numpy()
    np.testing.assert_allclose(simulate(plan, x.numpy()), ref, atol=tol * max(1, np.abs(ref).max()))
    return plan


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = SwishPoly4(4)
        self.pool = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x):
        return self.fc(self.drop(self.flat(self.pool(self.act(self.bn(self.conv(x)))))))


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_plan_matches_model_and_merges_affine_chains():
    torch.manual_seed(0)
    plan = _check_sim(_randomize_bn(Tiny()), (2, 8, 8))
    kinds = [type(n).__name__ for n in plan.nodes]
    # conv+bn merge into one affine; pool+fc merge into another
    assert kinds == ["InputNode", "AffineNode", "PolyNode", "AffineNode"]
    poly = plan.nodes[2]
    assert poly.fold_leading and poly.depth == 2
    assert plan.levels == 4
    assert not plan.params.insecure_test_only and plan.params.log_qp <= 438


@pytest.mark.parametrize("gran", ["layer", "channel", "element"])
def test_trainable_poly_granularities(gran):
    torch.manual_seed(1)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.act = TrainablePoly(2, gran, shape=(2, 4, 4))
            with torch.no_grad():
                for p in self.act.parameters():
                    p.add_(torch.rand_like(p) * 0.3)
            self.fc = nn.Linear(32, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.act(self.conv(x)), 1))

    _check_sim(M(), (1, 6, 6))


def test_concat_and_residual_add_and_global_pool():
    torch.manual_seed(2)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 1)
            self.b = nn.Conv2d(2, 3, 3, padding=1)
            self.sq = Square()
            self.c = nn.Conv2d(5, 5, 1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.bn1d = nn.BatchNorm1d(5)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], dim=1)
            y = self.sq(y)
            y = y + self.c(y)
            return self.fc(self.bn1d(torch.flatten(self.gap(y), 1)))

    _check_sim(_randomize_bn(M()), (2, 4, 4))


def test_unsupported_operation_is_named():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x))

    with pytest.raises(UnsupportedLayerError, match="ReLU"):
        compile_model(M(), (1, 5, 5), batch=4)

    class F(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    with pytest.raises(UnsupportedLayerError, match="sigmoid"):
        compile_model(F(), (4,), batch=4)


def test_schedule_depths():
    assert schedule(np.ones((3, 1)), fold_leading=True).depth == 1
    assert schedule(np.ones((3, 1)), fold_leading=False).depth == 2
    assert schedule(np.ones((5, 1)), fold_leading=True).depth == 2
    swish = np.array([[0.03], [0.5], [0.2], [0.0], [-0.005]])
    assert schedule(swish, fold_leading=True).depth == 2
    assert schedule(np.ones((9, 1)), fold_leading=False).depth == 4


def test_summary_reports_layers_and_totals():
    plan = _check_sim(_randomize_bn(Tiny()), (2, 8, 8))
    text = plan.summary()
    assert "relinearizations" in text and "N=" in text and "GiB" in text
    assert any(isinstance(n, AffineNode) for n in plan.nodes)
    assert any(isinstance(n, PolyNode) for n in plan.nodes)


def test_batchnorm_behind_branching_activation_folds_into_the_polynomial(fire_after_bn):
    """A BN after an activation whose output branches or is concatenated is d·p(x) + b: part of
    the polynomial, not a level of its own; the leading coefficients fold into every consumer,
    through the concatenation too, and the expands relinearize after the next squeeze."""
    plan = _check_sim(fire_after_bn(4), (2, 4, 4))
    affine = [n for n in plan.nodes if isinstance(n, AffineNode)]
    assert all("Conv2d" in n.source or "Linear" in n.source for n in affine), [
        n.source for n in affine
    ]
    assert len(affine) == 5
    polys = [n for n in plan.nodes if isinstance(n, PolyNode)]
    assert all("BatchNorm2d" in p.source for p in polys[:3])
    assert all(p.fold_leading and p.depth + p.defer_rescale == 1 for p in polys)
    # c0, a0, expand, a1|a3, s, a4 and fc: one level each
    assert plan.levels == 7
    relins = plan.relinearizations()
    # a0's 64 outputs feed 2×48 expand outputs: relinearized at a0; the concatenated 96 expand
    # outputs are relinearized after the 32-output squeeze
    assert relins.get("a0") == 64 and relins.get("s") == 32, relins
    assert sum(relins.values()) == 64 + 32


def test_nearly_linear_element_folds_after_its_producer_scales_it_down(fire_after_bn):
    """An element with c_2 = 1e-6 would make the monic x² + (c_1/c_2)·x far too large: the
    expand conv scales that one output down by t (x = x'/t) and the polynomial folds, with the
    3×3 expand beside it. The plan still computes the model; a lead of 1e-13 would need t
    below FOLD_MIN_PRESCALE and folds nothing."""
    from hecnn.compile.passes import DEFAULT_INPUT_BOUND, FOLD_MAX_VALUE

    x = torch.randn(8, 2, 4, 4)
    model = fire_after_bn(4, small_lead=True)
    plan = _check_sim(model, (2, 4, 4))
    assert plan.node("a1").fold_leading and plan.node("a3").fold_leading
    notes = [d for d in plan.decisions if d.startswith("a1: leading coefficient folded after")]
    assert len(notes) == 1 and "1 of its 48 outputs" in notes[0], plan.decisions
    plain = compile_model(fire_after_bn(4), (2, 4, 4), batch=8, calib=x)
    assert plan.levels == plain.levels
    # element 5: x'² + (c_1/c_2)·t·x' with x' = t·x and t = √(2^20 / (|c_1/c_2|·r + r²)),
    # the other elements unscaled (t = 1)
    a1 = plan.node("a1")
    raw = compile_model(model, (2, 4, 4), batch=8, calib=x, fold_leading=False).node("a1")
    r = 1.5 * (max(map(abs, a1.input_range)) if a1.input_range else DEFAULT_INPUT_BOUND)
    ratio = raw.coeffs[1] / raw.coeffs[2]
    t = np.sqrt(FOLD_MAX_VALUE / (abs(ratio[5]) * r + r**2))
    assert 0.01 < t < 0.5
    np.testing.assert_allclose(a1.coeffs[1, 5], ratio[5] * t, rtol=1e-9)
    np.testing.assert_allclose(np.delete(a1.coeffs[1], 5), np.delete(ratio, 5), rtol=1e-9)
    np.testing.assert_allclose(a1.coeffs[2], 1.0)
    tiny = compile_model(fire_after_bn(4, tiny_lead=True), (2, 4, 4), batch=8, calib=x)
    assert not tiny.node("a1").fold_leading and not tiny.node("a3").fold_leading


def test_pool_is_kept_apart_from_the_conv_after_it_where_that_is_cheaper(pool_then_conv):
    """Merged, a 2×2 pool and the 3×3 conv after it are a 6×6 stride-2 conv: a level fewer but
    ~4× the MACs. The compiler lowers the plan both ways and keeps the cheaper one — apart,
    except where the extra level would need a ring twice as large (the shallow variant at
    128-bit). Either way the plan computes the model."""
    from hecnn.compile.cost import plan_work
    from hecnn.compile.serialize import dumps_plan, loads_plan

    model = pool_then_conv(1)
    x = torch.randn(8, 2, 8, 8)
    kw = dict(batch=8, calib=x, insecure_ring_for_tests=4096)
    apart = compile_model(model, (2, 8, 8), **kw)
    merged = compile_model(model, (2, 8, 8), merge_by_cost=False, **kw)
    pools = [n for n in apart.nodes if isinstance(n, AffineNode) and "AvgPool2d" in n.source]
    assert [p.source for p in pools] == ["BatchNorm2d b0 → AvgPool2d pool"]
    assert not any("AvgPool2d" in n.source for n in merged.nodes if n.name != "c1")
    assert "AvgPool2d" in merged.node("c1").source
    assert apart.levels == merged.levels + 1
    macs = [sum(n.macs for n in p.nodes if isinstance(n, AffineNode)) for p in (apart, merged)]
    assert macs[0] < 0.55 * macs[1], macs
    assert plan_work(apart) < 0.9 * plan_work(merged)

    def kept(plan):
        return [d for d in plan.decisions if "kept apart" in d]

    assert len(kept(apart)) == 1 and kept(apart)[0].startswith("pool → c1 kept apart")
    assert not kept(merged)
    assert loads_plan(dumps_plan(apart)).decisions == apart.decisions
    assert "decision: pool → c1" in apart.summary()
    with torch.no_grad():
        ref = model(x).double().numpy()
    for plan in (apart, merged):
        np.testing.assert_allclose(simulate(plan, x.numpy()), ref, atol=1e-6 * np.abs(ref).max())
    shallow = pool_then_conv(1, deep=False)
    secure = compile_model(shallow, (2, 8, 8), batch=8, calib=x)
    assert not kept(secure) and secure.params.n == 8192
    assert "AvgPool2d" in secure.node("c1").source
    # the deep model needs N = 2^14 either way: apart at 128-bit too
    secure = compile_model(model, (2, 8, 8), batch=8, calib=x)
    assert secure.params.n == 16384 and kept(secure)


def test_first_layer_rescale_deferred_through_its_polynomial(head_then_squeeze):
    """The conv on the input (1,024 outputs) leaves its rescale, like its polynomial, to the
    squeeze (64 outputs), which then divides by three primes: same depth, same function, the
    conv and polynomial one level higher; the choice survives serialization, and a plan whose
    owed rescales do not match what was deferred is refused."""
    from hecnn.compile.levels import check_deferred_rescales
    from hecnn.compile.serialize import dumps_plan, loads_plan
    from hecnn.errors import ParameterError

    model = head_then_squeeze(3)
    x = torch.randn(8, 3, 8, 8)
    lazy = compile_model(model, (3, 8, 8), batch=8, calib=x)
    eager = compile_model(model, (3, 8, 8), batch=8, calib=x, lazy_rescale=False)
    assert lazy.levels == eager.levels and lazy.params.n == eager.params.n
    c0, a0, s = lazy.node("c0"), lazy.node("a0"), lazy.node("s")
    assert c0.defer_rescale and a0.defer_rescale and s.owed_rescales == 2
    assert c0.level_in == c0.level_out == a0.level_out == s.level_in
    assert s.level_in - s.level_out == 3 and s.level_out == eager.node("s").level_out
    assert any("c0: rescale deferred through a0 to s" in d for d in lazy.decisions)
    assert "3 rescales" in lazy.summary()
    with torch.no_grad():
        ref = model(x).double().numpy()
    np.testing.assert_allclose(simulate(lazy, x.numpy()), ref, atol=1e-6 * np.abs(ref).max())
    back = loads_plan(dumps_plan(lazy))
    assert back.node("c0").defer_rescale and back.node("s").owed_rescales == 2
    s.owed_rescales = 1  # the conv's deferred rescale has no owner
    with pytest.raises(ParameterError, match="owes 1 rescales, its input defers 2"):
        check_deferred_rescales(lazy.nodes)
    s.owed_rescales = 2
    a0.defer_rescale = False  # a deferring head read by a polynomial that rescales
    with pytest.raises(ParameterError, match="first affine layer"):
        check_deferred_rescales(lazy.nodes)


def test_cost_prices_the_key_switch_after_two_of_three_rescales(head_then_squeeze, monkeypatch):
    """The squeeze that owes the head's two rescales relinearizes after dividing by two of its
    three primes (``relinearize_then_rescale``): the cost estimate and the runtime agree on
    the two limbs fewer."""
    from hecnn.compile import cost

    x = torch.randn(8, 3, 8, 8)
    plan = compile_model(head_then_squeeze(3), (3, 8, 8), batch=8, calib=x)
    s = plan.node("s")
    assert s.owed_rescales == 2 and not s.relin_after and s.rescales_before_relin == 0
    s.relin_after = True  # as hemet_squeezenet's fire1_squeeze_0, which feeds wider layers
    assert s.rescales_before_relin == 2
    k = [n.name for n in plan.nodes].index("s")
    with_relin, per_relin = cost.node_costs(plan)[k], cost.RELIN_MACS
    monkeypatch.setattr(cost, "RELIN_MACS", 0.0)
    relin_part = with_relin - cost.node_costs(plan)[k]
    relins = plan.relinearizations()["s"]
    assert relins == s.features
    assert relin_part == pytest.approx(per_relin * relins * (s.level_in + 1 - 2))
    assert plan.node("c0").rescales_before_relin == 0  # defers its rescale: nothing owed


def test_rescales_deferred_to_consumers_with_fewer_outputs(fire_after_bn):
    """The Fire module's expands (96 features) leave their last rescale to the squeeze after
    the concatenation (32 outputs), which rescales twice: the same depth and the same
    function, one level higher in between; the choice survives serialization, and a plan in
    which a deferred rescale has no owner is refused."""
    from hecnn.compile.levels import check_deferred_rescales
    from hecnn.compile.serialize import dumps_plan, loads_plan
    from hecnn.errors import ParameterError, SerializationError

    model = fire_after_bn(4)
    x = torch.randn(8, 2, 4, 4)
    lazy = compile_model(model, (2, 4, 4), batch=8, calib=x)
    eager = compile_model(model, (2, 4, 4), batch=8, calib=x, lazy_rescale=False)
    assert lazy.levels == eager.levels and lazy.params.n == eager.params.n
    deferred = [n.name for n in lazy.nodes if getattr(n, "defer_rescale", False)]
    assert deferred == ["a1", "a3", "a4"]  # a4: 32 features → fc's 3 outputs
    assert lazy.node("fc").owed_rescales == 1
    assert not any(getattr(n, "defer_rescale", False) for n in eager.nodes)
    s, s_eager = lazy.node("s"), eager.node("s")
    assert s.owed_rescales == 1 and s.level_in == s_eager.level_in + 1
    assert s.level_in - s.level_out == 2 and s.level_out == s_eager.level_out
    for name in ("a1", "a3"):
        assert lazy.node(name).level_out == eager.node(name).level_out + 1
    assert any("deferred to s" in d for d in lazy.decisions) and "2 rescales" in lazy.summary()
    with torch.no_grad():
        ref = model(x).double().numpy()
    np.testing.assert_allclose(simulate(lazy, x.numpy()), ref, atol=1e-6 * np.abs(ref).max())
    back = loads_plan(dumps_plan(lazy))
    assert back.node("a1").defer_rescale and back.node("s").owed_rescales == 1
    lazy.node("s").owed_rescales = 0  # nobody rescales what a1 and a3 deferred
    with pytest.raises(ParameterError, match="does not do"):
        check_deferred_rescales(lazy.nodes)
    with pytest.raises(SerializationError, match="malformed plan"):
        loads_plan(dumps_plan(lazy))
    lazy.node("s").owed_rescales = 1
    lazy.node("a3").defer_rescale = False  # a concatenation of two scales
    with pytest.raises(ParameterError, match="deferred and rescaled"):
        check_deferred_rescales(lazy.nodes)
