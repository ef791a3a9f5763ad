"""Streamed execution equals the unstreamed executor bit for bit, and the plaintext model.

Small rings (N=2^12) through the explicit insecure test switch, and chunks of a few features,
so every streamed path runs: row pieces of the head, partial products accumulated over many
chunks (3-component partials with relinearization after the layer, 5-component ones in the
rescale-free tail), a polynomial relinearized chunk by chunk, segments ending at nodes with two
consumers (concat, residual add).
"""

import sys

import numpy as np
import pytest
import torch
from torch import nn

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.nn.activations import Square, SwishPoly4, TrainablePoly
from hecnn.runtime import RunReport, decrypt_outputs, encrypt_images, run
from hecnn.runtime.memory import file_mapping, release_rows

RING = 1 << 12


class Wide(nn.Module):
    """CIFAR's shape: wide conv → degree-4 poly → pool+conv (3-component partials,
    relinearized after the layer) → poly → conv → poly → linear (the last ones in the
    rescale-free tail: 5-component partials)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.a1 = SwishPoly4(4)
        self.p1 = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)
        self.a2 = TrainablePoly(2, "element", shape=(3, 4, 4))
        self.c3 = nn.Conv2d(3, 2, 1)
        self.a3 = Square()
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        y = self.a2(self.c2(self.p1(self.a1(self.bn(self.c1(x))))))
        return self.fc(torch.flatten(self.a3(self.c3(y)), 1))


class Expand(nn.Module):
    """x² feeding a wider conv is relinearized at the polynomial: chunk by chunk when streamed."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.a1 = Square()
        self.c2 = nn.Conv2d(2, 6, 3, padding=1)
        self.a2 = TrainablePoly(2, "channel", shape=(6, 6, 6))
        self.c3 = nn.Conv2d(6, 2, 1)
        self.a3 = Square()
        self.fc = nn.Linear(72, 4)

    def forward(self, x):
        y = self.a3(self.c3(self.a2(self.c2(self.a1(self.c1(x))))))
        return self.fc(torch.flatten(y, 1))


class Branchy(nn.Module):
    """Fire-like concat and a residual add between streamed chains."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.a1 = Square()
        self.ca = nn.Conv2d(2, 2, 1)
        self.cb = nn.Conv2d(2, 2, 3, padding=1)
        self.a2 = TrainablePoly(2, "channel", shape=(4, 6, 6))
        self.fc = nn.Linear(144, 3)

    def forward(self, x):
        y = self.a1(self.c1(x))
        y = self.a2(torch.cat([self.ca(y), self.cb(y)], 1) + torch.cat([y, y], 1))
        return self.fc(torch.flatten(y, 1))


class TwoFires(nn.Module):
    """conv → x² → two Fire modules (squeeze → expand 1×1 ‖ expand 3×3 → concat) → linear:
    one streamed segment with fan-out, concatenations and 3-component concatenated inputs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.a1 = Square()
        layers = []
        for cin in (4, 6):
            layers += [
                nn.Conv2d(cin, 2, 1),
                TrainablePoly(2, "channel", shape=(2, 6, 6)),
                nn.Conv2d(2, 3, 1),
                TrainablePoly(2, "element", shape=(3, 6, 6)),
                nn.Conv2d(2, 3, 3, padding=1),
                TrainablePoly(2, "layer", shape=(3, 6, 6)),
            ]
        self.fire = nn.ModuleList(layers)
        self.fc = nn.Linear(216, 3)

    def forward(self, x):
        y = self.a1(self.c1(x))
        for f in range(2):
            sq, sa, e1, a1, e3, a3 = self.fire[6 * f : 6 * f + 6]
            s = sa(sq(y))
            y = torch.cat([a1(e1(s)), a3(e3(s))], 1)
        return self.fc(torch.flatten(y, 1))


