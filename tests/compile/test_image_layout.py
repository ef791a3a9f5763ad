"""The diagonal (BSGS) form of a sparse matrix reproduces W·x + b in the clear: the slot
algebra of per-image packing checked with numpy rotations, for random matrices and layouts."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hecnn.compile.image import Layout, _best_baby_step, diagonalize


def _rot(v: np.ndarray, k: int) -> np.ndarray:
    """Rotate slots left by k (what CiphertextBatch.rotate does)."""
    return np.roll(v, -k, axis=-1)


def _evaluate(dm, x_slots: np.ndarray, slots: int) -> np.ndarray:
    """The evaluator's arithmetic on plain slot vectors: baby rotations of x, pre-rotated
    diagonals, giant rotations, rotate-and-sum, bias."""
    out = np.zeros((dm.out_cts, slots))
    for (a, b, c), d in dm.diags.items():
        g, j = c - c % dm.baby, c % dm.baby
        pt = np.tile(np.roll(d, g), slots // dm.L)
        out[a] += _rot(pt * _rot(x_slots[b], j), g)
    for s in dm.sum_steps:
        out = out + _rot(out, s)
    return out + dm.out.plane(dm.bias, slots)


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(1, 70),
    inp=st.integers(1, 70),
    density=st.floats(0.05, 1.0),
    spread=st.sampled_from([1, 2, 3]),
    log_slots=st.integers(5, 7),
    seed=st.integers(0, 2**16),
)
def test_diagonal_form_equals_the_matrix(out, inp, density, spread, log_slots, seed):
    rng = np.random.default_rng(seed)
    slots = 1 << log_slots
    w = rng.normal(size=(out, inp)) * (rng.random((out, inp)) < density)
    bias = rng.normal(size=out)
    x = rng.normal(size=inp)
    # an input layout with gaps (like a concatenation), period a power of two, maybe several cts
    pos = np.sort(rng.choice(inp * spread, size=inp, replace=False))
    period = min(slots, 1 << int(np.ceil(np.log2(pos.max() + 1))))
    lay = Layout(period, pos.astype(np.int64))
    r, c = np.nonzero(w)
    dm = diagonalize(r, c, w[r, c], out, bias, lay, slots)
    xs = lay.plane(x, slots) + (lay.plane(np.ones(inp), slots) == 0) * rng.normal(
        size=(lay.cts, slots)
    )  # slots no feature claims hold garbage: their weights must be zero
    y = _evaluate(dm, xs, slots)
    got = y[dm.out.pos // dm.out.period, dm.out.pos % dm.out.period]
    assert np.allclose(got, w @ x + bias)
    assert dm.out.cts == dm.out_cts
    assert all(0 < s < slots for s in dm.rotation_steps)


def test_wide_layer_with_few_outputs_needs_few_diagonals():
    """Gazelle's hybrid: a dense 10 × 800 layer needs 16 diagonals and log2(1024/16) = 6
    rotate-and-sum steps, not 800 diagonals."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 800))
    r, c = np.nonzero(w)
    lay = Layout(1024, np.arange(800))
    dm = diagonalize(r, c, w[r, c], 10, np.zeros(10), lay, 4096)
    assert len(dm.diags) == 16 and len(dm.sum_steps) == 6


def test_baby_step_follows_the_stride_of_a_progression():
    classes = np.array(sorted({(k * 144) % 1024 for k in range(-4, 25)}))
    b = _best_baby_step(classes, 1024, 1, 1, len(classes))
    low = classes % b
    rotations = len(set(low) - {0}) + len(set(classes - low) - {0})
    assert rotations <= 14 < len(classes)
