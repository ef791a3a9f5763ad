import numpy as np
import pytest
import torch

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.linear import (
    BlockSparseWeights,
    WeightBlock,
    accumulate_products,
    digit_bits,
    digit_planes,
    encoding_exponent,
    weight_exponent,
)
from hecnn.errors import ShapeError

TOL = 2e-2


def test_digit_planes_reconstruct_exactly(rng):
    w = rng.normal(size=(7, 11)) * 2**27
    b = digit_bits(576)
    s = weight_exponent(np.abs(w).max(), b, 3)
    planes = digit_planes(w, b, s, 3)
    assert np.abs(planes).max() <= 2 ** (b - 1)
    recon = sum(planes[t].astype(object) * 2 ** (b * t) for t in range(len(planes)))
    assert np.array_equal(recon.astype(np.int64), np.round(w / 2**s).astype(np.int64))


def test_exactness_bound():
    for k in (1, 25, 576, 2048, 20000):
        b = digit_bits(k)
        assert k * 2 ** (29 + b) < 2**52


def test_dense_linear_combination_matches_numpy(ctx, keys, rng):
    sk, pk, _ = keys
    x = rng.uniform(-1, 1, (40, 64))
    w = rng.normal(size=(9, 40)) / 4
    bias = rng.normal(size=9)
    c = encrypt(ctx, x, pk)
    y = c.linear_combination(w, bias=bias).rescale()
    assert y.level == c.level - 1 and np.isclose(y.scale, c.scale)
    assert np.abs(decrypt(ctx, y, sk, slots=64) - (w @ x + bias[:, None])).max() < TOL


def test_linear_on_three_component_ciphertexts(ctx, keys, rng):
    sk, pk, _ = keys
    x = rng.uniform(-1, 1, (12, 32))
    w = rng.normal(size=(3, 12)) / 3
    y = encrypt(ctx, x, pk).square().linear_combination(w)
    assert y.components == 3
    assert np.abs(decrypt(ctx, y, sk, slots=32) - w @ (x * x)).max() < TOL


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (2, 1), (1, 1)])
def test_conv_structured_weights_equal_torch_conv(ctx, keys, rng, stride, padding):
    sk, pk, _ = keys
    cin, h = 2, 6
    wt = rng.normal(size=(3, cin, 3, 3)) / 3
    x = rng.uniform(-1, 1, (cin * h * h, 16))
    bs = BlockSparseWeights.conv2d(wt, (cin, h, h), stride=stride, padding=padding)
    ref = (
        torch.nn.functional.conv2d(
            torch.tensor(x.T.reshape(16, cin, h, h)),
            torch.tensor(wt),
            stride=stride,
            padding=padding,
        )
        .reshape(16, -1)
        .numpy()
        .T
    )
    assert np.allclose(bs.to_dense() @ x, ref)
    assert bs.nnz < bs.out_features * bs.in_features  # no dense im2col
    y = encrypt(ctx, x, pk).linear_combination(bs).rescale()
    assert np.abs(decrypt(ctx, y, sk, slots=16) - ref).max() < TOL


def test_linear_shape_errors(ctx, keys, rng):
    _sk, pk, _ = keys
    c = encrypt(ctx, rng.uniform(-1, 1, (4, 8)), pk)
    with pytest.raises(ShapeError, match="expect 5 inputs"):
        c.linear_combination(np.ones((2, 5)))
    with pytest.raises(ShapeError):
        c.linear_combination(np.ones((2, 4)), bias=np.ones(3))
    with pytest.raises(ShapeError):
        c.linear_combination(np.full((2, 4), np.nan))
    with pytest.raises(ShapeError):
        BlockSparseWeights.conv2d(np.ones((2, 3, 3, 3)), (2, 5, 5))


def test_chunked_products_equal_the_whole_layer_bit_for_bit(ctx, keys, rng):
    """Row pieces (with the whole matrix's exponent) and column pieces accumulated mod q give
    exactly the residues of the unchunked product: what a streamed layer relies on."""
    _sk, pk, _ = keys
    c = encrypt(ctx, rng.uniform(-1, 1, (10, 16)), pk).square()  # 3 components
    w = rng.normal(size=(6, 10)) * np.geomspace(1e-3, 10, 10)  # a wide range of magnitudes
    bias = rng.normal(size=6)
    dw = float(ctx.primes[c.level])
    whole = c.linear_combination(w, bias=bias)
    s = encoding_exponent(BlockSparseWeights.dense(w), dw)
    top = c.linear_combination(w[:2], bias=bias[:2], exponent=s)
    assert np.array_equal(top.data, whole.data[:2]) and top.scale == whole.scale
    acc = np.zeros((6, *c.data.shape[1:]), dtype=np.int32)
    for cols in (np.array([7, 0, 3]), np.arange(4, 7), np.array([1, 2, 8, 9])):
        part = c[cols]  # the chunk holds only these inputs, in this order
        blk = WeightBlock(np.arange(6), np.arange(len(cols)), w[:, cols])
        accumulate_products(part, [(blk, acc)], weight_scale=dw, exponent=s)
    summed = CiphertextBatch(ctx, acc, c.scale * dw).add_const(bias)
    assert np.array_equal(summed.data, whole.data)
    with pytest.raises(ShapeError, match="accumulator"):
        accumulate_products(c, [(blk, acc[:, :2])], weight_scale=dw, exponent=s)


def test_column_tiles_give_the_untiled_residues(ctx, keys, rng, monkeypatch):
    """Products computed a column tile at a time (gather, GEMM and reduction per tile, so they
    stay in cache) equal the whole-row products bit for bit, for fresh and accumulated rows."""
    from hecnn.ckks import linear

    _sk, pk, _ = keys
    c = encrypt(ctx, rng.uniform(-1, 1, (9, 16)), pk).square()  # 3 components
    w = rng.normal(size=(5, 9))
    whole = c.linear_combination(w)
    assert linear.column_tile(9, 10, ctx.n) == ctx.n  # the test ring fits one tile
    monkeypatch.setattr(linear, "TILE_BYTES", 8 * 19 * 64)  # force 64-column tiles
    monkeypatch.setattr(linear, "MIN_TILE", 16)
    assert linear.column_tile(9, 10, ctx.n) == 64 < ctx.n
    tiled = c.linear_combination(w)
    assert np.array_equal(tiled.data, whole.data)
    acc = whole.data.copy()
    dw = float(ctx.primes[c.level])
    s = encoding_exponent(BlockSparseWeights.dense(w), dw)
    accumulate_products(
        c, [(WeightBlock(np.arange(5), np.arange(9), w), acc)], weight_scale=dw, exponent=s
    )
    assert np.array_equal(
        acc,
        (2 * whole.data.astype(np.int64)) % ctx.moduli_column(ctx.data_idx(c.level))[None, None],
    )