def _setup(model, shape, n=16, seed=0):
    """A model class is built after seeding: its initial weights must not depend on what the
    tests before it drew from torch's global generator (a near-tie between two logits in one
    such draw let CKKS noise flip a label in one test order)."""
    torch.manual_seed(seed)
    if isinstance(model, type):
        model = model()
    model = model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(n, *shape)
    plan = compile_model(model, shape, batch=n, calib=x, insecure_ring_for_tests=RING)
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    ct = encrypt_images(plan, ctx, kg.public_key(sk), x.numpy())
    with torch.no_grad():
        ref = model(x).double().numpy()
    return plan, ctx, sk, kg.evaluation_keys(sk), ct, ref


def _check_plaintext(ctx, sk, out, ref):
    got = decrypt_outputs(ctx, sk, out, len(ref))
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize(
    ("model", "shape", "chunks"),
    [
        (Wide, (2, 8, 8), (7,)),
        (Expand, (1, 6, 6), (2,)),
        (Branchy, (1, 6, 6), (5,)),
        (TwoFires, (1, 6, 6), (9,)),
    ],
)
def test_streamed_equals_unstreamed_bit_for_bit(model, shape, chunks):
    plan, ctx, sk, evk, ct, ref = _setup(model, shape)
    whole = run(plan, ct, evk, streaming=False)
    _check_plaintext(ctx, sk, whole, ref)
    for chunk in chunks:
        report = RunReport()
        out = run(plan, ct, evk, chunk=chunk, report=report)
        assert report.schedule.segments, "nothing was streamed"
        assert any(s.chunks > 1 for s in report.schedule.segments)
        assert out.components == whole.components and out.scale == whole.scale
        assert np.array_equal(out.data, whole.data)
        _check_plaintext(ctx, sk, out, ref)


def test_streaming_exercises_relinearized_chunks_and_three_component_partials():
    plan, *_ = _setup(Expand, (1, 6, 6))
    a1 = plan.node("a1")
    assert a1.relin_after  # x² feeds a wider layer: relinearized at the polynomial
    plan, *_ = _setup(Wide, (2, 8, 8))
    c2 = plan.node("c2")
    assert plan.node(c2.inputs[0]).components == 3 and c2.relin_after
    assert plan.node("fc").components == 5 and not plan.node("fc").rescale


def test_fire_modules_stream_as_one_segment():
    """Fan-out to both expands, the concatenation and the next squeeze stay inside one
    segment: no Fire module's value is materialized; only the input and the output are."""
    from hecnn.compile.streaming import find_segments

    plan, *_ = _setup(TwoFires, (1, 6, 6))
    (seg,) = find_segments(plan)
    assert [n.name for n in seg] == [n.name for n in plan.nodes[1:]]
    assert sum(isinstance(n, type(plan.node("cat"))) for n in seg) == 2


def test_run_report_and_a_budget_that_cannot_be_met():
    plan, ctx, sk, evk, ct, ref = _setup(Expand, (1, 6, 6))
    report = RunReport()
    out = run(plan, ct, evk, memory_budget=1, report=report)  # nothing fits
    assert not report.schedule.fits
    seg = report.schedule.segments[0]
    assert seg.chunk < plan.node(seg.nodes[0]).features  # the least memory, not the whole layer
    assert [t.name for t in report.timings] == [n.name for n in plan.nodes]
    assert all(t.seconds >= 0 for t in report.timings) and report.total > 0
    assert report.peak_rss > 0 and report.peak_held >= ct.data.nbytes
    assert 0 < report.rss_at_start <= report.peak_rss
    _check_plaintext(ctx, sk, out, ref)
    seen = []
    run(plan, ct, evk, chunk=40, progress=lambda name, i, total: seen.append(name))
    assert any("chunk 1/" in s for s in seen) and seen[-1] == "done"


