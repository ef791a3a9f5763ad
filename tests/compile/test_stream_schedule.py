"""The streaming schedule: segments, head chunks, the input bookkeeping of streamed affine
layers, and the memory estimate that chooses chunk sizes."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from hecnn.ckks.linear import BlockSparseWeights
from hecnn.compile import compile_model
from hecnn.compile.streaming import (
    PIECE,
    Gather,
    default_memory_budget,
    find_segments,
    head_chunks,
    memory_profile,
    plan_streaming,
)
from hecnn.errors import ParameterError
from hecnn.nn.activations import Square, SwishPoly4, TrainablePoly

RING = 1 << 12


class Wide(nn.Module):
    """A CIFAR-shaped chain: a wide conv, a poly, pool+conv, a poly, linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, padding=1)
        self.a1 = SwishPoly4(4)
        self.p1 = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        self.a2 = TrainablePoly(2, "element", shape=(4, 6, 6))
        self.fc = nn.Linear(144, 3)

    def forward(self, x):
        y = self.a2(self.c2(self.p1(self.a1(self.c1(x)))))
        return self.fc(torch.flatten(y, 1))


class Branchy(nn.Module):
    """Concat and residual add: nodes with two consumers end segments."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.a1 = Square()
        self.ca = nn.Conv2d(2, 2, 1)
        self.cb = nn.Conv2d(2, 2, 3, padding=1)
        self.a2 = TrainablePoly(2, "channel", shape=(4, 4, 4))
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        y = self.a1(self.c1(x))
        y = self.a2(torch.cat([self.ca(y), self.cb(y)], 1) + torch.cat([y, y], 1))
        return self.fc(torch.flatten(y, 1))


def _plan(model, shape, n=8):
    torch.manual_seed(0)
    x = torch.randn(n, *shape)
    return compile_model(model.eval(), shape, batch=n, calib=x, insecure_ring_for_tests=RING)


@pytest.fixture(scope="module")
def wide():
    return _plan(Wide(), (2, 12, 12))


def test_segments_are_single_consumer_chains(wide):
    (seg,) = find_segments(wide)
    assert [n.name for n in seg] == [n.name for n in wide.nodes[1:]]  # all but the input
    plan = _plan(Branchy(), (1, 4, 4))
    users = {n.name: [m for m in plan.nodes if n.name in m.inputs] for n in plan.nodes}
    segs = find_segments(plan)
    assert segs
    for seg in segs:
        assert len(seg) >= 2
        for a, b in itertools.pairwise(seg):
            assert users[a.name] == [b] and a.name != plan.output


def test_head_chunks_cover_every_row_once_and_reproduce_the_weights(wide):
    head = wide.nodes[1]
    dense = head.weights.to_dense()
    for chunk in (1, 7, 64, 10**6):
        seen = []
        for hc in head_chunks(head, chunk):
            assert 1 <= len(hc.idx) <= chunk
            assert np.array_equal(hc.weights.to_dense(), dense[hc.idx])
            seen.append(hc.idx)
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(head.features))
    with pytest.raises(ParameterError):
        next(head_chunks(head, 0))


def test_gather_completes_every_block_once_with_the_right_columns():
    rng = np.random.default_rng(7)  # test data
    w = BlockSparseWeights.conv2d(rng.normal(size=(3, 2, 3, 3)), (2, 5, 5), padding=1)
    g = Gather(w)
    rebuilt = np.zeros((w.out_features, w.in_features))
    done = []
    order = rng.permutation(w.in_features)
    for idx in np.array_split(order, 6):
        parts, completed = g.deliver(idx)
        for b, sub in parts:
            blk = g.blocks[b]
            rebuilt[np.ix_(blk.out_idx[sub.out_idx], idx[sub.in_idx])] += sub.weights
        done += completed
    assert sorted(done) == list(range(len(g.blocks)))
    assert np.allclose(rebuilt, w.to_dense())
    with pytest.raises(ParameterError, match="twice"):
        g.deliver(order[:3])


def test_streamed_estimate_counts_a_chunk_not_the_layer(wide):
    whole = memory_profile(wide)[0]
    assert wide.memory_estimate(streaming=False) == whole
    big = plan_streaming(wide, 10 * whole)
    (seg,) = big.segments
    head = wide.node(seg.nodes[0])
    assert seg.chunk == head.features and big.fits  # everything fits: the whole layer at once
    assert seg.chunks == -(-head.features // PIECE)  # computed a piece at a time
    small = plan_streaming(wide, int(0.5 * whole))
    assert small.segments[0].chunk < seg.chunk
    assert small.peak < whole
    assert wide.memory_estimate(int(0.5 * whole)) == small.peak
    forced = plan_streaming(wide, chunk=5)
    assert forced.segments[0].chunk == 5 and forced.segments[0].chunks > 1
    assert "memory estimate" in wide.summary()


def test_memory_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("HECNN_MEMORY_GIB", "1.5")
    assert default_memory_budget() == int(1.5 * 2**30)
    for bad in ("lots", "-2"):
        monkeypatch.setenv("HECNN_MEMORY_GIB", bad)
        with pytest.raises(ParameterError, match="HECNN_MEMORY_GIB"):
            default_memory_budget()
    monkeypatch.delenv("HECNN_MEMORY_GIB")
    assert default_memory_budget() > 0
