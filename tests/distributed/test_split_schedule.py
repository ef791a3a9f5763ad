"""The layer split is chosen from the memory model (no Ray needed): slices cover every output
once, read what their weights touch, and the fewest that fit the budget are taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _rayhelpers import RING, Branchy, images

from hecnn.compile import compile_model
from hecnn.compile.ir import AffineNode, InputNode
from hecnn.distributed.split import node_slices, plan_split, slice_bytes
from hecnn.errors import ParameterError


@pytest.fixture(scope="module")
def plan():
    torch.manual_seed(3)
    return compile_model(
        Branchy().eval(), (1, 6, 6), batch=16, calib=images(64, 0), insecure_ring_for_tests=RING
    )


def test_a_large_budget_keeps_every_layer_whole(plan):
    sched = plan_split(plan, 1 << 40)
    assert sched.fits
    assert all(len(s.slices) == 1 for s in sched.nodes.values())
    assert sched.tasks == len(plan.nodes) - 1  # the input is not a task


def test_a_small_budget_splits_until_every_slice_fits(plan):
    whole = plan_split(plan, 1 << 40).peak
    sched = plan_split(plan, whole // 5)
    assert sched.fits and sched.peak <= whole // 5
    assert max(len(s.slices) for s in sched.nodes.values()) > 1
    for name, split in sched.nodes.items():
        n = plan.node(name)
        covered = np.sort(np.concatenate([s.idx for s in split.slices]))
        assert np.array_equal(covered, np.arange(n.features))  # each output exactly once
        assert split.peak == max(slice_bytes(plan, n, s) for s in split.slices)
        if split.count > 1:  # half as many slices would not have fitted
            half = node_slices(plan, n, split.count // 2)
            assert max(slice_bytes(plan, n, s) for s in half) > whole // 5


def test_an_affine_slice_reads_only_the_columns_its_weights_touch(plan):
    sched = plan_split(plan, 1 << 40, slices=4)
    conv = next(n for n in plan.nodes if isinstance(n, AffineNode))
    assert isinstance(plan.node(conv.inputs[0]), InputNode)
    for s in sched.nodes[conv.name].slices:
        touched = np.unique(np.concatenate([b.in_idx for b in s.weights.blocks]))
        assert np.array_equal(s.reads[conv.inputs[0]], touched)
        assert len(touched) < plan.node(conv.inputs[0]).features  # a band, not the whole input


def test_bad_budgets_and_slice_counts_are_refused(plan):
    with pytest.raises(ParameterError):
        plan_split(plan, 0)
    with pytest.raises(ParameterError):
        plan_split(plan, 1 << 30, slices=0)


def test_a_dense_layer_is_not_cut_into_slices_that_each_read_its_whole_input(plan):
    fc = plan.node(plan.output)
    assert isinstance(fc, AffineNode)
    reads = plan_split(plan, 1 << 40).nodes[fc.name].peak
    sched = plan_split(plan, reads // 4)  # below the bytes of its input alone
    split = sched.nodes[fc.name]
    assert not sched.fits  # said, not hidden
    assert split.count < fc.features  # stopped where finer slices no longer shrink
    half = node_slices(plan, fc, split.count * 2)
    assert max(slice_bytes(plan, fc, s) for s in half) > 0.9 * split.peak