def test_inputs_mapped_from_a_file_are_released_and_give_the_same_result(tmp_path):
    plan, ctx, sk, evk, ct, ref = _setup(Wide, (2, 8, 8))
    path = tmp_path / "inputs.bin"
    ct.data.tofile(path)
    mapped = np.memmap(path, dtype=np.int32, mode="r", shape=ct.data.shape)
    on_disk = CiphertextBatch(ctx, np.asarray(mapped), ct.scale)
    assert file_mapping(on_disk.data) is not None and file_mapping(ct.data) is None
    report = RunReport()
    out = run(plan, on_disk, evk, chunk=9, report=report)
    assert np.array_equal(out.data, run(plan, ct, evk, streaming=False).data)
    _check_plaintext(ctx, sk, out, ref)


def test_release_rows_drops_pages_but_keeps_the_data(tmp_path):
    rows = np.arange(64 * 4096, dtype=np.int32).reshape(64, 4096)  # 16 KiB per row
    path = tmp_path / "rows.bin"
    rows.tofile(path)
    mapped = np.asarray(np.memmap(path, dtype=np.int32, mode="r", shape=rows.shape))
    assert int(mapped.sum()) == int(rows.sum())  # every page read once
    assert release_rows(mapped, np.r_[3:9, 20]) >= 7 * 16384 - 2 * 4096
    assert np.array_equal(mapped, rows)  # paged back in from the file
    assert release_rows(rows, np.arange(64)) == 0  # ordinary memory is never touched


def test_unstreamed_affine_in_pieces_equals_the_whole_product():
    """A wide unstreamed affine node is computed AFFINE_PIECE outputs at a time: bit-identical
    to one product over all its rows (one encoding exponent for all pieces)."""
    from hecnn.compile.ir import AffineNode
    from hecnn.compile.streaming import AFFINE_PIECE
    from hecnn.runtime.executor import _affine, _affine_pieces

    plan, _ctx, _sk, evk, ct, _ref = _setup(Expand, (1, 6, 6))
    first = next(n for n in plan.nodes if isinstance(n, AffineNode))
    assert first.features > AFFINE_PIECE
    pieces, whole = _affine_pieces(first, ct, evk), _affine(first, ct, evk)
    assert pieces.scale == whole.scale and np.array_equal(pieces.data, whole.data)


def test_window_stage_computes_bias_only_rows():
    """A widening layer (held as a window of its inputs) with an all-zero weight row: that
    output has no inputs, only its bias; streamed one feature at a time it still equals the
    unstreamed run bit for bit."""
    from hecnn.compile.streaming import covering_blocks, holds_window

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4, 4),
        Square(),
        nn.Linear(4, 8),
        TrainablePoly(2, "element", shape=(8,)),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        model[3].weight[5].zero_()
    plan, ctx, sk, evk, ct, ref = _setup(model, (1, 2, 2), n=8)
    wide = next(n for n in plan.nodes if n.features == 8 and getattr(n, "weights", None))
    assert holds_window(wide, 4)
    assert any(len(b.in_idx) == 0 for b in covering_blocks(wide.weights))
    whole = run(plan, ct, evk, streaming=False)
    out = run(plan, ct, evk, chunk=1)
    assert np.array_equal(out.data, whole.data)
    _check_plaintext(ctx, sk, out, ref)


def test_pool_kept_apart_streams_bit_for_bit(pool_then_conv):
    """The pool the compiler keeps apart from the next conv runs inside the streamed segment
    (3-component partial sums, relinearized at the pool) with the unstreamed result."""
    plan, ctx, sk, evk, ct, ref = _setup(pool_then_conv(3), (2, 8, 8))
    assert plan.decisions
    whole = run(plan, ct, evk, streaming=False)
    _check_plaintext(ctx, sk, whole, ref)
    report = RunReport()
    out = run(plan, ct, evk, chunk=6, report=report)
    assert any(s.chunks > 1 and "pool" in s.nodes for s in report.schedule.segments)
    assert np.array_equal(out.data, whole.data) and out.scale == whole.scale
    _check_plaintext(ctx, sk, out, ref)


