"""The torch array backend is bit-identical to the numpy backend, on the CPU (CI) and on CUDA
when a GPU is present.

Both backends compute exact residues, so every comparison here is ``array_equal`` on the raw
residues, never a tolerance; a few decryptions check the values against plaintext too.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hecnn.ckks import serialize  # noqa: E402
from hecnn.ckks.backend import to_backend, to_numpy  # noqa: E402
from hecnn.ckks.batch import CiphertextBatch  # noqa: E402
from hecnn.ckks.context import CkksContext  # noqa: E402
from hecnn.ckks.encryption import decrypt, encrypt  # noqa: E402
from hecnn.ckks.linear import BlockSparseWeights  # noqa: E402
from hecnn.ckks.sampling import Prng  # noqa: E402
from hecnn.errors import ParameterError, ShapeError  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible to torch (CPU-only CI)")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def same(a: CiphertextBatch, b: CiphertextBatch) -> bool:
    """Bit-identical residues and identical scale."""
    x, y = to_numpy(a.data), to_numpy(b.data)
    return x.shape == y.shape and np.array_equal(x, y) and a.scale == b.scale


@pytest.fixture(scope="module", params=DEVICES)
def tctx(request, small_params) -> CkksContext:
    return CkksContext(small_params, backend="torch", device=request.param)


@pytest.fixture(scope="module")
def pair(ctx, tctx, keys):
    """The same encryption (same seeds) on both backends: 6 ciphertexts of 64 slots."""
    _, pk, _ = keys
    x = np.random.default_rng(7).uniform(-1, 1, (6, 64))
    a = encrypt(ctx, x, pk, prng=Prng(b"enc-seed-0123456789abcdef0123456"))
    b = encrypt(tctx, x, pk, prng=Prng(b"enc-seed-0123456789abcdef0123456"))
    return a, b, x


# -- choice of backend ------------------------------------------------------------------------
def test_importing_ckks_does_not_import_torch():
    code = (
        "import sys\n"
        "import hecnn.ckks.backend, hecnn.ckks.batch, hecnn.ckks.context, hecnn.ckks.encryption\n"
        "import hecnn.ckks.keys, hecnn.ckks.keyswitch, hecnn.ckks.linear, hecnn.ckks.serialize\n"
        "from hecnn.ckks.params import CkksParameters\n"
        "p = CkksParameters.create(depth=1, n=1 << 10, allow_insecure_test_only=True)\n"
        "ctx = hecnn.ckks.context.CkksContext(p)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("backend", "device", "message"),
    [
        ("jax", "cpu", "unknown array backend"),
        ("numpy", "cuda", "numpy backend runs on the CPU only"),
        ("torch", "tpu", "unknown device"),
    ],
)
def test_bad_backend_choice(small_params, backend, device, message):
    with pytest.raises(ParameterError, match=message):
        CkksContext(small_params, backend=backend, device=device)


@pytest.mark.skipif(CUDA, reason="checks the error raised when no GPU is present")
def test_cuda_without_gpu_is_a_clear_error(small_params):
    ctx = CkksContext(small_params, backend="torch", device="cuda")
    with pytest.raises(ParameterError, match="no CUDA GPU"):
        _ = ctx.backend


def test_batch_type_and_validation(pair, tctx):
    a, b, _ = pair
    assert type(b).__name__ == "TorchCiphertextBatch"
    assert isinstance(b, CiphertextBatch) and isinstance(b.data, torch.Tensor)
    assert b.data.dtype == torch.int32 and b.data.device.type == tctx.backend.device.type
    assert same(a, b)
    with pytest.raises(ShapeError, match="int32"):
        CiphertextBatch(tctx, b.data.to(torch.int64), b.scale)
    with pytest.raises(ShapeError, match="components"):
        CiphertextBatch(tctx, b.data[:, :1].contiguous(), b.scale)


def test_mixing_backends_is_refused(pair):
    a, b, _ = pair
    with pytest.raises(ParameterError, match="different array backends"):
        _ = b + a


# -- ring primitives --------------------------------------------------------------------------
def test_ntt_intt_bit_identical(ctx, tctx):
    rng = np.random.default_rng(0)
    idx = ctx.qp_idx(ctx.params.max_level)
    q = ctx.primes[idx].astype(np.int64)[:, None]
    a = (rng.integers(0, 2**31, size=(5, len(idx), ctx.n)) % q).astype(np.int32)
    ring = tctx.backend
    t = ring.to_device(a, torch.int64)
    ring.ntt(t, idx)
    fwd = ctx.ntt(a.copy(), idx)
    assert np.array_equal(to_numpy(t).astype(np.int32), fwd)
    ring.intt(t, idx)
    assert np.array_equal(to_numpy(t).astype(np.int32), a)


@pytest.mark.parametrize("exact", [False, True])
def test_base_convert_bit_identical(ctx, tctx, exact):
    rng = np.random.default_rng(1)
    src = np.array([0, 1, 2])
    dst = np.concatenate([np.arange(3, ctx.num_data), ctx.special_idx])
    q = ctx.primes[src].astype(np.int64)[:, None]
    x = (rng.integers(0, 2**31, size=(4, 3, ctx.n)) % q).astype(np.int32)
    want = ctx.base_convert(x, src, dst, exact=exact)
    ring = tctx.backend
    got = ring.base_convert(ring.to_device(x, torch.int64), src, dst, exact=exact)
    assert np.array_equal(to_numpy(got).astype(np.int32), want)


# -- ciphertext operations --------------------------------------------------------------------
def _at_sq(c: CiphertextBatch) -> CiphertextBatch:
    """c times 0.5, at the scale of c.square() (2 components)."""
    return c.mul_scalar(0.5, scale=c.scale)


OPS = {
    "add": lambda c, k, x: c + c,
    "sub_broadcast": lambda c, k, x: c - c[2],
    "neg": lambda c, k, x: -c,
    "add_const": lambda c, k, x: c.add_const(np.linspace(-2, 2, len(c))),
    "add_plain": lambda c, k, x: c.add_plain(x),
    "mul_scalar": lambda c, k, x: c.mul_scalar(np.linspace(-1, 1, len(c))),
    "mul_plain": lambda c, k, x: c.mul_plain(x),
    "mul": lambda c, k, x: c.mul(c[::-1]),
    "square": lambda c, k, x: c.square(),
    "square_three_components": lambda c, k, x: c.square().rescale().square(),
    "mul_three_by_two": lambda c, k, x: c.square().rescale().mul(c[::-1]),
    "relinearize": lambda c, k, x: c.square().relinearize(k),
    "rescale": lambda c, k, x: c.mul_scalar(0.5).rescale(),
    "rotate": lambda c, k, x: c.rotate(1, k),
    "rotate_back": lambda c, k, x: c.rotate(-1, k),
    "drop_to": lambda c, k, x: c.drop_to(1),
    "getitem": lambda c, k, x: c[1:4],
    "stack_mixed_components": lambda c, k, x: CiphertextBatch.stack([c.square(), _at_sq(c)[:2]]),
    "add_three_and_two": lambda c, k, x: c.square() + _at_sq(c),
    "chain": lambda c, k, x: c.square().relinearize(k).rescale().rotate(2, k).rescale(),
}


@pytest.mark.parametrize("budget", [None, 1 << 16], ids=["one-chunk", "many-chunks"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_op_bit_identical(pair, keys, tctx, op, budget):
    a, b, x = pair
    _, _, evk = keys
    tctx.backend.memory_budget = budget
    try:
        want, got = OPS[op](a, evk, x), OPS[op](b, evk, x)
    finally:
        tctx.backend.memory_budget = None
    assert type(got).__name__ == "TorchCiphertextBatch"
    assert same(want, got)


def test_decrypts_to_plaintext(pair, keys, tctx):
    _, b, x = pair
    sk, _, evk = keys
    y = b.square().relinearize(evk).rescale().rotate(1, evk)
    got = decrypt(tctx, y, sk, slots=63)  # slot 63 receives slot 64, which held no value
    assert np.abs(got - (x**2)[:, 1:]).max() < 1e-3


# -- linear layers ----------------------------------------------------------------------------
def _inputs(ctx, keys, k: int):
    _, pk, _ = keys
    x = np.random.default_rng(3).uniform(-1, 1, (k, 32))
    return encrypt(ctx, x, pk, prng=Prng(b"lin-seed-0123456789abcdef0123456")), x


@pytest.mark.parametrize("budget", [None, 1 << 20, 1 << 12], ids=["whole", "limbs", "split-N"])
def test_linear_dense_bit_identical(ctx, tctx, keys, budget):
    a, _ = _inputs(ctx, keys, 40)
    b = to_backend(a, tctx)
    w = np.random.default_rng(4).normal(size=(7, 40)) / 6
    bias = np.linspace(-1, 1, 7)
    tctx.backend.memory_budget = budget
    try:
        got = b.linear_combination(w, bias=bias)
    finally:
        tctx.backend.memory_budget = None
    assert same(a.linear_combination(w, bias=bias), got)


@pytest.mark.parametrize(
    ("stride", "padding", "groups"), [(1, 1, 1), (2, 0, 1), (2, 1, 2)], ids=["pad", "stride", "grp"]
)
def test_linear_conv_bit_identical(ctx, tctx, keys, stride, padding, groups):
    shape = (2, 5, 5)
    a, _ = _inputs(ctx, keys, int(np.prod(shape)))
    w = np.random.default_rng(5).normal(size=(4, 2 // groups, 3, 3)) / 3
    sw = BlockSparseWeights.conv2d(w, shape, stride=stride, padding=padding, groups=groups)
    b = to_backend(a, tctx)
    assert same(a.linear_combination(sw), b.linear_combination(sw))
    # three components and large weights (two digit planes, block floating point)
    a3, b3 = a.square(), b.square()
    assert same(a3.linear_combination(sw, max_digits=1), b3.linear_combination(sw, max_digits=1))
    big = BlockSparseWeights.conv2d(w * 1e4, shape, stride=stride, padding=padding, groups=groups)
    assert same(a.linear_combination(big), b.linear_combination(big))


def test_linear_errors(tctx, keys, ctx):
    a, _ = _inputs(ctx, keys, 4)
    b = to_backend(a, tctx)
    with pytest.raises(ShapeError, match="expect 5 inputs"):
        b.linear_combination(np.ones((2, 5)))
    with pytest.raises(ShapeError, match="finite"):
        b.linear_combination(np.full((2, 4), np.nan))
    with pytest.raises(ShapeError, match="bias"):
        b.linear_combination(np.ones((2, 4)), bias=np.ones(3))


# -- moving and serializing -------------------------------------------------------------------
def test_serialization_is_identical_across_backends(pair, keys, ctx, tctx):
    a, b, _ = pair
    _, pk, evk = keys
    assert serialize.dumps(a) == serialize.dumps(b)
    back = serialize.loads(serialize.dumps(a), tctx)
    assert type(back).__name__ == "TorchCiphertextBatch" and same(back, a)
    evk_t = to_backend(evk, tctx)
    assert isinstance(evk_t.relin.data, torch.Tensor)
    assert serialize.dumps(evk_t) == serialize.dumps(evk)
    pk_t = to_backend(pk, tctx)
    assert serialize.dumps(pk_t) == serialize.dumps(pk)
    # keys already on the device work as well as host keys, and move back unchanged
    assert same(b.square().relinearize(evk_t), b.square().relinearize(evk))
    assert np.array_equal(to_backend(evk_t, ctx).relin.data, evk.relin.data)
    # encryption with a public key moved to the device gives the same ciphertext
    x = np.ones((1, 4))
    seed = b"pk-seed-0123456789abcdef01234567"
    assert same(encrypt(ctx, x, pk_t, prng=Prng(seed)), encrypt(ctx, x, pk, prng=Prng(seed)))
    assert same(to_backend(b, ctx), a)


def test_to_backend_refuses_foreign_objects(tctx, keys):
    from hecnn.ckks.params import CkksParameters

    other = CkksParameters.create(depth=2, n=1 << 11, allow_insecure_test_only=True)
    sk, _, _ = keys
    with pytest.raises(ParameterError, match="cannot move"):
        to_backend(sk, tctx)
    with pytest.raises(ParameterError, match="parameters"):
        to_backend(CkksContext(other), tctx)


def test_pickled_context_rebuilds_its_backend(tctx, pair):
    import pickle

    _, b, _ = pair
    copy = pickle.loads(pickle.dumps(tctx))
    assert copy.backend_name == "torch" and copy.backend is not tctx.backend
    assert same(CiphertextBatch(copy, b.data, b.scale).square(), b.square())


@pytest.mark.slow
def test_fused_ntt_bit_identical(ctx, small_params):
    """The torch.compile'd butterfly stages (opt-in, ``fused_ntt``) compute the same NTT."""
    tctx = CkksContext(small_params, backend="torch", device="cuda" if CUDA else "cpu")
    ring = tctx.backend
    ring.fused_ntt = True
    rng = np.random.default_rng(2)
    idx = ctx.data_idx(ctx.params.max_level)
    q = ctx.primes[idx].astype(np.int64)[:, None]
    a = (rng.integers(0, 2**31, size=(3, len(idx), ctx.n)) % q).astype(np.int32)
    t = ring.to_device(a, torch.int64)
    ring.ntt(t, idx)
    assert np.array_equal(to_numpy(t).astype(np.int32), ctx.ntt(a.copy(), idx))
    ring.intt(t, idx)
    assert np.array_equal(to_numpy(t).astype(np.int32), a)