def test_deferred_rescales_stream_bit_for_bit():
    """Both Fire modules' expands defer their last rescale to the next squeeze: streamed in
    chunks, the squeeze's partial sums of unrescaled products (one level higher) and its two
    rescales give the unstreamed result bit for bit."""
    plan, ctx, sk, evk, ct, ref = _setup(TwoFires, (1, 6, 6))
    owing = [n for n in plan.nodes if getattr(n, "owed_rescales", 0)]
    assert owing and all(plan.node(n.inputs[0]).level_out == n.level_in for n in owing)
    whole = run(plan, ct, evk, streaming=False)
    for chunk in (3, 10):
        out = run(plan, ct, evk, chunk=chunk)
        assert np.array_equal(out.data, whole.data) and out.scale == whole.scale
    _check_plaintext(ctx, sk, whole, ref)


def test_deferred_head_rescale_streams_bit_for_bit(head_then_squeeze):
    """The first conv skips its rescale and the squeeze divides by three primes: streamed in
    chunks (the conv's windows at the top level, the squeeze's partial sums of products at
    (Δ·Δ_w)²·Δ_w'), the result is the unstreamed one bit for bit."""
    plan, ctx, sk, evk, ct, ref = _setup(head_then_squeeze(2), (3, 8, 8))
    assert plan.node("c0").defer_rescale and plan.node("s").owed_rescales == 2
    whole = run(plan, ct, evk, streaming=False)
    for chunk in (2, 7):
        report = RunReport()
        out = run(plan, ct, evk, chunk=chunk, report=report)
        assert any(s.chunks > 1 and "c0" in s.nodes for s in report.schedule.segments)
        assert np.array_equal(out.data, whole.data) and out.scale == whole.scale
    _check_plaintext(ctx, sk, whole, ref)


def test_release_free_heap_returns_freed_memory_to_the_os():
    """Freed blocks between live ones stay resident in glibc's heap until trimmed: what the
    benchmark hands back before it measures a run's peak."""
    from hecnn.runtime.memory import current_rss, release_free_heap

    if sys.platform != "linux":
        pytest.skip("glibc heap and /proc are Linux's")
    blocks = [np.ones(8192) for _ in range(4000)]  # 64 KiB each, 250 MiB
    del blocks[::2]  # half freed, interleaved with live blocks: not trimmed on its own
    before = current_rss()
    assert release_free_heap()
    assert before - current_rss() > 64 * 2**20
    del blocks


def test_pieces_are_released_once_taken(monkeypatch):
    """A piece lives only while a consumer still needs it: when a polynomial further down the
    chain runs, no earlier head piece (taken by the first polynomial) is still referenced —
    a generator frame up the chain used to keep each one until everything downstream had run.
    The result is unchanged."""
    import weakref

    from hecnn.runtime import executor

    plan, ctx, sk, evk, ct, ref = _setup(Wide, (2, 8, 8))
    seen: dict[str, list] = {"a1": [], "a2": []}
    alive_at_a2: list[int] = []
    poly = executor._poly

    def recording_poly(n, x, keys, coeffs=None):
        if n.name == "a2":
            alive_at_a2.append(sum(r() is not None for r in seen["a1"]))
        if n.name in seen:
            seen[n.name].append(weakref.ref(x))
        return poly(n, x, keys, coeffs)

    monkeypatch.setattr(executor, "_poly", recording_poly)
    report = RunReport()
    out = run(plan, ct, evk, chunk=7, report=report)
    assert report.schedule.segments and len(seen["a1"]) > 1 and alive_at_a2
    assert max(alive_at_a2) == 0
    _check_plaintext(ctx, sk, out, ref)


def test_a_piece_cannot_be_taken_more_often_than_it_has_consumers():
    from hecnn.errors import ParameterError
    from hecnn.runtime.streaming import _Piece

    ct = _setup(Expand, (1, 6, 6))[4]
    piece = _Piece(np.arange(2), ct[:2])
    piece.takers = 2
    assert piece.take() is piece.take()
    with pytest.raises(ParameterError, match="taken more often"):
        piece.take()
